"""The "Price plan" page and ``GET /api/v1/price-plan/``: the plan in force, its prices per meter
(rates, tiers), allowances and minimum, and what changed when; other organizations see nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing import plans
from billing.models import PlanPrice, PricePlan, Subscription
from tenants.models import Membership, Organization
from tenants.roles import Role

pytestmark = pytest.mark.django_db


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def standard() -> PricePlan:
    plan = PricePlan.objects.create(code="list-2025", name="List 2025", currency="USD")
    PlanPrice.objects.create(plan=plan, meter="storage", unit_price=D("0.023"))
    PlanPrice.objects.create(plan=plan, meter="egress.bytes", unit_price=D("0.09"))
    return plan


def hospital() -> PricePlan:
    """What the hospital signed: graduated hot storage, volume egress, API requests with an
    allowance, ingest in packages, a monthly minimum."""
    plan = PricePlan.objects.create(
        code="hospital-2026", name="Hospital 2026", currency="USD", monthly_minimum=D("500")
    )
    PlanPrice.objects.create(
        plan=plan,
        meter="storage",
        tier="hot",
        model="graduated",
        tiers=[
            {"up_to": "1024", "unit_price": "0.023"},
            {"up_to": "10240", "unit_price": "0.021"},
            {"up_to": None, "unit_price": "0.019"},
        ],
    )
    PlanPrice.objects.create(plan=plan, meter="storage", unit_price=D("0.004"))
    PlanPrice.objects.create(
        plan=plan,
        meter="egress.bytes",
        model="volume",
        tiers=[
            {"up_to": "100", "unit_price": "0.09"},
            {"up_to": None, "unit_price": "0.05", "flat_fee": "1"},
        ],
    )
    PlanPrice.objects.create(
        plan=plan, meter="api.requests", unit_price=D("0.40"), included_quantity=D(100)
    )
    PlanPrice.objects.create(
        plan=plan,
        meter="ingest.instances",
        model="package",
        package_size=D(10),
        package_price=D("2.50"),
    )
    return plan


@pytest.fixture
def history(org: Organization) -> None:
    """Standard from January, the hospital's plan from April 1st, open."""
    Subscription.objects.create(
        organization=org, plan=standard(), starts_at=at(2026, 1, 1), ends_at=at(2026, 4, 1)
    )
    Subscription.objects.create(organization=org, plan=hospital(), starts_at=at(2026, 4, 1))


def test_rate_card_reads_each_price_as_the_invoice_applies_it(org, history):
    card = plans.rate_card(org=org, now=at(2026, 5, 10))
    assert card.plan is not None and card.plan.code == "hospital-2026"
    assert not card.is_default
    assert card.minimum == "500.00 USD"
    rows = {row.description: row for row in card.prices}
    assert list(rows) == [
        "Storage (other tier)",
        "Storage (hot)",
        "Ingested instances",
        "Egress",
        "API requests",
    ]
    assert rows["Storage (hot)"].prices == [
        "up to 1,024: 0.023 / GiB-month",
        "1,024–10,240: 0.021 / GiB-month",
        "over 10,240: 0.019 / GiB-month",
    ]
    assert rows["Storage (hot)"].model_label == "Graduated tiers"
    assert rows["Storage (other tier)"].prices == ["0.004 / GiB-month"]
    assert rows["Egress"].prices == [
        "up to 100: 0.09 / GiB on all of it",
        "over 100: 0.05 / GiB on all of it + 1.00 flat",
    ]
    assert rows["API requests"].prices == ["0.40 / 1,000 requests"]
    assert rows["API requests"].included == "100,000 requests"
    assert rows["Ingested instances"].prices == ["2.50 per 10,000 instances started"]


def test_history_says_what_changed_when(org, history):
    card = plans.rate_card(org=org, now=at(2026, 5, 10))
    first, second = card.history
    assert (first.plan.code, first.starts_at, first.ends_at) == (
        "list-2025",
        at(2026, 1, 1),
        at(2026, 4, 1),
    )
    assert first.changes == ["Started on List 2025."]
    assert (second.starts_at, second.ends_at) == (at(2026, 4, 1), None)
    assert second.changes == [
        "Plan List 2025 → Hospital 2026.",
        "Storage (every tier): 0.023 / GiB-month → no longer charged",
        "Egress: 0.09 / GiB → up to 100: 0.09 / GiB on all of it; "
        "over 100: 0.05 / GiB on all of it + 1.00 flat",
        "Monthly minimum: none → 500.00 USD",
        "Storage (other tier): not charged → 0.004 / GiB-month",
        "Storage (hot): not charged → up to 1,024: 0.023 / GiB-month; "
        "1,024–10,240: 0.021 / GiB-month; over 10,240: 0.019 / GiB-month",
        "Ingested instances: not charged → 2.50 per 10,000 instances started",
        "API requests: not charged → 0.40 / 1,000 requests, 100,000 requests included",
    ]


