"""REST API of tiering: archive policies and tier moves.

Policies (``policies.manage``: owners, admins, the ``admin`` token scope):
- ``policies/versions/``: every version, newest first; POST writes the next version (and with
  ``"activate": true`` makes it the active one).
- ``policies/versions/<number>/``, ``.../activate/``: one version; make it the active one.
- ``policies/active/``: the version the engine applies (``null`` when none).
- ``policies/preview/``: POST rules (or a version number): what they would move today, what they
  would trash, and the change on this month's bill. Nothing is saved.
- ``policies/plan/``: POST: plan one batch of tier moves by the active policy now.

Tier moves:
- ``tier-moves/``: the organization's moves, newest first, ``?state=`` to filter; POST asks for
  a manual move of one instance to another tier (``policies.manage``); it is run by the tiering
  workers like a move the policy planned.
- ``tier-moves/summary/``: counts and bytes per state, the moves in progress, and the bytes the
  done moves brought into each tier.
- ``tier-moves/<id>/``: one move with its attempts and, when it failed, the reason.

Another organization's version number or move id answers 404, like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.common.api import tier_field
from archive.index import selectors
from archive.models import PolicyVersion, TierMove
from archive.policies import versions
from archive.policies.preview import TargetPreview, policy_preview
from archive.tiering import moves as tier_moves
from archive.tiering import planning
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm

_POLICY_ERROR_TEXTS = {
    400: "The rules are invalid: ``fields`` names each problem, e.g. ``rules[0].action.tier``."
}

RULES_HELP = (
    "Ordered list (at most 20) of {name?, conditions: {days_since_last_access, "
    "days_since_study_date, modalities, sop_classes, description_pattern, patient_age_years}, "
    'action: {"type": "move", "tier": warm|cold|archive} or {"type": "delete", '
    '"after_days": N}}. See docs/policies-and-tiers.md.'
)


_policy_errors = error_responses_for(_POLICY_ERROR_TEXTS)


class RulesField(serializers.JSONField):
    """A JSON list of rules; validated by ``archive.policies.validate.rules_validate``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(help_text=RULES_HELP, **kwargs)


class PolicyVersionSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    rules = serializers.JSONField(help_text=RULES_HELP)
    note = serializers.CharField()
    author = serializers.CharField(source="author_label")
    created_at = serializers.DateTimeField()
    active = serializers.SerializerMethodField()

    class Meta:
        ref_name = "ArchivePolicyVersion"

    def get_active(self, obj: PolicyVersion) -> bool:
        return bool(self.context.get("active_id") == obj.pk)


class PolicyVersionInputSerializer(serializers.Serializer):
    rules = RulesField()
    note = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
    activate = serializers.BooleanField(required=False, default=False)

    class Meta:
        ref_name = "ArchivePolicyVersionInput"


class PreviewInputSerializer(serializers.Serializer):
    rules = RulesField(required=False)
    version = serializers.IntegerField(
        required=False, help_text="Preview a saved version instead of ``rules``."
    )

    class Meta:
        ref_name = "ArchivePolicyPreviewInput"

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("rules" in attrs) == ("version" in attrs):
            raise serializers.ValidationError(
                {"rules": ["Give either the rules or a version number."]}
            )
        return attrs


class FromTierSerializer(serializers.Serializer):
    tier = serializers.CharField()
    instances = serializers.IntegerField()
    bytes = serializers.IntegerField()

    class Meta:
        ref_name = "ArchivePolicyPreviewFrom"


class TargetSerializer(serializers.Serializer):
    tier = serializers.CharField(help_text="The tier the instances move to.")
    instances = serializers.IntegerField()
    studies = serializers.IntegerField()
    bytes = serializers.IntegerField()
    from_tiers = serializers.SerializerMethodField()

    class Meta:
        ref_name = "ArchivePolicyPreviewTarget"

    @extend_schema_field(FromTierSerializer(many=True))
    def get_from_tiers(self, obj: TargetPreview) -> list[dict[str, Any]]:
        return [{"tier": tier, **cell} for tier, cell in obj.from_tiers.items()]


