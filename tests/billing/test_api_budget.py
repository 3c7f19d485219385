"""GET/PUT /budget/ and GET /budget/alerts/."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.metering import record_usage
from billing.meters import GIB
from billing.models import Budget, BudgetAlert
from billing.rollups import rollup_run
from billing.services import budget_check, budget_set
from tenants.context import Actor
from tenants.models import AuditEvent
from tenants.roles import Role, Scope

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
BUDGET = {"monthly_amount": "250.00", "thresholds": [100, 50, 80]}


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_without_a_budget_get_answers_null(token_client, org):
    response = token_client(org, [Scope.USAGE_READ]).get("/api/v1/budget/")
    assert response.status_code == 200
    assert response.json() == {"budget": None}


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.BILLING])
def test_owner_admin_and_billing_set_the_budget(api_client, org, make_member, role):
    api_client.force_login(make_member(org, role).user)
    response = api_client.put(f"/api/v1/o/{org.slug}/budget/", BUDGET, format="json")
    assert response.status_code == 200, response.json()
    budget = response.json()["budget"]
    assert budget["monthly_amount"] == "250.00"
    assert budget["thresholds"] == [50, 80, 100]
    assert Budget.objects.for_org(org).get().monthly_amount == 250
    assert AuditEvent.objects.filter(action="budget.created").exists()
    assert api_client.get(f"/api/v1/o/{org.slug}/budget/").json()["budget"] == budget


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.MEMBER])
def test_auditor_and_member_cannot_set_the_budget(api_client, org, make_member, role):
    api_client.force_login(make_member(org, role).user)
    response = api_client.put(f"/api/v1/o/{org.slug}/budget/", BUDGET, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["fields"]["permission"] == ["billing.manage"]
    assert not Budget.objects.exists()


@pytest.mark.parametrize(
    ("scopes", "status"),
    [([Scope.USAGE_READ], 403), ([Scope.DICOM_READ], 403), ([Scope.ADMIN], 200)],
)
def test_only_an_admin_token_sets_the_budget(token_client, org, scopes, status):
    response = token_client(org, scopes).put("/api/v1/budget/", BUDGET, format="json")
    assert response.status_code == status
    assert Budget.objects.exists() == (status == 200)


def test_updating_keeps_one_budget(token_client, org):
    client = token_client(org, [Scope.ADMIN])
    client.put("/api/v1/budget/", BUDGET, format="json")
    response = client.put(
        "/api/v1/budget/", {"monthly_amount": "300", "thresholds": [90]}, format="json"
    )
    assert response.json()["budget"]["monthly_amount"] == "300.00"
    assert Budget.objects.for_org(org).count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"monthly_amount": "-5", "thresholds": [50]}, "monthly_amount"),
        ({"monthly_amount": "0", "thresholds": [50]}, "monthly_amount"),
        ({"monthly_amount": "ten", "thresholds": [50]}, "monthly_amount"),
        ({"monthly_amount": "10.001", "thresholds": [50]}, "monthly_amount"),
        ({"monthly_amount": "10", "thresholds": []}, "thresholds"),
        ({"monthly_amount": "10", "thresholds": ["x"]}, "thresholds"),
        ({"monthly_amount": "10", "thresholds": [0]}, "thresholds"),
        ({"monthly_amount": "10", "thresholds": [5000]}, "thresholds"),
        ({"thresholds": [50]}, "monthly_amount"),
    ],
)
def test_bad_budgets_are_400_and_nothing_is_written(token_client, org, payload, field):
    response = token_client(org, [Scope.ADMIN]).put("/api/v1/budget/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not Budget.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="budget.").exists()


def test_a_bad_update_keeps_the_previous_budget(token_client, org):
    budget_set(org=org, monthly_amount="100", thresholds=[80], actor=SYSTEM)
    response = token_client(org, [Scope.ADMIN]).put(
        "/api/v1/budget/", {"monthly_amount": "-1", "thresholds": [50]}, format="json"
    )
    assert response.status_code == 400
    budget = Budget.objects.for_org(org).get()
    assert (budget.monthly_amount, budget.thresholds) == (100, [80])


def test_alerts_list_the_organizations_fired_thresholds(token_client, org, other_org):
    for tenant in (org, other_org):
        budget_set(org=tenant, monthly_amount="5.00", thresholds=[50, 80], actor=SYSTEM)
        record_usage(
            org=tenant,
            meter="egress.bytes",
            quantity=150 * GIB,
            at=at(2026, 4, 2),
            idempotency_key="e",
        )
    rollup_run(now=at(2026, 4, 3))
    budget_check(org=org, now=at(2026, 4, 3))
    budget_check(org=other_org, now=at(2026, 4, 3))
    response = token_client(org, [Scope.USAGE_READ]).get("/api/v1/budget/alerts/")
    assert response.status_code == 200
    results = response.json()["results"]
    ours = BudgetAlert.objects.for_org(org)
    assert sorted(a["id"] for a in results) == sorted(ours.values_list("id", flat=True))
    assert {(a["kind"], a["threshold"]) for a in results} >= {("actual", 50), ("actual", 80)}
    first = results[0]
    assert first["month"] == "2026-04-01"
    assert first["budget_amount"] == "5.00"
