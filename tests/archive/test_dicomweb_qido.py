"""QIDO-RS matching, paging, includefield, errors and tenant scoping through the Django stack."""

from __future__ import annotations

import datetime as dt
import functools

import pytest

from tests.archive.test_dicomweb_support import SeededStudy, ingest_study, study

pytestmark = pytest.mark.django_db

PATIENT_ID = "00100020"


@functools.cache
def _files() -> dict[str, SeededStudy]:
    """Made once per run (the DICOM encoding is the slow part); stored afresh by every test."""
    return {
        "A": study(
            patient_id="PAT001",
            patient_name="Lovelace^Ada",
            study_date=dt.date(2026, 1, 5),
            modalities=("CT", "CT"),
            description="CT CHEST",
        ),
        "B": study(
            patient_id="PAT002",
            patient_name="Lovelace^Byron",
            study_date=dt.date(2026, 1, 20),
            modalities=("MR",),
            description="MR BRAIN",
        ),
        "C": study(
            patient_id="PAT003",
            patient_name="Turing^Alan",
            study_date=dt.date(2026, 2, 10),
            modalities=("CT", "MR"),
            description="CT+MR 100% FOLLOW_UP",
        ),
        "other": study(
            patient_id="PAT001", patient_name="Lovelace^Ada", study_date=dt.date(2026, 1, 5)
        ),
    }


@pytest.fixture
def studies(org, other_org) -> dict[str, SeededStudy]:
    """A: CT, two series; B: MR; C: CT and MR. Another organization has a lookalike of A."""
    seeded = dict(_files())
    ingest_study(other_org, seeded.pop("other"))
    for item in seeded.values():
        ingest_study(org, item)
    return seeded


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


def patient_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    return [item[PATIENT_ID]["Value"][0] for item in response.json()]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["PAT003", "PAT002", "PAT001"]),  # newest study first
        ("PatientID=PAT001", ["PAT001"]),
        ("00100020=PAT002", ["PAT002"]),
        ("PatientID=pat001", []),  # LO matching is case-sensitive
        ("PatientID=PAT00*", ["PAT003", "PAT002", "PAT001"]),
        ("PatientID=PAT00%3F", ["PAT003", "PAT002", "PAT001"]),
        ("PatientID=PAT%25", []),  # SQL wildcards are literal characters
        ("PatientName=Lovelace^Ada", ["PAT001"]),
        ("PatientName=lovelace^ada", ["PAT001"]),  # PN matching ignores case
        ("PatientName=lovelace*", ["PAT002", "PAT001"]),
        ("PatientName=*RON", ["PAT002"]),
        ("PatientName=Lov%3Flace^Ada", ["PAT001"]),
        ("PatientName=*", ["PAT003", "PAT002", "PAT001"]),
        ("PatientName=", ["PAT003", "PAT002", "PAT001"]),
        ("StudyDate=20260105", ["PAT001"]),
        ("StudyDate=20260101-20260131", ["PAT002", "PAT001"]),
        ("StudyDate=20260115-", ["PAT003", "PAT002"]),
        ("StudyDate=-20260110", ["PAT001"]),
        ("StudyTime=1000-1030", ["PAT003", "PAT002", "PAT001"]),
        ("StudyTime=1100-", []),
        ("ModalitiesInStudy=MR", ["PAT003", "PAT002"]),
        ("ModalitiesInStudy=CT", ["PAT003", "PAT001"]),
        ("ModalitiesInStudy=CT,MR", ["PAT003", "PAT002", "PAT001"]),
        ("ModalitiesInStudy=US", []),
        ("AccessionNumber=ACCPAT002", ["PAT002"]),
        ("StudyDescription=*100%25*", ["PAT003"]),
        ("StudyDescription=*FOLLOW_UP", ["PAT003"]),
        ("StudyDescription=*1_0*", []),  # "_" is literal, not a single-character wildcard
        ("PatientID=PAT001&fuzzymatching=true", ["PAT001"]),
        ("PatientID=PAT001&StudyDate=20260201-", []),
    ],
)
def test_study_matching(reader, studies, query, expected):
    assert patient_ids(reader.get(f"/dicomweb/studies?{query}")) == expected