class BillLineSerializer(serializers.Serializer):
    description = serializers.CharField(source="label")
    meter = serializers.CharField()
    tier = serializers.CharField()
    quantity = serializers.DecimalField(
        max_digits=30, decimal_places=12, help_text="In the meter's billing unit."
    )
    unit = serializers.CharField()
    amount = serializers.DecimalField(
        max_digits=24,
        decimal_places=8,
        allow_null=True,
        help_text="Unrounded; null when the plan does not price this meter.",
    )

    class Meta:
        ref_name = "ArchivePolicyBillLine"


class BillSerializer(serializers.Serializer):
    currency = serializers.CharField()
    plan_name = serializers.CharField()
    month_start = serializers.DateTimeField()
    month_end = serializers.DateTimeField()
    remaining_hours = serializers.DecimalField(max_digits=12, decimal_places=4)
    lines = BillLineSerializer(many=True)
    total = serializers.DecimalField(
        max_digits=20, decimal_places=2, help_text="Rounded once, half-up to the cent."
    )

    class Meta:
        ref_name = "ArchivePolicyBillChange"


class PreviewSerializer(serializers.Serializer):
    now = serializers.DateTimeField()
    rules = serializers.JSONField(help_text="The rules as normalized.")
    instances = serializers.IntegerField(help_text="Instances that would move now.")
    studies = serializers.IntegerField(help_text="Studies with at least one instance moving.")
    bytes = serializers.IntegerField()
    targets = TargetSerializer(many=True)
    early_deletion_byte_days = serializers.DictField(child=serializers.IntegerField())
    trash_studies = serializers.IntegerField(help_text="Studies delete rules send to the trash.")
    trash_bytes = serializers.IntegerField()
    held_studies = serializers.IntegerField(help_text="Studies a legal hold keeps out of it.")
    held_bytes = serializers.IntegerField()
    bill = BillSerializer()

    class Meta:
        ref_name = "ArchivePolicyPreview"


def _active_id(view: OrgAPIView) -> int | None:
    active = versions.policy_active(org=view.org)
    return active.pk if active else None


def _version_data(view: OrgAPIView, version: PolicyVersion) -> dict[str, Any]:
    return dict(PolicyVersionSerializer(version, context={"active_id": _active_id(view)}).data)


