"""Priors warm before they are asked for: the archive policy's prefetch rule (validation), the
restores it opens when a new study settles or an integration posts an order (only the priors it
names, with the reason and the rule's days, once per trigger), the monthly cost cap (audited),
metering, the restores page, the policy preview's cost line, and tenant isolation."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from archive.ingest import pipeline
from archive.models import Instance, RestoreItem, RestoreRequest, Series, Study
from archive.policies.preview import PREFETCH_WINDOW_DAYS, policy_preview
from archive.policies.validate import rules_validate
from archive.policies.versions import policy_save
from archive.restores import services as restores
from archive.restores import tasks as restore_tasks
from archive.restores.selectors import meter_price
from archive.storage import store_for
from billing.models import PlanPrice, PricePlan, Subscription, UsageEvent
from billing.pricing import GIB
from tenants.context import Actor
from tenants.errors import ValidationFailed
from tenants.models import AuditEvent, Organization
from tests.archive.test_dicomweb_support import ingest_study, study
from tests.archive.test_restores_support import archive_all

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
TODAY = timezone.now().date()
SIX = Decimal("0.000001")


@pytest.fixture
def slow_restores(settings):
    """Restores stay in progress until a test makes the store ready."""
    settings.ARCHIVE_FS_RESTORE_SECONDS = 3600
    return settings


def prefetch(
    *,
    keep_days: Any = 14,
    monthly_cap: Any = "100.00",
    name: str | None = None,
    **conditions: Any,
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "conditions": conditions,
        "action": {"type": "prefetch", "keep_days": keep_days, "monthly_cap": monthly_cap},
    }
    if name is not None:
        rule["name"] = name
    return rule


COLD_AFTER_A_YEAR = {
    "conditions": {"days_since_last_access": {"min": 365}},
    "action": {"type": "move", "tier": "cold"},
}


def activate(org: Organization, rule: dict[str, Any]) -> None:
    policy_save(org=org, actor=SYSTEM, rules=[COLD_AFTER_A_YEAR, rule], activate=True)


def seed(
    org: Organization,
    *,
    patient: str = "PAT-1",
    days_ago: int = 30,
    modality: str = "CT",
    body_part: str | None = None,
    n: int = 1,
    archived: bool = True,
) -> Study:
    """A study of ``patient`` (BodyPartExamined CHEST for CT, HEAD for MR unless ``body_part``),
    its objects in the archive tier unless ``archived`` is False."""
    seeded = ingest_study(
        org,
        study(
            patient_id=patient,
            patient_name="Doe^Jane",
            study_date=TODAY - dt.timedelta(days=days_ago),
            modalities=(modality,),
            instances_per_series=n,
        ),
    )
    row = Study.objects.for_org(org).get(study_uid=seeded.uid)
    if body_part is not None:
        Series.objects.for_org(org).filter(study=row).update(body_part=body_part)
    if archived:
        archive_all(org, seeded)
    row.refresh_from_db()
    return row


def settle(org: Organization, study_row: Study, capture: Any) -> None:
    """The ingest pipeline's settle check, with what it queues on commit run (eagerly)."""
    with capture(execute=True):
        assert pipeline.study_settle_check(org_id=org.pk, study_id=study_row.pk)


def restored_studies(restore: RestoreRequest) -> set[int]:
    return set(
        RestoreItem.objects.filter(restore=restore).values_list("instance__study_id", flat=True)
    )


def instances_of(*studies: Study) -> list[Instance]:
    return list(Instance.objects.filter(study__in=studies).order_by("id"))


# --- the rule ----------------------------------------------------------------------------------


