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
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from celery import signature
from django.conf import settings
from django.core.cache import cache
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.utils import timezone
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from archive.common import threads
from archive.index.names import name_word_rows
from archive.index.selectors import archive_settings_get
from archive.ingest.dicom import (
    CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_UID_MISMATCH,
    DicomRejected,
    FrameLayout,
    Header,
    read_header,
)
from archive.locations.selectors import location_primary
from archive.models import (
    NAME_WORD_MODELS,
    FrameIndex,
    Instance,
    PendingObject,
    Series,
    StorageLocation,
    Study,
)
from archive.storage import ObjectExists, ObjectStore, StorageUnavailable, store_for
from archive.storage.tiers import TIER_CATALOG
from billing.metering import Delta, Usage, record_usage_bulk, storage_delta_bulk
from tenants.context import Actor
from tenants.models import Organization
from tenants.services import audit_record, webhook_event_emit

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Objects of a batch up to this size are stored PARALLEL_PUTS at a time.
PARALLEL_PUTS = 4
PARALLEL_PUT_MAX_BYTES = 16 * 1024 * 1024
# The File Meta group of an object compared with another is walked in its first bytes only.
FILE_META_MAX = 64 * 1024
DIFFERENT_OBJECT = (
    "A different object is already stored under this SOP Instance UID; it was not overwritten."
)


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
    header: Header | None = None  # already parsed from this file (the C-STORE listener does)


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


def _uid_digest(uid: str) -> str:
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def object_key(org: Organization, header: Header) -> str:
    """A new object's key: collision-free by construction, whatever the UIDs look like.

    ``org-<id>/<study>/<series>/<instance>-<nonce>.dcm`` where study, series and instance are
    128-bit digests of the full UIDs (a study's objects share a prefix, an operator can find
    them from its UID) and the nonce is new for every attempt: two ingests never write one key,
    not even two concurrent ones of the same SOP Instance UID, so the loser of the index race
    removes only its own object. No UID character ever reaches a path or key.
    """
    return (
        f"org-{org.pk}/{_uid_digest(header.study_uid)}/{_uid_digest(header.series_uid)}/"
        f"{_uid_digest(header.sop_instance_uid)}-{uuid.uuid4().hex[:16]}.dcm"
    )


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
                study = Study.objects.create(**_study_fields(org, header, now))
                _name_words_create([study])
        except IntegrityError:
            study = Study.objects.for_org(org).select_for_update().get(study_uid=header.study_uid)
    return study


def _name_words_create(studies: list[Study]) -> None:
    """The person-name words of new studies for fuzzy matching (``archive.index.names``), in
    the transaction that creates them: a study is never searchable without its words. The
    names are written only when a study is created, so its words never change."""
    for name_field, model in NAME_WORD_MODELS.items():
        model.objects.bulk_create(name_word_rows(model, name_field, studies))


def _study_fields(org: Organization, header: Header, now: datetime) -> dict[str, Any]:
    return {
        "organization": org,
        "study_uid": header.study_uid,
        "metadata": header.study_json,
        "created_at": now,
        **header.study,
    }


def _series_fields(
    org: Organization, study: Study, header: Header, now: datetime
) -> dict[str, Any]:
    return {
        "organization": org,
        "study": study,
        "series_uid": header.series_uid,
        "metadata": header.series_json,
        "created_at": now,
        **header.series,
    }


def _instance_row(
    org: Organization,
    location: StorageLocation,
    study: Study,
    series: Series,
    item: _Stored,
    now: datetime,
) -> Instance:
    header, spooled = item.header, item.spooled
    return Instance(
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
        object_key=item.key,
        tier="hot",
        received_at=now,
        metadata=header.metadata,
    )


def frame_index_row(org_id: int, instance_id: int, layout: FrameLayout) -> FrameIndex:
    """The index row that says where an instance's frames lie (``archive.ingest.dicom``)."""
    return FrameIndex(
        instance_id=instance_id,
        organization_id=org_id,
        vr=layout.vr,
        little_endian=layout.little_endian,
        offset=layout.offset,
        length=layout.length,
        frames=layout.frames,
        boundaries=layout.boundaries,
        problem=layout.problem,
    )


def _series_upsert(
    org: Organization, study: Study, header: Header, now: datetime
) -> tuple[Series, bool]:
    series = Series.objects.for_org(org).filter(series_uid=header.series_uid).first()
    if series is not None:
        return series, False
    try:
        with transaction.atomic():
            return Series.objects.create(**_series_fields(org, study, header, now)), True
    except IntegrityError:
        return Series.objects.for_org(org).get(series_uid=header.series_uid), False


