"""The DICOM connections page and an association's page: what each role sees, the associations
and their operations, filters and paging, another organization's activity never shown (its
association 404), the navigation entry, and the AE title / destination URLs of the Ingest page's
days redirecting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from archive.ae_titles import services as ae_services
from archive.dimse import views as dimse_views
from archive.models import DicomAssociation, DicomDestination, DicomOperation, StorageCommitment
from tenants.context import Actor
from tenants.models import Membership, Organization
from tenants.roles import Role

pytestmark = pytest.mark.django_db


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def login(member: Membership) -> Client:
    client = Client()
    client.force_login(member.user)
    return client


def association(
    org: Organization,
    *,
    calling: str = "PACS-1",
    called: str = "ST-MARY",
    minutes_ago: int = 0,
    end: str = DicomAssociation.End.RELEASED,
    operations: list[dict[str, Any]] | None = None,
) -> DicomAssociation:
    started = timezone.now() - timedelta(minutes=minutes_ago)
    row = DicomAssociation.objects.create(
        organization=org,
        called_ae=called,
        calling_ae=calling,
        address="203.0.113.7",
        started_at=started,
        ended_at=started + timedelta(seconds=2) if end != "open" else None,
        end=end,
    )
    counts: dict[str, dict[str, int]] = {}
    for values in operations or []:
        values = {"started_at": started, "finished_at": started + timedelta(seconds=1), **values}
        DicomOperation.objects.create(organization=org, association=row, **values)
        per_kind = counts.setdefault(values["kind"], {})
        per_kind[values["outcome"]] = per_kind.get(values["outcome"], 0) + 1
    worst = [o["outcome"] for o in operations or []]
    row.counts = counts
    row.outcome = (
        "failure" if "failure" in worst else "warning" if "warning" in worst else "success"
    )
    row.save()
    return row


@pytest.fixture
def seeded(org: Organization, other_org: Organization) -> dict[str, Any]:
    actor = Actor.system("tests")
    ae_services.ae_create(
        org=org,
        ae_title="ST-MARY",
        allowed_calling_ae_titles=["PACS-1"],
        allowed_networks=[],
        actor=actor,
    )
    DicomDestination.objects.create(
        organization=org, ae_title="WS-7", host="198.51.100.7", port=104, description="Reading room"
    )
    commitment = StorageCommitment.objects.create(
        organization=org,
        transaction_uid="1.2.3.4",
        calling_ae="CT-1",
        called_ae="ST-MARY",
        items=[["1.2.840.10008.5.1.4.1.1.2", "1.2.3.5"]] * 3,
        state=StorageCommitment.State.REPORTED,
        result={"committed": 2, "failed": [["1.2", "1.3", 0x0112]]},
    )
    return {
        "query": association(
            org,
            calling="PACS-1",
            minutes_ago=30,
            operations=[
                {
                    "kind": "find",
                    "outcome": "success",
                    "status": 0,
                    "model": "Study Root",
                    "level": "STUDY",
                    "keys": ["PatientID", "StudyDate"],
                    "details": {"return_keys": 5},
                    "matches": 2,
                },
                {
                    "kind": "find",
                    "outcome": "failure",
                    "status": 0xA900,
                    "level": "WARD",
                    "comment": "Unknown QueryRetrieveLevel 'WARD'.",
                },
            ],
        ),
        "move": association(
            org,
            calling="WS-7",
            minutes_ago=20,
            operations=[
                {
                    "kind": "move",
                    "outcome": "warning",
                    "status": 0xB000,
                    "level": "STUDY",
                    "keys": ["StudyInstanceUID"],
                    "destination_ae": "WS-7",
                    "matches": 3,
                    "completed": 2,
                    "failed": 1,
                    "warning": 0,
                    "bytes": 3 * 1024 * 1024,
                    "comment": "1 in archive tier; restore 4 ready ~2026-12-07 12:00Z",
                }
            ],
        ),
        "store": association(
            org,
            calling="CT-1",
            minutes_ago=10,
            operations=[
                {
                    "kind": "store",
                    "outcome": "success",
                    "status": 0,
                    "completed": 120,
                    "failed": 0,
                    "bytes": 60 * 1024 * 1024,
                },
                {
                    "kind": "commit",
                    "outcome": "success",
                    "status": 0,
                    "matches": 3,
                    "commitment": commitment,
                },
                {"kind": "echo", "outcome": "success", "status": 0, "completed": 2, "failed": 0},
            ],
        ),
        "theirs": association(
            other_org,
            called="OTHER-CLINIC",
            calling="THEIR-PACS",
            operations=[{"kind": "find", "outcome": "success", "status": 0, "matches": 9}],
        ),
    }


def test_owner_sees_listener_ae_titles_destinations_and_associations(
    org: Organization, owner: Membership, seeded: dict[str, Any], settings: Any
) -> None:
    settings.DICOM_SCP_HOST = "dicom.strata.example.com"
    settings.DICOM_SCP_PORT = 4242
    response = login(owner).get(url("portal-dicom", org))
    assert response.status_code == 200
    page = response.content.decode()
    assert "dicom.strata.example.com" in page and "4242" in page
    assert 'id="ae-table"' in page and "ST-MARY" in page and "PACS-1" in page
    assert 'id="destination-table"' in page and "198.51.100.7:104" in page
    assert url("portal-destination-test", org, DicomDestination.objects.get().pk) in page
    assert url("portal-ae-create", org) in page and url("portal-destination-create", org) in page
    table = page[page.index('id="association-table"') :]
    # Newest first.
    positions = [
        table.index(f'id="association-{seeded[n].pk}"') for n in ("store", "move", "query")
    ]
    assert positions == sorted(positions)
    assert "Study Root · STUDY · keys PatientID, StudyDate → 2 matches" in table
    assert "Unknown QueryRetrieveLevel &#x27;WARD&#x27;." in table and "0xA900" in table
    assert "STUDY · keys StudyInstanceUID → WS-7 · 2 of 3 sent, 1 failed · 3 MiB" in table
    assert "120 stored · 60 MiB" in table
    assert "3 instances · reported: 2 committed, 1 failed" in table
    assert ">2 answered<" in table
    assert 'C-FIND 2 <span class="status-bad">(1 failure)</span>' in table
    assert url("portal-dicom-association", org, seeded["query"].pk) in table
    assert "THEIR-PACS" not in page and "OTHER-CLINIC" not in page


def test_a_member_sees_the_page_without_the_buttons(
    org: Organization, make_member: Callable[..., Membership], seeded: dict[str, Any]
) -> None:
    response = login(make_member(org, Role.MEMBER)).get(url("portal-dicom", org))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Reading room" in page and 'id="association-table"' in page
    assert "/dicom/destinations/" not in page and "/dicom/ae-titles/" not in page
    assert "Add destination" not in page and ">Test<" not in page
    nav = page[page.index('class="sidenav"') :]
    assert f'href="{url("portal-dicom", org)}"' in nav and "DICOM connections" in nav


@pytest.mark.parametrize("role", [Role.BILLING, Role.AUDITOR])
def test_roles_without_images_read_get_403_and_no_nav_entry(
    org: Organization,
    make_member: Callable[..., Membership],
    seeded: dict[str, Any],
    role: str,
) -> None:
    client = login(make_member(org, role))
    for page in (
        url("portal-dicom", org),
        url("portal-dicom-association", org, seeded["query"].pk),
    ):
        response = client.get(page)
        assert response.status_code == 403 and "images.read" in response.content.decode()
    dashboard = client.get(url("portal-dashboard", org)).content.decode()
    assert url("portal-dicom", org) not in dashboard


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?ae_title=ws-7", ["move"]),
        ("?kind=commit", ["store"]),
        ("?outcome=failure", ["query"]),
        ("?kind=move&outcome=warning", ["move"]),
        ("?ae_title=THEIR-PACS", []),
    ],
)
def test_filters(
    org: Organization,
    owner: Membership,
    seeded: dict[str, Any],
    query: str,
    expected: list[str],
) -> None:
    response = login(owner).get(url("portal-dicom", org) + query)
    assert response.status_code == 200
    shown = [a.pk for a in (row["association"] for row in response.context["rows"])]
    assert shown == [seeded[name].pk for name in expected]
    if not expected:
        assert "No association matches this filter." in response.content.decode()


@pytest.mark.parametrize(
    "query", ["?kind=ping", "?outcome=great", "?before=x", "?ae_title=" + "A" * 17]
)
def test_a_bad_filter_is_400_with_the_fields_error(
    org: Organization, owner: Membership, seeded: dict[str, Any], query: str
) -> None:
    response = login(owner).get(url("portal-dicom", org) + query)
    assert response.status_code == 400
    assert response.context["form"].errors
    assert response.context["rows"] == []
    assert 'id="ae-table"' in response.content.decode()  # the rest of the page still shows


def test_older_associations_are_a_page_away(
    org: Organization, owner: Membership, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dimse_views, "ASSOCIATIONS_SHOWN", 2)
    rows = [association(org, calling=f"PACS-{n}", minutes_ago=10 - n) for n in range(3)]
    client = login(owner)
    first = client.get(url("portal-dicom", org))
    assert [r["association"].pk for r in first.context["rows"]] == [rows[2].pk, rows[1].pk]
    assert first.context["older"] == rows[1].pk
    assert f"?before={rows[1].pk}" in first.content.decode()
    second = client.get(url("portal-dicom", org) + f"?before={rows[1].pk}")
    assert [r["association"].pk for r in second.context["rows"]] == [rows[0].pk]
    assert second.context["older"] is None


def test_an_association_with_many_operations_links_to_its_page(
    org: Organization, owner: Membership
) -> None:
    many = association(
        org,
        operations=[
            {"kind": "find", "outcome": "success", "status": 0, "matches": n} for n in range(7)
        ],
    )
    page = login(owner).get(url("portal-dicom", org)).content.decode()
    assert ">6 matches<" in page and ">1 match<" not in page  # the newest five
    assert "All operations" in page
    detail = login(owner).get(url("portal-dicom-association", org, many.pk))
    assert detail.status_code == 200
    assert len(detail.context["operations"]) == 7


def test_association_page_lists_its_operations_with_filters(
    org: Organization, owner: Membership, seeded: dict[str, Any]
) -> None:
    client = login(owner)
    response = client.get(url("portal-dicom-association", org, seeded["query"].pk))
    assert response.status_code == 200
    page = response.content.decode()
    assert "PACS-1" in page and "203.0.113.7" in page and "Released" in page
    assert "0xA900" in page and "0x0000" in page
    failed = client.get(
        url("portal-dicom-association", org, seeded["query"].pk) + "?outcome=failure"
    )
    assert [o.operation.status for o in failed.context["operations"]] == [0xA900]
    bad = client.get(url("portal-dicom-association", org, seeded["query"].pk) + "?kind=ping")
    assert bad.status_code == 400


def test_another_organizations_association_is_404(
    org: Organization, owner: Membership, seeded: dict[str, Any]
) -> None:
    response = login(owner).get(url("portal-dicom-association", org, seeded["theirs"].pk))
    assert response.status_code == 404
    assert "THEIR-PACS" not in response.content.decode()


def test_a_non_member_gets_404(
    org: Organization, other_org: Organization, make_member: Callable[..., Membership]
) -> None:
    client = login(make_member(other_org, Role.OWNER))
    assert client.get(url("portal-dicom", org)).status_code == 404


def test_empty_page_says_what_will_show(org: Organization, owner: Membership) -> None:
    page = login(owner).get(url("portal-dicom", org)).content.decode()
    assert "No association yet." in page and "No AE titles yet." in page


def test_an_open_association_and_one_without_operations(
    org: Organization, owner: Membership
) -> None:
    association(org, end="open")
    page = login(owner).get(url("portal-dicom", org)).content.decode()
    assert 'badge badge-active">Open' in page and "No operation" in page


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ingest/ae-titles/new/", "dicom/ae-titles/new/"),
        ("ingest/ae-titles/5/edit/", "dicom/ae-titles/5/edit/"),
        ("ingest/destinations/7/test/", "dicom/destinations/7/test/"),
    ],
)
def test_the_ingest_pages_old_urls_redirect_keeping_the_method(
    org: Organization, owner: Membership, old: str, new: str
) -> None:
    client = login(owner)
    base = f"/o/{org.slug}/archive/"
    for method in (client.get, client.post):
        response = method(base + old)
        assert response.status_code == 308
        assert response["Location"] == base + new


def test_adding_an_ae_title_returns_to_dicom_connections(
    org: Organization, owner: Membership
) -> None:
    response = login(owner).post(
        url("portal-ae-create", org), {"ae_title": "NEW_AE", "allow_any_caller": "on"}
    )
    assert response.status_code == 302
    assert response["Location"] == url("portal-dicom", org) + "#ae-titles"
    form = login(owner).get(url("portal-ae-create", org)).content.decode()
    assert url("portal-dicom", org) in form and "DICOM connections" in form


def test_the_ingest_page_keeps_uploads_imports_and_jobs(
    org: Organization, owner: Membership
) -> None:
    page = login(owner).get(url("portal-ingest", org)).content.decode()
    assert 'id="upload"' in page and "Recent ingest jobs" in page
    assert url("portal-ingest-import", org) in page
    assert 'id="ae-table"' not in page and 'id="destination-table"' not in page
    assert url("portal-dicom", org) in page


def test_staff_admin_shows_associations_read_only(
    org: Organization, seeded: dict[str, Any]
) -> None:
    from tests.factories import UserFactory

    staff: Any = UserFactory(
        email="ops@strata.example", username="ops@strata.example", is_staff=True, is_superuser=True
    )
    client = Client()
    client.force_login(staff)
    listing = client.get("/admin/archive/dicomassociation/")
    assert listing.status_code == 200 and "PACS-1" in listing.content.decode()
    change = client.get(f"/admin/archive/dicomassociation/{seeded['query'].pk}/change/")
    assert change.status_code == 200 and "0xA900" in change.content.decode()
    assert client.get("/admin/archive/dicomassociation/add/").status_code == 403
    assert (
        client.post(
            f"/admin/archive/dicomassociation/{seeded['query'].pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert DicomAssociation.objects.filter(pk=seeded["query"].pk).exists()
