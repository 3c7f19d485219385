"""Who may call which archive endpoint: every role (session), every token scope, other tenants'
ids (404), and every endpoint in the OpenAPI schema under both prefixes."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.uid import generate_uid
from rest_framework.test import APIClient

from archive.ae_titles import services as ae
from archive.ingest import jobs, pipeline
from archive.locations import services as location_services
from archive.models import DicomAE, IngestJob, Instance, StorageLocation, Study
from archive.storage import store_for
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.context import Actor
from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Perm, Role, Scope

pytestmark = pytest.mark.django_db

ALL_ROLES = [r.value for r in Role]
ALL_SCOPES = [s.value for s in Scope]

# The expected matrix, written out so that a change to tenants.roles shows up here.
ROLES_WITH: dict[str, set[str]] = {
    Perm.IMAGES_READ: {"owner", "admin", "member"},
    Perm.IMAGES_WRITE: {"owner", "admin", "member"},
    Perm.STORAGE_MANAGE: {"owner", "admin"},
}
SCOPES_WITH: dict[str, set[str]] = {
    Perm.IMAGES_READ: {"dicom:read"},
    Perm.IMAGES_WRITE: {"dicom:write"},
    Perm.STORAGE_MANAGE: {"admin"},
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # objects as {study}, {series}, ...
    permission: str
    body: dict[str, Any] | None = None
    ok: int = 200

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ENDPOINTS = [
    Endpoint("GET", "studies/", Perm.IMAGES_READ),
    Endpoint("GET", "studies/{study}/", Perm.IMAGES_READ),
    Endpoint("GET", "studies/{study}/series/", Perm.IMAGES_READ),
    Endpoint("GET", "series/{series}/", Perm.IMAGES_READ),
    Endpoint("GET", "series/{series}/instances/", Perm.IMAGES_READ),
    Endpoint("GET", "instances/{instance}/", Perm.IMAGES_READ),
    Endpoint("GET", "ingest-jobs/", Perm.IMAGES_WRITE),
    Endpoint(
        "POST",
        "ingest-jobs/",
        Perm.IMAGES_WRITE,
        {"bucket": "hospital-export", "access_key_id": "AKIA1", "secret_access_key": "s"},
        201,
    ),
    Endpoint("GET", "ingest-jobs/{job}/", Perm.IMAGES_WRITE),
    Endpoint("GET", "ingest-jobs/{job}/failures/", Perm.IMAGES_WRITE),
    Endpoint("GET", "storage-locations/", Perm.STORAGE_MANAGE),
    Endpoint(
        "POST",
        "storage-locations/",
        Perm.STORAGE_MANAGE,
        {
            "name": "Second",
            "bucket": "stmary-second",
            "access_key_id": "AKIA2",
            "secret_access_key": "secret",
        },
        # An allowed caller reaches the service, which refuses a second replica (the objects
        # below include the organization's one replica).
        409,
    ),
    Endpoint("GET", "storage-locations/{location}/", Perm.STORAGE_MANAGE),
    Endpoint("PATCH", "storage-locations/{location}/", Perm.STORAGE_MANAGE, {"name": "Renamed"}),
    Endpoint("DELETE", "storage-locations/{location}/", Perm.STORAGE_MANAGE, ok=204),
    Endpoint("POST", "storage-locations/{location}/test/", Perm.STORAGE_MANAGE, {}),
    Endpoint("GET", "archive-settings/", Perm.STORAGE_MANAGE),
    Endpoint("PATCH", "archive-settings/", Perm.STORAGE_MANAGE, {"storage_quota_bytes": 10**12}),
    Endpoint("GET", "dicom-aes/", Perm.STORAGE_MANAGE),
    Endpoint(
        "POST",
        "dicom-aes/",
        Perm.STORAGE_MANAGE,
        {"ae_title": "NEW_AE", "allow_any_caller": True},
        201,
    ),
    Endpoint("GET", "dicom-aes/{ae}/", Perm.STORAGE_MANAGE),
    Endpoint("PATCH", "dicom-aes/{ae}/", Perm.STORAGE_MANAGE, {"allowed_networks": []}),
    Endpoint("DELETE", "dicom-aes/{ae}/", Perm.STORAGE_MANAGE, ok=204),
]
OBJECT_ENDPOINTS = [e for e in ENDPOINTS if "{" in e.path]


def create_objects(org: Organization) -> dict[str, int]:
    actor = Actor.system("tests")
    data = to_bytes(make_instance(study_spec("CT"), series_uid=generate_uid(), rows=16, columns=16))
    location = pipeline.location_primary(org)
    result = pipeline.instance_ingest(
        org=org, spooled=pipeline.spool_file(store_for(location), io.BytesIO(data))
    )
    assert result.instance_id is not None
    instance = Instance.objects.get(pk=result.instance_id)
    bucket = location_services.location_create(
        org=org,
        data=location_services.LocationInput(
            name="Replica",
            bucket=f"{org.slug}-replica",
            access_key_id="AKIA0",
            secret_access_key="secret",
            # Nothing listens here: the test endpoint must answer, not hang.
            endpoint_url="http://127.0.0.1:9",
        ),
        actor=actor,
    )
    title = ae.ae_create(
        org=org,
        ae_title=f"AE_{org.slug[:10].upper()}",
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=actor,
    )
    return {
        "study": instance.study_id,
        "series": instance.series_id,
        "instance": instance.pk,
        "job": jobs.upload_job_create(org=org, actor=actor).pk,
        "location": bucket.pk,
        "ae": title.pk,
    }


@pytest.fixture(autouse=True)
def _private_endpoints(settings: Any) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True


def call(client: APIClient, endpoint: Endpoint, url: str) -> Any:
    method = getattr(client, endpoint.method.lower())
    return method(url) if endpoint.body is None else method(url, endpoint.body, format="json")


def error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}, body
    return dict(body["error"])


def _counts(org: Organization) -> tuple[int, ...]:
    return (
        AuditEvent.objects.for_org(org).count(),
        IngestJob.objects.for_org(org).count(),
        StorageLocation.objects.for_org(org).count(),
        DicomAE.objects.for_org(org).count(),
        Study.objects.for_org(org).count(),
    )


@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_role_matrix(
    endpoint: Endpoint, role: str, org: Organization, make_member: Callable[..., Membership]
) -> None:
    objects = create_objects(org)
    client = APIClient()
    client.force_login(make_member(org, role).user)
    before = _counts(org)
    response = call(client, endpoint, f"/api/v1/o/{org.slug}/" + endpoint.path.format(**objects))
    if role in ROLES_WITH[endpoint.permission]:
        assert response.status_code == endpoint.ok, response.content
    else:
        assert response.status_code == 403
        body = error(response)
        assert body["fields"]["permission"] == [endpoint.permission]
        assert endpoint.permission in body["message"]
        assert _counts(org) == before


@pytest.mark.parametrize("scope", ALL_SCOPES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_token_scope_matrix(
    endpoint: Endpoint,
    scope: str,
    org: Organization,
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    objects = create_objects(org)
    _, secret = make_token(org, [scope])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    before = _counts(org)
    response = call(client, endpoint, "/api/v1/" + endpoint.path.format(**objects))
    if scope in SCOPES_WITH[endpoint.permission]:
        assert response.status_code == endpoint.ok, response.content
    else:
        assert response.status_code == 403
        body = error(response)
        assert body["fields"]["permission"] == [endpoint.permission]
        assert "scope" in body["message"]
        assert _counts(org) == before


@pytest.mark.parametrize("endpoint", OBJECT_ENDPOINTS, ids=str)
def test_other_tenants_ids_get_404_by_token_and_session(
    endpoint: Endpoint,
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    create_objects(org)
    theirs = create_objects(other_org)
    before = _counts(other_org)
    _, secret = make_token(org, ALL_SCOPES)
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    session_client = APIClient()
    session_client.force_login(owner.user)
    for client, prefix in ((token_client, "/api/v1/"), (session_client, f"/api/v1/o/{org.slug}/")):
        response = call(client, endpoint, prefix + endpoint.path.format(**theirs))
        assert response.status_code == 404, response.content
        assert error(response)["code"] == "not_found"
        assert "Other Clinic" not in response.content.decode()
    assert _counts(other_org) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_a_session_for_another_organization_gets_404(
    endpoint: Endpoint,
    org: Organization,
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    objects = create_objects(org)
    client = APIClient()
    client.force_login(make_member(other_org, Role.OWNER).user)
    response = call(client, endpoint, f"/api/v1/o/{org.slug}/" + endpoint.path.format(**objects))
    assert response.status_code == 404


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_anonymous_gets_401(endpoint: Endpoint, org: Organization) -> None:
    response = call(
        APIClient(),
        endpoint,
        "/api/v1/" + endpoint.path.format(study=1, series=1, instance=1, job=1, location=1, ae=1),
    )
    assert response.status_code == 401


PARAMETERS = {
    "study": "{study_id}",
    "series": "{series_id}",
    "instance": "{instance_id}",
    "job": "{job_id}",
    "location": "{location_id}",
    "ae": "{ae_id}",
}


def test_schema_documents_every_endpoint_once() -> None:
    schema = APIClient().get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for endpoint in ENDPOINTS:
        relative = endpoint.path.format(**PARAMETERS)
        # Documented as a token calls it; the /o/{org_slug}/ copy is named in the description.
        assert endpoint.method.lower() in paths.get("/api/v1/" + relative, {}), endpoint
        assert "/api/v1/o/{org_slug}/" + relative not in paths
    archive_components = [n for n in schema["components"]["schemas"] if n.startswith("Archive")]
    assert "ArchiveStudy" in archive_components and "ArchiveStorageLocation" in archive_components
    location = schema["components"]["schemas"]["ArchiveStorageLocation"]["properties"]
    assert "secret_access_key" not in location and "secret_access_key_set" in location
    ids = [
        op["operationId"]
        for item in paths.values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids)
