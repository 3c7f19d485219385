"""REST API of the trash and legal holds (restores: ``archive.restores.apis``).

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

from archive.index import selectors as archive_selectors
from archive.models import LegalHold
from archive.retention import selectors, services
from tenants.rest import NewestFirstPagination, OrgAPIView, error_responses_for, paginated
from tenants.roles import Perm

_ERROR_TEXTS = {
    409: "The change conflicts with the current state (e.g. the study is under legal hold, "
    "already in the trash, past its purge date, or nothing needs a restore)."
}


_errors = error_responses_for(_ERROR_TEXTS)


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
        qs = selectors.hold_list(org=self.org, active=filters.validated_data.get("active"))
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
        study = archive_selectors.study_get(org=self.org, study_id=data.validated_data["study"])
        hold = services.legal_hold_set(
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
        hold = selectors.hold_get(org=self.org, hold_id=hold_id)
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
        hold = selectors.hold_get(org=self.org, hold_id=hold_id)
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        hold = services.legal_hold_lift(
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
            selectors.trash_list(org=self.org).order_by("-id"),
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
        study = archive_selectors.study_get(org=self.org, study_id=data.validated_data["study"])
        study = services.study_trash(
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
        study = selectors.trashed_study_get(org=self.org, study_id=study_id)
        reason = str(request.data.get("reason", "") if hasattr(request.data, "get") else "")
        study = services.study_untrash(org=self.org, study=study, actor=self.actor, reason=reason)
        return Response(TrashedStudySerializer(study).data)
