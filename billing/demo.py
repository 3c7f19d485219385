"""A deterministic, realistic usage history for a demo hospital, recorded through the metering API.

The model, at ``scale=1.0`` (a mid-size hospital):

- About 150,000 studies a year (~410 a day): busier on weekdays and in winter, quiet at night and on
  a few holidays. Modality mix and typical study sizes: CT 25% (150 MB, 300 instances), MR 15%
  (80 MB, 400), DX/CR X-ray 40% (15 MB, 2), US 12% (20 MB, 50), MG tomosynthesis 8% (300 MB, 4).
- Go-live migration: the hospital leaves its on-premises PACS, so from the second day the prior
  archive (``migrate_years`` of earlier studies) is bulk-imported over three weeks, oldest first.
- Everything lands hot on ingest (ledger +bytes on ``hot``, ``ingest.bytes``, ``ingest.instances``,
  ``compute.seconds`` for indexing and hashing). The archive policy is by study age, evaluated at
  10 past every hour: hot -> warm at 30 days, warm -> cold at 90, cold -> archive at 365. A move
  is a ledger pair (-X on the source tier, +X on the target) plus ``tier.transitions`` counting the
  moved instances by target tier. Imported priors jump straight to the tier their age calls for.
- Reads (``egress.bytes``): 60% of studies are read within their first week (mostly within hours),
  10% again between 30 and 90 days (follow-up), 3% between 180 and 330 days (priors, from cold).
- A few restores a month bring a returning patient's archived priors back (``restore.bytes``):
  ready 12 hours after the request, read an hour later, the restored copy kept hot for 7 days.
- About 0.3% of studies are deleted 31-59 days after acquisition (duplicates, wrong-patient
  corrections), while they sit in warm: the rest of warm's 30-day minimum is ``early_deletion``.
- API requests: steady integration traffic plus ~15 requests per study (thousands a day).

Rows are aggregated per hour: one usage event per meter (and tier) per hour and one ledger delta
per tier and cause per hour, so a year is roughly 100,000 rows. An hour's ingest delta sits at the
byte-weighted mean arrival time of its studies, which keeps the integrated byte-seconds exact.

Determinism and idempotency: one ``random.Random(seed)`` drives a strictly chronological
simulation that draws every number whether or not its event falls inside ``[start, end)``, so the
events of an hour depend only on ``seed``, ``scale``, ``migrate_years``, ``start`` and the hour
itself, never on ``end``. Keys are ``demo:<seed>[x<scale>]:<what>:<hour>``: re-running records
nothing new, and running again later with the same ``start`` and a later ``end`` adds only the new
hours. A different ``start`` for the same organization, seed and scale describes a different
history; callers keep ``start`` fixed (``manage.py seed_usage`` finds it with ``demo_history``).
"""

from __future__ import annotations

import calendar
import itertools
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import QuerySet

from billing.metering import Delta, Usage, record_usage_bulk, storage_delta_bulk
from billing.meters import TIERS
from billing.models import StorageDelta, UsageEvent
from billing.rollups import RollupStats, floor_hour, rollup_run
from tenants.models import Organization

logger = logging.getLogger(__name__)

KEY_PREFIX = "demo"
DEFAULT_SEED = 2026
MB = 1_000_000
HOUR_S = 3600
DAY_S = 24 * HOUR_S
WRITE_BATCH = 10_000  # rows per transaction: usage events and ledger deltas together

STUDIES_PER_YEAR = 150_000
# Share of the day's studies in each hour (UTC stands in for the hospital's local time).
HOURLY_PROFILE = (
    0.35, 0.30, 0.30, 0.30, 0.30, 0.35, 0.50, 0.90, 1.60, 1.80, 1.80, 1.70,
    1.30, 1.40, 1.70, 1.70, 1.50, 1.20, 0.90, 0.70, 0.60, 0.50, 0.45, 0.40,
)  # fmt: skip
WEEKDAY_PROFILE = (1.15, 1.15, 1.15, 1.15, 1.12, 0.62, 0.50)  # Monday first
HOLIDAYS = {(1, 1), (12, 25)}  # (month, day): scheduled work stops, emergencies go on
HOLIDAY_FACTOR = 0.55
SEASONAL_AMPLITUDE = 0.07  # winter peak (respiratory season), summer trough
DAY_NOISE = 0.05

