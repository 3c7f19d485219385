"""Who may call what: every endpoint against every role (session) and every token scope."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Scope
from tests.tenants.test_api_support import (
    ALL_ROLES,
    ALL_SCOPES,
    ENDPOINTS,
    ROLES_WITH,
    SCOPES_WITH,
    Endpoint,
    bearer_client,
    call,
    create_org_objects,
    error,
    org_path,
    session_client,
    token_path,
)

ROLE_CASES = [
    pytest.param(endpoint, role, role in ROLES_WITH[endpoint.permission], id=f"{endpoint}-{role}")
    for endpoint in ENDPOINTS
    for role in ALL_ROLES
]
SCOPE_CASES = [
    pytest.param(
        endpoint, scope, scope in SCOPES_WITH[endpoint.permission], id=f"{endpoint}-{scope}"
    )
    for endpoint in ENDPOINTS
    for scope in ALL_SCOPES
]


@pytest.mark.parametrize(("endpoint", "role", "allowed"), ROLE_CASES)
def test_role_matrix(
    endpoint: Endpoint,
    role: str,
    allowed: bool,
    org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    objects = create_org_objects(org, make_member, make_token)
    client = session_client(make_member(org, role).user)
    events_before = AuditEvent.objects.for_org(org).count()

    response = call(client, endpoint, org_path(org, endpoint, objects))

    if allowed:
        assert response.status_code == endpoint.ok, response.content
    else:
        assert response.status_code == 403, response.content
        body = error(response)
        assert body["code"] == "permission_denied"
        assert body["fields"] == {"permission": [endpoint.permission]}
        assert f"'{endpoint.permission}'" in body["message"]
        assert AuditEvent.objects.for_org(org).count() == events_before


@pytest.mark.parametrize(("endpoint", "scope", "allowed"), SCOPE_CASES)
def test_scope_matrix(
    endpoint: Endpoint,
    scope: str,
    allowed: bool,
    org: Organization,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    objects = create_org_objects(org, make_member, make_token)
    _, secret = make_token(org, [scope], name=f"only {scope}")
    events_before = AuditEvent.objects.for_org(org).count()

    response = call(bearer_client(secret), endpoint, token_path(endpoint, objects))

    if allowed:
        assert response.status_code == endpoint.ok, response.content
    else:
        assert response.status_code == 403, response.content
        body = error(response)
        assert body["code"] == "permission_denied"
        assert body["fields"] == {"permission": [endpoint.permission]}
        assert f"'{endpoint.permission}'" in body["message"]
        assert f"scope '{Scope.ADMIN.value}'" in body["message"]
        assert AuditEvent.objects.for_org(org).count() == events_before
