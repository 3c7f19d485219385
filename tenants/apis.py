"""REST API of the tenancy core: organization, members, invitations, tokens, audit log, browser
origins (CORS), webhooks.

Every organization-scoped view subclasses ``tenants.rest.OrgAPIView``: the organization comes from the
bearer token (``/api/v1/...``) or, for a signed-in session, from the URL (``/api/v1/o/<slug>/...``),
and ``permissions_required`` names the permission each HTTP method needs. Views stay thin: a
serializer validates the input, a selector reads, a service writes (and writes the audit event),
a serializer shapes the output. Service errors propagate to ``tenants.rest.exception_handler``.

The platform views at the end are not organization-scoped: they serve Strata's own staff.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent, build_choice_field
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import selectors, services
from tenants.context import Actor
from tenants.csvexport import audit_events_csv
from tenants.errors import NotFound, PermissionMissing
from tenants.models import (
    ApiToken,
    Organization,
    UserSession,
    WebhookDelivery,
    WebhookEndpoint,
)
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OldestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm, Role, Scope
from tenants.useragent import browser_label
from tenants.webhooks import EVENT_TYPES

# --- OpenAPI plumbing ------------------------------------------------------------------------


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``tenants.auth.BearerTokenAuthentication`` as the ``bearerAuth`` scheme."""

    target_class = "tenants.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token: `Authorization: Bearer strata_<prefix>_<secret>`.",
        }


