"""REST API of restores, the trash and legal holds.

- ``restores/``: restores in progress and past (any scope); POST a bulk restore of a study or a
  patient's studies, or with ``"estimate": true`` what it would cost and take without starting.
- ``legal-holds/``: holds (active and lifted); POST sets one, ``legal-holds/<id>/lift/`` lifts
  it (``holds.manage``: owners and admins, the ``admin`` token scope), a reason each time.
- ``trash/``: studies in the trash with their purge date; POST puts a study there (``policies.
  manage``), ``trash/<study id>/untrash/`` takes it back out before the purge date.

Another organization's id answers 404, like an id that does not exist.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive import restores, retention, selectors
from archive.models import LegalHold, RestoreRequest, Study
from tenants.api import NewestFirstPagination, OrgAPIView, error_responses_for, paginated
from tenants.apis import NamedChoiceField
from tenants.roles import Perm

_ERROR_TEXTS = {
    409: "The change conflicts with the current state (e.g. the study is under legal hold, "
    "already in the trash, past its purge date, or nothing needs a restore)."
}


_errors = error_responses_for(_ERROR_TEXTS)


# --- restores ----------------------------------------------------------------------------------


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
    patient_id = serializers.CharField()
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

    class Meta:
        ref_name = "ArchiveRestore"

    def get_study_instance_uid(self, obj: RestoreRequest) -> str | None:
        return obj.study.study_uid if obj.study is not None else None


class RestoreDetailSerializer(RestoreOutputSerializer):
    sop_instance_uids = serializers.SerializerMethodField(
        help_text="The instances this restore brings back (the first 100)."
    )

    class Meta:
        ref_name = "ArchiveRestoreDetail"

    def get_sop_instance_uids(self, obj: RestoreRequest) -> list[str]:
        return restores.restore_instance_uids(org=obj.organization, restore=obj)


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
    typical_seconds = serializers.IntegerField(help_text="Typical time until readable.")
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
        qs = restores.restore_list(org=self.org, state=filters.validated_data.get("state", ""))
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
            estimate = restores.restore_estimate(org=self.org, study=study, patient_id=patient_id)
            return Response(RestoreEstimateSerializer(estimate).data)
        restore = restores.restore_bulk(
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
        restore = restores.restore_get(org=self.org, restore_id=restore_id)
        return Response(RestoreDetailSerializer(restore).data)


# --- legal holds -------------------------------------------------------------------------------


class HoldOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    study = serializers.IntegerField(source="study_id")
    study_instance_uid = serializers.CharField(source="study.study_uid")
    active = serializers.SerializerMethodField()
    reason = serializers.CharField()
    set_by = serializers.CharField(source="set_by_label")
    set_at = serializers.DateTimeField()
    lifted_at = serializers.DateTimeField(allow_null=True)
    lifted_by = serializers.CharField(source="lifted_by_label")
    lift_reason = serializers.CharField()

    class Meta:
        ref_name = "ArchiveLegalHold"

    def get_active(self, obj: LegalHold) -> bool:
        return obj.lifted_at is None


class HoldFilterSerializer(serializers.Serializer):
    active = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="Only active (or lifted) holds."
    )


class HoldCreateSerializer(serializers.Serializer):
    study = serializers.IntegerField()
    reason = serializers.CharField(max_length=500, help_text="Why the study must be kept.")


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class HoldListApi(OrgAPIView):
    """Legal holds, newest first; POST puts a study under legal hold."""

    permissions_required = {"GET": Perm.IMAGES_READ, "POST": Perm.HOLDS_MANAGE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["legal holds"],
        summary="List legal holds",
        parameters=[HoldFilterSerializer],
        responses={200: HoldOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = HoldFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = retention.hold_list(org=self.org, active=filters.validated_data.get("active"))
        return paginated(self, request, qs, HoldOutputSerializer)

    @extend_schema(
        tags=["legal holds"],
        summary="Put a study under legal hold",
        request=HoldCreateSerializer,
        responses={201: HoldOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = HoldCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        study = selectors.study_get(org=self.org, study_id=data.validated_data["study"])
        hold = retention.legal_hold_set(
            org=self.org, study=study, actor=self.actor, reason=data.validated_data["reason"]
        )
        return Response(HoldOutputSerializer(hold).data, status=status.HTTP_201_CREATED)


class HoldDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["legal holds"],
        summary="One legal hold",
        responses={200: HoldOutputSerializer, **_errors()},
    )
    def get(self, request: Request, hold_id: int, **kwargs: Any) -> Response:
        hold = retention.hold_get(org=self.org, hold_id=hold_id)
        return Response(HoldOutputSerializer(hold).data)


class HoldLiftApi(OrgAPIView):
    permissions_required = {"POST": Perm.HOLDS_MANAGE}

    @extend_schema(
        tags=["legal holds"],
        summary="Lift a legal hold",
        request=ReasonSerializer,
        responses={200: HoldOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, hold_id: int, **kwargs: Any) -> Response:
        hold = retention.hold_get(org=self.org, hold_id=hold_id)
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        hold = retention.legal_hold_lift(
            org=self.org, hold=hold, actor=self.actor, reason=data.validated_data["reason"]
        )
        return Response(HoldOutputSerializer(hold).data)


# --- trash -------------------------------------------------------------------------------------


class TrashedStudySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    study_instance_uid = serializers.CharField(source="study_uid")
    patient_id = serializers.CharField()
    study_date = serializers.DateField(allow_null=True)
    study_description = serializers.CharField()
    instance_count = serializers.IntegerField()
    total_bytes = serializers.IntegerField()
    trashed_at = serializers.DateTimeField(allow_null=True)
    purge_after = serializers.DateTimeField(
        allow_null=True, help_text="Deleted for good after this time (unless held)."
    )
    trash_reason = serializers.CharField()
    legal_hold = serializers.BooleanField(help_text="Held: stays in the trash, never purged.")

    class Meta:
        ref_name = "ArchiveTrashedStudy"


class TrashCreateSerializer(serializers.Serializer):
    study = serializers.IntegerField()
    reason = serializers.CharField(max_length=500)


class TrashListApi(OrgAPIView):
    """Studies in the trash, newest first; POST moves a study to the trash."""

    permissions_required = {"GET": Perm.IMAGES_READ, "POST": Perm.POLICIES_MANAGE}
    # Declared (not only the default of paginated()) so that the schema shows the page object.
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["trash"],
        summary="List the trash",
        responses={200: TrashedStudySerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(
            self,
            request,
            retention.trash_list(org=self.org).order_by("-id"),
            TrashedStudySerializer,
        )

    @extend_schema(
        tags=["trash"],
        summary="Move a study to the trash",
        request=TrashCreateSerializer,
        responses={201: TrashedStudySerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = TrashCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        study = selectors.study_get(org=self.org, study_id=data.validated_data["study"])
        study = retention.study_trash(
            org=self.org, study=study, actor=self.actor, reason=data.validated_data["reason"]
        )
        return Response(TrashedStudySerializer(study).data, status=status.HTTP_201_CREATED)


class TrashUntrashApi(OrgAPIView):
    permissions_required = {"POST": Perm.POLICIES_MANAGE}

    @extend_schema(
        tags=["trash"],
        summary="Take a study out of the trash",
        request=inline_serializer(
            "ArchiveUntrashInput",
            {"reason": serializers.CharField(required=False, max_length=500)},
        ),
        responses={200: TrashedStudySerializer, **_errors(409)},
    )
    def post(self, request: Request, study_id: int, **kwargs: Any) -> Response:
        study = retention.trashed_study_get(org=self.org, study_id=study_id)
        reason = str(request.data.get("reason", "") if hasattr(request.data, "get") else "")
        study = retention.study_untrash(org=self.org, study=study, actor=self.actor, reason=reason)
        return Response(TrashedStudySerializer(study).data)
