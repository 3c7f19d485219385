"""Image reads (frames, bulk data, rendered images, thumbnails) in the access log: one line per
reader, series and minute, with every request's bytes metered exactly."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from archive.index import services
from archive.models import AccessEvent, Instance, Series, Study
from billing.models import UsageEvent
from tenants.models import AuditEvent
from tests.archive.test_dicomweb_frames import STORED, parts_of
from tests.archive.test_dicomweb_support import ingest_study, study

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(org):
    return ingest_study(
        org,
        study(
            patient_id="P1",
            patient_name="DOE^JANE",
            study_date=dt.date(2026, 3, 1),
            modalities=("CT", "CT"),
            instances_per_series=3,
        ),
    )


def frame_path(seeded, series: int, instance: int) -> str:
    return (
        f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[series]}"
        f"/instances/{seeded.sop_uids[series * 3 + instance]}/frames/1"
    )


def read(client, path: str) -> int:
    response = client.get(path, HTTP_ACCEPT=STORED)
    _, parts = parts_of(response)
    return sum(len(body) for _, body in parts)


class Clock:
    def __init__(self, monkeypatch):
        self.now = timezone.now().replace(second=5, microsecond=0)
        monkeypatch.setattr(services.timezone, "now", lambda: self.now)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch)


def test_a_series_read_frame_by_frame_is_one_line_with_every_byte(org, token_client, seeded, clock):
    reader = token_client(org, ["dicom:read"])

    sent = [read(reader, frame_path(seeded, 0, n)) for n in (0, 1, 2, 1)]

    (event,) = AccessEvent.objects.for_org(org)
    assert (event.kind, event.reads, event.instances, event.bytes) == ("retrieve", 4, 4, sum(sent))
    assert event.series.series_uid == seeded.series_uids[0]
    assert event.at == clock.now
    # Egress: one usage event per request, each with its own bytes, the sum the line's.
    egress = UsageEvent.objects.filter(organization=org, meter="egress.bytes")
    assert sorted(egress.values_list("quantity", flat=True)) == sorted(sent)
    # The audit log: the minute's first read, pointing at the line.
    (audit,) = AuditEvent.objects.filter(organization=org, action="study.retrieve")
    assert audit.details["access"] == event.pk and audit.details["bytes"] == sent[0]


def test_each_instance_read_is_marked_read_and_the_others_are_not(org, token_client, seeded, clock):
    reader = token_client(org, ["dicom:read"])
    read(reader, frame_path(seeded, 0, 0))
    read(reader, frame_path(seeded, 0, 2))

    marked = set(
        Instance.objects.for_org(org)
        .filter(last_accessed_at=clock.now)
        .values_list("sop_instance_uid", flat=True)
    )
    assert marked == {seeded.sop_uids[0], seeded.sop_uids[2]}
    assert Series.objects.for_org(org).get(series_uid=seeded.series_uids[0]).last_accessed_at
    assert not Series.objects.for_org(org).get(series_uid=seeded.series_uids[1]).last_accessed_at
    assert Study.objects.for_org(org).get().last_accessed_at == clock.now


def test_a_new_minute_another_series_and_another_reader_are_lines_of_their_own(
    org, token_client, seeded, clock
):
    first, second = token_client(org, ["dicom:read"]), token_client(org, ["dicom:read"])
    read(first, frame_path(seeded, 0, 0))
    read(first, frame_path(seeded, 1, 0))  # another series
    read(second, frame_path(seeded, 0, 0))  # another reader
    clock.now += timedelta(seconds=60)
    read(first, frame_path(seeded, 0, 1))  # the next minute
    read(first, frame_path(seeded, 0, 2))

    lines = AccessEvent.objects.for_org(org).order_by("id")
    assert [e.reads for e in lines] == [1, 1, 1, 2]
    assert len({e.actor_label for e in lines}) == 2
    assert AuditEvent.objects.filter(organization=org, action="study.retrieve").count() == 4
    assert UsageEvent.objects.filter(organization=org, meter="egress.bytes").count() == 5


def test_another_organizations_reads_never_join_a_line(org, other_org, token_client, seeded, clock):
    reader = token_client(org, ["dicom:read"])
    read(reader, frame_path(seeded, 0, 0))
    outsider = token_client(other_org, ["dicom:read"])

    response = outsider.get(frame_path(seeded, 0, 0), HTTP_ACCEPT=STORED)

    assert response.status_code == 404
    assert AccessEvent.objects.for_org(org).get().reads == 1
    assert not AccessEvent.objects.for_org(other_org).exists()
    assert not UsageEvent.objects.filter(organization=other_org, meter="egress.bytes").exists()


def test_the_other_accesses_stay_one_line_per_request(org, token_client, seeded, clock):
    reader = token_client(org, ["dicom:read"])
    base = f"/dicomweb/studies/{seeded.uid}/series/{seeded.series_uids[0]}"
    for _ in range(2):
        assert reader.get(f"{base}/metadata").status_code == 200

    lines = AccessEvent.objects.for_org(org)
    assert [(e.kind, e.reads, e.window_key) for e in lines] == [("metadata", 1, None)] * 2


def test_the_study_page_shows_a_gathered_line_with_its_request_count(
    org, owner, token_client, seeded, clock, client
):
    reader = token_client(org, ["dicom:read"])
    for n in (0, 1, 2):
        read(reader, frame_path(seeded, 0, n))
    client.force_login(owner.user)
    study_row = Study.objects.for_org(org).get()

    page = client.get(reverse("portal-study", args=[org.slug, study_row.pk])).content.decode()

    assert "× 3 requests" in page
