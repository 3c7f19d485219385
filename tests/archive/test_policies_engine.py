"""Policy matching per condition, first match wins, never warming, exclusions; planning."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from django.db import models

from archive.models import ArchiveSettings, Instance, Study, TierMove
from archive.policies.sql import move_selection, trash_selection
from archive.policies.validate import rules_validate
from archive.policies.versions import policy_save
from archive.tiering.planning import moves_plan, studies_trash_due
from tenants.context import Actor
from tests.archive.test_policies_support import (
    MR_IMAGE,
    NOW,
    delete,
    make_instance,
    make_study,
    move,
)

pytestmark = pytest.mark.django_db


def selected(org: Any, *rules: dict[str, Any]) -> dict[int, int]:
    """instance id -> rule index the selection gives it."""
    normalized = rules_validate(org=org, rules=list(rules))
    qs: Any = move_selection(org=org, rules=normalized, now=NOW)
    return dict(qs.values_list("id", "rule_index"))


def trashed(org: Any, *rules: dict[str, Any], held: bool = False) -> set[int]:
    normalized = rules_validate(org=org, rules=list(rules))
    return set(
        trash_selection(org=org, rules=normalized, now=NOW, held=held).values_list("id", flat=True)
    )


# --- conditions ------------------------------------------------------------------------------


def test_days_since_last_access_bounds_are_whole_days_inclusive(org):
    exactly_90 = make_instance(org, accessed_days_ago=90)
    almost_90 = make_instance(org, accessed_days_ago=89.99)
    day_400 = make_instance(org, accessed_days_ago=400.5)  # 400 whole days
    day_401 = make_instance(org, accessed_days_ago=401)
    got = selected(org, move("cold", days_since_last_access={"min": 90, "max": 400}))
    assert set(got) == {exactly_90.pk, day_400.pk}
    assert almost_90.pk not in got and day_401.pk not in got


def test_never_read_counts_from_received(org):
    never_read_old = make_instance(org, received_days_ago=120)
    never_read_new = make_instance(org, received_days_ago=30)
    read_recently = make_instance(org, received_days_ago=500, accessed_days_ago=3)
    got = selected(org, move("cold", days_since_last_access={"min": 90}))
    assert set(got) == {never_read_old.pk}
    assert never_read_new.pk not in got and read_recently.pk not in got


def test_days_since_study_date_falls_back_to_arrival(org):
    old_date = make_instance(org, study_date=NOW.date() - timedelta(days=365))
    recent_date = make_instance(org, study_date=NOW.date() - timedelta(days=364))
    no_date_old = make_instance(org, created_at=NOW - timedelta(days=400))
    no_date_new = make_instance(org, created_at=NOW - timedelta(days=10))
    got = selected(org, move("warm", days_since_study_date={"min": 365}))
    assert set(got) == {old_date.pk, no_date_old.pk}
    assert recent_date.pk not in got and no_date_new.pk not in got
    got = selected(org, move("warm", days_since_study_date={"max": 364}))
    assert set(got) == {recent_date.pk, no_date_new.pk}


def test_modalities_match_the_series_modality(org):
    study = make_study(org, modalities="CT,MR")
    ct = make_instance(org, study, modality="CT")
    mr = make_instance(org, study, modality="MR", sop_class=MR_IMAGE)
    assert set(selected(org, move("cold", modalities=["mr"]))) == {mr.pk}
    assert set(selected(org, move("cold", modalities=["CT", "MR"]))) == {ct.pk, mr.pk}


def test_sop_classes(org):
    ct = make_instance(org)
    make_instance(org, sop_class=MR_IMAGE)
    assert set(selected(org, move("cold", sop_classes=[ct.sop_class_uid]))) == {ct.pk}


@pytest.mark.parametrize(
    ("pattern", "description", "matches"),
    [
        ("*CHEST*", "CT Chest w/o contrast", True),
        ("*chest*", "CT CHEST", True),
        ("CHEST*", "CT CHEST", False),
        ("CT ?HEST", "CT CHEST", True),
        ("CT ?HEST", "CT CCHEST", False),
        ("100%*", "100% dose", True),
        ("100%*", "1000 dose", False),
        ("A_B", "A_B", True),
        ("A_B", "AXB", False),
        ("*(PA)*", "Thorax (PA) view", True),
        ("a.b", "aXb", False),
    ],
)
def test_description_pattern_dicom_wildcards(org, pattern, description, matches):
    instance = make_instance(org, description=description)
    assert (instance.pk in selected(org, move("cold", description_pattern=pattern))) is matches


def test_patient_age_at_study_date(org):
    study_day = date(2020, 3, 10)
    seventeen = make_instance(org, study_date=study_day, birth_date=date(2002, 3, 11))  # 17
    eighteen = make_instance(org, study_date=study_day, birth_date=date(2002, 3, 10))  # 18 that day
    # No study date: the age at arrival (created_at).
    child_by_arrival = make_instance(
        org, created_at=NOW - timedelta(days=1), birth_date=NOW.date() - timedelta(days=400)
    )
    unknown_birth = make_instance(org, study_date=study_day)
    got = selected(org, move("cold", patient_age_years={"max": 17}))
    assert set(got) == {seventeen.pk, child_by_arrival.pk}
    got = selected(org, move("cold", patient_age_years={"min": 18}))
    assert set(got) == {eighteen.pk}
    assert unknown_birth.pk not in got


def test_all_conditions_of_a_rule_must_hold(org):
    both = make_instance(org, modality="MR", accessed_days_ago=200)
    make_instance(org, modality="MR", accessed_days_ago=20)
    make_instance(org, modality="CT", accessed_days_ago=200)
    got = selected(org, move("cold", modalities=["MR"], days_since_last_access={"min": 100}))
    assert set(got) == {both.pk}


# --- ordering, direction, exclusions ---------------------------------------------------------


def test_first_matching_rule_wins(org):
    ct = make_instance(org, modality="CT", accessed_days_ago=400)
    mr = make_instance(org, modality="MR", accessed_days_ago=400)
    got = selected(
        org,
        move("warm", modalities=["CT"]),
        delete(3650, modalities=["CR"]),
        move("archive", days_since_last_access={"min": 365}),
    )
    assert got == {ct.pk: 0, mr.pk: 2}


def test_first_match_not_colder_stops_there(org):
    # Already in cold: the first matching rule (warm) would warm it, so it stays; the later
    # archive rule does not get a second chance.
    cold = make_instance(org, tier="cold", accessed_days_ago=400)
    assert (
        selected(
            org, move("warm", modalities=["CT"]), move("archive", days_since_last_access={"min": 1})
        )
        == {}
    )
    assert selected(org, move("archive", modalities=["CT"])) == {cold.pk: 0}


@pytest.mark.parametrize(
    ("current", "target"), [("cold", "warm"), ("cold", "cold"), ("archive", "cold")]
)
def test_policy_never_warms(org, current, target):
    make_instance(org, tier=current)
    assert selected(org, move(target, modalities=["CT"])) == {}


def test_trashed_studies_and_open_moves_are_excluded_held_ones_still_move(org):
    trashed_one = make_instance(org, trashed_at=NOW)
    held = make_instance(org, legal_hold=True)
    moving = make_instance(org)
    done_before = make_instance(org)
    for inst, state in ((moving, "copying"), (done_before, "done")):
        TierMove.objects.create(
            organization=org,
            instance=inst,
            study=inst.study,
            from_tier="hot",
            to_tier="warm",
            from_location=inst.location,
            to_location=inst.location,
            size_bytes=inst.size_bytes,
            state=state,
        )
    got = selected(org, move("cold", modalities=["CT"]))
    assert set(got) == {held.pk, done_before.pk}
    assert trashed_one.pk not in got


def test_other_organizations_are_never_selected(org, other_org):
    mine = make_instance(org)
    make_instance(other_org)
    assert set(selected(org, move("cold", modalities=["CT"]))) == {mine.pk}


# --- delete rules ----------------------------------------------------------------------------


def test_delete_rules_select_whole_studies_after_retention(org):
    two_years = NOW.date() - timedelta(days=730)
    old_cr = make_study(org, modalities="CR,SR", study_date=two_years)
    new_cr = make_study(org, modalities="CR", study_date=NOW.date() - timedelta(days=100))
    old_ct = make_study(org, modalities="CT", study_date=two_years)
    held = make_study(org, modalities="CR", study_date=two_years, legal_hold=True)
    gone = make_study(org, modalities="CR", study_date=two_years, trashed_at=NOW)
    rule = delete(365, modalities=["CR"])
    assert trashed(org, rule) == {old_cr.pk}
    assert trashed(org, rule, held=True) == {held.pk}
    assert not {new_cr.pk, old_ct.pk, gone.pk} & trashed(org, rule)
    # Move rules never trash anything.
    assert trashed(org, move("cold", modalities=["CR"])) == set()


def test_delete_rule_study_level_access_and_description(org):
    # A study's last read is its instances' last read (retrievals and downloads).
    read = make_instance(org, description="KNEE", accessed_days_ago=10).study
    unread = make_instance(org, description="Knee left", accessed_days_ago=999).study
    never = make_study(org, description="knee", created_at=NOW - timedelta(days=2000))
    # A metadata request sets only Study.last_accessed_at: it is not a read.
    metadata_only = make_instance(
        org, description="knee", last_accessed_at=NOW - timedelta(days=5)
    ).study
    rule = delete(30, description_pattern="knee*", days_since_last_access={"min": 365})
    assert trashed(org, rule) == {unread.pk, never.pk, metadata_only.pk}
    assert read.pk not in trashed(org, rule)


def test_studies_trash_due_trashes_but_never_a_held_study(org, owner):
    two_years = NOW.date() - timedelta(days=730)
    due = make_study(org, modalities="CR", study_date=two_years)
    held = make_study(org, modalities="CR", study_date=two_years, legal_hold=True)
    policy_save(
        org=org, actor=Actor(user=owner.user), rules=[delete(365, modalities=["CR"])], activate=True
    )
    assert studies_trash_due(org=org, now=NOW) == 1
    due.refresh_from_db()
    held.refresh_from_db()
    assert due.trashed_at is not None and "policy v1" in due.trash_reason
    assert held.trashed_at is None
    assert studies_trash_due(org=org, now=NOW) == 0


# --- planning --------------------------------------------------------------------------------


def _activate(org: Any, owner: Any, *rules: dict[str, Any]) -> Any:
    return policy_save(org=org, actor=Actor(user=owner.user), rules=list(rules), activate=True)


def test_moves_plan_inserts_planned_moves(org, owner):
    ct = make_instance(org, modality="CT", accessed_days_ago=400, size=1234)
    mr = make_instance(org, modality="MR", tier="warm", accessed_days_ago=400)
    make_instance(org, modality="CT", accessed_days_ago=3)
    version = _activate(
        org,
        owner,
        move("cold", modalities=["CT"], days_since_last_access={"min": 90}),
        move("archive", days_since_last_access={"min": 365}),
    )
    assert moves_plan(org=org, now=NOW) == 2
    moves = {m.instance_id: m for m in TierMove.objects.for_org(org)}
    assert set(moves) == {ct.pk, mr.pk}
    m = moves[ct.pk]
    assert (m.origin, m.policy_version_id, m.rule_index, m.state) == (
        "policy",
        version.pk,
        0,
        "planned",
    )
    assert (m.from_tier, m.to_tier, m.size_bytes) == ("hot", "cold", 1234)
    assert m.from_location_id == m.to_location_id == ct.location_id
    assert m.study_id == ct.study_id and m.planned_at == NOW
    assert (moves[mr.pk].from_tier, moves[mr.pk].to_tier, moves[mr.pk].rule_index) == (
        "warm",
        "archive",
        1,
    )


def test_moves_plan_rerun_plans_nothing_new(org, owner):
    for _ in range(3):
        make_instance(org)
    _activate(org, owner, move("cold", modalities=["CT"]))
    assert moves_plan(org=org, now=NOW) == 3
    assert moves_plan(org=org, now=NOW) == 0
    assert TierMove.objects.for_org(org).count() == 3
    # A finished move leaves the instance plannable again (e.g. for the next rule's tier).
    TierMove.objects.for_org(org).update(state="failed")
    assert moves_plan(org=org, now=NOW) == 3


def test_a_planner_that_loses_a_race_plans_nothing_and_tries_again(org, owner, monkeypatch):
    """Two planners selecting the same instances: the partial unique constraint fails the later
    statement as a whole; it writes nothing and the next call selects the batch again."""
    from archive.tiering import planning

    first, second = make_instance(org), make_instance(org)
    _activate(org, owner, move("cold", modalities=["CT"]))
    real_selection = planning.move_selection
    # The other planner's move for ``second`` committed after this planner's snapshot: stand in
    # for it with a selection that does not see open moves.
    monkeypatch.setattr(
        planning,
        "move_selection",
        lambda **kw: (
            real_selection(**kw)
            .model.objects.filter(pk__in=[first.pk, second.pk])
            .annotate(rule_index=models.Value(0))
            .order_by("id")
        ),
    )
    TierMove.objects.create(
        organization=org,
        instance=second,
        study=second.study,
        from_tier="hot",
        to_tier="cold",
        from_location=second.location,
        to_location=second.location,
        size_bytes=second.size_bytes,
    )
    assert moves_plan(org=org, now=NOW) == 0
    assert list(TierMove.objects.for_org(org).values_list("instance_id", flat=True)) == [second.pk]
    monkeypatch.setattr(planning, "move_selection", real_selection)
    assert moves_plan(org=org, now=NOW) == 1
    assert TierMove.objects.for_org(org).filter(instance=first, state="planned").exists()


def test_moves_plan_is_bounded(org, owner):
    for _ in range(5):
        make_instance(org)
    _activate(org, owner, move("warm", modalities=["CT"]))
    assert [moves_plan(org=org, limit=2, now=NOW) for _ in range(4)] == [2, 2, 1, 0]
    assert TierMove.objects.for_org(org).values("instance").distinct().count() == 5


def test_moves_plan_without_active_policy_or_move_rules(org, owner):
    make_instance(org)
    assert moves_plan(org=org, now=NOW) == 0
    _activate(org, owner, delete(3650, modalities=["CT"]))
    assert moves_plan(org=org, now=NOW) == 0


def test_moves_plan_only_plans_for_its_organization(org, other_org, owner):
    make_instance(org)
    make_instance(other_org)
    _activate(org, owner, move("cold", modalities=["CT"]))
    assert moves_plan(org=org, now=NOW) == 1
    assert not TierMove.objects.for_org(other_org).exists()


def test_beat_task_plans_each_active_organization_until_done(org, other_org, owner, settings):
    from archive.tiering import planning
    from archive.tiering.tasks import tier_policy_evaluate

    settings.CELERY_TASK_ALWAYS_EAGER = True
    for _ in range(5):
        make_instance(org)
    make_instance(other_org)
    _activate(org, owner, move("cold", modalities=["CT"]))
    ArchiveSettings.objects.get_or_create(organization=other_org)
    old = planning.DEFAULT_BATCH
    planning.DEFAULT_BATCH = 2
    try:
        assert tier_policy_evaluate() == {"organizations": 1}
    finally:
        planning.DEFAULT_BATCH = old
    assert TierMove.objects.for_org(org).count() == 5
    assert not TierMove.objects.for_org(other_org).exists()
    assert Instance.objects.for_org(org).count() == 5
    assert Study.objects.for_org(org).filter(trashed_at__isnull=False).count() == 0


def test_batches_continue_in_id_order_and_a_finished_pass_starts_over(org, owner):
    first, second, third = (make_instance(org) for _ in range(3))
    _activate(org, owner, move("warm", modalities=["CT"]))
    assert moves_plan(org=org, limit=2, now=NOW) == 2
    planned = set(TierMove.objects.for_org(org).values_list("instance_id", flat=True))
    assert planned == {first.pk, second.pk}
    # The first move fails: its instance is due again, but the pass continues after the cursor.
    TierMove.objects.for_org(org).filter(instance=first).update(state="failed")
    assert moves_plan(org=org, limit=2, now=NOW) == 1  # third; the pass ends
    assert moves_plan(org=org, limit=2, now=NOW) == 1  # a new pass from the start: first
    assert moves_plan(org=org, limit=2, now=NOW) == 0
    open_moves = TierMove.objects.for_org(org).filter(state="planned")
    assert set(open_moves.values_list("instance_id", flat=True)) == {first.pk, second.pk, third.pk}
