"""The C-FIND SCP (archive.dimse.find) through the shared listener, driven by pynetdicom's SCU and
DCMTK's findscu over real TCP in-process: matching per key type, every level of both information
models, hierarchical and relational queries, return keys, tenant isolation, cancel, the result cap,
the answer as sent (the bytes pydicom and pynetdicom would send, every transfer syntax and PDU
size) and every bad input.

The listener runs in threads with their own database connections, hence transactional tests.
"""

from __future__ import annotations

import datetime as dt
import functools
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from archive.ae_titles.services import ae_create
from archive.dimse import find
from archive.dimse.peer import Peer
from archive.models import Instance, Series, Study
from tenants.context import Actor
from tests.archive.test_dicomweb_support import SeededStudy, ingest_study, study
from tests.archive.test_dimse import CALLED, OTHER_CALLED, Listener
from tests.conftest import require_service

pytestmark = pytest.mark.django_db(transaction=True)

PATIENT_ROOT = UID(find.PATIENT_ROOT)
STUDY_ROOT = UID(find.STUDY_ROOT)
CALLING = "PACS-QR"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MRImage = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def listener(start_listener: Any) -> Listener:
    scp, host, port, receive_dir = start_listener()
    return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)


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
        "D": study(
            patient_id="PAT001",
            patient_name="Lovelace^Ada",
            study_date=dt.date(2025, 6, 1),
            modalities=("CR",),
            instances_per_series=1,
            description="CR THORAX",
        ),
        "E": study(
            patient_id="PAT004",
            patient_name="Müller^Jürgen",
            study_date=dt.date(2025, 3, 3),
            modalities=("US",),
            instances_per_series=1,
            description="US ABDOMEN",
        ),
        "other": study(
            patient_id="PAT001", patient_name="Lovelace^Ada", study_date=dt.date(2026, 1, 5)
        ),
    }


@pytest.fixture
def studies(org, other_org, dicom_ae) -> dict[str, SeededStudy]:
    """A: PAT001 CT (two series); B: PAT002 MR; C: PAT003 CT and MR; D: PAT001 again, CR;
    E: PAT004 with a non-ASCII name. Another organization, with its own AE title, has a
    lookalike of A."""
    ae_create(
        org=other_org,
        ae_title=OTHER_CALLED,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    seeded = dict(_files())
    ingest_study(other_org, seeded["other"])
    for name in "ABCDE":
        ingest_study(org, seeded[name])
    return seeded


@dataclass
class Answer:
    statuses: list[int]
    identifiers: list[Dataset]
    final: Dataset

    @property
    def status(self) -> int:
        return self.statuses[-1]

    def values(self, keyword: str) -> list[Any]:
        return [getattr(ds, keyword, None) for ds in self.identifiers]

    def strings(self, keyword: str) -> list[str]:
        return [str(v) for v in self.values(keyword)]


def scu(*, relational: bool = False) -> tuple[AE, list[Any]]:
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(PATIENT_ROOT, SYNTAXES)
    ae.add_requested_context(STUDY_ROOT, SYNTAXES)
    items: list[Any] = []
    if relational:
        for sop_class in (PATIENT_ROOT, STUDY_ROOT):
            item = SOPClassExtendedNegotiation()
            item.sop_class_uid = sop_class
            item.service_class_application_information = b"\x01"
            items.append(item)
    return ae, items


def query(
    listener: Listener,
    level: str | None,
    model: str = STUDY_ROOT,
    *,
    called: str = CALLED,
    relational: bool = False,
    identifier: Dataset | None = None,
    **keys: Any,
) -> Answer:
    """One C-FIND on a new association; ``keys`` as keyword=value (None: an empty key)."""
    ds = identifier if identifier is not None else Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, "" if value is None else value)
    ae, ext = scu(relational=relational)
    assoc = ae.associate(listener.host, listener.port, ae_title=called, ext_neg=ext or None)
    assert assoc.is_established
    statuses, identifiers, final = [], [], Dataset()
    for status, found in assoc.send_c_find(ds, model):
        assert status is not None, "no answer"
        statuses.append(int(status.Status))
        if found is not None:
            identifiers.append(found)
        else:
            final = status
    assoc.release()
    return Answer(statuses=statuses, identifiers=identifiers, final=final)


def order(studies: dict[str, SeededStudy], answer: Answer) -> str:
    """The matches as the letters of ``studies``, in the order they came."""
    names = {s.uid: name for name, s in studies.items()}
    return "".join(names[uid] for uid in answer.strings("StudyInstanceUID"))


def keywords(ds: Dataset) -> set[str]:
    return {element.keyword for element in ds}


def archive_tier(org, sop_instance_uid: str) -> None:
    """Put one instance in the archive tier, with the byte counts tiering keeps."""
    instance = Instance.objects.for_org(org).get(sop_instance_uid=sop_instance_uid)
    Instance.objects.filter(pk=instance.pk).update(tier="archive")
    Series.objects.filter(pk=instance.series_id).update(bytes_archive=instance.size_bytes)
    Study.objects.filter(pk=instance.study_id).update(bytes_archive=instance.size_bytes)


