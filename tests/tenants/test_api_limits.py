"""Limits every API request has: JSON bodies (size, nesting depth, NaN, NUL), form bodies,
query strings (NUL, too many parameters). Each refusal is the API's JSON error naming what was
wrong, never a 500 and never Django's HTML page."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework import status
from rest_framework.test import APIClient

from tenants.models import Organization, WebhookEndpoint
from tenants.parsers import _nesting_exceeds, _nul_at
from tenants.rest import exception_handler

pytestmark = pytest.mark.django_db

WEBHOOK = {"url": "https://hooks.example.org/strata", "event_types": ["ingest.completed"]}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def error(response: Any) -> dict[str, Any]:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return dict(response.json()["error"])


@pytest.fixture
def client(org: Organization, token_client: Any) -> APIClient:
    return token_client(org)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/webhooks/"),
        ("post", "/api/v1/policies/versions/"),
        ("post", "/api/v1/analytics/simulation/"),
        ("put", "/api/v1/budget/"),
    ],
)
def test_json_nested_1000_deep_answers_400_naming_the_body(
    client: APIClient, method: str, path: str
) -> None:
    body = '{"a": ' + nested(1000) + "}"

    response = getattr(client, method)(path, body, content_type="application/json")

    assert response.status_code == 400
    body_error = error(response)
    assert body_error["code"] == "too_deep"
    assert "body" in body_error["fields"]


def test_json_body_of_50_mb_answers_413_in_json(client: APIClient, settings: Any) -> None:
    body = json.dumps({**WEBHOOK, "description": "x" * 50_000_000})

    response = client.post("/api/v1/webhooks/", body, content_type="application/json")

    assert response.status_code == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    body_error = error(response)
    assert body_error["code"] == "body_too_large"
    assert str(settings.API_MAX_JSON_BYTES) in body_error["fields"]["body"][0]
    assert not WebhookEndpoint.objects.exists()


def test_json_body_limit_is_a_setting(client: APIClient, settings: Any) -> None:
    settings.API_MAX_JSON_BYTES = 2048
    small = json.dumps(WEBHOOK)
    large = json.dumps({**WEBHOOK, "description": "x" * 2048})

    assert (
        client.post("/api/v1/webhooks/", large, content_type="application/json").status_code == 413
    )
    response = client.post("/api/v1/webhooks/", small, content_type="application/json")
    assert response.status_code == 201, response.content


def test_json_nesting_limit_is_a_setting(client: APIClient, settings: Any) -> None:
    settings.API_MAX_JSON_DEPTH = 4
    deep = json.dumps({**WEBHOOK, "x": [[[{}]]]})  # five levels with the outer object

    response = client.post("/api/v1/webhooks/", deep, content_type="application/json")

    assert response.status_code == 400
    assert error(response)["code"] == "too_deep"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"url": "https://a.example.org/x", "description": NaN}', "body"),
        ('{"url": "https://a.example.org/x", "description": Infinity}', "body"),
        ('{"url": ', "body"),
        (b'{"url": "\xff"}', "body"),
        (
            '{"url": "https://a.example.org/x", "event_types": ["ingest.completed\\u0000"]}',
            "event_types.0",
        ),
        ('{"url": "https://a.example.org/x", "description\\u0000": "x"}', "description\\u0000"),
    ],
)
def test_invalid_json_answers_400_naming_the_field(
    client: APIClient, body: str | bytes, field: str
) -> None:
    response = client.post("/api/v1/webhooks/", body, content_type="application/json")

    assert response.status_code == 400
    assert field in error(response)["fields"]
    assert not WebhookEndpoint.objects.exists()


def test_form_body_over_djangos_limit_answers_413_in_json(client: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = "url=https%3A%2F%2Fa.example.org%2Fx&description=" + "x" * 4096

    response = client.post(
        "/api/v1/webhooks/", body, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 413
    assert "body" in error(response)["fields"]


def test_form_with_too_many_fields_answers_400_in_json(client: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    body = "&".join(f"f{i}=1" for i in range(20))

    response = client.post(
        "/api/v1/webhooks/", body, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 400
    assert "body" in error(response)["fields"]


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/studies/?patient_id=%00", "patient_id"),
        ("/api/v1/members/?q=a%00b", "q"),
        ("/api/v1/audit-events/?x%00y=1", "x%00y"),
        ("/dicomweb/studies?AccessionNumber=%00", "AccessionNumber"),
    ],
)
def test_nul_in_a_query_parameter_answers_json_400_naming_it(
    client: APIClient, path: str, parameter: str
) -> None:
    response = client.get(path)

    assert response.status_code == 400
    assert parameter in error(response)["fields"]


def test_nul_in_a_portal_query_answers_plain_400(client: APIClient) -> None:
    response = client.get("/accounts/login/?next=%00")

    assert response.status_code == 400
    assert b"next" in response.content


def test_too_many_query_parameters_answer_json_400(client: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    query = "&".join(f"a{i}=1" for i in range(20))

    response = client.get(f"/api/v1/studies/?{query}")

    assert response.status_code == 400
    assert "query" in error(response)["fields"]


def test_recursion_error_in_a_view_is_a_json_400() -> None:
    response = exception_handler(RecursionError("maximum recursion depth exceeded"), {})

    assert response is not None
    assert response.status_code == 400
    assert response.data["error"]["code"] == "too_deep"


def test_body_parse_error_names_the_body(client: APIClient) -> None:
    response = client.post(
        "/api/v1/webhooks/",
        b"--x\r\nbroken",
        content_type="multipart/form-data",  # no boundary: the body cannot be split
    )

    assert response.status_code == 400
    assert "body" in error(response)["fields"]


@pytest.mark.parametrize(
    ("text", "limit", "exceeds"),
    [
        (nested(3), 3, False),
        (nested(4), 3, True),
        ('["[[[[[[[["]', 2, False),  # brackets inside a string do not nest
        ('["\\"[[[[[[[["]', 2, False),  # nor after an escaped quote
        ('["\\\\", [[[]]]]', 3, True),  # an escaped backslash ends before the quote
        ('{"a": {"b": {"c": 1}}}', 3, False),
    ],
)
def test_nesting_depth_is_counted_outside_strings(text: str, limit: int, exceeds: bool) -> None:
    assert _nesting_exceeds(text, limit) is exceeds


def test_nul_path_names_nested_fields() -> None:
    assert _nul_at({"a": [{"b": "ok"}, {"c": "x\x00"}]}) == "a.1.c"
    assert _nul_at({"a": [1, 2.5, None, True, "fine"]}) is None
    assert _nul_at("\x00") == "body"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/webhooks/99999999999999999999999/",
        "/api/v1/invoices/29655285345057603584/lines/10718/rollups/",
        "/api/v1/studies/9223372036854775808/",
    ],
)
def test_id_in_the_path_beyond_64_bits_answers_json_404(client: APIClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert error(response)["code"] == "not_found"


def test_largest_64_bit_id_is_an_ordinary_unknown_id(client: APIClient) -> None:
    response = client.get("/api/v1/webhooks/9223372036854775807/")

    assert response.status_code == 404