def test_uid_list_matching(reader, studies):
    uids = f"{studies['A'].uid},{studies['C'].uid}"

    assert patient_ids(reader.get(f"/dicomweb/studies?StudyInstanceUID={uids}")) == [
        "PAT003",
        "PAT001",
    ]
    assert patient_ids(reader.get(f"/dicomweb/studies?0020000D={studies['B'].uid}")) == ["PAT002"]


def test_study_results_carry_computed_attributes(reader, studies):
    (item,) = reader.get(f"/dicomweb/studies?StudyInstanceUID={studies['C'].uid}").json()

    assert item["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert item["00201206"]["Value"] == [2]
    assert item["00201208"]["Value"] == [4]
    assert item["00080056"]["Value"] == ["ONLINE"]
    assert item["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{studies['C'].uid}"]
    assert item["00100010"]["Value"] == [{"Alphabetic": "Turing^Alan"}]
    assert item["00080020"]["Value"] == ["20260210"]


def test_limit_and_offset_page_through_with_a_warning_while_more_remain(reader, studies):
    first = reader.get("/dicomweb/studies?limit=2")
    second = reader.get("/dicomweb/studies?limit=2&offset=2")

    assert patient_ids(first) == ["PAT003", "PAT002"]
    assert "Additional results can be requested" in first["Warning"]
    assert patient_ids(second) == ["PAT001"]
    assert "Warning" not in second


def test_empty_result_is_200_with_an_empty_array(reader, studies):
    response = reader.get("/dicomweb/studies?PatientID=NOBODY")

    assert response.status_code == 200 and response.json() == []


def test_series_search_is_relational_across_studies(reader, studies):
    response = reader.get("/dicomweb/series?Modality=MR")

    assert response.status_code == 200
    items = response.json()
    assert sorted(i["0020000D"]["Value"][0] for i in items) == sorted(
        [studies["B"].uid, studies["C"].uid]
    )
    assert all(i["00080060"]["Value"] == ["MR"] for i in items)
    assert all(PATIENT_ID in i for i in items)  # study attributes come along
    assert all(i["00201209"]["Value"] == [2] for i in items)


def test_series_of_one_study(reader, studies):
    a = studies["A"]

    everything = reader.get(f"/dicomweb/studies/{a.uid}/series").json()
    second = reader.get(f"/dicomweb/studies/{a.uid}/series?SeriesNumber=2").json()
    with_patient = reader.get(f"/dicomweb/studies/{a.uid}/series?includefield=PatientID").json()

    assert [i["0020000E"]["Value"][0] for i in everything] == a.series_uids
    assert PATIENT_ID not in everything[0]
    assert [i["0020000E"]["Value"][0] for i in second] == [a.series_uids[1]]
    assert with_patient[0][PATIENT_ID]["Value"] == ["PAT001"]
    assert everything[0]["00081190"]["Value"] == [
        f"http://testserver/dicomweb/studies/{a.uid}/series/{a.series_uids[0]}"
    ]


def test_instance_searches_at_every_scope(reader, studies):
    a = studies["A"]

    in_series = reader.get(f"/dicomweb/studies/{a.uid}/series/{a.series_uids[0]}/instances")
    numbered = reader.get(
        f"/dicomweb/studies/{a.uid}/series/{a.series_uids[0]}/instances?InstanceNumber=2"
    )
    in_study = reader.get(f"/dicomweb/studies/{a.uid}/instances")
    by_patient = reader.get("/dicomweb/instances?PatientID=PAT001")
    by_uid = reader.get(f"/dicomweb/instances?SOPInstanceUID={a.sop_uids[3]}")

    assert [i["00080018"]["Value"][0] for i in in_series.json()] == a.sop_uids[:2]
    assert [i["00080018"]["Value"][0] for i in numbered.json()] == [a.sop_uids[1]]
    assert [i["00080018"]["Value"][0] for i in in_study.json()] == a.sop_uids
    assert [i["00080018"]["Value"][0] for i in by_patient.json()] == a.sop_uids
    assert by_patient.json()[0][PATIENT_ID]["Value"] == ["PAT001"]
    assert [i["00080018"]["Value"][0] for i in by_uid.json()] == [a.sop_uids[3]]
    item = in_series.json()[0]
    assert item["00280010"]["Value"] == [16]  # Rows: a default instance attribute
    assert item["00081190"]["Value"][0].endswith(f"/instances/{a.sop_uids[0]}")


@pytest.mark.parametrize(
    ("includefield", "present", "absent"),
    [
        ("", ["00280010", "00080016"], ["00280004", "00100010"]),
        ("PhotometricInterpretation", ["00280004"], ["00280030"]),
        ("00280004,00280100", ["00280004", "00280100"], []),
        ("all", ["00280004", "00280002", "00100010"], []),
    ],
)
def test_includefield_adds_attributes(reader, studies, includefield, present, absent):
    a = studies["A"]
    query = f"?includefield={includefield}" if includefield else ""

    (item, *_) = reader.get(
        f"/dicomweb/studies/{a.uid}/series/{a.series_uids[0]}/instances{query}"
    ).json()

    assert all(tag in item for tag in present)
    assert not any(tag in item for tag in absent)


@pytest.mark.parametrize(
    ("path", "query", "names"),
    [
        ("studies", "Foo=1", "Foo"),
        ("studies", "PatientNme=Ada", "PatientNme"),
        ("studies", "StudyDate=2026-01-01", "StudyDate"),
        ("studies", "StudyDate=2026*", "StudyDate"),
        ("studies", "StudyDate=20260230", "StudyDate"),
        ("studies", "StudyDate=20260101-20260201-20260301", "StudyDate"),
        ("studies", "StudyTime=2500", "StudyTime"),
        ("studies", "StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        ("studies", "ModalitiesInStudy=C*", "ModalitiesInStudy"),
        ("studies", "SeriesInstanceUID=1.2.3", "SeriesInstanceUID"),
        ("studies", "Rows=512", "Rows"),
        ("studies", "limit=-1", "limit"),
        ("studies", "limit=ten", "limit"),
        ("studies", "offset=x", "offset"),
        ("studies", "fuzzymatching=maybe", "fuzzymatching"),
        ("studies", "includefield=NoSuchThing", "includefield"),
        ("studies", "PatientID=A&PatientID=B", "PatientID"),
        ("series", "SeriesNumber=two", "SeriesNumber"),
        ("series", "SOPInstanceUID=1.2", "SOPInstanceUID"),
        (
            "instances",
            "RequestAttributeSequence.RequestedProcedureID=1",
            "RequestAttributeSequence",
        ),
    ],
)
def test_bad_queries_are_400_naming_the_parameter(reader, studies, path, query, names):
    response = reader.get(f"/dicomweb/{path}?{query}")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_query"
    assert names in error["message"]
    assert list(error["fields"]) == [query.split("=")[0]]


def test_xml_answers_are_not_offered(reader, studies):
    response = reader.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom+xml")

    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"


@pytest.mark.parametrize(
    "accept", ["application/dicom+json", "application/json", "*/*", "application/dicom+json; q=0.9"]
)
def test_json_accept_headers(reader, studies, accept):
    assert reader.get("/dicomweb/studies", HTTP_ACCEPT=accept).status_code == 200


def test_another_organization_sees_only_its_own_studies(other_org, token_client, studies):
    other = token_client(other_org, ["dicom:read"])

    assert patient_ids(other.get("/dicomweb/studies")) == ["PAT001"]
    assert other.get(f"/dicomweb/studies?StudyInstanceUID={studies['A'].uid}").json() == []
    assert other.get(f"/dicomweb/series?StudyInstanceUID={studies['B'].uid}").json() == []
    assert other.get(f"/dicomweb/instances?SOPInstanceUID={studies['C'].sop_uids[0]}").json() == []


def test_searching_needs_dicom_read(org, token_client, studies):
    response = token_client(org, ["dicom:write"]).get("/dicomweb/studies")

    assert response.status_code == 403
    assert "dicom:read" in response.json()["error"]["message"]


def test_unknown_study_in_a_scoped_search_is_404(reader, studies):
    response = reader.get("/dicomweb/studies/1.2.3.4/series")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "study_not_found"
