"""REST API of the C-STORE listener's AE titles: the called AE titles an organization owns, and
who may call them (calling AE titles, networks, or anyone). Another organization's id answers 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.ae_titles import selectors, services
from archive.models import DicomAE
from tenants.errors import ValidationFailed
from tenants.rest import (
    OldestFirstPagination,
    OrgAPIView,
    error_responses,
    paginated,
)
from tenants.roles import Perm


class AEOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ae_title = serializers.CharField(
        help_text="The called AE title; unique across Strata regardless of case."
    )
    allowed_calling_ae_titles = serializers.ListField(
        child=serializers.CharField(),
        help_text="Calling AE titles admitted; empty: this restriction does not apply.",
    )
    allowed_networks = serializers.ListField(
        child=serializers.CharField(),
        help_text="IP addresses or CIDR ranges admitted; empty: this restriction does not apply.",
    )
    allow_any_caller = serializers.BooleanField(
        help_text="True: any calling AE title from any address is admitted (both lists are "
        "empty), by an explicit, audited choice."
    )
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ArchiveDicomAE"


class AEInputSerializer(serializers.Serializer):
    ae_title = serializers.CharField(max_length=64)
    allowed_calling_ae_titles = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list
    )
    allowed_networks = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list
    )
    allow_any_caller = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Required as true when both lists are empty: admit any caller from anywhere. "
        "Not allowed together with a restriction.",
    )

    class Meta:
        ref_name = "ArchiveDicomAECreate"


class AEUpdateSerializer(serializers.Serializer):
    allowed_calling_ae_titles = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False
    )
    allowed_networks = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False
    )
    allow_any_caller = serializers.BooleanField(
        required=False,
        help_text="Omitted: kept while both lists stay empty, cleared when a restriction is set.",
    )

    class Meta:
        ref_name = "ArchiveDicomAEUpdate"


class AEListApi(OrgAPIView):
    """The called AE titles of the organization on the shared C-STORE listener."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE, "POST": Perm.STORAGE_MANAGE}
    pagination_class = OldestFirstPagination

    @extend_schema(
        tags=["dicom-aes"],
        summary="List AE titles",
        responses={200: AEOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(self, request, selectors.ae_list(org=self.org), AEOutputSerializer)

    @extend_schema(
        tags=["dicom-aes"],
        summary="Add an AE title",
        description="Needs a restriction (allowed_calling_ae_titles or allowed_networks) or "
        "allow_any_caller=true; the title must be unique regardless of case.",
        request=AEInputSerializer,
        responses={201: AEOutputSerializer, **error_responses(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = AEInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ae = services.ae_create(org=self.org, actor=self.actor, **serializer.validated_data)
        return Response(AEOutputSerializer(ae).data, status=status.HTTP_201_CREATED)


class AEDetailApi(OrgAPIView):
    """One AE title."""

    permissions_required = {
        "GET": Perm.STORAGE_MANAGE,
        "PATCH": Perm.STORAGE_MANAGE,
        "DELETE": Perm.STORAGE_MANAGE,
    }

    @extend_schema(
        tags=["dicom-aes"],
        summary="One AE title",
        responses={200: AEOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, ae_id: int, **kwargs: Any) -> Response:
        ae = selectors.ae_get(org=self.org, ae_id=ae_id)
        return Response(AEOutputSerializer(ae).data)

    @extend_schema(
        tags=["dicom-aes"],
        summary="Change who may send to an AE title",
        description="The title itself cannot be renamed: add a new one and delete the old.",
        request=AEUpdateSerializer,
        responses={200: AEOutputSerializer, **error_responses(400)},
    )
    def patch(self, request: Request, ae_id: int, **kwargs: Any) -> Response:
        ae: DicomAE = selectors.ae_get(org=self.org, ae_id=ae_id)
        body = request.data if isinstance(request.data, dict) else {}
        if "ae_title" in body and body["ae_title"] != ae.ae_title:
            raise ValidationFailed(
                "An AE title cannot be renamed.",
                fields={"ae_title": ["Add a new AE title and delete this one instead."]},
            )
        serializer = AEUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        calling = data.get("allowed_calling_ae_titles", ae.allowed_calling_ae_titles)
        networks = data.get("allowed_networks", ae.allowed_networks)
        # Setting a restriction needs no second field to say that any caller is no longer meant.
        any_caller = data.get(
            "allow_any_caller", ae.allow_any_caller and not calling and not networks
        )
        ae = services.ae_update(
            org=self.org,
            ae=ae,
            allowed_calling_ae_titles=calling,
            allowed_networks=networks,
            allow_any_caller=any_caller,
            actor=self.actor,
        )
        return Response(AEOutputSerializer(ae).data)

    @extend_schema(
        tags=["dicom-aes"],
        summary="Delete an AE title",
        description="The listener refuses associations to it from then on.",
        responses={204: None, **error_responses()},
    )
    def delete(self, request: Request, ae_id: int, **kwargs: Any) -> Response:
        ae = selectors.ae_get(org=self.org, ae_id=ae_id)
        services.ae_delete(org=self.org, ae=ae, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)
