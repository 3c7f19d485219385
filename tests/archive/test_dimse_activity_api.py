"""``GET /api/v1/dicom-associations/`` and its detail and operations: the fields, the filters, the
read permission (``dicom:read``), another organization's associations never listed and their ids
404, and the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from archive.models import DicomAssociation, DicomOperation, StorageCommitment
from tenants.models import ApiToken, Membership, Organization
from tenants.roles import Perm
from tests.archive.test_api_access import (
    ALL_ROLES,
    ALL_SCOPES,
    ROLES_WITH,
    SCOPES_WITH,
    error,
)

pytestmark = pytest.mark.django_db

PATHS = [
    "dicom-associations/",
    "dicom-associations/{association}/",
    "dicom-associations/{association}/operations/",
]


def association(
    org: Organization,
    *,
    called: str = "ST-MARY",
    calling: str = "PACS-1",
    minutes_ago: int = 0,
    operations: list[dict[str, Any]] | None = None,
) -> DicomAssociation:
    started = timezone.now() - timedelta(minutes=minutes_ago)
    row = DicomAssociation.objects.create(
        organization=org,
        called_ae=called,
        calling_ae=calling,
        address="203.0.113.7",
        started_at=started,
        ended_at=started + timedelta(seconds=3),
        end=DicomAssociation.End.RELEASED,
    )
    for values in operations or []:
        DicomOperation.objects.create(
            organization=org, association=row, started_at=started, **values
        )
    return row


@pytest.fixture
def seeded(org: Organization, other_org: Organization) -> dict[str, DicomAssociation]:
    commitment = StorageCommitment.objects.create(
        organization=org,
        transaction_uid="1.2.3.4",
        calling_ae="CT-1",
        called_ae="ST-MARY",
        items=[["1.2.840.10008.5.1.4.1.1.2", "1.2.3.5"]],
        state=StorageCommitment.State.REPORTED,
        result={"committed": 1, "failed": []},
    )
    return {
        "find": association(
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
                    "keys": ["PatientID"],
                    "details": {"return_keys": 4},
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
                    "destination_ae": "WS-7",
                    "matches": 3,
                    "completed": 2,
                    "failed": 1,
                    "warning": 0,
                    "bytes": 1024,
                }
            ],
        ),
        "commit": association(
            org,
            calling="CT-1",
            minutes_ago=10,
            operations=[
                {"kind": "commit", "outcome": "success", "status": 0, "commitment": commitment}
            ],
        ),
        "theirs": association(
            other_org,
            called="OTHER-CLINIC",
            calling="PACS-1",
            operations=[{"kind": "find", "outcome": "success", "status": 0}],
        ),
    }


@pytest.fixture
def api(owner: Membership) -> APIClient:
    client = APIClient()
    client.force_login(owner.user)
    return client


def listed(api: APIClient, org: Organization, query: str = "") -> list[int]:
    response = api.get(f"/api/v1/o/{org.slug}/dicom-associations/{query}")
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_list_is_newest_first_and_only_the_organizations(
    api: APIClient, org: Organization, seeded: dict[str, DicomAssociation]
) -> None:
    assert listed(api, org) == [seeded["commit"].pk, seeded["move"].pk, seeded["find"].pk]
    body = api.get(f"/api/v1/o/{org.slug}/dicom-associations/").json()
    first = body["results"][0]
    assert set(first) == {
        "id",
        "called_ae",
        "calling_ae",
        "address",
        "direction",
        "started_at",
        "ended_at",
        "end",
        "outcome",
        "counts",
    }
    assert (first["direction"], first["end"]) == ("inbound", "released")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?ae_title=ws-7", ["move"]),  # calling AE title, regardless of case
        ("?ae_title=ST-MARY", ["commit", "move", "find"]),  # called AE title
        ("?kind=find", ["find"]),
        ("?outcome=failure", ["find"]),
        ("?kind=find&outcome=success", ["find"]),
        ("?kind=move&outcome=success", []),
        ("?kind=commit", ["commit"]),
        ("?ae_title=OTHER-CLINIC", []),  # another organization's title finds nothing
    ],
)
def test_filters(
    api: APIClient,
    org: Organization,
    seeded: dict[str, DicomAssociation],
    query: str,
    expected: list[str],
) -> None:
    assert listed(api, org, query) == [seeded[name].pk for name in expected]


@pytest.mark.parametrize(
    "query", ["?kind=ping", "?outcome=great", "?ae_title=" + "A" * 17, "?kind=find&outcome=1"]
)
def test_bad_filters_answer_400_naming_the_field(
    api: APIClient, org: Organization, seeded: dict[str, DicomAssociation], query: str
) -> None:
    response = api.get(f"/api/v1/o/{org.slug}/dicom-associations/{query}")
    assert response.status_code == 400
    assert error(response)["fields"]


def test_detail_and_operations(
    api: APIClient, org: Organization, seeded: dict[str, DicomAssociation]
) -> None:
    base = f"/api/v1/o/{org.slug}/dicom-associations/{seeded['find'].pk}/"
    detail = api.get(base).json()
    assert detail["id"] == seeded["find"].pk and detail["calling_ae"] == "PACS-1"
    operations = api.get(base + "operations/").json()["results"]
    assert [o["status_hex"] for o in operations] == ["0xA900", "0x0000"]
    failed, ok = operations
    assert (ok["kind"], ok["outcome"], ok["level"], ok["keys"]) == (
        "find",
        "success",
        "STUDY",
        ["PatientID"],
    )
    assert ok["details"] == {"return_keys": 4} and ok["matches"] == 2
    assert failed["comment"] == "Unknown QueryRetrieveLevel 'WARD'."
    only = api.get(base + "operations/?outcome=failure").json()["results"]
    assert [o["id"] for o in only] == [failed["id"]]
    commit = api.get(
        f"/api/v1/o/{org.slug}/dicom-associations/{seeded['commit'].pk}/operations/"
    ).json()["results"][0]
    assert commit["commitment"]["state"] == "reported"
    assert (commit["commitment"]["committed"], commit["commitment"]["failed"]) == (1, 0)
    move = api.get(
        f"/api/v1/o/{org.slug}/dicom-associations/{seeded['move'].pk}/operations/"
    ).json()["results"][0]
    assert (move["destination_ae"], move["completed"], move["failed"], move["bytes"]) == (
        "WS-7",
        2,
        1,
        1024,
    )


def test_pages_are_cursor_paginated(
    api: APIClient, org: Organization, seeded: dict[str, DicomAssociation]
) -> None:
    first = api.get(f"/api/v1/o/{org.slug}/dicom-associations/?page_size=2").json()
    assert len(first["results"]) == 2 and first["next"]
    second = api.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == [seeded["find"].pk]


def test_other_organizations_association_is_404_by_token_and_session(
    api: APIClient,
    org: Organization,
    seeded: dict[str, DicomAssociation],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    theirs = seeded["theirs"].pk
    _, secret = make_token(org, ALL_SCOPES)
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    for client, prefix in ((token, "/api/v1/"), (api, f"/api/v1/o/{org.slug}/")):
        for path in PATHS[1:]:
            response = client.get(prefix + path.format(association=theirs))
            assert response.status_code == 404, response.content
            assert error(response)["code"] == "not_found"
            assert "OTHER-CLINIC" not in response.content.decode()
        listing = client.get(prefix + "dicom-associations/").json()["results"]
        assert theirs not in [row["id"] for row in listing]


@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize("path", PATHS)
def test_role_matrix(
    path: str,
    role: str,
    org: Organization,
    seeded: dict[str, DicomAssociation],
    make_member: Callable[..., Membership],
) -> None:
    client = APIClient()
    client.force_login(make_member(org, role).user)
    url = f"/api/v1/o/{org.slug}/" + path.format(association=seeded["find"].pk)
    response = client.get(url)
    if role in ROLES_WITH[Perm.IMAGES_READ]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert error(response)["fields"]["permission"] == [Perm.IMAGES_READ]


@pytest.mark.parametrize("scope", ALL_SCOPES)
@pytest.mark.parametrize("path", PATHS)
def test_token_scope_matrix(
    path: str,
    scope: str,
    org: Organization,
    seeded: dict[str, DicomAssociation],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    _, secret = make_token(org, [scope])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = client.get("/api/v1/" + path.format(association=seeded["find"].pk))
    if scope in SCOPES_WITH[Perm.IMAGES_READ]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403


def test_anonymous_gets_401() -> None:
    assert APIClient().get("/api/v1/dicom-associations/").status_code == 401


def test_schema_documents_the_endpoints_and_their_filters() -> None:
    schema = APIClient().get("/api/schema/?format=json").json()
    for path in PATHS:
        # Documented once, as a token calls it (saas.schema): not again under /o/{org_slug}/.
        item = schema["paths"]["/api/v1/" + path.format(association="{association_id}")]
        assert "get" in item and item["get"]["tags"] == ["dicom-associations"]
        assert "/api/v1/o/{org_slug}/" + path not in schema["paths"]
    listing = schema["paths"]["/api/v1/dicom-associations/"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"ae_title", "kind", "outcome", "cursor"}
    components = schema["components"]["schemas"]
    assert "ArchiveDicomAssociation" in components and "ArchiveDicomOperation" in components
    assert set(components["ArchiveDicomOperationKindEnum"]["enum"]) == {
        "echo",
        "store",
        "find",
        "move",
        "get",
        "commit",
    }
