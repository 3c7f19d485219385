"""Both engines of archive policies select the same instances, for every condition kind.

The planner and the preview select with SQL (``archive.policies.sql.move_selection``); the cost
simulator reads the index into buckets (``archive.analytics.simulator.inventory``) and matches
them in Python (``archive.policies.python.CompiledRule``). Each instance below is the only one of
its own organization, so that the simulator's inventory of that organization describes that
instance alone. A one-rule policy "move to cold when <condition>" runs through both engines at
the same moment; they must select the same instances, and each case names instances on either
side of its boundaries (exact minimum and maximum, a day or an hour either side, unknown values,
case and wildcard edge cases) that the selection must, or must not, contain. The simulator's
inventory is read both ways it can be (from the series' aggregates, and from every instance row
when a rule looks at SOP classes); a year on, the patient's age at the study date has not changed
for either engine; and delete rules trash the same studies in both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from archive.analytics.simulator.inventory import inventory
from archive.locations.selectors import location_primary
from archive.models import AccessEvent, Instance, Series, Study
from archive.policies.python import CompiledRule
from archive.policies.sql import move_selection, trash_selection
from archive.policies.validate import CONDITIONS, rules_validate
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 16, 9, 30, tzinfo=UTC)
TODAY = NOW.date()
STUDY_DAY = date(2024, 11, 28)  # the usual study date: 200 days ago

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"  # CT_IMAGE is a prefix of it
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def days_ago(days: float, **more: float) -> datetime:
    return NOW - timedelta(days=days, **more)


def at(day: date, hour: int, minute: int) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


@dataclass(frozen=True)
class Specimen:
    """One stored instance (hot, in a study and series of its own). ``read`` is its last read
    (a retrieve of the whole study, or of its series with ``read_kind="download"``);
    ``metadata_read``: a WADO-RS metadata request, which is no read."""

    modality: str = "CT"
    sop_class: str = CT_IMAGE
    description: str = "CT CHEST W/O CONTRAST"
    study_date: date | None = STUDY_DAY
    received: datetime = days_ago(199)
    read: datetime | None = None
    read_kind: str = AccessEvent.Kind.RETRIEVE
    metadata_read: datetime | None = None
    birth_date: date | None = date(1974, 1, 10)  # 50 at the study date


SPECIMENS: dict[str, Specimen] = {
    # Unless said otherwise: CT, "CT CHEST W/O CONTRAST", 200 days since the study date, never
    # read (199 days since its arrival), a patient of 50.
    "ct_chest": Specimen(),
    # The last access: the last read, or the arrival when never read.
    "read_2h_ago": Specimen(read=days_ago(0, hours=2)),
    # Stamped by a server whose clock runs an hour ahead: -1 days since, as the planner counts.
    "read_1h_ahead": Specimen(read=days_ago(0, hours=-1)),
    "read_89d_23h_ago": Specimen(read=days_ago(89, hours=23)),
    "read_90d_ago": Specimen(read=days_ago(90)),
    "read_91d_ago": Specimen(read=days_ago(91)),
    "series_downloaded_95d_ago": Specimen(read=days_ago(95), read_kind=AccessEvent.Kind.DOWNLOAD),
    "read_400d_12h_ago": Specimen(
        study_date=TODAY - timedelta(days=1000), received=days_ago(1000), read=days_ago(400.5)
    ),
    "read_401d_ago": Specimen(
        study_date=TODAY - timedelta(days=1000), received=days_ago(1000), read=days_ago(401)
    ),
    "never_read_arrived_120d_ago": Specimen(
        study_date=TODAY - timedelta(days=121), received=days_ago(120)
    ),
    "metadata_only_5d_ago_arrived_300d_ago": Specimen(
        study_date=TODAY - timedelta(days=301), received=days_ago(300), metadata_read=days_ago(5)
    ),
    # The study date, or the day of arrival when the study has none.
    "dated_today": Specimen(study_date=TODAY, received=days_ago(0, hours=1)),
    # A site east of UTC: its study date is already tomorrow.
    "dated_tomorrow": Specimen(study_date=TODAY + timedelta(days=1), received=days_ago(0, hours=1)),
    "dated_364d_ago": Specimen(study_date=TODAY - timedelta(days=364), received=days_ago(363)),
    "dated_365d_ago": Specimen(study_date=TODAY - timedelta(days=365), received=days_ago(364)),
    "dated_366d_ago": Specimen(study_date=TODAY - timedelta(days=366), received=days_ago(365)),
    # 365 days since the day it arrived, but only 364 whole days since it arrived.
    "undated_arrived_365d_ago_23h59": Specimen(
        study_date=None, received=at(TODAY - timedelta(days=365), 23, 59)
    ),
    "undated_arrived_364d_ago_0h01": Specimen(
        study_date=None, received=at(TODAY - timedelta(days=364), 0, 1)
    ),
    # Modalities (of the series) and SOP classes (of the instance).
    "enhanced_ct": Specimen(sop_class=ENHANCED_CT_IMAGE),
    "mr_knee": Specimen(modality="MR", sop_class=MR_IMAGE, description="MR KNEE LEFT"),
    "us_abdomen": Specimen(modality="US", sop_class=US_IMAGE, description="US ABDOMEN"),
    "sr_report": Specimen(modality="SR", sop_class=COMPREHENSIVE_SR, description="CT CHEST REPORT"),
    "no_modality": Specimen(modality="", sop_class=SECONDARY_CAPTURE, description="SCANNED FORM"),
    # Study descriptions.
    "chest_pa_mixed_case": Specimen(modality="CR", sop_class=CR_IMAGE, description="Chest PA"),
    "chest_only": Specimen(modality="CR", sop_class=CR_IMAGE, description="CHEST"),
    "thorax_pa_100": Specimen(modality="CR", sop_class=CR_IMAGE, description="Thorax (PA) 100%"),
    "no_description": Specimen(description=""),
    "schadel": Specimen(description="Schädel nativ"),
    "a_b_dot_c": Specimen(description="A_B.C"),
    "a_b_x_c": Specimen(description="A_BXC"),
    # The patient's age at the study date (2024-11-28), or at arrival without one.
    "age_18_birthday_that_day": Specimen(birth_date=date(2006, 11, 28)),
    "age_17_birthday_next_day": Specimen(birth_date=date(2006, 11, 29)),
    "age_17_born_in_january": Specimen(birth_date=date(2007, 1, 15)),
    "age_65": Specimen(birth_date=date(1959, 3, 1)),
    "birth_date_unknown": Specimen(birth_date=None),
    "undated_age_5_at_arrival": Specimen(
        study_date=None, received=days_ago(10), birth_date=date(2020, 5, 7)
    ),
    "undated_17_at_arrival_18_now": Specimen(
        study_date=None, received=at(date(2024, 12, 20), 10, 0), birth_date=date(2007, 1, 10)
    ),
}

SIZE = 1000
_uids = itertools.count(1)


def store(spec: Specimen) -> Instance:
    """The specimen in an organization of its own, with the index rows (and the access log) as
    ingest and ``archive.index.services.access_record`` write them."""
    org = OrganizationFactory.create()
    n = next(_uids)
    study = Study.objects.create(
        organization=org,
        study_uid=f"1.2.826.0.1.{n}",
        study_date=spec.study_date,
        study_description=spec.description,
        patient_birth_date=spec.birth_date,
        modalities=f"\\{spec.modality}\\",
        series_count=1,
        instance_count=1,
        total_bytes=SIZE,
        bytes_hot=SIZE,
        created_at=spec.received,
        last_accessed_at=max(filter(None, (spec.read, spec.metadata_read)), default=None),
    )
    series = Series.objects.create(
        organization=org,
        study=study,
        series_uid=f"1.2.826.0.2.{n}",
        modality=spec.modality,
        instance_count=1,
        total_bytes=SIZE,
        bytes_hot=SIZE,
        created_at=spec.received,
        last_accessed_at=study.last_accessed_at,
    )
    instance = Instance.objects.create(
        organization=org,
        study=study,
        series=series,
        sop_instance_uid=f"1.2.826.0.3.{n}",
        sop_class_uid=spec.sop_class,
        size_bytes=SIZE,
        sha256="0" * 64,
        location=location_primary(org),
        object_key=f"k/{n}",
        tier="hot",
        received_at=spec.received,
        last_accessed_at=spec.read,
    )
    if spec.read is not None:
        by_series = spec.read_kind == AccessEvent.Kind.DOWNLOAD
        AccessEvent.objects.create(
            organization=org,
            study=study,
            series=series if by_series else None,
            kind=spec.read_kind,
            at=spec.read,
            bytes=SIZE,
        )
    if spec.metadata_read is not None:
        AccessEvent.objects.create(
            organization=org, study=study, kind=AccessEvent.Kind.METADATA, at=spec.metadata_read
        )
    return instance


@pytest.fixture
def specimens() -> dict[str, Instance]:
    return {label: store(spec) for label, spec in SPECIMENS.items()}


def case(kind: str, value: Any, *, hit: set[str], miss: set[str]) -> Any:
    """``hit``: specimens the selection must contain; ``miss``: specimens it must not."""
    assert hit and miss and hit <= SPECIMENS.keys() and miss <= SPECIMENS.keys()
    return pytest.param({kind: value}, hit, miss, id=f"{kind}={value}")


LAST = "days_since_last_access"
STUDY = "days_since_study_date"
AGE = "patient_age_years"
PATTERN = "description_pattern"

CASES = [
    case(
        LAST,
        {"min": 90},
        hit={
            "read_90d_ago",
            "read_91d_ago",
            "series_downloaded_95d_ago",
            "never_read_arrived_120d_ago",
            "metadata_only_5d_ago_arrived_300d_ago",
        },
        miss={"read_89d_23h_ago", "read_2h_ago", "dated_today"},
    ),
    case(
        LAST,
        {"max": 90},
        hit={"read_90d_ago", "read_89d_23h_ago", "read_2h_ago", "undated_age_5_at_arrival"},
        miss={"read_91d_ago", "metadata_only_5d_ago_arrived_300d_ago"},
    ),
    case(
        LAST,
        {"min": 90, "max": 400},
        hit={"read_90d_ago", "read_400d_12h_ago", "ct_chest"},
        miss={"read_89d_23h_ago", "read_401d_ago"},
    ),
    case(
        LAST,
        {"min": 365},
        hit={"read_401d_ago", "dated_366d_ago"},
        miss={"undated_arrived_365d_ago_23h59", "dated_365d_ago"},
    ),
    case(
        LAST,
        {"max": 0},
        hit={"read_2h_ago", "read_1h_ahead", "dated_today"},
        miss={"read_89d_23h_ago"},
    ),
    case(LAST, {"min": 0}, hit={"read_2h_ago", "ct_chest"}, miss={"read_1h_ahead"}),
    case(
        STUDY,
        {"min": 365},
        hit={"dated_365d_ago", "dated_366d_ago", "undated_arrived_365d_ago_23h59"},
        miss={"dated_364d_ago", "undated_arrived_364d_ago_0h01", "dated_tomorrow", "ct_chest"},
    ),
    case(
        STUDY,
        {"max": 364},
        hit={"dated_364d_ago", "undated_arrived_364d_ago_0h01", "dated_today", "dated_tomorrow"},
        miss={"dated_365d_ago", "undated_arrived_365d_ago_23h59"},
    ),
    case(
        STUDY,
        {"min": 365, "max": 365},
        hit={"dated_365d_ago", "undated_arrived_365d_ago_23h59"},
        miss={"dated_364d_ago", "dated_366d_ago"},
    ),
    case(STUDY, {"max": 0}, hit={"dated_today", "dated_tomorrow"}, miss={"dated_364d_ago"}),
    case(
        STUDY,
        {"min": 0},
        hit={"dated_today", "ct_chest"},
        miss={"dated_tomorrow"},
    ),
    case(STUDY, {"min": 1}, hit={"ct_chest"}, miss={"dated_today", "dated_tomorrow"}),
    case(
        "modalities",
        ["CT"],
        hit={"ct_chest", "enhanced_ct"},
        miss={"mr_knee", "sr_report", "no_modality", "chest_only"},
    ),
    case("modalities", ["mr", "US"], hit={"mr_knee", "us_abdomen"}, miss={"ct_chest"}),
    # The DICOM multi-valued form, as typed in the rule editor.
    case(
        "modalities",
        "SR\\CR",
        hit={"sr_report", "chest_pa_mixed_case"},
        miss={"ct_chest", "no_modality"},
    ),
    case("sop_classes", [CT_IMAGE], hit={"ct_chest"}, miss={"enhanced_ct", "mr_knee"}),
    case(
        "sop_classes",
        [MR_IMAGE, COMPREHENSIVE_SR],
        hit={"mr_knee", "sr_report"},
        miss={"ct_chest", "no_modality"},
    ),
    case(
        PATTERN,
        "*CHEST*",
        hit={"ct_chest", "chest_pa_mixed_case", "chest_only", "sr_report"},
        miss={"mr_knee", "thorax_pa_100", "no_description"},
    ),
    case(PATTERN, "chest*", hit={"chest_pa_mixed_case", "chest_only"}, miss={"ct_chest"}),
    case(PATTERN, "CT ?HEST*", hit={"ct_chest", "sr_report"}, miss={"chest_only"}),
    case(PATTERN, "?????", hit={"chest_only"}, miss={"chest_pa_mixed_case", "no_description"}),
    case(PATTERN, "*(pa) 100%", hit={"thorax_pa_100"}, miss={"chest_pa_mixed_case"}),
    case(PATTERN, "*SCHÄDEL*", hit={"schadel"}, miss={"ct_chest"}),
    case(PATTERN, "A_B.C", hit={"a_b_dot_c"}, miss={"a_b_x_c"}),
    case(PATTERN, "*?", hit={"ct_chest", "a_b_x_c"}, miss={"no_description"}),
    case(
        AGE,
        {"min": 18},
        hit={"age_18_birthday_that_day", "age_65", "ct_chest"},
        miss={
            "age_17_birthday_next_day",
            "age_17_born_in_january",
            "undated_17_at_arrival_18_now",
            "birth_date_unknown",
        },
    ),
    case(
        AGE,
        {"max": 17},
        hit={
            "age_17_birthday_next_day",
            "age_17_born_in_january",
            "undated_17_at_arrival_18_now",
            "undated_age_5_at_arrival",
        },
        miss={"age_18_birthday_that_day", "birth_date_unknown"},
    ),
    case(
        AGE,
        {"min": 17, "max": 17},
        hit={"age_17_birthday_next_day", "age_17_born_in_january"},
        miss={"age_18_birthday_that_day", "undated_age_5_at_arrival", "birth_date_unknown"},
    ),
    case(AGE, {"min": 65}, hit={"age_65"}, miss={"ct_chest", "birth_date_unknown"}),
    case(
        AGE,
        {"max": 5},
        hit={"undated_age_5_at_arrival"},
        miss={"age_17_born_in_january", "birth_date_unknown"},
    ),
    case(AGE, {"min": 0}, hit={"ct_chest", "age_65"}, miss={"birth_date_unknown"}),
]

# Every condition kind of the rule language has its cases.
assert {kind for param in CASES for kind in param.values[0]} == set(CONDITIONS)


# A rule on SOP classes makes the inventory read every instance row instead of the series'
# aggregates (``archive.analytics.simulator.inventory``); it is added after the rule under test
# and never evaluated.
ON_SOP_CLASSES = {
    "conditions": {"sop_classes": [CT_IMAGE]},
    "action": {"type": "move", "tier": "archive"},
}


def simulator_matches(
    instance: Instance,
    rules: list[dict[str, Any]],
    *,
    instance_rows: bool = False,
    shift: float = 0,
) -> bool:
    """Whether the simulator's engine moves the instance: its organization's inventory (one
    bucket, the instance) matched by the rule, as the projection matches it ``shift`` days from
    now (every specimen is hot, so a match is a move). ``instance_rows``: the inventory read
    from every instance row rather than from the series' aggregates."""
    read = [*rules, ON_SOP_CLASSES] if instance_rows else rules
    buckets, instances, _ = inventory(org=instance.organization, now=NOW, rules=read)
    assert instances == 1 and len(buckets) == 1
    (bucket,) = buckets
    rule = CompiledRule(0, rules[0])
    return rule.matches_always(bucket) and rule.matches_at(bucket, shift)


