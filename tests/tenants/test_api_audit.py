"""The audit log through the API: filters, detail, CSV export, and no way to write to it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Role, Scope
from tests.tenants.test_api_support import bearer_client, error, session_client

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def _event(org: Organization, minutes: int, action: str, actor: str, **kwargs: Any) -> AuditEvent:
    return AuditEvent.objects.create(
        organization=org,
        created_at=T0.replace(minute=minutes),
        action=action,
        actor_label=actor,
        **kwargs,
    )


@pytest.fixture
def events(org: Organization, other_org: Organization) -> dict[str, AuditEvent]:
    _event(other_org, 0, "member.removed", "alice@stmary.example")
    return {
        "login": _event(org, 0, "auth.login", "alice@stmary.example"),
        "role": _event(
            org,
            10,
            "member.role_changed",
            "alice@stmary.example",
            target_type="membership",
            target_id="7",
            target_label="bob@stmary.example",
            ip="10.0.0.7",
            user_agent="Firefox",
            details={"role": {"from": "member", "to": "admin"}},
        ),
        "removed": _event(org, 20, "member.removed", "token:sync (abcd1234)"),
        "webhook": _event(org, 30, "webhook.created", "carol@stmary.example"),
    }


@pytest.fixture
def auditor_client(org: Organization, make_member: Callable[..., Membership]) -> APIClient:
    return session_client(make_member(org, Role.AUDITOR, email="auditor@stmary.example").user)


def _actions(response: Any) -> list[str]:
    # The auditor's own login is audited too; the assertions are about the fixture's events.
    return [
        e["action"] for e in response.json()["results"] if e["actor"] != "auditor@stmary.example"
    ]


@pytest.mark.parametrize(
    ("query", "actions"),
    [
        ("", ["webhook.created", "member.removed", "member.role_changed", "auth.login"]),
        ("?action=member.removed", ["member.removed"]),
        ("?action=member.", ["member.removed", "member.role_changed"]),
        ("?actor=ALICE", ["member.role_changed", "auth.login"]),
        ("?actor=token:", ["member.removed"]),
        (
            "?since=2025-03-01T08:10:00Z",
            ["webhook.created", "member.removed", "member.role_changed"],
        ),
        ("?until=2025-03-01T08:10:00Z", ["auth.login"]),
        (
            "?since=2025-03-01T08:10:00Z&until=2025-03-01T08:30:00Z",
            ["member.removed", "member.role_changed"],
        ),
        ("?since=2025-03-01T09:10:00%2B01:00&until=2025-03-01T08:20:00", ["member.role_changed"]),
    ],
    ids=[
        "all",
        "action",
        "action-prefix",
        "actor",
        "actor-token",
        "since",
        "until",
        "window",
        "offsets",
    ],
)
def test_audit_list_filters(
    org: Organization,
    events: dict[str, AuditEvent],
    auditor_client: APIClient,
    query: str,
    actions: list[str],
) -> None:
    response = auditor_client.get(f"/api/v1/o/{org.slug}/audit-events/{query}")

    assert response.status_code == 200
    assert _actions(response) == actions


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?since=yesterday", "since"),
        ("?until=2025-13-01T00:00:00Z", "until"),
        ("?since=2025-03-02T00:00:00Z&until=2025-03-01T00:00:00Z", "until"),
    ],
    ids=["bad-since", "bad-until", "empty-window"],
)
@pytest.mark.parametrize("export", [False, True], ids=["list", "csv"])
def test_bad_datetime_filter_gets_400_naming_the_field(
    org: Organization, auditor_client: APIClient, query: str, field: str, export: bool
) -> None:
    path = "audit-events/export.csv" if export else "audit-events/"

    response = auditor_client.get(f"/api/v1/o/{org.slug}/{path}{query}")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert set(error(response)["fields"]) == {field}
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_audit_event_detail(
    org: Organization, events: dict[str, AuditEvent], auditor_client: APIClient
) -> None:
    event = events["role"]

    response = auditor_client.get(f"/api/v1/o/{org.slug}/audit-events/{event.pk}/")

    assert response.status_code == 200
    assert response.json() == {
        "id": event.pk,
        "created_at": "2025-03-01T08:10:00Z",
        "actor": "alice@stmary.example",
        "actor_user": None,
        "actor_token": None,
        "action": "member.role_changed",
        "target_type": "membership",
        "target_id": "7",
        "target_label": "bob@stmary.example",
        "ip": "10.0.0.7",
        "user_agent": "Firefox",
        "details": {"role": {"from": "member", "to": "admin"}},
    }


def test_audit_event_names_the_acting_token_and_user(
    org: Organization, owner: Membership, make_token: Callable[..., tuple[ApiToken, str]]
) -> None:
    token, secret = make_token(org, [Scope.ADMIN])
    client = bearer_client(secret)
    client.patch("/api/v1/organization/", {"name": "Renamed"}, format="json")
    event = AuditEvent.objects.for_org(org).get(action="organization.updated")

    body = client.get(f"/api/v1/audit-events/{event.pk}/").json()

    assert (body["actor_token"], body["actor_user"]) == (token.pk, None)
    assert body["actor"] == f"token:integration ({token.prefix})"


def _csv(response: Any) -> list[dict[str, str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_export_streams_the_filtered_events_and_is_audited(
    org: Organization,
    events: dict[str, AuditEvent],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    token, secret = make_token(org, [Scope.ADMIN])

    response = bearer_client(secret).get(
        "/api/v1/audit-events/export.csv?action=member.&until=2025-03-02T00:00:00Z",
        HTTP_ACCEPT="text/csv",
    )

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-st-mary-')
    rows = _csv(response)
    assert list(rows[0]) == [
        "time",
        "actor",
        "action",
        "target_type",
        "target_id",
        "target_label",
        "ip",
        "user_agent",
        "details",
    ]
    assert [r["action"] for r in rows] == ["member.removed", "member.role_changed"]
    assert rows[1] == {
        "time": "2025-03-01T08:10:00+00:00",
        "actor": "alice@stmary.example",
        "action": "member.role_changed",
        "target_type": "membership",
        "target_id": "7",
        "target_label": "bob@stmary.example",
        "ip": "10.0.0.7",
        "user_agent": "Firefox",
        "details": '{"role":{"from":"member","to":"admin"}}',
    }
    assert json.loads(rows[1]["details"]) == events["role"].details
    exported = AuditEvent.objects.for_org(org).get(action="audit.exported")
    assert exported.actor_token_id == token.pk
    assert exported.details == {
        "filters": {"action": "member.", "until": "2025-03-02T00:00:00+00:00"}
    }


def test_csv_export_without_until_is_a_snapshot_of_the_request_moment(
    org: Organization, events: dict[str, AuditEvent], auditor_client: APIClient
) -> None:
    response = auditor_client.get(f"/api/v1/o/{org.slug}/audit-events/export.csv")

    rows = _csv(response)
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("auditor@stmary.example", "auth.login"),
        ("carol@stmary.example", "webhook.created"),
        ("token:sync (abcd1234)", "member.removed"),
        ("alice@stmary.example", "member.role_changed"),
        ("alice@stmary.example", "auth.login"),
    ]
    assert AuditEvent.objects.for_org(org).filter(action="audit.exported").count() == 1


def test_csv_export_defuses_spreadsheet_formulas(
    org: Organization, auditor_client: APIClient
) -> None:
    _event(org, 5, "member.removed", '=HYPERLINK("http://evil")', target_label="+SUM(A1)")

    rows = _csv(
        auditor_client.get(f"/api/v1/o/{org.slug}/audit-events/export.csv?action=member.removed")
    )

    assert rows[0]["actor"] == '\'=HYPERLINK("http://evil")'
    assert rows[0]["target_label"] == "'+SUM(A1)"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("path", ["audit-events/", "audit-events/{id}/", "audit-events/export.csv"])
def test_audit_log_has_no_write_methods(
    org: Organization,
    events: dict[str, AuditEvent],
    auditor_client: APIClient,
    method: str,
    path: str,
) -> None:
    before = list(AuditEvent.objects.for_org(org).values_list("id", "action", "details"))
    url = f"/api/v1/o/{org.slug}/" + path.format(id=events["role"].pk)

    response = getattr(auditor_client, method)(url, {"action": "forged"}, format="json")

    assert response.status_code == 405
    assert error(response)["code"] == "method_not_allowed"
    assert list(AuditEvent.objects.for_org(org).values_list("id", "action", "details")) == before


def test_audit_list_pages_newest_first_with_a_cursor(
    org: Organization, events: dict[str, AuditEvent], auditor_client: APIClient
) -> None:
    first = auditor_client.get(
        f"/api/v1/o/{org.slug}/audit-events/?page_size=1&action=member."
    ).json()
    second = auditor_client.get(first["next"]).json()

    assert [e["action"] for e in first["results"]] == ["member.removed"]
    assert [e["action"] for e in second["results"]] == ["member.role_changed"]
    assert second["next"] is None
    assert second["previous"] is not None
