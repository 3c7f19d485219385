"""The one ingestion pipeline behind every door (STOW-RS, C-STORE, upload, bucket import).

validate -> deduplicate -> store (and verify) -> index + meter in one transaction -> follow-up work.

Invariant 2 (no lost data): the index row is written only after the bytes are stored and their
size verified; a ``PendingObject`` intent row is committed before the bytes are written and
removed in the transaction that adopts them, so a crash in between leaves a row the cleanup job
uses to delete the orphan. If the index transaction fails, the stored bytes are deleted at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from archive.dicom import (
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_UID_MISMATCH,
    DicomRejected,
    Header,
    read_header,
)
from archive.models import Instance, PendingObject, Series, StorageLocation, Study
from archive.storage import ObjectStore, StorageUnavailable, store_for
from billing.metering import record_usage, storage_delta
from tenants.models import Organization

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass
class IngestResult:
    """What happened to one object. ``status``: stored, duplicate or failed."""

    status: str
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    size: int = 0
    reason_code: int = 0
    reason: str = ""
    instance_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate")


@dataclass
class Spooled:
    path: Path
    size: int
    sha256: str


def location_primary(org: Organization) -> StorageLocation:
    """The organization's primary location; the platform default unless it configured a bucket."""
    location = (
        StorageLocation.objects.for_org(org).filter(role=StorageLocation.Role.PRIMARY).first()
    )
    if location is not None:
        return location
    try:
        with transaction.atomic():
            return StorageLocation.objects.create(
                organization=org, name="Platform storage", kind=StorageLocation.Kind.PLATFORM
            )
    except IntegrityError:  # created concurrently
        return StorageLocation.objects.for_org(org).get(role=StorageLocation.Role.PRIMARY)


def spool_chunks(store: ObjectStore, chunks: Iterable[bytes]) -> Spooled:
    """Write a stream to a local spool file while hashing it: constant memory, any size."""
    path = store.spool_dir() / f"{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                if chunk:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Spooled(path=path, size=size, sha256=digest.hexdigest())


def spool_file(store: ObjectStore, source: BinaryIO) -> Spooled:
    return spool_chunks(store, iter(lambda: source.read(CHUNK), b""))


