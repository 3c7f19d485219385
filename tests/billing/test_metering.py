from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection, transaction

from billing.metering import (
    Delta,
    Usage,
    record_usage,
    record_usage_bulk,
    storage_delta,
    storage_delta_bulk,
)
from billing.models import StorageDelta, UsageEvent
from tenants.errors import ValidationFailed

pytestmark = pytest.mark.django_db

T = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


def test_repeated_idempotency_key_is_recorded_once(org):
    assert (
        record_usage(org=org, meter="egress.bytes", quantity=100, at=T, idempotency_key="read:1")
        is True
    )
    assert (
        record_usage(org=org, meter="egress.bytes", quantity=100, at=T, idempotency_key="read:1")
        is False
    )
    assert UsageEvent.objects.for_org(org).count() == 1


def test_same_key_in_another_org_is_separate(org, other_org):
    record_usage(org=org, meter="api.requests", quantity=1, at=T, idempotency_key="k")
    record_usage(org=other_org, meter="api.requests", quantity=1, at=T, idempotency_key="k")
    assert UsageEvent.objects.count() == 2


def test_duplicate_keeps_callers_transaction_usable(org):
    with transaction.atomic():
        record_usage(org=org, meter="api.requests", quantity=1, at=T, idempotency_key="dup")
        record_usage(org=org, meter="api.requests", quantity=1, at=T, idempotency_key="dup")
        storage_delta(org=org, tier="hot", delta_bytes=5, at=T, idempotency_key="s1")
    assert StorageDelta.objects.count() == 1


def test_rollback_of_caller_removes_usage(org):
    with pytest.raises(RuntimeError), transaction.atomic():
        record_usage(org=org, meter="ingest.bytes", quantity=9, at=T, idempotency_key="x")
        raise RuntimeError("the business change failed")
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"meter": "teleport.bytes"}, "meter"),
        ({"meter": "storage"}, "meter"),
        ({"quantity": -1}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"at": datetime(2026, 3, 1, 10, 30)}, "at"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"meter": "tier.transitions", "dimensions": {"tier": "frozen"}}, "tier"),
        ({"meter": "tier.transitions", "dimensions": {}}, "tier"),
    ],
)
def test_bad_usage_is_refused_and_nothing_recorded(org, kwargs, field):
    args = {
        "meter": "egress.bytes",
        "quantity": 10,
        "at": T,
        "idempotency_key": "k",
        "dimensions": None,
    } | kwargs
    with pytest.raises(ValidationFailed) as err:
        record_usage(org=org, **args)
    assert field in err.value.fields
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tier": "glacier"}, "tier"),
        ({"at": datetime(2026, 1, 1)}, "at"),
        ({"delta_bytes": "5"}, "delta_bytes"),
    ],
)
def test_bad_storage_delta_is_refused(org, kwargs, field):
    args = {"tier": "hot", "delta_bytes": 5, "at": T, "idempotency_key": "k"} | kwargs
    with pytest.raises(ValidationFailed) as err:
        storage_delta(org=org, **args)
    assert field in err.value.fields
    assert not StorageDelta.objects.exists()


def test_bulk_records_each_key_once_and_validates_all_first(org):
    events = [Usage("api.requests", 1, T, f"req:{i % 500}") for i in range(1000)]
    assert record_usage_bulk(org=org, events=events) == 1000
    assert UsageEvent.objects.for_org(org).count() == 500
    bad = [Usage("api.requests", 1, T, "new:1"), Usage("api.requests", -5, T, "new:2")]
    with pytest.raises(ValidationFailed):
        record_usage_bulk(org=org, events=bad)
    assert UsageEvent.objects.for_org(org).count() == 500
    storage_delta_bulk(org=org, deltas=[Delta("hot", 10, T, "d1"), Delta("hot", 10, T, "d1")])
    assert StorageDelta.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_with_same_key_record_once(postgres, org):
    """Two transactions race on one key: the unique constraint lets exactly one win."""
    barrier = threading.Barrier(2)
    results: list[bool] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with transaction.atomic():
                barrier.wait(timeout=5)
                results.append(
                    record_usage(
                        org=org, meter="egress.bytes", quantity=7, at=T, idempotency_key="race"
                    )
                )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [False, True]
    assert UsageEvent.objects.filter(idempotency_key="race").count() == 1
