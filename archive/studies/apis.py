"""REST API of the studies, series and instances, with their tiers and sizes.

Every view subclasses ``tenants.rest.OrgAPIView`` (organization from the bearer token or from
``/api/v1/o/<slug>/``; ``permissions_required`` per HTTP method). Another organization's id answers
404. Component names start with "Archive" so that they never collide with other apps' components.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from archive.common.api import TierBytesSerializer, tier_field
from archive.index import selectors
from tenants.rest import (
    NewestFirstPagination,
    OldestFirstPagination,
    OrgAPIView,
    error_responses,
    paginated,
)
from tenants.roles import Perm

# --- studies, series, instances --------------------------------------------------------------


@extend_schema_field(
    {"type": "string", "pattern": r"^\d{2}:\d{2}:\d{2}(\.\d{1,6})?$", "example": "10:15:00"}
)
class LocalTimeField(serializers.TimeField):
    """A DICOM time: no time zone, which OpenAPI's "time" format (RFC 3339) would require."""


class StudyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    study_instance_uid = serializers.CharField(source="study_uid")
    patient_id = serializers.CharField()
    patient_name = serializers.CharField(help_text="DICOM person name, e.g. Curie^Marie.")
    patient_birth_date = serializers.DateField(allow_null=True)
    patient_sex = serializers.CharField()
    accession_number = serializers.CharField()
    study_date = serializers.DateField(allow_null=True)
    study_time = LocalTimeField(
        allow_null=True, help_text="As the modality recorded it, without a time zone."
    )
    study_description = serializers.CharField()
    study_id = serializers.CharField()
    referring_physician = serializers.CharField()
    modalities = serializers.ListField(child=serializers.CharField(), source="modality_list")
    series_count = serializers.IntegerField()
    instance_count = serializers.IntegerField()
    total_bytes = serializers.IntegerField()
    bytes_by_tier = TierBytesSerializer(source="*")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    last_accessed_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "ArchiveStudy"


class StudyFilterSerializer(serializers.Serializer):
    patient = serializers.CharField(
        required=False,
        max_length=100,
        help_text="Part of the patient name (any case), or the start of the patient ID.",
    )
    accession = serializers.CharField(
        required=False, max_length=64, help_text="The accession number, exactly."
    )
    modality = serializers.CharField(
        required=False, max_length=16, help_text="One modality, e.g. CT (CT does not match CTA)."
    )
    date_from = serializers.DateField(required=False, help_text="Study date, inclusive.")
    date_to = serializers.DateField(required=False, help_text="Study date, inclusive.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("date_from"), attrs.get("date_to")
        if start and end and start > end:
            raise serializers.ValidationError({"date_to": ["Must not be before 'date_from'."]})
        return attrs


class StudyListApi(OrgAPIView):
    """Studies of the organization, newest first, with the portal's search filters."""

    permissions_required = {"GET": Perm.IMAGES_READ}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["studies"],
        summary="Search studies",
        parameters=[StudyFilterSerializer],
        responses={200: StudyOutputSerializer(many=True), **error_responses(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = StudyFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        studies = selectors.study_list(org=self.org, **filters.validated_data)
        return paginated(self, request, studies, StudyOutputSerializer)


class StudyDetailApi(OrgAPIView):
    """One study with its aggregates (series, instances, bytes per tier)."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["studies"],
        summary="One study",
        responses={200: StudyOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, study_id: int, **kwargs: Any) -> Response:
        study = selectors.study_get(org=self.org, study_id=study_id)
        return Response(StudyOutputSerializer(study).data)


class SeriesOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    study = serializers.IntegerField(source="study_id")
    series_instance_uid = serializers.CharField(source="series_uid")
    modality = serializers.CharField()
    series_number = serializers.IntegerField(allow_null=True)
    series_description = serializers.CharField()
    body_part = serializers.CharField()
    instance_count = serializers.IntegerField()
    total_bytes = serializers.IntegerField()
    bytes_by_tier = TierBytesSerializer(source="*")
    tiers = serializers.SerializerMethodField(
        help_text="The tiers this series' bytes are in, hottest first."
    )
    created_at = serializers.DateTimeField()
    last_accessed_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "ArchiveSeries"

    def get_tiers(self, obj: Any) -> list[str]:
        return selectors.tiers_of(obj)


class StudySeriesListApi(OrgAPIView):
    """The series of one study, by series number."""

    permissions_required = {"GET": Perm.IMAGES_READ}
    pagination_class = OldestFirstPagination

    @extend_schema(
        tags=["studies"],
        summary="Series of a study",
        responses={200: SeriesOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, study_id: int, **kwargs: Any) -> Response:
        study = selectors.study_get(org=self.org, study_id=study_id)
        series = selectors.series_list(org=self.org, study=study)
        return paginated(self, request, series, SeriesOutputSerializer)


class SeriesDetailApi(OrgAPIView):
    """One series."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["studies"],
        summary="One series",
        responses={200: SeriesOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, series_id: int, **kwargs: Any) -> Response:
        series = selectors.series_get(org=self.org, series_id=series_id)
        return Response(SeriesOutputSerializer(series).data)


class InstanceOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    study = serializers.IntegerField(source="study_id")
    series = serializers.IntegerField(source="series_id")
    sop_instance_uid = serializers.CharField()
    sop_class_uid = serializers.CharField()
    transfer_syntax_uid = serializers.CharField()
    instance_number = serializers.IntegerField(allow_null=True)
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField(help_text="SHA-256 of the stored bytes, verified at ingest.")
    tier = tier_field()
    readable = serializers.SerializerMethodField(
        help_text="False in the archive tier: the object must be restored before it can be read."
    )
    received_at = serializers.DateTimeField()
    last_accessed_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "ArchiveInstance"

    def get_readable(self, obj: Any) -> bool:
        return bool(obj.tier != "archive")


class SeriesInstanceListApi(OrgAPIView):
    """The instances of one series, by instance number."""

    permissions_required = {"GET": Perm.IMAGES_READ}
    pagination_class = OldestFirstPagination

    @extend_schema(
        tags=["studies"],
        summary="Instances of a series",
        responses={200: InstanceOutputSerializer(many=True), **error_responses()},
    )
    def get(self, request: Request, series_id: int, **kwargs: Any) -> Response:
        series = selectors.series_get(org=self.org, series_id=series_id)
        instances = selectors.instance_list(org=self.org, series=series)
        return paginated(self, request, instances, InstanceOutputSerializer)


class InstanceDetailApi(OrgAPIView):
    """One instance."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["studies"],
        summary="One instance",
        responses={200: InstanceOutputSerializer, **error_responses()},
    )
    def get(self, request: Request, instance_id: int, **kwargs: Any) -> Response:
        instance = selectors.instance_get(org=self.org, instance_id=instance_id)
        return Response(InstanceOutputSerializer(instance).data)


# --- ingest jobs -----------------------------------------------------------------------------