def test_a_prefetch_rule_is_normalized_beside_move_and_delete_rules(org):
    rules = rules_validate(
        org=org,
        rules=[
            COLD_AFTER_A_YEAR,
            prefetch(
                name="  Priors for reading ",
                keep_days=14,
                monthly_cap=250,
                last_studies=3,
                same_body_part=True,
            ),
        ],
    )
    assert rules == [
        COLD_AFTER_A_YEAR,
        {
            "name": "Priors for reading",
            "conditions": {"same_modality": False, "same_body_part": True, "last_studies": 3},
            "action": {"type": "prefetch", "keep_days": 14, "monthly_cap": "250.00"},
        },
    ]
    [rule] = rules_validate(
        org=org, rules=[prefetch(monthly_cap="0.5", within_years=5, same_modality=True)]
    )
    assert rule["action"]["monthly_cap"] == "0.50"
    assert rule["conditions"] == {"same_modality": True, "same_body_part": False, "within_years": 5}


def _errors(org: Organization, rules: list[Any]) -> dict[str, list[str]]:
    with pytest.raises(ValidationFailed) as exc:
        rules_validate(org=org, rules=rules)
    return exc.value.fields


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        (prefetch(keep_days=0, last_studies=3), "action.keep_days", "from 1 to 365"),
        (prefetch(keep_days=366, last_studies=3), "action.keep_days", "from 1 to 365"),
        (prefetch(keep_days="7", last_studies=3), "action.keep_days", "whole number"),
        (prefetch(keep_days=1.5, last_studies=3), "action.keep_days", "whole number"),
        (prefetch(keep_days=True, last_studies=3), "action.keep_days", "whole number"),
        (prefetch(keep_days=None, last_studies=3), "action.keep_days", "whole number"),
        (prefetch(monthly_cap=-1, last_studies=3), "action.monthly_cap", "not be negative"),
        (prefetch(monthly_cap="ten", last_studies=3), "action.monthly_cap", "plan's currency"),
        (prefetch(monthly_cap="1.234", last_studies=3), "action.monthly_cap", "two decimals"),
        (prefetch(monthly_cap="NaN", last_studies=3), "action.monthly_cap", "plan's currency"),
        (prefetch(monthly_cap="Infinity", last_studies=3), "action.monthly_cap", "currency"),
        (prefetch(monthly_cap=True, last_studies=3), "action.monthly_cap", "plan's currency"),
        (prefetch(monthly_cap=None, last_studies=3), "action.monthly_cap", "plan's currency"),
        (prefetch(monthly_cap=[5], last_studies=3), "action.monthly_cap", "plan's currency"),
        (prefetch(monthly_cap=10**7, last_studies=3), "action.monthly_cap", "at most 1000000"),
        (prefetch(last_studies=0), "conditions.last_studies", "from 1 to 50"),
        (prefetch(last_studies=51), "conditions.last_studies", "from 1 to 50"),
        (prefetch(last_studies="3"), "conditions.last_studies", "whole number"),
        (prefetch(within_years=0), "conditions.within_years", "from 1 to 100"),
        (prefetch(within_years=101), "conditions.within_years", "from 1 to 100"),
        (prefetch(within_years=2.5), "conditions.within_years", "whole number"),
        (prefetch(last_studies=3, same_modality="yes"), "conditions.same_modality", "true or"),
        (prefetch(last_studies=3, same_body_part=1), "conditions.same_body_part", "true or"),
        (prefetch(last_studies=3, modalities=["CT"]), "conditions.modalities", "prefetch rule"),
        (prefetch(same_modality=True), "conditions", "last_studies and/or within_years"),
        (prefetch(), "conditions", "every study of the patient"),
    ],
)
def test_every_bad_value_of_a_prefetch_rule_is_a_field_error(org, rule, field, words):
    fields = _errors(org, [rule])
    assert words in " ".join(fields[f"rules[0].{field}"]), fields


def test_prefetch_conditions_that_are_not_an_object(org):
    rule = prefetch()
    rule["conditions"] = ["last_studies"]
    assert _errors(org, [rule])["rules[0].conditions"] == [
        "Say which priors: give last_studies and/or within_years (and optionally "
        "same_modality, same_body_part)."
    ]