# --- matching, study level --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, "CBADE"),  # newest study first
        ({"PatientID": "PAT001"}, "AD"),
        ({"PatientID": "pat001"}, ""),  # LO matching is case-sensitive
        ({"PatientID": "PAT00*"}, "CBADE"),
        ({"PatientID": "PAT00?"}, "CBADE"),
        ({"PatientID": "PAT%"}, ""),  # SQL wildcards are literal characters
        ({"PatientID": "*"}, "CBADE"),  # "*" alone is universal matching
        ({"PatientName": "Lovelace^Ada"}, "AD"),
        ({"PatientName": "lovelace^ada"}, "AD"),  # PN matching ignores case
        ({"PatientName": "lovelace*"}, "BAD"),
        ({"PatientName": "*RON"}, "B"),
        ({"PatientName": "Lov?lace^Ada"}, "AD"),
        ({"PatientName": None}, "CBADE"),  # universal matching
        ({"ReferringPhysicianName": "welby^MARCUS"}, "CBADE"),
        ({"PatientBirthDate": "19700101"}, "CBADE"),
        ({"PatientBirthDate": "19800101-"}, ""),
        ({"PatientSex": "O"}, "CBADE"),
        ({"PatientSex": "F"}, ""),
        ({"StudyDate": "20260105"}, "A"),
        ({"StudyDate": "20260101-20260131"}, "BA"),
        ({"StudyDate": "20260115-"}, "CB"),
        ({"StudyDate": "-20260110"}, "ADE"),
        ({"StudyTime": "1000-1030"}, "CBADE"),
        ({"StudyTime": "10"}, "CBADE"),  # a single time covers the unit it names
        ({"StudyTime": "1100-"}, ""),
        ({"ModalitiesInStudy": "MR"}, "CB"),
        ({"ModalitiesInStudy": ["CT", "MR"]}, "CBA"),  # any of a list
        ({"ModalitiesInStudy": "US"}, "E"),
        ({"AccessionNumber": "ACCPAT002"}, "B"),
        ({"AccessionNumber": "ACC*1"}, "AD"),
        ({"StudyID": "PAT002"}, "B"),
        ({"StudyDescription": "*100%*"}, "C"),
        ({"StudyDescription": "*FOLLOW_UP"}, "C"),
        ({"StudyDescription": "*1_0*"}, ""),  # "_" is literal, not a single-character wildcard
        ({"PatientID": "PAT001", "StudyDate": "20260201-"}, ""),  # every key must match
        ({"PatientID": "PAT001", "StudyDate": "20260101-"}, "A"),
    ],
)
def test_study_level_matching(listener, studies, keys, expected):
    answer = query(listener, "STUDY", StudyInstanceUID=None, **keys)

    assert answer.status == 0x0000
    assert set(answer.statuses[:-1]) <= {0xFF00}
    assert order(studies, answer) == expected


def test_uid_list_matching(listener, studies):
    answer = query(listener, "STUDY", StudyInstanceUID=[studies["A"].uid, studies["C"].uid])

    assert order(studies, answer) == "CA"
    single = query(listener, "STUDY", StudyInstanceUID=studies["B"].uid)
    assert order(studies, single) == "B"


def test_person_names_with_other_characters_match_and_answer_in_utf8(listener, studies):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    answer = query(listener, "STUDY", identifier=ds, PatientName="Müller*", PatientID=None)

    (found,) = answer.identifiers
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == "Müller^Jürgen"
    assert found.PatientID == "PAT004"
    ascii_only = query(listener, "STUDY", PatientID="PAT002", PatientName=None)
    assert "SpecificCharacterSet" not in ascii_only.identifiers[0]


# --- return keys ------------------------------------------------------------------------------

STUDY_RETURN_KEYS = {
    "PatientName": None,
    "PatientID": None,
    "PatientBirthDate": None,
    "PatientSex": None,
    "StudyDate": None,
    "StudyTime": None,
    "AccessionNumber": None,
    "StudyID": None,
    "StudyDescription": None,
    "ReferringPhysicianName": None,
    "ModalitiesInStudy": None,
    "SOPClassesInStudy": None,
    "NumberOfStudyRelatedSeries": None,
    "NumberOfStudyRelatedInstances": None,
    "NumberOfPatientRelatedStudies": None,
    "NumberOfPatientRelatedSeries": None,
    "NumberOfPatientRelatedInstances": None,
    "InstanceAvailability": None,
    "RetrieveAETitle": None,
}


def test_study_level_return_keys_are_filled_from_the_index(listener, org, studies):
    archive_tier(org, studies["C"].sop_uids[0])
    answer = query(listener, "STUDY", StudyInstanceUID=studies["C"].uid, **STUDY_RETURN_KEYS)

    (found,) = answer.identifiers
    assert keywords(found) == {*STUDY_RETURN_KEYS, "QueryRetrieveLevel", "StudyInstanceUID"}
    assert found.QueryRetrieveLevel == "STUDY"
    assert str(found.PatientName) == "Turing^Alan" and found.PatientID == "PAT003"
    assert found.PatientBirthDate == "19700101" and found.PatientSex == "O"
    assert found.StudyDate == "20260210" and found.StudyTime == "101500"
    assert found.AccessionNumber == "ACCPAT003" and found.StudyID == "PAT003"
    assert found.StudyDescription == "CT+MR 100% FOLLOW_UP"
    assert str(found.ReferringPhysicianName) == "Welby^Marcus"
    assert list(found.ModalitiesInStudy) == ["CT", "MR"]
    assert sorted(found.SOPClassesInStudy) == sorted([CTImageStorage, MRImage])
    assert (found.NumberOfStudyRelatedSeries, found.NumberOfStudyRelatedInstances) == (2, 4)
    assert found.NumberOfPatientRelatedStudies == 1
    assert (found.NumberOfPatientRelatedSeries, found.NumberOfPatientRelatedInstances) == (2, 4)
    assert found.InstanceAvailability == "NEARLINE"  # one instance is in the archive tier
    assert found.RetrieveAETitle == CALLED


def test_only_requested_keys_come_back_with_the_unique_key(listener, studies):
    answer = query(listener, "STUDY", PatientID="PAT002")

    (found,) = answer.identifiers
    assert keywords(found) == {"QueryRetrieveLevel", "PatientID", "StudyInstanceUID"}
    assert found.StudyInstanceUID == studies["B"].uid


def test_patient_related_counts_span_every_study_of_the_patient(listener, studies):
    answer = query(
        listener,
        "STUDY",
        PatientID="PAT001",
        NumberOfPatientRelatedStudies=None,
        NumberOfPatientRelatedSeries=None,
        NumberOfPatientRelatedInstances=None,
        InstanceAvailability=None,
    )

    assert len(answer.identifiers) == 2
    for found in answer.identifiers:
        assert found.NumberOfPatientRelatedStudies == 2
        assert found.NumberOfPatientRelatedSeries == 3  # A's two and D's one
        assert found.NumberOfPatientRelatedInstances == 5
        assert found.InstanceAvailability == "ONLINE"


# --- the patient level (Patient Root) --------------------------------------------------------


