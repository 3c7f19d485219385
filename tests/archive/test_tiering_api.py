"""REST API of tier moves: list with a state filter, detail, summary, manual moves; every endpoint
answers 404 to another organization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from archive.models import Instance, StorageLocation, TierMove
from archive.tiering import moves as tier_moves
from tenants.models import Organization
from tests.archive.test_tiering import ids, ingest, plan

State = TierMove.State


@pytest.fixture
def instances(org: Organization, ct_study: list[bytes]) -> list[Instance]:
    return ingest(org, ct_study)


@pytest.fixture
def client(org: Organization, token_client: Callable[..., APIClient]) -> APIClient:
    return token_client(org)


def test_list_filters_by_state(
    org: Organization, instances: list[Instance], client: APIClient
) -> None:
    moves = plan(org, instances, "cold")
    tier_moves.moves_execute(org=org, move_ids=ids(moves[:2]))
    body = client.get("/api/v1/tier-moves/").json()
    assert [m["id"] for m in body["results"]] == sorted(ids(moves), reverse=True)
    done = client.get("/api/v1/tier-moves/?state=done").json()["results"]
    assert sorted(m["id"] for m in done) == sorted(ids(moves[:2]))
    assert done[0]["state"] == "done" and done[0]["to_tier"] == "cold"
    assert done[0]["from_tier"] == "hot" and done[0]["finished_at"]
    planned = client.get("/api/v1/tier-moves/?state=planned").json()["results"]
    assert [m["id"] for m in planned] == [moves[2].pk]


def test_list_rejects_an_unknown_state(client: APIClient, db: Any) -> None:
    response = client.get("/api/v1/tier-moves/?state=lost")
    assert response.status_code == 400
    assert "state" in response.json()["error"]["fields"]


def test_detail_shows_the_failure_reason(
    org: Organization, instances: list[Instance], client: APIClient
) -> None:
    (move,) = plan(org, instances[:1], "cold")
    TierMove.objects.filter(pk=move.pk).update(
        state=State.FAILED, error="InternalError (gave up after 3 attempts)", attempts=1
    )
    body = client.get(f"/api/v1/tier-moves/{move.pk}/").json()
    assert body["state"] == "failed" and "gave up" in body["error"]
    assert body["instance"] == instances[0].pk and body["size_bytes"] == instances[0].size_bytes


def test_summary_counts_and_bytes_per_state(
    org: Organization, instances: list[Instance], client: APIClient
) -> None:
    moves = plan(org, instances, "warm")
    tier_moves.moves_execute(org=org, move_ids=[moves[0].pk])
    TierMove.objects.filter(pk=moves[1].pk).update(state=State.COPYING)
    body = client.get("/api/v1/tier-moves/summary/").json()
    assert body["by_state"]["done"] == {"count": 1, "bytes": instances[0].size_bytes}
    assert body["by_state"]["copying"] == {"count": 1, "bytes": instances[1].size_bytes}
    assert body["by_state"]["planned"]["count"] == 1
    assert body["by_state"]["failed"] == {"count": 0, "bytes": 0}
    assert body["in_progress"] == 1 and body["in_progress_bytes"] == instances[1].size_bytes
    assert body["done_bytes_by_tier"] == {
        "hot": 0,
        "warm": instances[0].size_bytes,
        "cold": 0,
        "archive": 0,
    }


def test_manual_move_is_planned_for_the_workers(
    org: Organization, instances: list[Instance], client: APIClient
) -> None:
    response = client.post(
        "/api/v1/tier-moves/", {"instance": instances[0].pk, "tier": "archive"}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["state"], body["origin"], body["to_tier"]) == ("planned", "manual", "archive")
    again = client.post(
        "/api/v1/tier-moves/", {"instance": instances[0].pk, "tier": "cold"}, format="json"
    )
    assert again.status_code == 409


def test_manual_move_to_a_tier_the_location_cannot_serve_is_refused(
    org: Organization, instances: list[Instance], client: APIClient
) -> None:
    StorageLocation.objects.filter(pk=instances[0].location_id).update(
        kind=StorageLocation.Kind.S3, storage_classes={"archive": ""}
    )
    response = client.post(
        "/api/v1/tier-moves/", {"instance": instances[0].pk, "tier": "archive"}, format="json"
    )
    assert response.status_code == 400
    assert (
        "cannot hold objects in the archive tier" in response.json()["error"]["fields"]["tier"][0]
    )
    assert not TierMove.objects.exists()


@pytest.mark.parametrize("body", [{"instance": 1}, {"tier": "cold"}, {"instance": 1, "tier": "x"}])
def test_manual_move_input_errors(client: APIClient, db: Any, body: dict[str, Any]) -> None:
    response = client.post("/api/v1/tier-moves/", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]


def test_manual_move_needs_policies_manage(
    org: Organization, instances: list[Instance], token_client: Callable[..., APIClient]
) -> None:
    reader = token_client(org, ["dicom:read"])
    assert reader.get("/api/v1/tier-moves/").status_code == 200
    response = reader.post(
        "/api/v1/tier-moves/", {"instance": instances[0].pk, "tier": "cold"}, format="json"
    )
    assert response.status_code == 403


def test_other_tenant_gets_404(
    org: Organization,
    other_org: Organization,
    instances: list[Instance],
    token_client: Callable[..., APIClient],
) -> None:
    (move,) = plan(org, instances[:1], "cold")
    other = token_client(other_org)
    assert other.get(f"/api/v1/tier-moves/{move.pk}/").status_code == 404
    assert other.get("/api/v1/tier-moves/").json()["results"] == []
    assert other.get("/api/v1/tier-moves/summary/").json()["by_state"]["planned"]["count"] == 0
    response = other.post(
        "/api/v1/tier-moves/", {"instance": instances[1].pk, "tier": "cold"}, format="json"
    )
    assert response.status_code == 404
    assert TierMove.objects.count() == 1