def test_unknown_keys_in_a_prefetch_action(org):
    rule = prefetch(last_studies=2)
    rule["action"]["tier"] = "hot"
    assert "Unknown key(s) tier" in _errors(org, [rule])["rules[0].action"][0]


def test_every_problem_of_a_prefetch_rule_is_reported_at_once(org):
    fields = _errors(org, [prefetch(keep_days=0, monthly_cap="x", last_studies=99)])
    assert {
        "rules[0].action.keep_days",
        "rules[0].action.monthly_cap",
        "rules[0].conditions.last_studies",
    } <= set(fields)


def test_a_policy_has_one_prefetch_rule(org):
    fields = _errors(org, [prefetch(last_studies=1), COLD_AFTER_A_YEAR, prefetch(within_years=2)])
    assert fields == {
        "rules[2].action": ["A policy has one prefetch rule; rules[0] is already one."]
    }


def test_a_move_rule_still_refuses_prefetch_conditions(org):
    fields = _errors(
        org, [{"conditions": {"last_studies": 3}, "action": COLD_AFTER_A_YEAR["action"]}]
    )
    assert "Unknown condition 'last_studies'" in fields["rules[0].conditions.last_studies"][0]


# --- a new study settles -----------------------------------------------------------------------


def test_a_new_study_restores_only_the_priors_the_rule_names(
    org, slow_restores, django_capture_on_commit_callbacks
):
    activate(
        org,
        prefetch(
            keep_days=14, same_modality=True, same_body_part=True, last_studies=2, within_years=5
        ),
    )
    recent = seed(org, days_ago=100, n=2)  # CT CHEST
    older = seed(org, days_ago=700)  # CT CHEST
    oldest_of_three = seed(org, days_ago=1000)  # CT CHEST, but only the last 2 are asked for
    abdomen = seed(org, days_ago=50, body_part="ABDOMEN")  # CT, another body part
    head = seed(org, days_ago=20, modality="MR")  # another modality (MR HEAD)
    other_patient = seed(org, patient="PAT-2", days_ago=10)
    new = seed(org, days_ago=0, archived=False)  # CT CHEST arrives

    settle(org, new, django_capture_on_commit_callbacks)

    restore = RestoreRequest.objects.for_org(org).get()
    assert restore.origin == "prefetch"
    assert restore.reason == f"prefetch: new study {new.study_uid}"
    assert (restore.scope, restore.patient_id, restore.days) == ("patient", "PAT-1", 14)
    assert restored_studies(restore) == {recent.pk, older.pk}
    assert restore.instances_total == 3
    assert restore.bytes_total == recent.total_bytes + older.total_bytes
    assert restore.requested_by_label == "prefetch"
    # The object store was asked for each (the kickoff queued on commit ran).
    for instance in instances_of(recent, older):
        assert (
            store_for(instance.location)
            .restore_status(key=instance.object_key, tier="archive")
            .requested
        )
    for instance in instances_of(oldest_of_three, abdomen, head, other_patient):
        assert (
            not store_for(instance.location)
            .restore_status(key=instance.object_key, tier="archive")
            .requested
        )
    started = AuditEvent.objects.get(action="restore.started")
    assert started.details["origin"] == "prefetch"
    assert started.details["reason"] == restore.reason
    assert Decimal(started.details["estimated_cost"]) == restore.estimated_cost


def test_within_years_without_a_count_takes_every_prior_of_those_years(
    org, slow_restores, django_capture_on_commit_callbacks
):
    activate(org, prefetch(within_years=2))
    two_recent = [seed(org, days_ago=30), seed(org, days_ago=400, modality="MR")]
    seed(org, days_ago=3 * 366)  # too old
    undated = seed(org, days_ago=10)
    Study.objects.filter(pk=undated.pk).update(study_date=None)  # unknown: never within
    new = seed(org, days_ago=0, modality="US", archived=False)

    settle(org, new, django_capture_on_commit_callbacks)

    restore = RestoreRequest.objects.for_org(org).get()
    assert restored_studies(restore) == {s.pk for s in two_recent}