def test_patient_level_groups_studies_by_patient_id(listener, org, studies):
    archive_tier(org, studies["D"].sop_uids[0])
    answer = query(
        listener,
        "PATIENT",
        PATIENT_ROOT,
        PatientName="LOVELACE*",
        PatientID=None,
        PatientBirthDate=None,
        NumberOfPatientRelatedStudies=None,
        NumberOfPatientRelatedSeries=None,
        NumberOfPatientRelatedInstances=None,
        InstanceAvailability=None,
        RetrieveAETitle=None,
    )

    assert answer.status == 0x0000
    first, second = answer.identifiers
    assert (first.PatientID, str(first.PatientName)) == ("PAT001", "Lovelace^Ada")
    assert (first.NumberOfPatientRelatedStudies, first.NumberOfPatientRelatedSeries) == (2, 3)
    assert first.NumberOfPatientRelatedInstances == 5
    assert first.InstanceAvailability == "NEARLINE" and first.PatientBirthDate == "19700101"
    assert (second.PatientID, str(second.PatientName)) == ("PAT002", "Lovelace^Byron")
    assert second.NumberOfPatientRelatedStudies == 1 and second.InstanceAvailability == "ONLINE"
    assert first.RetrieveAETitle == CALLED
    assert first.QueryRetrieveLevel == "PATIENT"
    assert keywords(first) == {
        "QueryRetrieveLevel",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        "InstanceAvailability",
        "RetrieveAETitle",
    }


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": "PAT00?"}, ["PAT001", "PAT002", "PAT003", "PAT004"]),
        ({"PatientID": "PAT002"}, ["PAT002"]),
        ({"PatientName": "*y*"}, ["PAT002"]),  # lower case: PN ignores case
        ({"PatientBirthDate": "1969-1971"}, []),  # a range needs full dates: refused below
        ({"PatientSex": "O", "PatientID": "PAT003"}, ["PAT003"]),
    ],
)
def test_patient_level_matching(listener, studies, keys, expected):
    answer = query(listener, "PATIENT", PATIENT_ROOT, **keys)

    if expected or "PatientBirthDate" not in keys:
        assert answer.status == 0x0000
        assert answer.strings("PatientID") == expected
    else:
        assert answer.status == 0xA900


def test_patient_root_study_level_is_hierarchical_under_the_patient_id(listener, studies):
    answer = query(listener, "STUDY", PATIENT_ROOT, PatientID="PAT001", StudyDate=None)

    assert order(studies, answer) == "AD"
    assert answer.strings("StudyDate") == ["20260105", "20250601"]
    missing = query(listener, "STUDY", PATIENT_ROOT, StudyDate=None)
    assert missing.status == 0xA900
    assert missing.final.OffendingElement == 0x00100020
    assert "PatientID" in missing.final.ErrorComment
    wild = query(listener, "STUDY", PATIENT_ROOT, PatientID="PAT*")
    assert wild.status == 0xA900


# --- the series and image levels ---------------------------------------------------------------


def test_series_level_under_a_study(listener, studies):
    a = studies["A"]
    answer = query(
        listener,
        "SERIES",
        StudyInstanceUID=a.uid,
        SeriesInstanceUID=None,
        Modality=None,
        SeriesNumber=None,
        SeriesDescription=None,
        BodyPartExamined=None,
        NumberOfSeriesRelatedInstances=None,
        InstanceAvailability=None,
        RetrieveAETitle=None,
    )

    assert answer.status == 0x0000
    assert answer.strings("SeriesInstanceUID") == a.series_uids
    assert answer.strings("StudyInstanceUID") == [a.uid, a.uid]
    assert answer.values("SeriesNumber") == [1, 2]
    assert answer.strings("Modality") == ["CT", "CT"]
    assert answer.strings("SeriesDescription") == ["CT series 1", "CT series 2"]
    assert answer.strings("BodyPartExamined") == ["CHEST", "CHEST"]
    assert answer.values("NumberOfSeriesRelatedInstances") == [2, 2]
    assert answer.strings("InstanceAvailability") == ["ONLINE", "ONLINE"]
    assert answer.strings("RetrieveAETitle") == [CALLED, CALLED]
    assert {ds.QueryRetrieveLevel for ds in answer.identifiers} == {"SERIES"}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"SeriesNumber": "2"}, [1]),
        ({"Modality": "MR"}, [1]),
        ({"Modality": "C?"}, [0]),
        ({"SeriesDescription": "*series 1"}, [0]),
        ({"BodyPartExamined": "HEAD"}, [1]),
    ],
)
def test_series_level_matching(listener, studies, keys, expected):
    c = studies["C"]
    answer = query(listener, "SERIES", StudyInstanceUID=c.uid, SeriesInstanceUID=None, **keys)

    assert answer.strings("SeriesInstanceUID") == [c.series_uids[i] for i in expected]


def test_series_level_needs_the_study_without_relational_negotiation(listener, studies):
    answer = query(listener, "SERIES", Modality="MR")

    assert answer.status == 0xA900
    assert answer.final.OffendingElement == 0x0020000D
    assert "StudyInstanceUID" in answer.final.ErrorComment
    listed = query(
        listener, "SERIES", StudyInstanceUID=[studies["A"].uid, studies["B"].uid], Modality=None
    )
    assert listed.status == 0xA900  # one value, not a list


def test_image_level_under_a_series(listener, org, studies):
    a = studies["A"]
    archive_tier(org, a.sop_uids[1])
    answer = query(
        listener,
        "IMAGE",
        StudyInstanceUID=a.uid,
        SeriesInstanceUID=a.series_uids[0],
        SOPInstanceUID=None,
        SOPClassUID=None,
        InstanceNumber=None,
        Rows=None,
        Columns=None,
        InstanceAvailability=None,
        Manufacturer=None,
    )

    assert answer.status == 0x0000
    assert answer.strings("SOPInstanceUID") == a.sop_uids[:2]
    assert answer.strings("SOPClassUID") == [CTImageStorage] * 2
    assert answer.values("InstanceNumber") == [1, 2]
    assert answer.values("Rows") == [16, 16] and answer.values("Columns") == [16, 16]
    assert answer.strings("InstanceAvailability") == ["ONLINE", "NEARLINE"]
    assert answer.strings("SeriesInstanceUID") == [a.series_uids[0]] * 2
    assert answer.values("Manufacturer") == ["", ""]  # not in the header: returned empty
    by_number = query(
        listener,
        "IMAGE",
        StudyInstanceUID=a.uid,
        SeriesInstanceUID=a.series_uids[0],
        InstanceNumber="2",
    )
    assert by_number.strings("SOPInstanceUID") == [a.sop_uids[1]]
    by_uids = query(
        listener,
        "IMAGE",
        StudyInstanceUID=a.uid,
        SeriesInstanceUID=a.series_uids[0],
        SOPInstanceUID=[a.sop_uids[0], a.sop_uids[1]],
    )
    assert by_uids.strings("SOPInstanceUID") == a.sop_uids[:2]
    missing_series = query(listener, "IMAGE", StudyInstanceUID=a.uid, SOPInstanceUID=None)
    assert missing_series.status == 0xA900
    assert missing_series.final.OffendingElement == 0x0020000E