def planner_matches(instance: Instance, rules: list[dict[str, Any]], now: datetime = NOW) -> bool:
    selection = move_selection(org=instance.organization, rules=rules, now=now)
    return set(selection.values_list("id", flat=True)) == {instance.pk}


@pytest.mark.parametrize(("conditions", "hit", "miss"), CASES)
def test_sql_and_python_engines_select_the_same_instances(specimens, conditions, hit, miss):
    raw = {"conditions": conditions, "action": {"type": "move", "tier": "cold"}}
    rules = rules_validate(org=specimens["ct_chest"].organization, rules=[raw])

    by_sql = {label for label, inst in specimens.items() if planner_matches(inst, rules)}
    by_python = {label for label, inst in specimens.items() if simulator_matches(inst, rules)}
    by_python_from_instance_rows = {
        label
        for label, inst in specimens.items()
        if simulator_matches(inst, rules, instance_rows=True)
    }

    assert by_sql == by_python
    assert by_sql == by_python_from_instance_rows
    assert hit <= by_sql
    assert not miss & by_sql
    assert by_sql and by_sql != set(specimens)


@pytest.mark.parametrize(("conditions", "hit", "miss"), [p for p in CASES if AGE in p.values[0]])
def test_the_patient_age_at_the_study_date_does_not_grow_in_the_projection(
    specimens, conditions, hit, miss
):
    """A year on, the planner still takes the age at the study date: the simulator's months
    (today's inventory, matched ``shift`` days ahead) must not age the patients."""
    raw = {"conditions": conditions, "action": {"type": "move", "tier": "cold"}}
    rules = rules_validate(org=specimens["ct_chest"].organization, rules=[raw])
    later = NOW + timedelta(days=400)

    by_sql = {label for label, inst in specimens.items() if planner_matches(inst, rules, later)}
    by_python = {
        label for label, inst in specimens.items() if simulator_matches(inst, rules, shift=400)
    }

    assert by_sql == by_python
    assert hit <= by_sql
    assert not miss & by_sql


