"""The demo hospital's images and what happens to them: the studies of its history, their reads,
its archive policy, and the steps that replay them through the archive's own services.

``saas.demo`` drives the replay day by day (with billing's invoices); this module knows the
images:

- Studies: a few hundred small synthetic studies (real DICOM, 16-bit images of a CT, CR or
  mammography matrix) acquired over the past two years. Mix: CR/DX 35%, CT 25%, MR 15%, US 15%,
  MG 10%. The hospital went live on Strata eleven months ago: the studies acquired before that
  are its old PACS's, imported in the first three weeks after go-live (oldest first); the rest
  are sent as they are acquired.
- Reads: per modality, a decaying re-read pattern: nearly every study is read in its first
  days; follow-ups weeks later; priors months later; mammography comes back for the yearly
  comparison. A read of a study in the archive tier starts its restore, as a WADO-RS retrieve
  does, and the reader reads it once the restored copy is ready.
- Policy (active from go-live): studies over a year old and unread for 90 days go to the
  archive tier, CT and MR unread for 90 days to cold, anything unread for 30 days to warm.

Everything is written by the archive's services (ingest pipeline, access log, policy planner,
tier moves), so the index, the objects in the store and the metering agree as they do in
production. Deterministic for a given seed (apart from the UIDs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from pydicom.uid import generate_uid

from archive.index.services import access_record
from archive.ingest.pipeline import instances_ingest, spool_chunks
from archive.locations.selectors import location_primary
from archive.models import AccessEvent, Instance, PolicyVersion, RestoreRequest, Study, TierMove
from archive.policies.versions import policy_active, policy_save
from archive.restores.services import restore_check, restore_for_read
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from archive.tiering.moves import moves_execute
from archive.tiering.planning import moves_plan_batch
from tenants.context import Actor
from tenants.models import Organization

DEFAULT_STUDIES = 400
HISTORY_DAYS = 730
MIGRATION_DAYS = 21  # the old PACS's studies are imported over the first three weeks

MIX = [("CR", 0.35), ("CT", 0.25), ("MR", 0.15), ("US", 0.15), ("MG", 0.10)]
# Image matrix per modality (16-bit): real sizes matter, since a tier move pays a fee per object
# that small images never earn back; 512x512 is a CT slice (~512 KB), mammograms are larger.
MATRIX = {"CT": 512, "MR": 256, "CR": 512, "US": 512, "MG": 1024}
INSTANCES = {"CT": 3, "MR": 4, "CR": 1, "US": 2, "MG": 1}
# Per modality: (first day, last day, chance) windows after the study date in which a read happens.
READS: dict[str, list[tuple[int, int, float]]] = {
    "CT": [(0, 3, 0.95), (20, 60, 0.25), (90, 180, 0.08), (330, 420, 0.03)],
    "MR": [(0, 3, 0.95), (25, 80, 0.30), (150, 250, 0.10), (340, 400, 0.05)],
    "CR": [(0, 2, 0.90), (7, 30, 0.15), (60, 120, 0.04), (365, 500, 0.01)],
    "US": [(0, 2, 0.90), (10, 40, 0.12), (90, 200, 0.03)],
    "MG": [(0, 7, 0.95), (30, 60, 0.10), (350, 380, 0.60)],
}
READERS = [
    "PACS reading room (DEMO_PACS)",
    "radiologist@demo-hospital.example",
    "Emergency department viewer",
    "Referring physicians' portal",
]
INITIAL_POLICY = [
    {
        "name": "Studies over a year old, unread for 90 days, to archive",
        "conditions": {
            "days_since_study_date": {"min": 365},
            "days_since_last_access": {"min": 90},
        },
        "action": {"type": "move", "tier": "archive"},
    },
    {
        "name": "CT and MR unread for 90 days to cold",
        "conditions": {"days_since_last_access": {"min": 90}, "modalities": ["CT", "MR"]},
        "action": {"type": "move", "tier": "cold"},
    },
    {
        "name": "Anything unread for 30 days to warm",
        "conditions": {"days_since_last_access": {"min": 30}},
        "action": {"type": "move", "tier": "warm"},
    },
]
POLICY_NOTE = (
    "First policy: studies over a year old and unread for 90 days to archive, CT/MR unread for "
    "90 days to cold, anything unread for 30 days to warm."
)


@dataclass
class PlannedStudy:
    modality: str
    acquired: datetime
    arrival: datetime  # when it reached Strata: acquired, or imported after go-live
    reads: list[datetime]
    reader: list[str]
    imported: bool
    spec_seed: int
    study_id: int | None = None


@dataclass
class DemoPlan:
    go_live: datetime
    studies: list[PlannedStudy] = field(default_factory=list)


def go_live_for(now: datetime) -> datetime:
    """The demo hospital's first day on Strata: the 5th of the month eleven months before
    ``now``'s, at 08:00 UTC; so eleven whole months are invoiced and the current one is a draft."""
    index = now.year * 12 + now.month - 1 - 11
    return datetime(index // 12, index % 12 + 1, 5, 8, tzinfo=UTC)


def _pick(rng: random.Random) -> str:
    roll = rng.random()
    for modality, share in MIX:
        if roll < share:
            return modality
        roll -= share
    return MIX[-1][0]


def history_plan(*, studies: int, seed: int, now: datetime) -> DemoPlan:
    """Which studies the hospital acquires when, when each reaches Strata and when it is read."""
    rng = random.Random(seed)
    go_live = go_live_for(now)
    plan = DemoPlan(go_live=go_live)
    for _ in range(studies):
        modality = _pick(rng)
        day = (now - timedelta(days=rng.randrange(HISTORY_DAYS))).date()
        acquired = datetime.combine(day, time(7, 0), UTC) + timedelta(minutes=rng.randrange(720))
        acquired = min(acquired, now - timedelta(minutes=30))
        reads: list[datetime] = []
        for first, last, chance in READS[modality]:
            if rng.random() < chance:
                reads.append(
                    acquired + timedelta(days=rng.randint(first, last), minutes=rng.randrange(1440))
                )
        readers = [rng.choice(READERS) for _ in reads]
        plan.studies.append(
            PlannedStudy(
                modality=modality,
                acquired=acquired,
                arrival=acquired + timedelta(minutes=rng.randint(2, 20)),
                reads=reads,
                reader=readers,
                imported=acquired < go_live,
                spec_seed=rng.randrange(2**31),
            )
        )
    # The old PACS's studies are imported oldest first, spread over the migration weeks.
    imported = sorted((s for s in plan.studies if s.imported), key=lambda s: s.acquired)
    span = MIGRATION_DAYS * 24 * 3600
    for i, study in enumerate(imported):
        study.arrival = go_live + timedelta(seconds=span * (i + 1) // (len(imported) + 1))
    for study in plan.studies:
        # Reads before the study reached Strata happened on the old PACS; none after now.
        kept = [(t, r) for t, r in zip(study.reads, study.reader, strict=True)]
        kept = [(t, r) for t, r in kept if study.arrival < t < now]
        study.reads = [t for t, _ in kept]
        study.reader = [r for _, r in kept]
    return plan


def study_ingest(*, org: Organization, study: PlannedStudy) -> int:
    """Make the study's images and send them through the ingest pipeline; its id in the index."""
    rng = random.Random(study.spec_seed)
    spec = study_spec(study.modality, rng=rng, study_date=study.acquired.date())
    location = location_primary(org)
    store = store_for(location)
    series_uid = generate_uid()
    batch = [
        spool_chunks(
            store,
            [
                to_bytes(
                    make_instance(
                        spec,
                        series_uid=series_uid,
                        instance_number=n + 1,
                        rows=MATRIX[study.modality],
                        columns=MATRIX[study.modality],
                        seed=n + 1,
                    )
                )
            ],
        )
        for n in range(INSTANCES[study.modality])
    ]
    results = instances_ingest(org=org, batch=batch, location=location)
    if not all(r.ok for r in results):
        raise RuntimeError(f"demo ingest failed: {[r.reason for r in results if not r.ok]}")
    study_id = (
        Study.objects.for_org(org).filter(study_uid=spec.study_uid).values_list("pk", flat=True)[0]
    )
    study.study_id = study_id
    return int(study_id)


def study_read(*, org: Organization, study_id: int, reader: str) -> str:
    """A reader retrieves the whole study: the access log, egress and last-accessed times
    ("read"). Part of it in the archive tier, without a readable restored copy: the read asks for
    a restore, as a WADO-RS retrieve does, and the reader comes back when it is ready
    ("restoring")."""
    study = Study.objects.for_org(org).get(pk=study_id)
    instances = list(Instance.objects.for_org(org).filter(study=study))
    actor = Actor.system(reader)
    if restore_for_read(org=org, instances=instances, actor=actor) is not None:
        return "restoring"
    access_record(
        org=org,
        study=study,
        kind=AccessEvent.Kind.RETRIEVE,
        actor=actor,
        bytes_read=study.total_bytes,
        instances=study.instance_count,
    )
    return "read"


def restores_check(*, org: Organization) -> None:
    """What the beat's restore poll does: ask the store about every open restore."""
    for restore in RestoreRequest.objects.for_org(org).filter(
        state=RestoreRequest.State.IN_PROGRESS
    ):
        restore_check(org=org, restore=restore, limit=10_000)


def policy_initial(org: Organization) -> int | None:
    """Save and activate the first policy version, unless the organization has one already."""
    if PolicyVersion.objects.for_org(org).exists():
        return None
    version = policy_save(
        org=org,
        actor=Actor.system("manage.py seed_demo"),
        rules=INITIAL_POLICY,
        note=POLICY_NOTE,
        activate=True,
    )
    return version.number


def policy_run(*, org: Organization, now: datetime) -> int:
    """One evaluation of the active policy and the moves it plans, as the beat jobs do: the
    number of instances moved."""
    version = policy_active(org=org)
    if version is None:
        return 0
    planned, _ = moves_plan_batch(org=org, version=version, limit=100_000, now=now)
    if not planned:
        return 0
    ids = list(
        TierMove.objects.for_org(org)
        .filter(state=TierMove.State.PLANNED)
        .values_list("pk", flat=True)
    )
    return moves_execute(org=org, move_ids=ids, worker="demo").done
