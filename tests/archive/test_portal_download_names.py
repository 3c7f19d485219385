"""The study ZIP's entry names: made only of validated parts, whatever the index rows hold."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from django.test import Client

from archive.models import Instance, Series, Study
from archive.studies.views import zip_name_part
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
        assert "\\" not in name and ".." not in name and "\x00" not in name, name
        folder, series_folder, file_name = name.split("/")
        assert folder == zip_name_part(CRAFTED_STUDY) and folder.startswith("uid-")
        assert series_folder.startswith("001-uid-")  # series number, no crafted modality
        assert file_name.endswith(".dcm")


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