def test_readable_priors_and_other_tiers_are_left_alone(
    org, slow_restores, django_capture_on_commit_callbacks
):
    activate(org, prefetch(last_studies=5))
    seed(org, days_ago=30, archived=False)  # hot: readable
    restored = seed(org, days_ago=60)
    Instance.objects.filter(study=restored).update(
        restored_until=timezone.now() + dt.timedelta(days=3)
    )
    new = seed(org, days_ago=0, archived=False)

    settle(org, new, django_capture_on_commit_callbacks)

    assert not RestoreRequest.objects.exists()
    outcome = restores.prefetch_for_study(org=org, study=new)
    assert (outcome.status, outcome.priors) == ("nothing_to_restore", 2)


def test_the_same_study_settling_twice_opens_one_restore(
    org, slow_restores, django_capture_on_commit_callbacks
):
    activate(org, prefetch(last_studies=3))
    prior = seed(org, days_ago=90, n=2)
    new = seed(org, days_ago=0, archived=False)

    settle(org, new, django_capture_on_commit_callbacks)
    # Settling again (the study changed and settled once more), the task run twice (a retry):
    # the priors are covered by the open restore.
    Study.objects.filter(pk=new.pk).update(notified_at=None)
    settle(org, new, django_capture_on_commit_callbacks)
    restore_tasks.prefetch_for_study(org.pk, new.pk)
    second = restores.prefetch_for_study(org=org, study=new)

    restore = RestoreRequest.objects.for_org(org).get()
    assert (second.status, second.restore) == ("in_progress", restore)
    assert RestoreItem.objects.filter(restore=restore).count() == 2
    assert AuditEvent.objects.filter(action="restore.started").count() == 1
    assert restored_studies(restore) == {prior.pk}


def test_prefetched_priors_are_metered_once_and_stay_readable_for_the_rules_days(
    org, slow_restores, django_capture_on_commit_callbacks
):
    activate(org, prefetch(keep_days=21, last_studies=3))
    prior = seed(org, days_ago=90, n=2)
    new = seed(org, days_ago=0, archived=False)
    settle(org, new, django_capture_on_commit_callbacks)
    restore = RestoreRequest.objects.for_org(org).get()

    slow_restores.ARCHIVE_FS_RESTORE_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        restores.restores_poll()
        restores.restores_poll()

    restore.refresh_from_db()
    assert restore.state == "ready" and restore.instances_ready == 2
    metered = UsageEvent.objects.for_org(org).filter(meter="restore.bytes")
    assert sorted(metered.values_list("quantity", flat=True)) == sorted(
        i.size_bytes for i in instances_of(prior)
    )
    for instance in instances_of(prior):
        assert instance.restored_until > timezone.now() + dt.timedelta(days=20)
    # Readable now: settling again (or an order) restores nothing and meters nothing more.
    again = restores.prefetch_for_study(org=org, study=new)
    assert again.status == "nothing_to_restore"
    restores.restores_poll()
    assert metered.count() == 2
    assert RestoreRequest.objects.count() == 1


def test_no_rule_or_no_patient_id_prefetches_nothing(
    org, slow_restores, django_capture_on_commit_callbacks
):
    seed(org, days_ago=90)
    new = seed(org, days_ago=0, archived=False)
    settle(org, new, django_capture_on_commit_callbacks)
    assert restores.prefetch_for_study(org=org, study=new).status == "no_rule"

    activate(org, prefetch(last_studies=3))
    anonymous_prior = seed(org, patient="", days_ago=90)
    anonymous = seed(org, patient="", days_ago=0, archived=False)
    assert anonymous_prior.patient_id == ""
    assert restores.prefetch_for_study(org=org, study=anonymous).status == "no_priors"
    assert not RestoreRequest.objects.exists()


