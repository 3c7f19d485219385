"""Round trips with a real DICOMweb client (dicomweb-client) against a live server over HTTP."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from archive.models import AccessEvent, IngestJob, Instance
from billing.models import UsageEvent
from tests.archive.test_dicomweb_support import SeededStudy, split_multipart, study

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def secret(org, make_token) -> str:
    return make_token(org, ["dicom:read", "dicom:write"])[1]


@pytest.fixture
def session() -> Iterator[requests.Session]:
    # Closed at the end of each test so that the live server's keep-alive threads end while the
    # test database is still shared with them.
    with requests.Session() as http:
        yield http


@pytest.fixture
def client(live_server, secret, session) -> DICOMwebClient:
    # A chunk size above every test body: Django's development server cannot read chunked
    # request bodies (it needs Content-Length), which production WSGI servers de-chunk.
    return DICOMwebClient(
        f"{live_server.url}/dicomweb",
        session=session,
        headers={"Authorization": f"Bearer {secret}"},
        chunk_size=64 * 1024 * 1024,
    )


def datasets(seeded: SeededStudy) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(data)) for data in seeded.files]


@pytest.fixture
def stored(client) -> dict[str, SeededStudy]:
    seeded = {
        "ada": study(
            patient_id="PAT100",
            patient_name="Lovelace^Ada",
            study_date=dt.date(2026, 1, 10),
            modalities=("CT", "MR"),
        ),
        "alan": study(
            patient_id="PAT200",
            patient_name="Turing^Alan",
            study_date=dt.date(2026, 2, 20),
            modalities=("CT",),
        ),
    }
    for item in seeded.values():
        response = client.store_instances(datasets(item))
        assert len(response.ReferencedSOPSequence) == len(item.files)
        assert "FailedSOPSequence" not in response
    return seeded


def uids(results: list[dict], tag: str = "0020000D") -> list[str]:
    return [r[tag]["Value"][0] for r in results]


def test_store_then_search_with_filters(client, stored):
    ada, alan = stored["ada"], stored["alan"]

    assert uids(client.search_for_studies(search_filters={"PatientID": "PAT100"})) == [ada.uid]
    assert uids(client.search_for_studies(search_filters={"PatientName": "turing*"})) == [alan.uid]
    assert uids(client.search_for_studies(search_filters={"StudyDate": "20260101-20260131"})) == [
        ada.uid
    ]
    assert uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == [ada.uid]
    assert uids(client.search_for_studies(limit=1)) == [alan.uid]
    assert uids(client.search_for_studies(limit=1, offset=1)) == [ada.uid]
    assert uids(client.search_for_studies(get_remaining=True)) == [alan.uid, ada.uid]
    series = client.search_for_series(study_instance_uid=ada.uid)
    assert uids(series, "0020000E") == ada.series_uids
    mr = client.search_for_series(search_filters={"Modality": "MR"})
    assert uids(mr, "0020000E") == [ada.series_uids[1]]
    instances = client.search_for_instances(
        study_instance_uid=ada.uid, series_instance_uid=ada.series_uids[0], fields=["00280004"]
    )
    assert uids(instances, "00080018") == ada.sop_uids[:2]
    assert instances[0]["00280004"]["Value"] == ["MONOCHROME2"]


def test_retrieve_gives_back_what_was_stored(client, stored):
    ada = stored["ada"]
    originals = datasets(ada)

    instance = client.retrieve_instance(ada.uid, ada.series_uids[0], ada.sop_uids[0])
    everything = client.retrieve_study(ada.uid)
    metadata = client.retrieve_study_metadata(ada.uid)

    assert instance.SOPInstanceUID == ada.sop_uids[0]
    assert instance.PixelData == originals[0].PixelData
    assert [ds.SOPInstanceUID for ds in everything] == ada.sop_uids
    assert [pydicom.Dataset.from_json(m).SOPInstanceUID for m in metadata] == ada.sop_uids
    assert pydicom.Dataset.from_json(metadata[0]).PatientName == "Lovelace^Ada"


def test_raw_multipart_parts_are_byte_for_byte_the_stored_files(
    live_server, secret, session, stored
):
    ada = stored["ada"]

    response = session.get(
        f"{live_server.url}/dicomweb/studies/{ada.uid}",
        headers={
            "Authorization": f"Bearer {secret}",
            "Accept": 'multipart/related; type="application/dicom"',
        },
        timeout=30,
    )

    assert response.status_code == 200
    parts = split_multipart(response.headers["Content-Type"], response.content)
    assert [content for _, content in parts] == ada.files


def test_retrieve_over_http_records_access_and_egress(org, client, stored):
    alan = stored["alan"]

    client.retrieve_study(alan.uid)

    event = AccessEvent.objects.for_org(org).get()
    assert event.bytes == sum(map(len, alan.files)) and event.kind == "retrieve"
    egress = UsageEvent.objects.for_org(org).get(meter="egress.bytes")
    assert egress.quantity == event.bytes


def test_storing_again_is_accepted_and_kept_once(org, client, stored):
    ada = stored["ada"]

    response = client.store_instances(datasets(ada)[:1])

    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ada.sop_uids[0]
    assert Instance.objects.for_org(org).filter(sop_instance_uid=ada.sop_uids[0]).count() == 1
    assert IngestJob.objects.for_org(org).first().duplicate == 1


def test_store_into_the_wrong_study_is_409_conflict(client, stored):
    alan = stored["alan"]

    with pytest.raises(requests.HTTPError) as failure:
        client.store_instances(datasets(alan)[:1], study_instance_uid=stored["ada"].uid)

    assert failure.value.response.status_code == 409
    reason = failure.value.response.json()["00081198"]["Value"][0]["00081197"]["Value"][0]
    assert reason == 0xC409


def test_another_organization_sees_nothing(live_server, other_org, make_token, stored):
    _, other_secret = make_token(other_org, ["dicom:read"])
    with requests.Session() as http:
        other = DICOMwebClient(
            f"{live_server.url}/dicomweb",
            session=http,
            headers={"Authorization": f"Bearer {other_secret}"},
        )
        found = other.search_for_studies()
        with pytest.raises(requests.HTTPError) as failure:
            other.retrieve_study_metadata(stored["ada"].uid)

    assert found == []
    assert failure.value.response.status_code == 404
