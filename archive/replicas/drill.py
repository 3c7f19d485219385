"""The DR drill: read back a random sample of replicated instances and verify them against the
index (``manage.py dr_drill``, the API and the storage page run it)."""

from __future__ import annotations

import hashlib
import logging

from django.db import transaction
from django.utils import timezone

from archive.models import InstanceReplica, ReplicaCheck
from archive.replicas import services
from archive.replicas.selectors import replica_location
from archive.storage import ObjectStore, StorageUnavailable
from archive.storage.tiers import tier_get
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

logger = logging.getLogger(__name__)

DRILL_MAX_SAMPLE = 10_000
DRILL_DEFAULT_SAMPLE = 100


def _verify_sample(
    store: ObjectStore, replica: InstanceReplica
) -> tuple[str | None, int, str | None]:
    """(problem kind or None, bytes read, problem text) for one sampled replica."""
    instance = replica.instance
    key, tier = instance.object_key, replica.tier
    try:
        stored = store.head(key=key, tier=tier)
    except StorageUnavailable as exc:
        return "missing", 0, f"The replica could not be reached: {exc}"
    if stored is None:
        return "missing", 0, "The replica object does not exist."
    if stored.sha256 and stored.sha256 != instance.sha256:
        return "mismatched", 0, "The replica store recorded another SHA-256 than the index's."
    if tier_get(tier).needs_restore and not store.restore_status(key=key, tier=tier).ready:
        # Reading it back would need a restore first: size and the recorded checksum must do.
        if stored.size != instance.size_bytes or not stored.sha256:
            return "mismatched", 0, "The archived replica's size or checksum does not match."
        return None, 0, None
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in store.iter_bytes(key=key, tier=tier):
            digest.update(chunk)
            size += len(chunk)
    except StorageUnavailable as exc:
        return "missing", size, f"The replica object could not be read: {exc}"
    if size != instance.size_bytes or digest.hexdigest() != instance.sha256:
        return (
            "mismatched",
            size,
            f"Read {size} bytes with SHA-256 {digest.hexdigest()[:12]}…; the index says "
            f"{instance.size_bytes} bytes with {instance.sha256[:12]}….",
        )
    return None, size, None


def replica_drill(
    *, org: Organization, sample: int = DRILL_DEFAULT_SAMPLE, actor: Actor
) -> ReplicaCheck:
    """Read back a random sample of replicated instances and verify them against the index.

    Missing or mismatched replicas are sent back to pending, so replication repairs them (their
    ledger key is unchanged: the bytes are not billed twice). The result is kept as a
    ``ReplicaCheck`` and audited as ``replica.drill``.
    """
    if (
        isinstance(sample, bool)
        or not isinstance(sample, int)
        or not 1 <= sample <= DRILL_MAX_SAMPLE
    ):
        raise ValidationFailed(
            "Invalid sample size.",
            fields={"sample": [f"Enter a sample size from 1 to {DRILL_MAX_SAMPLE}."]},
        )
    location = replica_location(org=org)
    if location is None:
        raise Conflict(
            "The organization has no disaster-recovery replica; add a bucket with role "
            "replica first."
        )
    started = timezone.now()
    sampled = list(
        InstanceReplica.objects.for_org(org)
        .filter(location=location, state=InstanceReplica.State.DONE)
        .select_related("instance")
        .order_by("?")[:sample]
    )
    # Through the services module: the same store seam as the copies.
    store = services._store(location)
    verified = missing = mismatched = bytes_read = 0
    problems: list[dict[str, str]] = []
    broken: list[int] = []
    for replica in sampled:
        kind, size, text = _verify_sample(store, replica)
        bytes_read += size
        if kind is None:
            verified += 1
            continue
        if kind == "missing":
            missing += 1
        else:
            mismatched += 1
        broken.append(replica.pk)
        problems.append(
            {
                "sop_instance_uid": replica.instance.sop_instance_uid,
                "problem": kind,
                "detail": text or "",
            }
        )
    with transaction.atomic():
        check = ReplicaCheck.objects.create(
            organization=org,
            location=location,
            started_at=started,
            finished_at=timezone.now(),
            sampled=len(sampled),
            verified=verified,
            missing=missing,
            mismatched=mismatched,
            bytes_read=bytes_read,
            problems=problems,
        )
        if broken:
            InstanceReplica.objects.for_org(org).filter(pk__in=broken).update(
                state=InstanceReplica.State.PENDING,
                attempts=0,
                claimed_until=None,
                error="The disaster-recovery drill found this replica missing or damaged.",
            )
        audit_record(
            org=org,
            actor=actor,
            action="replica.drill",
            target=check,
            details={
                "location": location.pk,
                "sampled": check.sampled,
                "verified": verified,
                "missing": missing,
                "mismatched": mismatched,
                "bytes_read": bytes_read,
            },
        )
    if broken:
        logger.warning(
            "DR drill %s of org %s: %s missing, %s mismatched",
            check.pk,
            org.pk,
            missing,
            mismatched,
        )
    return check
