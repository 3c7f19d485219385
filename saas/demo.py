"""The demo hospital's year on Strata, replayed through the product's own services.

One story told once: the studies of ``archive.demo``'s plan reach the archive through the ingest
pipeline, readers retrieve them, the archive policy moves them between tiers every week, a read of an archived study waits
for its restore,
billing rolls the metering up and finalizes each month's invoice after its grace days, and the
hospital changes price plan once. Each step runs with the clock set to the moment it describes
(``time_machine``), so the index, the objects in the store, the storage ledger, the usage
events, the access and audit logs, the rollups and the invoices all carry the times they
describe and agree with each other as they do in production: ``manage.py reconcile`` finds no
difference, and every page that shows a figure shows the same one.

Timeline: the hospital goes live on Strata on the 5th of the month eleven months back
(``archive.demo.go_live_for``) on the Standard plan; its old PACS's studies are imported over
the first three weeks; from the 1st of the month five months back it is on a negotiated plan.
Eleven months are finalized invoices; the current month is the draft.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import time_machine
from django.conf import settings
from django.db import connection
from django.utils import timezone

from archive import demo as images
from archive.models import Study
from archive.storage.tiers import TIER_CATALOG
from billing import rollups, services
from billing.models import PricePlan, RollupMark, Subscription
from billing.periods import month_start, next_month
from tenants.context import Actor
from tenants.models import Organization

logger = logging.getLogger(__name__)

ACTOR = Actor.system("manage.py seed_demo")
AGREEMENT_CODE = "demo-hospital-agreement"
AGREEMENT_MONTHS_BACK = 5
# The beat evaluates the policy every 15 minutes; its conditions count whole days, and the replay
# evaluates it once a week, on Sunday night at 02:10 UTC, which moves each study within a week of
# when the beat would (and takes a seventh of the time).
POLICY_RUN = timedelta(hours=2, minutes=10)
# An archive-tier restore is ready after the tier's typical time (Deep Archive: 12 hours), a
# little more here so that the filesystem store's own delay has passed too.
RESTORE_HOURS = TIER_CATALOG["archive"].restore_hours + 1


# What the services log at INFO for each of the year's runs: a year of it would bury the demo's
# own summary (``make run`` prints it).
QUIET_LOGGERS = ("archive.tiering.moves", "archive.tiering.planning", "billing.rollups")


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class DemoYear:
    go_live: datetime
    studies: int
    imported: int
    reads: int
    restores: int
    moved: int
    invoices: int
    seconds: float
    skipped: bool = False


def _agreement_plan() -> PricePlan:
    """The negotiated plan: the Standard plan's prices with storage and compute for less."""
    existing = PricePlan.objects.filter(code=AGREEMENT_CODE).first()
    if existing is not None:
        return existing
    standard = PricePlan.objects.get(code="standard")
    discounts = {"storage": Decimal("0.9"), "compute.seconds": Decimal("0.75")}
    prices: list[dict[str, Any]] = []
    for price in standard.prices.order_by("id"):
        row: dict[str, Any] = {
            "meter": price.meter,
            "tier": price.tier,
            "model": price.model,
            "included_quantity": str(price.included_quantity),
        }
        factor = discounts.get(price.meter, Decimal(1))
        row["unit_price"] = str((price.unit_price * factor).normalize())
        row["tiers"] = [
            {
                "up_to": t["up_to"],
                "unit_price": str((Decimal(t["unit_price"]) * factor).normalize()),
            }
            for t in price.tiers
        ]
        row["package_size"] = str(price.package_size)
        row["package_price"] = str(price.package_price)
        prices.append(row)
    return services.plan_create(
        code=AGREEMENT_CODE,
        name="Demo General Hospital agreement",
        currency=standard.currency,
        prices=prices,
        actor=ACTOR,
        description="Negotiated: storage 10% and compute 25% below the Standard plan.",
    )


def _rollups_from(t: datetime) -> None:
    """Let the next rollup read every row recorded since ``t`` (rows the replay writes carry
    their past times). Rolling up again is safe: each touched hour is recomputed from its rows."""
    mark = RollupMark.objects.filter(source="rollup").first()
    if mark is not None and mark.recorded_until > t:
        mark.recorded_until = t
        mark.save(update_fields=["recorded_until"])


