from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from io import BufferedReader
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024


class StorageUnavailable(Exception):
    """The object store could not be reached or refused the operation (after retries)."""


class StorageRefused(StorageUnavailable):
    """The operation cannot succeed by trying again: the location has no storage class for the
    tier, the object is missing, or the store refuses it in its current state (e.g. an archive
    object not restored). The message says which, for the move's error. A StorageUnavailable, so
    that callers which treat every store failure alike keep doing so."""


class ObjectExists(StorageRefused):
    """Another object is stored under the key: a store never replaces it with different bytes."""


class VerificationFailed(StorageRefused):
    """The object is there but not as expected (size, storage class or checksum)."""


def range_check(offset: int, length: int | None) -> None:
    """A byte range of ``iter_bytes``: a start at or after 0 and a length that is not negative."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"Invalid byte range: offset {offset}, length {length}.")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    storage_class: str = ""
    # The SHA-256 recorded with the object when it was stored ("" when the store has none).
    sha256: str = ""


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing (``ObjectStore.iter_objects``).

    ``storage_class``: what the store says about the object's tier, comparable with
    ``ObjectStore.storage_class_for`` (S3: the storage class; filesystem: the tier's folder).
    """

    key: str
    size: int
    storage_class: str


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

    def put_file(
        self, *, key: str, path: Path, tier: str, sha256: str, replace: bool = False
    ) -> StoredObject:
        """Store the file at ``path`` under ``key`` in ``tier``; the local file is consumed.

        Never overwrites: an object already under the key with the same bytes is kept (storing
        is idempotent), one with other bytes raises ObjectExists and stays as it was.
        ``replace=True`` is for copies of an indexed object whose target holds a bad leftover
        (a replica or a location copy that failed verification): that leftover is removed
        first.
        """

    def head(self, *, key: str, tier: str) -> StoredObject | None: ...

    def iter_bytes(
        self,
        *,
        key: str,
        tier: str,
        chunk_size: int = CHUNK,
        offset: int = 0,
        length: int | None = None,
    ) -> Iterator[bytes]:
        """The object's bytes in chunks of at most ``chunk_size``: from ``offset`` on, at most
        ``length`` of them (None: to the end).

        A ranged read: the bytes before ``offset`` and after ``offset + length`` are not
        transferred. An offset at or past the end yields nothing. Raises StorageUnavailable on
        the first ``next()`` when the object cannot be read.
        """

    def open_local(self, *, key: str, tier: str) -> BufferedReader | None:
        """The object as a local file opened for reading, when the backend keeps it on a local
        file system (it can then be read in place, and the open file stays readable whatever
        happens to the name); None when it does not. Raises StorageUnavailable when the object
        cannot be opened."""

    def delete(self, *, key: str, tier: str) -> None: ...

    def iter_objects(self, *, prefix: str) -> Iterator[ListedObject]:
        """Every object whose key starts with ``prefix``, in ascending key order (code point
        order, which is S3's UTF-8 byte order), streamed: S3 one page of keys at a time, the
        filesystem one directory at a time. An object the filesystem holds in two tiers (a tier
        change between its link and its finish) is listed once per tier, consecutively. Spool
        files, restore markers and temporary names are not objects and are not listed. Raises
        StorageUnavailable when the store cannot be listed."""

    def storage_class_for(self, tier: str) -> str:
        """The ``storage_class`` under which ``iter_objects`` lists an object of ``tier`` ("" when
        the store cannot hold that tier)."""

    def probe(self) -> str:
        """Write, read back and delete a probe object; returns a human-readable result."""

    def restore_start(self, *, key: str, tier: str, days: int) -> None:
        """Ask for a readable copy of an archive-tier object for ``days`` days.

        Idempotent: asking again while a restore is in progress or ready is not an error.
        """

    def restore_status(self, *, key: str, tier: str) -> RestoreStatus: ...

    def place(self) -> str:
        """Where the objects physically are (root folder, or endpoint + bucket + prefix): two
        locations with the same place are one store, and a copy between them is a tier change."""

    def change_tier(
        self, *, key: str, from_tier: str, to_tier: str, size: int | None = None
    ) -> None:
        """Make the object readable in ``to_tier`` without its bytes passing through this process.

        S3: CopyObject of the key onto itself with the target storage class (multipart copy
        above 5 GB); the object leaves ``from_tier`` at once. Filesystem: a hard link in the
        target tier's root; the object is in both tiers until ``change_tier_finish``.
        Idempotent: done already is not an error. ``size`` spares a HEAD when known.
        Raises StorageRefused when the location cannot serve ``to_tier``.
        """

    def change_tier_finish(self, *, key: str, from_tier: str, to_tier: str) -> None:
        """After the index says ``to_tier``: remove what a tier change left in ``from_tier``.

        Never removes the last copy; idempotent.
        """

    def verify(self, *, key: str, tier: str, size: int, sha256: str) -> StoredObject:
        """HEAD the object and check it is in ``tier`` with ``size`` bytes (and, where the store
        records one, the SHA-256). Raises VerificationFailed saying what differs."""
