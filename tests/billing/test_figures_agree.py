"""Every figure the demo shows in more than one place is the same number in each of them.

The demo is seeded as ``make run`` seeds it (``seed_demo``: the hospital's year replayed through
the product, then today's images), smaller; then its pages are read with the owner signed in and
its API with a token, each figure taken from the page as a reader sees it, and compared:

- stored bytes per tier and in total: the dashboard's tiles and its chart's last point, the
  Storage page, *Usage & billing*'s "Stored now" and its chart's last point, the API
  (``archive-settings/``, the simulator's inventory); the archive index (tiles, Storage page,
  API) and the storage ledger ("Stored now", the charts) must say the same;
- this month's cost so far: *Usage & billing* (the tile, the table, the gauge), the budget page,
  the draft invoice page (usage and minimum) and ``invoices/draft/``;
- the month-end forecast: *Usage & billing*, the budget page and ``invoices/draft/``;
- the simulator's active policy, first month: the access analytics page's chart (its point and
  its data table) and ``analytics/simulation/``; its storage is what the invoice's own code
  charges for the bytes it projects.

Figures a page rounds are compared as shown (sizes through ``bytes_label``, amounts to the cent),
exact figures exactly. The demo stores a few hundred MiB, whose amounts are 0.00 at list prices,
so the pages are read twice: as seeded, and with the hospital on its plan's prices times 10,000
from this month's start, where the amounts show.

The forecast and the simulator's first month are not compared with each other: they are
different months (this one, with storage at its level now and the other meters on this month's
trend; the next one, after the policy's moves due at its start and a month of growth, without
API requests, compute or the minimum), so they differ by design, and by the day of the month. What
they share is checked exactly: the bytes they start from (index = ledger = the simulator's
inventory; the forecast carries forward what "Stored now" shows) and the prices (the simulator's
storage priced by the invoice's code).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.management import call_command
from django.db import transaction
from django.test import Client, override_settings
from django.utils import timezone

from archive.analytics.simulator.results import SCENARIO_LABELS
from billing.invoicing import plan_in_force, usage_lines
from billing.meters import STORAGE, TIERS
from billing.periods import hours_between, month_bounds, month_start
from billing.pricing import round_money
from billing.services import plan_create, subscription_change
from saas.management.commands.seed_demo import DEMO_EMAIL
from tenants.context import Actor
from tenants.labels import bytes_label
from tenants.models import Organization
from tenants.roles import Scope
from tenants.services import token_create
from tests.billing.figures import (
    TOTAL,
    after,
    chart_last_point,
    chart_table,
    definition,
    form_fields,
    page,
    tier_figures,
)

SLUG = "demo-hospital"
HISTORY_STUDIES = 4  # studies in the demo hospital's year (make run: seed_demo's default)
AS_SEEDED = "as seeded"
PRICED_UP = "prices x10,000"
PASSES = (AS_SEEDED, PRICED_UP)
PRICE_FACTOR = 10_000
ACTIVE = SCENARIO_LABELS["active"]
CANDIDATE = SCENARIO_LABELS["candidate"]

# The tests read what the module's fixture collected; the mark makes the session set the test
# database up (pytest-django creates it only for the aliases marked tests use).
pytestmark = pytest.mark.django_db


@dataclass
class Shown:
    """What the pages and the API showed, per figure and place."""

    # figure ("hot", "warm", "cold", "archive", "total") -> place -> the size as shown
    index_bytes: dict[str, dict[str, str]] = field(default_factory=dict)
    ledger_bytes: dict[str, dict[str, str]] = field(default_factory=dict)
    spent: dict[str, Decimal] = field(default_factory=dict)
    forecast: dict[str, Decimal] = field(default_factory=dict)
    simulator_first_month: dict[str, str] = field(default_factory=dict)
    simulator_api: dict[str, Any] = field(default_factory=dict)
    # The simulator's first month's storage priced by the invoice's own code, per tier.
    invoice_priced_storage: dict[str, Decimal] = field(default_factory=dict)
    now: datetime | None = None
    name: str = ""


def _put(figures: dict[str, dict[str, str]], place: str, values: dict[str, str]) -> None:
    for figure, value in values.items():
        figures.setdefault(figure, {})[place] = value


def _money(text: str) -> Decimal:
    """``"1,234.56 USD"``, ``"57.04 (12.0%)"`` -> ``Decimal("1234.56")``."""
    return Decimal(text.split()[0].replace(",", ""))


def _dashboard(client: Client, shown: Shown) -> None:
    response = client.get(f"/o/{SLUG}/")
    assert response.status_code == 200
    overview = page(response.content).by_id("archive-overview")
    tiles = {t: overview.find("li", data_tier=t).find(class_="stat-value").text for t in TIERS}
    total = after(overview.find(data_figure="stored-total").text).removesuffix(" stored")
    _put(shown.index_bytes, "dashboard tiles", {**tiles, TOTAL: total})
    _put(shown.ledger_bytes, "dashboard chart, last point", chart_last_point(overview))


def _storage_page(client: Client, shown: Shown) -> None:
    response = client.get(f"/o/{SLUG}/archive/storage/")
    assert response.status_code == 200
    doc = page(response.content)
    tiers = {t: doc.by_id(f"tier-{t}").find(class_="stat-value").text for t in TIERS}
    total = after(doc.find(data_figure="stored-total").text, "Total stored:")
    _put(shown.index_bytes, "Storage page", {**tiers, TOTAL: total})


def _billing_overview(client: Client, shown: Shown) -> None:
    response = client.get(f"/o/{SLUG}/billing/")
    assert response.status_code == 200
    doc = page(response.content)
    stored = doc.by_id("stat-stored")
    per_tier = tier_figures(stored.find(class_="stat-foot").text)
    _put(
        shown.ledger_bytes,
        "Usage & billing, stored now",
        {
            **{t: per_tier.get(t, bytes_label(0)) for t in TIERS},
            TOTAL: stored.find(class_="stat-value").text,
        },
    )
    _put(
        shown.ledger_bytes,
        "Usage & billing chart, last point",
        chart_last_point(doc.by_id("storage-chart")),
    )
    unit = doc.by_id("stat-actual").find(class_="unit").text
    shown.spent["Usage & billing, spent so far"] = _money(
        doc.by_id("stat-actual").find(class_="stat-value").text.removesuffix(unit)
    )
    shown.forecast["Usage & billing, forecast for the month"] = _money(
        doc.by_id("stat-forecast").find(class_="stat-value").text.removesuffix(unit)
    )
    shown.spent["Usage & billing, charges by meter total"] = _money(doc.by_id("total-actual").text)
    shown.forecast["Usage & billing, charges by meter total"] = _money(
        doc.by_id("total-forecast").text
    )
    for shape in doc.find_all(match=lambda el: el.own_title.startswith("Spent so far: ")):
        shown.spent["Usage & billing, gauge"] = _money(after(shape.own_title, "Spent so far:"))
    for shape in doc.find_all(match=lambda el: el.own_title.startswith("Forecast at month end: ")):
        shown.forecast["Usage & billing, gauge"] = _money(
            after(shape.own_title, "Forecast at month end:")
        )


def _budget_page(client: Client, shown: Shown) -> None:
    response = client.get(f"/o/{SLUG}/billing/budget/")
    assert response.status_code == 200
    doc = page(response.content)
    shown.spent["budget page"] = _money(doc.by_id("budget-actual").text)
    shown.forecast["budget page"] = _money(doc.find("dd", data_figure="forecast").text)


def _draft_page(client: Client, shown: Shown) -> None:
    response = client.get(f"/o/{SLUG}/billing/invoices/draft/")
    assert response.status_code == 200
    totals = page(response.content).by_id("invoice-totals")
    usage = _money(definition(totals, "Subtotal (usage)"))
    minimum = _money(definition(totals, "Minimum commitment"))
    adjustments = _money(definition(totals, "Adjustments"))
    total = _money(definition(totals, "Total"))
    assert usage + minimum + adjustments == total
    # "Spent so far" is this month's usage and minimum; adjustments bill earlier months.
    shown.spent["draft invoice page, usage and minimum"] = usage + minimum


def _analytics_page(client: Client, shown: Shown) -> None:
    response = client.get(f"/o/{SLUG}/archive/analytics/")
    assert response.status_code == 200
    simulation = page(response.content).by_id("simulation")
    head, rows = chart_table(simulation)
    first = rows[0]
    shown.simulator_first_month["analytics chart data table"] = first[1 + head.index(ACTIVE)]
    month = first[0]
    (point,) = simulation.find_all(
        "circle", match=lambda el: el.own_title.startswith(f"{ACTIVE} · {month}: ")
    )
    shown.simulator_first_month["analytics chart point"] = after(
        point.own_title, f"{ACTIVE} · {month}:"
    )


def _policy_preview(client: Client, shown: Shown) -> None:
    """The policy editor opens on the active policy; previewing it unchanged shows the simulator
    with the active policy and the candidate (the same rules): the same first month."""
    url = f"/o/{SLUG}/archive/policies/"
    response = client.get(url)
    assert response.status_code == 200
    doc = page(response.content)
    form = next(
        f for f in doc.find_all("form") if f.find_all("button", name="intent", value="preview")
    )
    preview = client.post(url, {**form_fields(form), "intent": "preview"})
    assert preview.status_code == 200, preview.content[:2000]
    simulation = page(preview.content).by_id("simulation")
    head, rows = chart_table(simulation)
    for label in (ACTIVE, CANDIDATE):
        shown.simulator_first_month[f"policy editor preview, {label.lower()}"] = rows[0][
            1 + head.index(label)
        ]


def _api(org: Organization, shown: Shown) -> None:
    _, secret = token_create(
        org=org, name="figures", scopes=[s.value for s in Scope], actor=Actor.system("tests")
    )
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")

    settings_answer = api.get("/api/v1/archive-settings/")
    assert settings_answer.status_code == 200, settings_answer.content
    data = settings_answer.json()
    assert data["stored_bytes"] == sum(data["bytes_by_tier"].values())
    _put(
        shown.index_bytes,
        "API archive-settings (exact, shown as bytes_label)",
        {
            **{t: bytes_label(data["bytes_by_tier"][t]) for t in TIERS},
            TOTAL: bytes_label(data["stored_bytes"]),
        },
    )

    draft_answer = api.get("/api/v1/invoices/draft/")
    assert draft_answer.status_code == 200, draft_answer.content
    draft = draft_answer.json()
    shown.spent["API invoices/draft forecast.actual_total"] = Decimal(
        draft["forecast"]["actual_total"]
    )
    shown.spent["API invoices/draft subtotal + minimum_adjustment"] = Decimal(
        draft["subtotal"]
    ) + Decimal(draft["minimum_adjustment"])
    shown.forecast["API invoices/draft forecast.projected_total"] = Decimal(
        draft["forecast"]["projected_total"]
    )
    # With a budget, the draft answers its status too: the same two figures.
    budget_answer = api.put(
        "/api/v1/budget/",
        {"monthly_amount": "1000.00", "thresholds": [50, 80, 100]},
        content_type="application/json",
    )
    assert budget_answer.status_code == 200, budget_answer.content
    budget = api.get("/api/v1/invoices/draft/").json()["budget"]
    shown.spent["API invoices/draft budget.spent"] = Decimal(budget["spent"])
    shown.forecast["API invoices/draft budget.forecast"] = Decimal(budget["forecast"])

    simulation_answer = api.post(
        "/api/v1/analytics/simulation/", {}, content_type="application/json"
    )
    assert simulation_answer.status_code == 200, simulation_answer.content
    simulation = simulation_answer.json()
    _put(
        shown.index_bytes,
        "API analytics/simulation inventory (exact, shown as bytes_label)",
        {TOTAL: bytes_label(simulation["inventory"]["bytes"])},
    )
    active = next(s for s in simulation["scenarios"] if s["key"] == "active")
    shown.simulator_api = active["months"][0]

    # The simulator's first month's storage, priced as an invoice prices that month's storage.
    start, end = month_bounds(datetime.fromisoformat(shown.simulator_api["month"]))
    seconds = hours_between(start, end) * 3600
    stored = shown.simulator_api["bytes_by_tier"]
    lines, _ = usage_lines(
        org=org,
        period_start=start,
        period_end=end,
        totals_by_segment=lambda seg_start, seg_end: {
            (STORAGE, f"tier={t}"): stored[t] * seconds for t in TIERS if stored[t]
        },
    )
    shown.invoice_priced_storage = {t: Decimal("0.00") for t in TIERS}
    for line in lines:
        if line.kind == "usage" and line.meter == STORAGE:
            shown.invoice_priced_storage[line.tier] += line.amount


@pytest.fixture(scope="module")
def seen(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Shown]]:
    """The demo seeded once for the module, read, and rolled back: the tests compare what was
    shown and touch no database. The clock stands still once the seed has run, so that every
    page computes the same month, hour and balances (the seed itself runs on the real clock:
    rows are stamped with it when recorded, and the rollup reads them up to it)."""
    root: Path = tmp_path_factory.mktemp("figures")
    with (
        django_db_blocker.unblock(),
        override_settings(
            ARCHIVE_BACKEND="filesystem",
            ARCHIVE_ROOT=root / "archive",
            ARCHIVE_SPOOL_ROOT=root / "spool",
            ARCHIVE_SETTLE_SECONDS=0,
        ),
        pytest.MonkeyPatch.context() as patch,
        transaction.atomic(),
    ):
        for alias in caches:
            caches[alias].clear()
        _default_plan()
        call_command("seed_demo", quiet=True, history_studies=HISTORY_STUDIES)
        now = timezone.now()
        patch.setattr(timezone, "now", lambda: now)
        org = Organization.objects.get(slug=SLUG)
        client = Client()
        client.force_login(get_user_model().objects.get(email=DEMO_EMAIL))
        passes: dict[str, Shown] = {}
        for name in PASSES:
            if name == PRICED_UP:
                _price_up(org, now)
            figures = passes[name] = Shown(now=now, name=name)
            _dashboard(client, figures)
            _storage_page(client, figures)
            _billing_overview(client, figures)
            _budget_page(client, figures)
            _draft_page(client, figures)
            _analytics_page(client, figures)
            _policy_preview(client, figures)
            _api(org, figures)
        transaction.set_rollback(True)
    for alias in caches:
        caches[alias].clear()
    yield passes


@pytest.fixture(params=PASSES)
def shown(request: pytest.FixtureRequest, seen: dict[str, Shown]) -> Shown:
    """What one pass showed: the demo as seeded, and with prices that make its amounts show."""
    return seen[request.param]


@pytest.fixture
def as_seeded(seen: dict[str, Shown]) -> Shown:
    return seen[AS_SEEDED]


@pytest.fixture
def priced_up(seen: dict[str, Shown]) -> Shown:
    return seen[PRICED_UP]


def _price_up(org: Organization, now: datetime) -> None:
    """Put the demo on its plan's prices times ``PRICE_FACTOR`` from this month's start: the demo
    stores a few hundred MiB, whose amounts round to 0.00 at list prices, and equal zeros would
    prove little. Allowances and the minimum stay as they are."""
    plan = plan_in_force(org=org, at=now)
    assert plan is not None
    factor = Decimal(PRICE_FACTOR)
    prices = [
        {
            "meter": p.meter,
            "tier": p.tier,
            "model": p.model,
            "unit_price": str(p.unit_price * factor),
            "tiers": [
                {**t, "unit_price": str(Decimal(str(t.get("unit_price", "0"))) * factor)}
                | (
                    {"flat_fee": str(Decimal(str(t["flat_fee"])) * factor)}
                    if "flat_fee" in t
                    else {}
                )
                for t in p.tiers
            ],
            "package_size": str(p.package_size),
            "package_price": str(p.package_price * factor),
            "included_quantity": str(p.included_quantity),
        }
        for p in plan.prices.all()
    ]
    actor = Actor.system("tests")
    dear = plan_create(
        code=f"{plan.code}-x{PRICE_FACTOR}",
        name=f"{plan.name} x{PRICE_FACTOR}",
        currency=plan.currency,
        prices=prices,
        actor=actor,
        monthly_minimum=plan.monthly_minimum,
    )
    subscription_change(org=org, plan=dear, starts_at=month_start(now), actor=actor)


def _default_plan() -> None:
    """The migration-shipped default plan, as the suite's autouse fixture keeps it (a
    transactional test before this module may have flushed it)."""
    from importlib import import_module

    from django.apps import apps

    from billing.models import PricePlan

    if not PricePlan.objects.filter(code="standard").exists():
        import_module("billing.migrations.0002_default_plan").create(apps, None)


def _one_value(figures: dict[str, str]) -> str:
    values = set(figures.values())
    assert len(values) == 1, figures
    return values.pop()


# --- stored bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("figure", [*TIERS, TOTAL])
def test_stored_bytes_from_the_index_are_the_same_on_every_page(
    as_seeded: Shown, figure: str
) -> None:
    """Dashboard tiles, Storage page, API: one size per tier and in total."""
    places = as_seeded.index_bytes[figure]
    # The simulator's inventory is a total only.
    assert len(places) == (4 if figure == TOTAL else 3), places
    _one_value(places)


@pytest.mark.parametrize("figure", [*TIERS, TOTAL])
def test_stored_bytes_from_the_ledger_are_the_same_on_every_page(
    as_seeded: Shown, figure: str
) -> None:
    """Usage & billing's "Stored now" and the last point of both stored-bytes charts."""
    places = as_seeded.ledger_bytes[figure]
    assert len(places) == 3
    _one_value(places)


