"""Schemathesis against the published OpenAPI schema: no request answers a 5xx, and every answer
matches the schema (status code, content type, body).

The schema is read from ``/api/schema/`` of the WSGI application and the requests go to the same
application in-process, with an admin token (every scope) of an organization that has data: two
studies (one in the trash), a webhook, an AE title, a legal hold, an invitation, a second token,
an owner. Identifiers in paths are replaced by those of these rows, so that each operation runs
on real data; the rest of each request (query, body) is generated, valid and invalid.

Bounded in time: ``API_FUZZ_MAX_EXAMPLES`` examples per operation (default 6), and the
``/api/v1/o/{org_slug}/`` copies of the routes left out (the same views); about a minute on two
cores. Nothing leaves the machine: host names other than localhost do not resolve.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tenants.context import Actor
from tenants.models import Organization
from tenants.roles import Role, Scope
from tenants.services import token_create

MAX_EXAMPLES = int(os.environ.get("API_FUZZ_MAX_EXAMPLES", "6"))
WEBHOOK_URL = "http://127.0.0.1:9/hooks/strata"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class InTestTransaction:
    """The WSGI application, run inside the test's transaction as Django's test client runs it:
    Django's handler would otherwise close the database connection at the start and the end of
    each request (it is not in autocommit mode inside the test), and the transaction with it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


schema = schemathesis.openapi.from_wsgi(
    "/api/schema/", InTestTransaction(get_wsgi_application())
).exclude(path_regex=r"^/api/v1/o/")


@dataclass
class FuzzWorld:
    org: Organization
    secret: str
    ids: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated URLs (webhooks, storage endpoints) name random hosts: none of them resolves."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if name != "localhost":
                raise socket.gaierror(socket.EAI_NONAME, "no name resolution in the fuzz test")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def fuzz_world(db: Any, settings: Any, tmp_path: Any, offline: None) -> Iterator[FuzzWorld]:
    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    from archive.models import Instance
    from tests.archive.test_portal_studies import ingest_study
    from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

    org = OrganizationFactory.create(name="Fuzz Hospital", slug="fuzz")
    owner = MembershipFactory.create(
        organization=org, role=Role.OWNER, user=UserFactory(email="owner@fuzz.example")
    )
    study, _ = ingest_study(org, "CT")
    trashed, _ = ingest_study(org, "MR", n=1)
    _, secret = token_create(
        org=org, name="fuzz", scopes=[s.value for s in Scope], actor=Actor.system("tests")
    )
    other_token, _ = token_create(
        org=org, name="target", scopes=["dicom:read"], actor=Actor.system("tests")
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    def create(path: str, body: dict[str, Any]) -> int:
        response = api.post(path, body, format="json")
        assert response.status_code == 201, (path, response.content)
        return int(response.json()["id"])

    instance = Instance.objects.filter(study=study).first()
    assert instance is not None
    ids = {
        "study_id": study.pk,
        "series_id": instance.series_id,
        "instance_id": instance.pk,
        "member_id": owner.pk,
        "token_id": other_token.pk,
        "webhook_id": create(
            # Port 9 (discard) on loopback: a test delivery fails at once, nothing listens.
            "/api/v1/webhooks/",
            {"url": WEBHOOK_URL, "event_types": ["webhook.test"]},
        ),
        "ae_id": create(
            "/api/v1/dicom-aes/", {"ae_title": "FUZZ-AE", "allowed_networks": ["10.0.0.0/8"]}
        ),
        "hold_id": create("/api/v1/legal-holds/", {"study": study.pk, "reason": "litigation"}),
        "invitation_id": create(
            "/api/v1/invitations/", {"email": "new@fuzz.example", "role": "member"}
        ),
    }
    create("/api/v1/trash/", {"study": trashed.pk, "reason": "duplicate"})
    yield FuzzWorld(org=org, secret=secret, ids=ids)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_no_5xx_and_matches_its_schema(case: Any, fuzz_world: FuzzWorld) -> None:
    for name, value in fuzz_world.ids.items():
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = value
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_world.secret}"}, checks=CHECKS)
