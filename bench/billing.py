"""Billing at scale on PostgreSQL: recording throughput, rollups, the usage report, the live invoice.

Needs PostgreSQL: DATABASE_URL, or postgres://postgres@127.0.0.1:5432/strata_bench, a scratch
database this script creates and drops again (an existing database is only reused, and then kept,
when DATABASE_URL names it). Skips with a message when PostgreSQL is unreachable.

(a) record_usage_bulk (validation, ON CONFLICT DO NOTHING on the idempotency key) in batches of
    10,000 events: all new keys, then half the keys repeats; again at the end on the 10M table.
(b) 1M, then 10M raw usage events (plus one ledger delta per ten events) for one hospital spread
    over the last year of hours, loaded with COPY; then the full rollup_run, the year's usage report
    and the current month's draft invoice (p50/p95 over 20 runs), and the incremental rollup_run
    after 10,000 new events arrive (this hour's, and late ones scattered over the year).

Only the loading is done outside the application; every measured operation is the real code path.
BENCH_EVENTS=1000000,10000000 changes the sizes; BENCH_KEEP=1 keeps the scratch database.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/strata_bench"
URL = os.environ.get("DATABASE_URL") or DEFAULT_URL
SIZES = [int(n) for n in os.environ.get("BENCH_EVENTS", "1000000,10000000").split(",")]
BATCH = 10_000
RUNS = 20
HOURS = 365 * 24
DELTAS_PER_EVENT = 0.1

# Raw events as the archive reports them (mostly per instance): (meter, tier, share, quantity range)
MIX = [
    ("ingest.bytes", "", 0.30, (50_000, 2_000_000)),
    ("ingest.instances", "", 0.30, (1, 1)),
    ("compute.seconds", "", 0.08, (1, 30)),
    ("egress.bytes", "", 0.15, (1_000_000, 500_000_000)),
    ("api.requests", "", 0.10, (1, 1)),
    ("tier.transitions", "warm", 0.02, (1, 300)),
    ("tier.transitions", "cold", 0.02, (1, 300)),
    ("tier.transitions", "archive", 0.02, (1, 300)),
    ("restore.bytes", "", 0.005, (100_000_000, 2_000_000_000)),
    ("early_deletion", "warm", 0.005, (1_000_000, 900_000_000)),
]


def pg_url(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme in ("postgres", "pgsql") else parts.scheme
    return urlunsplit((scheme, parts.netloc, f"/{dbname}", parts.query, ""))


def prepare_database() -> bool:
    """Create the scratch database. Returns whether this script owns it (and drops it at the end)."""
    if not URL.startswith(("postgres://", "postgresql://", "pgsql://")):
        print(f"SKIP: billing.py needs PostgreSQL; DATABASE_URL is {URL.split(':', 1)[0]}.")
        sys.exit(0)
    name = urlsplit(URL).path.lstrip("/")
    try:
        admin = psycopg.connect(pg_url(URL, "postgres"), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"SKIP: PostgreSQL is unreachable at {urlsplit(URL).netloc}: {exc}".strip())
        sys.exit(0)
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and URL != DEFAULT_URL:
            return False
        if exists:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # a leftover of a killed run
        admin.execute(f'CREATE DATABASE "{name}"')
    return True


def drop_database() -> None:
    from django.db import connections

    connections.close_all()
    name = urlsplit(URL).path.lstrip("/")
    with psycopg.connect(pg_url(URL, "postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


OWNED = prepare_database()
os.environ["DATABASE_URL"] = URL
os.environ["DJANGO_SETTINGS_MODULE"] = "saas.settings.test"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import F  # noqa: E402

from billing.invoicing import invoice_compute  # noqa: E402
from billing.metering import Usage, record_usage_bulk  # noqa: E402
from billing.models import Rollup, UsageEvent  # noqa: E402
from billing.rollups import RollupStats, floor_hour, rollup_run  # noqa: E402
from billing.selectors import usage_daily, usage_totals  # noqa: E402
from tenants.models import Organization  # noqa: E402

# billing.reports (the usage report) is measured when it exists.
reports = importlib.import_module("billing.reports") if find_spec("billing.reports") else None


# --- helpers -----------------------------------------------------------------------------------


def pct(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def timed(fn: Callable[[], Any], runs: int = RUNS) -> tuple[float, float]:
    """(p50, p95) in ms over ``runs`` calls after two warm-up calls."""
    fn()
    fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return pct(samples, 50), pct(samples, 95)


class QueryLog:
    """Time per statement shape, to name the slow query of a run."""

    def __init__(self) -> None:
        self.by_shape: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            shape = re.sub(r"\s+", " ", re.sub(r"'[^']*'|\b\d+\b", "?", sql))
            entry = self.by_shape[shape[:150]]
            entry[0] += 1
            entry[1] += time.perf_counter() - t0

    def top(self, n: int = 3) -> list[str]:
        rows = sorted(self.by_shape.items(), key=lambda kv: kv[1][1], reverse=True)[:n]
        return [f"{secs:7.2f} s {int(count):>6}x  {shape}" for shape, (count, secs) in rows]


def run_rollup() -> tuple[float, RollupStats, QueryLog]:
    log = QueryLog()
    with connection.execute_wrapper(log):
        t0 = time.perf_counter()
        stats = rollup_run()
        elapsed = time.perf_counter() - t0
    return elapsed, stats, log


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S+00")


# --- loading -----------------------------------------------------------------------------------


def event_lines(
    org_id: int, first: datetime, count: int, start_index: int, rng: random.Random
) -> Iterator[str]:
    """``count`` raw events spread evenly over the HOURS hours from ``first``, as COPY text."""
    meters = [(m, tier) for m, tier, _, _ in MIX]
    cum = []
    acc = 0.0
    for _, _, share, _ in MIX:
        acc += share
        cum.append(acc)
    ranges = [r for _, _, _, r in MIX]
    per_hour, extra = divmod(count, HOURS)
    index = start_index
    buf: list[str] = []
    for h in range(HOURS):
        hour = first + timedelta(hours=h)
        for _ in range(per_hour + (1 if h < extra else 0)):
            k = rng.choices(range(len(MIX)), cum_weights=cum)[0]
            meter, tier = meters[k]
            lo, hi = ranges[k]
            at = hour + timedelta(seconds=rng.randrange(3600))
            dims = f'{{"tier": "{tier}"}}' if tier else "{}"
            buf.append(
                f"{org_id}\t{meter}\t{rng.randint(lo, hi)}\t{ts(at)}\tr{index}\t{dims}\t"
                f"{'tier=' + tier if tier else ''}\t{ts(at + timedelta(seconds=2))}\n"
            )
            index += 1
        if len(buf) >= 50_000:
            yield "".join(buf)
            buf = []
    if buf:
        yield "".join(buf)


def delta_lines(
    org_id: int, first: datetime, count: int, start_index: int, rng: random.Random
) -> Iterator[str]:
    """A ledger that stays non-negative: ingest into hot, moves hot->warm->cold->archive."""
    balance = {"hot": 0, "warm": 0, "cold": 0, "archive": 0}
    chain = [("hot", "warm"), ("warm", "cold"), ("cold", "archive")]
    per_hour = max(1, count // HOURS)
    index = start_index
    buf: list[str] = []
    written = 0
    for h in range(HOURS):
        hour = first + timedelta(hours=h)
        for _ in range(per_hour):
            if written >= count:
                break
            at = ts(hour + timedelta(seconds=rng.randrange(3600)))
            source, target = rng.choice(chain)
            moved = balance[source] // 50
            if rng.random() < 0.5 or not moved or written + 2 > count:
                size = rng.randint(10_000_000, 2_000_000_000)
                balance["hot"] += size
                buf.append(f"{org_id}\thot\t{size}\t{at}\ts{index}\t{at}\n")
                index += 1
                written += 1
                continue
            balance[source] -= moved
            balance[target] += moved
            buf.append(f"{org_id}\t{source}\t{-moved}\t{at}\ts{index}\t{at}\n")
            buf.append(f"{org_id}\t{target}\t{moved}\t{at}\ts{index + 1}\t{at}\n")
            index += 2
            written += 2
        if len(buf) >= 50_000:
            yield "".join(buf)
            buf = []
    if buf:
        yield "".join(buf)


def load(org_id: int, first: datetime, events: int, start_index: int, seed: int) -> float:
    """COPY ``events`` usage events and a tenth as many ledger deltas. Returns seconds."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    with psycopg.connect(pg_url(URL, urlsplit(URL).path.lstrip("/"))) as conn:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY billing_usageevent (organization_id, meter, quantity, at, idempotency_key,"
                " dimensions, dimension_key, recorded_at) FROM STDIN"
            ) as copy:
                for chunk in event_lines(org_id, first, events, start_index, rng):
                    copy.write(chunk)
            with cur.copy(
                "COPY billing_storagedelta (organization_id, tier, delta_bytes, at,"
                " idempotency_key, recorded_at) FROM STDIN"
            ) as copy:
                for chunk in delta_lines(
                    org_id, first, int(events * DELTAS_PER_EVENT), start_index, rng
                ):
                    copy.write(chunk)
        conn.commit()
    return time.perf_counter() - t0