@dataclass
class _Stored:
    """An object whose bytes are stored and verified, waiting for its index row."""

    header: Header
    spooled: Spooled
    key: str
    pending_id: int
    instance_id: int | None = None


class _BatchConflict(Exception):
    """The batch cannot be indexed in one go (a series of another study); index one by one."""


def _meter(org: Organization, items: list[_Stored], now: datetime) -> None:
    """Usage events and ledger deltas of the items: two statements, idempotent per object."""
    events: list[Usage] = []
    deltas: list[Delta] = []
    for item in items:
        base_key = f"{item.header.sop_instance_uid}:{item.spooled.sha256}"
        events.append(Usage("ingest.bytes", item.spooled.size, now, f"ingest.bytes:{base_key}"))
        events.append(Usage("ingest.instances", 1, now, f"ingest.instances:{base_key}"))
        deltas.append(Delta("hot", item.spooled.size, now, f"store:{base_key}"))
    record_usage_bulk(org=org, events=events)
    storage_delta_bulk(org=org, deltas=deltas)


def _settle_on_commit(org: Organization, study_ids: Iterable[int]) -> None:
    ids = sorted(set(study_ids))

    def _follow_up() -> None:
        # One settle check per study and settle window, not one queued task per instance:
        # the check re-queues itself while the study is still receiving.
        from archive.ingest.tasks import study_settle  # deferred: tasks imports this module

        for study_id in ids:
            if cache.add(
                f"archive:settle:{org.pk}:{study_id}",
                1,
                timeout=max(settings.ARCHIVE_SETTLE_SECONDS, 1),
            ):
                study_settle.apply_async(
                    (org.pk, study_id), countdown=settings.ARCHIVE_SETTLE_SECONDS
                )

    # Robust: the index has committed by then; a broker or cache that is down must not make the
    # caller believe the ingest failed (and remove the objects of indexed instances).
    transaction.on_commit(_follow_up, robust=True)


def _index(*, org: Organization, location: StorageLocation, items: list[_Stored]) -> None:
    """Index stored objects: rows, aggregates, usage and ledger of all of them in one transaction.

    Sets ``instance_id`` of every item. Preconditions: every item's bytes are stored and verified,
    their SOP Instance UIDs are distinct. Raises ``IntegrityError`` (a concurrent ingest of the
    same study, series or instance won a race) or ``_BatchConflict``; then nothing was written and
    the caller indexes the items one by one with ``_index_one``, which sorts out each case.
    """
    now = timezone.now()
    first: dict[str, Header] = {}
    series_first: dict[str, Header] = {}
    for item in items:
        first.setdefault(item.header.study_uid, item.header)
        series_first.setdefault(item.header.series_uid, item.header)
    with transaction.atomic():
        # Locked: the aggregates below are read-modify-write (modalities).
        studies = {
            s.study_uid: s
            for s in Study.objects.for_org(org)
            .select_for_update()
            .filter(study_uid__in=list(first))
        }
        _revive_trashed(org, studies.values(), now)
        missing = [uid for uid in first if uid not in studies]
        if missing:
            created = Study.objects.bulk_create(
                [Study(**_study_fields(org, first[uid], now)) for uid in missing]
            )
            _name_words_create(created)
            studies.update({s.study_uid: s for s in created})
        series = {
            s.series_uid: s
            for s in Series.objects.for_org(org).filter(series_uid__in=list(series_first))
        }
        new_series = [uid for uid in series_first if uid not in series]
        if new_series:
            created_series = Series.objects.bulk_create(
                [
                    Series(
                        **_series_fields(
                            org, studies[series_first[uid].study_uid], series_first[uid], now
                        )
                    )
                    for uid in new_series
                ]
            )
            series.update({s.series_uid: s for s in created_series})
        for item in items:
            if series[item.header.series_uid].study_id != studies[item.header.study_uid].pk:
                raise _BatchConflict(item.header.series_uid)
        rows = Instance.objects.bulk_create(
            [
                _instance_row(
                    org,
                    location,
                    studies[item.header.study_uid],
                    series[item.header.series_uid],
                    item,
                    now,
                )
                for item in items
            ]
        )
        for item, row in zip(items, rows, strict=True):
            item.instance_id = row.pk
        FrameIndex.objects.bulk_create(
            frame_index_row(org.pk, item.instance_id, item.header.frames)
            for item in items
            if item.header.frames is not None and item.instance_id is not None
        )
        per_series: dict[str, list[_Stored]] = {}
        for item in items:
            per_series.setdefault(item.header.series_uid, []).append(item)
        for uid, members in per_series.items():
            size = sum(m.spooled.size for m in members)
            Series.objects.filter(pk=series[uid].pk).update(
                instance_count=F("instance_count") + len(members),
                total_bytes=F("total_bytes") + size,
                bytes_hot=F("bytes_hot") + size,
            )
        for uid, study in studies.items():
            members = [item for item in items if item.header.study_uid == uid]
            size = sum(m.spooled.size for m in members)
            study_update: dict[str, object] = {
                "instance_count": F("instance_count") + len(members),
                "total_bytes": F("total_bytes") + size,
                "bytes_hot": F("bytes_hot") + size,
                "updated_at": now,
            }
            added = sum(1 for s in new_series if series_first[s].study_uid == uid)
            if added:
                study_update["series_count"] = F("series_count") + added
            modalities = study.modalities or ""
            for member in members:
                modality = member.header.series.get("modality") or ""
                if modality and f"\\{modality}\\" not in (modalities or "\\"):
                    modalities = (modalities or "\\") + f"{modality}\\"
            if modalities != (study.modalities or ""):
                study_update["modalities"] = modalities
            Study.objects.filter(pk=study.pk).update(**study_update)
        _meter(org, items, now)
        PendingObject.objects.filter(pk__in=[item.pending_id for item in items]).delete()
        _settle_on_commit(org, (s.pk for s in studies.values()))