def test_the_task_never_reaches_another_organizations_study(org, other_org, slow_restores):
    activate(org, prefetch(last_studies=3))
    seed(other_org, days_ago=90)
    theirs = seed(other_org, days_ago=0, archived=False)

    restore_tasks.prefetch_for_study(org.pk, theirs.pk)

    assert not RestoreRequest.objects.exists()


# --- an order ----------------------------------------------------------------------------------


@pytest.fixture
def integration(org, token_client) -> APIClient:
    """An integration engine's token: the DICOMweb write scope."""
    return token_client(org, ["dicom:write"])


def order(client: APIClient, **body: Any) -> Any:
    return client.post("/api/v1/prefetch/", body, format="json")


def test_an_order_restores_the_priors_of_its_modality_and_body_part(
    org, integration, slow_restores, token_client
):
    activate(org, prefetch(keep_days=10, same_modality=True, same_body_part=True, last_studies=5))
    chest_ct = seed(org, days_ago=100)
    seed(org, days_ago=200, body_part="ABDOMEN")
    seed(org, days_ago=50, modality="MR")

    response = order(
        integration, patient_id="PAT-1", order_id="ORD-77", modality="ct", body_part="chest"
    )

    assert response.status_code == 202, response.content
    data = response.json()
    restore = RestoreRequest.objects.for_org(org).get()
    assert data["status"] == "started"
    assert data["reason"] == "prefetch: order ORD-77"
    assert (data["priors"], data["instances"], data["bytes"]) == (1, 1, chest_ct.total_bytes)
    assert (data["keep_days"], data["monthly_cap"], data["currency"]) == (10, "100.00", "USD")
    assert Decimal(data["amount"]) == restore.estimated_cost
    assert data["restore"]["id"] == restore.pk
    assert data["restore"]["origin"] == "prefetch"
    assert data["restore"]["reason"] == "prefetch: order ORD-77"
    assert data["restore"]["days"] == 10
    assert restored_studies(restore) == {chest_ct.pk}
    assert AuditEvent.objects.get(action="restore.started").actor_token is not None

    # Posted again (an engine's retry): the open restore answers, nothing new.
    again = order(
        integration, patient_id="PAT-1", order_id="ORD-77", modality="CT", body_part="CHEST"
    )
    assert again.status_code == 202 and again.json()["status"] == "in_progress"
    assert again.json()["restore"]["id"] == restore.pk
    assert RestoreRequest.objects.count() == 1

    # Listed with the reason by the restores API.
    listed = token_client(org, ["dicom:read"]).get("/api/v1/restores/").json()["results"]
    assert [(r["origin"], r["reason"]) for r in listed] == [("prefetch", "prefetch: order ORD-77")]


def test_an_order_without_modality_or_body_part_applies_the_other_conditions(
    org, integration, slow_restores
):
    activate(org, prefetch(same_modality=True, same_body_part=True, last_studies=2))
    ct, mr = seed(org, days_ago=100), seed(org, days_ago=50, modality="MR")
    seed(org, days_ago=300)  # the third most recent

    response = order(integration, patient_id="PAT-1", order_id="A1")

    assert response.status_code == 202
    assert restored_studies(RestoreRequest.objects.get()) == {ct.pk, mr.pk}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"order_id": "A1"}, "patient_id"),
        ({"patient_id": "PAT-1"}, "order_id"),
        ({"patient_id": "", "order_id": "A1"}, "patient_id"),
        ({"patient_id": "P" * 65, "order_id": "A1"}, "patient_id"),
        ({"patient_id": "PAT-1", "order_id": "O" * 65}, "order_id"),
        ({"patient_id": "PAT-1", "order_id": "A\x071"}, "order_id"),
        ({"patient_id": "PAT-1", "order_id": "A1", "modality": "C T"}, "modality"),
        ({"patient_id": "PAT-1", "order_id": "A1", "modality": "X" * 17}, "modality"),
        ({"patient_id": "PAT-1", "order_id": "A1", "body_part": "B" * 65}, "body_part"),
        ({"patient_id": ["PAT-1"], "order_id": "A1"}, "patient_id"),
    ],
)
def test_a_bad_order_is_a_400_naming_the_field(org, integration, body, field):
    activate(org, prefetch(last_studies=2))
    seed(org, days_ago=30)

    response = order(integration, **body)

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not RestoreRequest.objects.exists()


