"""The study ZIP's entry names: patient, study and series folders people can read, made only of
safe characters whatever the index rows hold, and unique."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from typing import Any

import pytest
from django.test import Client

from archive.models import Instance, Series, Study
from archive.studies.zipnames import safe_name, zip_name_part
from tenants.models import Membership, Organization
from tests.archive.test_portal_studies import ingest_study, url

pytestmark = pytest.mark.django_db

CRAFTED_STUDY = "1.2.3/..\\..\\evil"
CRAFTED_SERIES = "..\\..\\windows\\system32"
CRAFTED_SOPS = ["../../etc/passwd", "1.2.3\\..\\x:y"]  # PostgreSQL holds no NUL


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def test_zip_entry_names_never_carry_uids_that_are_paths(client: Client, org: Organization):
    # Rows indexed before UIDs were validated may hold anything in their UIDs.
    study, files = ingest_study(org, "CT", n=2)
    Study.objects.filter(pk=study.pk).update(study_uid=CRAFTED_STUDY)
    Series.objects.filter(study=study).update(series_uid=CRAFTED_SERIES, modality="../CT")
    for instance, sop in zip(Instance.objects.filter(study=study).order_by("pk"), CRAFTED_SOPS):
        Instance.objects.filter(pk=instance.pk).update(sop_instance_uid=sop)

    response: Any = client.post(url("portal-study-download", org, study.pk))

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert {zf.read(n) for n in names} == set(files)
    assert len(names) == 2
    for name in names:
        assert_safe(name)
        _patient, _study, series_folder, file_name = name.split("/")
        assert series_folder.startswith("001 ") and "/" not in series_folder  # no crafted modality
        assert file_name.endswith(".dcm") and "-uid-" in file_name


def assert_safe(name: str) -> None:
    for part in name.split("/"):
        assert part and part == part.strip(" .-"), name
        assert ".." not in part and "\\" not in part and ":" not in part, name
        assert all(ch.isprintable() for ch in part), name
    assert len(name) < 260, name


def zip_names(client: Client, org: Organization, study: Study) -> list[str]:
    response: Any = client.post(url("portal-study-download", org, study.pk))
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as zf:
        return zf.namelist()


def test_zip_folders_name_patient_study_and_series(client: Client, org: Organization) -> None:
    study, _ = ingest_study(org, "CT", n=2, series=2, name="Curie^Marie", patient_id="PAT10001")
    Study.objects.filter(pk=study.pk).update(
        study_date=dt.date(2026, 12, 7), study_description="CT CHEST W CONTRAST"
    )
    Series.objects.filter(study=study, series_number=1).update(series_description="AXIAL 3mm")
    Series.objects.filter(study=study, series_number=2).update(series_description="")

    names = zip_names(client, org, study)

    assert len(names) == 4
    folders = sorted({n.rsplit("/", 1)[0] for n in names})
    assert folders == [
        "Curie, Marie (PAT10001)/2026-12-07 CT CT CHEST W CONTRAST/001 CT AXIAL 3mm",
        "Curie, Marie (PAT10001)/2026-12-07 CT CT CHEST W CONTRAST/002 CT",
    ]
    sops = set(Instance.objects.filter(study=study).values_list("sop_instance_uid", flat=True))
    assert {n.rsplit("/", 1)[1].split("-", 1)[1].removesuffix(".dcm") for n in names} == sops


def test_hostile_index_values_make_safe_unique_folder_names(
    client: Client, org: Organization
) -> None:
    study, files = ingest_study(org, "MR", n=1, series=3)
    Study.objects.filter(pk=study.pk).update(
        patient_name="../../etc^passwd\x7f",  # PostgreSQL holds no NUL
        patient_id="\x01\x1b[31m/..\\",
        study_date=None,
        modalities="\\../\\MR\\",
        study_description="C:\\Windows\\System32 <>|?* " + "x" * 200,  # the column holds 256
    )
    # Three series that would all be named "MR /..": unique all the same.
    Series.objects.filter(study=study).update(
        series_number=None, modality="MR", series_description="/.."
    )

    names = zip_names(client, org, study)

    assert len(names) == 3
    for name in names:
        assert_safe(name)
    patient, study_name = names[0].split("/")[:2]
    assert patient == "etc, passwd- (-31m-.-)"
    assert study_name == "MR C-Windows-System32 - " + "x" * 40  # cut to 64 characters
    assert {n.split("/")[2] for n in names} == {"MR", "MR (2)", "MR (3)"}


def test_empty_index_values_fall_back_to_words(client: Client, org: Organization) -> None:
    study, _ = ingest_study(org, "CT", n=1)
    Study.objects.filter(pk=study.pk).update(
        patient_name="", patient_id="", study_date=None, modalities="", study_description=""
    )
    Series.objects.filter(study=study).update(
        series_number=None, modality="", series_description=""
    )

    [name] = zip_names(client, org, study)

    assert name.split("/")[:3] == ["Unknown patient", "Study", "Series"]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("CT CHEST W/O CONTRAST", "CT CHEST W-O CONTRAST"),
        ("../../etc/passwd", "etc-passwd"),
        ("..", "fallback"),
        ("a..b", "a.b"),
        ("C:\\x\\y", "C-x-y"),
        ("tab\there\nnew\x00nul\x7fdel", "tab here new-nul-del"),
        ("  trailing dots...  ", "trailing dots"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("COM1", "_COM1"),
        ("CONTRAST", "CONTRAST"),
        ("山田, 太郎", "山田, 太郎"),
        ("Müller, Jürgen", "Müller, Jürgen"),
        ("\u202eevil\u200b", "evil"),  # direction override and zero-width space
        ("x" * 100, "x" * 48),
        ("", "fallback"),
        ("///", "fallback"),
    ],
)
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text, max_length=48, fallback="fallback") == name


@pytest.mark.parametrize(
    ("uid", "kept"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65 characters
        ("1.2..3", False),
        ("..", False),
        ("1.2/3", False),
        ("1.2\\3", False),
        ("", False),
        ("1.2\x00.3", False),
        ("١.٢", False),  # digits of another script
    ],
)
def test_a_uid_names_an_entry_only_when_it_follows_the_uid_grammar(uid: str, kept: bool):
    name = zip_name_part(uid)

    assert (name == uid) is kept
    if not kept:
        assert name.startswith("uid-") and name[4:].isalnum() and name.isascii()
