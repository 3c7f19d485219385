"""The simulator's series-level inventory against the instance-level one (the exact reading of
every instance row), and the display of amounts below a cent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.template.loader import render_to_string

from archive.analytics.curve import access_curve
from archive.analytics.simulator import inventory, simulate
from archive.analytics.simulator.results import money_text
from archive.models import AccessEvent, Instance, Series, Study
from billing.meters import GIB
from billing.models import PlanPrice, PricePlan, Subscription
from tests.archive.analytics_helpers import add_study, read

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
RULES = [
    {
        "conditions": {"days_since_last_access": {"min": 45}, "modalities": ["CT"]},
        "action": {"type": "move", "tier": "cold"},
    },
    {
        "conditions": {"days_since_study_date": {"min": 200}, "patient_age_years": {"min": 18}},
        "action": {"type": "move", "tier": "archive"},
    },
    {
        "conditions": {"description_pattern": "*CHEST*"},
        "action": {"type": "delete", "after_days": 3650},
    },
]


def _rows(org, reader):
    rules = RULES
    age = inventory._edges(
        inventory.DAY_EDGES, inventory._thresholds(rules, "days_since_study_date")
    )
    idle = inventory._edges(
        inventory.DAY_EDGES, inventory._thresholds(rules, "days_since_last_access")
    )
    group = ["mod", "tier", "age_b", "idle_b", "tier_b", "descr", "page", "held"]
    rows = reader(org=org, now=NOW, group=group, edges=(age, idle, list(inventory.TIER_DAY_EDGES)))
    return {
        tuple(str(r[g]) for g in group): (int(r["n"]), int(r["b"]))
        for r in rows
        if int(r["n"] or 0) or int(r["b"] or 0)
    }


def _move(series: Series, count: int, tier: str, at: datetime) -> None:
    """Move ``count`` instances of ``series`` to ``tier`` at ``at``, with the series' and
    study's byte counters, as the tier move executor does."""
    moved = list(Instance.objects.filter(series=series, tier="hot").order_by("pk")[:count])
    Instance.objects.filter(pk__in=[i.pk for i in moved]).update(tier=tier, tier_changed_at=at)
    size = sum(i.size_bytes for i in moved)
    for model, pk in ((Series, series.pk), (Study, series.study_id)):
        row = model.objects.get(pk=pk)
        row.bytes_hot -= size
        setattr(row, f"bytes_{tier}", getattr(row, f"bytes_{tier}") + size)
        row.save()


def test_series_inventory_matches_the_instance_rows(org, other_org):
    old = NOW - timedelta(days=400)
    # Two series read at different times (one by a series-level read), one series never read,
    # and one received after the study's last read.
    a = add_study(
        org,
        study_date=old.date(),
        received=old,
        series=[("CT", 4, 1000), ("MR", 3, 7000)],
        description="CT CHEST",
        birth_date=old.date().replace(year=old.year - 40),
    )
    ct, mr = list(Series.objects.filter(study=a).order_by("pk"))
    at = NOW - timedelta(days=50)
    AccessEvent.objects.create(
        organization=org, study=a, series=ct, kind="retrieve", at=at, bytes=4000
    )
    Instance.objects.filter(series=ct).update(last_accessed_at=at)
    study_read = NOW - timedelta(days=300)
    read(org, a, study_read)
    Instance.objects.filter(series=mr).update(last_accessed_at=study_read)
    # A metadata request does not count as a read.
    read(org, a, NOW - timedelta(days=2), kind="metadata")
    # Part of the MR series moved to cold 20 days ago, another part to archive long ago.
    _move(mr, 1, "cold", NOW - timedelta(days=20))
    _move(mr, 1, "archive", NOW - timedelta(days=250))
    b_at = NOW - timedelta(days=100)
    add_study(org, study_date=None, received=b_at, series=[("US", 5, 300)], tier="warm")
    late = add_study(
        org, study_date=(NOW - timedelta(days=30)).date(), received=NOW - timedelta(days=30),
        series=[("CR", 2, GIB)],
    )  # fmt: skip
    read(org, late, NOW - timedelta(days=40))  # before its receipt: it counts from the receipt
    add_study(other_org, study_date=old.date(), received=old, series=[("CT", 9, 10)])

    series_level = _rows(org, inventory._inventory_series_rows)
    instance_level = _rows(org, inventory._inventory_instance_rows)
    assert series_level == instance_level
    assert sum(n for n, _ in series_level.values()) == 4 + 3 + 5 + 2


def test_rules_on_sop_classes_read_the_instance_rows(org, monkeypatch):
    at = NOW - timedelta(days=100)
    add_study(org, study_date=at.date(), received=at, series=[("CT", 2, 10)])
    called = []
    real = inventory._inventory_instance_rows

    def spy(**kwargs):
        called.append(kwargs["group"])
        return real(**kwargs)

    monkeypatch.setattr(inventory, "_inventory_instance_rows", spy)
    rules = [
        {
            "conditions": {"sop_classes": ["1.2.840.10008.5.1.4.1.1.2"]},
            "action": {"type": "move", "tier": "cold"},
        }
    ]
    buckets, instances, total = inventory.inventory(org=org, now=NOW, rules=rules)
    assert called and "sop_class_uid" in called[0]
    assert (instances, total) == (2, 20)
    assert buckets[0].sop_class == "1.2.840.10008.5.1.4.1.1.2"


