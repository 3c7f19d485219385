"""Who may open which archive portal page: the role matrix, tenant isolation, anonymous users."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from pydicom.uid import generate_uid

from archive.ae_titles import services as ae
from archive.ingest import jobs, pipeline
from archive.locations import services as location_services
from archive.models import DicomAE, IngestJob, StorageLocation, Study
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Perm, Role

pytestmark = pytest.mark.django_db

ROLES = [Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR, Role.MEMBER]

# Written out rather than derived from tenants.roles, so a change to the matrix shows up here.
ALLOWED_ROLES: dict[str, set[str]] = {
    Perm.IMAGES_READ: {Role.OWNER, Role.ADMIN, Role.MEMBER},
    Perm.IMAGES_WRITE: {Role.OWNER, Role.ADMIN, Role.MEMBER},
    Perm.STORAGE_MANAGE: {Role.OWNER, Role.ADMIN},
}


@dataclass
class Page:
    name: str
    perm: str
    ids: dict[str, str] = field(default_factory=dict)  # URL kwarg -> key in the seeded objects
    data: dict[str, Any] = field(default_factory=dict)

    def url(self, org: Organization, objects: dict[str, int]) -> str:
        kwargs: dict[str, Any] = {"org_slug": org.slug}
        kwargs.update({kwarg: objects[key] for kwarg, key in self.ids.items()})
        return reverse(self.name, kwargs=kwargs)

    def __str__(self) -> str:
        return self.name


GET_PAGES = [
    Page("portal-studies", Perm.IMAGES_READ),
    Page("portal-study", Perm.IMAGES_READ, {"study_id": "study"}),
    Page("portal-study-download", Perm.IMAGES_READ, {"study_id": "study"}),
    Page("portal-ingest", Perm.IMAGES_WRITE),
    Page("portal-ingest-import", Perm.IMAGES_WRITE),
    Page("portal-ingest-job", Perm.IMAGES_WRITE, {"job_id": "job"}),
    Page("portal-ingest-job-progress", Perm.IMAGES_WRITE, {"job_id": "job"}),
    Page("portal-ae-create", Perm.STORAGE_MANAGE),
    Page("portal-ae-edit", Perm.STORAGE_MANAGE, {"ae_id": "ae"}),
    Page("portal-ae-delete", Perm.STORAGE_MANAGE, {"ae_id": "ae"}),
    Page("portal-storage", Perm.STORAGE_MANAGE),
    Page("portal-location-create", Perm.STORAGE_MANAGE),
    Page("portal-location-edit", Perm.STORAGE_MANAGE, {"location_id": "location"}),
    Page("portal-location-delete", Perm.STORAGE_MANAGE, {"location_id": "location"}),
]

POST_ACTIONS = [
    Page("portal-study-download", Perm.IMAGES_READ, {"study_id": "study"}),
    Page("portal-ingest-upload", Perm.IMAGES_WRITE),
    Page("portal-ingest-upload-chunk", Perm.IMAGES_WRITE, {"job_id": "job"}),
    Page("portal-ingest-upload-finish", Perm.IMAGES_WRITE, {"job_id": "job"}),
    Page(
        "portal-ingest-import",
        Perm.IMAGES_WRITE,
        data={"bucket": "hospital-export", "access_key_id": "AKIA1", "secret_access_key": "s"},
    ),
    Page(
        "portal-ae-create",
        Perm.STORAGE_MANAGE,
        data={"ae_title": "NEW_AE", "allow_any_caller": "on"},
    ),
    Page("portal-ae-edit", Perm.STORAGE_MANAGE, {"ae_id": "ae"}, {"allowed_networks": ""}),
    Page("portal-ae-delete", Perm.STORAGE_MANAGE, {"ae_id": "ae"}),
    Page("portal-storage-quota", Perm.STORAGE_MANAGE, data={"quota_gib": "100"}),
    Page(
        "portal-location-create",
        Perm.STORAGE_MANAGE,
        data={
            "name": "Second bucket",
            "role": "replica",
            "bucket": "stmary-second",
            "access_key_id": "AKIA2",
            "secret_access_key": "secret",
            "encryption": "sse-s3",
            "storage_class_hot": "STANDARD",
            "storage_class_warm": "STANDARD_IA",
            "storage_class_cold": "GLACIER_IR",
            "storage_class_archive": "DEEP_ARCHIVE",
        },
    ),
    Page("portal-location-test-clear", Perm.STORAGE_MANAGE, {"location_id": "location"}),
    Page("portal-replica-drill", Perm.STORAGE_MANAGE, data={"sample": "5"}),
    Page("portal-location-delete", Perm.STORAGE_MANAGE, {"location_id": "location"}),
]

PAGES_WITH_IDS = [p for p in GET_PAGES + POST_ACTIONS if p.ids]


def seed(org: Organization) -> dict[str, int]:
    """One object of every kind the archive pages address by id, made through the services."""
    actor = Actor.system("tests")
    data = to_bytes(make_instance(study_spec("CT"), series_uid=generate_uid(), rows=16, columns=16))
    location = pipeline.location_primary(org)
    result = pipeline.instance_ingest(
        org=org, spooled=pipeline.spool_file(store_for(location), io.BytesIO(data))
    )
    assert result.status == "stored"
    job = jobs.upload_job_create(org=org, actor=actor)
    title = ae.ae_create(
        org=org,
        ae_title=f"AE_{org.slug[:10].upper()}",
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=actor,
    )
    bucket = location_services.location_create(
        org=org,
        data=location_services.LocationInput(
            name="Replica",
            bucket=f"{org.slug}-replica",
            access_key_id="AKIA0",
            secret_access_key="secret",
        ),
        actor=actor,
    )
    return {
        "study": Study.objects.for_org(org).get().pk,
        "job": job.pk,
        "ae": title.pk,
        "location": bucket.pk,
    }


@pytest.fixture
def objects(org: Organization, owner: Membership) -> dict[str, int]:
    return seed(org)


@pytest.fixture
def other_objects(other_org: Organization) -> dict[str, int]:
    return seed(other_org)


def client_for(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_role_matrix_for_pages(
    page: Page,
    role: str,
    org: Organization,
    objects: dict[str, int],
    make_member: Callable[..., Membership],
) -> None:
    response = client_for(make_member(org, role)).get(page.url(org, objects))
    if role in ALLOWED_ROLES[page.perm]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert page.perm in response.content.decode()


def _state(org: Organization) -> tuple[int, ...]:
    return (
        AuditEvent.objects.for_org(org).count(),
        IngestJob.objects.for_org(org).count(),
        DicomAE.objects.for_org(org).count(),
        StorageLocation.objects.for_org(org).count(),
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", POST_ACTIONS, ids=str)
def test_role_matrix_for_actions(
    action: Page,
    role: str,
    org: Organization,
    objects: dict[str, int],
    make_member: Callable[..., Membership],
) -> None:
    client = client_for(make_member(org, role))
    before = _state(org)
    response = client.post(action.url(org, objects), action.data)
    if role in ALLOWED_ROLES[action.perm]:
        # 409: the service refused (e.g. a second replica location), after the permission check.
        assert response.status_code in (200, 201, 302, 400, 409), response.content.decode()[:1000]
    else:
        assert response.status_code == 403
        assert action.perm in response.content.decode()
        assert _state(org) == before


@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_non_member_gets_404_on_every_page(
    page: Page,
    org: Organization,
    objects: dict[str, int],
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    response = client_for(make_member(other_org, Role.OWNER)).get(page.url(org, objects))
    assert response.status_code == 404
    assert "St. Mary" not in response.content.decode()


@pytest.mark.parametrize("action", POST_ACTIONS, ids=str)
def test_non_member_gets_404_on_every_action(
    action: Page,
    org: Organization,
    objects: dict[str, int],
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    client = client_for(make_member(other_org, Role.OWNER))
    before = _state(org)
    response = client.post(action.url(org, objects), action.data)
    assert response.status_code == 404
    assert _state(org) == before


@pytest.mark.parametrize("page", PAGES_WITH_IDS, ids=lambda p: f"{p.name}-{p.ids}")
def test_other_tenants_object_id_gets_404(
    page: Page,
    org: Organization,
    owner: Membership,
    objects: dict[str, int],
    other_org: Organization,
    other_objects: dict[str, int],
) -> None:
    client = client_for(owner)
    url = page.url(org, other_objects)
    before = (_state(org), _state(other_org))
    response = client.post(url, page.data) if page in POST_ACTIONS else client.get(url)
    assert response.status_code == 404
    assert (_state(org), _state(other_org)) == before
    assert "Other Clinic" not in response.content.decode()


@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_anonymous_is_sent_to_login(page: Page, org: Organization, objects: dict[str, int]) -> None:
    response = Client().get(page.url(org, objects))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_billing_and_auditor_are_told_they_lack_images_read(
    org: Organization, objects: dict[str, int], make_member: Callable[..., Membership]
) -> None:
    for role in (Role.BILLING, Role.AUDITOR):
        response = client_for(make_member(org, role)).get(
            reverse("portal-studies", args=[org.slug])
        )
        assert response.status_code == 403
        content = response.content.decode()
        assert "images.read" in content and "read images" in content
