"""REST API of the disaster-recovery replica: replication status and lag, failed replicas (and
retrying them), DR drills (list, one, run one).

Same rules as ``archive.studies.apis``: ``OrgAPIView`` scopes everything to the caller's organization,
another organization's id answers 404, components are named "Archive...".
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.common.api import tier_field
from archive.models import InstanceReplica, ReplicaCheck
from archive.replicas import selectors, services
from archive.replicas.drill import DRILL_DEFAULT_SAMPLE, replica_drill
from tenants.errors import NotFound
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm

API_MAX_SAMPLE = 1000

_ERROR_TEXTS = {409: "The organization has no replica location."}


_errors = error_responses_for(_ERROR_TEXTS)


class DrillProblemSerializer(serializers.Serializer):
    sop_instance_uid = serializers.CharField()
    problem = serializers.ChoiceField(choices=["missing", "mismatched"])
    detail = serializers.CharField(required=False)

    class Meta:
        ref_name = "ArchiveDrillProblem"


class DrillOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    location = serializers.IntegerField(source="location_id")
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    sampled = serializers.IntegerField()
    verified = serializers.IntegerField()
    missing = serializers.IntegerField()
    mismatched = serializers.IntegerField()
    bytes_read = serializers.IntegerField()
    ok = serializers.SerializerMethodField(help_text="Nothing missing and nothing mismatched.")
    problems = DrillProblemSerializer(many=True)

    class Meta:
        ref_name = "ArchiveDrill"

    def get_ok(self, obj: ReplicaCheck) -> bool:
        return obj.missing == 0 and obj.mismatched == 0


class ReplicaFailureSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    instance = serializers.IntegerField(source="instance_id")
    sop_instance_uid = serializers.CharField(source="instance.sop_instance_uid")
    study = serializers.IntegerField(source="instance.study_id")
    size_bytes = serializers.IntegerField(source="instance.size_bytes")
    location = serializers.IntegerField(source="location_id")
    tier = tier_field()
    state = NamedChoiceField(
        enum_name="ArchiveReplicaStateEnum", choices=InstanceReplica.State.choices
    )
    attempts = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ArchiveReplicaFailure"


class ReplicaFailureListApi(OrgAPIView):
    """Instances whose replica failed after its retries, with the reason."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["replication"],
        summary="Failed replicas",
        responses={200: ReplicaFailureSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(
            self, request, selectors.replica_failures(org=self.org), ReplicaFailureSerializer
        )


class ReplicaRetryApi(OrgAPIView):
    """Send every failed replica back to the queue."""

    permissions_required = {"POST": Perm.STORAGE_MANAGE}

    class OutputSerializer(serializers.Serializer):
        retried = serializers.IntegerField()

        class Meta:
            ref_name = "ArchiveReplicaRetry"

    @extend_schema(
        tags=["replication"],
        summary="Retry failed replicas",
        request=None,
        responses={200: OutputSerializer, **_errors()},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        count = services.replicas_retry_failed(org=self.org, actor=self.actor)
        return Response(self.OutputSerializer({"retried": count}).data)


class DrillListApi(OrgAPIView):
    """DR drills: a random sample read back from the replica and verified."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE, "POST": Perm.STORAGE_MANAGE}
    pagination_class = NewestFirstPagination

    class InputSerializer(serializers.Serializer):
        sample = serializers.IntegerField(
            min_value=1,
            max_value=API_MAX_SAMPLE,
            default=DRILL_DEFAULT_SAMPLE,
            help_text=f"How many replicated instances to read back (1-{API_MAX_SAMPLE}).",
        )

        class Meta:
            ref_name = "ArchiveDrillRun"

    @extend_schema(
        tags=["replication"],
        summary="List DR drills",
        responses={200: DrillOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(self, request, selectors.drill_list(org=self.org), DrillOutputSerializer)

    @extend_schema(
        tags=["replication"],
        summary="Run a DR drill",
        description="Reads back a random sample of replicated instances from the replica "
        "location, recomputes their SHA-256 and compares it with the index. Missing or "
        "damaged replicas are queued to be copied again. Runs while the request waits.",
        request=InputSerializer,
        responses={201: DrillOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        check = replica_drill(
            org=self.org, sample=serializer.validated_data["sample"], actor=self.actor
        )
        return Response(DrillOutputSerializer(check).data, status=status.HTTP_201_CREATED)


class DrillDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.STORAGE_MANAGE}

    @extend_schema(
        tags=["replication"],
        summary="One DR drill",
        responses={200: DrillOutputSerializer, **_errors()},
    )
    def get(self, request: Request, drill_id: int, **kwargs: Any) -> Response:
        check = selectors.drill_list(org=self.org).filter(pk=drill_id).first()
        if check is None:
            raise NotFound("DR drill not found.")
        return Response(DrillOutputSerializer(check).data)