MIGRATION_START_S = DAY_S  # the prior-archive import starts on the second day...
MIGRATION_HOURS = 21 * 24  # ...and runs around the clock for three weeks

POLICY = ((30 * DAY_S, "warm"), (90 * DAY_S, "cold"), (365 * DAY_S, "archive"))
POLICY_RUN_S = 10 * 60  # the tiering job runs at 10 past the hour
WARM_MINIMUM_S = 30 * DAY_S

FIRST_READ = 0.60  # read within the first week
FIRST_READ_DELAYS = (
    (0.55, 0, 4 * HOUR_S),
    (0.30, 4 * HOUR_S, 2 * DAY_S),
    (0.15, 2 * DAY_S, 7 * DAY_S),
)
FOLLOW_UP_READ = (0.10, 30 * DAY_S, 90 * DAY_S)
PRIOR_READ = (0.03, 180 * DAY_S, 330 * DAY_S)
DELETION = (0.003, 31 * DAY_S, 59 * DAY_S)

RESTORES_PER_MONTH = 4.0  # not scaled: "a few a month" at any hospital size
RESTORE_READY_S = 12 * HOUR_S
RESTORE_KEEP_S = 7 * DAY_S

API_PER_HOUR = 80  # PACS/EHR polling, worklists, health checks (scaled)
API_PER_STUDY = 15  # STOW, QIDO and WADO calls around one study

INDEX_S_PER_STUDY = 0.5
INDEX_S_PER_INSTANCE = 0.01
HASH_BYTES_PER_S = 400 * MB


@dataclass(frozen=True)
class Modality:
    code: str
    share: float
    mean_bytes: int
    mean_instances: float
    # Log-normal spread of a study's size; its instances and bytes scale together.
    spread: float


MODALITIES = (
    Modality("CT", 0.25, 150 * MB, 300, 0.5),
    Modality("MR", 0.15, 80 * MB, 400, 0.4),
    Modality("DX", 0.40, 15 * MB, 2, 0.35),
    Modality("US", 0.12, 20 * MB, 50, 0.6),
    Modality("MG", 0.08, 300 * MB, 4, 0.2),
)
_CUM_SHARES = list(itertools.accumulate(m.share for m in MODALITIES))
_HOURLY = [w / sum(HOURLY_PROFILE) for w in HOURLY_PROFILE]
_WEEKDAY = [w / (sum(WEEKDAY_PROFILE) / 7) for w in WEEKDAY_PROFILE]


@dataclass
class DemoResult:
    start: datetime  # first hour generated
    end: datetime  # end of the last complete hour generated
    studies: int
    migrated_studies: int
    # Offered to record_usage_bulk / storage_delta_bulk by this run: hours before the last one
    # already recorded are skipped, so a re-run offers little.
    usage_events: int
    ledger_deltas: int
    new_usage_events: int  # actually recorded (0 when everything was there already)
    new_ledger_deltas: int
    totals: dict[str, int] = field(default_factory=dict)  # base-unit quantity per meter
    balances: dict[str, int] = field(default_factory=dict)  # bytes per tier at ``end``
    rollup: RollupStats = field(default_factory=RollupStats)


class _Hour:
    """What is already scheduled for one hour of the simulation."""

    __slots__ = ("byte_days", "deleted", "egress", "expires", "moves", "restores")

    def __init__(self) -> None:
        self.egress = 0
        self.moves: dict[tuple[str, str], list[int]] = {}  # (from, to) -> [bytes, instances]
        self.deleted = 0
        self.byte_days = 0
        self.restores: list[tuple[str, int]] = []  # (key suffix, bytes) ready this hour
        self.expires: list[tuple[str, int]] = []  # restored copies dropped this hour