def test_an_order_needs_the_dicom_write_scope(org, token_client):
    activate(org, prefetch(last_studies=2))
    seed(org, days_ago=30)

    response = order(token_client(org, ["dicom:read"]), patient_id="PAT-1", order_id="A1")

    assert response.status_code == 403
    assert "dicom:write" in response.json()["error"]["message"]
    assert not RestoreRequest.objects.exists()


@pytest.mark.parametrize(
    ("role", "expected"), [("member", 200), ("admin", 200), ("billing", 403), ("auditor", 403)]
)
def test_an_order_by_session_needs_the_images_write_permission(
    org, other_org, make_member, role, expected
):
    member = make_member(org, role, email=f"{role}@stmary.example")
    client = APIClient()
    client.force_login(member.user)
    body = {"patient_id": "PAT-1", "order_id": "A1"}

    response = client.post(f"/api/v1/o/{org.slug}/prefetch/", body, format="json")
    elsewhere = client.post(f"/api/v1/o/{other_org.slug}/prefetch/", body, format="json")

    assert response.status_code == expected, response.content
    assert elsewhere.status_code == 404


def test_another_organizations_patient_has_no_priors(org, other_org, integration, slow_restores):
    activate(org, prefetch(last_studies=5))
    activate(other_org, prefetch(last_studies=5))
    seed(other_org, patient="THEIRS-1", days_ago=30)

    response = order(integration, patient_id="THEIRS-1", order_id="A1")

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["priors"]) == ("no_priors", 0)
    assert response.json()["restore"] is None
    assert not RestoreRequest.objects.exists()
    # The same answer as a patient nobody has.
    nobody = order(integration, patient_id="NOBODY", order_id="A2").json()
    assert nobody["status"] == "no_priors"


def test_an_order_without_a_prefetch_rule(org, integration):
    seed(org, days_ago=30)
    response = order(integration, patient_id="PAT-1", order_id="A1")
    assert response.status_code == 200
    assert response.json()["status"] == "no_rule" and response.json()["restore"] is None


def test_the_prefetch_endpoint_is_in_the_openapi_schema():
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/prefetch/"]["post"]
    assert {"200", "202", "400"} <= set(operation["responses"])
    assert "dicom:write" in operation["description"]


# --- the monthly cap ---------------------------------------------------------------------------


@pytest.fixture
def dear_restores(org):
    """A plan whose restores cost enough for a few small images to reach a cap."""
    plan = PricePlan.objects.create(code="dear", name="Dear", currency="EUR")
    PlanPrice.objects.create(
        plan=plan, meter="restore.bytes", unit_price=Decimal("100000000")
    )  # per GiB
    Subscription.objects.create(
        organization=org, plan=plan, starts_at=timezone.now() - dt.timedelta(days=60)
    )
    return plan


def price_of(org: Organization, *studies: Study) -> Decimal:
    size = sum(s.total_bytes for s in studies)
    amount = meter_price(org=org, meter="restore.bytes", quantity=size).amount
    assert amount is not None
    return amount.quantize(SIX, rounding=ROUND_CEILING)


