"""Pool threads close the database connections they opened (archive.common.threads)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from archive.common import threads

pytestmark = pytest.mark.django_db(transaction=True)


def _query() -> tuple[BaseDatabaseWrapper, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return connections["default"], threading.get_ident()


def test_a_pool_task_closes_the_connection_its_thread_opened() -> None:
    with threads.Pool(max_workers=2) as pool:
        results = list(pool.map(lambda _: _query(), range(4)))
    main = threading.get_ident()
    assert all(ident != main for _, ident in results)
    for wrapper, _ in results:
        assert wrapper.connection is None  # closed, not left for the garbage collector


def test_a_failing_task_closes_its_connection_too() -> None:
    opened: list[BaseDatabaseWrapper] = []

    def fail() -> None:
        opened.append(_query()[0])
        raise ValueError("boom")

    with threads.Pool(max_workers=1) as pool:
        future = pool.submit(fail)
    with pytest.raises(ValueError, match="boom"):
        future.result()
    assert opened and opened[0].connection is None


def test_the_calling_threads_connection_is_left_alone() -> None:
    wrapper, _ = _query()
    threads.closing(lambda: None)  # wrapping does not run anything
    assert wrapper.connection is not None
