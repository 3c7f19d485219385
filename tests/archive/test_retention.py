"""The trash and the purge: a trashed study leaves every search and read and can be taken back
out during the grace period; past it, the purge deletes the bytes first, then the rows with their
ledger deltas and early-deletion charges, and a crash between the two finishes on rerun."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from archive.models import ArchiveSettings, Instance, Series, Study, TierMove
from archive.retention import services as retention
from billing.models import StorageDelta, UsageEvent
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import AuditEvent
from tests.archive.reconcile_helpers import assert_reconciled
from tests.archive.test_restores_support import seed_study, study_row, to_tier

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")


def make_due(study: Study) -> None:
    Study.objects.filter(pk=study.pk).update(purge_after=timezone.now() - dt.timedelta(seconds=1))


def object_path(root, instance: Instance):
    return root / instance.tier / instance.object_key


def test_trash_hides_the_study_everywhere_until_untrashed(org, token_client, client, owner):
    seeded = seed_study(org)
    study = study_row(org, seeded)
    api = token_client(org)

    trashed = retention.study_trash(org=org, study=study, actor=SYSTEM, reason="Retention rule 1")

    assert trashed.trashed_at is not None and trashed.trash_reason == "Retention rule 1"
    assert trashed.purge_after - trashed.trashed_at == dt.timedelta(days=30)
    audit = AuditEvent.objects.get(action="study.trashed")
    assert audit.target_label == seeded.uid and audit.details["reason"] == "Retention rule 1"
    assert api.get(f"/dicomweb/studies?StudyInstanceUID={seeded.uid}").json() == []
    assert api.get(f"/dicomweb/series?StudyInstanceUID={seeded.uid}").json() == []
    assert api.get(f"/dicomweb/instances?StudyInstanceUID={seeded.uid}").json() == []
    assert api.get(f"/dicomweb/studies/{seeded.uid}").status_code == 404
    assert api.get(f"/dicomweb/studies/{seeded.uid}/metadata").status_code == 404
    assert api.get("/api/v1/studies/").json()["results"] == []
    client.force_login(owner.user)
    assert client.get(reverse("portal-studies", args=[org.slug])).context["rows"] == []
    download = client.get(reverse("portal-study-download", args=[org.slug, study.pk]))
    assert download.status_code == 404
    trash = client.get(reverse("portal-trash", args=[org.slug]))
    assert [r["study"].pk for r in trash.context["rows"]] == [study.pk]
    listed = api.get("/api/v1/trash/").json()["results"]
    assert [s["id"] for s in listed] == [study.pk] and listed[0]["trash_reason"]

    retention.study_untrash(org=org, study=study, actor=SYSTEM)

    study.refresh_from_db()
    assert (study.trashed_at, study.purge_after, study.trash_reason) == (None, None, "")
    assert AuditEvent.objects.filter(action="study.untrashed").count() == 1
    assert api.get(f"/dicomweb/studies/{seeded.uid}").status_code == 200
    assert len(api.get("/api/v1/studies/").json()["results"]) == 1


def test_grace_period_comes_from_the_settings(org):
    ArchiveSettings.objects.create(organization=org, trash_grace_days=7)
    study = study_row(org, seed_study(org, n=1))
    trashed = retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    assert trashed.purge_after - trashed.trashed_at == dt.timedelta(days=7)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_trash_needs_a_reason(org, reason):
    study = study_row(org, seed_study(org, n=1))
    with pytest.raises(ValidationFailed) as err:
        retention.study_trash(org=org, study=study, actor=SYSTEM, reason=reason)
    assert "reason" in err.value.fields
    study.refresh_from_db()
    assert study.trashed_at is None


def test_trash_twice_and_untrash_of_a_live_study_are_conflicts(org):
    study = study_row(org, seed_study(org, n=1))
    with pytest.raises(Conflict) as err:
        retention.study_untrash(org=org, study=study, actor=SYSTEM)
    assert err.value.code == "not_trashed"
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    with pytest.raises(Conflict) as err:
        retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    assert err.value.code == "already_trashed"


def test_nothing_is_purged_before_the_purge_date(org, archive_root):
    seeded = seed_study(org, n=1)
    retention.study_trash(org=org, study=study_row(org, seeded), actor=SYSTEM, reason="r")

    assert retention.trash_purge_due() == {"studies": 0, "instances": 0}
    instance = Instance.objects.for_org(org).get()
    assert object_path(archive_root, instance).exists()


def test_purge_deletes_bytes_then_rows_with_ledger_and_early_deletion(org, archive_root):
    seeded = seed_study(org, n=2)
    study = study_row(org, seeded)
    hot, archived = Instance.objects.for_org(org).order_by("id")
    # The archived one entered the archive tier 10 days ago: 170 of its 180 days are owed.
    archived = to_tier(archived, "archive", since=timezone.now() - dt.timedelta(days=10))
    paths = [object_path(archive_root, hot), object_path(archive_root, archived)]
    assert all(p.exists() for p in paths)
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="Retention 10 years")
    make_due(study)

    result = retention.trash_purge_due()

    assert result == {"studies": 1, "instances": 2}
    assert not any(p.exists() for p in paths)
    assert not Instance.objects.for_org(org).exists()
    assert not Series.objects.for_org(org).exists()
    assert not Study.objects.for_org(org).exists()
    deltas = {
        d.idempotency_key: (d.tier, d.delta_bytes)
        for d in StorageDelta.objects.for_org(org).filter(idempotency_key__startswith="purge:")
    }
    assert deltas == {
        f"purge:{hot.pk}": ("hot", -hot.size_bytes),
        f"purge:{archived.pk}": ("archive", -archived.size_bytes),
    }
    early = UsageEvent.objects.for_org(org).get(meter="early_deletion")
    assert early.quantity == archived.size_bytes * 170
    assert early.dimensions == {"tier": "archive"}
    assert early.idempotency_key == f"purge:{archived.pk}:early"
    audit = AuditEvent.objects.get(action="study.purged")
    assert audit.target_label == seeded.uid
    assert audit.details["instances"] == 2 and audit.details["reason"] == "Retention 10 years"
    # Nothing left to do, nothing billed twice.
    assert retention.trash_purge_due() == {"studies": 0, "instances": 0}
    assert (
        StorageDelta.objects.for_org(org).filter(idempotency_key__startswith="purge:").count() == 2
    )
    assert_reconciled(org)


def test_early_deletion_is_not_charged_past_the_minimum_duration(org):
    seeded = seed_study(org, n=1)
    (instance,) = Instance.objects.for_org(org)
    to_tier(instance, "cold", since=timezone.now() - dt.timedelta(days=91))
    study = study_row(org, seeded)
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    make_due(study)
    retention.trash_purge_due()
    assert not UsageEvent.objects.for_org(org).filter(meter="early_deletion").exists()
    delta = StorageDelta.objects.for_org(org).get(idempotency_key=f"purge:{instance.pk}")
    assert (delta.tier, delta.delta_bytes) == ("cold", -instance.size_bytes)


def test_a_crash_between_bytes_and_rows_finishes_on_rerun(org, archive_root, monkeypatch):
    seeded = seed_study(org, n=3)
    study = study_row(org, seeded)
    instances = list(Instance.objects.for_org(org).order_by("id"))
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    make_due(study)
    original = retention._delete_rows

    def crash(**kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(retention, "_delete_rows", crash)
    with pytest.raises(RuntimeError):
        retention.trash_purge_due()
    # The bytes went first; every row is still there, no ledger entry was written.
    assert not any(object_path(archive_root, i).exists() for i in instances)
    assert Instance.objects.for_org(org).count() == 3
    assert (
        not StorageDelta.objects.for_org(org).filter(idempotency_key__startswith="purge:").exists()
    )
    # Trashed and past its date: it cannot be taken back out with its bytes gone.
    with pytest.raises(Conflict) as err:
        retention.study_untrash(org=org, study=study, actor=SYSTEM)
    assert err.value.code == "purge_due"

    monkeypatch.setattr(retention, "_delete_rows", original)
    assert retention.trash_purge_due() == {"studies": 1, "instances": 3}
    assert not Study.objects.for_org(org).exists()
    assert (
        StorageDelta.objects.for_org(org).filter(idempotency_key__startswith="purge:").count() == 3
    )


def test_purge_is_bounded_and_resumes(org):
    seeded = seed_study(org, n=3)
    study = study_row(org, seeded)
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    make_due(study)

    assert retention.trash_purge_due(instance_limit=2) == {"studies": 0, "instances": 2}
    assert Instance.objects.for_org(org).count() == 1
    assert retention.trash_purge_due(instance_limit=2) == {"studies": 1, "instances": 1}
    assert not Study.objects.for_org(org).exists()


def test_purge_waits_for_a_move_in_flight(org):
    seeded = seed_study(org, n=1)
    study = study_row(org, seeded)
    (instance,) = Instance.objects.for_org(org)
    TierMove.objects.create(
        organization=org,
        instance=instance,
        study=study,
        from_tier="hot",
        to_tier="cold",
        from_location=instance.location,
        to_location=instance.location,
        size_bytes=instance.size_bytes,
        state=TierMove.State.COPYING,
    )
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    make_due(study)

    assert retention.trash_purge_due() == {"studies": 0, "instances": 0}
    TierMove.objects.update(state=TierMove.State.DONE)
    assert retention.trash_purge_due() == {"studies": 1, "instances": 1}


def test_purge_of_a_studys_trash_in_one_org_leaves_the_other_alone(org, other_org):
    mine, theirs = seed_study(org, n=1), seed_study(other_org, n=1)
    study = study_row(org, mine)
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    make_due(study)
    retention.trash_purge_due()
    assert not Study.objects.for_org(org).exists()
    assert Study.objects.for_org(other_org).get().study_uid == theirs.uid


# --- API and portal ----------------------------------------------------------------------------


def test_trash_api_trash_and_untrash(org, token_client):
    study = study_row(org, seed_study(org, n=1))
    api = token_client(org)

    bad = api.post("/api/v1/trash/", {"study": study.pk}, format="json")
    assert bad.status_code == 400 and "reason" in bad.json()["error"]["fields"]
    created = api.post("/api/v1/trash/", {"study": study.pk, "reason": "duplicate"}, format="json")
    assert created.status_code == 201
    assert created.json()["purge_after"] and created.json()["trash_reason"] == "duplicate"
    again = api.post("/api/v1/trash/", {"study": study.pk, "reason": "x"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_trashed"

    back = api.post(f"/api/v1/trash/{study.pk}/untrash/", {}, format="json")
    assert back.status_code == 200 and back.json()["trashed_at"] is None
    gone = api.post(f"/api/v1/trash/{study.pk}/untrash/", {}, format="json")
    assert gone.status_code == 404


def test_trash_api_other_tenant_gets_404(org, other_org, token_client):
    study = study_row(org, seed_study(org, n=1))
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    other = token_client(other_org)

    assert other.get("/api/v1/trash/").json()["results"] == []
    assert other.post(f"/api/v1/trash/{study.pk}/untrash/", {}).status_code == 404
    live = study_row(org, seed_study(org, n=1))
    response = other.post("/api/v1/trash/", {"study": live.pk, "reason": "r"}, format="json")
    assert response.status_code == 404
    live.refresh_from_db()
    assert live.trashed_at is None


@pytest.mark.parametrize("scopes", [["dicom:read"], ["dicom:read", "dicom:write"]])
def test_trash_api_needs_the_policies_permission(org, token_client, scopes):
    study = study_row(org, seed_study(org, n=1))
    response = token_client(org, scopes).post(
        "/api/v1/trash/", {"study": study.pk, "reason": "r"}, format="json"
    )
    assert response.status_code == 403


def test_portal_trash_and_untrash(client, org, owner, make_member):
    study = study_row(org, seed_study(org, n=1))
    member = make_member(org, "member")
    client.force_login(member.user)
    url = reverse("portal-study-trash", args=[org.slug, study.pk])
    assert client.post(url, {"reason": "r"}).status_code == 403

    client.force_login(owner.user)
    response = client.post(url, {"reason": "Duplicate upload"})
    assert response.status_code == 302 and response["Location"] == reverse(
        "portal-trash", args=[org.slug]
    )
    page = client.get(response["Location"]).content.decode()
    assert "Duplicate upload" in page and "Restore from trash" in page
    detail = client.get(reverse("portal-study", args=[org.slug, study.pk])).content.decode()
    assert "This study is in the trash" in detail

    back = client.post(reverse("portal-study-untrash", args=[org.slug, study.pk]))
    assert back.status_code == 302
    study.refresh_from_db()
    assert study.trashed_at is None


def test_portal_trash_pages_of_another_tenant_are_404(client, org, other_org, make_member):
    study = study_row(org, seed_study(org, n=1))
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    stranger = make_member(other_org, "owner")
    client.force_login(stranger.user)
    for name in ("portal-study-trash", "portal-study-untrash", "portal-study-hold"):
        url = reverse(name, args=[other_org.slug, study.pk])
        assert client.post(url, {"reason": "r"}).status_code == 404
    assert client.get(reverse("portal-trash", args=[org.slug])).status_code == 404
    assert client.get(reverse("portal-trash", args=[other_org.slug])).context["rows"] == []
    study.refresh_from_db()
    assert study.trashed_at is not None and not study.legal_hold


def test_trashed_purge_date_moves_with_the_clock(org):
    study = study_row(org, seed_study(org, n=1))
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="r")
    Study.objects.filter(pk=study.pk).update(purge_after=F("purge_after") - dt.timedelta(days=29))
    assert retention.trash_purge_due() == {"studies": 0, "instances": 0}


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_new_instances_of_a_trashed_study_take_it_out_of_the_trash(
    org, archive_root, batch, monkeypatch
):
    import io

    import pydicom
    from django.db import IntegrityError
    from pydicom.uid import generate_uid

    from archive.ingest import pipeline
    from archive.ingest.pipeline import instances_ingest, spool_chunks
    from archive.storage import store_for

    study = study_row(org, seed_study(org, n=1))
    retention.study_trash(org=org, study=study, actor=SYSTEM, reason="duplicate exam")
    instance = Instance.objects.for_org(org).get()
    data = b"".join(store_for(instance.location).iter_bytes(key=instance.object_key, tier="hot"))
    again = pydicom.dcmread(io.BytesIO(data))
    again.SOPInstanceUID = again.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    again.save_as(buffer, enforce_file_format=True)
    spooled = spool_chunks(store_for(instance.location), [buffer.getvalue()])
    if not batch:  # the batch transaction loses a race: each object is indexed on its own

        def lost_race(**kwargs):
            raise IntegrityError("concurrent insert")

        monkeypatch.setattr(pipeline, "_index", lost_race)
    (result,) = instances_ingest(org=org, batch=[spooled])

    assert result.status == "stored"
    study.refresh_from_db()
    assert study.trashed_at is None and study.purge_after is None and study.instance_count == 2
    audit = AuditEvent.objects.filter(organization=org, action="study.untrashed").get()
    assert audit.actor_label.endswith("ingest") and "arrived" in audit.details["reason"]
    assert retention.trash_purge_due() == {"studies": 0, "instances": 0}
