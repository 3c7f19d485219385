"""REST API of ingest jobs: portal uploads, bucket imports and STOW-RS requests, their progress and
their failures; ``POST`` starts a bucket import. Another organization's job id answers 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.ingest import jobs, selectors
from archive.ingest.selectors import PHASE_LABELS
from archive.models import IngestJob
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses,
    paginated,
)
from tenants.roles import Perm

PHASES = [(key, label) for key, label in PHASE_LABELS.items()]


class IngestJobOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = NamedChoiceField(enum_name="ArchiveIngestJobKindEnum", choices=IngestJob.Kind.choices)
    state = NamedChoiceField(enum_name="ArchiveIngestJobStateEnum", choices=IngestJob.State.choices)
    phase = NamedChoiceField(
        enum_name="ArchiveIngestJobPhaseEnum",
        choices=PHASES,
        help_text="Finer than state: receiving (upload still open), queued, count (listing the "
        "bucket), ingest, done, failed.",
    )
    # A declared field (the metaclass moves it out of the class), not ``Field.source``.
    source = serializers.CharField()  # type: ignore[assignment]
    total_files = serializers.IntegerField(
        allow_null=True, help_text="Known once the upload is finished or the bucket listed."
    )
    total_bytes = serializers.IntegerField(allow_null=True)
    received = serializers.IntegerField(help_text="Objects processed so far.")
    stored = serializers.IntegerField()
    duplicate = serializers.IntegerField(help_text="Already stored with the same bytes; skipped.")
    failed = serializers.IntegerField(help_text="See the job's failures for the reasons.")
    bytes_received = serializers.IntegerField()
    bytes_stored = serializers.IntegerField()
    percent = serializers.IntegerField(allow_null=True)
    rate_bytes_per_second = serializers.IntegerField(allow_null=True)
    eta_seconds = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(help_text="Why the job stopped, when it failed.")
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    heartbeat_at = serializers.DateTimeField(
        allow_null=True, help_text="The worker's last sign of life."
    )

    class Meta:
        ref_name = "ArchiveIngestJob"

    def to_representation(self, instance: IngestJob) -> dict[str, Any]:
        # The derived figures come from one progress computation, read by the fields above.
        progress = selectors.job_progress(instance)
        instance.phase = progress.phase  # type: ignore[attr-defined]
        instance.percent = progress.percent  # type: ignore[attr-defined]
        instance.rate_bytes_per_second = progress.rate_bytes_per_second  # type: ignore[attr-defined]
        instance.eta_seconds = progress.eta_seconds  # type: ignore[attr-defined]
        return dict(super().to_representation(instance))


class IngestJobFilterSerializer(serializers.Serializer):
    kind = NamedChoiceField(
        enum_name="ArchiveIngestJobKindEnum", choices=IngestJob.Kind.choices, required=False
    )
    state = NamedChoiceField(
        enum_name="ArchiveIngestJobStateEnum", choices=IngestJob.State.choices, required=False
    )


class IngestJobListApi(OrgAPIView):
    """Ingest jobs (portal uploads and bucket imports), newest first; POST starts an import."""

    permissions_required = {"GET": Perm.IMAGES_WRITE, "POST": Perm.IMAGES_WRITE}
    pagination_class = NewestFirstPagination

    class InputSerializer(serializers.Serializer):
        bucket = serializers.CharField(max_length=63)
        prefix = serializers.CharField(max_length=255, required=False, allow_blank=True)
        endpoint_url = serializers.CharField(
            max_length=200,
            required=False,
            allow_blank=True,
            help_text="Empty for AWS S3; e.g. https://minio.hospital.example for another S3 API.",
        )
        region = serializers.CharField(max_length=64, required=False, allow_blank=True)
        access_key_id = serializers.CharField(max_length=255)
        secret_access_key = serializers.CharField(
            max_length=255,
            write_only=True,
            help_text="Stored encrypted until the import ends, then removed; never returned.",
        )

        class Meta:
            ref_name = "ArchiveImportJobCreate"

    @extend_schema(
        tags=["ingest"],
        summary="List ingest jobs",
        parameters=[IngestJobFilterSerializer],
        responses={200: IngestJobOutputSerializer(many=True), **error_responses(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = IngestJobFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        job_list = selectors.job_list(org=self.org, **filters.validated_data)
        return paginated(self, request, job_list, IngestJobOutputSerializer)

    @extend_schema(
        tags=["ingest"],
        summary="Import every object under an S3 prefix",
        description="Queues a job that lists `s3://bucket/prefix` and ingests each object (DICOM "
        "files and ZIP archives of them). The bucket is contacted by the job, not by this "
        "request: an unreachable bucket or wrong credentials make the job fail with the reason "
        "in `error`. Follow the job at `GET /ingest-jobs/{id}/`.",
        request=InputSerializer,
        responses={201: IngestJobOutputSerializer, **error_responses(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = jobs.import_job_create(
            org=self.org, data=jobs.ImportInput(**serializer.validated_data), actor=self.actor
        )
        job.refresh_from_db()
        return Response(IngestJobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class IngestJobDetailApi(OrgAPIView):
    """One ingest job with its progress: counters, rate and the time left."""

    permissions_required = {"GET": Perm.IMAGES_WRITE}

    @extend_schema(
        tags=["ingest"],
        summary="One ingest job (progress)",
        responses={200: IngestJobOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, job_id: int, **kwargs: Any) -> Response:
        job = selectors.job_get(org=self.org, job_id=job_id)
        return Response(IngestJobOutputSerializer(job).data)


class IngestFailureOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    source = serializers.CharField(  # type: ignore[assignment]
        help_text="The file name, ZIP member or object key."
    )
    sop_instance_uid = serializers.CharField()
    reason_code = serializers.IntegerField(help_text="PS3.18 / PS3.4 failure reason code.")
    reason_code_hex = serializers.SerializerMethodField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ArchiveIngestFailure"

    def get_reason_code_hex(self, obj: Any) -> str:
        return f"{obj.reason_code:#06x}"


class IngestJobFailureListApi(OrgAPIView):
    """Why objects of a job were not stored, newest first."""

    permissions_required = {"GET": Perm.IMAGES_WRITE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["ingest"],
        summary="Failures of an ingest job",
        responses={200: IngestFailureOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, job_id: int, **kwargs: Any) -> Response:
        job = selectors.job_get(org=self.org, job_id=job_id)
        failures = selectors.job_failures(org=self.org, job=job)
        return paginated(self, request, failures, IngestFailureOutputSerializer)
