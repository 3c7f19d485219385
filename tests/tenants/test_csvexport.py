"""The one CSV writer: the audit export through the portal and the API defuse formulas alike."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tenants.csvexport import FORMULA_STARTS, csv_lines, csv_text
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def auditor(org: Organization, make_member: Callable[..., Membership]) -> APIClient:
    client = APIClient()
    client.force_login(make_member(org, Role.AUDITOR, email="auditor@stmary.example").user)
    return client


def after_header(response: Any) -> bytes:
    """The file after its header line: the two doors name their columns each their own way."""
    assert response.status_code == 200
    return b"".join(response.streaming_content).split(b"\r\n", 1)[1]


@pytest.mark.parametrize("start", [*FORMULA_STARTS, "a"])
def test_api_export_defuses_formula_cells_exactly_as_the_portal_export(
    org: Organization, auditor: APIClient, start: str
) -> None:
    AuditEvent.objects.create(
        organization=org,
        created_at=datetime(2025, 3, 1, 8, 0, tzinfo=UTC),
        action="token.created",
        actor_label=f"{start}HYPERLINK(1)",
        target_type="token",
        target_id=f"{start}7",
        target_label=f'{start}SUM(A1), "x"',
        ip="10.0.0.7",
        user_agent=f"{start}agent",
    )

    api = after_header(auditor.get(f"/api/v1/o/{org.slug}/audit-events/export.csv?action=token."))
    portal = after_header(
        auditor.get(reverse("portal-audit-export", args=[org.slug]) + "?action=token.")
    )

    assert api == portal
    [row] = list(csv.reader(io.StringIO(api.decode(), newline="")))
    defused = "'" if start in FORMULA_STARTS else ""
    assert row[1:6] == [
        f"{defused}{start}HYPERLINK(1)",
        "token.created",
        "token",
        f"{defused}{start}7",
        f'{defused}{start}SUM(A1), "x"',
    ]
    assert row[7] == f"{defused}{start}agent"


@pytest.mark.parametrize(
    ("value", "cell"),
    [("=1+1", "'=1+1"), ("-2", "'-2"), ("\tx", "'\tx"), ("a=b", "a=b"), (None, ""), ("", "")],
)
def test_text_cells_starting_like_a_formula_get_an_apostrophe(value: Any, cell: str) -> None:
    assert csv_text(value) == cell


def test_lines_are_written_one_row_at_a_time() -> None:
    def rows() -> Any:
        yield ["a", 1]
        raise AssertionError("the second row is read only when the first line is taken")

    assert next(csv_lines(rows())) == "a,1\r\n"
