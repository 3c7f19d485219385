"""Restore on demand on the filesystem backend: a WADO-RS read of archived images answers 503
with Retry-After and the restore in a JSON body, the poll makes them readable (metered once,
``restore.ready`` sent), a restore that never completes times out; bulk restores with their
estimate; the portal download; tenant isolation of the restore API."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

from archive.models import Instance, RestoreItem, RestoreRequest
from archive.restores import selectors as restore_selectors
from archive.restores import services as restores
from billing.models import UsageEvent
from tenants.context import Actor
from tenants.models import AuditEvent, WebhookDelivery
from tenants.services import webhook_endpoint_create
from tests.archive.reconcile_helpers import assert_reconciled
from tests.archive.test_dicomweb_support import split_multipart
from tests.archive.test_restores_support import archive_all, seed_study, study_row, to_tier

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


@pytest.fixture
def slow_restores(settings):
    settings.ARCHIVE_FS_RESTORE_SECONDS = 3600
    return settings


def restored_meter(org) -> list[int]:
    return list(
        UsageEvent.objects.for_org(org)
        .filter(meter="restore.bytes")
        .order_by("id")
        .values_list("quantity", flat=True)
    )


def test_read_of_archived_study_restores_it_then_serves_the_bytes(
    org, reader, receiver, slow_restores, django_capture_on_commit_callbacks
):
    seeded = seed_study(org)
    archived = archive_all(org, seeded)
    webhook_endpoint_create(org=org, url=receiver.url, actor=SYSTEM, event_types=["restore.ready"])
    url = f"/dicomweb/studies/{seeded.uid}"

    first = reader.get(url)

    assert first.status_code == 503
    assert first["Content-Type"] == "application/json"
    assert 3600 <= int(first["Retry-After"]) <= 3600 + restore_selectors.POLL_SECONDS
    body = first.json()
    assert body["error"]["code"] == "restore_required"
    assert "2 of 2" in body["error"]["message"]
    restore = RestoreRequest.objects.for_org(org).get()
    assert body["restore"]["id"] == restore.pk
    assert body["restore"]["state"] == "in_progress"
    assert body["restore"]["instances"] == 2
    assert body["restore"]["url"] == f"http://testserver/api/v1/restores/{restore.pk}/"
    assert (restore.scope, restore.instances_total, restore.days) == ("instances", 2, 7)
    assert restore.bytes_total == sum(map(len, seeded.files))
    assert restore.timeout_at - restore.requested_at == dt.timedelta(hours=72)
    assert AuditEvent.objects.filter(action="restore.started").count() == 1

    # Reading again while it runs reuses the open restore; its URL follows PUBLIC_BASE_URL.
    with override_settings(PUBLIC_BASE_URL="https://pacs.example.org/strata"):
        again = reader.get(url)
    assert again.status_code == 503 and again.json()["restore"]["id"] == restore.pk
    assert again.json()["restore"]["url"] == (
        f"https://pacs.example.org/strata/api/v1/restores/{restore.pk}/"
    )
    assert RestoreRequest.objects.count() == 1 and RestoreItem.objects.count() == 2

    # Followed through the REST API.
    detail = reader.get(f"/api/v1/restores/{restore.pk}/").json()
    assert detail["state"] == "in_progress" and detail["instances_ready"] == 0
    assert sorted(detail["sop_instance_uids"]) == sorted(seeded.sop_uids)

    # The store is not done yet: the poll leaves it in progress.
    restores.restores_poll()
    restore.refresh_from_db()
    assert restore.state == "in_progress" and restore.checked_at is not None

    slow_restores.ARCHIVE_FS_RESTORE_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        result = restores.restores_poll()
    assert result == {"requests": 1, "items": 2}
    restore.refresh_from_db()
    assert restore.state == "ready" and restore.ready_at is not None
    assert restore.instances_ready == 2
    for instance in archived:
        instance.refresh_from_db()
        assert instance.restored_until > timezone.now() + dt.timedelta(days=6)
        assert instance.tier == "archive"

    # restore.bytes metered once per instance, whatever the number of polls.
    restores.restores_poll()
    assert sorted(restored_meter(org)) == sorted(map(len, seeded.files))

    # restore.ready went to the receiver.
    assert len(receiver.requests) == 1
    event = json.loads(receiver.requests[0]["body"])
    payload = event.get("data", event.get("payload", event))
    assert payload["restore_id"] == restore.pk
    assert payload["study_instance_uids"] == [seeded.uid]
    assert payload["instances"] == 2 and payload["bytes"] == restore.bytes_total
    assert payload["readable_until"]
    assert WebhookDelivery.objects.get().event.type == "restore.ready"
    assert AuditEvent.objects.filter(action="restore.ready").count() == 1

    # Now the read succeeds, byte for byte, and starts nothing new.
    ok = reader.get(url)
    assert ok.status_code == 200
    parts = split_multipart(ok["Content-Type"], b"".join(ok.streaming_content))
    assert [content for _, content in parts] == seeded.files
    assert RestoreRequest.objects.count() == 1
    assert_reconciled(org)


def test_a_restored_copy_that_expired_needs_a_new_restore(org, reader, slow_restores):
    seeded = seed_study(org, n=1)
    (instance,) = archive_all(org, seeded)
    Instance.objects.filter(pk=instance.pk).update(
        restored_until=timezone.now() - dt.timedelta(seconds=1)
    )

    response = reader.get(f"/dicomweb/studies/{seeded.uid}")

    assert response.status_code == 503
    assert RestoreRequest.objects.for_org(org).get().instances_total == 1


def test_only_the_archived_instances_of_a_read_are_restored(org, reader, slow_restores):
    seeded = seed_study(org, modalities=("CT", "MR"))
    archived = to_tier(
        Instance.objects.for_org(org).get(sop_instance_uid=seeded.sop_uids[3]), "archive"
    )

    response = reader.get(f"/dicomweb/studies/{seeded.uid}")

    assert response.status_code == 503
    assert "1 of 4" in response.json()["error"]["message"]
    item = RestoreItem.objects.for_org(org).get()
    assert item.instance_id == archived.pk
    hot_series = reader.get(f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}")
    assert hot_series.status_code == 200


def test_a_restore_that_never_completes_times_out_and_is_reported(org, reader, slow_restores):
    seeded = seed_study(org)
    archive_all(org, seeded)
    reader.get(f"/dicomweb/studies/{seeded.uid}")
    restore = RestoreRequest.objects.for_org(org).get()
    RestoreRequest.objects.filter(pk=restore.pk).update(
        requested_at=F("requested_at") - dt.timedelta(hours=73),
        timeout_at=F("timeout_at") - dt.timedelta(hours=73),
    )

    restores.restores_poll()

    restore.refresh_from_db()
    assert restore.state == "timed_out"
    assert "0 of 2 image(s) were restored within 72 hours" in restore.error
    assert not UsageEvent.objects.filter(meter="restore.bytes").exists()
    assert AuditEvent.objects.filter(action="restore.timed_out").count() == 1
    detail = reader.get(f"/api/v1/restores/{restore.pk}/").json()
    assert detail["state"] == "timed_out" and "Timed out" in detail["error"]
    listed = reader.get("/api/v1/restores/?state=timed_out").json()["results"]
    assert [r["id"] for r in listed] == [restore.pk]
    # A later poll leaves it alone; a new read starts a new restore.
    assert restores.restores_poll() == {"requests": 0, "items": 0}
    response = reader.get(f"/dicomweb/studies/{seeded.uid}")
    assert response.json()["restore"]["id"] != restore.pk


def test_a_failed_start_is_asked_again_by_the_poll(org, reader, slow_restores, monkeypatch):
    from archive.storage import StorageUnavailable
    from archive.storage.filesystem import FilesystemStore

    seeded = seed_study(org, n=1)
    archive_all(org, seeded)
    original = FilesystemStore.restore_start
    calls: list[str] = []

    def flaky(self, *, key, tier, days):
        calls.append(key)
        if len(calls) == 1:
            raise StorageUnavailable("the store is down")
        return original(self, key=key, tier=tier, days=days)

    monkeypatch.setattr(FilesystemStore, "restore_start", flaky)
    assert reader.get(f"/dicomweb/studies/{seeded.uid}").status_code == 503
    slow_restores.ARCHIVE_FS_RESTORE_SECONDS = 0
    restores.restores_poll()  # not requested in the store: asked again
    restores.restores_poll()  # now ready
    assert len(calls) == 2
    assert RestoreRequest.objects.for_org(org).get().state == "ready"


# --- bulk restores -----------------------------------------------------------------------------


def test_bulk_estimate_shows_cost_and_time_without_starting(
    org, owner, token_client, slow_restores
):
    seeded = seed_study(org, n=3)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    client = token_client(org)

    response = client.post(
        "/api/v1/restores/", {"study": study.pk, "estimate": True}, format="json"
    )

    assert response.status_code == 200, response.content
    data = response.json()
    size = sum(map(len, seeded.files))
    assert (data["instances"], data["bytes"], data["in_progress_instances"]) == (3, size, 0)
    expected = Decimal(size) / Decimal(2**30) * Decimal("0.02")  # the default plan
    assert Decimal(data["amount"]) == expected.quantize(Decimal("0.000001"))
    assert data["currency"] == "USD" and data["rate"] == "0.02 USD per GiB"
    assert data["typical_seconds"] == 3600 + restore_selectors.POLL_SECONDS and data["days"] == 7
    assert not RestoreRequest.objects.exists()


def test_bulk_restore_of_a_study_starts_once(org, token_client, slow_restores):
    seeded = seed_study(org, n=2)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    client = token_client(org)

    first = client.post("/api/v1/restores/", {"study": study.pk}, format="json")
    second = client.post("/api/v1/restores/", {"study": study.pk}, format="json")

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["scope"] == "study" and first.json()["study"] == study.pk
    assert first.json()["study_instance_uid"] == seeded.uid
    estimate = client.post(
        "/api/v1/restores/", {"study": study.pk, "estimate": True}, format="json"
    ).json()
    assert (estimate["instances"], estimate["in_progress_instances"]) == (0, 2)


def test_bulk_restore_of_a_patient_covers_every_study(org, token_client, slow_restores):
    first, second = seed_study(org, n=1), seed_study(org, n=2)
    archive_all(org, first)
    archive_all(org, second)
    client = token_client(org)

    response = client.post("/api/v1/restores/", {"patient_id": "PAT-R1"}, format="json")

    assert response.status_code == 202
    restore = RestoreRequest.objects.for_org(org).get()
    assert (restore.scope, restore.patient_id, restore.instances_total) == ("patient", "PAT-R1", 3)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid"),
        ({"study": 1, "patient_id": "PAT-R1"}, 400, "invalid"),
        ({"patient_id": "NOBODY"}, 404, "patient_not_found"),
        ({"study": 999999}, 404, "not_found"),
    ],
)
def test_bulk_restore_bad_input(org, token_client, body, status, code):
    seed_study(org, n=1)
    response = token_client(org).post("/api/v1/restores/", body, format="json")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_bulk_restore_of_a_readable_study_is_a_conflict(org, token_client):
    seeded = seed_study(org, n=1)
    study = study_row(org, seeded)
    response = token_client(org).post("/api/v1/restores/", {"study": study.pk}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "nothing_to_restore"


# --- portal --------------------------------------------------------------------------------------


def test_portal_download_of_an_archived_study_starts_a_restore(client, org, owner, slow_restores):
    from django.urls import reverse

    client.force_login(owner.user)
    seeded = seed_study(org, n=2)
    archive_all(org, seeded)
    study = study_row(org, seeded)

    response = client.post(reverse("portal-study-download", args=[org.slug, study.pk]))

    restore = RestoreRequest.objects.for_org(org).get()
    assert response.status_code == 202
    content = response.content.decode()
    assert f"Restore {restore.pk}" in content
    assert "Nothing in this study can be downloaded right now." in content

    page = client.get(reverse("portal-restores", args=[org.slug])).content.decode()
    assert f"#{restore.pk}" in page and "In progress" in page
    detail = client.get(reverse("portal-study", args=[org.slug, study.pk])).content.decode()
    assert "being restored" in detail


def test_portal_restore_study_confirms_the_estimate_first(client, org, owner, slow_restores):
    from django.urls import reverse

    client.force_login(owner.user)
    seeded = seed_study(org, n=2)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    url = reverse("portal-study-restore", args=[org.slug, study.pk])

    page = client.get(url)
    assert page.status_code == 200
    content = page.content.decode()
    assert "Restore 2 images" in content and "USD" in content and "1 h" in content
    assert not RestoreRequest.objects.exists()

    response = client.post(url)
    restore = RestoreRequest.objects.for_org(org).get()
    assert response.status_code == 302
    assert response["Location"] == reverse("portal-restore", args=[org.slug, restore.pk])
    detail = client.get(response["Location"]).content.decode()
    assert "0 of 2" in detail


# --- isolation and access ----------------------------------------------------------------------


def test_other_tenants_restores_are_404(org, other_org, token_client, slow_restores):
    seeded = seed_study(org, n=1)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    restore = restores.restore_bulk(org=org, actor=SYSTEM, study=study)
    other = token_client(other_org)

    assert other.get(f"/api/v1/restores/{restore.pk}/").status_code == 404
    assert other.get("/api/v1/restores/").json()["results"] == []
    for body in ({"study": study.pk}, {"study": study.pk, "estimate": True}):
        response = other.post("/api/v1/restores/", body, format="json")
        assert response.status_code == 404
    assert RestoreRequest.objects.count() == 1


def test_other_tenants_restore_pages_are_404(client, org, other_org, make_member, slow_restores):
    from django.urls import reverse

    seeded = seed_study(org, n=1)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    restore = restores.restore_bulk(org=org, actor=SYSTEM, study=study)
    stranger = make_member(other_org, "owner")
    client.force_login(stranger.user)
    for name, args in (
        ("portal-restore", [restore.pk]),
        ("portal-study-restore", [study.pk]),
    ):
        assert client.get(reverse(name, args=[other_org.slug, *args])).status_code == 404
        assert client.get(reverse(name, args=[org.slug, *args])).status_code == 404
