"""Audit log pages: filters, pagination, the detail view and the CSV export."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Role
from tenants.views import audit_detail_rows


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2025, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def auditor_client(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> Client:
    client = Client()
    client.force_login(make_member(org, Role.AUDITOR, email="carol@stmary.example").user)
    return client


@pytest.fixture
def events(org: Organization, other_org: Organization) -> list[AuditEvent]:
    def event(
        action: str, actor: str, when: datetime, target: str = "", org_: Organization = org
    ) -> AuditEvent:
        return AuditEvent.objects.create(
            organization=org_,
            action=action,
            actor_label=actor,
            created_at=when,
            target_label=target,
            details={"n": 1},
        )

    return [
        event("token.created", "alice@stmary.example", at(1), "PACS"),
        event("token.revoked", "alice@stmary.example", at(2), "PACS"),
        event("member.role_changed", "bob@stmary.example", at(3), "erin@stmary.example"),
        event("member.removed", "bob@stmary.example", at(4, 23), "erin@stmary.example"),
        event("webhook.created", "token:ci (abcd1234)", at(5), "https://hooks.example.com"),
        event("token.created", "mallory@other.example", at(3), "OTHER-SECRET-TARGET", other_org),
    ]


def audit_url(org: Organization, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return reverse("portal-audit", args=[org.slug]) + (f"?{query}" if query else "")


def listed_targets(content: str, candidates: list[str]) -> set[str]:
    return {c for c in candidates if c in content}


TARGETS = ["PACS", "erin@stmary.example", "https://hooks.example.com", "OTHER-SECRET-TARGET"]


def test_log_lists_only_this_organizations_events(
    auditor_client: Client, org: Organization, events: list[AuditEvent]
) -> None:
    response = auditor_client.get(audit_url(org))
    assert response.status_code == 200
    content = response.content.decode()
    assert listed_targets(content, TARGETS) == {
        "PACS",
        "erin@stmary.example",
        "https://hooks.example.com",
    }
    assert "mallory" not in content
    for event in events[:5]:
        assert reverse("portal-audit-detail", args=[org.slug, event.pk]) in content


@pytest.mark.parametrize(
    "params,expected_actions",
    [
        ({"action": "token.created"}, {"token.created"}),
        ({"action": "member."}, {"member.role_changed", "member.removed"}),
        ({"actor": "BOB"}, {"member.role_changed", "member.removed"}),
        ({"actor": "token:ci"}, {"webhook.created"}),
        (
            {"since": "2025-03-02", "until": "2025-03-04"},
            {"token.revoked", "member.role_changed", "member.removed"},
        ),
        ({"until": "2025-03-01"}, {"token.created"}),
        ({"since": "2025-03-05", "until": "2025-12-31"}, {"webhook.created"}),
    ],
)
def test_filters(
    params: dict[str, str],
    expected_actions: set[str],
    auditor_client: Client,
    org: Organization,
    events: list[AuditEvent],
) -> None:
    response = auditor_client.get(audit_url(org, **params))
    assert response.status_code == 200
    page = response.context["page"]
    assert {e.action for e in page.object_list} == expected_actions


def test_action_choices_come_from_the_log(
    auditor_client: Client, org: Organization, events: list[AuditEvent]
) -> None:
    content = auditor_client.get(audit_url(org)).content.decode()
    assert '<option value="token.revoked">token.revoked</option>' in content
    assert '<option value="member.">member.* (all)</option>' in content


@pytest.mark.parametrize(
    "params,field,message",
    [
        (
            {"since": "2025-03-05", "until": "2025-03-01"},
            "until",
            "The end date is before the start date.",
        ),
        ({"since": "yesterday"}, "since", "Enter a valid date."),
        ({"action": "no.such.action"}, "action", "Select a valid choice."),
    ],
)
def test_invalid_filter_is_a_400_with_field_errors(
    params: dict[str, str],
    field: str,
    message: str,
    auditor_client: Client,
    org: Organization,
    events: list[AuditEvent],
) -> None:
    response = auditor_client.get(audit_url(org, **params))
    assert response.status_code == 400
    content = response.content.decode()
    assert f'id="id_{field}_error"' in content
    assert message in content


def test_pagination_is_50_per_page_and_keeps_the_filter(
    auditor_client: Client, org: Organization
) -> None:
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                organization=org, action="test.bulk", actor_label="bulk", created_at=at(1 + i % 20)
            )
            for i in range(120)
        ]
    )
    first = auditor_client.get(audit_url(org, action="test.bulk"))
    page = first.context["page"]
    assert page.paginator.count == 120
    assert len(page.object_list) == 50
    assert page.paginator.num_pages == 3
    content = first.content.decode()
    assert "Page 1 of 3" in content
    assert 'href="?action=test.bulk&amp;page=2"' in content

    last = auditor_client.get(audit_url(org, action="test.bulk", page="3"))
    assert len(last.context["page"].object_list) == 20
    assert last.status_code == 200
    # An out-of-range page shows the last page rather than failing.
    assert auditor_client.get(audit_url(org, page="99")).status_code == 200


def _details_list(content: str) -> list[tuple[str, str]]:
    section = content[content.index('id="details-heading"') :]
    return re.findall(r"<dt>(.*?)</dt><dd[^>]*>(.*?)</dd>", section.split("</section>")[0])


def test_detail_shows_details_as_a_definition_list(
    auditor_client: Client, org: Organization, owner: Membership
) -> None:
    event = services.audit_record(
        org=org,
        actor=Actor(user=owner.user, ip="10.1.2.3", user_agent="Firefox"),
        action="member.role_changed",
        target_label="erin@stmary.example",
        details={"role": {"from": "member", "to": "admin"}, "mfa": True, "note": ""},
    )
    response = auditor_client.get(reverse("portal-audit-detail", args=[org.slug, event.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "member.role_changed" in content
    assert "10.1.2.3" in content
    assert "Firefox" in content
    assert "owner@stmary.example" in content
    assert _details_list(content) == [
        ("mfa", "yes"),
        ("note", "—"),
        ("role · from", "member"),
        ("role · to", "admin"),
    ]
    assert "{" not in content.split('id="details-heading"')[1].split("</section>")[0]


def test_detail_without_details_shows_a_dash_not_braces(
    auditor_client: Client, org: Organization
) -> None:
    event = AuditEvent.objects.create(organization=org, action="org.updated", details={})

    content = auditor_client.get(
        reverse("portal-audit-detail", args=[org.slug, event.pk])
    ).content.decode()

    details = content.split('id="details-heading"')[1].split("</section>")[0]
    assert "{}" not in details and "—" in details
    assert _details_list(content) == []


@pytest.mark.parametrize(
    ("details", "rows"),
    [
        ({}, []),
        (None, []),
        ([], []),
        ({"n": 1}, [("n", "1")]),
        ({"ids": [3, 4]}, [("ids", "3, 4")]),
        ({"ids": []}, [("ids", "—")]),
        ({"x": None, "y": False}, [("x", "—"), ("y", "no")]),
        ({"a": {"b": {"c": "d"}}}, [("a · b · c", "d")]),
        ({"a": {}}, [("a", "—")]),
        ({"items": [{"k": 1}]}, [("items", '[{"k": 1}]')]),
        (["x", "y"], [("Details", "x, y")]),
        ("text", [("Details", "text")]),
    ],
)
def test_detail_rows_flatten_details(details: Any, rows: list[tuple[str, str]]) -> None:
    assert audit_detail_rows(details) == rows


def read_csv(response: Any) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_csv_export_streams_the_filtered_events_and_is_audited(
    auditor_client: Client, org: Organization, events: list[AuditEvent]
) -> None:
    response = auditor_client.get(
        reverse("portal-audit-export", args=[org.slug]) + "?action=member."
    )
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-st-mary-')
    rows = read_csv(response)
    assert [r["action"] for r in rows] == ["member.removed", "member.role_changed"]
    assert rows[0]["actor"] == "bob@stmary.example"
    assert rows[0]["target"] == "erin@stmary.example"
    assert rows[0]["time_utc"] == "2025-03-04T23:00:00+00:00"
    assert rows[0]["details"] == '{"n": 1}'
    assert set(rows[0]) == {
        "time_utc",
        "actor",
        "action",
        "target_type",
        "target_id",
        "target",
        "ip",
        "user_agent",
        "details",
    }

    export = AuditEvent.objects.for_org(org).get(action="audit.exported")
    assert export.actor_label == "carol@stmary.example"
    assert export.details == {"format": "csv", "filters": {"action": "member."}}


def test_csv_export_without_filter_has_every_event_of_the_organization_only(
    auditor_client: Client, org: Organization, events: list[AuditEvent]
) -> None:
    rows = read_csv(auditor_client.get(reverse("portal-audit-export", args=[org.slug])))
    actions = [r["action"] for r in rows]
    assert "OTHER-SECRET-TARGET" not in {r["target"] for r in rows}
    assert actions.count("token.created") == 1
    # The export's own record is the next line of the log, not part of this file.
    assert "audit.exported" not in actions
    assert len(rows) == AuditEvent.objects.for_org(org).count() - 1


def test_csv_cells_that_look_like_formulas_are_neutralised(
    auditor_client: Client, org: Organization
) -> None:
    AuditEvent.objects.create(
        organization=org, action="token.created", actor_label="=HYPERLINK(1)", target_label="@x"
    )
    rows = read_csv(
        auditor_client.get(
            reverse("portal-audit-export", args=[org.slug]) + "?action=token.created"
        )
    )
    assert rows[0]["actor"] == "'=HYPERLINK(1)"
    assert rows[0]["target"] == "'@x"


def test_invalid_export_filter_is_a_400_and_not_audited(
    auditor_client: Client, org: Organization
) -> None:
    response = auditor_client.get(
        reverse("portal-audit-export", args=[org.slug]) + "?since=garbage"
    )
    assert response.status_code == 400
    assert not AuditEvent.objects.filter(action="audit.exported").exists()
