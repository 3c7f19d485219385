"""REST API of restores.

``restores/``: restores in progress and past (any scope); POST a bulk restore of a study or a
patient's studies, or with ``"estimate": true`` what it would cost and take without starting.

``prefetch/``: an integration (HL7 ORM, FHIR ServiceRequest, through an integration engine)
posts an order for a patient; the active policy's prefetch rule restores the priors it names.

Another organization's id answers 404, like an id that does not exist.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.index import selectors
from archive.models import RestoreRequest, Study
from archive.restores import selectors as restore_selectors
from archive.restores import services
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm

_ERROR_TEXTS = {
    409: "The change conflicts with the current state (e.g. the study is under legal hold, "
    "already in the trash, past its purge date, or nothing needs a restore)."
}


_errors = error_responses_for(_ERROR_TEXTS)


class RestoreOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    scope = NamedChoiceField(
        enum_name="ArchiveRestoreScopeEnum", choices=RestoreRequest.Scope.choices
    )
    state = NamedChoiceField(
        enum_name="ArchiveRestoreStateEnum", choices=RestoreRequest.State.choices
    )
    study = serializers.IntegerField(source="study_id", allow_null=True)
    study_instance_uid = serializers.SerializerMethodField()
    patient_id = serializers.SerializerMethodField(
        help_text="The patient's ID (PatientID): the one asked for, or the restored study's."
    )
    days = serializers.IntegerField(help_text="Days a restored copy stays readable.")
    instances_total = serializers.IntegerField()
    instances_ready = serializers.IntegerField()
    bytes_total = serializers.IntegerField()
    requested_by = serializers.CharField(source="requested_by_label")
    requested_at = serializers.DateTimeField()
    ready_at = serializers.DateTimeField(allow_null=True)
    timeout_at = serializers.DateTimeField(
        help_text="Reported as timed out when not ready by then."
    )
    checked_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(help_text="Why the restore timed out or failed.")
    origin = NamedChoiceField(
        enum_name="ArchiveRestoreOriginEnum",
        choices=RestoreRequest.Origin.choices,
        help_text="asked: a read or a restore request; prefetch: the policy's prefetch rule.",
    )
    reason = serializers.CharField(
        help_text='What triggered a prefetch: "prefetch: new study <uid>" or '
        '"prefetch: order <id>"; empty otherwise.'
    )

    class Meta:
        ref_name = "ArchiveRestore"

    def get_study_instance_uid(self, obj: RestoreRequest) -> str | None:
        return obj.study.study_uid if obj.study is not None else None

    def get_patient_id(self, obj: RestoreRequest) -> str:
        # A study's restore stores no patient ID of its own; its study has one.
        if obj.patient_id or obj.study is None:
            return obj.patient_id
        return obj.study.patient_id


class RestoreDetailSerializer(RestoreOutputSerializer):
    sop_instance_uids = serializers.SerializerMethodField(
        help_text="The instances this restore brings back (the first 100)."
    )

    class Meta:
        ref_name = "ArchiveRestoreDetail"

    def get_sop_instance_uids(self, obj: RestoreRequest) -> list[str]:
        return restore_selectors.restore_instance_uids(org=obj.organization, restore=obj)


class RestoreFilterSerializer(serializers.Serializer):
    state = NamedChoiceField(
        enum_name="ArchiveRestoreStateEnum", choices=RestoreRequest.State.choices, required=False
    )


class RestoreCreateSerializer(serializers.Serializer):
    study = serializers.IntegerField(required=False, help_text="Restore this study (its id).")
    patient_id = serializers.CharField(
        required=False, max_length=64, help_text="Restore every study of this patient."
    )
    estimate = serializers.BooleanField(
        default=False, help_text="Answer what the restore would cost and take; start nothing."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("study" in attrs) == bool(attrs.get("patient_id")):
            raise serializers.ValidationError(
                {"study": ["Give a study or a patient_id, not both and not neither."]}
            )
        return attrs


class RestoreEstimateSerializer(serializers.Serializer):
    instances = serializers.IntegerField(help_text="Images a restore would bring back.")
    bytes = serializers.IntegerField()
    in_progress_instances = serializers.IntegerField(
        help_text="Images an open restore is already bringing back (not charged again)."
    )
    readable_instances = serializers.IntegerField(
        help_text="Archive-tier images readable now (restored earlier)."
    )
    amount = serializers.DecimalField(
        max_digits=20, decimal_places=6, allow_null=True, help_text="null: not charged."
    )
    currency = serializers.CharField()
    plan_name = serializers.CharField()
    rate = serializers.CharField()
    typical_seconds = serializers.IntegerField(
        help_text="Typical time until readable: the tier's restore time plus one minute for the "
        "job that notices it (the restore's Retry-After counts down from this figure)."
    )
    days = serializers.IntegerField(help_text="Days the restored copies stay readable.")

    class Meta:
        ref_name = "ArchiveRestoreEstimate"


class RestoreListApi(OrgAPIView):
    """Restores, newest first; POST starts a bulk restore (or estimates it)."""

    permissions_required = {"GET": Perm.IMAGES_READ, "POST": Perm.IMAGES_READ}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["restores"],
        summary="List restores",
        parameters=[RestoreFilterSerializer],
        responses={200: RestoreOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = RestoreFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = restore_selectors.restore_list(
            org=self.org, state=filters.validated_data.get("state", "")
        )
        return paginated(self, request, qs, RestoreOutputSerializer)

    @extend_schema(
        tags=["restores"],
        summary="Restore a study or a patient (or estimate it)",
        request=RestoreCreateSerializer,
        responses={
            200: RestoreEstimateSerializer,
            202: RestoreDetailSerializer,
            **_errors(400, 409),
        },
        description="With `estimate: true`: the images, bytes, expected cost (on the current "
        "plan) and typical time, without starting anything. Otherwise the restore starts "
        "(or the open one covering the same images is answered) with 202.",
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = RestoreCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        study: Study | None = None
        if "study" in data.validated_data:
            study = selectors.study_get(org=self.org, study_id=data.validated_data["study"])
        patient_id = data.validated_data.get("patient_id") or None
        if data.validated_data["estimate"]:
            estimate = restore_selectors.restore_estimate(
                org=self.org, study=study, patient_id=patient_id
            )
            return Response(RestoreEstimateSerializer(estimate).data)
        restore = services.restore_bulk(
            org=self.org, actor=self.actor, study=study, patient_id=patient_id
        )
        restore.refresh_from_db()
        return Response(RestoreDetailSerializer(restore).data, status=status.HTTP_202_ACCEPTED)


class RestoreDetailApi(OrgAPIView):
    """One restore: its state, progress and (when it timed out) the reason."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["restores"],
        summary="One restore",
        responses={200: RestoreDetailSerializer, **_errors()},
    )
    def get(self, request: Request, restore_id: int, **kwargs: Any) -> Response:
        restore = restore_selectors.restore_get(org=self.org, restore_id=restore_id)
        return Response(RestoreDetailSerializer(restore).data)


