"""A restore names its study as people recognise it (patient, accession, date), its API answers
the study's patient ID, and the time until readable is one figure before and after it starts."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from archive.models import RestoreRequest, Study
from archive.restores import selectors as restore_selectors
from archive.restores.views import study_title
from tenants.labels import duration_label
from tenants.models import Membership, Organization
from tests.archive.test_restores_support import archive_all, seed_study, study_row

pytestmark = pytest.mark.django_db

TITLE = "Lovelace, Ada · patient PAT-R1 · accession ACC-9 · 2025-06-01 · CR STUDY"


@pytest.fixture
def slow_restores(settings: Any) -> Any:
    settings.ARCHIVE_FS_RESTORE_SECONDS = 60
    return settings


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


@pytest.fixture
def archived(org: Organization) -> Study:
    seeded = seed_study(org, n=2)
    archive_all(org, seeded)
    study = study_row(org, seeded)
    Study.objects.filter(pk=study.pk).update(accession_number="ACC-9", study_description="CR STUDY")
    return Study.objects.get(pk=study.pk)


def _restore_time(html: str) -> str:
    match = re.search(r'id="restore-time">([^<]*)<', html)
    assert match, "no restore time on the page"
    return match.group(1)


def test_restore_pages_name_the_study_by_patient_accession_and_date(
    client: Client, org: Organization, archived: Study, slow_restores: Any
) -> None:
    url = reverse("portal-study-restore", args=[org.slug, archived.pk])

    confirm = client.get(url).content.decode()
    detail = client.get(client.post(url)["Location"]).content.decode()
    listing = client.get(reverse("portal-restores", args=[org.slug])).content.decode()

    for page in (confirm, detail, listing):
        assert TITLE in page
        assert "Lovelace^Ada" not in page


@pytest.mark.parametrize(
    ("fields", "title"),
    [
        ({}, TITLE),
        (
            {"patient_name": "", "accession_number": ""},
            "(no patient name) · patient PAT-R1 · 2025-06-01 · CR STUDY",
        ),
        (
            {"patient_id": "", "study_date": None, "study_description": ""},
            "Lovelace, Ada · accession ACC-9",
        ),
    ],
)
def test_study_title_leaves_out_what_the_study_lacks(
    archived: Study, fields: dict[str, Any], title: str
) -> None:
    Study.objects.filter(pk=archived.pk).update(**fields)

    assert study_title(Study.objects.get(pk=archived.pk)) == title


def test_restore_api_answers_the_studys_patient_id(
    org: Organization, archived: Study, token_client: Any, slow_restores: Any
) -> None:
    api = token_client(org)

    started = api.post("/api/v1/restores/", {"study": archived.pk}, format="json")
    detail = api.get(f"/api/v1/restores/{started.json()['id']}/")
    listed = api.get("/api/v1/restores/")

    assert started.status_code == 202 and started.json()["patient_id"] == "PAT-R1"
    assert detail.json()["patient_id"] == "PAT-R1"
    assert [r["patient_id"] for r in listed.json()["results"]] == ["PAT-R1"]
    # The restore row itself keeps no copy: the study's ID is read, never written twice.
    assert RestoreRequest.objects.get().patient_id == ""


def test_the_time_until_readable_is_the_same_before_and_after_the_start(
    client: Client,
    org: Organization,
    archived: Study,
    slow_restores: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)
    url = reverse("portal-study-restore", args=[org.slug, archived.pk])

    before = _restore_time(client.get(url).content.decode())
    detail = client.get(client.post(url)["Location"]).content.decode()

    expected = duration_label(60 + restore_selectors.POLL_SECONDS)
    assert before == expected == "2 min 00 s"
    assert f"Expect the rest in about {expected}." in detail


def test_the_wait_counts_down_from_the_estimate(org: Organization) -> None:
    now = timezone.now()
    full = restore_selectors.restore_wait_seconds(org, now=now)

    later = restore_selectors.restore_wait_seconds(
        org, requested_at=now - dt.timedelta(seconds=20), now=now
    )
    long_after = restore_selectors.restore_wait_seconds(
        org, requested_at=now - dt.timedelta(days=2), now=now
    )

    assert later == full - 20
    assert long_after == restore_selectors.POLL_SECONDS
