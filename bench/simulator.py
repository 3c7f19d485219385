"""The cost simulator at scale: one hospital with 1 million instances (100,000 studies of 10
instances, two years of study dates, five modalities, a realistic access log, the data the active
policy moved already in cold and archive since the day it qualified), on PostgreSQL.

Needs PostgreSQL: a scratch database ``strata_bench_simulator`` on the server of DATABASE_URL (or
postgres://postgres@127.0.0.1:5432), created here and dropped at the end (BENCH_KEEP=1 keeps it).
Index rows and access events are bulk-loaded with COPY (no bytes are stored). Prints the time of
``access_curve``, of the inventory and of ``simulate`` (cold, then warm runs; the target is < 1 s)
with a candidate policy, the bucket count and the load average. BENCH_STUDIES=100000 and
BENCH_PER_STUDY=10 change the size.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import ScratchDatabase  # noqa: E402

DB_NAME = "strata_bench_simulator"
STUDIES = int(os.environ.get("BENCH_STUDIES", "100000"))
PER_STUDY = int(os.environ.get("BENCH_PER_STUDY", "10"))
RUNS = 5
MODALITIES = [("CT", 0.25, 500_000), ("MR", 0.15, 250_000), ("CR", 0.4, 8_000_000), ("US", 0.12, 400_000), ("MG", 0.08, 50_000_000)]  # fmt: skip
# Re-read chances by age (days): first week, follow-ups, priors a year later.
READS = [(1, 0.7), (45, 0.15), (200, 0.05), (400, 0.03)]


SCRATCH_DB = ScratchDatabase(DB_NAME, "simulator.py")
pg_url = SCRATCH_DB.url
SCRATCH_DB.create()

os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "saas.settings.base",
        "DATABASE_URL": pg_url(DB_NAME),
        "DEBUG": "0",
        "SECRET_KEY": "strata-bench-simulator-secret-key-0123456789abcdef",
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "WARNING",
    }
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from archive.analytics.curve import access_curve  # noqa: E402
from archive.analytics.simulator import simulate  # noqa: E402
from archive.analytics.simulator.inventory import inventory  # noqa: E402
from archive.locations.selectors import location_primary  # noqa: E402
from archive.models import ArchiveSettings, PolicyVersion  # noqa: E402
from tenants.context import Actor  # noqa: E402
from tenants.services import organization_create  # noqa: E402


def _copy(table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def load(org_id: int, location_id: int, now: datetime) -> int:
    rng = random.Random(5)
    weights = [w for _, w, _ in MODALITIES]
    kinds = [rng.choices(range(len(MODALITIES)), weights)[0] for _ in range(STUDIES)]
    ages = [rng.randrange(730) for _ in range(STUDIES)]
    today = now.date()
    events: list[tuple[Any, ...]] = []
    last_read: list[datetime | None] = [None] * STUDIES
    for k in range(STUDIES):
        for at_day, chance in READS:
            day = at_day + rng.randrange(30)
            if day <= ages[k] and rng.random() < chance:
                at = now - timedelta(days=ages[k] - day, hours=rng.randrange(24))
                events.append((k, at))
                last_read[k] = at

    # Where the active policy (CT/MR unread for 90 days to cold, anything unread for a year to
    # archive) has put each study by now, and since when.
    placed: list[tuple[str, datetime | None]] = []
    for k in range(STUDIES):
        received = datetime.combine(today - timedelta(days=ages[k]), datetime.min.time(), UTC)
        seen = last_read[k] or received
        idle = (now - seen).days
        if idle >= 365:
            placed.append(("archive", seen + timedelta(days=365)))
        elif idle >= 90 and MODALITIES[kinds[k]][0] in ("CT", "MR"):
            placed.append(("cold", seen + timedelta(days=90)))
        else:
            placed.append(("hot", None))

    def per_tier(k: int, total: int) -> list[int]:
        return [total if placed[k][0] == t else 0 for t in ("hot", "warm", "cold", "archive")]

    def study_rows() -> Iterator[tuple[Any, ...]]:
        for k in range(STUDIES):
            m, _, size = MODALITIES[kinds[k]]
            total = size * PER_STUDY
            received = datetime.combine(today - timedelta(days=ages[k]), datetime.min.time(), UTC)
            yield (
                k + 1, org_id, f"1.2.826.0.1.3680043.10.1.{k}", f"P{k // 2:08d}", "DOE^J",
                today - timedelta(days=ages[k]), f"\\{m}\\", 1, PER_STUDY, total,
                *per_tier(k, total), received, received, last_read[k], False, "{}", "", "", "",
                "", "", "",
            )  # fmt: skip

    def series_rows() -> Iterator[tuple[Any, ...]]:
        for k in range(STUDIES):
            m, _, size = MODALITIES[kinds[k]]
            total = size * PER_STUDY
            received = datetime.combine(today - timedelta(days=ages[k]), datetime.min.time(), UTC)
            yield (
                k + 1, org_id, k + 1, f"1.2.826.0.1.3680043.10.2.{k}", m, PER_STUDY, total,
                *per_tier(k, total), received, "{}", "", "",
            )  # fmt: skip

    def instance_rows() -> Iterator[tuple[Any, ...]]:
        n = 0
        for k in range(STUDIES):
            _, _, size = MODALITIES[kinds[k]]
            received = datetime.combine(today - timedelta(days=ages[k]), datetime.min.time(), UTC)
            for i in range(PER_STUDY):
                n += 1
                yield (
                    n, org_id, k + 1, k + 1, f"1.2.826.0.1.3680043.10.3.{k}.{i}",
                    "1.2.840.10008.5.1.4.1.1.2", "", size, "0" * 64, location_id,
                    f"o/{k}/{i}", placed[k][0], received, placed[k][1], last_read[k], "{}",
                )  # fmt: skip

    study_cols = [
        "id", "organization_id", "study_uid", "patient_id", "patient_name", "study_date",
        "modalities", "series_count", "instance_count", "total_bytes", "bytes_hot", "bytes_warm",
        "bytes_cold", "bytes_archive", "created_at", "updated_at", "last_accessed_at",
        "legal_hold", "metadata", "patient_sex", "accession_number", "study_description",
        "study_id", "referring_physician", "trash_reason",
    ]  # fmt: skip
    series_cols = [
        "id", "organization_id", "study_id", "series_uid", "modality", "instance_count",
        "total_bytes", "bytes_hot", "bytes_warm", "bytes_cold", "bytes_archive", "created_at",
        "metadata", "series_description", "body_part",
    ]  # fmt: skip
    instance_cols = [
        "id", "organization_id", "study_id", "series_id", "sop_instance_uid", "sop_class_uid",
        "transfer_syntax_uid", "size_bytes", "sha256", "location_id", "object_key", "tier",
        "received_at", "tier_changed_at", "last_accessed_at", "metadata",
    ]  # fmt: skip
    _copy("archive_study", study_cols, study_rows())
    _copy("archive_series", series_cols, series_rows())
    _copy("archive_instance", instance_cols, instance_rows())
    _copy(
        "archive_accessevent",
        ["organization_id", "study_id", "kind", "actor_label", "bytes", "instances", "at"],
        ((org_id, k + 1, "retrieve", "bench", 0, 0, at) for k, at in events),
    )
    with connection.cursor() as cursor:
        for table in ("archive_study", "archive_series", "archive_instance", "archive_accessevent"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            )
            cursor.execute(f"VACUUM ANALYZE {table}")
    tiers = {t: sum(1 for p in placed if p[0] == t) for t in ("hot", "cold", "archive")}
    print("studies by tier: " + ", ".join(f"{t} {n:,}" for t, n in tiers.items()))
    return len(events)


def main() -> None:
    call_command("migrate", verbosity=0)
    org = organization_create(
        name="Bench Hospital", slug="bench-hospital", owner_email="bench@hospital.example",
        actor=Actor.system("bench"),
    )  # fmt: skip
    location = location_primary(org)
    now = datetime.now(UTC)
    started = time.perf_counter()
    events = load(org.pk, location.pk, now)
    print(
        f"loaded {STUDIES:,} studies, {STUDIES * PER_STUDY:,} instances, {events:,} reads "
        f"with COPY in {time.perf_counter() - started:.1f} s (PostgreSQL "
        f"{getattr(connection, 'pg_version', 0) // 10000}, {os.cpu_count()} CPUs)"
    )
    version = PolicyVersion.objects.create(
        organization=org,
        number=1,
        rules=[
            {"conditions": {"days_since_last_access": {"min": 90}, "modalities": ["CT", "MR"]}, "action": {"type": "move", "tier": "cold"}},
            {"conditions": {"days_since_last_access": {"min": 365}}, "action": {"type": "move", "tier": "archive"}},
        ],
    )  # fmt: skip
    ArchiveSettings.objects.update_or_create(organization=org, defaults={"active_policy": version})
    candidate = [
        {"conditions": {"days_since_last_access": {"min": 30}}, "action": {"type": "move", "tier": "warm"}},
        {"conditions": {"days_since_study_date": {"min": 180}, "modalities": ["MG"]}, "action": {"type": "move", "tier": "archive"}},
    ]  # fmt: skip
    curve_times = []
    for _ in range(3):
        t = time.perf_counter()
        access_curve(org=org)
        curve_times.append(time.perf_counter() - t)
    print(
        f"access_curve: min {min(curve_times):.3f} s, median {statistics.median(curve_times):.3f} s"
    )
    rules = [*version.rules, *candidate]
    inventory_times = []
    for _ in range(3):
        t = time.perf_counter()
        inventory(org=org, now=datetime.now(UTC), rules=rules)
        inventory_times.append(time.perf_counter() - t)
    print(
        f"inventory: min {min(inventory_times):.3f} s, "
        f"median {statistics.median(inventory_times):.3f} s"
    )
    times = []
    sim = None
    for _ in range(RUNS):
        t = time.perf_counter()
        sim = simulate(org=org, candidate_rules=candidate)
        times.append(time.perf_counter() - t)
    assert sim is not None
    print(
        f"simulate (4 scenarios x 12 months, {sim.buckets} inventory buckets): first "
        f"{times[0]:.3f} s, median {statistics.median(times):.3f} s, max {max(times):.3f} s "
        f"(target < 1 s; load average {os.getloadavg()[0]:.1f})"
    )
    for s in sim.scenarios:
        print(f"  {s.label:20s} 12 months {s.total:>12,.2f} {sim.currency}")
    for r in sim.recommendations:
        print(f"  - {r.text}")


if __name__ == "__main__":
    try:
        main()
    finally:
        SCRATCH_DB.drop()
