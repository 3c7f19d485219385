"""Listing a store's objects under a prefix (``iter_objects``): key order, sizes, tiers, on the
filesystem and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from archive.models import DEFAULT_STORAGE_CLASSES
from archive.storage import StorageUnavailable
from archive.storage.filesystem import FilesystemStore
from archive.storage.s3 import S3Store
from tests.archive.conftest_s3 import ACCESS_KEY, REGION, SECRET_KEY, Bucket

pytest_plugins = ["tests.archive.conftest_s3"]

# Keys chosen so that a naive folder walk would get the order wrong: "a-b" sorts before "a/"
# ("-" is 0x2d, "/" 0x2f), and "a.dcm" between them.
KEYS = {
    "org-1/a/x.dcm": ("hot", 3),
    "org-1/a-b": ("cold", 5),
    "org-1/a.dcm": ("warm", 7),
    "org-1/b/c/d.dcm": ("archive", 11),
    "org-10/other.dcm": ("hot", 13),
    "org-2/elsewhere.dcm": ("hot", 17),
}


def put(store: Any, key: str, tier: str, size: int) -> None:
    data = b"x" * size
    path = store.spool_dir() / "upload.part"
    path.write_bytes(data)
    store.put_file(key=key, path=path, tier=tier, sha256=hashlib.sha256(data).hexdigest())


def fill(store: Any) -> None:
    for key, (tier, size) in KEYS.items():
        put(store, key, tier, size)


def s3_store(bucket: Bucket, prefix: str = "pfx") -> S3Store:
    return S3Store(
        bucket=bucket.name,
        prefix=prefix,
        endpoint_url=bucket.endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        storage_classes=dict(DEFAULT_STORAGE_CLASSES),
    )


def expected(prefix: str, store: Any) -> list[tuple[str, int, str]]:
    return sorted(
        (key, size, store.storage_class_for(tier))
        for key, (tier, size) in KEYS.items()
        if key.startswith(prefix)
    )


def listed(store: Any, prefix: str) -> list[tuple[str, int, str]]:
    return [(o.key, o.size, o.storage_class) for o in store.iter_objects(prefix=prefix)]


@pytest.mark.parametrize("prefix", ["org-1/", "org-1/a", "org-", "", "org-3/"])
def test_filesystem_lists_in_key_order_with_tier_and_size(tmp_path: Path, prefix: str) -> None:
    store = FilesystemStore(tmp_path)
    fill(store)
    assert listed(store, prefix) == expected(prefix, store)


def test_filesystem_listing_skips_spool_markers_and_temporary_names(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    fill(store)
    (store.spool_dir() / "org-1-upload.part").write_bytes(b"spool")
    (tmp_path / "hot" / "org-1" / ".x.dcm.0123.tmp").write_bytes(b"half a link")
    store.restore_start(key="org-1/b/c/d.dcm", tier="archive", days=1)
    assert listed(store, "org-1/") == expected("org-1/", store)


def test_filesystem_lists_an_object_in_two_tiers_during_a_tier_change(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    put(store, "org-1/s.dcm", "hot", 4)
    store.change_tier(key="org-1/s.dcm", from_tier="hot", to_tier="cold")
    assert sorted(listed(store, "org-1/")) == [
        ("org-1/s.dcm", 4, "cold"),
        ("org-1/s.dcm", 4, "hot"),
    ]
    store.change_tier_finish(key="org-1/s.dcm", from_tier="hot", to_tier="cold")
    assert listed(store, "org-1/") == [("org-1/s.dcm", 4, "cold")]


def test_filesystem_refuses_an_unsafe_prefix(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        list(FilesystemStore(tmp_path).iter_objects(prefix="../etc/"))


@pytest.mark.parametrize("prefix", ["org-1/", "org-1/a", ""])
def test_s3_lists_in_key_order_with_storage_class(s3_bucket: Bucket, prefix: str) -> None:
    store = s3_store(s3_bucket)
    fill(store)
    s3_bucket.put("outside-the-prefix/org-1/x.dcm", b"not this location's")
    assert listed(store, prefix) == expected(prefix, store)


def test_s3_listing_streams_more_than_one_page(s3_bucket: Bucket) -> None:
    store = s3_store(s3_bucket, prefix="")
    for n in range(1005):
        s3_bucket.put(f"org-1/{n:05d}.dcm", b"y")
    keys = [o.key for o in store.iter_objects(prefix="org-1/")]
    assert keys == [f"org-1/{n:05d}.dcm" for n in range(1005)]


def test_s3_listing_of_an_unreachable_store_raises_storage_unavailable(failing_s3: str) -> None:
    store = S3Store(
        bucket="b",
        endpoint_url=failing_s3,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        storage_classes=dict(DEFAULT_STORAGE_CLASSES),
    )
    with pytest.raises(StorageUnavailable):
        list(store.iter_objects(prefix="org-1/"))