def _revive_trashed(org: Organization, studies: Iterable[Study], now: datetime) -> None:
    """New instances of a study in the trash take it out of the trash (audited): a sender that
    sends a study again wants it kept, and the new instances must not be purged with it.
    Precondition: the studies are locked in the current transaction."""
    for study in studies:
        if study.trashed_at is None:
            continue
        Study.objects.filter(pk=study.pk).update(trashed_at=None, purge_after=None, trash_reason="")
        audit_record(
            org=org,
            actor=Actor.system("ingest"),
            action="study.untrashed",
            target=study,
            target_label=study.study_uid,
            details={
                "reason": "New instances of the study arrived.",
                "trashed_at": study.trashed_at.isoformat(),
            },
        )
        study.trashed_at = study.purge_after = None
        study.trash_reason = ""


def _index_one(*, org: Organization, location: StorageLocation, item: _Stored) -> None:
    """Index one stored object, sorting out races with concurrent ingests row by row."""
    now = timezone.now()
    header, spooled = item.header, item.spooled
    with transaction.atomic():
        study = _study_upsert_locked(org, header, now)
        _revive_trashed(org, [study], now)
        series, new_series = _series_upsert(org, study, header, now)
        if series.study_id != study.pk:
            raise DicomRejected(
                STUDY_UID_MISMATCH, f"Series {header.series_uid} already belongs to another study."
            )
        instance = _instance_row(org, location, study, series, item, now)
        instance.save(force_insert=True)
        item.instance_id = instance.pk
        if header.frames is not None:
            frame_index_row(org.pk, instance.pk, header.frames).save(force_insert=True)
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
        _meter(org, [item], now)
        PendingObject.objects.filter(pk=item.pending_id).delete()
        _settle_on_commit(org, [study.pk])


class Quota:
    """What an organization may still store, read once per request or association.

    Counted down as objects are stored; concurrent requests each check against what was left
    when they started, as before (the quota is a limit for runaway senders, not a reservation).
    """

    def __init__(self, org: Organization):
        self.left = _quota_left(org)

    def take(self, size: int) -> bool:
        if self.left is None:
            return True
        if size > self.left:
            return False
        self.left -= size
        return True

    def give_back(self, size: int) -> None:
        """An object that was not stored after all."""
        if self.left is not None:
            self.left += size


def instance_ingest(
    *,
    org: Organization,
    spooled: Spooled,
    expected_study_uid: str | None = None,
    location: StorageLocation | None = None,
    quota: Quota | None = None,
) -> IngestResult:
    """Ingest one spooled DICOM file. Never raises for bad input: the result says what happened.

    The spool file is consumed (moved into storage or deleted).
    """
    return instances_ingest(
        org=org,
        batch=[spooled],
        expected_study_uid=expected_study_uid,
        location=location,
        quota=quota,
    )[0]


