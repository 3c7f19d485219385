"""The Ingest page's jobs table: the kind once, where the files came from next to it, and a job
that finished with failed files says so instead of "Done"."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from archive.ingest import selectors
from archive.models import IngestJob
from tenants.models import Membership, Organization

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def _job(org: Organization, owner: Membership | None, **fields: Any) -> IngestJob:
    values: dict[str, Any] = {
        "organization": org,
        "kind": IngestJob.Kind.UPLOAD,
        "state": IngestJob.State.DONE,
        "source": "Portal upload",
        "total_files": 3,
        "received": 3,
        "stored": 3,
        "created_by": owner.user if owner else None,
        "started_at": timezone.now(),
        "finished_at": timezone.now(),
    }
    values.update(fields)
    return IngestJob.objects.create(**values)


@pytest.mark.parametrize(
    ("state", "failed", "label", "badge"),
    [
        (IngestJob.State.DONE, 0, "Done", "done"),
        (IngestJob.State.DONE, 1, "Done with 1 failure", "warning"),
        (IngestJob.State.DONE, 1200, "Done with 1,200 failures", "warning"),
        (IngestJob.State.FAILED, 2, "Failed", "failed"),
        (IngestJob.State.RUNNING, 1, "Ingesting", "ingest"),
    ],
)
def test_phase_label_counts_failures_of_a_finished_job(
    org: Organization, owner: Membership, state: str, failed: int, label: str, badge: str
) -> None:
    job = _job(org, owner, state=state, failed=failed, stored=3 - min(failed, 3))

    progress = selectors.job_progress(job)

    assert (progress.phase_label, progress.badge) == (label, badge)


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ({"total_files": 1}, "1 file from owner@stmary.example"),
        ({"total_files": 2500}, "2,500 files from owner@stmary.example"),
        ({"created_by": None}, "3 files from a removed user"),
        ({"kind": IngestJob.Kind.IMPORT, "source": "s3://scans/2024/"}, "s3://scans/2024/"),
        ({"kind": IngestJob.Kind.STOW, "source": ""}, "—"),
        ({"kind": IngestJob.Kind.STOW, "source": "STOW-RS"}, "—"),
    ],
)
def test_source_label_says_what_the_kind_does_not(
    org: Organization, owner: Membership, fields: dict[str, Any], source: str
) -> None:
    job = _job(org, owner, **fields)

    assert selectors.job_source_label(job) == source


def test_jobs_table_names_the_kind_once_and_the_failures(
    client: Client, org: Organization, owner: Membership
) -> None:
    job = _job(org, owner, stored=2, failed=1)

    response: Any = client.get(reverse("portal-ingest", args=[org.slug]))

    assert response.status_code == 200
    table = response.content.decode().split("<tbody>")[1].split("</tbody>")[0]
    [row] = re.findall(r"<tr>.*?</tr>", table, flags=re.S)
    assert row.count("Portal upload") == 1
    assert "3 files from owner@stmary.example" in row
    assert 'class="badge badge-warning"' in row and "Done with 1 failure" in row
    assert f"#{job.pk}" in row


def test_progress_json_carries_the_label_and_badge(
    client: Client, org: Organization, owner: Membership
) -> None:
    job = _job(org, owner, stored=1, failed=2)

    data = client.get(reverse("portal-ingest-job-progress", args=[org.slug, job.pk])).json()

    assert (data["phase"], data["phase_label"], data["badge"]) == (
        "done",
        "Done with 2 failures",
        "warning",
    )
