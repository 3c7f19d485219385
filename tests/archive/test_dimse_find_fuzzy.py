"""C-FIND with fuzzy semantic matching of person names (SOP Class Extended Negotiation byte 3),
through the shared listener and pynetdicom's SCU over real TCP: the negotiation's answer, the
same studies matched with and without it (QIDO-RS's ``fuzzymatching=true`` rules, shared in
``archive.index.query``), every level, tenant isolation and the refused query.

The listener runs in threads with their own database connections, hence transactional tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from archive.ae_titles.services import ae_create
from archive.dimse import find
from tenants.context import Actor
from tests.archive.test_dicomweb_qido_fuzzy import name_files
from tests.archive.test_dicomweb_support import SeededStudy, ingest_study
from tests.archive.test_dimse import CALLED, OTHER_CALLED, Listener
from tests.archive.test_dimse_find import SYNTAXES, Answer

pytestmark = pytest.mark.django_db(transaction=True)

PATIENT_ROOT = UID(find.PATIENT_ROOT)
STUDY_ROOT = UID(find.STUDY_ROOT)
# Service class application information: relational queries (byte 1), fuzzy matching (byte 3).
FUZZY = b"\x00\x00\x01"
RELATIONAL_FUZZY = b"\x01\x00\x01"


@pytest.fixture
def listener(start_listener: Any) -> Listener:
    scp, host, port, receive_dir = start_listener()
    return Listener(scp=scp, host=host, port=port, receive_dir=receive_dir)


@pytest.fixture
def name_studies(org, other_org, dicom_ae) -> dict[str, SeededStudy]:
    """P1..P6 (``test_dicomweb_qido_fuzzy``) in ``org``; another organization, with its own AE
    title, has a Smith^John of its own."""
    ae_create(
        org=other_org,
        ae_title=OTHER_CALLED,
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    seeded = dict(name_files())
    ingest_study(other_org, seeded.pop("other"))
    for item in seeded.values():
        ingest_study(org, item)
    return seeded


def associate(listener: Listener, info: bytes | None, called: str = CALLED) -> Any:
    ae = AE(ae_title="PACS-QR")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(PATIENT_ROOT, SYNTAXES)
    ae.add_requested_context(STUDY_ROOT, SYNTAXES)
    items: list[Any] = []
    for sop_class in (PATIENT_ROOT, STUDY_ROOT) if info is not None else ():
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = sop_class
        item.service_class_application_information = info
        items.append(item)
    assoc = ae.associate(listener.host, listener.port, ae_title=called, ext_neg=items or None)
    assert assoc.is_established
    return assoc


def query(
    listener: Listener,
    level: str,
    info: bytes | None,
    model: str = STUDY_ROOT,
    *,
    called: str = CALLED,
    **keys: Any,
) -> Answer:
    """One C-FIND on a new association negotiated with ``info`` (None: no extended
    negotiation); ``keys`` as keyword=value (None: an empty key)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, "" if value is None else value)
    assoc = associate(listener, info, called)
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


def test_fuzzy_matching_is_accepted_when_asked(listener, name_studies):
    asked_all = associate(listener, b"\x01\x01\x01\x01")
    fuzzy_only = associate(listener, FUZZY)

    # Relational queries and fuzzy matching accepted; combined date-time matching and timezone
    # adjustment declined.
    assert asked_all.acceptor.sop_class_extended == {
        PATIENT_ROOT: b"\x01\x00\x01\x00",
        STUDY_ROOT: b"\x01\x00\x01\x00",
    }
    assert fuzzy_only.acceptor.sop_class_extended == {PATIENT_ROOT: FUZZY, STUDY_ROOT: FUZZY}
    asked_all.release()
    fuzzy_only.release()