def instances_ingest(
    *,
    org: Organization,
    batch: list[Spooled],
    expected_study_uid: str | None = None,
    location: StorageLocation | None = None,
    quota: Quota | None = None,
) -> list[IngestResult]:
    """Ingest spooled DICOM files together; one result per file, in order. Never raises for bad
    input. Every spool file is consumed (moved into storage or deleted).

    Per file the steps and outcomes are those of one file alone: validate, deduplicate, store and
    verify. Then the stored ones are indexed in one transaction (few statements for the whole
    batch); should that fail, each is indexed on its own, so one file's problem stays its own.
    """
    location = location or location_primary(org)
    store = store_for(location)
    results: list[IngestResult | None] = [None] * len(batch)
    later: list[int] = []  # a SOP Instance UID seen earlier in this batch: after the first
    try:
        candidates: list[tuple[int, Header]] = []
        seen: set[str] = set()
        for n, spooled in enumerate(batch):
            try:
                header = spooled.header or read_header(spooled.path)
            except DicomRejected as exc:
                results[n] = _fail(None, exc.reason_code, exc.message, spooled.size)
                continue
            if expected_study_uid and header.study_uid != expected_study_uid:
                results[n] = _fail(
                    header,
                    STUDY_UID_MISMATCH,
                    f"The instance belongs to study {header.study_uid}, not to {expected_study_uid} named in the URL.",
                    spooled.size,
                )
                continue
            if header.sop_instance_uid in seen:
                later.append(n)
                continue
            seen.add(header.sop_instance_uid)
            candidates.append((n, header))
        existing = {
            uid: (sha, pk)
            for uid, sha, pk in Instance.objects.for_org(org)
            .filter(sop_instance_uid__in=[h.sop_instance_uid for _, h in candidates])
            .values_list("sop_instance_uid", "sha256", "pk")
        }
        quota = quota or Quota(org)
        to_store: list[tuple[int, Header, str]] = []
        for n, header in candidates:
            decided = _decide(org, header, batch[n], existing.get(header.sop_instance_uid), quota)
            if decided is not None:
                results[n] = decided
                continue
            to_store.append((n, header, object_key(org, header)))
        if to_store:
            _store_and_index(org, location, store, batch, to_store, results)
            for n, _, _ in to_store:
                outcome = results[n]
                if outcome is not None and outcome.status == "failed":
                    quota.give_back(batch[n].size)
    finally:
        for n, spooled in enumerate(batch):
            if n not in later:
                spooled.path.unlink(missing_ok=True)
    if later:
        # Same SOP Instance UID twice in one batch: the later copies are duplicates of (or
        # conflict with) the first, which is indexed by now.
        again = instances_ingest(
            org=org,
            batch=[batch[n] for n in later],
            expected_study_uid=expected_study_uid,
            location=location,
            quota=quota,
        )
        for n, result in zip(later, again, strict=True):
            results[n] = result
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _decide(
    org: Organization,
    header: Header,
    spooled: Spooled,
    existing: tuple[str, int] | None,
    quota: Quota,
) -> IngestResult | None:
    """The outcome decided before storing (duplicate, conflict, over quota), or None: store it.
    ``existing``: (SHA-256, id) of the instance already indexed under the SOP Instance UID (id 0:
    accepted by the listener, not indexed yet; its object cannot be read)."""
    if existing is not None:
        sha, pk = existing
        if sha == spooled.sha256:
            return _ok("duplicate", header, spooled.size, pk)
        # Another door writes another File Meta header: compare the data sets (rare, not on
        # the path of a new object).
        instance = (
            Instance.objects.for_org(org).select_related("location").filter(pk=pk).first()
            if pk
            else None
        )
        why = DIFFERENT_OBJECT
        if instance is not None:
            with open(spooled.path, "rb") as ours:
                compared = _compare_with_stored(
                    iter(lambda: ours.read(CHUNK), b""), spooled.size, instance
                )
            if compared is None:
                return _ok("duplicate", header, spooled.size, instance.pk)
            why = compared
        return _fail(header, DUPLICATE_SOP_INSTANCE, why, spooled.size)
    if not quota.take(spooled.size):
        return _fail(
            header, OUT_OF_RESOURCES, "The organization's storage quota is exhausted.", spooled.size
        )
    return None