def test_before_the_change_the_old_plan_is_in_force(org, history):
    card = plans.rate_card(org=org, now=at(2026, 3, 31))
    assert card.plan is not None and card.plan.code == "list-2025"
    assert card.minimum == ""


def test_without_a_subscription_the_default_plan_applies(org):
    card = plans.rate_card(org=org, now=at(2026, 5, 10))
    assert card.plan is not None and card.plan.is_default
    assert card.is_default
    assert card.history == []


def test_without_any_plan_nothing_is_charged(org):
    PricePlan.objects.update(is_default=False)
    card = plans.rate_card(org=org, now=at(2026, 5, 10))
    assert (card.plan, card.prices, card.minimum) == (None, [], "")


def test_invalid_stored_tiers_read_as_such_not_as_an_error(org):
    plan = PricePlan.objects.create(code="broken", name="Broken")
    price = PlanPrice.objects.create(
        plan=plan, meter="egress.bytes", model="graduated", tiers=[{"up_to": "x"}]
    )
    assert plans.price_texts(price) == ["tiers not valid"]


# --- the portal ----------------------------------------------------------------------------------


def client_for(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def test_portal_page_shows_plan_prices_allowances_minimum_and_history(
    org, history, owner, monkeypatch
):
    monkeypatch.setattr(timezone, "now", lambda: at(2026, 5, 10))
    response = client_for(owner).get(reverse("portal-billing-plan", args=[org.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'aria-current="page">Price plan</a>' in html
    details = html[html.index('id="plan-details"') :]
    assert "Hospital 2026 <code>hospital-2026</code>" in details
    assert "500.00 USD" in details
    prices = html[
        html.index('id="plan-prices"') : html.index("</table>", html.index("plan-prices"))
    ]
    assert "<li>1,024–10,240: 0.021 / GiB-month</li>" in prices
    assert "100,000 requests" in prices
    history_table = html[html.index('id="plan-history"') :]
    assert len(re.findall(r"<tr>", history_table)) == 3  # header + two subscriptions
    assert "<li>Monthly minimum: none → 500.00 USD</li>" in history_table


def test_portal_page_without_subscription_names_the_default_plan(org, owner):
    html = client_for(owner).get(reverse("portal-billing-plan", args=[org.slug])).content.decode()
    assert "Default plan" in html
    assert "No subscription has been recorded" in html


def test_billing_navigation_links_the_price_plan(org, owner):
    html = client_for(owner).get(reverse("portal-billing", args=[org.slug])).content.decode()
    assert f'href="/o/{org.slug}/billing/plan/"' in html


def test_another_organizations_plan_is_404_in_the_portal(org, other_org, make_member):
    Subscription.objects.create(organization=other_org, plan=hospital(), starts_at=at(2026, 1, 1))
    outsider = client_for(make_member(org, Role.OWNER))
    assert outsider.get(reverse("portal-billing-plan", args=[other_org.slug])).status_code == 404


# --- the API -------------------------------------------------------------------------------------


def test_api_answers_the_rate_card(token_client, org, history, monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: at(2026, 5, 10))
    body = token_client(org, ["usage:read"]).get("/api/v1/price-plan/").json()
    assert body["plan"] == {
        "code": "hospital-2026",
        "name": "Hospital 2026",
        "currency": "USD",
        "description": "",
        "monthly_minimum": "500.00",
    }
    assert body["is_default"] is False
    api = next(p for p in body["prices"] if p["meter"] == "api.requests")
    assert api["unit_price"] == "0.40000000"
    assert api["included_quantity"] == "100.000000"
    assert api["unit"] == "1,000 requests"
    assert api["prices"] == ["0.40 / 1,000 requests"]
    hot = next(p for p in body["prices"] if p["tier"] == "hot")
    assert hot["model"] == "graduated" and len(hot["tiers"]) == 3
    assert [(h["plan_code"], h["ends_at"]) for h in body["history"]] == [
        ("list-2025", "2026-04-01T00:00:00Z"),
        ("hospital-2026", None),
    ]


def test_api_of_another_organization_shows_only_its_own_plan(token_client, org, other_org, history):
    body = token_client(other_org, ["usage:read"]).get("/api/v1/price-plan/").json()
    assert body["history"] == [] and body["is_default"] is True


def test_api_other_organizations_slug_is_404(api_client, org, other_org, make_member, history):
    api_client.force_login(make_member(other_org, Role.OWNER).user)
    assert api_client.get(f"/api/v1/o/{org.slug}/price-plan/").status_code == 404
    assert api_client.get(f"/api/v1/o/{other_org.slug}/price-plan/").status_code == 200


def test_api_schema_documents_the_endpoint(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/price-plan/" in text and "RateCard" in text


def test_page_shows_times_in_utc(org, history, owner):
    html = client_for(owner).get(reverse("portal-billing-plan", args=[org.slug])).content.decode()
    assert '<time datetime="2026-04-01T00:00:00+00:00">1 Apr 2026, 00:00</time>' in html
    assert timedelta(0) == at(2026, 4, 1).utcoffset()
