"""Object storage behind one small interface: the local filesystem (embedded default) or any S3 API.

Keys carry the organization: ``org-<id>/<study>/<series>/<sop>.dcm``. Tiers are separate roots on
the filesystem and storage classes on S3 (per location, see ``StorageLocation.storage_class``).
"""

from archive.storage.base import (
    ObjectStore,
    RestoreStatus,
    StorageRefused,
    StorageUnavailable,
    StoredObject,
    VerificationFailed,
)
from archive.storage.registry import store_for

__all__ = [
    "ObjectStore",
    "RestoreStatus",
    "StorageRefused",
    "StorageUnavailable",
    "StoredObject",
    "VerificationFailed",
    "store_for",
]
