"""REST API of single sign-on settings: the identity provider and the email domains.

Owners only (``security.manage``), and only from a signed-in session: an API token acts for the
organization, not for a person, and whoever can map IdP groups to roles can make themselves an
owner, so no token may read or change these settings (403 ``session_required``).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.errors import PermissionMissing
from tenants.models import ApiToken, EmailDomain, IdentityProvider
from tenants.rest import OldestFirstPagination, OrgAPIView, error_responses_for, paginated
from tenants.roles import Perm, Role
from tenants.sso import selectors, services
from tenants.sso.saml import MAX_METADATA_BYTES
from tenants.sso.views import callback_url, saml_acs_url, saml_sp_entity_id

_errors = error_responses_for(
    {
        403: "Not an owner (`security.manage`), or called with an API token "
        "(`session_required`): these settings are changed from a signed-in session only.",
        409: "The email domain is claimed already, or verified by another organization "
        "(`domain_taken`), or is the last verified domain while SSO is required.",
    }
)
_TAG = ["single sign-on"]


class _SecurityApi(OrgAPIView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if isinstance(request.auth, ApiToken):
            raise PermissionMissing(
                "Single sign-on settings are changed by an owner signed in to the portal; an API "
                "token cannot read or change them.",
                code="session_required",
            )
        super().initial(request, *args, **kwargs)


class ProviderOutputSerializer(serializers.Serializer):
    configured = serializers.BooleanField()
    protocol = serializers.CharField()
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    issuer = serializers.CharField()
    client_id = serializers.CharField()
    has_client_secret = serializers.BooleanField(help_text="The secret itself is never returned.")
    scopes = serializers.CharField()
    groups_claim = serializers.CharField()
    role_mapping = serializers.DictField(child=serializers.ChoiceField(choices=Role.choices))
    sso_required = serializers.BooleanField()
    redirect_uri = serializers.CharField(
        help_text="OpenID Connect: register this at the identity provider."
    )
    saml_metadata_url = serializers.CharField()
    has_saml_metadata = serializers.BooleanField(
        help_text="SAML: the IdP's metadata is stored (fetched from the URL or pasted)."
    )
    saml_sp_entity_id = serializers.CharField(
        help_text="SAML: Strata's entity id for this organization; register it at the IdP."
    )
    saml_acs_url = serializers.CharField(
        help_text="SAML: the Assertion Consumer Service URL (HTTP-POST) to register at the IdP."
    )

    class Meta:
        ref_name = "SsoProvider"


def _provider_data(provider: IdentityProvider | None, request: Any, org: Any) -> dict[str, Any]:
    redirect_uri = callback_url(request)
    saml_data = {
        "saml_metadata_url": provider.saml_metadata_url if provider else "",
        "has_saml_metadata": bool(provider and provider.saml_metadata_xml),
        "saml_sp_entity_id": saml_sp_entity_id(request, org),
        "saml_acs_url": saml_acs_url(request),
    }
    if provider is None:
        return saml_data | {
            "configured": False,
            "protocol": "oidc",
            "name": "",
            "enabled": False,
            "issuer": "",
            "client_id": "",
            "has_client_secret": False,
            "scopes": "openid email profile",
            "groups_claim": "groups",
            "role_mapping": {},
            "sso_required": False,
            "redirect_uri": redirect_uri,
        }
    return saml_data | {
        "configured": True,
        "protocol": provider.protocol,
        "name": provider.name,
        "enabled": provider.enabled,
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "has_client_secret": bool(provider.client_secret_encrypted),
        "scopes": provider.scopes,
        "groups_claim": provider.groups_claim,
        "role_mapping": provider.role_mapping,
        "sso_required": provider.sso_required,
        "redirect_uri": redirect_uri,
    }


class ProviderApi(_SecurityApi):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "PUT": Perm.SECURITY_MANAGE}

    class InputSerializer(serializers.Serializer):
        protocol = serializers.ChoiceField(
            choices=IdentityProvider.Protocol.choices, required=False, default="oidc"
        )
        name = serializers.CharField(max_length=100)
        issuer = serializers.CharField(
            max_length=500, required=False, allow_blank=True, default="", help_text="OpenID Connect"
        )
        client_id = serializers.CharField(
            max_length=255, required=False, allow_blank=True, default="", help_text="OpenID Connect"
        )
        saml_metadata_url = serializers.CharField(
            max_length=500,
            required=False,
            allow_blank=True,
            default="",
            help_text="SAML: the IdP's metadata URL, fetched when saved.",
        )
        saml_metadata_xml = serializers.CharField(
            max_length=MAX_METADATA_BYTES,
            required=False,
            allow_blank=True,
            default="",
            trim_whitespace=False,
            help_text="SAML: the IdP's metadata document, when it has no URL Strata can reach.",
        )
        client_secret = serializers.CharField(
            max_length=1000,
            required=False,
            allow_blank=True,
            write_only=True,
            help_text="Omit or leave empty to keep the stored secret.",
        )
        scopes = serializers.CharField(
            max_length=255, required=False, default="openid email profile"
        )
        groups_claim = serializers.CharField(max_length=100, required=False, default="groups")
        role_mapping = serializers.DictField(
            child=serializers.ChoiceField(choices=Role.choices), allow_empty=True
        )
        sso_required = serializers.BooleanField(required=False, default=False)
        enabled = serializers.BooleanField(required=False, default=True)

        class Meta:
            ref_name = "SsoProviderUpdate"

    @extend_schema(
        tags=_TAG,
        summary="The organization's identity provider (OpenID Connect or SAML 2.0)",
        responses={200: ProviderOutputSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        provider = selectors.provider_get(org=self.org)
        return Response(_provider_data(provider, request._request, self.org))

    @extend_schema(
        tags=_TAG,
        summary="Set the organization's identity provider (OpenID Connect or SAML 2.0)",
        request=InputSerializer,
        responses={200: ProviderOutputSerializer, **_errors(400)},
    )
    def put(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        data["client_secret"] = data.get("client_secret") or None
        provider = services.provider_update(org=self.org, actor=self.actor, **data)
        return Response(_provider_data(provider, request._request, self.org))


class DomainOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    domain = serializers.CharField()
    verified = serializers.SerializerMethodField()
    verified_at = serializers.DateTimeField(allow_null=True)
    verified_by = serializers.CharField()
    txt_record_name = serializers.SerializerMethodField()
    txt_record_value = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "SsoEmailDomain"

    def get_verified(self, obj: EmailDomain) -> bool:
        return obj.verified_at is not None

    def get_txt_record_name(self, obj: EmailDomain) -> str:
        return services.domain_txt_name(obj)

    def get_txt_record_value(self, obj: EmailDomain) -> str:
        return services.domain_txt_value(obj)


class DomainListApi(_SecurityApi):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "POST": Perm.SECURITY_MANAGE}
    pagination_class = OldestFirstPagination

    class InputSerializer(serializers.Serializer):
        domain = serializers.CharField(max_length=253)

        class Meta:
            ref_name = "SsoEmailDomainCreate"

    @extend_schema(
        tags=_TAG,
        summary="List the organization's email domains",
        responses={200: DomainOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(
            view=self,
            request=request,
            queryset=selectors.domain_list(org=self.org),
            serializer_class=DomainOutputSerializer,
        )

    @extend_schema(
        tags=_TAG,
        summary="Claim an email domain",
        description="Publish the TXT record the answer names, then verify.",
        request=InputSerializer,
        responses={201: DomainOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        record = services.domain_add(
            org=self.org, actor=self.actor, domain=serializer.validated_data["domain"]
        )
        return Response(DomainOutputSerializer(record).data, status=status.HTTP_201_CREATED)


class DomainDetailApi(_SecurityApi):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "DELETE": Perm.SECURITY_MANAGE}

    @extend_schema(
        tags=_TAG,
        summary="One email domain",
        responses={200: DomainOutputSerializer, **_errors()},
    )
    def get(self, request: Request, domain_id: int, **kwargs: Any) -> Response:
        record = selectors.domain_get(org=self.org, domain_id=domain_id)
        return Response(DomainOutputSerializer(record).data)

    @extend_schema(
        tags=_TAG,
        summary="Remove an email domain",
        responses={204: None, **_errors(409)},
    )
    def delete(self, request: Request, domain_id: int, **kwargs: Any) -> Response:
        record = selectors.domain_get(org=self.org, domain_id=domain_id)
        services.domain_remove(org=self.org, actor=self.actor, domain=record)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DomainVerifyApi(_SecurityApi):
    permissions_required = {"POST": Perm.SECURITY_MANAGE}

    @extend_schema(
        tags=_TAG,
        summary="Verify an email domain by its DNS TXT record",
        request=None,
        responses={200: DomainOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, domain_id: int, **kwargs: Any) -> Response:
        record = selectors.domain_get(org=self.org, domain_id=domain_id)
        record = services.domain_verify_dns(org=self.org, actor=self.actor, domain=record)
        return Response(DomainOutputSerializer(record).data)