def simulator_trashes(instance: Instance, rules: list[dict[str, Any]]) -> bool:
    """Whether the simulator's projection sends the instance's study to the trash now: its
    delete step on the organization's inventory (one bucket, the instance) at a shift of 0."""
    buckets, instances, _ = inventory(org=instance.organization, now=NOW, rules=rules)
    assert instances == 1 and len(buckets) == 1
    (bucket,) = buckets
    rule = CompiledRule(0, rules[0])
    return (
        not bucket.held
        and rule.matches_always(bucket)
        and bucket.age >= rule.action["after_days"]
        and rule.matches_at(bucket, 0)
    )


def planner_trashes(instance: Instance, rules: list[dict[str, Any]]) -> bool:
    selection = trash_selection(org=instance.organization, rules=rules, now=NOW)
    return set(selection.values_list("id", flat=True)) == {instance.study_id}


METADATA_AS_ACCESS = (
    "Delete rules take the study's last access from Study.last_accessed_at, which "
    "archive.index.services.access_record also sets on WADO-RS metadata requests; move rules "
    "(Instance.last_accessed_at) and the simulator (reads of the access log) do not count them "
    "(README: the last access is the instance's last read; metadata requests are not reads)."
)


def delete_case(conditions: dict[str, Any], *, xfail: str | None = None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(conditions, id=f"delete:{conditions}", marks=marks)


# Where the metadata request of 5 days ago decides in SQL.
METADATA_DECIDES = [{LAST: {"min": 90}}, {LAST: {"max": 90}}, {LAST: {"min": 90, "max": 400}}]
# Delete rules (a whole study, after the least retention: 1 day) on the conditions they accept;
# every specimen is a study of one series and one instance, so a study and its instance are
# selected together.
DELETE_CASES = [
    delete_case(conditions)
    for conditions in (param.values[0] for param in CASES)
    # (No study 0 days old is due after the least retention, 1 day.)
    if "sop_classes" not in conditions and conditions != {STUDY: {"max": 0}}
]


@pytest.mark.parametrize("conditions", DELETE_CASES)
def test_sql_and_python_engines_trash_the_same_studies(specimens, conditions):
    raw = {"conditions": conditions, "action": {"type": "delete", "after_days": 1}}
    rules = rules_validate(org=specimens["ct_chest"].organization, rules=[raw])

    by_sql = {label for label, inst in specimens.items() if planner_trashes(inst, rules)}
    by_python = {label for label, inst in specimens.items() if simulator_trashes(inst, rules)}

    assert by_sql == by_python
    assert by_sql and by_sql != set(specimens)