PREFETCH_STATUSES = [
    ("started", "A restore of the priors was opened"),
    ("in_progress", "Open restores already cover every prior that needs one"),
    ("nothing_to_restore", "The priors are readable now"),
    ("no_priors", "No study of the patient matches the prefetch rule"),
    ("no_rule", "The active policy has no prefetch rule"),
    ("capped", "The monthly prefetch cost cap would be passed; nothing started"),
]


class PrefetchOrderSerializer(serializers.Serializer):
    patient_id = serializers.CharField(max_length=64, help_text="The patient's ID (PatientID).")
    order_id = serializers.CharField(
        max_length=64,
        help_text="The order's ID (placer order number, ServiceRequest id); it names the "
        'prefetch: "prefetch: order <id>".',
    )
    modality = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=16,
        help_text="The ordered modality, e.g. CT (used when the rule asks for the same modality).",
    )
    body_part = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="The body part, e.g. CHEST (used when the rule asks for the same body part).",
    )


class PrefetchOutcomeSerializer(serializers.Serializer):
    status = NamedChoiceField(enum_name="ArchivePrefetchStatusEnum", choices=PREFETCH_STATUSES)
    reason = serializers.CharField()
    priors = serializers.IntegerField(help_text="Studies of the patient the rule names.")
    instances = serializers.IntegerField(
        help_text="Images restored (or that would have been, when capped)."
    )
    bytes = serializers.IntegerField()
    amount = serializers.DecimalField(
        max_digits=20,
        decimal_places=6,
        allow_null=True,
        help_text="The estimated cost of this prefetch (restore.bytes on the current plan).",
    )
    currency = serializers.CharField()
    monthly_cap = serializers.DecimalField(
        max_digits=20, decimal_places=2, allow_null=True, help_text="The rule's monthly cap."
    )
    month_cost = serializers.DecimalField(
        max_digits=20,
        decimal_places=6,
        allow_null=True,
        help_text="This month's prefetch cost so far (estimates of the prefetches opened).",
    )
    keep_days = serializers.IntegerField(
        allow_null=True, help_text="Days the prefetched copies stay readable."
    )
    restore = RestoreDetailSerializer(allow_null=True)

    class Meta:
        ref_name = "ArchivePrefetchOutcome"


class PrefetchApi(OrgAPIView):
    """An order for a patient: warm the priors the prefetch rule names."""

    permissions_required = {"POST": Perm.IMAGES_WRITE}

    @extend_schema(
        tags=["restores"],
        summary="Prefetch a patient's priors for an order",
        request=PrefetchOrderSerializer,
        responses={
            200: PrefetchOutcomeSerializer,
            202: PrefetchOutcomeSerializer,
            **_errors(400),
        },
        description="For an integration engine that receives orders (HL7 ORM, FHIR "
        "ServiceRequest); needs the `dicom:write` scope. The active policy's prefetch rule names "
        "the patient's priors (same modality / body part as the order when the rule says so, "
        "the last N studies and/or those within N years) and those in the archive tier are "
        "restored and kept readable for the rule's days. 202 when a restore was opened (or open "
        "ones already cover the priors: `in_progress`); 200 when nothing was started: the "
        "priors are readable, the patient has no matching study (a patient of another "
        "organization is not found either: `no_priors`), there is no prefetch rule, or the "
        "restore would take this month's prefetch cost past the rule's cap (`capped`, "
        "audited with the figures).",
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = PrefetchOrderSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        outcome = services.prefetch_for_order(
            org=self.org,
            actor=self.actor,
            patient_id=data.validated_data["patient_id"],
            order_id=data.validated_data["order_id"],
            modality=data.validated_data.get("modality", ""),
            body_part=data.validated_data.get("body_part", ""),
        )
        if outcome.restore is not None:
            outcome.restore.refresh_from_db()
        code = (
            status.HTTP_202_ACCEPTED
            if outcome.status in ("started", "in_progress")
            else status.HTTP_200_OK
        )
        return Response(PrefetchOutcomeSerializer(outcome).data, status=code)