def test_the_demo_stores_something(as_seeded: Shown) -> None:
    assert _one_value(as_seeded.index_bytes[TOTAL]) != bytes_label(0)
    assert _one_value(as_seeded.ledger_bytes[TOTAL]) != bytes_label(0)


@pytest.mark.parametrize("figure", [*TIERS, TOTAL])
def test_stored_bytes_are_the_same_in_the_index_and_the_ledger(
    as_seeded: Shown, figure: str
) -> None:
    """The archive index (tiles, Storage page, API) and the storage ledger ("Stored now", the
    charts) describe one hospital."""
    index, ledger = as_seeded.index_bytes[figure], as_seeded.ledger_bytes[figure]
    assert _one_value(index) == _one_value(ledger), (index, ledger)


# --- this month's cost and its forecast --------------------------------------------------------


def test_spent_so_far_is_the_same_on_every_page(shown: Shown) -> None:
    """Usage & billing (tile, table, gauge), budget page, draft invoice (usage and minimum), API
    (the forecast's actual total, the draft's subtotal and minimum, the budget's spent): to the
    cent."""
    assert len(shown.spent) == 8, shown.spent
    assert len(set(shown.spent.values())) == 1, shown.spent
    if shown.name == PRICED_UP:
        assert next(iter(shown.spent.values())) > 0


