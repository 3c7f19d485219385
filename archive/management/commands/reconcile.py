"""``manage.py reconcile [--org SLUG] [--json]``: the consistency check, now, for one
organization or every active one: per meter and tier the bytes the index names, the storage
ledger's balance and what the object stores hold, and every difference.

Prints a table per organization (``--json``: one JSON document) and exits with status 1 when
any organization has a difference or could not be checked (so that a cron job or a CI pipeline
notices), 0 when everything agrees. Each run is kept (``GET /api/v1/reconciliations/``) and one
with differences sends the ``reconcile.differences`` webhook event, as the daily beat job does.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.models import Reconciliation
from archive.reconcile.services import reconcile_run
from tenants.models import Organization

COLUMNS = (
    ("meter", "meter", 15),
    ("tier", "tier", 8),
    ("index_bytes", "index bytes", 16),
    ("ledger_bytes", "ledger bytes", 16),
    ("store_bytes", "store bytes", 16),
    ("index_objects", "index objects", 13),
    ("store_objects", "store objects", 13),
)


def _as_dict(org: Organization, run: Reconciliation) -> dict[str, Any]:
    return {
        "organization": org.slug,
        "reconciliation": run.pk,
        "state": run.state,
        "difference_count": run.difference_count,
        "error": run.error,
        "totals": run.totals,
        "differences": run.differences,
    }


class Command(BaseCommand):
    help = "Check that index, storage ledger and object stores agree, per organization and tier."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", help="One organization's slug (default: every active one).")
        parser.add_argument("--json", action="store_true", help="Print one JSON document.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["org"]:
            org = Organization.objects.filter(slug=options["org"]).first()
            if org is None:
                raise CommandError(f"No organization with the slug {options['org']!r}.")
            orgs = [org]
        else:
            orgs = list(
                Organization.objects.filter(status=Organization.Status.ACTIVE).order_by("slug")
            )
        results = [(org, reconcile_run(org=org)) for org in orgs]
        if options["json"]:
            self.stdout.write(json.dumps([_as_dict(o, r) for o, r in results], indent=2))
        else:
            for org, run in results:
                self._table(org, run)
        bad = [o.slug for o, r in results if r.state != Reconciliation.State.OK]
        if bad:
            raise CommandError(
                f"{len(bad)} of {len(results)} organization(s) have differences or could not be "
                f"checked: {', '.join(bad)}."
            )
        if not options["json"]:
            self.stdout.write(
                self.style.SUCCESS(f"{len(results)} organization(s) checked: no differences.")
            )

    def _table(self, org: Organization, run: Reconciliation) -> None:
        out = self.stdout
        out.write(f"{org.name} ({org.slug}): reconciliation {run.pk}, {run.get_state_display()}")
        if run.state == Reconciliation.State.FAILED:
            out.write(self.style.ERROR(f"  {run.error}"))
            return
        out.write("  " + " ".join(f"{title:>{width}}" for _, title, width in COLUMNS))
        for row in run.totals:
            if not any(row[k] for k in ("index_bytes", "ledger_bytes", "store_bytes")):
                continue  # a tier nothing is stored in
            out.write("  " + " ".join(f"{row[k]!s:>{width}}" for k, _, width in COLUMNS))
        for item in run.differences:
            where = f"{item['location']} {item['key']}".strip() or "ledger"
            out.write(
                self.style.WARNING(
                    f"  {item['kind']:<17} {item['meter']}/{item['tier']} {where}: "
                    f"index {item['index_bytes']}, other {item['other_bytes']}"
                )
            )
        if run.difference_count > len(run.differences):
            out.write(f"  ... and {run.difference_count - len(run.differences)} more")
