"""REST API of the consistency check: the organization's reconciliations, newest first, and one
with its totals and differences. Same rules as ``archive.studies.apis``: ``OrgAPIView`` scopes
everything to the caller's organization, another organization's id answers 404, components are
named "Archive..."."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from archive.models import Reconciliation
from archive.reconcile import selectors
from archive.reconcile.services import KINDS
from tenants.errors import ValidationFailed
from tenants.rest import (
    NamedChoiceField,
    NewestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm

_errors = error_responses_for({400: "The query parameter `state` is not one of the states."})


class TotalSerializer(serializers.Serializer):
    meter = serializers.CharField(help_text="`storage` (images and replicas) or `storage.derived`.")
    tier = serializers.CharField()
    index_bytes = serializers.IntegerField(help_text="Bytes the index names.")
    index_objects = serializers.IntegerField(help_text="Objects the index names.")
    ledger_bytes = serializers.IntegerField(help_text="The storage ledger's balance.")
    store_bytes = serializers.IntegerField(help_text="Bytes of the indexed objects, as listed.")
    store_objects = serializers.IntegerField(help_text="Indexed objects found in the stores.")
    in_flight_bytes = serializers.IntegerField(
        help_text="Copies that work in progress explains (uploads, tier moves, replicas)."
    )
    unindexed_bytes = serializers.IntegerField(help_text="Objects nothing in the index names.")

    class Meta:
        ref_name = "ArchiveReconciliationTotal"


class DifferenceSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=list(KINDS))
    meter = serializers.CharField()
    tier = serializers.CharField()
    location = serializers.CharField(help_text="The storage location's name ('' for the ledger).")
    key = serializers.CharField(help_text="The object key ('' for the ledger).")
    index_bytes = serializers.IntegerField(allow_null=True)
    other_bytes = serializers.IntegerField(
        allow_null=True, help_text="The store's size, or the ledger's balance."
    )
    detail = serializers.CharField()

    class Meta:
        ref_name = "ArchiveReconciliationDifference"


class ReconciliationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = NamedChoiceField(
        enum_name="ArchiveReconciliationStateEnum", choices=Reconciliation.State.choices
    )
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    difference_count = serializers.IntegerField(help_text="All differences found.")
    error = serializers.CharField(help_text="Why the check could not finish.")

    class Meta:
        ref_name = "ArchiveReconciliation"


class ReconciliationDetailSerializer(ReconciliationSerializer):
    totals = TotalSerializer(many=True)
    differences = DifferenceSerializer(
        many=True, help_text=f"The first {Reconciliation.DIFFERENCES_KEPT} differences."
    )

    class Meta:
        ref_name = "ArchiveReconciliationDetail"


class ReconciliationListApi(OrgAPIView):
    """Runs of the consistency check (index = ledger = object store), newest first."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE}
    pagination_class = NewestFirstPagination

    @extend_schema(
        tags=["storage"],
        summary="List reconciliations",
        parameters=[
            OpenApiParameter(
                "state",
                str,
                enum=[c for c, _ in Reconciliation.State.choices],
                description="Only runs in this state.",
            )
        ],
        responses={200: ReconciliationSerializer(many=True), **_errors(400)},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        runs = selectors.reconciliation_list(org=self.org)
        state = request.query_params.get("state")
        if state is not None:
            if state not in Reconciliation.State.values:
                message = "state must be one of: " + ", ".join(Reconciliation.State.values) + "."
                raise ValidationFailed(message, code="invalid_state", fields={"state": [message]})
            runs = runs.filter(state=state)
        return paginated(self, request, runs, ReconciliationSerializer)


class ReconciliationDetailApi(OrgAPIView):
    """One run with its totals per meter and tier and its differences."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE}

    @extend_schema(
        tags=["storage"],
        summary="One reconciliation",
        responses={200: ReconciliationDetailSerializer, **_errors()},
    )
    def get(self, request: Request, reconciliation_id: int, **kwargs: Any) -> Response:
        run = selectors.reconciliation_get(org=self.org, reconciliation_id=reconciliation_id)
        return Response(ReconciliationDetailSerializer(run).data)