def test_the_cap_stops_prefetching_and_is_audited(org, integration, dear_restores, slow_restores):
    first = seed(org, patient="PAT-1", days_ago=40, n=2)
    second = seed(org, patient="PAT-2", days_ago=40, n=2)
    a, b = price_of(org, first), price_of(org, second)
    assert a > 1 and b > 1
    cap = (a + b / 2).quantize(Decimal("0.01"))
    activate(org, prefetch(monthly_cap=str(cap), last_studies=5))

    started = order(integration, patient_id="PAT-1", order_id="A1")
    capped = order(integration, patient_id="PAT-2", order_id="A2")

    assert started.status_code == 202 and started.json()["status"] == "started"
    assert Decimal(started.json()["amount"]) == a
    assert Decimal(started.json()["month_cost"]) == a
    assert started.json()["currency"] == "EUR"
    assert capped.status_code == 200
    data = capped.json()
    assert data["status"] == "capped" and data["restore"] is None
    assert (Decimal(data["amount"]), Decimal(data["month_cost"])) == (b, a)
    assert Decimal(data["monthly_cap"]) == cap
    assert (data["instances"], data["bytes"]) == (2, second.total_bytes)
    assert RestoreRequest.objects.for_org(org).get().patient_id == "PAT-1"
    audit = AuditEvent.objects.get(action="prefetch.capped")
    assert audit.details == {
        "reason": "prefetch: order A2",
        "priors": 1,
        "instances": 2,
        "bytes": second.total_bytes,
        "estimated_cost": str(b),
        "month_cost": str(a),
        "monthly_cap": str(cap),
        "currency": "EUR",
    }

    # A new study settling is held back by the same cap.
    arrived = seed(org, patient="PAT-2", days_ago=0, archived=False)
    outcome = restores.prefetch_for_study(org=org, study=arrived)
    assert outcome.status == "capped"
    assert AuditEvent.objects.filter(action="prefetch.capped").count() == 2

    # A higher cap (a new policy version) lets it through.
    higher = (cap + b).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    activate(org, prefetch(monthly_cap=str(higher), last_studies=5))
    assert order(integration, patient_id="PAT-2", order_id="A2").json()["status"] == "started"
    assert RestoreRequest.objects.count() == 2


def test_last_months_prefetches_do_not_count(org, integration, dear_restores, slow_restores):
    first = seed(org, patient="PAT-1", days_ago=40)
    second = seed(org, patient="PAT-2", days_ago=40)
    cap = max(price_of(org, first), price_of(org, second)).quantize(Decimal("0.01")) + Decimal(
        "0.01"
    )
    activate(org, prefetch(monthly_cap=str(cap), last_studies=5))
    assert order(integration, patient_id="PAT-1", order_id="A1").json()["status"] == "started"
    assert order(integration, patient_id="PAT-2", order_id="A2").json()["status"] == "capped"

    RestoreRequest.objects.update(requested_at=timezone.now() - dt.timedelta(days=40))

    assert order(integration, patient_id="PAT-2", order_id="A2").json()["status"] == "started"


def test_a_zero_cap_prefetches_only_what_costs_nothing(org, integration, slow_restores):
    """The default plan prices restores: with a cap of 0 nothing is prefetched; on a plan that
    does not price them, everything is."""
    seed(org, days_ago=40)
    activate(org, prefetch(monthly_cap="0", last_studies=5))
    assert order(integration, patient_id="PAT-1", order_id="A1").json()["status"] == "capped"

    free = PricePlan.objects.create(code="free", name="Free", currency="EUR")
    Subscription.objects.create(
        organization=org, plan=free, starts_at=timezone.now() - dt.timedelta(minutes=5)
    )
    data = order(integration, patient_id="PAT-1", order_id="A1").json()
    assert data["status"] == "started" and Decimal(data["amount"]) == 0


# --- the portal and the preview ----------------------------------------------------------------


