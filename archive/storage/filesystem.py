"""The embedded default: each tier is its own folder under a root."""

from __future__ import annotations

import errno
import hashlib
import heapq
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BufferedReader
from pathlib import Path

from archive.models import TIERS
from archive.storage.base import (
    CHUNK,
    ListedObject,
    ObjectExists,
    RestoreStatus,
    StorageRefused,
    StorageUnavailable,
    StoredObject,
    VerificationFailed,
    range_check,
)

# Hard links are impossible across volumes or on some filesystems: copy the bytes instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EACCES}


def _same_bytes(existing: Path, new: Path, sha256: str) -> bool:
    """Whether the object at ``existing`` holds the bytes of the file ``new`` (SHA-256 ``sha256``,
    or compared byte for byte when not given)."""
    if existing.stat().st_size != new.stat().st_size:
        return False
    with open(existing, "rb") as old:
        if sha256:
            digest = hashlib.sha256()
            while chunk := old.read(CHUNK):
                digest.update(chunk)
            return digest.hexdigest() == sha256
        with open(new, "rb") as other:
            while True:
                a, b = old.read(CHUNK), other.read(CHUNK)
                if a != b:
                    return False
                if not a:
                    return True


class FilesystemStore:
    def __init__(self, root: str | Path, *, restore_delay_seconds: int = 0):
        self.root = Path(root)
        # The archive tier is a folder like the others; a restore is simulated: it becomes ready
        # this many seconds after it was asked for, as a Deep Archive restore does after hours.
        self.restore_delay = timedelta(seconds=restore_delay_seconds)

    def _path(self, key: str, tier: str) -> Path:
        # String tests (a move calls this several times): no absolute keys, no ".." segment.
        if (
            key.startswith("/")
            or key == ".."
            or key.startswith("../")
            or "/../" in key
            or key.endswith("/..")
        ):
            raise ValueError(f"Unsafe object key {key!r}")
        return Path(f"{self.root}/{tier}/{key}")

    def spool_dir(self) -> Path:
        path = self.root / ".incoming"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(
        self, *, key: str, path: Path, tier: str, sha256: str, replace: bool = False
    ) -> StoredObject:
        target = self._path(key, tier)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            if replace:
                os.replace(path, target)
            else:
                self._link_new(path, target, key=key, sha256=sha256)
            size = target.stat().st_size
        except OSError as exc:
            raise StorageUnavailable(f"Could not store {key}: {exc.strerror or exc}") from exc
        return StoredObject(key=key, size=size, storage_class=tier)

    def _link_new(self, path: Path, target: Path, *, key: str, sha256: str) -> None:
        """Give the spool file its key without ever replacing what is there: a hard link fails
        when the name exists (same volume: the object appears whole or not at all)."""
        try:
            os.link(path, target)
        except FileExistsError:
            if not _same_bytes(target, path, sha256):
                path.unlink(missing_ok=True)
                raise ObjectExists(
                    f"{key} already holds another object; it was not overwritten."
                ) from None
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            # No hard links here: an exclusive rename is not available either, so the check and
            # the rename are two steps (keys are new for every ingest, so nothing races here).
            if target.exists() and not _same_bytes(target, path, sha256):
                path.unlink(missing_ok=True)
                raise ObjectExists(
                    f"{key} already holds another object; it was not overwritten."
                ) from None
            os.replace(path, target)
        path.unlink(missing_ok=True)

    def head(self, *, key: str, tier: str) -> StoredObject | None:
        try:
            return StoredObject(
                key=key, size=self._path(key, tier).stat().st_size, storage_class=tier
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc

    def iter_bytes(
        self,
        *,
        key: str,
        tier: str,
        chunk_size: int = CHUNK,
        offset: int = 0,
        length: int | None = None,
    ) -> Iterator[bytes]:
        range_check(offset, length)
        try:
            handle = open(self._path(key, tier), "rb")  # noqa: SIM115 - closed by the generator
        except OSError as exc:
            raise StorageUnavailable(f"Could not read {key}: {exc.strerror or exc}") from exc
        with handle:
            if offset:
                handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                chunk = handle.read(chunk_size if remaining is None else min(chunk_size, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def open_local(self, *, key: str, tier: str) -> BufferedReader:
        try:
            return open(self._path(key, tier), "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise StorageUnavailable(f"Could not read {key}: {exc.strerror or exc}") from exc

    def delete(self, *, key: str, tier: str) -> None:
        try:
            self._path(key, tier).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc

    # --- listing ------------------------------------------------------------------------------

    def iter_objects(self, *, prefix: str) -> Iterator[ListedObject]:
        # One walk per tier root, merged by key: each walk is in key order, so the merge is too.
        return heapq.merge(*(self._walk(tier, prefix) for tier in TIERS), key=lambda o: o.key)

    def storage_class_for(self, tier: str) -> str:
        return tier

    def _walk(self, tier: str, prefix: str) -> Iterator[ListedObject]:
        head, _, rest = prefix.rpartition("/")
        if head:
            self._path(head, tier)  # refuses an unsafe prefix like a key
        start = self.root / tier / head if head else self.root / tier
        yield from self._walk_dir(start, f"{head}/" if head else "", rest, tier)

    def _walk_dir(
        self, directory: Path, key_prefix: str, name_prefix: str, tier: str
    ) -> Iterator[ListedObject]:
        """The objects under ``directory`` in key order. A folder sorts as its name plus "/", the
        character its keys continue with, so that "a-b" (a file) comes before "a/x" as in S3.
        Names starting with "." are temporary names of a tier change, never objects."""
        try:
            with os.scandir(directory) as scan:
                entries = sorted(
                    (entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name)
                    for entry in scan
                    if entry.name.startswith(name_prefix) and not entry.name.startswith(".")
                )
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageUnavailable(f"Could not list {directory}: {exc.strerror or exc}") from exc
        for name in entries:
            if name.endswith("/"):
                yield from self._walk_dir(directory / name[:-1], key_prefix + name, "", tier)
                continue
            try:
                size = (directory / name).stat().st_size
            except FileNotFoundError:
                continue  # deleted since the folder was read: no longer an object
            except OSError as exc:
                raise StorageUnavailable(f"Could not list {name}: {exc.strerror or exc}") from exc
            yield ListedObject(key=key_prefix + name, size=size, storage_class=tier)

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

    def _restore_marker(self, key: str, tier: str) -> Path:
        return self.root / ".restores" / tier / f"{key}.json"

    def restore_start(self, *, key: str, tier: str, days: int) -> None:
        if self.head(key=key, tier=tier) is None:
            raise StorageUnavailable(f"Could not restore {key}: no such object in {tier}.")
        if self.restore_status(key=key, tier=tier).requested:
            return
        marker = self._restore_marker(key, tier)
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_text(
                json.dumps({"requested_at": datetime.now(UTC).isoformat(), "days": days})
            )
            os.replace(tmp, marker)
        except OSError as exc:
            raise StorageUnavailable(f"Could not restore {key}: {exc.strerror or exc}") from exc

    def restore_status(self, *, key: str, tier: str) -> RestoreStatus:
        marker = self._restore_marker(key, tier)
        try:
            data = json.loads(marker.read_text())
        except FileNotFoundError:
            return RestoreStatus(requested=False, ready=False)
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(f"Could not read the restore state of {key}: {exc}") from exc
        ready_at = datetime.fromisoformat(data["requested_at"]) + self.restore_delay
        expires_at = ready_at + timedelta(days=int(data["days"]))
        now = datetime.now(UTC)
        if now >= expires_at:
            marker.unlink(missing_ok=True)
            return RestoreStatus(requested=False, ready=False)
        if now < ready_at:
            return RestoreStatus(requested=True, ready=False)
        return RestoreStatus(requested=True, ready=True, expires_at=expires_at)

    # --- tier changes -------------------------------------------------------------------------

    def place(self) -> str:
        return f"file://{self.root.resolve()}"

    def change_tier(
        self, *, key: str, from_tier: str, to_tier: str, size: int | None = None
    ) -> None:
        """A hard link of the object in the target tier's root: no byte is copied, and the object
        stays readable under the tier the index names until ``change_tier_finish`` after the
        index switch. Both the link (under a temporary name) and its rename are atomic."""
        source, target = self._path(key, from_tier), self._path(key, to_tier)
        try:
            if target.exists() and (not source.exists() or os.path.samefile(source, target)):
                return  # done already (and maybe finished: the source link is gone)
            if not source.exists():
                raise StorageRefused(f"{key} is not in the {from_tier} tier of this location.")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                os.link(source, tmp)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                with open(source, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
            try:
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"Could not move {key} to {to_tier}: {exc.strerror or exc}"
            ) from exc

    def change_tier_finish(self, *, key: str, from_tier: str, to_tier: str) -> None:
        source = self._path(key, from_tier)
        try:
            # Never the last copy: the link in the target tier is the one the index now names.
            if to_tier != from_tier and self._path(key, to_tier).exists():
                source.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"Could not remove {key} from {from_tier}: {exc.strerror or exc}"
            ) from exc

    def verify(self, *, key: str, tier: str, size: int, sha256: str) -> StoredObject:
        # The filesystem records no checksum: the size is what a HEAD can tell; the bytes were
        # hashed when they were stored and a tier change never rewrites them.
        stored = self.head(key=key, tier=tier)
        if stored is None:
            raise VerificationFailed(f"{key} is not in the {tier} tier after the move.")
        if stored.size != size:
            raise VerificationFailed(
                f"{key} has {stored.size} bytes in the {tier} tier, expected {size}."
            )
        return stored