# Explicit VR elements whose length takes 4 bytes (after 2 reserved ones), PS3.5 7.1.2.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def file_meta_end(head: bytes) -> tuple[int, str] | None:
    """Where the data set of a Part 10 file starts and its transfer syntax, from the file's first
    bytes ``head`` (at most ``FILE_META_MAX`` of them are looked at); None when that cannot be
    told for sure.

    The File Meta group (explicit VR little endian, after the 128-byte preamble and ``DICM``) is
    walked element by element up to the first element of another group, as pydicom reads it;
    the group length (0002,0000), when there, must end the group exactly there. So a bogus group
    length, an element running past ``head`` or the limit, or a file that ends with its File
    Meta answer None: nothing is read out of bounds and no other bytes pass for the data set.
    """
    limit = min(len(head), FILE_META_MAX)
    if limit < 132 or head[128:132] != b"DICM":
        return None
    pos = 132
    group_end: int | None = None
    transfer_syntax = ""
    while pos + 8 <= limit:
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > limit:
                return None
            (length,) = struct.unpack_from("<I", head, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            value_at = pos + 8
        end = value_at + length  # an undefined length (0xFFFFFFFF) runs past the limit
        if end > limit:
            return None
        if element == 0x0000:
            if pos != 132 or vr != b"UL" or length != 4:
                return None
            group_end = value_at + 4 + struct.unpack_from("<I", head, value_at)[0]
        elif element == 0x0010:
            transfer_syntax = head[value_at:end].rstrip(b"\0 ").decode("ascii", "replace")
        pos = end
    else:
        return None  # the File Meta group reaches the limit: no data set after it here
    if pos == 132 or (group_end is not None and group_end != pos):
        return None
    return pos, transfer_syntax


def _data_set(
    chunks: Iterator[bytes],
) -> tuple[int, str, Iterator[bytes | memoryview]] | None:
    """The File Meta group's length, the transfer syntax and the data set's bytes (what follows
    the File Meta group) of a Part 10 object read as ``chunks``; None when its File Meta group
    cannot be told for sure (``file_meta_end``). Holds at most FILE_META_MAX and a chunk."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= FILE_META_MAX:
            break
    found = file_meta_end(head)
    if found is None:
        return None
    end, transfer_syntax = found

    def rest() -> Iterator[bytes | memoryview]:
        yield memoryview(head)[end:]
        yield from chunks

    return end, transfer_syntax, rest()


class _Stream:
    """A chunked stream read part by part: one chunk held at a time, read in place."""

    def __init__(self, chunks: Iterator[bytes | memoryview]):
        self.chunks = chunks
        self.left = memoryview(b"")

    def take(self, n: int | None = None) -> Iterator[memoryview]:
        """The next ``n`` bytes (None: all that is left), fewer where the stream ends."""
        while n is None or n > 0:
            if not self.left:
                chunk = next(self.chunks, None)
                if chunk is None:
                    return
                self.left = memoryview(chunk)
                continue
            part = self.left if n is None else self.left[:n]
            self.left = self.left[len(part) :]
            if n is not None:
                n -= len(part)
            yield part


def _digest(chunks: Iterator[bytes | memoryview]) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.digest()


def _is_trailing_padding(head: bytes, size: int, transfer_syntax: str) -> bool:
    """Whether ``size`` bytes that start with ``head`` are one Data Set Trailing Padding element
    (FFFC,FFFC), which has no meaning and which senders may leave out (DCMTK does)."""
    if transfer_syntax == ImplicitVRLittleEndian:
        return head[:4] == b"\xfc\xff\xfc\xff" and head[4:8] == struct.pack("<I", size - 8)
    if transfer_syntax == ExplicitVRBigEndian:
        return head[:8] == b"\xff\xfc\xff\xfcOB\0\0" and head[8:12] == struct.pack(">I", size - 12)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return False  # the padding is inside the deflated stream
    return (
        head[:4] == b"\xfc\xff\xfc\xff"
        and head[4:6] in (b"OB", b"UN")
        and (head[6:8] == b"\0\0" and head[8:12] == struct.pack("<I", size - 12))
    )


def _same_data_set(
    one: Iterator[bytes | memoryview],
    one_size: int,
    other: Iterator[bytes | memoryview],
    other_size: int,
    transfer_syntax: str,
) -> bool:
    """Whether two data sets (their bytes in ``transfer_syntax``, of the sizes given) are the same
    bytes, or the same but for the Data Set Trailing Padding at the end of one of them.

    Streamed whatever their chunk sizes and alignment: compared by SHA-256 digests, which read
    each chunk in place (comparing unaligned chunks would copy them); constant memory."""
    extra = abs(one_size - other_size)
    if 0 < extra < 8:
        return False
    a, b = _Stream(one), _Stream(other)
    common = min(one_size, other_size)
    if _digest(a.take(common)) != _digest(b.take(common)):
        return False  # other bytes, or a stream shorter than its size
    longer, shorter = (a, b) if one_size > other_size else (b, a)
    if next(shorter.take(1), None) is not None:
        return False  # longer than its size
    if not extra:
        return next(longer.take(1), None) is None
    head = b"".join(longer.take(12))
    tail, _ = _digest(longer.take())
    return len(head) + tail == extra and _is_trailing_padding(head, extra, transfer_syntax)


def _ts_name(uid: str) -> str:
    name = UID(uid).name if uid else "none"
    return name if name and name != uid else uid[:64]


def _compare_with_stored(ours: Iterator[bytes], size: int, instance: Instance) -> str | None:
    """Compare an object (its bytes ``ours``, ``size`` of them) with the one ``instance`` names:
    None when their data sets are the same bytes in the same transfer syntax (the same image,
    only the File Meta headers differ: each door writes its own; one may lack the other's Data
    Set Trailing Padding), else why the new one is refused. Never raises: an object that cannot
    be read now is not the same."""
    if TIER_CATALOG[instance.tier].needs_restore and (
        instance.restored_until is None or instance.restored_until <= timezone.now()
    ):
        return (
            "Stored object is archived, cannot be compared until restored; the object sent under "
            "this SOP Instance UID was not stored (nothing was overwritten)."
        )
    try:
        new = _data_set(ours)
        if new is None:
            return DIFFERENT_OBJECT
        new_end, new_ts, new_bytes = new
        store = store_for(instance.location)
        stored = _data_set(store.iter_bytes(key=instance.object_key, tier=instance.tier))
        if stored is None:
            return DIFFERENT_OBJECT
        stored_end, stored_ts, stored_bytes = stored
        if stored_ts != new_ts:
            return (
                f"Different transfer syntax than the stored object (stored {_ts_name(stored_ts)}, "
                f"sent {_ts_name(new_ts)}): {DIFFERENT_OBJECT}"
            )
        same = _same_data_set(
            new_bytes, size - new_end, stored_bytes, instance.size_bytes - stored_end, new_ts
        )
        return None if same else DIFFERENT_OBJECT
    except Exception as exc:  # noqa: BLE001 - a store that fails (any client error): refused
        logger.warning(
            "ingest: org %s: could not compare with stored object %s: %s",
            instance.organization_id,
            instance.object_key,
            exc,
        )
        return (
            f"Stored object cannot be read to compare: {exc}; the object sent under this SOP "
            "Instance UID was not stored (nothing was overwritten)."
        )[:500]


_EXISTING_SQL = (
    f"SELECT sha256, id FROM {Instance._meta.db_table} "  # noqa: S608 - table name from the model
    "WHERE organization_id = %s AND sop_instance_uid = %s"
)


def instance_precheck(
    *,
    org: Organization,
    spooled: Spooled,
    quota: Quota,
    pending: Callable[[str], str | None],
    series_studies: dict[str, str],
    ready: Callable[[], None] | None = None,
) -> IngestResult | None:
    """The checks that need no storing, for a sender that is answered before the object is
    stored and indexed (C-STORE): the header (complete, parsable, the UIDs there), duplicate or
    conflicting SOP Instance UID, a series that belongs to another study, the quota (counted
    down). Returns with ``spooled.header`` holding the UIDs only (the pipeline parses the rest).

    The SOP Instance UID is looked up in the index only for series the index holds already: an
    instance of a series new to the index can be a duplicate only of one accepted meanwhile
    (``pending``); one stored concurrently by another sender is found by the pipeline.

    Returns the final outcome (a failure, or a duplicate: nothing more to do), or None when the
    object is to be ingested. ``pending``: SOP Instance UID -> SHA-256 of an object accepted but
    not yet indexed, or None; ``series_studies``: Series -> Study Instance UID seen so far (both of this
    organization; this call adds to the second); ``ready``: called before ``spooled.sha256``
    is needed.
    """
    try:
        header = read_header(spooled.path, full=False)
    except DicomRejected as exc:
        return _fail(None, exc.reason_code, exc.message, spooled.size)
    spooled.header = header
    known = series_studies.get(header.series_uid)
    if known is None:
        indexed = (
            Series.objects.for_org(org)
            .filter(series_uid=header.series_uid)
            .values_list("study__study_uid", flat=True)
            .first()
        )
        # "": the series was not in the index when this sender first sent it.
        known = series_studies[header.series_uid] = indexed or ""
    study_uid = known or header.study_uid
    existing: tuple[str, int] | None = None
    accepted = pending(header.sop_instance_uid)
    if accepted is not None:
        existing = (accepted, 0)
    elif known:
        # One indexed lookup per object on the sender's clock: plain SQL, no ORM compilation.
        existing = _existing_row(org, header.sop_instance_uid)
    if study_uid != header.study_uid:
        return _fail(
            header,
            STUDY_UID_MISMATCH,
            f"Series {header.series_uid} already belongs to another study.",
            spooled.size,
        )
    if ready is not None:
        ready()  # the caller completes ``spooled`` (its SHA-256) meanwhile
    if existing is not None and existing[1] == 0 and existing[0] != spooled.sha256:
        # Accepted but maybe not indexed yet, and another file: its data set can be compared
        # only once it is indexed (the listener's queue file is the indexer's to remove). Indexed
        # by now: compare with what the index holds; not yet: refused as a different object.
        existing = _existing_row(org, header.sop_instance_uid) or existing
    return _decide(org, header, spooled, existing, quota)


def _existing_row(org: Organization, sop_instance_uid: str) -> tuple[str, int] | None:
    """(SHA-256, id) of the instance indexed under the SOP Instance UID, or None."""
    with connection.cursor() as cursor:
        cursor.execute(_EXISTING_SQL, [org.pk, sop_instance_uid])
        row = cursor.fetchone()
    return (str(row[0]), int(row[1])) if row else None


def _store_and_index(
    org: Organization,
    location: StorageLocation,
    store: ObjectStore,
    batch: list[Spooled],
    to_store: list[tuple[int, Header, str]],
    results: list[IngestResult | None],
) -> None:
    # The intent rows are committed before any byte is stored (autocommit: one statement).
    pending = PendingObject.objects.bulk_create(
        [
            PendingObject(organization=org, location=location, object_key=key, tier="hot")
            for _, _, key in to_store
        ]
    )

    def put(n: int, key: str) -> StorageUnavailable | None:
        spooled = batch[n]
        try:
            written = store.put_file(key=key, path=spooled.path, tier="hot", sha256=spooled.sha256)
        except StorageUnavailable as exc:
            return exc
        if written.size != spooled.size:
            return StorageUnavailable(
                f"Stored size {written.size} differs from received size {spooled.size}."
            )
        return None

    # Small objects are stored a few at a time: each put waits on the disk's flush or on the
    # object store's round trips, not on this process. Large ones one by one, so that memory
    # stays that of one upload.
    small = [(n, key) for n, _, key in to_store if batch[n].size <= PARALLEL_PUT_MAX_BYTES]
    outcomes: dict[int, StorageUnavailable | None] = {}
    try:
        if len(small) > 1:
            with threads.Pool(max_workers=min(PARALLEL_PUTS, len(small))) as pool:
                futures = {n: pool.submit(put, n, key) for n, key in small}
            for future in futures.values():
                crash = future.exception()
                if crash is not None:
                    raise crash
            outcomes.update({n: f.result() for n, f in futures.items()})
        for n, _, key in to_store:
            if n not in outcomes:
                outcomes[n] = put(n, key)
    except BaseException:
        for _, _, key in to_store:
            _discard(store, key)
        PendingObject.objects.filter(pk__in=[p.pk for p in pending]).delete()
        raise
    stored: list[tuple[int, _Stored]] = []
    for (n, header, key), intent in zip(to_store, pending, strict=True):
        error = outcomes[n]
        if error is not None:
            if not isinstance(error, ObjectExists):  # someone else's object: never removed
                _discard(store, key)
            PendingObject.objects.filter(pk=intent.pk).delete()
            logger.warning("ingest: storing failed for org %s: %s", org.pk, error)
            results[n] = _fail(
                header, PROCESSING_FAILURE, f"The object store failed: {error}", batch[n].size
            )
            continue
        stored.append((n, _Stored(header, batch[n], key, intent.pk)))
    if not stored:
        return
    items = [item for _, item in stored]
    try:
        _index(org=org, location=location, items=items)
    except (IntegrityError, DataError, _BatchConflict):
        for item in items:
            item.instance_id = None
        for n, item in stored:
            results[n] = _index_alone(org, location, store, item)
        return
    except Exception:
        # Raised before or after the commit (a follow-up registered by another app): an object
        # that its instance row names stays.
        for item in items:
            _discard(store, item.key, keep_if_indexed=True, org=org)
        PendingObject.objects.filter(pk__in=[item.pending_id for item in items]).delete()
        raise
    for n, item in stored:
        results[n] = _ok("stored", item.header, item.spooled.size, item.instance_id)


def _index_alone(
    org: Organization, location: StorageLocation, store: ObjectStore, item: _Stored
) -> IngestResult:
    header, spooled, key = item.header, item.spooled, item.key
    try:
        _index_one(org=org, location=location, item=item)
    except IntegrityError:
        # A concurrent ingest of the same SOP Instance UID won; keep its object, not ours (which
        # is compared with it first: the spool file went into the store).
        try:
            return _retry_as_duplicate(org, header, spooled, store, key)
        finally:
            _discard(store, key, keep_if_indexed=True, org=org)
            PendingObject.objects.filter(pk=item.pending_id).delete()
    except DicomRejected as exc:
        _discard(store, key)
        PendingObject.objects.filter(pk=item.pending_id).delete()
        return _fail(header, exc.reason_code, exc.message, spooled.size)
    except DataError as exc:
        # A value the database cannot hold (the header reader removes NULs and cuts lengths;
        # this is the last line of defence): this object fails, the others of its batch not.
        _discard(store, key)
        PendingObject.objects.filter(pk=item.pending_id).delete()
        logger.warning("ingest: org %s: a header value could not be indexed: %s", org.pk, exc)
        return _fail(
            header,
            CANNOT_UNDERSTAND,
            "A header value cannot be stored in the index (invalid characters or length).",
            spooled.size,
        )
    except Exception:
        _discard(store, key)
        PendingObject.objects.filter(pk=item.pending_id).delete()
        raise
    return _ok("stored", header, spooled.size, item.instance_id)


def _retry_as_duplicate(
    org: Organization, header: Header, spooled: Spooled, store: ObjectStore, key: str
) -> IngestResult:
    """The outcome of an object (stored under ``key``) whose index row lost the race to a
    concurrent ingest of its SOP Instance UID: a duplicate when it is the same object or the same
    data set, else refused."""
    existing = (
        Instance.objects.for_org(org)
        .select_related("location")
        .filter(sop_instance_uid=header.sop_instance_uid)
        .first()
    )
    if existing is not None and existing.sha256 == spooled.sha256:
        return _ok("duplicate", header, spooled.size, existing.pk)
    why = "A different object was stored concurrently under this SOP Instance UID."
    if existing is not None:
        compared = _compare_with_stored(
            store.iter_bytes(key=key, tier="hot"), spooled.size, existing
        )
        if compared is None:
            return _ok("duplicate", header, spooled.size, existing.pk)
        if compared != DIFFERENT_OBJECT:
            why = compared
    return _fail(header, DUPLICATE_SOP_INSTANCE, why)


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
    quota = archive_settings_get(org=org).storage_quota_bytes
    if quota is None:
        return None
    used = Study.objects.for_org(org).aggregate(total=Sum("total_bytes"))["total"] or 0
    return max(quota - used, 0)


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


def study_settle_check(*, org_id: int, study_id: int) -> bool:
    """Send ``ingest.completed`` for a study that received nothing for ARCHIVE_SETTLE_SECONDS.

    Claimed with a conditional UPDATE on ``notified_at``, so two checks send one event.
    """
    org = Organization.objects.get(pk=org_id)
    study = Study.objects.for_org(org).filter(pk=study_id).first()
    if study is None:
        return False
    quiet_since = timezone.now() - timedelta(seconds=settings.ARCHIVE_SETTLE_SECONDS)
    if study.updated_at > quiet_since:
        # Still receiving: look again once the settle time after the last instance has passed.
        # (Inline task execution, a debugging mode, would spin instead of waiting: skip it there.)
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            from archive.ingest.tasks import study_settle  # deferred: tasks imports this module

            wait = (study.updated_at - quiet_since).total_seconds()
            study_settle.apply_async((org.pk, study.pk), countdown=max(wait, 1.0))
        return False
    with transaction.atomic():
        claimed = (
            Study.objects.for_org(org)
            .filter(pk=study.pk, updated_at=study.updated_at)
            .exclude(notified_at__gte=study.updated_at)
            .update(notified_at=timezone.now())
        )
        if not claimed:
            return False
        webhook_event_emit(
            org=org,
            event_type="ingest.completed",
            payload={
                "study_instance_uid": study.study_uid,
                "series": study.series_count,
                "instances": study.instance_count,
                "bytes": study.total_bytes,
                "modalities": study.modality_list,
            },
        )
        # Prefetch of the patient's priors (archive.restores, the policy's prefetch rule), queued
        # by its task name: ingest sits below restores and imports nothing of it. Robust: a
        # failure to queue it is logged and never undoes the settle.
        transaction.on_commit(
            lambda: signature("archive.tasks.prefetch_for_study", args=(org.pk, study.pk)).delay(),
            robust=True,
        )
    return True
