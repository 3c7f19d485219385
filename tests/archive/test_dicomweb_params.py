"""Hostile DICOMweb parameters: each answers a JSON 400 (404 for a path UID) naming what was
wrong, never a 500; STOW-RS bodies are streamed and not bound by Django's in-memory body limit."""

from __future__ import annotations

import pytest

from archive.models import Instance
from tests.archive.test_dicomweb_support import STOW_TYPE, multipart

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        ("/dicomweb/studies", "offset=99999999999999999999", "offset"),
        ("/dicomweb/studies", "offset=1000000001", "offset"),
        ("/dicomweb/series", "offset=-1", "offset"),
        ("/dicomweb/studies", "offset=%EF%BC%91", "offset"),  # a full-width digit
        ("/dicomweb/studies", "limit=1_000", "limit"),
        ("/dicomweb/studies", "StudyInstanceUID=%5C", "StudyInstanceUID"),
        ("/dicomweb/studies", "StudyInstanceUID=%2C%5C%2C", "StudyInstanceUID"),
        ("/dicomweb/studies", "StudyInstanceUID=1.2.840.x", "StudyInstanceUID"),
        ("/dicomweb/studies", "StudyInstanceUID=1.2..3", "StudyInstanceUID"),
        ("/dicomweb/studies", "StudyInstanceUID=" + "1." * 32 + "1", "StudyInstanceUID"),
        ("/dicomweb/instances", "SOPInstanceUID=1.2.3%5C..%2F9", "SOPInstanceUID"),
        ("/dicomweb/studies", "AccessionNumber=%00", "AccessionNumber"),
        ("/dicomweb/studies", "PatientName=DOE%00*", "PatientName"),
        ("/dicomweb/series", "SeriesNumber=99999999999999999999", "SeriesNumber"),
        ("/dicomweb/instances", "InstanceNumber=2147483648", "InstanceNumber"),
        ("/dicomweb/instances", "InstanceNumber=%2B%2B1", "InstanceNumber"),
    ],
)
def test_bad_qido_parameter_answers_json_400_naming_it(org, token_client, path, query, parameter):
    response = token_client(org, ["dicom:read"]).get(f"{path}?{query}")

    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert parameter in error["fields"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=99999999999999999999",  # capped at MAX_LIMIT, as before
        "offset=1000000000",
        "StudyInstanceUID=1.2.840.10008%5C1.2.3",  # backslash-separated list
        "StudyInstanceUID=1.2.03",  # a leading zero, as old devices write: searchable
        "SeriesNumber=-2147483648",
    ],
)
def test_edge_qido_parameters_are_accepted(org, token_client, query):
    path = "/dicomweb/series" if query.startswith("Series") else "/dicomweb/studies"

    response = token_client(org, ["dicom:read"]).get(f"{path}?{query}")

    assert response.status_code == 200, response.content
    assert response.json() == []


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies/1.2.3%00",
        "/dicomweb/studies/1.2.3%00/series",
        "/dicomweb/studies/..%5C1.2/metadata",
        "/dicomweb/studies/" + "1" * 65,
    ],
)
def test_path_that_is_no_uid_answers_json_404(org, token_client, path):
    response = token_client(org, ["dicom:read"]).get(path, HTTP_ACCEPT="application/dicom+json")

    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "study_not_found"
    assert "\x00" not in response.json()["error"]["message"]


def test_stow_body_is_not_bound_by_djangos_in_memory_limit(org, token_client, ct_study, settings):
    # STOW-RS streams its body from the socket; DATA_UPLOAD_MAX_MEMORY_SIZE applies only to bodies
    # read whole (request.body / request.POST), which DICOMweb never does.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = multipart(ct_study)
    assert len(body) > 10 * settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = token_client(org, ["dicom:write"]).post(
        "/dicomweb/studies", data=body, content_type=STOW_TYPE
    )

    assert response.status_code == 200, response.content
    assert Instance.objects.filter(organization=org).count() == len(ct_study)


@pytest.mark.parametrize(
    "accept",
    ["application/dicom+json; x*0=a; x*=utf-8'", "application/dicom+json; x*=bogus''abc"],
)
def test_an_accept_item_that_cannot_be_parsed_is_skipped_not_a_500(org, token_client, accept):
    client = token_client(org, ["dicom:read"])
    response = client.get("/dicomweb/studies", HTTP_ACCEPT=accept)
    assert response.status_code == 406
    both = f"{accept}, application/dicom+json"
    assert client.get("/dicomweb/studies", HTTP_ACCEPT=both).status_code in (200, 204)