class _Ingest:
    """One hour's ingest: bytes, instances, byte-weighted arrival seconds, indexing CPU seconds."""

    __slots__ = ("compute", "instances", "size", "weighted")

    def __init__(self) -> None:
        self.size = self.instances = self.weighted = 0
        self.compute = 0.0

    def add(self, size: int, instances: int, offset: int) -> None:
        self.size += size
        self.instances += instances
        self.weighted += size * offset
        self.compute += (
            INDEX_S_PER_STUDY + INDEX_S_PER_INSTANCE * instances + size / HASH_BYTES_PER_S
        )


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:
        limit, k, p = math.exp(-lam), 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def _draw_study(rng: random.Random) -> tuple[int, int]:
    """(bytes, instances) of one study of a random modality."""
    m = rng.choices(MODALITIES, cum_weights=_CUM_SHARES)[0]
    f = rng.lognormvariate(-m.spread * m.spread / 2, m.spread)
    instances = max(1, round(m.mean_instances * f))
    size = int(m.mean_bytes * f * rng.lognormvariate(-0.005, 0.1))
    return size, instances


def _first_read_delay(rng: random.Random) -> int:
    r = rng.random()
    for share, lo, hi in FIRST_READ_DELAYS:
        if r < share:
            return rng.randint(lo, hi)
        r -= share
    return rng.randint(FIRST_READ_DELAYS[-1][1], FIRST_READ_DELAYS[-1][2])


