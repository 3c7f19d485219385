"""``assert_reconciled(org)``: the consistency check after a flow (ingest, tier moves, restores,
trash and purge, replicas, the demo seed) finds the index, the ledger and the stores agreeing."""

from __future__ import annotations

from archive.models import Reconciliation
from archive.reconcile.services import reconcile_run
from tenants.models import Organization


def assert_reconciled(org: Organization) -> Reconciliation:
    """Run the check and assert zero differences and equal totals per meter and tier:
    index bytes = ledger bytes = store bytes, and index objects = store objects."""
    run = reconcile_run(org=org)
    assert run.state == Reconciliation.State.OK, (run.state, run.error, run.differences)
    for row in run.totals:
        where = f"{row['meter']}/{row['tier']}"
        assert row["index_bytes"] == row["ledger_bytes"] == row["store_bytes"], (where, row)
        assert row["index_objects"] == row["store_objects"], (where, row)
        assert row["unindexed_bytes"] == 0, (where, row)
    return run
