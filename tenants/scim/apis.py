"""SCIM 2.0 endpoints under /scim/v2/ (RFC 7644), for the hospital's identity provider.

Authenticated by a bearer token with the ``scim`` scope only (no session, no CSRF); the
organization is the token's, so another organization's User or Group answers 404 like an
unknown id. Every answer is ``application/scim+json``; every error is the RFC's error resource
(``schemas``, ``status``, ``scimType``, ``detail``), whatever went wrong: a refused token, a body
that is not JSON, an unknown schema, a bad filter or PATCH operation.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.http import HttpResponse
from rest_framework import exceptions, renderers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.auth import BearerTokenAuthentication
from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.models import ApiToken, Organization
from tenants.parsers import JSONBodyParser
from tenants.roles import Scope
from tenants.scim import resources, selectors, services
from tenants.scim.errors import ScimError, invalid_syntax, invalid_value
from tenants.scim.filters import GROUP_SCHEMA, USER_SCHEMA, parse_filter
from tenants.throttling import TokenRateThrottle

logger = logging.getLogger(__name__)

SCIM_MEDIA_TYPE = "application/scim+json"
DEFAULT_COUNT = 100
MAX_COUNT = 200
MAX_START_INDEX = 2**31 - 1

USER_FILTERS = {"username", "externalid", "id", "emails.value", "emails", "active"}
GROUP_FILTERS = {"displayname", "externalid", "id", "members.value", "members"}


class ScimRenderer(renderers.JSONRenderer):
    media_type = SCIM_MEDIA_TYPE
    format = "scim"


class ScimJSONRenderer(renderers.JSONRenderer):
    # Clients that ask for application/json get the same body under that type.
    pass


class ScimBodyParser(JSONBodyParser):
    media_type = SCIM_MEDIA_TYPE


def scim_response(data: dict[str, Any] | None, status: int = 200, **headers: str) -> Response:
    response = Response(data, status=status, content_type=SCIM_MEDIA_TYPE)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _error_response(error: ScimError) -> Response:
    response = scim_response(error.body(), status=error.status)
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="strata"'
    return response


def _as_scim_error(exc: Exception) -> ScimError | None:
    if isinstance(exc, ScimError):
        return exc
    if isinstance(exc, ServiceError):
        # The body parser's refusals: not JSON, too deep, a NUL character, too large.
        if exc.status == 413:
            return ScimError(413, exc.message)
        if exc.code in ("invalid_json", "too_deep"):
            return invalid_syntax(exc.message)
        return invalid_value(exc.message)
    if isinstance(exc, exceptions.NotAuthenticated):
        return ScimError(401, "Authentication is required: send 'Authorization: Bearer <token>'.")
    if isinstance(exc, exceptions.AuthenticationFailed):
        return ScimError(401, str(exc.detail))
    if isinstance(exc, exceptions.PermissionDenied):
        return ScimError(403, str(exc.detail))
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return ScimError(415, f"Send the body as {SCIM_MEDIA_TYPE} or application/json.")
    if isinstance(exc, exceptions.ParseError):
        return invalid_syntax(str(exc.detail))
    if isinstance(exc, exceptions.MethodNotAllowed):
        return ScimError(405, str(exc.detail))
    if isinstance(exc, exceptions.NotAcceptable):
        return ScimError(406, f"This endpoint answers {SCIM_MEDIA_TYPE} or application/json.")
    if isinstance(exc, exceptions.Throttled):
        wait = getattr(exc, "wait", None)
        return ScimError(
            429,
            f"Too many requests; retry in {wait:.0f} seconds." if wait else "Too many requests.",
        )
    if isinstance(exc, RecursionError):
        return invalid_syntax("The input nests too deep.")
    return None


class ScimView(APIView):
    """Base of every SCIM endpoint: the scim token, the organization, SCIM errors."""

    # Not in the OpenAPI document of /api/v1/: SCIM is its own protocol, described by
    # /scim/v2/Schemas and /scim/v2/ResourceTypes (and docs/scim.md).
    schema = None
    authentication_classes = [BearerTokenAuthentication]
    permission_classes: list[Any] = []
    throttle_classes = [TokenRateThrottle]
    parser_classes = [ScimBodyParser, JSONBodyParser]
    renderer_classes = [ScimRenderer, ScimJSONRenderer]
    org: Organization
    actor: Actor

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        token = request.auth
        if not isinstance(token, ApiToken):
            raise ScimError(
                401, "Authentication is required: send 'Authorization: Bearer <token>'."
            )
        if Scope.SCIM not in token.scopes:
            raise ScimError(
                403,
                "This token has no scim scope; SCIM takes the token an owner creates on the "
                "organization's Security page.",
            )
        self.org = token.organization
        self.actor = Actor.from_request(request._request, token=token)

    def handle_exception(self, exc: Exception) -> Response:
        error = _as_scim_error(exc)
        if error is None:
            return super().handle_exception(exc)
        return _error_response(error)

    def base_url(self) -> str:
        return self.request.build_absolute_uri("/scim/v2/")

    def page(self) -> tuple[int, int]:
        params = self.request.query_params
        try:
            start = int(params.get("startIndex", "1"))
            count = int(params.get("count", str(DEFAULT_COUNT)))
        except ValueError:
            raise invalid_value("startIndex and count must be integers.") from None
        if start > MAX_START_INDEX:
            raise invalid_value(f"startIndex is at most {MAX_START_INDEX}.")
        return max(start, 1), min(max(count, 0), MAX_COUNT)


def _body(view: ScimView) -> Any:
    request = view.request
    if not request.stream:
        raise invalid_syntax("The request needs a JSON body.")
    return request.data


# --- Users -----------------------------------------------------------------------------------


def _users_out(view: ScimView, memberships: list[Any]) -> list[dict[str, Any]]:
    groups = selectors.user_groups(memberships=memberships)
    modified = selectors.users_last_modified(org=view.org, memberships=memberships)
    base = view.base_url()
    return [
        resources.user_resource(m, base=base, groups=groups[m.pk], last_modified=modified[m.pk])
        for m in memberships
    ]


def _user_out(view: ScimView, membership: Any, status: int = 200) -> Response:
    membership = selectors.scim_user_get(org=view.org, scim_id=str(membership.scim_id))
    resource = _users_out(view, [membership])[0]
    headers = {"Location": resource["meta"]["location"]} if status == 201 else {}
    return scim_response(resource, status=status, **headers)


def _current_user_fields(membership: Any) -> services.UserFields:
    return services.UserFields(
        user_name=membership.user.email,
        given_name=membership.user.first_name,
        family_name=membership.user.last_name,
        external_id=membership.scim_external_id,
        active=membership.deactivated_at is None,
    )


class UserListView(ScimView):
    def get(self, request: Request) -> Response:
        services.scim_ids_assign(org=self.org)
        text = request.query_params.get("filter")
        where = parse_filter(text, allowed=USER_FILTERS, schema=USER_SCHEMA) if text else []
        start, count = self.page()
        qs = selectors.scim_user_list(org=self.org, where=where)
        total = qs.count()
        rows = list(qs[start - 1 : start - 1 + count]) if count else []
        return scim_response(
            resources.list_response(_users_out(self, rows), total=total, start=start)
        )

    def post(self, request: Request) -> Response:
        fields = resources.user_fields_from_resource(_body(self))
        membership = services.scim_user_create(org=self.org, actor=self.actor, fields=fields)
        return _user_out(self, membership, status=201)


class UserDetailView(ScimView):
    def get(self, request: Request, scim_id: str) -> Response:
        return _user_out(self, selectors.scim_user_get(org=self.org, scim_id=scim_id))

    def put(self, request: Request, scim_id: str) -> Response:
        membership = selectors.scim_user_get(org=self.org, scim_id=scim_id)
        fields = resources.user_fields_from_resource(
            _body(self), current=_current_user_fields(membership)
        )
        membership = services.scim_user_update(
            org=self.org, actor=self.actor, membership=membership, fields=fields
        )
        return _user_out(self, membership)

    def patch(self, request: Request, scim_id: str) -> Response:
        membership = selectors.scim_user_get(org=self.org, scim_id=scim_id)
        fields = resources.user_fields_after_patch(
            _body(self), current=_current_user_fields(membership)
        )
        membership = services.scim_user_update(
            org=self.org, actor=self.actor, membership=membership, fields=fields
        )
        return _user_out(self, membership)

    def delete(self, request: Request, scim_id: str) -> Response:
        membership = selectors.scim_user_get(org=self.org, scim_id=scim_id)
        services.scim_user_delete(org=self.org, actor=self.actor, membership=membership)
        return Response(status=204)


# --- Groups ----------------------------------------------------------------------------------


def _resolver(view: ScimView) -> Any:
    def resolve(ids: list[str]) -> list[Any]:
        return selectors.scim_users_by_ids(org=view.org, scim_ids=ids)

    return resolve


def _wants_members(view: ScimView) -> bool:
    excluded = view.request.query_params.get("excludedAttributes", "")
    return "members" not in {a.strip().lower() for a in excluded.split(",")}


def _groups_out(view: ScimView, groups: list[Any]) -> list[dict[str, Any]]:
    members = selectors.group_memberships(groups=groups) if _wants_members(view) else {}
    base = view.base_url()
    return [
        resources.group_resource(g, base=base, members=members.get(g.pk) if members else None)
        for g in groups
    ]


def _group_out(view: ScimView, group: Any, status: int = 200) -> Response:
    group = selectors.scim_group_get(org=view.org, scim_id=str(group.scim_id))
    resource = _groups_out(view, [group])[0]
    headers = {"Location": resource["meta"]["location"]} if status == 201 else {}
    return scim_response(resource, status=status, **headers)


class GroupListView(ScimView):
    def get(self, request: Request) -> Response:
        text = request.query_params.get("filter")
        where = parse_filter(text, allowed=GROUP_FILTERS, schema=GROUP_SCHEMA) if text else []
        start, count = self.page()
        qs = selectors.scim_group_list(org=self.org, where=where)
        total = qs.count()
        rows = list(qs[start - 1 : start - 1 + count]) if count else []
        return scim_response(
            resources.list_response(_groups_out(self, rows), total=total, start=start)
        )

    def post(self, request: Request) -> Response:
        services.scim_ids_assign(org=self.org)
        fields = resources.group_fields_from_resource(_body(self), resolve=_resolver(self))
        group = services.scim_group_create(org=self.org, actor=self.actor, fields=fields)
        return _group_out(self, group, status=201)


class GroupDetailView(ScimView):
    def get(self, request: Request, scim_id: str) -> Response:
        return _group_out(self, selectors.scim_group_get(org=self.org, scim_id=scim_id))

    def put(self, request: Request, scim_id: str) -> Response:
        group = selectors.scim_group_get(org=self.org, scim_id=scim_id)
        fields = resources.group_fields_from_resource(_body(self), resolve=_resolver(self))
        group = services.scim_group_update(
            org=self.org, actor=self.actor, group=group, fields=fields
        )
        return _group_out(self, group)

    def patch(self, request: Request, scim_id: str) -> Response:
        group = selectors.scim_group_get(org=self.org, scim_id=scim_id)
        current_members = selectors.group_memberships(groups=[group])[group.pk]
        fields = resources.group_fields_after_patch(
            _body(self),
            current=services.GroupFields(
                display_name=group.display_name, external_id=group.external_id
            ),
            current_ids=[str(m.scim_id) for m in current_members],
            resolve=_resolver(self),
        )
        group = services.scim_group_update(
            org=self.org, actor=self.actor, group=group, fields=fields
        )
        # Entra ID and Okta read nothing back from a group PATCH: 204 as RFC 7644 allows.
        if fields.members is not None and not _wants_members(self):
            return Response(status=204)
        return _group_out(self, group)

    def delete(self, request: Request, scim_id: str) -> Response:
        group = selectors.scim_group_get(org=self.org, scim_id=scim_id)
        services.scim_group_delete(org=self.org, actor=self.actor, group=group)
        return Response(status=204)


# --- discovery (RFC 7644 section 4) ----------------------------------------------------------

SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"


def _attribute(
    name: str,
    *,
    kind: str = "string",
    required: bool = False,
    mutability: str = "readWrite",
    uniqueness: str = "none",
    multi: bool = False,
    sub: list[dict[str, Any]] | None = None,
    case_exact: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "type": kind,
        "multiValued": multi,
        "required": required,
        "caseExact": case_exact,
        "mutability": mutability,
        "returned": "default",
        "uniqueness": uniqueness,
    }
    if sub:
        out["subAttributes"] = sub
    return out


def _schemas(base: str) -> list[dict[str, Any]]:
    user = {
        "schemas": [SCHEMA_SCHEMA],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A member of the organization; userName is the person's email address.",
        "attributes": [
            _attribute("userName", required=True, uniqueness="server"),
            _attribute(
                "name",
                kind="complex",
                sub=[
                    _attribute("givenName"),
                    _attribute("familyName"),
                    _attribute("formatted", mutability="readOnly"),
                ],
            ),
            _attribute("displayName", mutability="readOnly"),
            _attribute(
                "emails",
                kind="complex",
                multi=True,
                mutability="readOnly",
                sub=[
                    _attribute("value"),
                    _attribute("type"),
                    _attribute("primary", kind="boolean"),
                ],
            ),
            _attribute("active", kind="boolean"),
            _attribute("externalId", case_exact=True),
            _attribute(
                "groups",
                kind="complex",
                multi=True,
                mutability="readOnly",
                sub=[
                    _attribute("value"),
                    _attribute("display"),
                    _attribute("$ref", kind="reference"),
                ],
            ),
        ],
        "meta": {"resourceType": "Schema", "location": f"{base}Schemas/{USER_SCHEMA}"},
    }
    group = {
        "schemas": [SCHEMA_SCHEMA],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A group of members; the organization maps group names to roles.",
        "attributes": [
            _attribute("displayName", required=True, uniqueness="server"),
            _attribute("externalId", case_exact=True),
            _attribute(
                "members",
                kind="complex",
                multi=True,
                sub=[
                    _attribute("value"),
                    _attribute("display", mutability="readOnly"),
                    _attribute("$ref", kind="reference"),
                ],
            ),
        ],
        "meta": {"resourceType": "Schema", "location": f"{base}Schemas/{GROUP_SCHEMA}"},
    }
    return [user, group]


def _resource_types(base: str) -> list[dict[str, Any]]:
    return [
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": name,
            "name": name,
            "endpoint": f"/{name}s",
            "description": text,
            "schema": schema,
            "meta": {"resourceType": "ResourceType", "location": f"{base}ResourceTypes/{name}"},
        }
        for name, schema, text in (
            ("User", USER_SCHEMA, "Members of the organization"),
            ("Group", GROUP_SCHEMA, "Groups whose names map to roles"),
        )
    ]


class ServiceProviderConfigView(ScimView):
    def get(self, request: Request) -> Response:
        return scim_response(
            {
                "schemas": [SPC_SCHEMA],
                "documentationUri": request.build_absolute_uri("/api/docs/"),
                "patch": {"supported": True},
                "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
                "filter": {"supported": True, "maxResults": MAX_COUNT},
                "changePassword": {"supported": False},
                "sort": {"supported": False},
                "etag": {"supported": False},
                "authenticationSchemes": [
                    {
                        "type": "oauthbearertoken",
                        "name": "Bearer token",
                        "description": "A Strata token with the scim scope, created by an owner "
                        "on the organization's Security page.",
                        "primary": True,
                    }
                ],
                "meta": {
                    "resourceType": "ServiceProviderConfig",
                    "location": f"{self.base_url()}ServiceProviderConfig",
                },
            }
        )


class ResourceTypeListView(ScimView):
    def get(self, request: Request) -> Response:
        items = _resource_types(self.base_url())
        return scim_response(resources.list_response(items, total=len(items), start=1))


class ResourceTypeDetailView(ScimView):
    def get(self, request: Request, name: str) -> Response:
        for item in _resource_types(self.base_url()):
            if item["id"] == name:
                return scim_response(item)
        raise ScimError(404, f"Resource type {name} not found.")


class SchemaListView(ScimView):
    def get(self, request: Request) -> Response:
        items = _schemas(self.base_url())
        return scim_response(resources.list_response(items, total=len(items), start=1))


class SchemaDetailView(ScimView):
    def get(self, request: Request, schema_id: str) -> Response:
        for item in _schemas(self.base_url()):
            if item["id"] == schema_id:
                return scim_response(item)
        raise ScimError(404, f"Schema {schema_id} not found.")


def not_found(request: Any, *args: Any, **kwargs: Any) -> HttpResponse:
    """Anything else under /scim/v2/: a SCIM 404, not the portal's page."""
    body = ScimError(404, f"No SCIM resource at {request.path[:200]}.").body()
    return HttpResponse(json.dumps(body), status=404, content_type=SCIM_MEDIA_TYPE)