class PolicyVersionListApi(OrgAPIView):
    """Every version of the organization's archive policy."""

    permissions_required = {"GET": Perm.POLICIES_MANAGE, "POST": Perm.POLICIES_MANAGE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["policies"],
        summary="List policy versions",
        responses={200: PolicyVersionSerializer(many=True), **_policy_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            versions.policy_version_list(org=self.org), request, view=self
        )
        data = PolicyVersionSerializer(page, many=True, context={"active_id": _active_id(self)})
        return paginator.get_paginated_response(data.data)

    @extend_schema(
        tags=["policies"],
        summary="Write a new policy version",
        description="Every change is a new version (number n + 1), audited. With "
        '``"activate": true`` it becomes the active policy in the same step.',
        request=PolicyVersionInputSerializer,
        responses={201: PolicyVersionSerializer, **_policy_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = PolicyVersionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = versions.policy_save(
            org=self.org,
            actor=self.actor,
            rules=data["rules"],
            note=data["note"],
            activate=data["activate"],
        )
        return Response(_version_data(self, version), status=status.HTTP_201_CREATED)


class PolicyVersionDetailApi(OrgAPIView):
    permissions_required = {"GET": Perm.POLICIES_MANAGE}

    @extend_schema(
        tags=["policies"],
        summary="One policy version",
        responses={200: PolicyVersionSerializer, **_policy_errors()},
    )
    def get(self, request: Request, number: int, **kwargs: Any) -> Response:
        version = versions.policy_version_get(org=self.org, number=number)
        return Response(_version_data(self, version))


class PolicyActivateApi(OrgAPIView):
    permissions_required = {"POST": Perm.POLICIES_MANAGE}

    @extend_schema(
        tags=["policies"],
        summary="Activate a policy version",
        description="Its rules are checked again against today's storage location and legal "
        "minimum retention. The engine applies it from its next run (every 15 minutes).",
        request=None,
        responses={200: PolicyVersionSerializer, **_policy_errors(400)},
    )
    def post(self, request: Request, number: int, **kwargs: Any) -> Response:
        version = versions.policy_version_get(org=self.org, number=number)
        versions.policy_activate(org=self.org, actor=self.actor, version=version)
        return Response(_version_data(self, version))


class PolicyActiveApi(OrgAPIView):
    permissions_required = {"GET": Perm.POLICIES_MANAGE}

    @extend_schema(
        tags=["policies"],
        summary="The active policy",
        responses={
            200: inline_serializer(
                "ArchivePolicyActive",
                {"version": PolicyVersionSerializer(allow_null=True)},
            ),
            **_policy_errors(),
        },
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        active = versions.policy_active(org=self.org)
        return Response({"version": _version_data(self, active) if active else None})


class PolicyPreviewApi(OrgAPIView):
    permissions_required = {"POST": Perm.POLICIES_MANAGE}

    @extend_schema(
        tags=["policies"],
        summary="Preview rules",
        description="What the rules (or a saved version) would move today, per target tier, "
        "how many studies they would send to the trash (and how many a legal hold keeps), and "
        "the change on this month's bill if the moves happened now. Nothing is saved.",
        request=PreviewInputSerializer,
        responses={200: PreviewSerializer, **_policy_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = PreviewInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "version" in data:
            version = versions.policy_version_get(org=self.org, number=data["version"])
            preview = policy_preview(org=self.org, version=version)
        else:
            preview = policy_preview(org=self.org, rules=data["rules"])
        return Response(PreviewSerializer(preview).data)


class PolicyPlanApi(OrgAPIView):
    permissions_required = {"POST": Perm.POLICIES_MANAGE}

    @extend_schema(
        tags=["policies"],
        summary="Plan tier moves now",
        description="Plans one batch (up to 50,000) of tier moves by the active policy without "
        "waiting for the engine's next run; the moves then go to the workers at the "
        "organization's rate. Returns how many were planned (0 without an active policy).",
        request=None,
        responses={
            200: inline_serializer("ArchivePolicyPlan", {"planned": serializers.IntegerField()}),
            **_policy_errors(),
        },
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        return Response({"planned": planning.moves_plan(org=self.org)})


# --- tier moves -----------------------------------------------------------------------------------

_MOVE_ERROR_TEXTS = {409: "The instance is being moved already."}


_move_errors = error_responses_for(_MOVE_ERROR_TEXTS)


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
        responses={200: MoveOutputSerializer(many=True), **_move_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        filters = MoveFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        moves = tier_moves.move_list(org=self.org, state=filters.validated_data.get("state"))
        return paginated(self, request, moves, MoveOutputSerializer)

    @extend_schema(
        tags=["tier moves"],
        summary="Move one instance to another tier",
        request=MoveInputSerializer,
        responses={201: MoveOutputSerializer, **_move_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = MoveInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        instance = selectors.instance_get(org=self.org, instance_id=data.validated_data["instance"])
        move = tier_moves.move_request(
            org=self.org, instance=instance, to_tier=data.validated_data["tier"]
        )
        return Response(MoveOutputSerializer(move).data, status=status.HTTP_201_CREATED)


class MoveDetailApi(OrgAPIView):
    """One tier move."""

    permissions_required = {"GET": Perm.IMAGES_READ}

    @extend_schema(
        tags=["tier moves"],
        summary="One tier move",
        responses={200: MoveOutputSerializer, **_move_errors()},
    )
    def get(self, request: Request, move_id: int, **kwargs: Any) -> Response:
        return Response(
            MoveOutputSerializer(tier_moves.move_get(org=self.org, move_id=move_id)).data
        )


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
        responses={200: SummarySerializer, **_move_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response(SummarySerializer(tier_moves.moves_summary(org=self.org)).data)