def test_patient_root_lower_levels_need_every_unique_key_above(listener, studies):
    a = studies["A"]
    series = query(
        listener, "SERIES", PATIENT_ROOT, PatientID="PAT001", StudyInstanceUID=a.uid, Modality=None
    )
    assert series.strings("SeriesInstanceUID") == a.series_uids
    assert series.strings("PatientID") == ["PAT001", "PAT001"]
    images = query(
        listener,
        "IMAGE",
        PATIENT_ROOT,
        PatientID="PAT001",
        StudyInstanceUID=a.uid,
        SeriesInstanceUID=a.series_uids[1],
    )
    assert images.strings("SOPInstanceUID") == a.sop_uids[2:]
    assert images.strings("PatientID") == ["PAT001", "PAT001"]
    no_patient = query(listener, "SERIES", PATIENT_ROOT, StudyInstanceUID=a.uid)
    assert no_patient.status == 0xA900 and no_patient.final.OffendingElement == 0x00100020
    # A unique key that names another patient's study finds nothing.
    wrong = query(listener, "SERIES", PATIENT_ROOT, PatientID="PAT002", StudyInstanceUID=a.uid)
    assert wrong.status == 0x0000 and wrong.identifiers == []


# --- relational queries ----------------------------------------------------------------------


@pytest.fixture
def relational_listener(listener: Listener) -> Listener:
    """The listener, which answers SOP Class Extended Negotiation with find's answer."""
    return listener


def test_relational_queries_need_and_get_extended_negotiation(relational_listener, studies):
    ae, ext = scu(relational=True)
    assoc = ae.associate(
        relational_listener.host, relational_listener.port, ae_title=CALLED, ext_neg=ext
    )
    assert assoc.is_established
    assert assoc.acceptor.sop_class_extended == {PATIENT_ROOT: b"\x01", STUDY_ROOT: b"\x01"}
    assoc.release()
    series = query(relational_listener, "SERIES", relational=True, Modality="MR")
    assert series.status == 0x0000
    assert sorted(series.strings("StudyInstanceUID")) == sorted(
        [studies["B"].uid, studies["C"].uid]
    )
    by_patient = query(
        relational_listener,
        "SERIES",
        PATIENT_ROOT,
        relational=True,
        PatientName="turing*",
        SeriesNumber=None,
    )
    assert by_patient.strings("SeriesInstanceUID") == studies["C"].series_uids
    images = query(
        relational_listener,
        "IMAGE",
        relational=True,
        SOPInstanceUID=studies["B"].sop_uids[1],
        PatientID=None,
    )
    assert images.strings("PatientID") == ["PAT002"]
    assert images.strings("StudyInstanceUID") == [studies["B"].uid]
    assert images.strings("SeriesInstanceUID") == [studies["B"].series_uids[0]]
    # Without the negotiation the same query is hierarchical, and refused.
    assert query(relational_listener, "SERIES", Modality="MR").status == 0xA900


def test_extended_negotiation_answer():
    answer = find.sop_extended_answer(
        {
            STUDY_ROOT: b"\x01\x01\x01\x01\x01",
            PATIENT_ROOT: b"\x00",
            UID("1.2.840.10008.5.1.4.1.2.2.2"): b"\x01",  # Study Root MOVE: not ours to answer
        }
    )

    # Relational queries and fuzzy semantic matching of person names; not the other two.
    assert answer == {STUDY_ROOT: b"\x01\x00\x01\x00", PATIENT_ROOT: b"\x00"}


# --- tenant isolation -------------------------------------------------------------------------


def test_another_organizations_ae_title_finds_only_its_own_studies(relational_listener, studies):
    other = studies["other"]
    mine = query(relational_listener, "STUDY", called=OTHER_CALLED, PatientID="PAT001")
    assert mine.strings("StudyInstanceUID") == [other.uid]
    everything = query(relational_listener, "STUDY", called=OTHER_CALLED)
    assert everything.strings("StudyInstanceUID") == [other.uid]
    a = studies["A"]
    for level, keys in [
        ("STUDY", {"StudyInstanceUID": a.uid}),
        ("SERIES", {"StudyInstanceUID": a.uid, "SeriesInstanceUID": None}),
        ("SERIES", {"SeriesInstanceUID": a.series_uids[0]}),
        ("IMAGE", {"SOPInstanceUID": a.sop_uids[0]}),
    ]:
        answer = query(relational_listener, level, called=OTHER_CALLED, relational=True, **keys)
        assert answer.status == 0x0000 and answer.identifiers == [], (level, keys)
    patients = query(relational_listener, "PATIENT", PATIENT_ROOT, called=OTHER_CALLED)
    assert patients.strings("PatientID") == ["PAT001"]
    counts = query(
        relational_listener,
        "PATIENT",
        PATIENT_ROOT,
        called=OTHER_CALLED,
        NumberOfPatientRelatedStudies=None,
    )
    assert counts.values("NumberOfPatientRelatedStudies") == [1]  # not our PAT001's two
    ours = query(relational_listener, "STUDY", StudyInstanceUID=other.uid)
    assert ours.identifiers == []


def test_trashed_studies_are_not_found(listener, studies):
    Study.objects.filter(study_uid=studies["B"].uid).update(trashed_at=dt.datetime.now(dt.UTC))

    assert order(studies, query(listener, "STUDY", StudyInstanceUID=None)) == "CADE"
    assert query(listener, "PATIENT", PATIENT_ROOT, PatientID="PAT002").identifiers == []


# --- cancel and the cap -----------------------------------------------------------------------