def spool_existing(path: Path) -> Spooled:
    """A file already on disk (e.g. written by the C-STORE listener): hash it in place."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return Spooled(path=path, size=os.path.getsize(path), sha256=digest.hexdigest())


def object_key(org: Organization, header: Header) -> str:
    return f"org-{org.pk}/{header.study_uid}/{header.series_uid}/{header.sop_instance_uid}.dcm"


def _fail(header: Header | None, code: int, reason: str, size: int = 0) -> IngestResult:
    return IngestResult(
        status="failed",
        sop_instance_uid=header.sop_instance_uid if header else "",
        sop_class_uid=header.sop_class_uid if header else "",
        study_uid=header.study_uid if header else "",
        series_uid=header.series_uid if header else "",
        size=size,
        reason_code=code,
        reason=reason,
    )


def _ok(status: str, header: Header, size: int, instance_id: int | None) -> IngestResult:
    return IngestResult(
        status=status,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        size=size,
        instance_id=instance_id,
    )


def _study_upsert_locked(org: Organization, header: Header, now: datetime) -> Study:
    """Get or create the study row, locked for the aggregate update that follows.

    Precondition: inside a transaction. Two ingests of a new study race on the unique constraint;
    the loser re-reads the winner's row.
    """
    study = (
        Study.objects.for_org(org).select_for_update().filter(study_uid=header.study_uid).first()
    )
    if study is None:
        try:
            with transaction.atomic():
                study = Study.objects.create(
                    organization=org,
                    study_uid=header.study_uid,
                    metadata=header.study_json,
                    created_at=now,
                    **header.study,
                )
        except IntegrityError:
            study = Study.objects.for_org(org).select_for_update().get(study_uid=header.study_uid)
    return study


def _series_upsert(
    org: Organization, study: Study, header: Header, now: datetime
) -> tuple[Series, bool]:
    series = Series.objects.for_org(org).filter(series_uid=header.series_uid).first()
    if series is not None:
        return series, False
    try:
        with transaction.atomic():
            return (
                Series.objects.create(
                    organization=org,
                    study=study,
                    series_uid=header.series_uid,
                    metadata=header.series_json,
                    created_at=now,
                    **header.series,
                ),
                True,
            )
    except IntegrityError:
        return Series.objects.for_org(org).get(series_uid=header.series_uid), False


def _index(
    *,
    org: Organization,
    location: StorageLocation,
    header: Header,
    spooled: Spooled,
    key: str,
    pending: PendingObject,
) -> Instance:
    """Write the index rows, aggregates, usage and ledger in one transaction."""
    now = timezone.now()
    with transaction.atomic():
        study = _study_upsert_locked(org, header, now)
        series, new_series = _series_upsert(org, study, header, now)
        if series.study_id != study.pk:
            raise DicomRejected(
                STUDY_UID_MISMATCH, f"Series {header.series_uid} already belongs to another study."
            )
        instance = Instance.objects.create(
            organization=org,
            study=study,
            series=series,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            instance_number=header.instance_number,
            size_bytes=spooled.size,
            sha256=spooled.sha256,
            location=location,
            object_key=key,
            tier="hot",
            received_at=now,
            metadata=header.metadata,
        )
        Series.objects.filter(pk=series.pk).update(
            instance_count=F("instance_count") + 1,
            total_bytes=F("total_bytes") + spooled.size,
            bytes_hot=F("bytes_hot") + spooled.size,
        )
        modality = header.series.get("modality") or ""
        study_update: dict[str, object] = {
            "instance_count": F("instance_count") + 1,
            "total_bytes": F("total_bytes") + spooled.size,
            "bytes_hot": F("bytes_hot") + spooled.size,
            "updated_at": now,
        }
        if new_series:
            study_update["series_count"] = F("series_count") + 1
        if modality and f"\\{modality}\\" not in (study.modalities or ""):
            study_update["modalities"] = (study.modalities or "\\") + f"{modality}\\"
        Study.objects.filter(pk=study.pk).update(**study_update)
        base_key = f"{header.sop_instance_uid}:{spooled.sha256}"
        record_usage(
            org=org,
            meter="ingest.bytes",
            quantity=spooled.size,
            at=now,
            idempotency_key=f"ingest.bytes:{base_key}",
        )
        record_usage(
            org=org,
            meter="ingest.instances",
            quantity=1,
            at=now,
            idempotency_key=f"ingest.instances:{base_key}",
        )
        storage_delta(
            org=org,
            tier="hot",
            delta_bytes=spooled.size,
            at=now,
            idempotency_key=f"store:{base_key}",
        )
        PendingObject.objects.filter(pk=pending.pk).delete()

        def _follow_up() -> None:
            # One settle check per study and settle window, not one queued task per instance:
            # the check re-queues itself while the study is still receiving.
            if cache.add(
                f"archive:settle:{org.pk}:{study.pk}",
                1,
                timeout=max(settings.ARCHIVE_SETTLE_SECONDS, 1),
            ):
                from archive.tasks import study_settle

                study_settle.apply_async(
                    (org.pk, study.pk), countdown=settings.ARCHIVE_SETTLE_SECONDS
                )

        transaction.on_commit(_follow_up)
    return instance


def instance_ingest(
    *,
    org: Organization,
    spooled: Spooled,
    expected_study_uid: str | None = None,
    location: StorageLocation | None = None,
) -> IngestResult:
    """Ingest one spooled DICOM file. Never raises for bad input: the result says what happened.

    The spool file is consumed (moved into storage or deleted).
    """
    location = location or location_primary(org)
    store = store_for(location)
    header: Header | None = None
    try:
        try:
            header = read_header(spooled.path)
        except DicomRejected as exc:
            return _fail(None, exc.reason_code, exc.message, spooled.size)
        if expected_study_uid and header.study_uid != expected_study_uid:
            return _fail(
                header,
                STUDY_UID_MISMATCH,
                f"The instance belongs to study {header.study_uid}, not to {expected_study_uid} named in the URL.",
                spooled.size,
            )
        existing = (
            Instance.objects.for_org(org).filter(sop_instance_uid=header.sop_instance_uid).first()
        )
        if existing is not None:
            if existing.sha256 == spooled.sha256:
                return _ok("duplicate", header, spooled.size, existing.pk)
            return _fail(
                header,
                DUPLICATE_SOP_INSTANCE,
                "A different object is already stored under this SOP Instance UID; it was not overwritten.",
                spooled.size,
            )
        quota = _quota_left(org)
        if quota is not None and spooled.size > quota:
            return _fail(
                header,
                OUT_OF_RESOURCES,
                "The organization's storage quota is exhausted.",
                spooled.size,
            )
        key = object_key(org, header)
        pending = PendingObject.objects.create(
            organization=org, location=location, object_key=key, tier="hot"
        )
        try:
            stored = store.put_file(key=key, path=spooled.path, tier="hot", sha256=spooled.sha256)
            if stored.size != spooled.size:
                raise StorageUnavailable(
                    f"Stored size {stored.size} differs from received size {spooled.size}."
                )
        except StorageUnavailable as exc:
            _discard(store, key)
            PendingObject.objects.filter(pk=pending.pk).delete()
            logger.warning("ingest: storing failed for org %s: %s", org.pk, exc)
            return _fail(
                header, PROCESSING_FAILURE, f"The object store failed: {exc}", spooled.size
            )
        try:
            instance = _index(
                org=org, location=location, header=header, spooled=spooled, key=key, pending=pending
            )
        except IntegrityError:
            # A concurrent ingest of the same SOP Instance UID won; keep its object, not ours.
            _discard(store, key, keep_if_indexed=True, org=org)
            PendingObject.objects.filter(pk=pending.pk).delete()
            return _retry_as_duplicate(org, header, spooled)
        except DicomRejected as exc:
            _discard(store, key)
            PendingObject.objects.filter(pk=pending.pk).delete()
            return _fail(header, exc.reason_code, exc.message, spooled.size)
        except Exception:
            _discard(store, key)
            PendingObject.objects.filter(pk=pending.pk).delete()
            raise
        return _ok("stored", header, spooled.size, instance.pk)
    finally:
        spooled.path.unlink(missing_ok=True)


def _retry_as_duplicate(org: Organization, header: Header, spooled: Spooled) -> IngestResult:
    existing = (
        Instance.objects.for_org(org).filter(sop_instance_uid=header.sop_instance_uid).first()
    )
    if existing is not None and existing.sha256 == spooled.sha256:
        return _ok("duplicate", header, spooled.size, existing.pk)
    return _fail(
        header,
        DUPLICATE_SOP_INSTANCE,
        "A different object was stored concurrently under this SOP Instance UID.",
    )


def _discard(
    store: ObjectStore, key: str, *, keep_if_indexed: bool = False, org: Organization | None = None
) -> None:
    if (
        keep_if_indexed
        and org is not None
        and Instance.objects.for_org(org).filter(object_key=key).exists()
    ):
        return
    try:
        store.delete(key=key, tier="hot")
    except StorageUnavailable:
        logger.warning("ingest: could not delete %s now; the cleanup job will", key)


def _quota_left(org: Organization) -> int | None:
    from archive.models import ArchiveSettings

    config = ArchiveSettings.objects.for_org(org).first()
    if config is None or config.storage_quota_bytes is None:
        return None
    used = Study.objects.for_org(org).aggregate(total=Sum("total_bytes"))["total"] or 0
    return max(config.storage_quota_bytes - used, 0)


def orphans_cleanup(*, older_than: timedelta | None = None, limit: int = 500) -> int:
    """Beat job: delete objects whose ingest crashed between storing and indexing.

    An object that an instance references is kept (the crash came after the index commit).
    """
    age = older_than or timedelta(minutes=settings.ARCHIVE_ORPHAN_AGE_MINUTES)
    removed = 0
    for pending in PendingObject.objects.select_related("location").filter(
        created_at__lt=timezone.now() - age
    )[:limit]:
        referenced = Instance.objects.filter(
            organization_id=pending.organization_id, object_key=pending.object_key
        ).exists()
        if not referenced:
            try:
                store_for(pending.location).delete(key=pending.object_key, tier=pending.tier)
            except StorageUnavailable:
                continue  # try again next run
            removed += 1
        pending.delete()
    return removed