def test_money_text_shows_sub_cent_amounts():
    assert money_text(Decimal("0.72")) == "0.72"
    assert money_text(Decimal("0.0032")) == "0.0032"
    assert money_text(Decimal("0.00"), Decimal("0.00321")) == "0.0032"
    assert money_text(Decimal("0.00"), Decimal("0.00004")) == "<0.0001"
    assert money_text(Decimal("0.00"), Decimal(0)) == "0.00"
    assert money_text(Decimal("1234.5")) == "1,234.50"


def test_tiny_images_show_their_cost_below_a_cent(org):
    plan = PricePlan.objects.create(code="sim-tiny", name="Tiny", currency="USD")
    PlanPrice.objects.create(plan=plan, meter="storage", tier="hot", unit_price=Decimal("0.02"))
    Subscription.objects.create(organization=org, plan=plan, starts_at=NOW - timedelta(days=500))
    at = NOW - timedelta(days=200)
    # 10 MiB: 0.02 x 10/1024 = 0.000195 a month, billed 0.00.
    add_study(org, study_date=at.date(), received=at, series=[("CR", 10, 1024 * 1024)])
    sim = simulate(org=org, now=NOW)
    hot = sim.scenario("all_hot")
    assert hot.total == Decimal("0.00")
    assert hot.exact_total == Decimal("0.02") * 10 / 1024 * 12
    html = render_to_string("archive/_simulation.html", {"simulation": sim})
    assert 'data-scenario-total="all_hot"' in html
    assert "<strong>0.0023</strong>" in html
    assert "0.002344 USD before each month&#x27;s rounding to the cent" in html


def test_days_in_tier_are_cut_only_within_each_tiers_minimum(org):
    """Cold bytes past their 90 days owe no early deletion: they share the last days-in-tier
    bucket with older ones (the series reading looks only at the last 90 days for cold), while
    archive bytes 100 days in still owe 80 of their 180 days."""
    at = NOW - timedelta(days=400)
    study = add_study(org, study_date=at.date(), received=at, series=[("CT", 3, 100)])
    (series,) = Series.objects.filter(study=study)
    _move(series, 1, "cold", NOW - timedelta(days=100))
    _move(series, 1, "archive", NOW - timedelta(days=100))
    last = len(inventory.TIER_DAY_EDGES)
    for reader in (inventory._inventory_series_rows, inventory._inventory_instance_rows):
        rows = _rows(org, reader)
        tier_b = {key[1]: int(key[4]) for key in rows}
        assert tier_b == {"hot": last, "cold": last, "archive": 2}


def _curve(curve):
    return {
        modality: [p.as_dict() for p in points]
        for modality, points in [("", curve.overall), *curve.by_modality.items()]
    }


def test_simulation_curve_is_the_access_curve(org, other_org):
    """The simulator counts the curve in its inventory statement (one pass over the access log
    for both): the same curve as ``access_curve``, trashed studies, studies without series,
    series-level reads and several series of one modality included."""
    old = NOW - timedelta(days=400)
    # Two CT series and an MR series in one study: counted once under CT, once under MR.
    a = add_study(
        org,
        study_date=old.date(),
        received=old,
        series=[("CT", 2, 100), ("CT", 1, 50), ("MR", 1, 7000)],
    )
    read(org, a, NOW - timedelta(days=200))
    # A series-level read, later than the study-level one: the study's latest read.
    mr = Series.objects.get(study=a, modality="MR")
    AccessEvent.objects.create(
        organization=org, study=a, series=mr, kind="retrieve", at=NOW - timedelta(days=20)
    )
    b = add_study(org, study_date=None, received=NOW - timedelta(days=100), series=[("US", 3, 9)])
    read(org, b, NOW - timedelta(days=60), kind="download")
    read(org, b, NOW - timedelta(days=5), kind="metadata")
    # A trashed study: out of the inventory, in the curve.
    c = add_study(
        org, study_date=(NOW - timedelta(days=50)).date(), received=old, series=[("CT", 1, 8)]
    )
    read(org, c, NOW - timedelta(days=10))
    Study.objects.filter(pk=c.pk).update(trashed_at=NOW - timedelta(days=1))
    # A study without series (its bytes count overall only).
    Study.objects.create(
        organization=org, study_uid="1.2.3.no-series", study_date=old.date(), total_bytes=5,
        bytes_hot=5, created_at=old,
    )  # fmt: skip
    x = add_study(other_org, study_date=old.date(), received=old, series=[("CT", 9, 10)])
    read(other_org, x, NOW - timedelta(days=1))

    sim = simulate(org=org, now=NOW)
    assert _curve(sim.curve) == _curve(access_curve(org=org, now=NOW))
    assert sim.curve.point(7, "CT").studies_observed == 2
    assert sim.curve.point(7).studies_observed == 4
    assert sim.instances == 4 + 3


def test_idle_days_on_a_cut_count_as_reached(org):
    """A series last read exactly 90 days ago is 90 days idle: in the bucket from 90 days on,
    with the series and the instance readings alike."""
    at = NOW - timedelta(days=400)
    study = add_study(org, study_date=at.date(), received=at, series=[("CT", 2, 10)])
    read(org, study, NOW - timedelta(days=90))
    Instance.objects.filter(study=study).update(last_accessed_at=NOW - timedelta(days=90))
    idle_edges = inventory._edges(
        inventory.DAY_EDGES, inventory._thresholds(RULES, "days_since_last_access")
    )
    series_level = _rows(org, inventory._inventory_series_rows)
    assert series_level == _rows(org, inventory._inventory_instance_rows)
    ((key, _),) = series_level.items()
    assert int(key[3]) == idle_edges.index(90) + 1