@pytest.fixture
def slow_find(monkeypatch) -> None:
    """The matches go out one at a time, and after the first the C-FIND handler waits (10 s at
    most) for a C-FIND-CANCEL to arrive before it goes on, so that a cancel lands mid-answer."""
    monkeypatch.setattr(find, "BATCH_BYTES", 1)
    original = find.DirectAnswer._queue
    batches = 0

    def slow(self: find.DirectAnswer, batch: list[Any]) -> None:
        nonlocal batches
        original(self, batch)
        batches += 1
        if batches == 1:
            for _ in range(1000):
                if self.assoc.dimse.cancel_req:
                    break
                threading.Event().wait(0.01)

    monkeypatch.setattr(find.DirectAnswer, "_queue", slow)


def test_c_find_cancel_stops_the_matches(listener, studies, slow_find):
    ae, _ = scu()
    assoc = ae.associate(listener.host, listener.port, ae_title=CALLED)
    assert assoc.is_established
    context_id = next(
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT
    )
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    statuses = []
    for status, _found in assoc.send_c_find(ds, STUDY_ROOT, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            assoc.send_c_cancel(7, context_id)
    assoc.release()

    assert statuses == [0xFF00, 0xFE00]


class Context(NamedTuple):
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass
class FakeEvent:
    """What c_find reads of pynetdicom's event."""

    identifier: Dataset
    abstract_syntax: str = STUDY_ROOT
    cancel_after: int | None = None
    checks: int = 0

    @property
    def context(self) -> Any:
        return Context(1, self.abstract_syntax, ExplicitVRLittleEndian)

    @property
    def is_cancelled(self) -> bool:
        self.checks += 1
        return self.cancel_after is not None and self.checks > self.cancel_after


def study_identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def run(peer: Peer | None, event: FakeEvent) -> list[tuple[Any, Dataset | None]]:
    return list(find.c_find(peer, event))


def test_cancel_before_any_match_answers_cancel(org, studies, dicom_ae):
    peer = Peer(org=org, called_ae=CALLED, calling_ae=CALLING, address="127.0.0.1")

    answers = run(peer, FakeEvent(study_identifier(), cancel_after=0))
    assert answers == [(0xFE00, None)]
    answers = run(peer, FakeEvent(study_identifier(), cancel_after=2))
    assert [status for status, _ in answers] == [0xFF00, 0xFF00, 0xFE00]


@pytest.mark.parametrize(("cap", "sent", "final"), [(2, 2, 0xA700), (5, 5, 0x0000)])
def test_the_result_cap_sends_the_first_matches_then_refuses(
    listener, studies, settings, cap, sent, final
):
    settings.DIMSE_FIND_MAX_RESULTS = cap

    answer = query(listener, "STUDY", StudyInstanceUID=None)
    assert answer.statuses == [0xFF00] * sent + [final]
    assert order(studies, answer) == "CBADE"[:sent]
    if final == 0xA700:
        assert answer.final.ErrorComment == (
            "More than 2 matches; the first 2 were sent. Narrow the query."
        )


# --- the answer as sent -------------------------------------------------------------------------
#
# Over a Little Endian association the pending responses are encoded by find.py and handed to the
# network thread directly (find.DirectAnswer); they must be what pydicom and pynetdicom would
# have sent.


def _request(*, model: str = STUDY_ROOT, charset: bool = False, **keys: Any) -> find.FindRequest:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    if charset:
        ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return find.request_parse(ds, model=model, relational=True)


def _pn(alphabetic: str, ideographic: str = "") -> dict[str, str]:
    return {"Alphabetic": alphabetic, **({"Ideographic": ideographic} if ideographic else {})}


STORED = {
    "00080020": {"vr": "DA", "Value": ["20260105"]},
    "00080030": {"vr": "TM", "Value": ["101500.25"]},
    "00080050": {"vr": "SH", "Value": ["A1"]},
    "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
    "00081030": {"vr": "LO", "Value": ["CT CHEST"]},
    "00100010": {"vr": "PN", "Value": [_pn("Lovelace^Ada")]},
    "00100020": {"vr": "LO", "Value": ["PAT001"]},
    "00100040": {"vr": "CS", "Value": ["F"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3.45"]},  # odd length: padded with a NUL
    "00201208": {"vr": "IS", "Value": [12]},
    "00080056": {"vr": "CS", "Value": ["ONLINE"]},
}
REQUESTED = {
    "PatientName": "",
    "PatientID": "",
    "PatientSex": "",
    "PatientBirthDate": "",  # no value stored: comes back empty
    "StudyDate": "",
    "StudyTime": "",
    "AccessionNumber": "",
    "StudyDescription": "",
    "ModalitiesInStudy": "",
    "NumberOfStudyRelatedInstances": "",
    "InstanceAvailability": "",
    "RetrieveAETitle": "",
}


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize(
    ("changes", "keys", "charset", "direct"),
    [
        ({}, {}, False, True),
        ({}, {}, True, True),  # SpecificCharacterSet asked for: sent empty
        (  # not ASCII: UTF-8, person name component groups, a multi-valued text
            {
                "00100010": {"vr": "PN", "Value": [_pn("Müller^Jürgen", "山田^太郎")]},
                "00081030": {"vr": "LO", "Value": ["Thorax ÄÖÜ", "Ré"]},
            },
            {},
            False,
            True,
        ),
        (  # a long text (4-byte length in Explicit VR) and a value with no Value
            {"00081030": {"vr": "UT", "Value": ["x" * 70001]}, "00100040": {"vr": "CS"}},
            {},
            False,
            True,
        ),
        (  # a sequence, a binary number and a decimal: encoded by pydicom
            {
                "00081032": {
                    "vr": "SQ",
                    "Value": [{"00080100": {"vr": "SH", "Value": ["P1"]}}],
                },
                "00280010": {"vr": "US", "Value": [512]},
                "00101020": {"vr": "DS", "Value": [1.75]},
            },
            {"ProcedureCodeSequence": [], "Rows": None, "PatientSize": None},
            False,
            False,
        ),
        (  # not ASCII where the character set does not apply: encoded by pydicom
            {"00100040": {"vr": "CS", "Value": ["É"]}},
            {},
            False,
            False,
        ),
        (  # a person name with a member that is no component group: encoded by pydicom
            {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B", "Note": "é"}]}},
            {},
            True,
            False,
        ),
    ],
    ids=["ascii", "charset-asked", "utf8", "long-and-empty", "pydicom-kinds", "odd-cs", "odd-pn"],
)
def test_encoded_responses_are_the_bytes_pydicom_writes(
    implicit, changes, keys, charset, direct, org
):
    request = _request(charset=charset, **{**REQUESTED, **keys})
    peer = Peer(org=org, called_ae=CALLED, calling_ae=CALLING, address="127.0.0.1")

    def match() -> find.Match:
        return find.Match(attributes={**STORED, **changes})

    expected = encode(find.response_identifier(match(), request, peer), implicit, True)
    assert find.response_bytes(match(), request, peer, implicit=implicit) == expected
    attributes = {**find._chosen(match(), request, peer), "00080052": {"vr": "CS"}}
    assert (find._encoded(attributes, implicit=implicit, utf8=True) is not None) is direct


@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
@pytest.mark.parametrize("sop_class", [STUDY_ROOT, PATIENT_ROOT])
def test_pending_response_command_is_the_one_pynetdicom_encodes(status, sop_class):
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 513
    primitive.AffectedSOPClassUID = sop_class
    primitive.Status = status
    primitive.Identifier = BytesIO(LEVEL_STUDY)
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)

    assert find.c_find_rsp_command(
        sop_class_uid=sop_class, message_id=513, status=status
    ) == encode(message.command_set, True, True)


@dataclass
class FakeDul:
    queued: list[Any]
    alive: bool = True

    def __post_init__(self) -> None:
        self.to_provider_queue: queue.Queue[Any] = queue.Queue()
        self.wakes = 0

    def send_pdu(self, primitive: Any) -> None:
        self.to_provider_queue.put(primitive)
        self.wakes += 1

    def is_alive(self) -> bool:
        return self.alive


@dataclass
class FakeAssociation:
    dul: FakeDul
    maximum_pdu_size: int
    is_established: bool = True

    @property
    def dimse(self) -> Any:
        return self


class DirectEvent(FakeEvent):
    """A C-FIND event on a (fake) live association: what DirectAnswer reads of it."""

    pdus = 0

    def __init__(self, maximum_pdu: int, cancel_after: int | None = None):
        super().__init__(study_identifier(), cancel_after=cancel_after)
        self.assoc = FakeAssociation(FakeDul(queued=[]), maximum_pdu)
        self.request = C_FIND()
        self.request.MessageID = 9
        self.request.AffectedSOPClassUID = STUDY_ROOT

    def messages(self) -> list[tuple[bytes, bytes]]:
        """The (command, identifier) pairs of what was queued, checking every PDU on the way:
        within the maximum PDU length, even fragments, command before identifier, and no PDU
        with parts of two responses."""
        self.pdus = 0
        messages = []
        command, identifier, command_done = b"", b"", False
        while not self.assoc.dul.to_provider_queue.empty():
            primitive = self.assoc.dul.to_provider_queue.get()
            self.pdus += 1
            pdvs = primitive.presentation_data_value_list
            limit = self.assoc.maximum_pdu_size
            assert not limit or sum(4 + 1 + len(data) for _, data in pdvs) <= limit
            for n, (context_id, data) in enumerate(pdvs):
                assert context_id == 1
                assert len(data) % 2 == 1  # an even fragment after the control header
                control, fragment = data[0], data[1:]
                if control & 0x01:  # a command fragment, the last one with bit 1
                    assert not command_done
                    command += fragment
                    command_done = bool(control & 0x02)
                else:  # an identifier fragment, after the whole command
                    assert command_done
                    identifier += fragment
                    if control & 0x02:
                        assert n == len(pdvs) - 1, "a response ends inside a PDU"
                        messages.append((command, identifier))
                        command, identifier, command_done = b"", b"", False
        assert not command and not identifier
        return messages


IDENTIFIERS = [bytes([n]) * (40 + 20 * n) for n in range(12)]  # even lengths


@pytest.mark.parametrize("maximum_pdu", [0, 16, 30, 16384])
def test_direct_answer_sends_each_response_whole_in_order(maximum_pdu, monkeypatch):
    monkeypatch.setattr(find, "BATCH_BYTES", 200)
    event = DirectEvent(maximum_pdu)
    answer = find.DirectAnswer(event, implicit=False)

    assert answer.send(IDENTIFIERS, find.PENDING) == (12, False)
    command = find.c_find_rsp_command(sop_class_uid=STUDY_ROOT, message_id=9, status=0xFF00)
    assert event.messages() == [(command, identifier) for identifier in IDENTIFIERS]
    assert 1 < event.assoc.dul.wakes < 12  # a wake-up per batch, not per PDU
    if maximum_pdu in (0, 16384):  # room for a whole response: one PDU each
        assert event.pdus == 12


def test_direct_answer_stops_between_batches_at_a_cancel(monkeypatch):
    monkeypatch.setattr(find, "BATCH_BYTES", 100)
    event = DirectEvent(16384, cancel_after=2)
    answer = find.DirectAnswer(event, implicit=False)

    sent, stopped = answer.send(IDENTIFIERS, find.PENDING)
    assert stopped and answer.cancelled
    assert [identifier for _, identifier in event.messages()] == IDENTIFIERS[:sent]
    assert 0 < sent < 12


def test_direct_answer_stops_when_the_association_ends(monkeypatch):
    monkeypatch.setattr(find, "BATCH_BYTES", 100)
    event = DirectEvent(16384)
    event.assoc.is_established = False

    assert find.DirectAnswer(event, implicit=False).send(IDENTIFIERS, find.PENDING) == (0, True)
    assert event.assoc.dul.to_provider_queue.empty()


def test_direct_answer_waits_for_the_network_thread(monkeypatch):
    """A caller that does not read: the handler holds the matches back, then gives up when the
    association's network thread ends."""
    monkeypatch.setattr(find, "BATCH_BYTES", 1)
    monkeypatch.setattr(find, "QUEUED_PDUS_MAX", 4)
    event = DirectEvent(16384)
    dul = event.assoc.dul
    threading.Timer(0.2, lambda: setattr(dul, "alive", False)).start()

    answer = find.DirectAnswer(event, implicit=False)
    sent, stopped = answer.send(IDENTIFIERS, find.PENDING)
    assert stopped and not answer.cancelled
    assert sent == 4 and dul.to_provider_queue.qsize() == 4  # a PDU per response


def _study_answers(listener: Listener, syntax: UID, maximum_pdu: int) -> list[bytes]:
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.maximum_pdu_size = maximum_pdu
    ae.add_requested_context(STUDY_ROOT, [syntax])
    assoc = ae.associate(listener.host, listener.port, ae_title=CALLED)
    assert assoc.is_established
    ds = study_identifier(**REQUESTED, StudyInstanceUID="")
    found = []
    for status, identifier in assoc.send_c_find(ds, STUDY_ROOT):
        if identifier is not None:
            found.append(bytes(encode(identifier, False, True) or b""))
        else:
            assert status.Status == 0x0000
    assoc.release()
    return found


@pytest.mark.parametrize(
    ("syntax", "maximum_pdu"),
    [
        (ExplicitVRLittleEndian, 0),
        (ImplicitVRLittleEndian, 64),
        (ExplicitVRLittleEndian, 100),
        (ExplicitVRBigEndian, 16384),  # answered through pynetdicom
    ],
)
def test_every_transfer_syntax_and_pdu_size_gets_the_same_answers(
    listener, studies, monkeypatch, syntax, maximum_pdu
):
    monkeypatch.setattr(find, "BATCH_BYTES", 300)
    direct = []
    for_event = find.DirectAnswer.for_event

    def noted(event: Any) -> find.DirectAnswer | None:
        direct.append(for_event(event))
        return direct[-1]

    monkeypatch.setattr(find.DirectAnswer, "for_event", noted)
    answers = _study_answers(listener, syntax, maximum_pdu)
    assert len(answers) == 5
    assert (direct[0] is not None) is (syntax != ExplicitVRBigEndian)
    monkeypatch.setattr(find.DirectAnswer, "for_event", lambda event: None)

    assert answers == _study_answers(listener, syntax, maximum_pdu)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "model", "keys", "offending", "comment"),
    [
        (None, STUDY_ROOT, {"PatientID": "PAT001"}, 0x00080052, "QueryRetrieveLevel"),
        ("FOO", STUDY_ROOT, {}, 0x00080052, "'FOO' is not one of STUDY/SERIES/IMAGE"),
        ("PATIENT", STUDY_ROOT, {}, 0x00080052, "is not one of STUDY/SERIES/IMAGE"),
        ("STUDY", STUDY_ROOT, {"StudyDate": "20260101-20260201-20260301"}, 0x00080020, "range"),
        ("STUDY", STUDY_ROOT, {"StudyDate": "20260230"}, 0x00080020, "StudyDate must be a date"),
        ("STUDY", STUDY_ROOT, {"StudyDate": "2026*"}, 0x00080020, "not wildcards"),
        ("STUDY", STUDY_ROOT, {"StudyDate": "-"}, 0x00080020, "at least one end"),
        ("STUDY", STUDY_ROOT, {"StudyTime": "2500"}, 0x00080030, "impossible time"),
        ("STUDY", STUDY_ROOT, {"StudyInstanceUID": "1.2.*"}, 0x0020000D, "not wildcards"),
        ("STUDY", STUDY_ROOT, {"StudyInstanceUID": "1.2..3"}, 0x0020000D, "is not a UID"),
        ("STUDY", STUDY_ROOT, {"ModalitiesInStudy": "C*"}, 0x00080061, "not wildcards"),
    ],
)
def test_bad_identifiers_are_refused_with_a_reason(
    listener, studies, level, model, keys, offending, comment
):
    answer = query(listener, level, model, **keys)

    assert answer.statuses == [0xA900]
    assert answer.final.OffendingElement == offending
    assert comment in answer.final.ErrorComment
    assert len(answer.final.ErrorComment) <= 64


@pytest.mark.parametrize(
    "keys",
    [
        {"InstitutionName": "ST MARY"},  # not a matching key: ignored, returned empty
        {"SeriesDescription": "CT series 1"},  # a key of a lower level
        {"NumberOfStudyRelatedSeries": "7"},  # a return key: no matching on it
    ],
)
def test_keys_strata_does_not_match_on_are_ignored_with_a_warning(listener, studies, keys):
    answer = query(listener, "STUDY", PatientID="PAT001", **keys)

    assert answer.statuses == [0xFF01, 0xFF01, 0x0000]
    assert order(studies, answer) == "AD"
    (keyword,) = keys
    if keyword == "NumberOfStudyRelatedSeries":
        assert answer.values(keyword) == [2, 1]
    else:
        assert answer.values(keyword) == ["", ""]


def test_a_private_attribute_with_a_value_is_ignored_with_a_warning(listener, studies):
    ds = Dataset()
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "secret")
    answer = query(listener, "STUDY", identifier=ds, PatientID="PAT002")

    assert answer.statuses == [0xFF01, 0x0000]
    assert 0x00091001 not in answer.identifiers[0]