def demo_year(
    *,
    org: Organization,
    studies: int = images.DEFAULT_STUDIES,
    seed: int = 2026,
    now: datetime | None = None,
) -> DemoYear:
    """Replay the demo hospital's year into ``org`` (see the module docstring).

    Idempotent: an organization that holds studies already is left alone, since its history
    would have to come before them.
    """
    began = time.perf_counter()
    now = now or timezone.now()
    if Study.objects.for_org(org).exists():
        return DemoYear(images.go_live_for(now), 0, 0, 0, 0, 0, 0, 0.0, skipped=True)
    plan = images.history_plan(studies=studies, seed=seed, now=now)
    go_live = plan.go_live
    counts = {"reads": 0, "restores": 0, "moved": 0, "invoices": 0, "later": 0}
    events: list[tuple[datetime, int, str, Any]] = []  # (when, order, what, which)

    def at(when: datetime, what: str, which: Any = None) -> None:
        if when < now:
            events.append((when, len(events), what, which))

    at(month_start(go_live), "subscribe", "standard")
    at(go_live - timedelta(hours=1), "policy")
    for study in plan.studies:
        at(study.arrival, "ingest", study)
        for when, reader in zip(study.reads, study.reader, strict=True):
            at(when, "read", (study, reader))
    night = go_live.replace(hour=0, minute=0) + timedelta(days=7 - go_live.weekday()) + POLICY_RUN
    while night < now:
        at(night, "tiering")
        night += timedelta(days=7)
    agreement = month_start(now)
    for _ in range(AGREEMENT_MONTHS_BACK):
        agreement = month_start(agreement - timedelta(days=1))
    at(agreement - timedelta(days=2), "subscribe", agreement)
    month = next_month(month_start(go_live))
    grace = timedelta(days=settings.BILLING_GRACE_DAYS)
    while month + grace < now:
        at(month + grace + timedelta(hours=6), "finalize")
        month = next_month(month)
    heapq.heapify(events)

    # The hospital signed up a few days before going live.
    Organization.objects.filter(pk=org.pk, created_at__gt=go_live).update(
        created_at=go_live - timedelta(days=4)
    )
    _rollups_from(month_start(go_live) - timedelta(days=1))
    if connection.vendor == "sqlite" and not connection.in_atomic_block:
        # The embedded database of `make run`: in WAL mode, NORMAL syncs at checkpoints rather
        # than at each of the replay's thousands of commits (still consistent after a crash;
        # a crash would lose the last commits, and the demo is seeded again from scratch).
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous=NORMAL")
    with _quiet(QUIET_LOGGERS):
        while events:
            when, _, what, which = heapq.heappop(events)
            with time_machine.travel(when, tick=False):
                later = _step(org, when, what, which, counts)
            for then, what_then, which_then in later:
                if then < now:
                    heapq.heappush(
                        events, (then, len(events) + counts["later"], what_then, which_then)
                    )
                    counts["later"] += 1
    # Rows up to now rolled up, with the real clock: the draft and the charts are current.
    rollups.rollup_run()
    result = DemoYear(
        go_live=go_live,
        studies=len(plan.studies),
        imported=sum(1 for s in plan.studies if s.imported),
        reads=counts["reads"],
        restores=counts["restores"],
        moved=counts["moved"],
        invoices=counts["invoices"],
        seconds=time.perf_counter() - began,
    )
    logger.info("demo year for org %s: %s", org.pk, result)
    return result


def _step(
    org: Organization, when: datetime, what: str, which: Any, counts: dict[str, int]
) -> list[tuple[datetime, str, Any]]:
    """Run one event at its time; the events it leads to later."""
    if what == "ingest":
        images.study_ingest(org=org, study=which)
    elif what == "read":
        study, reader = which
        if study.study_id is None:
            return []
        outcome = images.study_read(org=org, study_id=study.study_id, reader=reader)
        if outcome == "read":
            counts["reads"] += 1
        elif outcome == "restoring":
            # The restore poll finds the copy ready; the reader comes back an hour later.
            counts["restores"] += 1
            ready = when + timedelta(hours=RESTORE_HOURS)
            return [(ready, "restores", None), (ready + timedelta(hours=1), "read", which)]
    elif what == "restores":
        images.restores_check(org=org)
    elif what == "tiering":
        counts["moved"] += images.policy_run(org=org, now=when)
    elif what == "policy":
        images.policy_initial(org)
    elif what == "subscribe":
        if which == "standard":
            if not Subscription.objects.for_org(org).exists():
                services.subscription_change(
                    org=org,
                    plan=PricePlan.objects.get(code="standard"),
                    starts_at=when,
                    actor=ACTOR,
                )
        else:
            services.subscription_change(
                org=org, plan=_agreement_plan(), starts_at=which, actor=ACTOR
            )
    elif what == "finalize":
        rollups.rollup_run(now=when)
        counts["invoices"] += len(services.invoices_finalize_due(org=org, now=when))
    return []
