"""Object storage behind one small interface: the local filesystem (embedded default) or any S3 API.

Keys carry the organization: ``org-<id>/<study>/<series>/<instance>-<nonce>.dcm`` with digests of
the UIDs (see ``archive.ingest.pipeline.object_key``); older objects keep the UID-named keys they
were stored under. A store never replaces an object with different bytes (``ObjectExists``).
Tiers are separate roots on the filesystem and storage classes on S3 (per location, see
``StorageLocation.storage_class``); ``tiers`` is the tier catalog (minimum durations, retrieval,
which tier a location can serve), which every package that deals with tiers reads.
"""

from archive.storage.base import (
    ListedObject,
    ObjectExists,
    ObjectStore,
    RestoreStatus,
    StorageRefused,
    StorageUnavailable,
    StoredObject,
    VerificationFailed,
)
from archive.storage.registry import store_for

__all__ = [
    "ListedObject",
    "ObjectExists",
    "ObjectStore",
    "RestoreStatus",
    "StorageRefused",
    "StorageUnavailable",
    "StoredObject",
    "VerificationFailed",
    "store_for",
]
