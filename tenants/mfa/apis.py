"""REST API of an organization's second-factor policy: owners only, from a signed-in session
(``security.manage`` is no token scope: whoever may weaken sign-in must have signed in)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.mfa import selectors, services
from tenants.models import SecurityPolicy
from tenants.rest import OrgAPIView, error_responses_for
from tenants.roles import Perm

_errors = error_responses_for(
    {409: "The owner making the change has no second factor of their own (`mfa_enrol_first`)."}
)


class MfaPolicyApi(OrgAPIView):
    permissions_required = {"GET": Perm.SECURITY_MANAGE, "PUT": Perm.SECURITY_MANAGE}

    class InputSerializer(serializers.Serializer):
        mfa_required = serializers.ChoiceField(
            choices=SecurityPolicy.Mfa.choices,
            help_text="`off`: no one must; `admins`: owners and admins must; `all`: every member.",
        )

        class Meta:
            ref_name = "MfaPolicyUpdate"

    class OutputSerializer(serializers.Serializer):
        mfa_required = serializers.ChoiceField(choices=SecurityPolicy.Mfa.choices)
        updated_at = serializers.DateTimeField(allow_null=True)
        members_without_factor = serializers.IntegerField(
            help_text="Active members with neither an authenticator app nor a security key."
        )
        affected_members = serializers.IntegerField(
            help_text="Of those, the ones this policy requires a factor of: they are taken to "
            "enrolment at their next sign-in."
        )

        class Meta:
            ref_name = "MfaPolicy"

    def _output(self, policy: SecurityPolicy) -> Response:
        data = {
            "mfa_required": policy.mfa_required,
            "updated_at": policy.updated_at if policy.pk else None,
            "members_without_factor": selectors.members_without_factor(org=self.org).count(),
            "affected_members": selectors.members_without_factor(
                org=self.org, level=policy.mfa_required
            ).count(),
        }
        return Response(self.OutputSerializer(data).data)

    @extend_schema(
        tags=["security"],
        summary="Who must use a second factor",
        responses={200: OutputSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return self._output(selectors.policy_get(org=self.org))

    @extend_schema(
        tags=["security"],
        summary="Require a second factor of all members, of owners and admins, or of no one",
        request=InputSerializer,
        responses={200: OutputSerializer, **_errors(400, 409)},
    )
    def put(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = services.mfa_policy_update(
            org=self.org, actor=self.actor, mfa_required=serializer.validated_data["mfa_required"]
        )
        return self._output(policy)
