"""C-FIND SCP (being written)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from archive.dimse.peer import Peer


def c_find(peer: Peer | None, event: Any) -> Iterator[tuple[int, Dataset | None]]:
    yield 0xC000, None
