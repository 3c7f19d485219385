"""Two years of images and reads for the demo hospital, so that its access curve, the cost
simulator and the policy engine have something real to work on.

- Studies: a few hundred small synthetic studies (tiny images: a few KB each) ingested through the
  real pipeline, then dated back over the past two years (study date, received time), as if the
  hospital had been sending them all along. Mix: CR/DX 35%, CT 25%, MR 15%, US 15%, MG 10%.
- Reads: per modality, a realistic decaying re-read pattern: nearly every study is read in its
  first days; follow-ups weeks later; priors months later; mammography comes back for the yearly
  comparison. The reads are written to the access log as they would have been recorded at the
  time (with the index's last-access times), without metering egress for the past.
- Policy: a first version, active: CT and MR unread for 90 days go to cold, anything unread for a
  year to archive.

Idempotent: an organization whose access log already holds the demo's reads is left alone.
Deterministic for a given seed (apart from the UIDs).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from pydicom.uid import generate_uid

from archive.ingest.pipeline import instances_ingest, spool_chunks
from archive.locations.selectors import location_primary
from archive.models import AccessEvent, Instance, PolicyVersion, Series, Study
from archive.policies.versions import policy_save
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.context import Actor
from tenants.models import Organization

logger = logging.getLogger(__name__)

DEMO_ACTOR = "demo history"
DEFAULT_STUDIES = 240
HISTORY_DAYS = 730

MIX = [("CR", 0.35), ("CT", 0.25), ("MR", 0.15), ("US", 0.15), ("MG", 0.10)]
# Image matrix per modality (16-bit): real sizes matter, since a tier move pays a fee per object
# that small images never earn back; 512x512 is a CT slice (~512 KB), mammograms are larger.
MATRIX = {"CT": 512, "MR": 256, "CR": 512, "US": 512, "MG": 1024}
# Per modality: (first day, last day, chance) windows after the study date in which a read happens.
READS: dict[str, list[tuple[int, int, float]]] = {
    "CT": [(0, 3, 0.95), (20, 60, 0.25), (90, 180, 0.08), (330, 420, 0.03)],
    "MR": [(0, 3, 0.95), (25, 80, 0.30), (150, 250, 0.10), (340, 400, 0.05)],
    "CR": [(0, 2, 0.90), (7, 30, 0.15), (60, 120, 0.04), (365, 500, 0.01)],
    "US": [(0, 2, 0.90), (10, 40, 0.12), (90, 200, 0.03)],
    "MG": [(0, 7, 0.95), (30, 60, 0.10), (350, 380, 0.60)],
}
INITIAL_POLICY = [
    {
        "name": "CT and MR unread for 90 days to cold",
        "conditions": {"days_since_last_access": {"min": 90}, "modalities": ["CT", "MR"]},
        "action": {"type": "move", "tier": "cold"},
    },
    {
        "name": "Anything unread for a year to archive",
        "conditions": {"days_since_last_access": {"min": 365}},
        "action": {"type": "move", "tier": "archive"},
    },
]


@dataclass
class DemoAccessResult:
    studies: int
    reads: int
    policy: int | None
    skipped: bool = False


def _pick(rng: random.Random) -> str:
    roll = rng.random()
    for modality, share in MIX:
        if roll < share:
            return modality
        roll -= share
    return MIX[-1][0]


def demo_access_history(
    *,
    org: Organization,
    studies: int = DEFAULT_STUDIES,
    seed: int = 2026,
    now: datetime | None = None,
) -> DemoAccessResult:
    """Give ``org`` two years of studies and reads and a first active policy (see above)."""
    now = now or timezone.now()
    if AccessEvent.objects.for_org(org).filter(actor_label=DEMO_ACTOR).exists():
        return DemoAccessResult(0, 0, None, skipped=True)
    rng = random.Random(seed)
    location = location_primary(org)
    store = store_for(location)
    planned: list[tuple[str, int, str]] = []  # (study uid, age in days, modality)
    for _ in range(studies):
        modality = _pick(rng)
        age = rng.randrange(HISTORY_DAYS)
        spec = study_spec(modality, rng=rng, study_date=(now - timedelta(days=age)).date())
        series_uid = generate_uid()
        count = 2 if modality in ("CT", "MR") else 1
        batch = [
            spool_chunks(
                store,
                [
                    to_bytes(
                        make_instance(
                            spec,
                            series_uid=series_uid,
                            instance_number=n + 1,
                            rows=MATRIX[modality],
                            columns=MATRIX[modality],
                            seed=n + 1,
                        )
                    )
                ],
            )
            for n in range(count)
        ]
        results = instances_ingest(org=org, batch=batch, location=location)
        if not all(r.ok for r in results):
            raise RuntimeError(f"demo ingest failed: {[r.reason for r in results if not r.ok]}")
        planned.append((spec.study_uid, age, modality))

    reads = 0
    with transaction.atomic():
        ids = dict(
            Study.objects.for_org(org)
            .filter(study_uid__in=[uid for uid, _, _ in planned])
            .values_list("study_uid", "pk")
        )
        events: list[AccessEvent] = []
        for uid, age, modality in planned:
            study_id = ids[uid]
            day = (now - timedelta(days=age)).date()
            received = datetime.combine(day, time(9, 0), UTC) + timedelta(
                minutes=rng.randrange(600)
            )
            received = min(received, now)
            Study.objects.for_org(org).filter(pk=study_id).update(
                created_at=received, updated_at=received
            )
            Series.objects.for_org(org).filter(study_id=study_id).update(created_at=received)
            Instance.objects.for_org(org).filter(study_id=study_id).update(received_at=received)
            for first, last, chance in READS[modality]:
                if rng.random() >= chance:
                    continue
                at = received + timedelta(
                    days=rng.randint(first, last), minutes=rng.randrange(24 * 60)
                )
                if at >= now:
                    continue
                events.append(
                    AccessEvent(
                        organization=org,
                        study_id=study_id,
                        kind=rng.choice(
                            [AccessEvent.Kind.RETRIEVE] * 4 + [AccessEvent.Kind.DOWNLOAD]
                        ),
                        actor_label=DEMO_ACTOR,
                        at=at,
                    )
                )
        AccessEvent.objects.bulk_create(events, batch_size=500)
        reads = len(events)
        sizes = dict(
            Study.objects.for_org(org).filter(pk__in=ids.values()).values_list("pk", "total_bytes")
        )
        for event in events:
            event.bytes = sizes.get(event.study_id, 0)
        AccessEvent.objects.bulk_update(events, ["bytes"], batch_size=500)
        latest = (
            AccessEvent.objects.for_org(org)
            .filter(actor_label=DEMO_ACTOR)
            .values("study_id")
            .annotate(last=Max("at"))
        )
        for row in latest:
            Study.objects.for_org(org).filter(pk=row["study_id"]).update(
                last_accessed_at=row["last"]
            )
            Series.objects.for_org(org).filter(study_id=row["study_id"]).update(
                last_accessed_at=row["last"]
            )
            Instance.objects.for_org(org).filter(study_id=row["study_id"]).update(
                last_accessed_at=row["last"]
            )
    policy = _initial_policy(org)
    logger.info("demo history for org %s: %d studies, %d reads", org.pk, len(planned), reads)
    return DemoAccessResult(len(planned), reads, policy)


def _initial_policy(org: Organization) -> int | None:
    """Save and activate the first policy version, unless the organization has one already."""
    if PolicyVersion.objects.for_org(org).exists():
        return None

    version = policy_save(
        org=org,
        actor=Actor.system("manage.py seed_demo"),
        rules=INITIAL_POLICY,
        note="First policy: CT/MR to cold after 90 days unread, everything to archive after a year.",
        activate=True,
    )
    return version.number
