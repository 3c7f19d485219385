"""Tier changes, copies between stores, verification and ranged reads, on the filesystem and on
S3 (moto's server over HTTP)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from archive.models import DEFAULT_STORAGE_CLASSES
from archive.storage import StorageRefused, StorageUnavailable, VerificationFailed
from archive.storage.filesystem import FilesystemStore
from archive.storage.ops import copy_between
from archive.storage.s3 import S3Store
from tests.archive.conftest_s3 import ACCESS_KEY, REGION, SECRET_KEY, Bucket

pytest_plugins = ["tests.archive.conftest_s3"]

KEY = "org-1/study/series/sop.dcm"


def put(store: Any, data: bytes, tier: str = "hot", key: str = KEY) -> str:
    sha = hashlib.sha256(data).hexdigest()
    # A name of its own: the S3 store's spool folder is shared by every process on the machine.
    path = store.spool_dir() / f"upload-{uuid.uuid4().hex}.part"
    path.write_bytes(data)
    store.put_file(key=key, path=path, tier=tier, sha256=sha)
    return sha


def s3_store(bucket: Bucket, **classes: str) -> S3Store:
    return S3Store(
        bucket=bucket.name,
        prefix="pfx",
        endpoint_url=bucket.endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        storage_classes={**DEFAULT_STORAGE_CLASSES, **classes},
        encryption="AES256",
    )


# --- filesystem ---------------------------------------------------------------------------------


def test_filesystem_tier_change_links_then_finish_removes_the_old_tier(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    put(store, b"x" * 1000)
    store.change_tier(key=KEY, from_tier="hot", to_tier="cold")
    # Readable in both until the index switched: the old path is what readers use meanwhile.
    assert (tmp_path / "hot" / KEY).exists() and (tmp_path / "cold" / KEY).exists()
    assert os.path.samefile(tmp_path / "hot" / KEY, tmp_path / "cold" / KEY)
    assert store.verify(key=KEY, tier="cold", size=1000, sha256="").size == 1000
    store.change_tier_finish(key=KEY, from_tier="hot", to_tier="cold")
    assert not (tmp_path / "hot" / KEY).exists()
    assert (tmp_path / "cold" / KEY).read_bytes() == b"x" * 1000


def test_filesystem_tier_change_is_idempotent(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    put(store, b"y" * 10)
    for _ in range(2):
        store.change_tier(key=KEY, from_tier="hot", to_tier="warm")
    store.change_tier_finish(key=KEY, from_tier="hot", to_tier="warm")
    # The source is gone and the target exists: it already happened.
    store.change_tier(key=KEY, from_tier="hot", to_tier="warm")
    store.change_tier_finish(key=KEY, from_tier="hot", to_tier="warm")
    assert (tmp_path / "warm" / KEY).read_bytes() == b"y" * 10


def test_filesystem_finish_never_removes_the_last_copy(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    put(store, b"z")
    store.change_tier_finish(key=KEY, from_tier="hot", to_tier="cold")
    assert (tmp_path / "hot" / KEY).exists()


def test_filesystem_tier_change_of_a_missing_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageRefused, match="not in the hot tier"):
        FilesystemStore(tmp_path).change_tier(key=KEY, from_tier="hot", to_tier="cold")


def test_filesystem_copies_when_links_are_impossible(tmp_path: Path, monkeypatch: Any) -> None:
    store = FilesystemStore(tmp_path)
    put(store, b"q" * 3000)

    def no_link(src: Any, dst: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    store.change_tier(key=KEY, from_tier="hot", to_tier="archive")
    assert (tmp_path / "archive" / KEY).read_bytes() == b"q" * 3000
    assert not os.path.samefile(tmp_path / "hot" / KEY, tmp_path / "archive" / KEY)


def test_filesystem_verify_names_the_problem(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    put(store, b"a" * 5)
    with pytest.raises(VerificationFailed, match="not in the cold tier"):
        store.verify(key=KEY, tier="cold", size=5, sha256="")
    with pytest.raises(VerificationFailed, match="5 bytes in the hot tier, expected 6"):
        store.verify(key=KEY, tier="hot", size=6, sha256="")


def test_copy_between_filesystems_streams_and_verifies(tmp_path: Path) -> None:
    source, target = FilesystemStore(tmp_path / "a"), FilesystemStore(tmp_path / "b")
    data = os.urandom(3 * 1024 * 1024 + 17)
    sha = put(source, data)
    stored = copy_between(
        source=source,
        source_tier="hot",
        target=target,
        target_tier="cold",
        key=KEY,
        size=len(data),
        sha256=sha,
    )
    assert stored.size == len(data)
    assert (tmp_path / "b" / "cold" / KEY).read_bytes() == data
    assert (tmp_path / "a" / "hot" / KEY).exists()  # the source is deleted by the move, later
    assert not list((tmp_path / "b" / ".incoming").iterdir())  # no spool file left behind


def test_copy_between_refuses_bytes_that_differ_from_the_index(tmp_path: Path) -> None:
    source, target = FilesystemStore(tmp_path / "a"), FilesystemStore(tmp_path / "b")
    put(source, b"corrupted")
    with pytest.raises(VerificationFailed, match="does not match the index"):
        copy_between(
            source=source,
            source_tier="hot",
            target=target,
            target_tier="hot",
            key=KEY,
            size=9,
            sha256="0" * 64,
        )
    assert not (tmp_path / "b" / "hot" / KEY).exists()


# --- S3 ------------------------------------------------------------------------------------------


def test_s3_tier_change_is_a_server_side_copy_keeping_the_checksum(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket)
    data = os.urandom(256 * 1024)
    sha = put(store, data)
    calls: list[str] = []
    store.client.meta.events.register(
        "before-call.s3", lambda model, **kwargs: calls.append(model.name)
    )
    store.change_tier(key=KEY, from_tier="hot", to_tier="cold", size=len(data))
    assert calls == ["CopyObject"]  # no GetObject / PutObject: no byte through this process
    head = s3_bucket.head(f"pfx/{KEY}")
    assert head["StorageClass"] == "GLACIER_IR"
    assert head["Metadata"] == {"sha256": sha}
    assert head["ServerSideEncryption"] == "AES256"
    assert store.verify(key=KEY, tier="cold", size=len(data), sha256=sha).storage_class == (
        "GLACIER_IR"
    )
    # A rerun after the copy succeeded is not an error.
    store.change_tier(key=KEY, from_tier="hot", to_tier="cold", size=len(data))


def test_s3_large_objects_use_a_multipart_copy(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket)
    data = os.urandom(11 * 1024 * 1024)
    sha = put(store, data)
    # The 5 GB threshold, scaled down: parts of 5 MiB (the S3 minimum).
    store.copy_multipart_threshold = store.copy_part_size = 5 * 1024 * 1024
    calls: list[str] = []
    store.client.meta.events.register(
        "before-call.s3", lambda model, **kwargs: calls.append(model.name)
    )
    store.change_tier(key=KEY, from_tier="hot", to_tier="warm", size=len(data))
    assert "UploadPartCopy" in calls and "GetObject" not in calls and "UploadPart" not in calls
    head = s3_bucket.head(f"pfx/{KEY}")
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ETag"].strip('"').endswith("-3")
    assert store.verify(key=KEY, tier="warm", size=len(data), sha256=sha)


def test_s3_verify_reports_class_size_and_checksum(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket)
    sha = put(store, b"abc")
    with pytest.raises(VerificationFailed) as caught:
        store.verify(key=KEY, tier="archive", size=4, sha256="f" * 64)
    message = str(caught.value)
    assert "storage class STANDARD, expected DEEP_ARCHIVE" in message
    assert "3 bytes, expected 4" in message
    assert "SHA-256 metadata" in message
    s3_bucket.put(f"pfx/{KEY}", b"abc")  # overwritten without the metadata
    with pytest.raises(VerificationFailed, match="SHA-256 metadata missing"):
        store.verify(key=KEY, tier="hot", size=3, sha256=sha)


def test_s3_tier_the_bucket_cannot_serve_is_refused(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket, archive="")
    put(store, b"abc")
    with pytest.raises(StorageRefused, match="no storage class for the archive tier"):
        store.change_tier(key=KEY, from_tier="hot", to_tier="archive", size=3)
    assert s3_bucket.head(f"pfx/{KEY}").get("StorageClass", "STANDARD") == "STANDARD"


def test_s3_archived_object_cannot_be_copied_out_without_a_restore(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket)
    put(store, b"abc", tier="archive")
    with pytest.raises(StorageRefused, match="not in the active tier"):
        store.change_tier(key=KEY, from_tier="archive", to_tier="hot", size=3)


def test_copy_between_filesystem_and_s3(s3_bucket: Bucket, tmp_path: Path) -> None:
    source, target = FilesystemStore(tmp_path), s3_store(s3_bucket)
    data = os.urandom(70_000)
    sha = put(source, data)
    copy_between(
        source=source,
        source_tier="hot",
        target=target,
        target_tier="cold",
        key=KEY,
        size=len(data),
        sha256=sha,
    )
    head = s3_bucket.head(f"pfx/{KEY}")
    assert head["StorageClass"] == "GLACIER_IR" and head["Metadata"] == {"sha256": sha}
    # Again: verified in place, not copied twice.
    calls: list[str] = []
    target.client.meta.events.register(
        "before-call.s3", lambda model, **kwargs: calls.append(model.name)
    )
    copy_between(
        source=source,
        source_tier="hot",
        target=target,
        target_tier="cold",
        key=KEY,
        size=len(data),
        sha256=sha,
    )
    assert calls == ["HeadObject"]


# --- ranged reads (both backends) --------------------------------------------------------------

RANGE_DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset recognisable


@pytest.fixture(params=["filesystem", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "s3":
        return s3_store(request.getfixturevalue("s3_bucket"))
    return FilesystemStore(tmp_path)


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, None),
        (1000, None),
        (1000, 50),
        (1000, 5000),
        (10_000, None),
        (10_000, 1000),  # runs past the end: what is there
        (10_240, None),  # at the end
        (20_000, 10),  # past the end
        (123, 0),
    ],
)
def test_iter_bytes_reads_the_range_asked_for(any_store: Any, offset: int, length: int | None):
    put(any_store, RANGE_DATA)

    chunks = list(
        any_store.iter_bytes(key=KEY, tier="hot", chunk_size=700, offset=offset, length=length)
    )

    end = None if length is None else offset + length
    assert b"".join(chunks) == RANGE_DATA[offset:end]
    assert all(0 < len(chunk) <= 700 for chunk in chunks)


def test_iter_bytes_refuses_a_negative_range(any_store: Any):
    put(any_store, RANGE_DATA)

    with pytest.raises(ValueError, match="Invalid byte range"):
        list(any_store.iter_bytes(key=KEY, tier="hot", offset=-1))
    with pytest.raises(ValueError, match="Invalid byte range"):
        list(any_store.iter_bytes(key=KEY, tier="hot", length=-1))


def test_s3_ranged_read_asks_the_server_for_the_range_only(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket)
    put(store, RANGE_DATA)
    ranges: list[str | None] = []
    store.client.meta.events.register(
        "before-call.s3.GetObject",
        lambda params, **kwargs: ranges.append(params["headers"].get("Range")),
    )

    assert b"".join(store.iter_bytes(key=KEY, tier="hot", offset=10, length=5)) == RANGE_DATA[10:15]
    assert b"".join(store.iter_bytes(key=KEY, tier="hot", offset=10_000)) == RANGE_DATA[10_000:]
    assert b"".join(store.iter_bytes(key=KEY, tier="hot")) == RANGE_DATA
    assert list(store.iter_bytes(key=KEY, tier="hot", offset=10, length=0)) == []

    # A whole read sends no Range; an empty one sends no request at all.
    assert ranges == ["bytes=10-14", "bytes=10000-", None]


def test_s3_ranged_read_of_a_missing_object_is_storage_unavailable(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket)

    with pytest.raises(StorageUnavailable, match="Could not read"):
        next(store.iter_bytes(key=KEY, tier="hot", offset=10, length=5))
