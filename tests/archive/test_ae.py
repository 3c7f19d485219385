"""Who may call an AE title: a restriction or the explicit, audited "any caller" choice, in the
service, the API and the portal; AE titles unique regardless of case across organizations; the
migration that keeps existing open AE titles open."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from archive.ae_titles import selectors as ae_selectors
from archive.ae_titles import services as ae_services
from archive.models import DicomAE
from tenants.context import Actor
from tenants.errors import ValidationFailed
from tenants.models import ApiToken, AuditEvent, Membership, Organization

pytestmark = pytest.mark.django_db

RESTRICTION_FIELDS = {"allowed_calling_ae_titles", "allowed_networks", "allow_any_caller"}
MIGRATION = importlib.import_module(
    "archive.migrations.0008_dicomae_any_caller_and_case_insensitive_titles"
)


@pytest.fixture
def api(org: Organization, make_token: Callable[..., tuple[ApiToken, str]]) -> APIClient:
    _, secret = make_token(org, ["admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def portal(owner: Membership) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def fields(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    return dict(response.json()["error"]["fields"])


def create(org: Organization, title: str, **rules: Any) -> DicomAE:
    return ae_services.ae_create(
        org=org,
        ae_title=title,
        allowed_calling_ae_titles=rules.get("calling", []),
        allowed_networks=rules.get("networks", []),
        allow_any_caller=rules.get("any_caller", False),
        actor=Actor.system("tests"),
    )


def audit_details(action: str) -> list[dict[str, Any]]:
    events = AuditEvent.objects.filter(action=action).order_by("pk")
    return list(events.values_list("details", flat=True))


# --- the rule in the service ------------------------------------------------------------------


def test_service_refuses_no_restriction_without_the_choice(org: Organization) -> None:
    with pytest.raises(ValidationFailed) as refused:
        create(org, "OPEN_AE")
    assert set(refused.value.fields) == RESTRICTION_FIELDS
    assert not DicomAE.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="dicom_ae").exists()


def test_service_refuses_the_choice_together_with_a_restriction(org: Organization) -> None:
    with pytest.raises(ValidationFailed) as refused:
        create(org, "MIXED", networks=["10.0.0.0/8"], any_caller=True)
    assert set(refused.value.fields) == {"allow_any_caller"}
    assert not DicomAE.objects.exists()


@pytest.mark.parametrize(
    ("rules", "admitted"),
    [
        ({}, False),  # written around the services (admin, SQL): closed
        ({"allow_any_caller": True}, True),
        ({"allowed_calling_ae_titles": ["CT1"]}, True),
        ({"allowed_calling_ae_titles": ["OTHER"]}, False),
        ({"allowed_networks": ["192.0.2.0/24"]}, True),
        ({"allowed_networks": ["198.51.100.0/24"]}, False),
    ],
    ids=["nothing", "any-caller", "calling-ok", "calling-not", "network-ok", "network-not"],
)
def test_admission_needs_a_passed_restriction_or_the_any_caller_choice(
    org: Organization, rules: dict[str, Any], admitted: bool
) -> None:
    DicomAE.objects.create(organization=org, ae_title="ADMIT", **rules)
    found = ae_selectors.ae_admit(called_ae="ADMIT", calling_ae="CT1", address="192.0.2.9")
    assert (found is not None) is admitted


# --- API ---------------------------------------------------------------------------------------


def test_api_refuses_an_ae_title_without_restriction_or_choice_naming_the_fields(
    api: APIClient,
) -> None:
    refused = fields(api.post("/api/v1/dicom-aes/", {"ae_title": "OPEN_AE"}, format="json"))
    assert set(refused) == RESTRICTION_FIELDS
    assert "allow_any_caller" in refused["allowed_networks"][0]
    assert not DicomAE.objects.exists()


def test_api_any_caller_choice_is_stored_shown_and_audited(api: APIClient) -> None:
    created = api.post(
        "/api/v1/dicom-aes/", {"ae_title": "OPEN_AE", "allow_any_caller": True}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["allow_any_caller"] is True
    assert api.get("/api/v1/dicom-aes/").json()["results"][0]["allow_any_caller"] is True
    assert DicomAE.objects.get().allow_any_caller
    (details,) = audit_details("dicom_ae.created")
    assert details["allow_any_caller"] is True


def test_api_choice_and_restriction_together_are_refused(api: APIClient) -> None:
    body = {"ae_title": "MIXED", "allowed_networks": ["10.0.0.0/8"], "allow_any_caller": True}
    assert set(fields(api.post("/api/v1/dicom-aes/", body, format="json"))) == {"allow_any_caller"}
    assert not DicomAE.objects.exists()


def test_api_patch_restricting_clears_the_choice_and_emptying_needs_it(
    api: APIClient, org: Organization
) -> None:
    ae = create(org, "PATCHED", any_caller=True)
    path = f"/api/v1/dicom-aes/{ae.pk}/"
    restricted = api.patch(path, {"allowed_networks": ["10.1.0.0/16"]}, format="json")
    assert restricted.status_code == 200, restricted.content
    assert restricted.json()["allow_any_caller"] is False
    details = audit_details("dicom_ae.updated")[-1]
    assert details["allow_any_caller"] is False and details["allow_any_caller_was"] is True

    emptied = fields(api.patch(path, {"allowed_networks": []}, format="json"))
    assert set(emptied) == RESTRICTION_FIELDS
    ae.refresh_from_db()
    assert ae.allowed_networks == ["10.1.0.0/16"] and not ae.allow_any_caller

    reopened = api.patch(path, {"allowed_networks": [], "allow_any_caller": True}, format="json")
    assert reopened.status_code == 200 and reopened.json()["allow_any_caller"] is True
    assert audit_details("dicom_ae.updated")[-1]["allow_any_caller"] is True


def test_api_other_tenants_ae_title_answers_404(api: APIClient, other_org: Organization) -> None:
    theirs = create(other_org, "THEIRS", calling=["PACS"])
    path = f"/api/v1/dicom-aes/{theirs.pk}/"
    assert api.get(path).status_code == 404
    assert api.patch(path, {"allow_any_caller": True}, format="json").status_code == 404
    assert api.delete(path).status_code == 404
    theirs.refresh_from_db()
    assert theirs.allowed_calling_ae_titles == ["PACS"] and not theirs.allow_any_caller


# --- unique regardless of case -----------------------------------------------------------------


def test_api_refuses_a_title_differing_only_in_case_from_another_hospitals(
    api: APIClient, org: Organization, other_org: Organization
) -> None:
    create(other_org, "PACS", any_caller=True)
    refused = fields(
        api.post(
            "/api/v1/dicom-aes/", {"ae_title": "pacs", "allow_any_caller": True}, format="json"
        )
    )
    assert "regardless of case" in refused["ae_title"][0]
    assert "organization" not in refused["ae_title"][0]  # the other hospital is not named
    assert not DicomAE.objects.for_org(org).exists()


def test_a_title_differing_only_in_case_from_ones_own_names_it(org: Organization) -> None:
    create(org, "StMary", any_caller=True)
    with pytest.raises(ValidationFailed) as refused:
        create(org, "STMARY", any_caller=True)
    assert "StMary" in refused.value.fields["ae_title"][0]


def test_database_refuses_titles_differing_only_in_case(
    org: Organization, other_org: Organization
) -> None:
    DicomAE.objects.create(organization=org, ae_title="Radiology", allow_any_caller=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        DicomAE.objects.create(organization=other_org, ae_title="RADIOLOGY", allow_any_caller=True)


def test_a_concurrent_case_duplicate_is_a_field_error_not_a_500(
    org: Organization, other_org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(other_org, "LAB", any_caller=True)
    # The race: the check ran before the other hospital's row was committed.
    monkeypatch.setattr(ae_services, "_title_taken", lambda title, *, org: None)
    with pytest.raises(ValidationFailed) as refused:
        create(org, "lab", any_caller=True)
    assert "regardless of case" in refused.value.fields["ae_title"][0]


# --- portal -------------------------------------------------------------------------------------


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def test_portal_refuses_no_restriction_without_the_choice(
    portal: Client, org: Organization
) -> None:
    response = portal.post(url("portal-ae-create", org), {"ae_title": "OPEN_AE"})
    assert response.status_code == 400
    assert "Allow any caller" in " ".join(response.context["form"].non_field_errors())
    assert not DicomAE.objects.exists()


def test_portal_refuses_the_choice_with_a_restriction(portal: Client, org: Organization) -> None:
    data = {"ae_title": "MIXED", "allowed_networks": "10.0.0.0/8", "allow_any_caller": "on"}
    response = portal.post(url("portal-ae-create", org), data)
    assert response.status_code == 400
    assert "allow_any_caller" in response.context["form"].errors
    assert not DicomAE.objects.exists()


def test_portal_any_caller_choice_is_saved_audited_and_shown_with_a_warning(
    portal: Client, org: Organization
) -> None:
    form = portal.get(url("portal-ae-create", org)).content.decode()
    assert 'name="allow_any_caller"' in form and "from any network address" in form
    response = portal.post(
        url("portal-ae-create", org), {"ae_title": "OPEN_AE", "allow_any_caller": "on"}
    )
    assert response.status_code == 302
    ae = DicomAE.objects.get()
    assert ae.allow_any_caller
    assert audit_details("dicom_ae.created") == [
        {"calling": [], "networks": [], "allow_any_caller": True}
    ]
    create(org, "CLOSED_AE", calling=["CT1"])
    page = portal.get(url("portal-dicom", org)).content.decode()
    table = page[page.index('id="ae-table"') :]
    open_row = table[table.index("OPEN_AE") : table.index("</tr>", table.index("OPEN_AE"))]
    closed_row = table[table.index("CLOSED_AE") : table.index("</tr>", table.index("CLOSED_AE"))]
    assert 'badge badge-warning"' in open_row and "Any caller" in open_row
    assert "Any caller" not in closed_row
    edit = portal.get(url("portal-ae-edit", org, ae.pk)).content.decode()
    assert 'name="allow_any_caller"' in edit and "checked" in edit


def test_portal_restricting_an_open_ae_title_unticks_the_choice(
    portal: Client, org: Organization
) -> None:
    ae = create(org, "OPEN_AE", any_caller=True)
    response = portal.post(
        url("portal-ae-edit", org, ae.pk),
        {"allowed_calling_ae_titles": "CT1", "allowed_networks": ""},
    )
    assert response.status_code == 302
    ae.refresh_from_db()
    assert ae.allowed_calling_ae_titles == ["CT1"] and not ae.allow_any_caller
    assert audit_details("dicom_ae.updated")[-1]["allow_any_caller_was"] is True


def test_portal_refuses_a_title_differing_only_in_case(
    portal: Client, org: Organization, other_org: Organization
) -> None:
    create(other_org, "PACS", any_caller=True)
    response = portal.post(
        url("portal-ae-create", org), {"ae_title": "Pacs", "allow_any_caller": "on"}
    )
    assert response.status_code == 400
    assert "regardless of case" in " ".join(response.context["form"].errors["ae_title"])
    assert not DicomAE.objects.for_org(org).exists()


def test_portal_other_tenants_ae_title_answers_404(
    portal: Client, org: Organization, other_org: Organization
) -> None:
    theirs = create(other_org, "THEIRS", any_caller=True)
    assert portal.get(url("portal-ae-edit", org, theirs.pk)).status_code == 404
    response = portal.post(
        url("portal-ae-edit", org, theirs.pk), {"allowed_calling_ae_titles": "MINE"}
    )
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.allow_any_caller and theirs.allowed_calling_ae_titles == []


# --- the migration ------------------------------------------------------------------------------


def test_migration_keeps_existing_unrestricted_ae_titles_open(
    org: Organization, caplog: pytest.LogCaptureFixture
) -> None:
    DicomAE.objects.create(organization=org, ae_title="LEGACY")  # as before: both lists empty
    DicomAE.objects.create(organization=org, ae_title="LOCKED", allowed_networks=["10.0.0.0/8"])
    MIGRATION.open_unrestricted(django_apps, None)
    assert dict(DicomAE.objects.values_list("ae_title", "allow_any_caller")) == {
        "LEGACY": True,
        "LOCKED": False,
    }
    assert "LEGACY" in caplog.text and "LOCKED" not in caplog.text


def test_migration_stops_and_names_titles_that_differ_only_in_case() -> None:
    rows = [("PACS", 1), ("pacs", 2), ("CT", 1)]

    class Rows:
        def values_list(self, *names: str) -> list[tuple[str, int]]:
            return rows

    class Model:
        objects = Rows()

    class Apps:
        def get_model(self, app: str, name: str) -> type[Model]:
            return Model

    with pytest.raises(RuntimeError) as stopped:
        MIGRATION.refuse_case_duplicates(Apps(), None)
    assert "'PACS' (organization 1)" in str(stopped.value)
    assert "'pacs' (organization 2)" in str(stopped.value)
    assert "'CT'" not in str(stopped.value)
