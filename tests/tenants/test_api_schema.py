"""The OpenAPI schema and its documentation page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.tenants.test_api_support import ENDPOINTS

pytestmark = pytest.mark.django_db

# URL placeholders of the test catalog -> path parameters of the schema.
PARAMETERS = {
    "member": "{member_id}",
    "invitation": "{invitation_id}",
    "token": "{token_id}",
    "webhook": "{webhook_id}",
    "event": "{event_id}",
    "cors_origin": "{origin_id}",
}


def _schema() -> dict[str, Any]:
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return dict(response.json())


def test_schema_documents_every_endpoint_once_and_says_the_slug_path_exists() -> None:
    schema = _schema()
    paths = schema["paths"]

    for endpoint in ENDPOINTS:
        relative = endpoint.path.format(**PARAMETERS)
        assert endpoint.method.lower() in paths.get("/api/v1/" + relative, {}), endpoint
    assert [p for p in paths if p.startswith("/api/v1/o/")] == []
    assert "/api/v1/o/{org_slug}/" in schema["info"]["description"]
    for path in (
        "/api/v1/platform/organizations/",
        "/api/v1/platform/organizations/{organization_id}/",
    ):
        assert path in paths


def test_schema_operation_ids_are_unique_and_plain() -> None:
    operations = [
        op for item in _schema()["paths"].values() for op in item.values() if isinstance(op, dict)
    ]
    ids = [op["operationId"] for op in operations]

    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids)


def test_schema_never_offers_a_secret_outside_create_and_webhook_detail() -> None:
    schemas = _schema()["components"]["schemas"]

    with_secret = sorted(name for name, s in schemas.items() if "secret" in s.get("properties", {}))

    assert with_secret == ["TokenCreated", "WebhookWithSecret"]
    assert "secret" not in schemas["Invitation"]["properties"]


def test_schema_lists_are_cursor_paginated() -> None:
    schemas = _schema()["components"]["schemas"]

    assert set(schemas["PaginatedMemberList"]["properties"]) == {"next", "previous", "results"}


def test_docs_page_is_served_without_any_external_url() -> None:
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "/api/schema/" in html
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\"' ]+", html)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert assets
    for asset in assets:
        assert APIClient().get(asset).status_code == 200, asset


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/", "/api/redoc/"])
@pytest.mark.parametrize("method", ["options", "post", "delete"])
def test_the_schema_and_its_readers_answer_get_only(client, path, method):
    """OPTIONS rendered DRF's metadata with the readers' HTML renderers: a 500."""
    assert getattr(client, method)(path).status_code == 405
    assert client.get(path).status_code == 200
