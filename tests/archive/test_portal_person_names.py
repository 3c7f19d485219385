"""DICOM person names read as people read them on every portal page (``Curie, Marie``), while the
DICOM answers keep the stored ``Curie^Marie``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from archive.models import Series, Study
from archive.retention import services as retention
from tenants.context import Actor
from tenants.models import Membership, Organization
from tests.archive.test_portal_studies import ingest_study, url

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


@pytest.fixture
def study(org: Organization) -> Study:
    study, _ = ingest_study(org, "CT", n=1, name="Curie^Marie^Salomea^Dr.")
    Study.objects.filter(pk=study.pk).update(referring_physician="Pasteur^Louis")
    return Study.objects.get(pk=study.pk)


def _page(client: Client, path: str) -> str:
    response: Any = client.get(path)
    assert response.status_code == 200, path
    return response.content.decode()


@pytest.mark.parametrize(
    "page",
    ["portal-studies", "portal-study", "portal-study-download", "portal-series-view"],
)
def test_study_pages_show_the_patient_as_people_read_the_name(
    client: Client, org: Organization, study: Study, page: str
) -> None:
    args = {
        "portal-studies": [],
        "portal-series-view": [study.pk, Series.objects.get(study=study).pk],
    }.get(page, [study.pk])

    content = _page(client, url(page, org, *args))

    assert "Curie, Dr. Marie Salomea" in content
    assert "Curie^Marie" not in content


def test_study_detail_shows_the_referring_physician_as_a_name(
    client: Client, org: Organization, study: Study
) -> None:
    content = _page(client, url("portal-study", org, study.pk))

    assert "Pasteur, Louis" in content and "Pasteur^Louis" not in content


def test_viewer_overlay_carries_the_readable_name(
    client: Client, org: Organization, study: Study
) -> None:
    response: Any = client.get(
        url("portal-series-view", org, study.pk, Series.objects.get(study=study).pk)
    )

    assert response.context["viewer_data"]["overlay"]["patient"] == "Curie, Dr. Marie Salomea"


def test_trash_and_legal_holds_show_the_readable_name(
    client: Client, org: Organization, study: Study
) -> None:
    retention.legal_hold_set(org=org, study=study, actor=SYSTEM, reason="Litigation 12")
    holds = _page(client, url("portal-holds", org))
    assert "Curie, Dr. Marie Salomea" in holds and "Curie^" not in holds

    other, _ = ingest_study(org, "MR", n=1, name="Noether^Emmy")
    retention.study_trash(org=org, study=other, actor=SYSTEM, reason="Duplicate")
    trash = _page(client, url("portal-trash", org))
    assert "Noether, Emmy" in trash and "Noether^Emmy" not in trash


def test_dicom_answers_keep_the_stored_person_name(
    org: Organization, study: Study, token_client: Any
) -> None:
    reader = token_client(org, ["dicom:read"])

    response: Any = reader.get(f"/dicomweb/studies?StudyInstanceUID={study.study_uid}")

    assert response.status_code == 200, response.content[:300]
    [answer] = json.loads(response.content)
    assert answer["00100010"]["Value"] == [{"Alphabetic": "Curie^Marie^Salomea^Dr."}]