def test_the_forecast_is_the_same_on_every_page(shown: Shown) -> None:
    """Usage & billing (tile, table, gauge), budget page, API (the forecast's projected total,
    the budget's forecast): to the cent."""
    assert len(shown.forecast) == 6, shown.forecast
    assert len(set(shown.forecast.values())) == 1, shown.forecast
    assert next(iter(shown.forecast.values())) >= next(iter(shown.spent.values()))


# --- the simulator's first month ---------------------------------------------------------------


def test_the_simulators_first_month_is_the_same_on_the_page_and_in_the_api(shown: Shown) -> None:
    """The access analytics page (the chart's point and data table) and the policy editor's
    preview of the active policy unchanged (the active and the candidate scenario) show the month
    as billed (to the cent), or to 4 decimals when that is 0.00: it rounds to the cent to the
    API's ``total``."""
    assert len(shown.simulator_first_month) == 4, shown.simulator_first_month
    shown_text = _one_value(
        {place: text.removesuffix(" USD") for place, text in shown.simulator_first_month.items()}
    )
    page_amount = Decimal(0) if shown_text.startswith("<") else _money(shown_text)
    assert round_money(page_amount) == Decimal(shown.simulator_api["total"]), (
        shown.simulator_first_month,
        shown.simulator_api,
    )


def test_the_simulator_prices_its_first_months_storage_as_the_invoice_does(shown: Shown) -> None:
    """The simulator's storage components for its first month are what an invoice of that month
    charges for the bytes it projects per tier (the plan's prices, allowances, tiers)."""
    components = shown.simulator_api["components"]
    assert {t: Decimal(components[f"storage_{t}"]) for t in TIERS} == (
        shown.invoice_priced_storage
    ), (shown.simulator_api, shown.invoice_priced_storage)
