"""Record a simulated usage history for an organization without images (see ``billing.demo``).
Idempotent; refused for an organization whose ledger holds storage of its own."""

from __future__ import annotations

import calendar
import time
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing.demo import DEFAULT_SEED, DemoResult, demo_history, generate_usage
from billing.invoicing import invoice_compute
from billing.models import StorageDelta
from billing.rollups import floor_hour
from tenants.labels import bytes_label
from tenants.models import Organization


def months_before(t: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months earlier (clamped to the month's end)."""
    year, month0 = divmod(t.year * 12 + t.month - 1 - months, 12)
    day = min(t.day, calendar.monthrange(year, month0 + 1)[1])
    return t.replace(year=year, month=month0 + 1, day=day)


class Command(BaseCommand):
    help = (
        "Record a simulated hospital's usage history (ingest, tiering, reads, restores, API) for "
        "an organization without images (billing and load tests) over the last N months up to "
        "now, roll it up and print the current month's draft invoice. Re-running adds only the "
        "hours since the last run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--months", type=int, default=12, help="history length (default 12)")
        parser.add_argument(
            "--seed", type=int, default=None, help=f"random seed (default {DEFAULT_SEED})"
        )
        parser.add_argument(
            "--scale",
            type=float,
            default=None,
            help="hospital size relative to ~150,000 studies a year (default 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"No organization with slug '{options['org']}'.")
        if StorageDelta.objects.for_org(org).exclude(idempotency_key__startswith="demo:").exists():
            # A simulated ledger on top of real images would say the organization stores what
            # its archive does not hold (manage.py reconcile would report it in every tier).
            raise CommandError(
                f"{org.slug} has storage of its own: seed_usage records a simulated hospital's "
                "usage for an organization without images (a billing or load test), never on "
                "top of an archive. The demo hospital's history comes from seed_demo."
            )
        months: int = options["months"]
        if not 1 <= months <= 36:
            raise CommandError("--months must be between 1 and 36.")
        if options["scale"] is not None and not 0 < options["scale"] <= 10:
            raise CommandError("--scale must be above 0 and at most 10.")
        now = timezone.now()
        history = demo_history(org=org)
        if history is not None:
            # A history is a function of its first hour, seed and scale: keep all three, so a
            # re-run extends it to now instead of starting a second, overlapping one.
            start, seed, scale = history.start, history.seed, history.scale
            for name, given, kept in (
                ("seed", options["seed"], seed),
                ("scale", options["scale"], scale),
            ):
                if given is not None and given != kept:
                    raise CommandError(
                        f"{org.slug} already has demo usage with --{name} {kept:g}; run with "
                        f"--{name} {kept:g} (or without --{name}) to extend it."
                    )
            self.stdout.write(
                f"{org.slug} has demo usage since {start:%Y-%m-%d %H:%M} UTC (seed {seed}, "
                f"scale {scale:g}); extending it to now."
            )
        else:
            start = floor_hour(months_before(now, months))
            seed = DEFAULT_SEED if options["seed"] is None else options["seed"]
            scale = 1.0 if options["scale"] is None else options["scale"]
        began = time.perf_counter()
        result = generate_usage(org=org, start=start, end=now, seed=seed, scale=scale)
        elapsed = time.perf_counter() - began
        self._report(org, result, elapsed, now)

    def _report(self, org: Organization, result: DemoResult, elapsed: float, now: datetime) -> None:
        t = result.totals
        offered = result.usage_events + result.ledger_deltas
        again = offered - result.new_usage_events - result.new_ledger_deltas
        self.stdout.write(
            f"Usage for {org.slug}, {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} "
            f"UTC, in {elapsed:.1f} s:\n"
            f"  {result.studies:,} studies acquired, {result.migrated_studies:,} prior studies "
            f"imported: {bytes_label(t.get('ingest.bytes', 0))} in "
            f"{t.get('ingest.instances', 0):,} instances\n"
            f"  egress {bytes_label(t.get('egress.bytes', 0))}, restores "
            f"{bytes_label(t.get('restore.bytes', 0))}, {t.get('tier.transitions', 0):,} tier "
            f"transitions, {t.get('api.requests', 0):,} API requests\n"
            f"  stored now: "
            + ", ".join(f"{tier} {bytes_label(b)}" for tier, b in result.balances.items())
            + f"\n  rows: {result.new_usage_events:,} usage events and "
            f"{result.new_ledger_deltas:,} ledger deltas recorded"
            + (f" ({again:,} offered again were there already)" if again else "")
            + f"\n  rollups: {result.rollup.usage_buckets:,} usage and "
            f"{result.rollup.storage_buckets:,} storage hour buckets refreshed"
        )
        draft = invoice_compute(org=org, period_start=now)
        self.stdout.write(
            f"Draft invoice for {draft.period_start:%B %Y} so far: "
            f"{draft.total:,.2f} {draft.currency}"
        )
        for line in sorted(draft.lines, key=lambda ln: ln.amount, reverse=True)[:5]:
            if line.amount:
                self.stdout.write(
                    f"  {line.description:<28} {line.quantity:>14,.2f} {line.unit:<18} "
                    f"{line.amount:>10,.2f}"
                )