def raw_find(listener: Listener, identifier: bytes) -> Any:
    """Send a C-FIND whose identifier is ``identifier`` as bytes; the final response."""
    ae, _ = scu()
    assoc = ae.associate(listener.host, listener.port, ae_title=CALLED)
    assert assoc.is_established
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT)
    assert context.context_id is not None
    request = C_FIND()
    request.MessageID = 3
    request.AffectedSOPClassUID = STUDY_ROOT
    request.Priority = 2
    request.Identifier = BytesIO(identifier)
    # As pynetdicom's own send_c_find does: hold the association's reactor off the responses.
    assoc._reactor_checkpoint.clear()
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _cx, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assoc.release()
    return response


# Explicit VR little endian (the accepted transfer syntax): QueryRetrieveLevel CS "STUDY ".
LEVEL_STUDY = b"\x08\x00\x52\x00CS\x06\x00STUDY "


@pytest.mark.parametrize(
    "identifier",
    [
        b"\x08\x00\x52\x00ZZ\x06\x00STUDY ",  # a value representation that does not exist
        b"\x08\x00\x52\x00SQ\x00\x00\xff\xff\xff\xff\x01\x02\x03\x04",  # a cut sequence
    ],
    ids=["unknown-vr", "cut-sequence"],
)
def test_an_identifier_that_cannot_be_decoded_is_refused(listener, studies, identifier):
    response = raw_find(listener, identifier)

    assert response.Status == 0xC000
    assert "cannot be decoded" in response.ErrorComment
    assert len(response.ErrorComment) <= 64


