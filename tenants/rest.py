"""REST plumbing shared by every app's API: errors, pagination, named enum fields, and the
organization-scoped base view.

Errors always look like ``{"error": {"code": str, "message": str, "fields": {name: [str]}}}``,
whatever went wrong: a body too large or nested too deep, a form with too many fields, a
recursion that ran out of stack are all answered that way, never with Django's HTML pages.
JSON bodies are parsed with limits by ``tenants.parsers.JSONBodyParser``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, pagination, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from tenants.context import Actor
from tenants.errors import NotFound, PermissionMissing, ServiceError, ValidationFailed
from tenants.models import ApiToken, Organization
from tenants.roles import PERMISSION_DESCRIPTIONS, PERMISSION_SCOPE, Scope
from tenants.selectors import membership_for_user

logger = logging.getLogger(__name__)


class CursorPagination(pagination.CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"


class ErrorBodySerializer(serializers.Serializer):
    # Declared in get_fields: a class attribute named "fields" would shadow Serializer.fields.
    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "code": serializers.CharField(),
            "message": serializers.CharField(),
            "fields": serializers.DictField(
                child=serializers.ListField(child=serializers.CharField())
            ),
        }

    class Meta:
        ref_name = "ErrorBody"


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()

    class Meta:
        ref_name = "Error"


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The input is not valid; `error.fields` names each invalid field.",
    401: "No credentials, or the bearer token is malformed, unknown, revoked or expired.",
    403: "The role or token scope lacks the permission (named in `error.fields.permission`), "
    "or the organization is suspended or closed.",
    404: "No such object in this organization, or no access to the organization.",
    409: "The change conflicts with the current state.",
    414: "The request line (path and query string) is longer than the web server accepts "
    "(8 KiB at the nginx in front, 4,094 bytes at gunicorn); answered by the web server, "
    "before the application, without a JSON body. Nothing was done.",
    429: "Too many requests; retry later.",
}


def error_responses(
    *codes: int, descriptions: dict[int, str] | None = None
) -> dict[int, OpenApiResponse]:
    """OpenAPI error responses of an operation; 400, 401, 403, 404, 414 and 429 apply to every
    endpoint.

    Any endpoint answers 400 for a query string no view can use (a NUL character, more
    parameters than Django parses; saas/input_guard.py), whether or not it takes input.
    ``descriptions`` overrides the wording per status for one app (e.g. what a 409 means there).
    A 414 comes from the web server in front of the application: it has no body of ours.
    """
    texts = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {
        code: OpenApiResponse(None if code == 414 else ErrorSerializer, description=texts[code])
        for code in sorted({400, 401, 403, 404, 414, 429, *codes})
    }


def error_responses_for(
    descriptions: dict[int, str],
) -> Callable[..., dict[int, OpenApiResponse]]:
    """``error_responses`` bound to one API module's wording (``descriptions``), so that each
    operation names only its own status codes: ``_errors = error_responses_for(TEXTS)`` once,
    then ``**_errors(400, 409)`` in every ``extend_schema``."""

    def errors(*codes: int) -> dict[int, OpenApiResponse]:
        return error_responses(*codes, descriptions=descriptions)

    return errors


BODY_ERROR_DESCRIPTIONS: dict[int, str] = {
    413: "The body is larger than the server accepts: `API_MAX_JSON_BYTES` for JSON (1 MiB by "
    "default), Django's `DATA_UPLOAD_MAX_MEMORY_SIZE` for forms.",
    415: "The body's Content-Type is missing or is not one the operation takes.",
}


def document_body_errors(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation that takes a body documents 413 and
    415, which the parsers answer before the view runs (SPECTACULAR_SETTINGS)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for code, text in BODY_ERROR_DESCRIPTIONS.items():
                responses.setdefault(str(code), {"description": text, "content": error})
    return result


class NewestFirstPagination(CursorPagination):
    # Ids grow with insertion time, so "-id" is newest first and a stable, unique cursor.
    ordering = "-id"


class OldestFirstPagination(CursorPagination):
    ordering = "id"


def paginated(
    view: APIView,
    request: Request,
    queryset: QuerySet[Any],
    serializer_class: type[serializers.BaseSerializer[Any]],
) -> Response:
    """One cursor page of ``queryset`` with the view's paginator (newest first by default)."""
    paginator: CursorPagination = getattr(view, "pagination_class", NewestFirstPagination)()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail -> {"field" or "field.sub": [messages]}.

    Errors of list items stay on the list's field, prefixed with the item's position.
    """
    out: dict[str, list[str]] = {}

    def add(key: str, messages: list[str]) -> None:
        out.setdefault(key or "non_field_errors", []).extend(messages)

    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int) or str(key).isdigit():
                for sub_key, messages in _flatten_fields(value).items():
                    item = f"Item {int(key) + 1}: "
                    target = prefix if sub_key == "non_field_errors" else f"{prefix}.{sub_key}"
                    add(target, [item + m for m in messages])
            else:
                for sub_key, messages in _flatten_fields(
                    value, f"{prefix}.{key}" if prefix else str(key)
                ).items():
                    add(sub_key, messages)
    elif isinstance(detail, list):
        for i, value in enumerate(detail):
            if isinstance(value, dict | list):
                if value:
                    for sub_key, messages in _flatten_fields({i: value}, prefix).items():
                        add(sub_key, messages)
            else:
                add(prefix, [str(value)])
    else:
        add(prefix, [str(detail)])
    return out


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        # A form body read through request.POST / request.body (DATA_UPLOAD_MAX_MEMORY_SIZE).
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body(
                "body_too_large",
                f"The body is larger than {limit} bytes.",
                {"body": [f"At most {limit} bytes."]},
            ),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, SuspiciousOperation):
        # Too many form fields or files, a malformed multipart body: the request, not the server.
        return Response(
            error_body("bad_request", "The request body is not acceptable.", {"body": [str(exc)]}),
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, RecursionError):
        # Input nested deeper than the code can follow; the parser's depth limit should have
        # refused it first, so say where it got through.
        view = context.get("view")
        logger.warning("RecursionError in %s answered 400", type(view).__name__)
        return Response(
            error_body(
                "too_deep",
                "The input nests too deep.",
                {"body": ["The input nests too deep."]},
            ),
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(
            "invalid", "The input is not valid.", _flatten_fields(exc.detail)
        )
        return response
    if isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else "Request failed."
        code = getattr(detail, "code", None) or exc.default_code
        if isinstance(exc, exceptions.NotAuthenticated):
            response.status_code = status.HTTP_401_UNAUTHORIZED
            message = "Authentication is required: send 'Authorization: Bearer <token>'."
            response["WWW-Authenticate"] = 'Bearer realm="strata"'
        if isinstance(exc, exceptions.Throttled):
            wait = getattr(exc, "wait", None)
            message = (
                f"Too many requests; retry in {wait:.0f} seconds." if wait else "Too many requests."
            )
        fields = {"body": [message]} if isinstance(exc, exceptions.ParseError) else None
        response.data = error_body(str(code), message, fields)
    return response


class OrgAPIView(APIView):
    """Base view of every organization-scoped endpoint.

    The organization comes from the token, or for a logged-in session from the URL
    (``/api/v1/o/<slug>/...``). A slug the caller has no access to answers 404, like any
    other tenant's object. ``permissions_required`` maps HTTP methods to permission names.
    """

    permissions_required: dict[str, str] = {}
    org: Organization
    actor: Actor
    granted: frozenset[str]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        slug = kwargs.get("org_slug")
        if isinstance(request.auth, ApiToken):
            token = request.auth
            if Scope.SCIM in token.scopes:
                # The SCIM token provisions members at /scim/v2/ and reads nothing else.
                raise PermissionMissing(
                    "A SCIM token may call only the SCIM endpoints under /scim/v2/.",
                    code="scim_token",
                )
            if slug is not None and slug != token.organization.slug:
                raise NotFound("Organization not found.")
            self.org = token.organization
            self.granted = token.permissions
            self.actor = Actor.from_request(request._request, token=token)
        else:
            if slug is None:
                raise ValidationFailed(
                    "Session requests name the organization in the URL: /api/v1/o/<slug>/...",
                    code="organization_required",
                )
            org = Organization.objects.filter(slug=slug).first()
            membership = membership_for_user(org=org, user=request.user) if org else None
            # A deactivated membership (SCIM ``active: false``) is no membership.
            if org is None or membership is None or membership.deactivated_at is not None:
                raise NotFound("Organization not found.")
            if not org.is_active:
                raise PermissionMissing(
                    f"The organization '{org.slug}' is {org.status}; access is refused.",
                    code="organization_inactive",
                )
            self.org = org
            self.granted = membership.permissions
            self.actor = Actor.from_request(request._request)
        # Read by saas.middleware.ApiUsageMiddleware to meter the request for this organization.
        request._request.strata_org = self.org  # type: ignore[attr-defined]
        needed = self.permissions_required.get(request.method or "GET")
        if needed is None and request.method in ("HEAD", "OPTIONS"):
            needed = self.permissions_required.get("GET")
        if needed is not None:
            self.require(needed)

    def require(self, permission: str) -> None:
        if permission in self.granted:
            return
        what = PERMISSION_DESCRIPTIONS.get(permission, permission)
        if isinstance(self.request.auth, ApiToken):
            scope = PERMISSION_SCOPE.get(permission, "admin")
            message = f"This token lacks the scope '{scope}' needed for the permission '{permission}' ({what})."
        else:
            message = f"Your role lacks the permission '{permission}' ({what})."
        raise PermissionMissing(
            message, code="permission_denied", fields={"permission": [permission]}
        )


class NamedChoiceField(serializers.ChoiceField):
    """A choice field documented as its own named enum component.

    Several resources have a ``state`` with different values; spectacular cannot name those
    enums unambiguously by field name once one of them appears in two components (webhook list
    and webhook detail), so each state set gets an explicit name instead (the schema extension is
    ``tenants.apis.NamedChoiceFieldExtension``: importing spectacular's plumbing here would load DRF's
    settings while they name this module).
    """

    def __init__(self, *, enum_name: str, **kwargs: Any) -> None:
        self.enum_name = enum_name
        super().__init__(**kwargs)
