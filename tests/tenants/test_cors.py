"""CORS on the bearer-token APIs (DICOMweb, REST): preflights without credentials, actual requests
only for the token's organization's origins, never the portal or the session API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tenants import cors, services
from tenants.context import Actor
from tenants.errors import ValidationFailed
from tenants.models import Membership, Organization

VIEWER = "https://viewer.stmary.example"
OTHER_VIEWER = "https://pacs.other-clinic.example"
ACAO = "Access-Control-Allow-Origin"

API_PATHS = ["/dicomweb/studies", "/api/v1/organization/"]


def allow(org: Organization, origin: str) -> None:
    services.cors_origin_add(org=org, actor=Actor.system("tests"), origin=origin)


def preflight(path: str, origin: str, method: str = "GET") -> Any:
    return Client().options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, accept",
    )


@pytest.fixture
def viewer_allowed(org: Organization) -> None:
    allow(org, VIEWER)


# --- preflight ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", API_PATHS)
def test_preflight_from_an_allowed_origin_is_answered_without_credentials(
    path: str, viewer_allowed: None
) -> None:
    response = preflight(path, VIEWER)

    assert response.status_code in (200, 204)
    assert response[ACAO] == VIEWER
    methods = {m.strip() for m in response["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    headers = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "accept", "content-type"} <= headers
    assert int(response["Access-Control-Max-Age"]) > 0
    # Bearer tokens, never cookies.
    assert "Access-Control-Allow-Credentials" not in response
    assert "origin" in response["Vary"].lower()


@pytest.mark.parametrize("path", API_PATHS)
def test_preflight_from_an_origin_not_allowed_gets_no_cors_headers(
    path: str, viewer_allowed: None
) -> None:
    response = preflight(path, "https://evil.example")

    assert response.status_code != 401
    assert ACAO not in response
    assert "Access-Control-Allow-Methods" not in response


def test_nothing_is_allowed_by_default(db: Any, org: Organization) -> None:
    for origin in (VIEWER, "http://localhost:3000", "null"):
        assert ACAO not in preflight("/dicomweb/studies", origin)


def test_preflight_is_allowed_when_another_organization_allows_the_origin(
    org: Organization, other_org: Organization
) -> None:
    # A DICOMweb URL names no organization: the preflight cannot know whose token will follow.
    allow(other_org, OTHER_VIEWER)

    assert preflight("/dicomweb/studies", OTHER_VIEWER)[ACAO] == OTHER_VIEWER


def test_preflight_matches_the_origin_exactly(viewer_allowed: None) -> None:
    for near in (
        "http://viewer.stmary.example",  # another scheme
        "https://viewer.stmary.example:8443",  # another port
        "https://evil.viewer.stmary.example",  # a subdomain
        "https://viewer.stmary.example.evil.example",  # a suffix
    ):
        assert ACAO not in preflight("/dicomweb/studies", near), near


def test_preflight_costs_at_most_one_query_and_none_once_cached(
    viewer_allowed: None, django_assert_max_num_queries: Any, django_assert_num_queries: Any
) -> None:
    with django_assert_max_num_queries(1):
        assert preflight("/dicomweb/studies", VIEWER)[ACAO] == VIEWER
    with django_assert_num_queries(0):
        assert preflight("/dicomweb/studies", VIEWER)[ACAO] == VIEWER
    # A refusal is cached too: a flood of preflights from one origin costs one query.
    with django_assert_max_num_queries(1):
        assert ACAO not in preflight("/dicomweb/studies", "https://evil.example")
    with django_assert_num_queries(0):
        assert ACAO not in preflight("/dicomweb/studies", "https://evil.example")


def test_a_change_is_seen_by_the_next_preflight(
    org: Organization, django_capture_on_commit_callbacks: Any
) -> None:
    # Cache the refusal first: adding the origin must invalidate it.
    assert ACAO not in preflight("/dicomweb/studies", VIEWER)
    with django_capture_on_commit_callbacks(execute=True):
        allow(org, VIEWER)
    assert preflight("/dicomweb/studies", VIEWER)[ACAO] == VIEWER

    row = org.cors_origins.get()
    with django_capture_on_commit_callbacks(execute=True):
        services.cors_origin_remove(org=org, actor=Actor.system("tests"), cors_origin=row)
    assert ACAO not in preflight("/dicomweb/studies", VIEWER)


# --- actual requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", API_PATHS)
def test_token_request_from_an_allowed_origin_gets_the_headers(
    path: str,
    org: Organization,
    viewer_allowed: None,
    token_client: Callable[..., APIClient],
) -> None:
    response = token_client(org).get(path, HTTP_ORIGIN=VIEWER)

    assert response.status_code == 200, response.content
    assert response[ACAO] == VIEWER
    exposed = {h.strip().lower() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"content-type", "content-length", "warning", "retry-after", "location"} <= exposed
    assert "Access-Control-Allow-Credentials" not in response
    assert "origin" in response["Vary"].lower()


@pytest.mark.parametrize("path", API_PATHS)
def test_origin_allowed_only_by_another_organization_gets_no_header(
    path: str,
    org: Organization,
    other_org: Organization,
    token_client: Callable[..., APIClient],
) -> None:
    allow(other_org, OTHER_VIEWER)

    response = token_client(org).get(path, HTTP_ORIGIN=OTHER_VIEWER)

    assert response.status_code == 200
    assert ACAO not in response


@pytest.mark.parametrize("path", API_PATHS)
def test_request_without_a_valid_token_gets_no_header(
    path: str, viewer_allowed: None, api_client: APIClient
) -> None:
    anonymous = api_client.get(path, HTTP_ORIGIN=VIEWER)
    api_client.credentials(HTTP_AUTHORIZATION="Bearer strata_nope_nope")
    wrong_token = api_client.get(path, HTTP_ORIGIN=VIEWER)

    assert anonymous.status_code == 401 and ACAO not in anonymous
    assert wrong_token.status_code == 401 and ACAO not in wrong_token


def test_refused_request_of_the_organization_still_carries_the_header(
    org: Organization, viewer_allowed: None, token_client: Callable[..., APIClient]
) -> None:
    # A 403 (missing scope) is the organization's answer: the viewer may read why.
    response = token_client(org, ["usage:read"]).get("/dicomweb/studies", HTTP_ORIGIN=VIEWER)

    assert response.status_code == 403
    assert response[ACAO] == VIEWER


def test_same_site_request_without_origin_is_unchanged(
    org: Organization, viewer_allowed: None, token_client: Callable[..., APIClient]
) -> None:
    response = token_client(org).get("/dicomweb/studies")

    assert response.status_code == 200
    assert ACAO not in response


# --- never the portal, never cookies -----------------------------------------------------------


def test_portal_pages_never_get_cors_headers(
    org: Organization, owner: Membership, viewer_allowed: None
) -> None:
    client = Client()
    client.force_login(owner.user)
    for path in (
        f"/o/{org.slug}/",
        f"/o/{org.slug}/tokens/",
        f"/o/{org.slug}/tokens/origins/",
        "/accounts/login/",
        "/api/docs/",
    ):
        response = client.get(path, HTTP_ORIGIN=VIEWER)
        assert response.status_code in (200, 302), path
        assert ACAO not in response, path
    for path in (f"/o/{org.slug}/", f"/o/{org.slug}/tokens/origins/", "/accounts/login/"):
        pre = client.options(path, HTTP_ORIGIN=VIEWER, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
        assert ACAO not in pre, path


def test_session_api_is_never_cors_enabled(
    org: Organization, owner: Membership, viewer_allowed: None
) -> None:
    client = APIClient()
    client.force_login(owner.user)
    path = f"/api/v1/o/{org.slug}/organization/"

    response = client.get(path, HTTP_ORIGIN=VIEWER)
    pre = client.options(path, HTTP_ORIGIN=VIEWER, HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET")

    assert response.status_code == 200
    assert ACAO not in response
    assert ACAO not in pre


# --- origins as browsers send them -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("https://viewer.example.org", "https://viewer.example.org"),
        ("  HTTPS://Viewer.Example.ORG  ", "https://viewer.example.org"),
        ("https://viewer.example.org:443", "https://viewer.example.org"),
        ("http://viewer.example.org:80", "http://viewer.example.org"),
        ("https://viewer.example.org:8443", "https://viewer.example.org:8443"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://127.0.0.1:8042", "http://127.0.0.1:8042"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("https://[2001:DB8:0:0::1]", "https://[2001:db8::1]"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_origin_is_normalized_as_browsers_send_it(value: str, normalized: str) -> None:
    assert cors.origin_normalize(value) == normalized


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "Enter an origin"),
        ("viewer.example.org", "starts with https://"),
        ("ftp://viewer.example.org", "Only http and https"),
        ("javascript://viewer.example.org", "Only http and https"),
        ("https://viewer.example.org/", "no path"),
        ("https://viewer.example.org/ohif/viewer", "no path"),
        ("https://viewer.example.org?x=1", "no path, query"),
        ("https://viewer.example.org#top", "no path, query or fragment"),
        ("https://*.example.org", "Wildcards"),
        ("*", "Wildcards"),
        ("null", "'null'"),
        ("https://user:pw@viewer.example.org", "user name"),
        ("https://viewer.example.org:0", "port"),
        ("https://viewer.example.org:65536", "port"),
        ("https://viewer.example.org:", "port"),
        ("https://viewer.example.org:http", "port"),
        ("https://", "names a host"),
        ("https://viewer_1.example.org", "not a valid host name"),
        ("https://-viewer.example.org", "not a valid host name"),
        ("https://viewer..example.org", "not a valid host name"),
        ("https://viewer.example.org.", "final dot"),
        ("https://999.1.1.1", "IPv4"),
        ("https://[::g]", "IPv6"),
        ("https://[::1", "IPv6"),
        ("https://bücher.example", "ASCII form"),
        ("https://viewer.example.org\x00", "control characters"),
        ("https://viewer example.org", "spaces"),
        ("https://" + "a" * 300 + ".org", "at most 300"),
    ],
)
def test_bad_origins_are_refused_with_a_reason(value: str, reason: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        cors.origin_normalize(value)

    assert reason in refused.value.message
    assert refused.value.fields == {"origin": [refused.value.message]}


def test_a_garbled_origin_header_is_never_allowed(viewer_allowed: None) -> None:
    for header in (
        "null",
        VIEWER + "/",
        VIEWER + "\t",
        VIEWER + ":443",
        VIEWER.upper(),
        "https://viewer.stmary.example:99999",
    ):
        assert ACAO not in preflight("/dicomweb/studies", header), header
