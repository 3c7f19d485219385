"""Worker threads that leave no database connection behind.

Django opens a connection per thread on first use and closes it only when told to. A pool thread
that touched the ORM and then ended kept its connection (and, on SQLite, whatever it had read or
written in an open transaction) until the garbage collector found it. Every pool in the archive
comes from here: each task closes the connections its thread opened when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def closing(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run so that the calling thread's database connections are closed afterwards."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()  # this thread's connections only

    return run


class Pool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks close their thread's database connections."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(closing(fn), *args, **kwargs)
