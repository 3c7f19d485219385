"""REST API of the C-STORE listener's AE titles: the called AE titles an organization owns, and
who may call them (calling AE titles, networks, or anyone); and of the organization's DICOM
destinations (the peers C-MOVE sends to) with their C-ECHO test. Another organization's id
answers 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.ae_titles import selectors, services
from archive.models import DicomAE, DicomDestination
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


# --- destinations --------------------------------------------------------------------------------


class DestinationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ae_title = serializers.CharField(
        help_text="The destination's AE title: what a C-MOVE names as its Move Destination "
        "(matched exactly); unique in the organization regardless of case."
    )
    host = serializers.CharField(help_text="DNS name or IP address the destination listens on.")
    port = serializers.IntegerField(help_text="TCP port, 1-65535.")
    tls = serializers.BooleanField(
        help_text="True: associations use TLS and the destination's certificate must be valid "
        "for the host."
    )
    description = serializers.CharField(help_text="Free text, e.g. which PACS or workstation.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_echo_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When the last C-ECHO test ran; null: never, or the "
        "destination's AE title, host, port or TLS changed since.",
    )
    last_echo_ok = serializers.BooleanField(
        allow_null=True, help_text="Whether the last C-ECHO test succeeded; null: not tested."
    )
    last_echo_message = serializers.CharField(
        help_text="The last test's outcome in words: the time it took, or why it failed "
        "(refused address, connection refused, TLS error, association rejected, timed out)."
    )

    class Meta:
        ref_name = "ArchiveDicomDestination"


class DestinationInputSerializer(serializers.Serializer):
    ae_title = serializers.CharField(
        max_length=64, help_text="1-16 printable ASCII characters, no backslash."
    )
    host = serializers.CharField(
        max_length=300,
        help_text="A DNS name or an IP address, without scheme, path or port. It must resolve to "
        "public addresses unless the operator allows private networks.",
    )
    port = serializers.IntegerField(min_value=1, max_value=65535)
    tls = serializers.BooleanField(required=False, default=False)
    description = serializers.CharField(
        max_length=300,
        required=False,
        default="",
        allow_blank=True,
        help_text="At most 200 characters.",
    )

    class Meta:
        ref_name = "ArchiveDicomDestinationCreate"


class DestinationUpdateSerializer(serializers.Serializer):
    ae_title = serializers.CharField(max_length=64, required=False)
    host = serializers.CharField(max_length=300, required=False)
    port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    tls = serializers.BooleanField(required=False)
    description = serializers.CharField(max_length=300, required=False, allow_blank=True)

    class Meta:
        ref_name = "ArchiveDicomDestinationUpdate"


class DestinationListApi(OrgAPIView):
    """The organization's DICOM destinations: the peers a C-MOVE may send its images to."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE, "POST": Perm.STORAGE_MANAGE}
    pagination_class = OldestFirstPagination

    @extend_schema(
        tags=["dicom-destinations"],
        summary="List destinations",
        responses={200: DestinationOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(
            self, request, selectors.destination_list(org=self.org), DestinationOutputSerializer
        )

    @extend_schema(
        tags=["dicom-destinations"],
        summary="Add a destination",
        description="The AE title must be unique in the organization regardless of case; the "
        "host must resolve to public addresses unless the operator allows private networks "
        "(ARCHIVE_ALLOW_PRIVATE_ENDPOINTS). Nothing is contacted: test with `echo/`.",
        request=DestinationInputSerializer,
        responses={201: DestinationOutputSerializer, **error_responses(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = DestinationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        destination = services.destination_create(
            org=self.org, actor=self.actor, **serializer.validated_data
        )
        return Response(
            DestinationOutputSerializer(destination).data, status=status.HTTP_201_CREATED
        )


class DestinationDetailApi(OrgAPIView):
    """One destination."""

    permissions_required = {
        "GET": Perm.STORAGE_MANAGE,
        "PATCH": Perm.STORAGE_MANAGE,
        "DELETE": Perm.STORAGE_MANAGE,
    }

    @extend_schema(
        tags=["dicom-destinations"],
        summary="One destination",
        responses={200: DestinationOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, destination_id: int, **kwargs: Any) -> Response:
        destination = selectors.destination_get(org=self.org, destination_id=destination_id)
        return Response(DestinationOutputSerializer(destination).data)

    @extend_schema(
        tags=["dicom-destinations"],
        summary="Change a destination",
        description="Fields left out keep their value. A change of AE title, host, port or TLS "
        "clears the last test result.",
        request=DestinationUpdateSerializer,
        responses={200: DestinationOutputSerializer, **error_responses(400)},
    )
    def patch(self, request: Request, destination_id: int, **kwargs: Any) -> Response:
        destination: DicomDestination = selectors.destination_get(
            org=self.org, destination_id=destination_id
        )
        serializer = DestinationUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        destination = services.destination_update(
            org=self.org,
            destination=destination,
            ae_title=data.get("ae_title", destination.ae_title),
            host=data.get("host", destination.host),
            port=data.get("port", destination.port),
            tls=data.get("tls", destination.tls),
            description=data.get("description", destination.description),
            actor=self.actor,
        )
        return Response(DestinationOutputSerializer(destination).data)

    @extend_schema(
        tags=["dicom-destinations"],
        summary="Delete a destination",
        description="C-MOVE requests naming it are refused (0xA801) from then on.",
        responses={204: None, **error_responses()},
    )
    def delete(self, request: Request, destination_id: int, **kwargs: Any) -> Response:
        destination = selectors.destination_get(org=self.org, destination_id=destination_id)
        services.destination_delete(org=self.org, destination=destination, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DestinationEchoApi(OrgAPIView):
    """Test a destination with a C-ECHO."""

    permissions_required = {"POST": Perm.STORAGE_MANAGE}

    @extend_schema(
        tags=["dicom-destinations"],
        summary="Test a destination (C-ECHO)",
        description="Opens an association to the destination (TLS when `tls`), sends a C-ECHO "
        "and releases. The outcome is kept on the destination (`last_echo_*`) and returned; a "
        "failed test is a 200 with `last_echo_ok: false` and the reason in "
        "`last_echo_message`. Each step waits at most DIMSE_ECHO_TIMEOUT_SECONDS (10 s by "
        "default). The calling AE title is the organization's first AE title, else "
        "DIMSE_CALLING_AE_TITLE.",
        request=None,
        responses={200: DestinationOutputSerializer, **error_responses()},
    )
    def post(self, request: Request, destination_id: int, **kwargs: Any) -> Response:
        destination = selectors.destination_get(org=self.org, destination_id=destination_id)
        destination = services.destination_echo(
            org=self.org, destination=destination, actor=self.actor
        )
        return Response(DestinationOutputSerializer(destination).data)