class NamedChoiceFieldExtension(OpenApiSerializerFieldExtension):
    target_class = NamedChoiceField

    def map_serializer_field(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        field = self.target
        schema = build_choice_field(field)
        schema.pop("x-spec-enum-id", None)
        component = ResolvedComponent(
            name=field.enum_name,
            type=ResolvedComponent.SCHEMA,
            object=field.enum_name,
            schema=schema,
        )
        auto_schema.registry.register_on_missing(component)
        return dict(component.ref)


_ERROR_TEXTS = {409: "The change conflicts with the current state (e.g. removing the last owner)."}


_errors = error_responses_for(_ERROR_TEXTS)


# --- pagination ------------------------------------------------------------------------------


# --- organization ----------------------------------------------------------------------------


class OrganizationApi(OrgAPIView):
    permissions_required = {"GET": Perm.ORG_VIEW, "PATCH": Perm.SETTINGS_MANAGE}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)

        class Meta:
            ref_name = "OrganizationUpdate"

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        name = serializers.CharField()
        slug = serializers.SlugField()
        status = serializers.ChoiceField(choices=Organization.Status.choices)
        created_at = serializers.DateTimeField()
        permissions = serializers.SerializerMethodField(
            help_text="What the caller (role or token scopes) may do in this organization."
        )

        class Meta:
            ref_name = "Organization"

        def get_permissions(self, obj: Organization) -> list[str]:
            return sorted(self.context["permissions"])

    def _output(self) -> Response:
        serializer = self.OutputSerializer(self.org, context={"permissions": self.granted})
        return Response(serializer.data)

    @extend_schema(
        tags=["organization"],
        summary="The current organization",
        responses={200: OutputSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return self._output()

    @extend_schema(
        tags=["organization"],
        summary="Rename the organization",
        request=InputSerializer,
        responses={200: OutputSerializer, **_errors(400)},
    )
    def patch(self, request: Request, **kwargs: Any) -> Response:
        # PATCH semantics: an omitted field stays as it is.
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "name" in serializer.validated_data:
            self.org = services.organization_update(
                org=self.org, actor=self.actor, name=serializer.validated_data["name"]
            )
        return self._output()


# --- members ---------------------------------------------------------------------------------


class MemberOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.get_full_name")
    role = serializers.ChoiceField(choices=Role.choices)
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Member"


class MemberListApi(OrgAPIView):
    permissions_required = {"GET": Perm.MEMBERS_VIEW}
    pagination_class = OldestFirstPagination

    class FilterSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices, required=False)
        q = serializers.CharField(
            required=False, max_length=254, help_text="Part of the email address."
        )

    @extend_schema(
        tags=["members"],
        summary="List members",
        parameters=[FilterSerializer],
        responses={200: MemberOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        members = selectors.member_list(org=self.org, **filters.validated_data)
        return paginated(
            view=self, request=request, queryset=members, serializer_class=MemberOutputSerializer
        )


class MemberDetailApi(OrgAPIView):
    permissions_required = {
        "GET": Perm.MEMBERS_VIEW,
        "PATCH": Perm.MEMBERS_MANAGE,
        "DELETE": Perm.MEMBERS_MANAGE,
    }

    class InputSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices)

        class Meta:
            ref_name = "MemberRoleChange"

    @extend_schema(
        tags=["members"], summary="One member", responses={200: MemberOutputSerializer, **_errors()}
    )
    def get(self, request: Request, member_id: int, **kwargs: Any) -> Response:
        membership = selectors.member_get(org=self.org, membership_id=member_id)
        return Response(MemberOutputSerializer(membership).data)

    @extend_schema(
        tags=["members"],
        summary="Change a member's role",
        description="Only an owner may grant, change or remove the owner role; the last owner stays.",
        request=InputSerializer,
        responses={200: MemberOutputSerializer, **_errors(400, 409)},
    )
    def patch(self, request: Request, member_id: int, **kwargs: Any) -> Response:
        membership = selectors.member_get(org=self.org, membership_id=member_id)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "role" in serializer.validated_data:
            membership = services.membership_change_role(
                org=self.org,
                membership=membership,
                actor=self.actor,
                role=serializer.validated_data["role"],
            )
        return Response(MemberOutputSerializer(membership).data)

    @extend_schema(
        tags=["members"],
        summary="Remove a member",
        responses={204: None, **_errors(409)},
    )
    def delete(self, request: Request, member_id: int, **kwargs: Any) -> Response:
        membership = selectors.member_get(org=self.org, membership_id=member_id)
        services.membership_remove(org=self.org, membership=membership, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- invitations -----------------------------------------------------------------------------

INVITATION_STATES = [
    ("pending", "Pending"),
    ("accepted", "Accepted"),
    ("revoked", "Revoked"),
    ("expired", "Expired"),
]


class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)
    state = NamedChoiceField(enum_name="InvitationStateEnum", choices=INVITATION_STATES)
    invited_by = serializers.EmailField(source="invited_by.email", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "Invitation"


class InvitationListApi(OrgAPIView):
    permissions_required = {"GET": Perm.MEMBERS_MANAGE, "POST": Perm.MEMBERS_MANAGE}
    pagination_class = NewestFirstPagination

    class FilterSerializer(serializers.Serializer):
        state = serializers.ChoiceField(choices=INVITATION_STATES[:3], required=False)

    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField()
        role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

        class Meta:
            ref_name = "InvitationCreate"

    @extend_schema(
        tags=["invitations"],
        summary="List invitations",
        parameters=[FilterSerializer],
        responses={200: InvitationOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        invitations = selectors.invitation_list(org=self.org, **filters.validated_data)
        return paginated(
            view=self,
            request=request,
            queryset=invitations,
            serializer_class=InvitationOutputSerializer,
        )

    @extend_schema(
        tags=["invitations"],
        summary="Invite someone by email",
        description="The invitation link goes only to the invited address; it is never returned.",
        request=InputSerializer,
        responses={201: InvitationOutputSerializer, **_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        invitation, _secret = services.invitation_create(
            org=self.org, actor=self.actor, **serializer.validated_data
        )
        return Response(InvitationOutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.MEMBERS_MANAGE, "DELETE": Perm.MEMBERS_MANAGE}

    @extend_schema(
        tags=["invitations"],
        summary="One invitation",
        responses={200: InvitationOutputSerializer, **_errors()},
    )
    def get(self, request: Request, invitation_id: int, **kwargs: Any) -> Response:
        invitation = selectors.invitation_get(org=self.org, invitation_id=invitation_id)
        return Response(InvitationOutputSerializer(invitation).data)

    @extend_schema(
        tags=["invitations"],
        summary="Revoke a pending invitation",
        responses={204: None, **_errors(409)},
    )
    def delete(self, request: Request, invitation_id: int, **kwargs: Any) -> Response:
        invitation = selectors.invitation_get(org=self.org, invitation_id=invitation_id)
        services.invitation_revoke(org=self.org, invitation=invitation, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- API tokens ------------------------------------------------------------------------------

TOKEN_STATES = [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]


class TokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(
        help_text="Identifies the token; the secret starts with strata_<prefix>_."
    )
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))
    state = NamedChoiceField(enum_name="TokenStateEnum", choices=TOKEN_STATES)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)

    class Meta:
        ref_name = "Token"


class TokenCreatedOutputSerializer(TokenOutputSerializer):
    secret = serializers.SerializerMethodField(
        help_text="The bearer secret. Shown once, in this response only."
    )

    class Meta:
        ref_name = "TokenCreated"

    def get_secret(self, obj: ApiToken) -> str:
        # The secret exists only in this response: the database keeps its hash.
        return str(self.context["secret"])


class TokenListApi(OrgAPIView):
    permissions_required = {"GET": Perm.TOKENS_MANAGE, "POST": Perm.TOKENS_MANAGE}
    pagination_class = NewestFirstPagination

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

        class Meta:
            ref_name = "TokenCreate"

    @extend_schema(
        tags=["tokens"],
        summary="List API tokens",
        responses={200: TokenOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        tokens = selectors.token_list(org=self.org)
        return paginated(
            view=self, request=request, queryset=tokens, serializer_class=TokenOutputSerializer
        )

    @extend_schema(
        tags=["tokens"],
        summary="Create an API token",
        description="The response carries the secret; it is stored only as a hash and never shown again.",
        request=InputSerializer,
        responses={201: TokenCreatedOutputSerializer, **_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, secret = services.token_create(
            org=self.org, actor=self.actor, **serializer.validated_data
        )
        data = TokenCreatedOutputSerializer(token, context={"secret": secret}).data
        return Response(data, status=status.HTTP_201_CREATED)


class TokenDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.TOKENS_MANAGE, "DELETE": Perm.TOKENS_MANAGE}

    @extend_schema(
        tags=["tokens"],
        summary="One API token",
        responses={200: TokenOutputSerializer, **_errors()},
    )
    def get(self, request: Request, token_id: int, **kwargs: Any) -> Response:
        token = selectors.token_get(org=self.org, token_id=token_id)
        return Response(TokenOutputSerializer(token).data)

    @extend_schema(
        tags=["tokens"],
        summary="Revoke an API token",
        description="Takes effect on the token's next request. Revoking twice is harmless.",
        responses={204: None, **_errors()},
    )
    def delete(self, request: Request, token_id: int, **kwargs: Any) -> Response:
        token = selectors.token_get(org=self.org, token_id=token_id)
        services.token_revoke(org=self.org, token=token, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- audit log -------------------------------------------------------------------------------


class AuditEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    actor = serializers.CharField(
        source="actor_label", help_text="Who acted, as recorded at the time."
    )
    actor_user = serializers.EmailField(source="actor_user.email", allow_null=True, default=None)
    actor_token = serializers.IntegerField(source="actor_token_id", allow_null=True)
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    target_label = serializers.CharField()
    ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()
    details = serializers.JSONField()

    class Meta:
        ref_name = "AuditEvent"


class AuditFilterSerializer(serializers.Serializer):
    actor = serializers.CharField(
        required=False, max_length=255, help_text="Part of the actor label."
    )
    action = serializers.CharField(
        required=False,
        max_length=64,
        help_text="An action, or a prefix ending in '.' (e.g. 'member.').",
    )
    since = serializers.DateTimeField(required=False, help_text="ISO 8601; inclusive.")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601; exclusive.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since is not None and until is not None and since >= until:
            raise serializers.ValidationError({"until": ["Must be later than 'since'."]})
        return attrs


class AuditEventListApi(OrgAPIView):
    permissions_required = {"GET": Perm.AUDIT_READ}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["audit"],
        summary="List audit events",
        parameters=[AuditFilterSerializer],
        responses={200: AuditEventOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = AuditFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        events = selectors.audit_list(org=self.org, **filters.validated_data).select_related(
            "actor_user"
        )
        return paginated(
            view=self, request=request, queryset=events, serializer_class=AuditEventOutputSerializer
        )


class AuditEventDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.AUDIT_READ}

    @extend_schema(
        tags=["audit"],
        summary="One audit event",
        responses={200: AuditEventOutputSerializer, **_errors()},
    )
    def get(self, request: Request, event_id: int, **kwargs: Any) -> Response:
        event = selectors.audit_get(org=self.org, event_id=event_id)
        return Response(AuditEventOutputSerializer(event).data)


AUDIT_CSV_COLUMNS = [
    "time",
    "actor",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "ip",
    "user_agent",
    "details",
]


def _audit_details(details: Any) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"))


class _ExportSchema(AutoSchema):
    def get_operation_id(self) -> str:
        # The path ends in "export.csv"; a dot in an operationId trips client generators.
        return str(super().get_operation_id()).replace(".", "_")


class AuditEventExportApi(OrgAPIView):
    permissions_required = {"GET": Perm.AUDIT_READ}
    renderer_classes = [JSONRenderer]
    schema = _ExportSchema()

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        # The CSV is streamed as a plain Django response; DRF renders only errors, always as JSON,
        # so an "Accept: text/csv" client gets its CSV or a JSON error, never a 406.
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(
        tags=["audit"],
        summary="Export audit events as CSV",
        description=(
            "Streams the events matching the filters, newest first, with the columns "
            f"{', '.join(AUDIT_CSV_COLUMNS)}. Without `until`, the export ends at the moment of "
            "the request. The export itself is recorded as an `audit.exported` event."
        ),
        parameters=[AuditFilterSerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR, **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> StreamingHttpResponse:
        filters = AuditFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        criteria = {**filters.validated_data}
        criteria.setdefault("until", timezone.now())
        with transaction.atomic():
            services.audit_record(
                org=self.org,
                actor=self.actor,
                action="audit.exported",
                details={
                    "filters": {
                        key: value.isoformat() if hasattr(value, "isoformat") else value
                        for key, value in criteria.items()
                    }
                },
            )
        # iterator(): rows are read in chunks while streaming, so memory stays flat for any size.
        events = selectors.audit_list(org=self.org, **criteria).iterator(chunk_size=1000)
        response = StreamingHttpResponse(
            audit_events_csv(events, header=AUDIT_CSV_COLUMNS, details=_audit_details),
            content_type="text/csv; charset=utf-8",
        )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = (
            f'attachment; filename="audit-{self.org.slug}-{stamp}.csv"'
        )
        return response


# --- browser origins (CORS) ------------------------------------------------------------------

_CORS_DESCRIPTION = (
    "A browser origin (`scheme://host[:port]`) allowed to call this organization's APIs "
    "(DICOMweb at /dicomweb/ and the REST API at /api/v1/) with a bearer token, e.g. a web viewer "
    "served from another site. None is allowed by default. A preflight (OPTIONS) is answered "
    "without credentials when any organization allows the origin; every other request gets "
    "`Access-Control-Allow-Origin` only when its token's organization allows it. Credentials "
    "(cookies) are never allowed cross-origin, and the portal and the session API "
    "(/api/v1/o/<slug>/) are never CORS-enabled."
)


class CorsOriginOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    origin = serializers.CharField(
        help_text="Normalized as browsers send it: lower case, without the scheme's default port."
    )
    description = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "CorsOrigin"


class CorsOriginListApi(OrgAPIView):
    permissions_required = {"GET": Perm.SETTINGS_MANAGE, "POST": Perm.SETTINGS_MANAGE}
    pagination_class = OldestFirstPagination

    class InputSerializer(serializers.Serializer):
        origin = serializers.CharField(
            max_length=300,
            help_text="`https://host[:port]` or `http://host[:port]`: no path, query, user name "
            "or wildcard.",
        )
        description = serializers.CharField(
            max_length=200, required=False, allow_blank=True, default=""
        )

        class Meta:
            ref_name = "CorsOriginCreate"

    @extend_schema(
        tags=["cors-origins"],
        summary="List the browser origins allowed to call the APIs (CORS)",
        description=_CORS_DESCRIPTION,
        responses={200: CorsOriginOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        origins = selectors.cors_origin_list(org=self.org)
        return paginated(
            view=self,
            request=request,
            queryset=origins,
            serializer_class=CorsOriginOutputSerializer,
        )

    @extend_schema(
        tags=["cors-origins"],
        summary="Allow a browser origin (CORS)",
        description=_CORS_DESCRIPTION
        + " An invalid origin answers 400 naming what is wrong; one already allowed answers 409. "
        "At most 50 origins per organization.",
        request=InputSerializer,
        responses={201: CorsOriginOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row = services.cors_origin_add(org=self.org, actor=self.actor, **serializer.validated_data)
        return Response(CorsOriginOutputSerializer(row).data, status=status.HTTP_201_CREATED)


class CorsOriginDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.SETTINGS_MANAGE, "DELETE": Perm.SETTINGS_MANAGE}

    @extend_schema(
        tags=["cors-origins"],
        summary="One allowed browser origin",
        responses={200: CorsOriginOutputSerializer, **_errors()},
    )
    def get(self, request: Request, origin_id: int, **kwargs: Any) -> Response:
        row = selectors.cors_origin_get(org=self.org, origin_id=origin_id)
        return Response(CorsOriginOutputSerializer(row).data)

    @extend_schema(
        tags=["cors-origins"],
        summary="Stop allowing a browser origin",
        responses={204: None, **_errors()},
    )
    def delete(self, request: Request, origin_id: int, **kwargs: Any) -> Response:
        row = selectors.cors_origin_get(org=self.org, origin_id=origin_id)
        services.cors_origin_remove(org=self.org, actor=self.actor, cors_origin=row)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- webhooks --------------------------------------------------------------------------------


class WebhookOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.URLField()
    description = serializers.CharField()
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=list(EVENT_TYPES)),
        help_text="The event types sent to this endpoint; empty means every type.",
    )
    enabled = serializers.SerializerMethodField()
    state = NamedChoiceField(enum_name="WebhookStateEnum", choices=WebhookEndpoint.State.choices)
    consecutive_failures = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Webhook"

    def get_enabled(self, obj: WebhookEndpoint) -> bool:
        return obj.state != WebhookEndpoint.State.DISABLED


class WebhookSecretOutputSerializer(WebhookOutputSerializer):
    secret = serializers.CharField(help_text="The HMAC key of the Strata-Signature header.")

    class Meta:
        ref_name = "WebhookWithSecret"


class WebhookListApi(OrgAPIView):
    permissions_required = {"GET": Perm.WEBHOOKS_MANAGE, "POST": Perm.WEBHOOKS_MANAGE}
    pagination_class = OldestFirstPagination

    class InputSerializer(serializers.Serializer):
        url = serializers.URLField(max_length=1000)
        description = serializers.CharField(
            max_length=200, required=False, allow_blank=True, default=""
        )
        event_types = serializers.ListField(
            child=serializers.ChoiceField(choices=list(EVENT_TYPES)), required=False, default=list
        )

        class Meta:
            ref_name = "WebhookCreate"

    @extend_schema(
        tags=["webhooks"],
        summary="List webhook endpoints",
        responses={200: WebhookOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        endpoints = selectors.webhook_list(org=self.org)
        return paginated(
            view=self, request=request, queryset=endpoints, serializer_class=WebhookOutputSerializer
        )

    @extend_schema(
        tags=["webhooks"],
        summary="Add a webhook endpoint",
        description="The URL must resolve to a public address. The response carries the signing secret.",
        request=InputSerializer,
        responses={201: WebhookSecretOutputSerializer, **_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_create(
            org=self.org, actor=self.actor, **serializer.validated_data
        )
        return Response(
            WebhookSecretOutputSerializer(endpoint).data, status=status.HTTP_201_CREATED
        )


class WebhookDetailApi(OrgAPIView):
    permissions_required = {
        "GET": Perm.WEBHOOKS_MANAGE,
        "PATCH": Perm.WEBHOOKS_MANAGE,
        "DELETE": Perm.WEBHOOKS_MANAGE,
    }

    class InputSerializer(serializers.Serializer):
        url = serializers.URLField(max_length=1000, required=False)
        description = serializers.CharField(max_length=200, required=False, allow_blank=True)
        event_types = serializers.ListField(
            child=serializers.ChoiceField(choices=list(EVENT_TYPES)), required=False
        )
        enabled = serializers.BooleanField(required=False)

        class Meta:
            ref_name = "WebhookUpdate"

    @extend_schema(
        tags=["webhooks"],
        summary="One webhook endpoint, with its signing secret",
        responses={200: WebhookSecretOutputSerializer, **_errors()},
    )
    def get(self, request: Request, webhook_id: int, **kwargs: Any) -> Response:
        endpoint = selectors.webhook_get(org=self.org, endpoint_id=webhook_id)
        return Response(WebhookSecretOutputSerializer(endpoint).data)

    @extend_schema(
        tags=["webhooks"],
        summary="Change a webhook endpoint",
        description="`enabled: true` re-enables a disabled endpoint; `false` stops its deliveries.",
        request=InputSerializer,
        responses={200: WebhookSecretOutputSerializer, **_errors(400)},
    )
    def patch(self, request: Request, webhook_id: int, **kwargs: Any) -> Response:
        endpoint = selectors.webhook_get(org=self.org, endpoint_id=webhook_id)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_update(
            org=self.org, endpoint=endpoint, actor=self.actor, **serializer.validated_data
        )
        return Response(WebhookSecretOutputSerializer(endpoint).data)

    @extend_schema(
        tags=["webhooks"], summary="Delete a webhook endpoint", responses={204: None, **_errors()}
    )
    def delete(self, request: Request, webhook_id: int, **kwargs: Any) -> Response:
        endpoint = selectors.webhook_get(org=self.org, endpoint_id=webhook_id)
        services.webhook_endpoint_delete(org=self.org, endpoint=endpoint, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookTestApi(OrgAPIView):
    permissions_required = {"POST": Perm.WEBHOOKS_MANAGE}

    class OutputSerializer(serializers.Serializer):
        event_id = serializers.UUIDField()

        class Meta:
            ref_name = "WebhookTestQueued"

    @extend_schema(
        tags=["webhooks"],
        summary="Send a test event",
        description="Queues a `webhook.test` event for this endpoint only; see its deliveries for the outcome.",
        request=None,
        responses={202: OutputSerializer, **_errors()},
    )
    def post(self, request: Request, webhook_id: int, **kwargs: Any) -> Response:
        endpoint = selectors.webhook_get(org=self.org, endpoint_id=webhook_id)
        event = services.webhook_send_test(org=self.org, endpoint=endpoint, actor=self.actor)
        return Response(
            self.OutputSerializer({"event_id": event.id}).data, status=status.HTTP_202_ACCEPTED
        )


class WebhookRotateSecretApi(OrgAPIView):
    permissions_required = {"POST": Perm.WEBHOOKS_MANAGE}

    @extend_schema(
        tags=["webhooks"],
        summary="Replace the signing secret",
        description="Deliveries are signed with the new secret from now on; the old one stops verifying.",
        request=None,
        responses={200: WebhookSecretOutputSerializer, **_errors()},
    )
    def post(self, request: Request, webhook_id: int, **kwargs: Any) -> Response:
        endpoint = selectors.webhook_get(org=self.org, endpoint_id=webhook_id)
        endpoint = services.webhook_endpoint_rotate_secret(
            org=self.org, endpoint=endpoint, actor=self.actor
        )
        return Response(WebhookSecretOutputSerializer(endpoint).data)


class WebhookAttemptOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    attempted_at = serializers.DateTimeField()
    status_code = serializers.IntegerField(
        allow_null=True, help_text="Null when no HTTP answer came."
    )
    latency_ms = serializers.IntegerField()
    error = serializers.CharField()

    class Meta:
        ref_name = "WebhookAttempt"


class WebhookDeliveryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.UUIDField()
    event_type = serializers.CharField(source="event.type")
    state = NamedChoiceField(
        enum_name="WebhookDeliveryStateEnum", choices=WebhookDelivery.State.choices
    )
    attempt_count = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    attempts = WebhookAttemptOutputSerializer(many=True, help_text="Newest first.")

    class Meta:
        ref_name = "WebhookDelivery"


class WebhookDeliveryListApi(OrgAPIView):
    permissions_required = {"GET": Perm.WEBHOOKS_MANAGE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["webhooks"],
        summary="Deliveries to a webhook endpoint, with their attempts",
        responses={200: WebhookDeliveryOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, webhook_id: int, **kwargs: Any) -> Response:
        endpoint = selectors.webhook_get(org=self.org, endpoint_id=webhook_id)
        deliveries = selectors.webhook_deliveries(org=self.org, endpoint=endpoint)
        return paginated(
            view=self,
            request=request,
            queryset=deliveries,
            serializer_class=WebhookDeliveryOutputSerializer,
        )


class WebhookEventTypeListApi(OrgAPIView):
    permissions_required = {"GET": Perm.WEBHOOKS_MANAGE}

    class OutputSerializer(serializers.Serializer):
        type = serializers.CharField()
        description = serializers.CharField()

        class Meta:
            ref_name = "WebhookEventType"

    @extend_schema(
        tags=["webhooks"],
        summary="The event types a webhook can subscribe to",
        responses={200: OutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        types = [{"type": name, "description": text} for name, text in EVENT_TYPES.items()]
        return Response(self.OutputSerializer(types, many=True).data)


# --- platform (Strata staff) -----------------------------------------------------------------


class IsPlatformStaff(permissions.BasePermission):
    """A signed-in staff user; tokens belong to one organization and are never platform staff."""

    message = "Only Strata staff signed in to the portal may use the platform API."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if isinstance(request.auth, ApiToken):
            return False
        user = request.user
        return bool(user is not None and user.is_authenticated and getattr(user, "is_staff", False))


class PlatformOrganizationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.SlugField()
    status = serializers.ChoiceField(choices=Organization.Status.choices)
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "PlatformOrganization"


class PlatformOrganizationListApi(APIView):
    permission_classes = [IsPlatformStaff]
    pagination_class = NewestFirstPagination

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Organization.Status.choices, required=False)
        q = serializers.CharField(
            required=False, max_length=200, help_text="Part of the name or slug."
        )

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        slug = serializers.SlugField(max_length=63)
        owner_email = serializers.EmailField()

        class Meta:
            ref_name = "PlatformOrganizationCreate"

    @extend_schema(
        tags=["platform"],
        summary="List all organizations (staff only)",
        parameters=[FilterSerializer],
        responses={200: PlatformOrganizationOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        orgs = selectors.organization_list(**filters.validated_data)
        return paginated(
            view=self,
            request=request,
            queryset=orgs,
            serializer_class=PlatformOrganizationOutputSerializer,
        )

    @extend_schema(
        tags=["platform"],
        summary="Create an organization with its first owner (staff only)",
        description="An owner email without an account gets a new user, who sets a password by email.",
        request=InputSerializer,
        responses={201: PlatformOrganizationOutputSerializer, **_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        org = services.organization_create(
            actor=Actor.from_request(request._request), **serializer.validated_data
        )
        return Response(
            PlatformOrganizationOutputSerializer(org).data, status=status.HTTP_201_CREATED
        )


class PlatformOrganizationDetailApi(APIView):
    permission_classes = [IsPlatformStaff]

    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Organization.Status.choices)

        class Meta:
            ref_name = "PlatformOrganizationStatus"

    @extend_schema(
        tags=["platform"],
        summary="One organization (staff only)",
        responses={200: PlatformOrganizationOutputSerializer, **_errors()},
    )
    def get(self, request: Request, organization_id: int, **kwargs: Any) -> Response:
        org = selectors.organization_get(organization_id=organization_id)
        return Response(PlatformOrganizationOutputSerializer(org).data)

    @extend_schema(
        tags=["platform"],
        summary="Suspend, close or reactivate an organization (staff only)",
        description="A suspended or closed organization's tokens and members are refused.",
        request=InputSerializer,
        responses={200: PlatformOrganizationOutputSerializer, **_errors(400)},
    )
    def patch(self, request: Request, organization_id: int, **kwargs: Any) -> Response:
        org = selectors.organization_get(organization_id=organization_id)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "status" in serializer.validated_data:
            org = services.organization_set_status(
                org=org,
                actor=Actor.from_request(request._request),
                status=serializer.validated_data["status"],
            )
        return Response(PlatformOrganizationOutputSerializer(org).data)


# --- the caller's own signed-in sessions --------------------------------------------------------


class SessionOutputSerializer(serializers.ModelSerializer):
    this_session = serializers.SerializerMethodField(
        help_text="True for the session that made this request."
    )
    browser = serializers.SerializerMethodField(
        help_text="A short name guessed from the User-Agent, e.g. 'Firefox on Linux'."
    )
    method = serializers.CharField(
        help_text="How the session signed in: 'password', later 'sso:<provider>'."
    )

    class Meta:
        model = UserSession
        fields = [
            "id",
            "this_session",
            "method",
            "ip",
            "browser",
            "user_agent",
            "created_at",
            "last_seen_at",
        ]
        ref_name = "Session"

    def get_this_session(self, obj: UserSession) -> bool:
        current = self.context.get("session_key")
        return bool(current) and obj.session_key == current

    def get_browser(self, obj: UserSession) -> str:
        return browser_label(obj.user_agent)


_SESSIONS_DESCRIPTION = (
    "Sessions are the browsers signed in to the portal as the caller. They belong to a person, "
    "so only a signed-in session may read or end them: an API token (which acts for an "
    "organization, not a person) is refused with 403 `session_required`. Under "
    "`/api/v1/o/<slug>/`, the slug must be one of the caller's organizations (404 otherwise); "
    "the sessions listed are the same."
)


class _OwnSessionsView(APIView):
    """Base of the session endpoints: a signed-in person only, never a token."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if isinstance(request.auth, ApiToken):
            raise PermissionMissing(
                "Sessions belong to a person signed in to the portal; an API token has none. "
                "Call this endpoint with a signed-in session.",
                code="session_required",
            )
        slug = kwargs.get("org_slug")
        if slug is not None:
            org = Organization.objects.filter(slug=slug).first()
            if org is None or selectors.membership_for_user(org=org, user=request.user) is None:
                raise NotFound("Organization not found.")


class SessionListApi(_OwnSessionsView):
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["sessions"],
        summary="List your signed-in sessions",
        description=_SESSIONS_DESCRIPTION,
        responses={200: SessionOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        sessions = selectors.user_session_list(user=request.user)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(sessions, request, view=self)
        context = {"session_key": request._request.session.session_key}
        data = SessionOutputSerializer(page, many=True, context=context).data
        return paginator.get_paginated_response(data)


class SessionDetailApi(_OwnSessionsView):
    @extend_schema(
        tags=["sessions"],
        summary="One of your signed-in sessions",
        description=_SESSIONS_DESCRIPTION,
        responses={200: SessionOutputSerializer, **_errors()},
    )
    def get(self, request: Request, session_id: int, **kwargs: Any) -> Response:
        record = selectors.user_session_get(user=request.user, session_id=session_id)
        context = {"session_key": request._request.session.session_key}
        return Response(SessionOutputSerializer(record, context=context).data)

    @extend_schema(
        tags=["sessions"],
        summary="End one of your sessions",
        description=(
            "The session is deleted from the session store: its browser is signed out on its "
            "next request. Ending the session that makes the request signs it out too. Audited "
            "as `session.ended`. Another person's session id answers 404, as does an ended one."
            + " "
            + _SESSIONS_DESCRIPTION
        ),
        responses={204: None, **_errors()},
    )
    def delete(self, request: Request, session_id: int, **kwargs: Any) -> Response:
        record = selectors.user_session_get(user=request.user, session_id=session_id)
        is_current = record.session_key == request._request.session.session_key
        services.user_session_end(
            user_session=record,
            actor=Actor.from_request(request._request),
            reason="ended by its owner (API)",
        )
        if is_current:
            # The session that made this request was the one ended: nothing of it may be saved.
            request._request.session.flush()
        return Response(status=status.HTTP_204_NO_CONTENT)
