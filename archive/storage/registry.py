"""One store per location: the platform default from settings, or the hospital's bucket."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from archive.models import DEFAULT_STORAGE_CLASSES
from archive.storage.base import ObjectStore
from archive.storage.credentials import decrypt
from archive.storage.filesystem import FilesystemStore

if TYPE_CHECKING:
    from archive.models import StorageLocation
    from archive.storage.s3 import S3Store


def _s3_store() -> type[S3Store]:
    # boto3 and botocore (some 34 MB) load with the first S3 store a process uses: web workers
    # and tasks on the filesystem backend never pay for them.
    from archive.storage.s3 import S3Store

    return S3Store


def platform_store() -> ObjectStore:
    if settings.ARCHIVE_BACKEND == "s3":
        return _s3_store()(
            bucket=settings.ARCHIVE_S3_BUCKET,
            prefix=settings.ARCHIVE_S3_PREFIX,
            endpoint_url=settings.ARCHIVE_S3_ENDPOINT_URL,
            region=settings.ARCHIVE_S3_REGION,
            access_key_id=settings.ARCHIVE_S3_ACCESS_KEY_ID,
            secret_access_key=settings.ARCHIVE_S3_SECRET_ACCESS_KEY,
            storage_classes=DEFAULT_STORAGE_CLASSES,
            spool_root=str(settings.ARCHIVE_SPOOL_ROOT),
            shared_client=True,
            guarded=False,  # the operator's endpoint, not a tenant's (it may well be private)
        )
    return FilesystemStore(
        settings.ARCHIVE_ROOT, restore_delay_seconds=settings.ARCHIVE_FS_RESTORE_SECONDS
    )


def store_for(location: StorageLocation) -> ObjectStore:
    if location.kind == "platform":
        return platform_store()
    return _s3_store()(
        bucket=location.bucket,
        prefix=location.prefix,
        endpoint_url=location.endpoint_url or None,
        region=location.region or None,
        access_key_id=location.access_key_id or None,
        secret_access_key=decrypt(location.secret_access_key_encrypted) or None,
        storage_classes={t: location.storage_class(t) for t in ("hot", "warm", "cold", "archive")},
        encryption=location.encryption,
        kms_key_id=location.kms_key_id,
        spool_root=str(settings.ARCHIVE_SPOOL_ROOT),
        shared_client=True,
    )
