"""The platform staff's page of the consistency check: every organization's latest run, those
with differences (or a check that could not finish) first, with what differs.

Not organization-scoped: only signed-in Strata staff see it; anyone else gets the 404 of a page
that does not exist (an organization's own admins read their runs through the API).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from archive.models import Reconciliation
from archive.reconcile import selectors
from archive.reconcile.services import Kind
from tenants.labels import bytes_label

# Differences shown per organization; the API has the run's first 500 and the count of all.
SHOWN = 50

KIND_LABELS = {
    Kind.MISSING: "Missing from the store",
    Kind.SIZE: "Size differs",
    Kind.TIER: "In another tier",
    Kind.UNINDEXED: "Not in the index",
    Kind.LEDGER: "Ledger differs from the index",
}


@login_required
@require_safe
def platform_reconciliations(request: HttpRequest) -> HttpResponse:
    if not getattr(request.user, "is_staff", False):
        raise Http404("Page not found.")
    rows = []
    standings = selectors.latest_per_organization()
    for standing in standings:
        run = standing.run
        rows.append(
            {
                "org": standing.organization,
                "run": run,
                "differences": [
                    {
                        **d,
                        "label": KIND_LABELS.get(d["kind"], d["kind"]),
                        "index_label": bytes_label(d.get("index_bytes")),
                        "other_label": bytes_label(d.get("other_bytes")),
                    }
                    for d in run.differences[:SHOWN]
                ],
                "more": max(0, run.difference_count - SHOWN),
            }
        )
    problems = sum(1 for s in standings if s.run.state != Reconciliation.State.OK)
    return render(
        request,
        "archive/reconcile/platform.html",
        {"rows": rows, "problems": problems},
    )