def vacuum_analyze(*tables: str) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(pg_url(URL, urlsplit(URL).path.lstrip("/")), autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - t0


def settle(since: datetime) -> None:
    """Age the rows recorded since ``since`` by ten minutes: they were rolled up a while ago, so
    the next incremental run's overlap window (5 minutes) does not read them again."""
    UsageEvent.objects.filter(recorded_at__gte=since).update(
        recorded_at=F("recorded_at") - timedelta(minutes=10)
    )


# --- (a) recording throughput ------------------------------------------------------------------


def events(prefix: str, keys: range | list[int], at: datetime) -> list[Usage]:
    meters = [(m, t) for m, t, _, _ in MIX]
    out = []
    for i in keys:
        meter, tier = meters[i % len(meters)]
        out.append(
            Usage(
                meter=meter,
                quantity=1 + i % 997,
                at=at + timedelta(milliseconds=i % 3_600_000),
                idempotency_key=f"{prefix}{i}",
                dimensions={"tier": tier} if tier else {},
            )
        )
    return out


def throughput(org: Organization, prefix: str, label: str) -> None:
    at = floor_hour(datetime.now(UTC))
    fresh: list[float] = []
    repeats: list[float] = []
    before = UsageEvent.objects.for_org(org).count()
    for b in range(5):
        batch = events(prefix, range(b * BATCH, (b + 1) * BATCH), at)
        t0 = time.perf_counter()
        with transaction.atomic():
            record_usage_bulk(org=org, events=batch)
        fresh.append(BATCH / (time.perf_counter() - t0))
    for b in range(5):
        # Half the keys were recorded in the fresh runs above, half are new.
        old = list(range(b * BATCH, b * BATCH + BATCH // 2))
        new = list(range((5 + b) * BATCH, (5 + b) * BATCH + BATCH // 2))
        batch = events(prefix, old + new, at)
        t0 = time.perf_counter()
        with transaction.atomic():
            record_usage_bulk(org=org, events=batch)
        repeats.append(BATCH / (time.perf_counter() - t0))
    added = UsageEvent.objects.for_org(org).count() - before
    assert added == 5 * BATCH + 5 * BATCH // 2, added
    print(
        f"  {label}: all keys new      median {statistics.median(fresh):8,.0f} events/s  "
        f"(min {min(fresh):,.0f}, 5 batches of {BATCH:,})\n"
        f"  {label}: half keys repeats median {statistics.median(repeats):8,.0f} events/s  "
        f"(min {min(repeats):,.0f}; {added:,} rows recorded in all, repeats skipped)",
        flush=True,
    )


# --- (b) data size scaling ---------------------------------------------------------------------


def measure_scale(org: Organization, total: int, end: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start = end - timedelta(hours=HOURS)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE billing_rollup, billing_rollupmark")
    out["full rollup_run"], stats, log = run_rollup()
    print(
        f"  full rollup_run: {out['full rollup_run']:.1f} s ({stats.usage_buckets:,} usage buckets, "
        f"{stats.storage_buckets:,} storage buckets); slowest statements:",
        flush=True,
    )
    for line in log.top():
        print("     " + line)
    # What autovacuum does shortly after a rebuild; the reads below see a settled table.
    print(f"  VACUUM ANALYZE billing_rollup: {vacuum_analyze('billing_rollup'):.1f} s")
    rollups = Rollup.objects.for_org(org).count()
    print(f"  rollup rows for the hospital: {rollups:,}")
    now = datetime.now(UTC)
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("usage_totals, year", lambda: usage_totals(org=org, start=start, end=end)),
        ("usage_daily, year", lambda: usage_daily(org=org, start=start, end=end)),
    ]
    if reports is not None:
        report = reports.usage_report
        checks += [
            (
                "reports.usage_report, year by tier",
                lambda: report(org=org, start=start, end=end, group_by=["tier"]),
            ),
            (
                "reports.usage_report, year by tier+day",
                lambda: report(org=org, start=start, end=end, group_by=["tier", "day"]),
            ),
        ]
    checks.append(
        ("invoice_compute, current month", lambda: invoice_compute(org=org, period_start=now))
    )
    for name, fn in checks:
        p50, p95 = timed(fn)
        out[name] = (p50, p95)
        print(f"  {name:<40} p50 {p50:8.1f} ms  p95 {p95:8.1f} ms  ({RUNS} runs)", flush=True)
    draft = invoice_compute(org=org, period_start=now)
    print(f"  (draft for {draft.period_start:%B %Y}: {draft.total:,.2f} {draft.currency})")

    # 10,000 new events of the current hour arrive, then the beat's incremental run.
    arrive_at = floor_hour(now)
    new = events(f"new{total}-", range(BATCH), arrive_at)
    with transaction.atomic():
        record_usage_bulk(org=org, events=new)
    out["rollup_run after 10k new events"], stats, log = run_rollup()
    settle(now)
    print(
        f"  incremental rollup_run after {BATCH:,} new events (this hour): "
        f"{out['rollup_run after 10k new events'] * 1000:.0f} ms ({stats.usage_buckets} usage buckets)",
        flush=True,
    )
    # 10,000 late events scattered over the year (a backfill or a replayed outage queue).
    rng = random.Random(total)
    late = [
        Usage(
            u.meter,
            u.quantity,
            start + timedelta(seconds=rng.randrange(HOURS * 3600)),
            u.idempotency_key.replace("new", "late"),
            u.dimensions,
        )
        for u in events(f"new{total}-", range(BATCH), arrive_at)
    ]
    with transaction.atomic():
        record_usage_bulk(org=org, events=late)
    out["rollup_run after 10k late events"], stats, log = run_rollup()
    settle(now)
    print(
        f"  incremental rollup_run after {BATCH:,} late events scattered over the year: "
        f"{out['rollup_run after 10k late events']:.1f} s ({stats.usage_buckets:,} usage buckets); slowest statements:",
        flush=True,
    )
    for line in log.top(2):
        print("     " + line)
    return out


def main() -> None:
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    print(
        f"database: PostgreSQL {version}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    call_command("migrate", verbosity=0)
    print("(a) recording throughput, record_usage_bulk, idempotency on", flush=True)
    side = Organization.objects.create(name="Throughput Clinic", slug="bench-throughput")
    throughput(side, "t", "empty table")
    UsageEvent.objects.for_org(side).delete()

    org = Organization.objects.create(name="Bench Hospital", slug="bench")
    end = floor_hour(datetime.now(UTC))
    first = end - timedelta(hours=HOURS)
    results: dict[int, dict[str, Any]] = {}
    loaded = 0
    for size in SIZES:
        print(
            f"(b) {size:,} raw usage events and {int(size * DELTAS_PER_EVENT):,} ledger deltas "
            f"over {HOURS:,} hours",
            flush=True,
        )
        seconds = load(org.pk, first, size - loaded, loaded, seed=size)
        rate = (size - loaded) * (1 + DELTAS_PER_EVENT) / seconds
        print(
            f"  COPY of {size - loaded:,} events (+ deltas): {seconds:.1f} s ({rate:,.0f} rows/s)",
            flush=True,
        )
        seconds = vacuum_analyze("billing_usageevent", "billing_storagedelta")
        print(f"  VACUUM ANALYZE: {seconds:.1f} s", flush=True)
        loaded = size
        results[size] = measure_scale(org, size, end)

    if len(SIZES) > 1:
        small, big = results[SIZES[0]], results[SIZES[-1]]
        factor = SIZES[-1] / SIZES[0]
        print(f"growth from {SIZES[0]:,} to {SIZES[-1]:,} events (data x{factor:g}):")
        for name in small:
            a, b = small[name], big[name]
            if isinstance(a, tuple):
                print(
                    f"  {name:<40} p50 {a[0]:7.1f} -> {b[0]:7.1f} ms (x{b[0] / a[0]:.2f}), "
                    f"p95 {a[1]:7.1f} -> {b[1]:7.1f} ms"
                )
            else:
                print(f"  {name:<40} {a:7.2f} -> {b:7.2f} s (x{b / a:.2f})")
    print(f"(a) again with {loaded:,} events in the table", flush=True)
    throughput(org, "u", "full table ")
    print(
        f"total benchmark time {time.perf_counter() - began:.0f} s, "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    try:
        main()
    finally:
        if OWNED and os.environ.get("BENCH_KEEP") != "1":
            drop_database()