def test_a_value_that_cannot_be_decoded_is_refused(listener, studies):
    # Rows (US) three bytes long.
    response = raw_find(listener, LEVEL_STUDY + b"\x28\x00\x10\x00US\x03\x00abc")

    assert response.Status == 0xC000
    assert response.ErrorComment.startswith("Rows cannot be decoded")
    assert response.OffendingElement == 0x00280010


def test_a_value_that_is_not_valid_for_its_attribute_is_refused(listener, studies):
    # SERIES level under study A, SeriesNumber (IS) "two".
    uid = studies["A"].uid.encode()
    uid += b"\x00" * (len(uid) % 2)
    identifier = (
        b"\x08\x00\x52\x00CS\x06\x00SERIES"
        + b"\x20\x00\x0d\x00UI"
        + len(uid).to_bytes(2, "little")
        + uid
        + b"\x20\x00\x11\x00IS\x04\x00two "
    )
    response = raw_find(listener, identifier)

    assert response.Status == 0xA900
    assert response.OffendingElement == 0x00200011
    assert response.ErrorComment.startswith("SeriesNumber takes a whole number")


def test_a_caller_that_was_not_admitted_is_refused(org):
    ((status, identifier),) = run(None, FakeEvent(study_identifier()))

    assert status.Status == 0x0124
    assert status.ErrorComment == "The association was not admitted."
    assert identifier is None


