"""REST API of access analytics and the cost simulator (``images.read`` or ``policies.manage``).

- ``analytics/access-curve/``: GET the share of studies and bytes read again after 7, 30, 90,
  180 and 365 days, overall and per modality.
- ``analytics/simulation/``: POST (optionally ``candidate_rules``, validated like a policy's rules,
  and ``months``): the projected monthly cost per scenario (everything hot, active policy,
  candidate, recommended) and per component (``prefetches``: what a policy's prefetch rule
  restores), with the recommendation. Nothing is saved.
- ``analytics/recommendation/``: GET the recommended rules and why.

The organization is the token's (or the session's ``/api/v1/o/<slug>/``): another organization's
slug answers 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from archive.analytics.curve import READ_KINDS, AccessCurve, access_curve
from archive.analytics.simulator import simulate
from archive.analytics.simulator.results import COMPONENTS, Simulation
from archive.policies.validate import rules_validate
from tenants.rest import OrgAPIView, error_responses_for
from tenants.roles import Perm

READ_PERMISSIONS = frozenset({Perm.IMAGES_READ, Perm.POLICIES_MANAGE})
MAX_MONTHS = 36

_ERROR_TEXTS = {
    400: "The candidate rules are invalid: ``fields`` names each problem, e.g. "
    "``rules[0].action.tier``."
}


_errors = error_responses_for(_ERROR_TEXTS)


class CurvePointSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    studies_observed = serializers.IntegerField(help_text="Studies at least this old.")
    studies_read = serializers.IntegerField(help_text="Of those, read on or after this day.")
    study_fraction = serializers.FloatField(allow_null=True)
    bytes_observed = serializers.IntegerField()
    bytes_read = serializers.IntegerField()
    bytes_fraction = serializers.FloatField(allow_null=True)

    class Meta:
        ref_name = "ArchiveAccessCurvePoint"


class ModalityCurveSerializer(serializers.Serializer):
    modality = serializers.CharField()
    points = CurvePointSerializer(many=True)

    class Meta:
        ref_name = "ArchiveAccessCurveModality"


class AccessCurveSerializer(serializers.Serializer):
    as_of = serializers.DateTimeField()
    horizons = serializers.ListField(child=serializers.IntegerField())
    read_kinds = serializers.ListField(
        child=serializers.CharField(), help_text="Access log kinds counted as reads."
    )
    overall = CurvePointSerializer(many=True)
    by_modality = ModalityCurveSerializer(many=True)

    class Meta:
        ref_name = "ArchiveAccessCurve"


def curve_data(curve: AccessCurve) -> dict[str, Any]:
    return {
        "as_of": curve.as_of,
        "horizons": list(curve.horizons),
        "read_kinds": list(READ_KINDS),
        "overall": [p.as_dict() for p in curve.overall],
        "by_modality": [
            {"modality": m, "points": [p.as_dict() for p in points]}
            for m, points in sorted(curve.by_modality.items())
        ],
    }


class MonthSerializer(serializers.Serializer):
    month = serializers.DateField()
    total = serializers.DecimalField(max_digits=18, decimal_places=2)
    components = serializers.DictField(
        child=serializers.DecimalField(max_digits=18, decimal_places=2),
        help_text=f"Amount per component: {', '.join(COMPONENTS)}.",
    )
    bytes_by_tier = serializers.DictField(child=serializers.IntegerField())
    prefetch_bytes = serializers.IntegerField(
        help_text="Archive-tier bytes the scenario's prefetch rule is expected to restore this "
        "month, before its monthly cap (0 without a prefetch rule)."
    )

    class Meta:
        ref_name = "ArchiveSimulationMonth"


class PrefetchBasisSerializer(serializers.Serializer):
    monthly_cap = serializers.DecimalField(
        max_digits=18, decimal_places=2, help_text="The rule's monthly cost cap."
    )
    studies_per_month = serializers.FloatField(
        help_text="Studies expected to arrive a month (the last 90 days' rate)."
    )
    archive_bytes_per_study = serializers.IntegerField(
        help_text="Archive-tier bytes of the priors the rule names for one new study, today."
    )
    bytes_per_month = serializers.IntegerField(
        help_text="The two multiplied: the policy preview's figure at today's tiers."
    )
    archive_share_today = serializers.FloatField(
        help_text="Today's share of bytes in the archive tier; each month's figure is scaled "
        "by the scenario's share that month against it."
    )
    note = serializers.CharField()

    class Meta:
        ref_name = "ArchiveSimulationPrefetch"


class ScenarioSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=["all_hot", "active", "candidate", "recommended"])
    title = serializers.CharField()
    rules = serializers.JSONField(allow_null=True)
    note = serializers.CharField()
    total = serializers.DecimalField(max_digits=18, decimal_places=2)
    totals = serializers.DictField(child=serializers.DecimalField(max_digits=18, decimal_places=2))
    prefetch = PrefetchBasisSerializer(
        allow_null=True,
        help_text="How the scenario's prefetch rule is projected (its cost is the component "
        "``prefetches``); null without one.",
    )
    months = MonthSerializer(many=True)

    class Meta:
        ref_name = "ArchiveSimulationScenario"


class RecommendationSerializer(serializers.Serializer):
    modality = serializers.CharField()
    tier = serializers.CharField()
    days = serializers.IntegerField()
    reread_share = serializers.FloatField()
    saving_per_month = serializers.DecimalField(max_digits=18, decimal_places=2)
    restore_per_month = serializers.DecimalField(max_digits=18, decimal_places=2)
    text = serializers.CharField()

    class Meta:
        ref_name = "ArchiveRecommendation"


class SimulationSerializer(serializers.Serializer):
    as_of = serializers.DateTimeField()
    currency = serializers.CharField()
    plan = serializers.CharField()
    months = serializers.ListField(child=serializers.DateField())
    inventory = serializers.DictField(child=serializers.IntegerField())
    scenarios = ScenarioSerializer(many=True)
    recommendations = RecommendationSerializer(many=True)
    verdict = serializers.CharField(
        help_text="How the candidate and the recommended rules compare with the active policy "
        "(or with everything hot when none is active), per month on average."
    )
    seconds = serializers.FloatField()

    class Meta:
        ref_name = "ArchiveSimulation"


class SimulationInputSerializer(serializers.Serializer):
    candidate_rules = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="The policy being edited, in the rule format of policies/versions/.",
    )
    months = serializers.IntegerField(required=False, min_value=1, max_value=MAX_MONTHS, default=12)

    class Meta:
        ref_name = "ArchiveSimulationInput"


class RecommendationOutputSerializer(serializers.Serializer):
    rules = serializers.JSONField(
        help_text="Rules to paste into a policy version; the active policy's prefetch rule, "
        "if any, is kept as the last one."
    )
    recommendations = RecommendationSerializer(many=True)
    monthly_saving = serializers.DecimalField(
        max_digits=18,
        decimal_places=2,
        allow_null=True,
        help_text="Average monthly saving against keeping everything hot.",
    )
    currency = serializers.CharField()
    verdict = serializers.CharField(
        help_text="How the recommended rules compare with the active policy, per month on "
        "average; says so when the active policy is already the cheaper choice."
    )

    class Meta:
        ref_name = "ArchiveRecommendationOutput"


class _AnalyticsApi(OrgAPIView):
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not READ_PERMISSIONS & self.granted:
            self.require(Perm.IMAGES_READ)


class AccessCurveApi(_AnalyticsApi):
    @extend_schema(
        tags=["analytics"],
        summary="Access curve",
        description="Share of studies and bytes read again (WADO-RS retrievals, downloads; not "
        "metadata requests) on or after each horizon from the study date, among studies at least "
        "that old; overall and per series modality.",
        responses={200: AccessCurveSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return Response(AccessCurveSerializer(curve_data(access_curve(org=self.org))).data)


def _simulation_data(simulation: Simulation) -> dict[str, Any]:
    return simulation.as_dict()


class SimulationApi(_AnalyticsApi):
    @extend_schema(
        tags=["analytics"],
        summary="Simulate the next months' cost",
        description="Projects the monthly cost under everything hot, the active policy, the "
        "candidate rules (when given) and a recommended policy; see docs/policies-and-tiers.md for the model.",
        request=SimulationInputSerializer,
        responses={200: SimulationSerializer, **_errors(400)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        data = SimulationInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rules = data.validated_data.get("candidate_rules")
        if rules is not None:
            rules = rules_validate(org=self.org, rules=rules)
        simulation = simulate(
            org=self.org, candidate_rules=rules, months=data.validated_data["months"]
        )
        return Response(SimulationSerializer(_simulation_data(simulation)).data)


class RecommendationApi(_AnalyticsApi):
    @extend_schema(
        tags=["analytics"],
        summary="Recommended policy",
        description="Rules built from the access curve, each explained with its saving and the "
        "restores it would cost.",
        responses={200: RecommendationOutputSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        simulation = simulate(org=self.org)
        recommended = simulation.scenario("recommended")
        saving = simulation.saving("recommended")
        months = len(simulation.month_starts) or 1
        data = simulation.as_dict()
        return Response(
            RecommendationOutputSerializer(
                {
                    "rules": recommended.rules if recommended else [],
                    "recommendations": data["recommendations"],
                    "monthly_saving": None if saving is None else round(saving / months, 2),
                    "currency": simulation.currency,
                    "verdict": simulation.verdict,
                }
            ).data
        )
