"""What the OpenAPI schema promises about errors and pages matches what the API answers: the
statuses any operation can give (400 for an unusable query string, 414 from the web server, 413
and 415 for bodies), the trash listed as a page like every other list."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.models import Organization

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")


def _schema() -> dict[str, Any]:
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return dict(response.json())


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in _schema()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_operation_documents_400_and_a_414_without_body() -> None:
    for path, method, operation in _operations():
        responses = operation["responses"]
        assert "400" in responses, f"{method} {path}"
        assert "414" in responses and "content" not in responses["414"], f"{method} {path}"


def test_every_operation_with_a_body_documents_413_and_415() -> None:
    with_body = [(p, m, op) for p, m, op in _operations() if "requestBody" in op]
    assert with_body

    for path, method, operation in with_body:
        for code in ("413", "415"):
            content = operation["responses"][code]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}, f"{method} {path}"


def test_trash_list_is_documented_as_the_page_it_answers(
    org: Organization, token_client: Any
) -> None:
    schema = _schema()
    ok = schema["paths"]["/api/v1/trash/"]["get"]["responses"]["200"]
    ref = ok["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    page = schema["components"]["schemas"][ref]
    parameters = {p["name"] for p in schema["paths"]["/api/v1/trash/"]["get"]["parameters"]}

    body = token_client(org).get("/api/v1/trash/").json()

    assert page["type"] == "object" and page["properties"]["results"]["type"] == "array"
    assert {"cursor", "page_size"} <= parameters
    assert set(body) == {"next", "previous", "results"}


def test_study_time_is_documented_without_a_time_zone() -> None:
    study_time = _schema()["components"]["schemas"]["ArchiveStudy"]["properties"]["study_time"]

    assert "format" not in study_time  # OpenAPI's "time" demands a zone DICOM times lack
    assert study_time["nullable"] is True
