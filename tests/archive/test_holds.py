"""Legal holds: set and lifted by owners and admins with a reason, audited; a held study cannot
be trashed (whatever asks: a person or a policy's delete rule), and a held study already in the
trash stays there and is never purged until the hold is lifted."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from archive.models import LegalHold, Study
from archive.retention import services as retention
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import AuditEvent
from tests.archive.test_restores_support import seed_study, study_row

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
POLICY = Actor.system("archive policy")


def test_set_and_lift_keep_the_study_flag_and_are_audited(org):
    study = study_row(org, seed_study(org, n=1))

    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="Litigation 2026-14")

    study.refresh_from_db()
    assert study.legal_hold and hold.lifted_at is None and hold.reason == "Litigation 2026-14"
    set_audit = AuditEvent.objects.get(action="legal_hold.set")
    assert set_audit.details["reason"] == "Litigation 2026-14"
    with pytest.raises(Conflict) as err:
        retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="again")
    assert err.value.code == "already_held"

    lifted = retention.legal_hold_lift(org=org, hold=hold, actor=SYSTEM, reason="Case closed")

    study.refresh_from_db()
    assert not study.legal_hold
    assert lifted.lifted_at is not None and lifted.lift_reason == "Case closed"
    assert AuditEvent.objects.get(action="legal_hold.lifted").details["reason"] == "Case closed"
    with pytest.raises(Conflict) as err:
        retention.legal_hold_lift(org=org, hold=hold, actor=SYSTEM, reason="again")
    assert err.value.code == "already_lifted"
    # A new hold can follow a lifted one.
    retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="New case")
    assert LegalHold.objects.for_org(org).filter(study=study).count() == 2


@pytest.mark.parametrize("reason", ["", "  "])
def test_a_reason_is_required_to_set_and_to_lift(org, reason):
    study = study_row(org, seed_study(org, n=1))
    with pytest.raises(ValidationFailed):
        retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason=reason)
    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="r")
    with pytest.raises(ValidationFailed):
        retention.legal_hold_lift(org=org, hold=hold, actor=SYSTEM, reason=reason)
    study.refresh_from_db()
    assert study.legal_hold


def test_a_held_study_cannot_be_trashed_by_anyone(org):
    study = study_row(org, seed_study(org, n=1))
    retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="Litigation")

    for actor in (SYSTEM, POLICY):
        with pytest.raises(Conflict) as err:
            retention.study_trash(org=org, study=study, actor=actor, reason="Retention rule 2")
        assert err.value.code == "legal_hold"
        assert "legal hold" in err.value.message
    study.refresh_from_db()
    assert study.trashed_at is None
    assert not AuditEvent.objects.filter(action="study.trashed").exists()


def test_a_held_study_in_the_trash_is_never_purged_until_lifted(org, archive_root):
    seeded = seed_study(org, n=1)
    study = study_row(org, seeded)
    retention.study_trash(org=org, study=study, actor=POLICY, reason="Retention rule 1")
    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="Subpoena")
    Study.objects.filter(pk=study.pk).update(purge_after=timezone.now() - dt.timedelta(days=1))

    assert retention.trash_purge_due() == {"studies": 0, "instances": 0}
    study.refresh_from_db()
    assert study.trashed_at is not None  # still in the trash
    assert any((archive_root / "hot").rglob("*.dcm"))

    retention.legal_hold_lift(org=org, hold=hold, actor=SYSTEM, reason="Released")
    assert retention.trash_purge_due() == {"studies": 1, "instances": 1}
    assert not Study.objects.for_org(org).exists()


def test_a_study_past_its_purge_date_cannot_be_held(org):
    study = study_row(org, seed_study(org, n=1))
    retention.study_trash(org=org, study=study, actor=POLICY, reason="r")
    Study.objects.filter(pk=study.pk).update(purge_after=timezone.now() - dt.timedelta(seconds=1))
    with pytest.raises(Conflict) as err:
        retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="late")
    assert err.value.code == "purge_due"


# --- API ---------------------------------------------------------------------------------------


def test_hold_api_set_list_lift(org, token_client):
    study = study_row(org, seed_study(org, n=1))
    admin = token_client(org, ["admin", "dicom:read"])

    missing = admin.post("/api/v1/legal-holds/", {"study": study.pk}, format="json")
    assert missing.status_code == 400 and "reason" in missing.json()["error"]["fields"]
    created = admin.post(
        "/api/v1/legal-holds/", {"study": study.pk, "reason": "Litigation"}, format="json"
    )
    assert created.status_code == 201
    hold = created.json()
    assert hold["active"] and hold["study_instance_uid"] == study.study_uid
    twice = admin.post("/api/v1/legal-holds/", {"study": study.pk, "reason": "x"}, format="json")
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "already_held"
    trash = admin.post("/api/v1/trash/", {"study": study.pk, "reason": "r"}, format="json")
    assert trash.status_code == 409 and trash.json()["error"]["code"] == "legal_hold"

    listed = admin.get("/api/v1/legal-holds/?active=true").json()["results"]
    assert [h["id"] for h in listed] == [hold["id"]]
    assert admin.get(f"/api/v1/legal-holds/{hold['id']}/").json()["reason"] == "Litigation"

    no_reason = admin.post(f"/api/v1/legal-holds/{hold['id']}/lift/", {}, format="json")
    assert no_reason.status_code == 400
    lifted = admin.post(
        f"/api/v1/legal-holds/{hold['id']}/lift/", {"reason": "Closed"}, format="json"
    )
    assert lifted.status_code == 200 and not lifted.json()["active"]
    assert admin.get("/api/v1/legal-holds/?active=true").json()["results"] == []
    assert len(admin.get("/api/v1/legal-holds/?active=false").json()["results"]) == 1


@pytest.mark.parametrize("role", ["member", "billing", "auditor"])
def test_only_owners_and_admins_set_or_lift_holds(org, make_member, role):
    from rest_framework.test import APIClient

    study = study_row(org, seed_study(org, n=1))
    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="r")
    other = study_row(org, seed_study(org, n=1))
    member = make_member(org, role)
    client = APIClient()
    client.force_login(member.user)
    base = f"/api/v1/o/{org.slug}"

    response = client.post(
        f"{base}/legal-holds/", {"study": other.pk, "reason": "r"}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["fields"]["permission"] == ["holds.manage"]
    lift = client.post(f"{base}/legal-holds/{hold.pk}/lift/", {"reason": "r"}, format="json")
    assert lift.status_code == 403
    other.refresh_from_db()
    assert not other.legal_hold and LegalHold.objects.get(pk=hold.pk).lifted_at is None


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_set_holds_in_a_session(org, make_member, role):
    from rest_framework.test import APIClient

    study = study_row(org, seed_study(org, n=1))
    client = APIClient()
    client.force_login(make_member(org, role).user)
    response = client.post(
        f"/api/v1/o/{org.slug}/legal-holds/", {"study": study.pk, "reason": "r"}, format="json"
    )
    assert response.status_code == 201


def test_a_dicom_token_cannot_set_holds(org, token_client):
    study = study_row(org, seed_study(org, n=1))
    response = token_client(org, ["dicom:read", "dicom:write"]).post(
        "/api/v1/legal-holds/", {"study": study.pk, "reason": "r"}, format="json"
    )
    assert response.status_code == 403


def test_hold_api_other_tenant_gets_404(org, other_org, token_client):
    study = study_row(org, seed_study(org, n=1))
    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="r")
    other = token_client(other_org)

    assert other.get("/api/v1/legal-holds/").json()["results"] == []
    assert other.get(f"/api/v1/legal-holds/{hold.pk}/").status_code == 404
    lift = other.post(f"/api/v1/legal-holds/{hold.pk}/lift/", {"reason": "r"}, format="json")
    assert lift.status_code == 404
    live = study_row(org, seed_study(org, n=1))
    create = other.post("/api/v1/legal-holds/", {"study": live.pk, "reason": "r"}, format="json")
    assert create.status_code == 404
    assert LegalHold.objects.get(pk=hold.pk).lifted_at is None
    assert LegalHold.objects.count() == 1


# --- portal ------------------------------------------------------------------------------------


def test_portal_hold_set_and_lift_from_the_study_page(client, org, owner):
    study = study_row(org, seed_study(org, n=1))
    client.force_login(owner.user)
    detail = reverse("portal-study", args=[org.slug, study.pk])

    empty = client.post(reverse("portal-study-hold", args=[org.slug, study.pk]), {"reason": ""})
    assert empty.status_code == 302 and not LegalHold.objects.exists()
    client.post(reverse("portal-study-hold", args=[org.slug, study.pk]), {"reason": "Case 7"})
    hold = LegalHold.objects.get()
    page = client.get(detail).content.decode()
    assert "Legal hold" in page and "Case 7" in page and "Lift legal hold" in page
    assert "Move to trash" not in page
    holds = client.get(reverse("portal-holds", args=[org.slug])).content.decode()
    assert "Case 7" in holds

    client.post(reverse("portal-hold-lift", args=[org.slug, hold.pk]), {"reason": "Closed"})
    hold.refresh_from_db()
    assert hold.lifted_at is not None and hold.lift_reason == "Closed"
    page = client.get(detail).content.decode()
    assert "Set legal hold" in page and "Move to trash" in page


def test_portal_member_cannot_set_or_lift_holds(client, org, make_member):
    study = study_row(org, seed_study(org, n=1))
    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="r")
    client.force_login(make_member(org, "member").user)
    assert (
        client.post(
            reverse("portal-study-hold", args=[org.slug, study.pk]), {"reason": "r"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            reverse("portal-hold-lift", args=[org.slug, hold.pk]), {"reason": "r"}
        ).status_code
        == 403
    )
    page = client.get(reverse("portal-study", args=[org.slug, study.pk])).content.decode()
    assert "Lift legal hold" not in page
    assert client.get(reverse("portal-holds", args=[org.slug])).status_code == 200


def test_portal_hold_lift_of_another_tenant_is_404(client, org, other_org, make_member):
    study = study_row(org, seed_study(org, n=1))
    hold = retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="r")
    client.force_login(make_member(other_org, "owner").user)
    response = client.post(
        reverse("portal-hold-lift", args=[other_org.slug, hold.pk]), {"reason": "r"}
    )
    assert response.status_code == 404
    assert LegalHold.objects.get().lifted_at is None
