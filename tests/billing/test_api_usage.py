"""GET /usage/ (JSON), /usage/export.csv and /usage/report.pdf."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from django.utils import timezone
from pypdf import PdfReader

from billing.metering import record_usage, storage_delta
from billing.meters import GIB
from billing.models import Budget, Rollup
from billing.periods import month_bounds
from billing.rollups import rollup_run

pytestmark = pytest.mark.django_db
APRIL = {"start": "2026-04-01T00:00:00Z", "end": "2026-05-01T00:00:00Z"}
USAGE_PATHS = ["/api/v1/usage/", "/api/v1/usage/export.csv", "/api/v1/usage/report.pdf"]


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def april(org) -> None:
    """10 GiB hot for all of April, 150 GiB egress."""
    storage_delta(org=org, tier="hot", delta_bytes=10 * GIB, at=at(2026, 4, 1), idempotency_key="h")
    record_usage(
        org=org, meter="egress.bytes", quantity=150 * GIB, at=at(2026, 4, 10), idempotency_key="e"
    )
    rollup_run(now=at(2026, 5, 1))


@pytest.fixture
def client(token_client, org):
    return token_client(org, ["usage:read"])


def test_ten_gib_hot_for_april_reports_ten_gib_months_and_7200_gib_hours(client, april):
    response = client.get("/api/v1/usage/", {**APRIL, "group_by": "meter,tier"})
    assert response.status_code == 200
    body = response.json()
    assert body["organization"] == "st-mary"
    assert body["group_by"] == ["meter", "tier"]
    rows = {(r["meter"], r["tier"]): r for r in body["rows"]}
    hot = rows[("storage", "hot")]
    assert hot["base_quantity"] == 10 * GIB * 720 * 3600
    assert hot["base_unit"] == "byte-second"
    assert D(hot["byte_hours"]) / GIB == 7200
    assert D(hot["quantity"]) == 10 and hot["unit"] == "GiB-month"
    assert hot["quantity"] == "10.000000000"  # decimals are strings
    assert hot["day"] is None
    egress = rows[("egress.bytes", None)]
    assert (egress["base_quantity"], D(egress["quantity"]), egress["unit"]) == (
        150 * GIB,
        150,
        "GiB",
    )
    assert egress["byte_hours"] is None


def test_group_by_day_gives_a_row_per_day_that_adds_up(client, april):
    body = client.get("/api/v1/usage/", {**APRIL, "group_by": "day,tier"}).json()
    hot = [r for r in body["rows"] if r["meter"] == "storage"]
    assert len(hot) == 30
    assert hot[0]["day"] == "2026-04-01"
    assert sum(r["base_quantity"] for r in hot) == 10 * GIB * 720 * 3600
    assert {r["quantity"] for r in hot} == {"0.333333333"}


def test_without_parameters_the_report_covers_the_current_month(client, org):
    now = timezone.now()
    record_usage(org=org, meter="api.requests", quantity=2000, at=now, idempotency_key="r")
    rollup_run(now=now)
    body = client.get("/api/v1/usage/").json()
    start, end = month_bounds(now)
    assert datetime.fromisoformat(body["start"].replace("Z", "+00:00")) == start
    assert datetime.fromisoformat(body["end"].replace("Z", "+00:00")) == end
    assert body["group_by"] == ["meter", "tier"]
    requests_row = next(r for r in body["rows"] if r["meter"] == "api.requests")
    assert requests_row["base_quantity"] >= 2000  # plus the API's own metered requests


def test_csv_export_matches_the_json_report(client, april):
    params = {**APRIL, "group_by": "tier"}
    rows_json = client.get("/api/v1/usage/", params).json()["rows"]
    response = client.get("/api/v1/usage/export.csv", params)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert (
        'filename="usage-st-mary-20260401T0000Z-20260501T0000Z.csv"'
        in (response["Content-Disposition"])
    )
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text)))
    header = rows.index(
        [
            "meter",
            "description",
            "tier",
            "base_quantity",
            "base_unit",
            "byte_hours",
            "quantity",
            "unit",
            "cost",
        ]
    )
    body = rows[header + 1 : rows.index([], header)]
    assert [(r[0], int(r[3]), r[6], r[8] or None) for r in body] == [
        (r["meter"], r["base_quantity"], r["quantity"], r["cost"]) for r in rows_json
    ]
    assert [
        "Total cost",
        *[""] * 7,
        client.get("/api/v1/usage/", params).json()["total_cost"],
    ] in rows


def test_pdf_report_lists_meters_and_quantities(client, april):
    response = client.get("/api/v1/usage/report.pdf", APRIL)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(response.content)).pages)
    text = re.sub(r"\s+", " ", text)
    assert "Usage report" in text and "St. Mary Hospital" in text
    assert "10 GiB-month" in text and "150 GiB" in text


def test_a_pdf_client_gets_a_json_error_not_a_406(client):
    response = client.get(
        "/api/v1/usage/report.pdf", {"start": "nope"}, HTTP_ACCEPT="application/pdf"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["start"]


@pytest.mark.parametrize("path", USAGE_PATHS)
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-05-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"}, "end"),
        ({"start": "2026-04-01T00:00:00", "end": "2026-05-01T00:00:00Z"}, "start"),
        ({"start": "2026-04-01T00:00:00Z", "end": "2026-05-01T00:00:00"}, "end"),
        ({"start": "2024-01-01T00:00:00Z", "end": "2026-05-01T00:00:00Z"}, "end"),
        ({**APRIL, "group_by": "meter,region"}, "group_by"),
        ({"start": "yesterday", "end": "2026-05-01T00:00:00Z"}, "start"),
    ],
    ids=["reversed", "naive-start", "naive-end", "too-long", "unknown-group", "not-a-date"],
)
def test_bad_ranges_and_groupings_are_400_with_field_errors(client, org, path, params, field):
    rollups_before = Rollup.objects.count()
    response = client.get(path, params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"]
    assert Rollup.objects.count() == rollups_before
    assert not Budget.objects.exists()


def test_the_longest_range_follows_the_setting(client, settings):
    settings.BILLING_MAX_REPORT_DAYS = 31
    assert client.get("/api/v1/usage/", APRIL).status_code == 200
    response = client.get(
        "/api/v1/usage/", {"start": "2026-04-01T00:00:00Z", "end": "2026-06-01T00:00:00Z"}
    )
    assert response.status_code == 400
    assert "31 days" in response.json()["error"]["message"]


def test_an_offset_timezone_is_converted_to_utc(client, april):
    body = client.get(
        "/api/v1/usage/",
        {"start": "2026-04-01T02:00:00+02:00", "end": "2026-05-01T02:00:00+02:00"},
    ).json()
    assert body["start"] == "2026-04-01T00:00:00Z"
    hot = next(r for r in body["rows"] if r["tier"] == "hot")
    assert D(hot["quantity"]) == 10
