"""REST API of DICOM association activity: the associations PACS, workstations and modalities
opened to the listener, and per association its operations (C-ECHO, C-STORE, C-FIND, C-MOVE,
C-GET, storage commitment) with their final status and outcome (``archive.dimse.activity``).

Read with the ``dicom:read`` scope (permission ``images.read``), like the other archive reads.
Another organization's association answers 404, like an id that does not exist.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from archive.dimse import activity
from archive.models import DicomAssociation, DicomOperation, StorageCommitment
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses,
    paginated,
)
from tenants.roles import Perm

KIND_ENUM = "ArchiveDicomOperationKindEnum"
OUTCOME_ENUM = "ArchiveDicomOperationOutcomeEnum"


class CommitmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = NamedChoiceField(
        enum_name="ArchiveStorageCommitmentStateEnum",
        choices=StorageCommitment.State.choices,
        help_text="pending: the N-EVENT-REPORT is still to be delivered; reported: delivered; "
        "failed: every delivery attempt failed.",
    )
    committed = serializers.SerializerMethodField(
        help_text="Instances committed in the last decision."
    )
    failed = serializers.SerializerMethodField(
        help_text="Instances not committed in the last decision."
    )
    reported_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(help_text="Why the last delivery failed.")

    class Meta:
        ref_name = "ArchiveDicomOperationCommitment"

    def get_committed(self, obj: StorageCommitment) -> int | None:
        value = (obj.result or {}).get("committed")
        return value if isinstance(value, int) else None

    def get_failed(self, obj: StorageCommitment) -> int | None:
        value = (obj.result or {}).get("failed")
        return len(value) if isinstance(value, list) else None


class OperationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    association = serializers.IntegerField(source="association_id")
    kind = NamedChoiceField(
        enum_name=KIND_ENUM,
        choices=DicomOperation.Kind.choices,
        help_text="echo and store: every C-ECHO / C-STORE of the association, counted in one "
        "operation; the others: one operation per request.",
    )
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(
        allow_null=True, help_text="For echo and store: the last one so far."
    )
    status = serializers.IntegerField(
        allow_null=True,
        help_text="The final DIMSE status sent (C-STORE: the last failure's, else 0); null when "
        "the association ended first.",
    )
    status_hex = serializers.CharField(help_text='The status as "0xA801"; empty when null.')
    outcome = NamedChoiceField(
        enum_name=OUTCOME_ENUM,
        choices=DicomOperation.Outcome.choices,
        help_text="From the status (0x0000 success, 0xFE00 cancelled, 0xBxxx warning, other "
        "failure); echo/store: success when all succeeded, failure when none did, else warning.",
    )
    model = serializers.CharField(
        help_text="Query/retrieve information model: Patient Root or Study Root."
    )
    level = serializers.CharField(help_text="QueryRetrieveLevel: PATIENT, STUDY, SERIES, IMAGE.")
    keys = serializers.ListField(
        child=serializers.CharField(),
        help_text="The keys that carried a value (C-FIND matching keys; C-MOVE/C-GET unique "
        "keys). Never their values.",
    )
    details = serializers.DictField(
        help_text="return_keys (C-FIND keys asked to be returned), uids (C-MOVE/C-GET UIDs "
        "named per level), remaining, restore_id."
    )
    matches = serializers.IntegerField(
        allow_null=True,
        help_text="C-FIND: matches sent; C-MOVE/C-GET: sub-operations; commitment: instances "
        "requested.",
    )
    completed = serializers.IntegerField(allow_null=True)
    failed = serializers.IntegerField(allow_null=True)
    warning = serializers.IntegerField(allow_null=True)
    bytes = serializers.IntegerField(
        allow_null=True, help_text="C-STORE: received; C-MOVE/C-GET: sent."
    )
    destination_ae = serializers.CharField(help_text="C-MOVE: the Move Destination asked for.")
    comment = serializers.CharField(help_text="The Error Comment sent with a failure or warning.")
    commitment = CommitmentSerializer(allow_null=True, help_text="Storage commitment: its report.")
    ingest_job = serializers.IntegerField(
        source="ingest_job_id",
        allow_null=True,
        help_text="C-STORE: the association's ingest job (GET /ingest-jobs/{id}/failures/).",
    )

    class Meta:
        ref_name = "ArchiveDicomOperation"


class AssociationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    called_ae = serializers.CharField(help_text="The organization's AE title that was called.")
    calling_ae = serializers.CharField()
    address = serializers.CharField(help_text="The peer's IP address.")
    direction = NamedChoiceField(
        enum_name="ArchiveDicomAssociationDirectionEnum",
        choices=DicomAssociation.Direction.choices,
    )
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    end = NamedChoiceField(
        enum_name="ArchiveDicomAssociationEndEnum",
        choices=DicomAssociation.End.choices,
        help_text="open (or the listener stopped without closing it), released, aborted, "
        "ended (the connection closed or timed out).",
    )
    outcome = serializers.CharField(
        help_text="The worst outcome of its operations (failure, warning, cancelled, "
        "success); empty while it has none."
    )
    counts = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        help_text='Per operation kind and outcome, e.g. {"find": {"success": 3}, "store": '
        '{"success": 120, "failure": 2}} (C-STORE and C-ECHO count instances and echoes).',
    )

    class Meta:
        ref_name = "ArchiveDicomAssociation"


class AssociationFilterSerializer(serializers.Serializer):
    ae_title = serializers.CharField(
        max_length=16,
        required=False,
        help_text="Called or calling AE title, regardless of case.",
    )
    kind = NamedChoiceField(
        enum_name=KIND_ENUM,
        choices=DicomOperation.Kind.choices,
        required=False,
        help_text="Only associations with an operation of this kind.",
    )
    outcome = NamedChoiceField(
        enum_name=OUTCOME_ENUM,
        choices=DicomOperation.Outcome.choices,
        required=False,
        help_text="Only associations with an operation of this outcome (of ``kind`` when given).",
    )

    class Meta:
        ref_name = "ArchiveDicomAssociationFilter"


class OperationFilterSerializer(serializers.Serializer):
    kind = NamedChoiceField(
        enum_name=KIND_ENUM, choices=DicomOperation.Kind.choices, required=False
    )
    outcome = NamedChoiceField(
        enum_name=OUTCOME_ENUM, choices=DicomOperation.Outcome.choices, required=False
    )

    class Meta:
        ref_name = "ArchiveDicomOperationFilter"


class AssociationListApi(OrgAPIView):
    """The organization's DICOM associations, newest first."""

    permissions_required = {"GET": Perm.IMAGES_READ}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["dicom-associations"],
        summary="List DICOM associations",
        description="Every association the listener admitted for one of the organization's AE "
        "titles, kept `DIMSE_ACTIVITY_RETENTION_DAYS` (90 by default). Rejected associations "
        "are not listed (the listener logs them).",
        parameters=[AssociationFilterSerializer],
        responses={200: AssociationOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = AssociationFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        associations = activity.association_list(org=self.org, **filters.validated_data)
        return paginated(self, request, associations, AssociationOutputSerializer)


class AssociationDetailApi(OrgAPIView):
    """One association."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["dicom-associations"],
        summary="One DICOM association",
        responses={200: AssociationOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, association_id: int, **kwargs: Any) -> Response:
        association = activity.association_get(org=self.org, association_id=association_id)
        return Response(AssociationOutputSerializer(association).data)


class AssociationOperationListApi(OrgAPIView):
    """An association's operations, newest first."""

    permissions_required = {"GET": Perm.IMAGES_READ}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["dicom-associations"],
        summary="Operations of a DICOM association",
        parameters=[OperationFilterSerializer],
        responses={200: OperationOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, association_id: int, **kwargs: Any) -> Response:
        association = activity.association_get(org=self.org, association_id=association_id)
        filters = OperationFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        operations = activity.operations_of(
            org=self.org, association=association, **filters.validated_data
        )
        return paginated(self, request, operations, OperationOutputSerializer)