@pytest.mark.parametrize(
    ("keys", "exact", "fuzzy"),
    [
        ({"PatientName": "smi"}, [], ["P3", "P2", "P1"]),
        ({"PatientName": "Smí"}, [], ["P3", "P2", "P1"]),
        ({"PatientName": "SMITH^JOHN"}, ["P1"], ["P2", "P1"]),
        ({"PatientName": "joh smi"}, [], ["P2", "P1"]),
        ({"PatientName": "sm?th"}, [], ["P3", "P2", "P1"]),
        ({"PatientName": "παπαδοπουλος^γιαννης"}, [], ["P6"]),  # no accents
        (
            {"PatientName": "*"},
            ["P6", "P5", "P4", "P3", "P2", "P1"],
            ["P6", "P5", "P4", "P3", "P2", "P1"],
        ),
        ({"ReferringPhysicianName": "welby"}, [], ["P6", "P4", "P2"]),
        ({"ReferringPhysicianName": "hou", "PatientName": "SMI"}, [], ["P1"]),
    ],
)
def test_study_level_fuzzy_and_exact_on_the_same_studies(
    listener, name_studies, keys, exact, fuzzy
):
    without = query(listener, "STUDY", None, StudyInstanceUID=None, PatientID=None, **keys)
    declined = query(
        listener, "STUDY", b"\x00\x00\x00", StudyInstanceUID=None, PatientID=None, **keys
    )
    with_fuzzy = query(listener, "STUDY", FUZZY, StudyInstanceUID=None, PatientID=None, **keys)

    assert without.status == declined.status == with_fuzzy.status == 0x0000
    assert without.strings("PatientID") == declined.strings("PatientID") == exact
    assert with_fuzzy.strings("PatientID") == fuzzy


def test_every_level_matches_fuzzy_names(listener, name_studies):
    p1, p2 = name_studies["P1"], name_studies["P2"]

    patients = query(listener, "PATIENT", FUZZY, PATIENT_ROOT, PatientID=None, PatientName="smi")
    series = query(
        listener, "SERIES", RELATIONAL_FUZZY, SeriesInstanceUID=None, PatientName="joh smi"
    )
    images = query(
        listener, "IMAGE", RELATIONAL_FUZZY, SOPInstanceUID=None, ReferringPhysicianName="hou"
    )
    hierarchical = query(
        listener,
        "IMAGE",
        FUZZY,
        StudyInstanceUID=p2.uid,
        SeriesInstanceUID=p2.series_uids[0],
        SOPInstanceUID=None,
        PatientName="SMITH",
    )

    assert patients.strings("PatientID") == ["P1", "P2", "P3"]
    assert sorted(series.strings("SeriesInstanceUID")) == sorted(p1.series_uids + p2.series_uids)
    assert images.strings("SOPInstanceUID") == p1.sop_uids
    assert hierarchical.strings("SOPInstanceUID") == p2.sop_uids
    # Fuzzy matching alone does not make queries relational.
    refused = query(listener, "SERIES", FUZZY, SeriesInstanceUID=None, PatientName="smi")
    assert refused.status == 0xA900


def test_another_organizations_names_never_match(listener, name_studies):
    mine = query(listener, "STUDY", FUZZY, PatientID=None, PatientName="smith john")
    theirs = query(
        listener, "STUDY", FUZZY, called=OTHER_CALLED, PatientID=None, PatientName="smith john"
    )
    nothing = query(
        listener, "STUDY", FUZZY, called=OTHER_CALLED, PatientID=None, PatientName="smithers"
    )

    assert mine.strings("PatientID") == ["P2", "P1"]
    assert theirs.strings("PatientID") == ["X1"]
    assert nothing.status == 0x0000 and nothing.identifiers == []


def test_too_many_words_are_refused_naming_the_key(listener, name_studies):
    answer = query(listener, "STUDY", FUZZY, PatientName="a b c d e f g h i")

    assert answer.status == 0xA900
    assert "PatientName" in answer.final.ErrorComment
    assert answer.final.OffendingElement == 0x00100010
