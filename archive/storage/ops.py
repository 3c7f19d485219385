"""Operations across two stores: copying an object from one location to another, verified."""

from __future__ import annotations

import hashlib
import uuid

from archive.storage.base import ObjectStore, StoredObject, VerificationFailed


def copy_between(
    *,
    source: ObjectStore,
    source_tier: str,
    target: ObjectStore,
    target_tier: str,
    key: str,
    size: int,
    sha256: str,
) -> StoredObject:
    """Copy ``key`` from one store to another (same key), in constant memory.

    The bytes stream from the source into a spool file of the target while they are hashed; a
    copy whose size or SHA-256 differs from the index's is never stored (VerificationFailed).
    Idempotent: an object already in the target with the expected size and checksum is kept.
    """
    try:
        return target.verify(key=key, tier=target_tier, size=size, sha256=sha256)
    except VerificationFailed:
        pass  # not there (or a partial, unverified leftover): copy it
    path = target.spool_dir() / f"{uuid.uuid4().hex}.copy"
    digest = hashlib.sha256()
    copied = 0
    try:
        with open(path, "wb") as out:
            for chunk in source.iter_bytes(key=key, tier=source_tier):
                digest.update(chunk)
                out.write(chunk)
                copied += len(chunk)
        if copied != size or digest.hexdigest() != sha256:
            raise VerificationFailed(
                f"{key} read back from its location does not match the index "
                f"({copied} bytes, expected {size}; checksum "
                f"{'matches' if digest.hexdigest() == sha256 else 'differs'}); not copied."
            )
        stored = target.put_file(key=key, path=path, tier=target_tier, sha256=sha256, replace=True)
    finally:
        path.unlink(missing_ok=True)
    return stored