def _day_factor(day: datetime) -> float:
    """Expected studies that day relative to the yearly mean (before noise)."""
    year_len = 366 if calendar.isleap(day.year) else 365
    doy = day.timetuple().tm_yday
    seasonal = 1 + SEASONAL_AMPLITUDE * math.cos(2 * math.pi * (doy - 15) / year_len)
    holiday = HOLIDAY_FACTOR if (day.month, day.day) in HOLIDAYS else 1.0
    return _WEEKDAY[day.weekday()] * seasonal * holiday


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Simulation:
    def __init__(
        self,
        *,
        org: Organization,
        start: datetime,
        end: datetime,
        seed: int,
        scale: float,
        migrate_years: float,
    ) -> None:
        self.org = org
        self.start = floor_hour(start) + (
            timedelta(hours=1) if floor_hour(start) < start else timedelta(0)
        )
        self.n_hours = max(0, int((floor_hour(end) - self.start).total_seconds()) // HOUR_S)
        self.end = self.start + timedelta(hours=self.n_hours)
        self.rng = random.Random(seed)
        self.prefix = history_prefix(seed=seed, scale=scale)
        self.scale = scale
        self.migrate_years = migrate_years
        self.sched: defaultdict[int, _Hour] = defaultdict(_Hour)
        self.balances = dict.fromkeys(TIERS, 0)
        self.totals: dict[str, int] = defaultdict(int)
        self.usage: list[Usage] = []
        self.deltas: list[Delta] = []
        self.usage_offered = 0
        self.deltas_offered = 0
        self.studies = 0
        self.migrated = 0
        # Hours before ``write_from`` are simulated (for the state they leave) but not offered.
        self.write_from = 0
        self.writing = True

    # --- scheduling ------------------------------------------------------------------------

    def _at(self, seconds: int) -> _Hour | None:
        """The bucket of the hour containing ``seconds`` (since start), or None past the end."""
        hour = seconds // HOUR_S
        return self.sched[hour] if 0 <= hour < self.n_hours else None

    def _read(self, seconds: int, size: int) -> None:
        bucket = self._at(seconds)
        if bucket is not None:
            bucket.egress += size

    def _study_life(self, *, origin: int, arrival: int, size: int, deletable: bool) -> bool:
        """Schedule one study's reads and maybe its deletion; returns whether it gets deleted.

        Every number is drawn whatever the outcome, so later hours never depend on ``end``.
        """
        rng = self.rng
        deleted_at: int | None = None
        if rng.random() < DELETION[0]:
            deleted_at = origin + rng.randint(DELETION[1], DELETION[2])
        reads: list[int] = []
        if rng.random() < FIRST_READ:
            reads.append(origin + _first_read_delay(rng))
        for p, lo, hi in (FOLLOW_UP_READ, PRIOR_READ):
            if rng.random() < p:
                reads.append(origin + rng.randint(lo, hi))
        if not deletable:
            deleted_at = None
        for t in reads:
            # A read of a study before it was imported happened on the old PACS.
            if t > arrival and (deleted_at is None or t < deleted_at):
                self._read(t, size)
        if deleted_at is None:
            return False
        self._delete(deleted_at, size, arrival_hour=arrival // HOUR_S)
        return True

    def _delete(self, t: int, size: int, *, arrival_hour: int) -> None:
        bucket = self._at(t)
        if bucket is None:
            return
        warm_since = (arrival_hour + 1) * HOUR_S + POLICY[0][0] + POLICY_RUN_S
        deleted_at = (t // HOUR_S) * HOUR_S + 20 * 60
        bucket.deleted += size
        bucket.byte_days += size * max(0, warm_since + WARM_MINIMUM_S - deleted_at) // DAY_S

    def _plan_moves(self, *, hour: int, newest_origin: int, stages: list[tuple[int, int]]) -> None:
        """Schedule a cohort's policy moves. ``stages[k]`` is what is left at the k-th threshold.

        A move runs at the first policy run at or after its due time and not before the hour after
        ingest; thresholds falling on the same run merge into one move (hot -> archive for old
        imports).
        """
        moves: list[tuple[int, str, str, int, int]] = []  # (hour, from, to, bytes, instances)
        tier = "hot"
        for (age, target), (size, instances) in zip(POLICY, stages, strict=True):
            run = max(_ceil_div(newest_origin + age, HOUR_S), hour + 1)
            if moves and moves[-1][0] == run:
                moves[-1] = (run, moves[-1][1], target, size, instances)
            else:
                moves.append((run, tier, target, size, instances))
            tier = target
        for run, source, target, size, instances in moves:
            if run >= self.n_hours or not size:
                continue
            entry = self.sched[run].moves.setdefault((source, target), [0, 0])
            entry[0] += size
            entry[1] += instances

    # --- one hour --------------------------------------------------------------------------

    def _new_studies(self, hour: int, expected: float, ingest: _Ingest) -> None:
        """This hour's newly acquired studies, sent to the archive as they are made."""
        rng = self.rng
        n = _poisson(rng, expected)
        cohort = _Ingest()
        deleted_size = deleted_instances = 0
        for _ in range(n):
            size, instances = _draw_study(rng)
            offset = rng.randrange(HOUR_S)
            arrival = hour * HOUR_S + offset
            if self._study_life(origin=arrival, arrival=arrival, size=size, deletable=True):
                deleted_size += size
                deleted_instances += instances
            cohort.add(size, instances, offset)
            ingest.add(size, instances, offset)
        self.studies += n
        kept = (cohort.size - deleted_size, cohort.instances - deleted_instances)
        self._plan_moves(
            hour=hour,
            newest_origin=(hour + 1) * HOUR_S,
            stages=[(cohort.size, cohort.instances), kept, kept],
        )

    def _migrated_studies(self, hour: int, ingest: _Ingest) -> None:
        """This hour's share of the prior-archive import, oldest studies first."""
        rng = self.rng
        k = hour - MIGRATION_START_S // HOUR_S
        span = int(self.migrate_years * 365.25 * DAY_S)
        total_studies = STUDIES_PER_YEAR * self.migrate_years * self.scale
        if not (0 <= k < MIGRATION_HOURS) or span <= 0 or total_studies <= 0:
            return
        chunk = span // MIGRATION_HOURS
        oldest = -span + k * chunk
        n = _poisson(rng, total_studies / MIGRATION_HOURS)
        cohort = _Ingest()
        for _ in range(n):
            size, instances = _draw_study(rng)
            offset = rng.randrange(HOUR_S)
            origin = oldest + rng.randrange(chunk)
            self._study_life(
                origin=origin, arrival=hour * HOUR_S + offset, size=size, deletable=False
            )
            cohort.add(size, instances, offset)
            ingest.add(size, instances, offset)
        self.migrated += n
        stage = (cohort.size, cohort.instances)
        self._plan_moves(hour=hour, newest_origin=oldest + chunk, stages=[stage, stage, stage])

    def _restores(self, hour: int, day_start: int) -> None:
        """Draw the day's restore requests of archived priors (drawn at the day's first hour)."""
        rng = self.rng
        for j in range(_poisson(rng, RESTORES_PER_MONTH * 12 / 365.25)):
            requested = max(hour, day_start + rng.randrange(8, 18))
            size = sum(_draw_study(rng)[0] for _ in range(rng.randint(1, 4)))
            if size > self.balances["archive"]:
                continue  # nothing (enough) archived yet
            ready = requested + RESTORE_READY_S // HOUR_S
            key = f"{self._hour_label(requested)}:{j}"
            if ready < self.n_hours:
                self.sched[ready].restores.append((key, size))
            if ready + 1 < self.n_hours:
                self.sched[ready + 1].egress += size
            expire = ready + RESTORE_KEEP_S // HOUR_S
            if expire < self.n_hours:
                self.sched[expire].expires.append((key, size))

    def _hour_label(self, hour: int) -> str:
        return f"{self.start + timedelta(hours=hour):%Y%m%d%H}"

    def run(self) -> None:
        rng = self.rng
        current_day: datetime | None = None
        day_expected = 0.0
        per_day = STUDIES_PER_YEAR / 365.25 * self.scale
        for hour in range(self.n_hours):
            t = self.start + timedelta(hours=hour)
            day = t.replace(hour=0)
            if day != current_day:
                current_day = day
                day_expected = per_day * _day_factor(day) * max(0.0, rng.gauss(1, DAY_NOISE))
                self._restores(hour, hour - t.hour)
            ingest = _Ingest()
            self._new_studies(hour, day_expected * _HOURLY[t.hour], ingest)
            self._migrated_studies(hour, ingest)
            api_expected = API_PER_HOUR * self.scale + API_PER_STUDY * (
                day_expected * _HOURLY[t.hour]
            )
            api = max(1, round(rng.gauss(api_expected, math.sqrt(api_expected))))
            self.writing = hour >= self.write_from
            self._emit(hour, t, ingest, api)
            self.sched.pop(hour, None)
            if len(self.usage) + len(self.deltas) >= WRITE_BATCH:
                self.flush()
        self.flush()

    # --- output ----------------------------------------------------------------------------

    def _use(self, meter: str, quantity: int, at: datetime, key: str, tier: str = "") -> None:
        self.totals[meter] += quantity
        if self.writing:
            dims = {"tier": tier} if tier else {}
            self.usage.append(Usage(meter, quantity, at, f"{self.prefix}:{key}", dims))

    def _delta(self, tier: str, delta: int, at: datetime, key: str) -> None:
        self.balances[tier] += delta
        if self.writing:
            self.deltas.append(Delta(tier, delta, at, f"{self.prefix}:{key}"))

    def _emit(self, hour: int, t: datetime, ingest: _Ingest, api: int) -> None:
        label = f"{t:%Y%m%d%H}"
        if ingest.size:
            # At the byte-weighted mean arrival, one delta integrates exactly like the studies.
            at = t + timedelta(seconds=ingest.weighted // ingest.size)
            self._use("ingest.bytes", ingest.size, at, f"ingest.bytes:{label}")
            self._use("ingest.instances", ingest.instances, at, f"ingest.instances:{label}")
            self._use("compute.seconds", round(ingest.compute), at, f"compute.seconds:{label}")
            self._delta("hot", ingest.size, at, f"ingest:hot:{label}")
        self._use("api.requests", api, t + timedelta(minutes=30), f"api.requests:{label}")
        bucket = self.sched.get(hour)
        if bucket is None:
            return
        if bucket.egress:
            self._use(
                "egress.bytes", bucket.egress, t + timedelta(minutes=30), f"egress.bytes:{label}"
            )
        for key, restored in bucket.restores:
            at = t + timedelta(minutes=5)
            self._use("restore.bytes", restored, at, f"restore.bytes:{key}")
            self._delta("hot", restored, at, f"restore:{key}:copy")
        for key, restored in bucket.expires:
            self._delta("hot", -restored, t + timedelta(minutes=5), f"restore:{key}:expire")
        moved_to: dict[str, int] = defaultdict(int)
        at = t + timedelta(seconds=POLICY_RUN_S)
        for (source, target), (moved, instances) in bucket.moves.items():
            self._delta(source, -moved, at, f"move:{source}>{target}:{label}:out")
            self._delta(target, moved, at, f"move:{source}>{target}:{label}:in")
            moved_to[target] += instances
        for target, instances in moved_to.items():
            self._use(
                "tier.transitions", instances, at, f"tier.transitions:{target}:{label}", target
            )
        if bucket.deleted:
            at = t + timedelta(minutes=20)
            self._delta("warm", -bucket.deleted, at, f"delete:warm:{label}")
            self._use(
                "early_deletion", bucket.byte_days, at, f"early_deletion:warm:{label}", "warm"
            )

    def flush(self) -> None:
        if not self.usage and not self.deltas:
            return
        with transaction.atomic():
            self.usage_offered += record_usage_bulk(org=self.org, events=self.usage)
            self.deltas_offered += storage_delta_bulk(org=self.org, deltas=self.deltas)
        self.usage, self.deltas = [], []


def _demo_events(org: Organization, prefix: str) -> QuerySet[UsageEvent]:
    """The organization's demo API events (one per generated hour) whose keys start ``prefix``."""
    return UsageEvent.objects.for_org(org).filter(
        meter="api.requests", idempotency_key__startswith=prefix
    )


def generate_usage(
    *,
    org: Organization,
    start: datetime,
    end: datetime,
    seed: int = DEFAULT_SEED,
    scale: float = 1.0,
    migrate_years: float = 2.0,
) -> DemoResult:
    """Record the demo history of ``org`` for the whole hours in [start, end), then roll up.

    ``scale`` multiplies the hospital's size (studies, imported priors, API traffic);
    ``migrate_years`` of prior studies are imported after go-live (0 for none). Writes in
    transactions of ``WRITE_BATCH`` rows through the public metering API; idempotent (see the
    module docstring). Ends with ``rollup_run(now=end)``, which rolls up every organization's
    pending rows, so reports and invoices show the history at once.
    """
    if scale <= 0:
        raise ValueError("scale must be positive.")
    sim = _Simulation(
        org=org, start=start, end=end, seed=seed, scale=scale, migrate_years=migrate_years
    )
    usage_before = UsageEvent.objects.for_org(org).count()
    deltas_before = StorageDelta.objects.for_org(org).count()
    last = _demo_events(org, f"{sim.prefix}:").order_by("-at").values_list("at", flat=True).first()
    if last is not None:
        # Each write holds whole hours and commits in order, and every hour has an API event:
        # the hours before the last recorded one are complete, so only the rest is offered again.
        sim.write_from = max(0, int((floor_hour(last) - sim.start).total_seconds()) // HOUR_S)
    sim.run()
    stats = rollup_run(now=sim.end)
    result = DemoResult(
        start=sim.start,
        end=sim.end,
        studies=sim.studies,
        migrated_studies=sim.migrated,
        usage_events=sim.usage_offered,
        ledger_deltas=sim.deltas_offered,
        new_usage_events=UsageEvent.objects.for_org(org).count() - usage_before,
        new_ledger_deltas=StorageDelta.objects.for_org(org).count() - deltas_before,
        totals=dict(sim.totals),
        balances=dict(sim.balances),
        rollup=stats,
    )
    logger.info(
        "demo usage for org %s: %s studies, %s imported, %s new events, %s new deltas",
        org.pk,
        result.studies,
        result.migrated_studies,
        result.new_usage_events,
        result.new_ledger_deltas,
    )
    return result


@dataclass(frozen=True)
class DemoHistory:
    start: datetime
    seed: int
    scale: float


def history_prefix(*, seed: int, scale: float) -> str:
    """The key prefix of a history: what it is a function of, besides its start, is in its keys."""
    return f"{KEY_PREFIX}:{seed}" if scale == 1 else f"{KEY_PREFIX}:{seed}x{scale:g}"


def demo_history(*, org: Organization) -> DemoHistory | None:
    """The demo history already recorded for ``org`` (its first hour, seed and scale), or None.

    Every demo hour has an ``api.requests`` event, so the earliest one marks the first hour.
    """
    first = (
        _demo_events(org, f"{KEY_PREFIX}:")
        .order_by("at")
        .values_list("at", "idempotency_key")
        .first()
    )
    if first is None:
        return None
    at, key = first
    seed, _, scale = key.split(":")[1].partition("x")
    return DemoHistory(start=floor_hour(at), seed=int(seed), scale=float(scale) if scale else 1.0)
