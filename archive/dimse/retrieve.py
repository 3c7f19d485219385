"""C-MOVE and C-GET SCP (being written)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from archive.dimse.peer import Peer


def c_move(peer: Peer | None, event: Any) -> Iterator[Any]:
    yield None, None


def c_get(peer: Peer | None, event: Any) -> Iterator[Any]:
    yield 0
    yield 0xC000, None
