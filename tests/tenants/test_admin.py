from __future__ import annotations

import pytest

from tenants.models import AuditEvent, Organization
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    staff = UserFactory(
        email="ops@strata.example", username="ops@strata.example", is_staff=True, is_superuser=True
    )
    client.force_login(staff)
    return client


def test_staff_change_in_admin_is_audited(staff_client, org):
    response = staff_client.post(
        f"/admin/tenants/organization/{org.pk}/change/",
        {
            "name": org.name,
            "slug": org.slug,
            "status": "suspended",
            "created_at_0": org.created_at.strftime("%Y-%m-%d"),
            "created_at_1": org.created_at.strftime("%H:%M:%S"),
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    org.refresh_from_db()
    assert org.status == Organization.Status.SUSPENDED
    event = AuditEvent.objects.for_org(org).get(action="admin.organization.changed")
    assert event.actor_label == "ops@strata.example"
    assert "status" in event.details["fields"]


def test_audit_log_is_read_only_in_admin(staff_client, org):
    AuditEvent.objects.create(organization=org, action="x")
    event = AuditEvent.objects.get()
    assert staff_client.get("/admin/tenants/auditevent/add/").status_code == 403
    assert (
        staff_client.post(
            f"/admin/tenants/auditevent/{event.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_organizations_cannot_be_deleted_in_admin(staff_client, org):
    response = staff_client.post(f"/admin/tenants/organization/{org.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Organization.objects.filter(pk=org.pk).exists()
