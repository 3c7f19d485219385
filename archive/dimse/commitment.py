"""Storage Commitment Push Model SCP (being written)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from archive.dimse.peer import Peer


def n_action(peer: Peer | None, event: Any) -> tuple[int, Dataset | None]:
    return 0x0112, None
