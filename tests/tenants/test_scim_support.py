"""Shared helpers of the SCIM tests: a SCIM client and payloads as identity providers send them.

Holds no tests itself; the ``test_scim_*`` modules import from here.
"""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from tenants.context import Actor
from tenants.models import Organization
from tenants.scim import services as scim_services

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


class ScimClient:
    """Talks to /scim/v2/ as an identity provider does: bearer token, application/scim+json."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}

    def _send(self, method: str, path: str, body: Any = None, raw: str | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        call = getattr(self.client, method)
        url = path if path.startswith("/") else f"/scim/v2/{path}"
        if method in ("get", "delete") and body is None and raw is None:
            return call(url, **self.headers)
        return call(url, data=data, content_type=SCIM_JSON, **self.headers)

    def get(self, path: str) -> Any:
        return self._send("get", path)

    def post(self, path: str, body: Any = None, raw: str | None = None) -> Any:
        return self._send("post", path, body, raw)

    def put(self, path: str, body: Any = None, raw: str | None = None) -> Any:
        return self._send("put", path, body, raw)

    def patch(self, path: str, body: Any = None, raw: str | None = None) -> Any:
        return self._send("patch", path, body, raw)

    def delete(self, path: str) -> Any:
        return self._send("delete", path)


def scim_client(org: Organization) -> ScimClient:
    _, secret = scim_services.scim_token_create(org=org, actor=Actor.system("tests"))
    return ScimClient(secret)


def user_body(email: str, **extra: Any) -> dict[str, Any]:
    """A create request as Microsoft Entra ID sends it."""
    body: dict[str, Any] = {
        "schemas": [USER, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": extra.pop("externalId", email.split("@")[0]),
        "userName": email,
        "active": True,
        "displayName": "Dana Scully",
        "emails": [{"primary": True, "type": "work", "value": email}],
        "name": {"formatted": "Dana Scully", "familyName": "Scully", "givenName": "Dana"},
        "title": "Radiologist",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Radiology"},
    }
    body.update(extra)
    return body


def patch_body(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


def assert_scim_error(response: Any, status: int, scim_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith(SCIM_JSON)
    body = response.json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)
    assert body["detail"]
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    return body
