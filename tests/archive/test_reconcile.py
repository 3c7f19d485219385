"""The consistency check (``archive.reconcile``): index = ledger = object store per organization,
meter and tier; each kind of difference found and named; work in progress not reported; the
command, the API, the staff page, the beat job and the webhook event."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from archive.ingest import pipeline
from archive.models import (
    Instance,
    PendingObject,
    Reconciliation,
    Study,
    TierMove,
)
from archive.reconcile import services, tasks
from archive.reconcile.services import Kind, reconcile_run
from archive.storage import StorageUnavailable, store_for
from archive.tiering import moves as tier_moves
from billing.metering import storage_balances, storage_delta
from tenants.models import Organization, WebhookEvent
from tests.archive.reconcile_helpers import assert_reconciled
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def ingest(org: Organization, files: list[bytes]) -> list[Instance]:
    location = pipeline.location_primary(org)
    store = store_for(location)
    for data in files:
        result = pipeline.instance_ingest(
            org=org, spooled=pipeline.spool_file(store, io.BytesIO(data))
        )
        assert result.status == "stored", result
    return list(Instance.objects.for_org(org).select_related("location").order_by("pk"))


def put(org: Organization, key: str, data: bytes, tier: str = "hot") -> None:
    store = store_for(pipeline.location_primary(org))
    spool = store.spool_dir() / "stray.part"
    spool.write_bytes(data)
    store.put_file(key=key, path=spool, tier=tier, sha256=hashlib.sha256(data).hexdigest())


def kinds(run: Reconciliation) -> list[str]:
    return sorted(d["kind"] for d in run.differences)


@pytest.fixture
def instances(org: Organization, ct_study: list[bytes]) -> list[Instance]:
    return ingest(org, ct_study)


# --- agreement --------------------------------------------------------------------------------


def test_an_ingested_study_reconciles_with_equal_totals(
    org: Organization, instances: list[Instance]
) -> None:
    run = assert_reconciled(org)
    hot = next(r for r in run.totals if (r["meter"], r["tier"]) == ("storage", "hot"))
    size = sum(i.size_bytes for i in instances)
    assert (hot["index_bytes"], hot["ledger_bytes"], hot["store_bytes"]) == (size, size, size)
    assert hot["index_objects"] == hot["store_objects"] == 3
    assert run.finished_at is not None and run.difference_count == 0
    assert not WebhookEvent.objects.filter(type="reconcile.differences").exists()


def test_an_empty_organization_reconciles(org: Organization) -> None:
    run = assert_reconciled(org)
    assert all(r["index_bytes"] == 0 for r in run.totals)


def test_a_thumbnail_is_counted_as_derived_storage(
    org: Organization, instances: list[Instance]
) -> None:
    from archive.dicomweb.thumbnails import derived_store

    row = derived_store(
        org=org,
        instance=instances[0],
        variant="f1-128",
        data=b"\x89PNG" * 10,
        media_type="image/png",
    )
    assert row is not None
    run = assert_reconciled(org)
    derived = next(r for r in run.totals if (r["meter"], r["tier"]) == ("storage.derived", "hot"))
    assert derived["index_bytes"] == derived["store_bytes"] == 40
    assert derived["index_objects"] == 1


def test_another_organizations_objects_are_not_this_ones(
    org: Organization, other_org: Organization, instances: list[Instance], ct_study: list[bytes]
) -> None:
    ingest(other_org, ct_study[:1])
    # org-1 and org-10 share the characters "org-1": the prefix ends with "/".
    put(org, f"org-{org.pk}0/stray.dcm", b"not org's")
    assert_reconciled(org)


# --- differences ------------------------------------------------------------------------------


def test_an_object_nothing_indexes_is_reported_and_sent_as_a_webhook_event(
    org: Organization, instances: list[Instance]
) -> None:
    put(org, f"org-{org.pk}/stray/left-behind.dcm", b"x" * 123)
    run = reconcile_run(org=org)
    assert run.state == Reconciliation.State.DIFFERENCES and run.difference_count == 1
    (item,) = run.differences
    assert item["kind"] == Kind.UNINDEXED
    assert (item["key"], item["other_bytes"], item["tier"]) == (
        f"org-{org.pk}/stray/left-behind.dcm",
        123,
        "hot",
    )
    hot = next(r for r in run.totals if (r["meter"], r["tier"]) == ("storage", "hot"))
    assert hot["unindexed_bytes"] == 123
    event = WebhookEvent.objects.get(organization=org, type="reconcile.differences")
    assert event.payload["reconciliation"] == run.pk
    assert event.payload["kinds"] == {Kind.UNINDEXED: 1}


def test_an_indexed_object_missing_from_the_store_is_reported(
    org: Organization, instances: list[Instance]
) -> None:
    lost = instances[1]
    store_for(lost.location).delete(key=lost.object_key, tier=lost.tier)
    run = reconcile_run(org=org)
    assert kinds(run) == [Kind.MISSING]
    assert run.differences[0]["key"] == lost.object_key
    assert run.differences[0]["index_bytes"] == lost.size_bytes


def test_a_size_the_index_has_wrong_is_reported_with_the_ledger_difference(
    org: Organization, instances: list[Instance]
) -> None:
    Instance.objects.filter(pk=instances[0].pk).update(size_bytes=instances[0].size_bytes + 5)
    run = reconcile_run(org=org)
    assert kinds(run) == [Kind.LEDGER, Kind.SIZE]
    ledger = next(d for d in run.differences if d["kind"] == Kind.LEDGER)
    assert ledger["other_bytes"] - ledger["index_bytes"] == -5


def test_a_ledger_delta_without_an_index_change_is_reported(
    org: Organization, instances: list[Instance]
) -> None:
    storage_delta(org=org, tier="warm", delta_bytes=1000, at=timezone.now(), idempotency_key="x")
    run = reconcile_run(org=org)
    assert kinds(run) == [Kind.LEDGER]
    assert run.differences[0]["tier"] == "warm"
    assert (run.differences[0]["index_bytes"], run.differences[0]["other_bytes"]) == (0, 1000)


def test_an_object_in_another_tier_than_the_index_says_is_reported(
    org: Organization, instances: list[Instance], archive_root: Path
) -> None:
    moved = instances[0]
    store_for(moved.location).change_tier(key=moved.object_key, from_tier="hot", to_tier="cold")
    store_for(moved.location).change_tier_finish(
        key=moved.object_key, from_tier="hot", to_tier="cold"
    )
    run = reconcile_run(org=org)
    assert kinds(run) == [Kind.TIER]
    assert run.differences[0]["store_tier"] == "cold"


def test_only_the_first_differences_are_kept_but_all_are_counted(
    org: Organization, monkeypatch: Any
) -> None:
    monkeypatch.setattr(Reconciliation, "DIFFERENCES_KEPT", 3)
    for n in range(5):
        put(org, f"org-{org.pk}/stray/{n}.dcm", b"y")
    run = reconcile_run(org=org)
    assert run.difference_count == 5 and len(run.differences) == 3


# --- work in progress is no difference --------------------------------------------------------


def test_an_upload_between_storing_and_indexing_is_in_flight(org: Organization) -> None:
    key = f"org-{org.pk}/pending/upload.dcm"
    put(org, key, b"z" * 50)
    PendingObject.objects.create(
        organization=org, location=pipeline.location_primary(org), object_key=key, tier="hot"
    )
    run = assert_reconciled(org)
    hot = next(r for r in run.totals if (r["meter"], r["tier"]) == ("storage", "hot"))
    assert hot["in_flight_bytes"] == 50


def test_a_tier_move_between_copy_and_finish_is_in_flight(
    org: Organization, instances: list[Instance]
) -> None:
    instance = instances[0]
    (move,) = [tier_moves.move_request(org=org, instance=instance, to_tier="cold")]
    store_for(instance.location).change_tier(
        key=instance.object_key, from_tier="hot", to_tier="cold"
    )
    TierMove.objects.filter(pk=move.pk).update(state=TierMove.State.COPYING)
    # The object is in both tiers' folders; the index still says hot.
    assert_reconciled(org)


def test_a_study_being_purged_may_have_lost_its_bytes_already(
    org: Organization, instances: list[Instance]
) -> None:
    Study.objects.filter(pk=instances[0].study_id).update(
        trashed_at=timezone.now() - timedelta(days=40), purge_after=timezone.now()
    )
    store_for(instances[0].location).delete(key=instances[0].object_key, tier="hot")
    run = reconcile_run(org=org)
    assert run.state == Reconciliation.State.OK and run.difference_count == 0
    hot = next(r for r in run.totals if (r["meter"], r["tier"]) == ("storage", "hot"))
    # The purge deletes bytes first, then the rows: until then the index names 3, the store has 2.
    assert (hot["index_objects"], hot["store_objects"]) == (3, 2)


def test_a_difference_that_work_explains_by_the_recheck_is_dropped(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    """An upload whose intent row is written after the pass read the in-flight rows."""
    key = f"org-{org.pk}/late/upload.dcm"
    put(org, key, b"late")
    real = services._recheck

    def late_intent(*args: Any, **kwargs: Any) -> Any:
        PendingObject.objects.get_or_create(
            organization=org, location=pipeline.location_primary(org), object_key=key, tier="hot"
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(services, "_recheck", late_intent)
    assert reconcile_run(org=org).state == Reconciliation.State.OK


# --- a store that cannot be listed --------------------------------------------------------------


def test_a_store_that_cannot_be_listed_fails_the_run_with_the_reason(
    org: Organization, instances: list[Instance], monkeypatch: Any
) -> None:
    from archive.storage.filesystem import FilesystemStore

    def broken(self: FilesystemStore, *, prefix: str) -> Any:
        raise StorageUnavailable("disk on fire")

    monkeypatch.setattr(FilesystemStore, "iter_objects", broken)
    run = reconcile_run(org=org)
    assert run.state == Reconciliation.State.FAILED and "disk on fire" in run.error
    assert run.differences == [] and run.difference_count == 0


# --- the ledger's public balance ------------------------------------------------------------------


def test_storage_balances_sum_every_delta_per_meter_and_tier(
    org: Organization, other_org: Organization
) -> None:
    now = timezone.now()
    storage_delta(org=org, tier="hot", delta_bytes=10, at=now, idempotency_key="a")
    storage_delta(org=org, tier="hot", delta_bytes=-4, at=now, idempotency_key="b")
    storage_delta(
        org=org, tier="hot", delta_bytes=7, at=now, idempotency_key="c", meter="storage.derived"
    )
    storage_delta(org=other_org, tier="cold", delta_bytes=99, at=now, idempotency_key="a")
    assert storage_balances(org=org) == {("storage", "hot"): 6, ("storage.derived", "hot"): 7}


# --- the command --------------------------------------------------------------------------------


def test_command_prints_the_table_and_exits_zero_when_everything_agrees(
    org: Organization, instances: list[Instance]
) -> None:
    out = io.StringIO()
    call_command("reconcile", "--org", org.slug, stdout=out)
    text = out.getvalue()
    assert "index bytes" in text and "no differences" in text
    assert str(sum(i.size_bytes for i in instances)) in text


def test_command_exits_non_zero_on_differences_and_prints_json(
    org: Organization, instances: list[Instance]
) -> None:
    put(org, f"org-{org.pk}/stray.dcm", b"q")
    out = io.StringIO()
    with pytest.raises(CommandError, match="st-mary"):
        call_command("reconcile", "--org", org.slug, "--json", stdout=out)
    (doc,) = json.loads(out.getvalue())
    assert doc["organization"] == org.slug and doc["state"] == "differences"
    assert doc["differences"][0]["kind"] == Kind.UNINDEXED


def test_command_checks_every_active_organization_by_default(
    org: Organization, other_org: Organization
) -> None:
    Organization.objects.filter(pk=other_org.pk).update(status=Organization.Status.SUSPENDED)
    call_command("reconcile", stdout=io.StringIO())
    assert list(Reconciliation.objects.values_list("organization_id", flat=True)) == [org.pk]


def test_command_refuses_an_unknown_organization() -> None:
    with pytest.raises(CommandError, match="No organization"):
        call_command("reconcile", "--org", "nope", stdout=io.StringIO())


# --- the beat job -------------------------------------------------------------------------------


def test_beat_job_runs_one_check_per_active_organization(
    org: Organization, other_org: Organization
) -> None:
    from saas.celery import app

    assert app.conf.beat_schedule["archive-reconcile"]["task"] == "archive.tasks.reconcile_dispatch"
    Organization.objects.filter(pk=other_org.pk).update(status=Organization.Status.CLOSED)
    assert tasks.reconcile_dispatch() == 1
    assert Reconciliation.objects.for_org(org).count() == 1
    assert not Reconciliation.objects.for_org(other_org).exists()


# --- the API ------------------------------------------------------------------------------------


def test_api_lists_and_shows_the_organizations_runs(
    org: Organization, instances: list[Instance], token_client: Callable[..., Any]
) -> None:
    put(org, f"org-{org.pk}/stray.dcm", b"q")
    run = reconcile_run(org=org)
    client = token_client(org, ["admin"])
    listing = client.get("/api/v1/reconciliations/")
    assert listing.status_code == 200
    (row,) = listing.json()["results"]
    assert (row["id"], row["state"], row["difference_count"]) == (run.pk, "differences", 1)
    detail = client.get(f"/api/v1/reconciliations/{run.pk}/").json()
    assert detail["differences"][0]["kind"] == Kind.UNINDEXED
    assert {t["meter"] for t in detail["totals"]} == {"storage", "storage.derived"}
    only_ok = client.get("/api/v1/reconciliations/?state=ok")
    assert only_ok.json()["results"] == []


def test_api_refuses_an_unknown_state_filter_with_400(
    org: Organization, token_client: Callable[..., Any]
) -> None:
    response = token_client(org, ["admin"]).get("/api/v1/reconciliations/?state=bad")
    assert response.status_code == 400
    assert "state" in response.json()["error"]["fields"]


def test_api_other_organizations_run_is_404(
    org: Organization, other_org: Organization, token_client: Callable[..., Any]
) -> None:
    theirs = reconcile_run(org=other_org)
    client = token_client(org, ["admin"])
    assert client.get(f"/api/v1/reconciliations/{theirs.pk}/").status_code == 404
    assert client.get("/api/v1/reconciliations/").json()["results"] == []


def test_api_needs_the_admin_scope(org: Organization, token_client: Callable[..., Any]) -> None:
    response = token_client(org, ["dicom:read"]).get("/api/v1/reconciliations/")
    assert response.status_code == 403


# --- the staff page -----------------------------------------------------------------------------


def test_staff_page_lists_organizations_with_differences_first(
    client: Any, org: Organization, other_org: Organization, instances: list[Instance]
) -> None:
    reconcile_run(org=other_org)
    put(org, f"org-{org.pk}/stray.dcm", b"q")
    reconcile_run(org=org)
    client.force_login(UserFactory(email="ops@strata.example", is_staff=True))
    response = client.get("/platform/reconciliations/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("St. Mary Hospital") < html.index("Other Clinic")
    assert f"org-{org.pk}/stray.dcm" in html and "unindexed_object" in html
    assert response.context["problems"] == 1


def test_staff_page_is_404_for_anyone_else(client: Any, org: Organization, owner: Any) -> None:
    assert client.get("/platform/reconciliations/").status_code == 302  # to the sign-in page
    client.force_login(owner.user)
    assert client.get("/platform/reconciliations/").status_code == 404


def test_a_bucket_whose_client_cannot_be_made_fails_the_run_with_the_reason(
    org: Organization, instances: list[Instance]
) -> None:
    """An access key saved without its secret: boto3 refuses to build the client; the check
    says so instead of crashing."""
    from archive.models import StorageLocation

    StorageLocation.objects.create(
        organization=org,
        name="Half-configured bucket",
        kind=StorageLocation.Kind.S3,
        role=StorageLocation.Role.REPLICA,
        bucket="hospital-dr",
        region="eu-central-1",
        access_key_id="AKIAEXAMPLE",
    )
    run = reconcile_run(org=org)
    assert run.state == Reconciliation.State.FAILED
    assert "client cannot be made" in run.error and "hospital-dr" not in run.differences
