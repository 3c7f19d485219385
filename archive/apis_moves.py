"""REST API of tier moves.

- ``tier-moves/``: the organization's moves, newest first, ``?state=`` to filter; POST asks for
  a manual move of one instance to another tier (``policies.manage``); it is run by the tiering
  workers like a move the policy planned.
- ``tier-moves/summary/``: counts and bytes per state, the moves in progress, and the bytes the
  done moves brought into each tier.
- ``tier-moves/<id>/``: one move with its attempts and, when it failed, the reason.

Another organization's id answers 404, like an id that does not exist.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive import tiering
from archive.common.api import tier_field
from archive.index import selectors
from archive.models import TierMove
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm

_ERROR_TEXTS = {409: "The instance is being moved already."}


_errors = error_responses_for(_ERROR_TEXTS)


def _state_field(**kwargs: Any) -> NamedChoiceField:
    return NamedChoiceField(
        enum_name="ArchiveTierMoveStateEnum", choices=TierMove.State.choices, **kwargs
    )


class MoveOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = _state_field()
    origin = NamedChoiceField(
        enum_name="ArchiveTierMoveOriginEnum", choices=TierMove.Origin.choices
    )
    instance = serializers.IntegerField(source="instance_id")
    study = serializers.IntegerField(source="study_id")
    from_tier = tier_field()
    to_tier = tier_field()
    from_location = serializers.IntegerField(source="from_location_id")
    to_location = serializers.IntegerField(source="to_location_id")
    size_bytes = serializers.IntegerField()
    policy_version = serializers.IntegerField(source="policy_version_id", allow_null=True)
    rule_index = serializers.IntegerField(allow_null=True)
    attempts = serializers.IntegerField(help_text="How many times a worker took the move up.")
    error = serializers.CharField(help_text="Why the move failed (empty otherwise).")
    planned_at = serializers.DateTimeField()
    dispatched_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When the move ended: failed, or done and the old copy removed.",
    )

    class Meta:
        ref_name = "ArchiveTierMove"


class MoveFilterSerializer(serializers.Serializer):
    state = _state_field(required=False)


class MoveInputSerializer(serializers.Serializer):
    instance = serializers.IntegerField(help_text="The instance's id.")
    tier = tier_field(help_text="The tier to move it to.")

    class Meta:
        ref_name = "ArchiveTierMoveInput"


class MoveListApi(OrgAPIView):
    """Tier moves of the organization, newest first; POST asks for a manual move."""

    permissions_required = {"GET": Perm.IMAGES_READ, "POST": Perm.POLICIES_MANAGE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["tier moves"],
        summary="List tier moves",
        parameters=[MoveFilterSerializer],
        responses={200: MoveOutputSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = MoveFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        moves = tiering.move_list(org=self.org, state=filters.validated_data.get("state"))
        return paginated(self, request, moves, MoveOutputSerializer)

    @extend_schema(
        tags=["tier moves"],
        summary="Move one instance to another tier",
        request=MoveInputSerializer,
        responses={201: MoveOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = MoveInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        instance = selectors.instance_get(org=self.org, instance_id=data.validated_data["instance"])
        move = tiering.move_request(
            org=self.org, instance=instance, to_tier=data.validated_data["tier"]
        )
        return Response(MoveOutputSerializer(move).data, status=status.HTTP_201_CREATED)


class MoveDetailApi(OrgAPIView):
    """One tier move."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["tier moves"],
        summary="One tier move",
        responses={200: MoveOutputSerializer, **_errors()},
    )
    def get(self, request: Request, move_id: int, **kwargs: Any) -> Response:
        return Response(MoveOutputSerializer(tiering.move_get(org=self.org, move_id=move_id)).data)


class StateTotalsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    bytes = serializers.IntegerField()

    class Meta:
        ref_name = "ArchiveTierMoveStateTotals"


class SummarySerializer(serializers.Serializer):
    by_state = serializers.DictField(
        child=StateTotalsSerializer(), help_text="Per state (planned, copying, ...): moves, bytes."
    )
    in_progress = serializers.IntegerField(help_text="Moves copying or verifying now.")
    in_progress_bytes = serializers.IntegerField()
    done_bytes_by_tier = serializers.DictField(
        child=serializers.IntegerField(), help_text="Bytes the done moves brought into each tier."
    )

    class Meta:
        ref_name = "ArchiveTierMoveSummary"


class MoveSummaryApi(OrgAPIView):
    """Moves per state, in progress, and bytes moved into each tier."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["tier moves"],
        summary="Tier moves summary",
        responses={200: SummarySerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response(SummarySerializer(tiering.moves_summary(org=self.org)).data)