def test_an_unreadable_index_answers_unable_to_process(org, dicom_ae, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(find, "search", broken)
    peer = Peer(org=org, called_ae=CALLED, calling_ae=CALLING, address="127.0.0.1")

    ((status, _),) = run(peer, FakeEvent(study_identifier()))
    assert status.Status == 0xC001
    assert "retry later" in status.ErrorComment


def test_a_sop_class_that_is_not_a_find_model_is_refused(org):
    peer = Peer(org=org, called_ae=CALLED, calling_ae=CALLING, address="127.0.0.1")

    ((status, _),) = run(peer, FakeEvent(study_identifier(), abstract_syntax=CTImageStorage))
    assert status.Status == 0x0122


# --- DCMTK's findscu ----------------------------------------------------------------------------

FINDSCU = shutil.which("findscu")


@pytest.fixture
def findscu(tmp_path: Path) -> Iterator[Any]:
    require_service("findscu", FINDSCU is not None, "no findscu binary (Debian package dcmtk)")

    def run_findscu(
        listener: Listener, *args: str, called: str = CALLED
    ) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
        out = tmp_path / f"rsp-{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        done = subprocess.run(  # noqa: S603
            [
                str(FINDSCU),
                "-v",
                "-aet",
                CALLING,
                "-aec",
                called,
                "-X",
                "-od",
                str(out),
                *args,
                listener.host,
                str(listener.port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found: list[Dataset] = [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
        return done, found

    yield run_findscu


def test_findscu_study_root_study_level(listener, studies, findscu):
    done, found = findscu(
        listener,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=lovelace*",
        "-k",
        "StudyInstanceUID",
        "-k",
        "PatientID",
        "-k",
        "NumberOfStudyRelatedInstances",
        "-k",
        "ModalitiesInStudy",
    )

    assert done.returncode == 0, done.stderr
    assert [ds.StudyInstanceUID for ds in found] == [studies[name].uid for name in "BAD"]
    assert [ds.PatientID for ds in found] == ["PAT002", "PAT001", "PAT001"]
    assert [ds.NumberOfStudyRelatedInstances for ds in found] == [2, 4, 1]
    assert list(found[1].ModalitiesInStudy) == ["CT"] or found[1].ModalitiesInStudy == "CT"


def test_findscu_patient_root_all_levels(listener, studies, findscu):
    a = studies["A"]
    _, patients = findscu(
        listener,
        "-P",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=PAT00?",
        "-k",
        "NumberOfPatientRelatedStudies",
    )
    assert [(ds.PatientID, ds.NumberOfPatientRelatedStudies) for ds in patients] == [
        ("PAT001", 2),
        ("PAT002", 1),
        ("PAT003", 1),
        ("PAT004", 1),
    ]
    _, series = findscu(
        listener,
        "-P",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        "PatientID=PAT001",
        "-k",
        f"StudyInstanceUID={a.uid}",
        "-k",
        "SeriesInstanceUID",
        "-k",
        "Modality",
    )
    assert [ds.SeriesInstanceUID for ds in series] == a.series_uids
    _, images = findscu(
        listener,
        "-P",
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        "PatientID=PAT001",
        "-k",
        f"StudyInstanceUID={a.uid}",
        "-k",
        f"SeriesInstanceUID={a.series_uids[0]}",
        "-k",
        "SOPInstanceUID",
    )
    assert [ds.SOPInstanceUID for ds in images] == a.sop_uids[:2]


def test_findscu_sees_refusals_and_other_organizations_see_nothing(listener, studies, findscu):
    done, found = findscu(listener, "-S", "-k", "QueryRetrieveLevel=NOPE", "-k", "PatientID")
    assert found == []
    assert "DataSetDoesNotMatchSOPClass" in done.stdout + done.stderr
    done, found = findscu(
        listener,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={studies['A'].uid}",
        called=OTHER_CALLED,
    )
    assert done.returncode == 0 and found == []


def test_findscu_cancel(listener, studies, findscu, slow_find):
    done, found = findscu(
        listener, "-S", "--cancel", "1", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID"
    )

    assert len(found) == 1
    assert "Cancel" in done.stdout + done.stderr


def test_the_listener_never_formats_query_identifiers_for_the_log(listener, caplog):
    """pynetdicom formats a C-FIND's identifiers for its log unless told not to: patient names
    and IDs would reach the log (and cost CPU per match)."""
    from pynetdicom import _config

    assert _config.LOG_REQUEST_IDENTIFIERS is False
    assert _config.LOG_RESPONSE_IDENTIFIERS is False
