"""The embedded default: each tier is its own folder under a root."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from archive.storage.base import CHUNK, StorageUnavailable, StoredObject


class FilesystemStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str, tier: str) -> Path:
        if ".." in Path(key).parts or key.startswith("/"):
            raise ValueError(f"Unsafe object key {key!r}")
        return self.root / tier / key

    def spool_dir(self) -> Path:
        path = self.root / ".incoming"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(self, *, key: str, path: Path, tier: str, sha256: str) -> StoredObject:
        target = self._path(key, tier)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            # Same volume: the object appears whole or not at all.
            os.replace(path, target)
            size = target.stat().st_size
        except OSError as exc:
            raise StorageUnavailable(f"Could not store {key}: {exc.strerror or exc}") from exc
        return StoredObject(key=key, size=size, storage_class=tier)

    def head(self, *, key: str, tier: str) -> StoredObject | None:
        try:
            return StoredObject(
                key=key, size=self._path(key, tier).stat().st_size, storage_class=tier
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc

    def iter_bytes(self, *, key: str, tier: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            handle = open(self._path(key, tier), "rb")  # noqa: SIM115 - closed by the generator
        except OSError as exc:
            raise StorageUnavailable(f"Could not read {key}: {exc.strerror or exc}") from exc
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def delete(self, *, key: str, tier: str) -> None:
        try:
            self._path(key, tier).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc

    def probe(self) -> str:
        key = f"_probe/{uuid.uuid4().hex}"
        spool = self.spool_dir() / uuid.uuid4().hex
        try:
            spool.write_bytes(b"strata-probe")
            self.put_file(key=key, path=spool, tier="hot", sha256="")
            if b"".join(self.iter_bytes(key=key, tier="hot")) != b"strata-probe":
                raise StorageUnavailable("The probe object read back different bytes.")
            self.delete(key=key, tier="hot")
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc
        return f"Wrote, read and deleted a probe object under {self.root}."