@pytest.fixture
def portal(owner) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def test_the_restores_page_lists_prefetches_with_their_reason_and_the_months_cost(
    org, portal, integration, slow_restores
):
    activate(org, prefetch(last_studies=5, monthly_cap="42.00"))
    seed(org, days_ago=40)
    order(integration, patient_id="PAT-1", order_id="ORD-9")
    restore = RestoreRequest.objects.get()

    page = portal.get(reverse("portal-restores", args=[org.slug]))
    detail = portal.get(reverse("portal-restore", args=[org.slug, restore.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    assert "prefetch: order ORD-9" in html and "Prefetch" in html
    assert 'id="prefetch-summary"' in html and "42.00 USD" in html
    assert detail.status_code == 200
    assert "prefetch: order ORD-9" in detail.content.decode()


def test_the_restores_page_without_a_prefetch_rule_has_no_prefetch_summary(org, portal):
    page = portal.get(reverse("portal-restores", args=[org.slug]))
    assert page.status_code == 200
    assert 'id="prefetch-summary"' not in page.content.decode()


@pytest.fixture
def eur_restores(org):
    plan = PricePlan.objects.create(code="eur", name="EUR", currency="EUR")
    PlanPrice.objects.create(plan=plan, meter="restore.bytes", unit_price=Decimal("100000000"))
    Subscription.objects.create(
        organization=org, plan=plan, starts_at=timezone.now() - dt.timedelta(days=60)
    )
    return plan


def test_the_policy_preview_prices_the_expected_prefetches(org, eur_restores):
    prior = seed(org, days_ago=400)  # archived: the new study's prior
    seed(org, days_ago=0, archived=False)  # arrived after it
    seed(org, patient="PAT-2", days_ago=0, archived=False)  # no priors
    rules = [COLD_AFTER_A_YEAR, prefetch(last_studies=3, monthly_cap="1000000")]

    preview = policy_preview(org=org, rules=rules)

    p = preview.prefetch
    assert p is not None
    # Three arrivals in the window; replayed, only the second study of PAT-1 had a prior.
    per_arrival = prior.bytes_archive // 3
    assert (p.arrivals, p.sampled, p.bytes_per_arrival) == (3, 3, per_arrival)
    assert p.bytes_per_month == per_arrival * 3 * 30 // PREFETCH_WINDOW_DAYS
    assert 0 < p.rest_of_month_bytes <= p.bytes_per_month
    assert not p.capped
    [line] = [ln for ln in preview.bill.lines if ln.meter == "restore.bytes"]
    assert line.label == "Prefetch restores (expected to the month's end)"
    assert line.quantity == Decimal(p.rest_of_month_bytes) / Decimal(GIB)
    expected = Decimal(p.rest_of_month_bytes) / Decimal(GIB) * Decimal("100000000")
    assert abs(line.amount - expected) < Decimal("0.000001")
    assert preview.bill.currency == "EUR"

    # Without the prefetch rule there is no such line; with a cap the line is cut to it.
    assert not [
        ln
        for ln in policy_preview(org=org, rules=[COLD_AFTER_A_YEAR]).bill.lines
        if ln.meter == "restore.bytes"
    ]
    assert policy_preview(org=org, rules=[COLD_AFTER_A_YEAR]).prefetch is None
    capped = policy_preview(org=org, rules=[prefetch(last_studies=3, monthly_cap="0.01")])
    [line] = capped.bill.lines
    assert line.amount == Decimal("0.01") and line.label.endswith("cut to the monthly cap")
    assert capped.prefetch is not None and capped.prefetch.capped


def test_the_preview_api_shows_the_prefetch_line(org, eur_restores, token_client):
    seed(org, days_ago=400)
    seed(org, days_ago=0, archived=False)
    client = token_client(org, ["admin"])

    response = client.post(
        "/api/v1/policies/preview/",
        {"rules": [prefetch(last_studies=3, monthly_cap="500")]},
        format="json",
    )

    assert response.status_code == 200, response.content
    lines = response.json()["bill"]["lines"]
    assert [ln["meter"] for ln in lines] == ["restore.bytes"]
    assert lines[0]["description"].startswith("Prefetch restores")
