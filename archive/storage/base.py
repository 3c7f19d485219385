from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024


class StorageUnavailable(Exception):
    """The object store could not be reached or refused the operation (after retries)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    storage_class: str = ""
    # The SHA-256 recorded with the object when it was stored ("" when the store has none).
    sha256: str = ""


@dataclass(frozen=True)
class RestoreStatus:
    """Where a restore of an archive-tier object stands.

    ``requested``: a restore was asked for (and not expired); ``ready``: a readable copy exists
    until ``expires_at``.
    """

    requested: bool
    ready: bool
    expires_at: datetime | None = None


class ObjectStore(Protocol):
    def spool_dir(self) -> Path:
        """A local folder for incoming files; on the filesystem backend, on the same volume so that
        storing is an atomic rename."""

    def put_file(self, *, key: str, path: Path, tier: str, sha256: str) -> StoredObject:
        """Store the file at ``path`` under ``key`` in ``tier``; the local file is consumed."""

    def head(self, *, key: str, tier: str) -> StoredObject | None: ...

    def iter_bytes(self, *, key: str, tier: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...

    def delete(self, *, key: str, tier: str) -> None: ...

    def probe(self) -> str:
        """Write, read back and delete a probe object; returns a human-readable result."""

    def restore_start(self, *, key: str, tier: str, days: int) -> None:
        """Ask for a readable copy of an archive-tier object for ``days`` days.

        Idempotent: asking again while a restore is in progress or ready is not an error.
        """

    def restore_status(self, *, key: str, tier: str) -> RestoreStatus: ...
