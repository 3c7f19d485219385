"""QIDO-RS fuzzy person-name matching (``fuzzymatching=true``) against the exact rules on the same
studies, at every level, for both PN keys; the name words behind it (``archive.index.names``):
written by ingest, gone with their study, backfilled by the migration, read through the indexes."""

from __future__ import annotations

import datetime as dt
import functools
import importlib

import pytest
from django.apps import apps
from django.db import connection
from pydicom.uid import generate_uid

from archive.index.names import normalize, query_words, split_words
from archive.index.query import KEYS, PREFIX, key_condition, level_queryset
from archive.ingest.dicom import uid_problem
from archive.models import NAME_WORD_MODELS, Study
from archive.synthetic import StudySpec, make_instance, to_bytes
from tests.archive.test_dicomweb_support import SeededStudy, ingest_study

pytestmark = pytest.mark.django_db

PATIENT_ID = "00100020"


def named_study(
    patient_id: str,
    patient_name: str,
    referring: str,
    study_date: dt.date,
    *,
    charset: str = "ISO_IR 100",
) -> SeededStudy:
    """A study of one series with two instances, with the given person names."""
    seeded = SeededStudy(
        spec=StudySpec(
            patient_id=patient_id,
            patient_name=patient_name,
            modality="CT",
            study_uid=generate_uid(),
            accession=f"ACC{patient_id}",
            study_date=study_date,
            description="CT STUDY",
        )
    )
    series_uid = generate_uid()
    seeded.series_uids.append(series_uid)
    for number in (1, 2):
        ds = make_instance(
            seeded.spec, series_uid=series_uid, instance_number=number, rows=8, columns=8
        )
        ds.SpecificCharacterSet = charset
        ds.ReferringPhysicianName = referring
        seeded.sop_uids.append(str(ds.SOPInstanceUID))
        seeded.files.append(to_bytes(ds))
    return seeded


@functools.cache
def name_files() -> dict[str, SeededStudy]:
    """Made once per run; stored afresh by every test. Oldest first (searches answer newest
    first)."""
    day = dt.date(2026, 1, 1)
    return {
        "P1": named_study("P1", "SMITH^JOHN", "House^Gregory", day),
        "P2": named_study("P2", "Smíth^John", "Welby^Marcus", day + dt.timedelta(days=1)),
        "P3": named_study("P3", "JONES^SMITHERS", "Quinn^Michaela", day + dt.timedelta(days=2)),
        "P4": named_study(
            "P4", "O'Brien-Ñúñez^María José", "Welby^Marcus", day + dt.timedelta(days=3)
        ),
        "P5": named_study("P5", "Turing^Alan", "Sørensen^Søren", day + dt.timedelta(days=4)),
        "P6": named_study(
            "P6",
            "Παπαδόπουλος^Γιάννης",
            "Welby^Marcus",
            day + dt.timedelta(days=5),
            charset="ISO_IR 192",
        ),
        "other": named_study("X1", "Smith^John", "House^Gregory", day),
    }


@pytest.fixture
def name_studies(org, other_org) -> dict[str, SeededStudy]:
    """P1..P6 in ``org``; another organization has a Smith^John of its own."""
    seeded = dict(name_files())
    ingest_study(other_org, seeded.pop("other"))
    for item in seeded.values():
        ingest_study(org, item)
    return seeded


@pytest.fixture
def reader(org, token_client):
    return token_client(org, ["dicom:read"])


def patient_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item[PATIENT_ID]["Value"][0] for item in response.json()]


def fuzzy(reader, query: str, path: str = "studies") -> list[str]:
    return patient_ids(reader.get(f"/dicomweb/{path}?{query}&fuzzymatching=true"))


# --- fuzzy against exact --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "exact", "fuzzy_ids"),
    [
        # A prefix of any component, in any case, with or without accents.
        ("PatientName=smi", [], ["P3", "P2", "P1"]),
        ("PatientName=SMI", [], ["P3", "P2", "P1"]),
        ("PatientName=Smí", [], ["P3", "P2", "P1"]),
        ("PatientName=smithers", [], ["P3"]),
        ("PatientName=SMITH^JOHN", ["P1"], ["P2", "P1"]),  # exact: case only, not accents
        ("PatientName=Smíth^John", ["P2"], ["P2", "P1"]),
        # Every word must start a word of the name, in any order, however separated.
        ("PatientName=joh%20smi", [], ["P2", "P1"]),
        ("PatientName=john,smith", [], ["P2", "P1"]),
        ("PatientName=jones^smi", [], ["P3"]),
        ("PatientName=joh jon", [], []),
        # Not a start: no match (fuzzy matching is not substring matching).
        ("PatientName=mith", [], []),
        # Apostrophes, hyphens, letters without a decomposition, other scripts.
        ("PatientName=obrien", [], ["P4"]),
        ("PatientName=O'Brien", [], ["P4"]),
        ("PatientName=nunez%20maria", [], ["P4"]),
        ("PatientName=ÑÚÑ^JOSE", [], ["P4"]),
        ("PatientName=ΠΑΠΑΔΟΠΟΥΛΟΣ", [], ["P6"]),
        ("PatientName=γιαν", [], ["P6"]),
        # Wildcards keep their meaning inside a word; a word of * alone matches anything.
        ("PatientName=sm%3Fth", [], ["P3", "P2", "P1"]),
        ("PatientName=*mith", [], ["P3", "P2", "P1"]),
        ("PatientName=sm*rs", [], ["P3"]),
        ("PatientName=smith*", ["P1"], ["P3", "P2", "P1"]),
        (
            "PatientName=*",
            ["P6", "P5", "P4", "P3", "P2", "P1"],
            ["P6", "P5", "P4", "P3", "P2", "P1"],
        ),
        ("PatientName=smi%20*", [], ["P3", "P2", "P1"]),
        ("PatientName=^", [], ["P6", "P5", "P4", "P3", "P2", "P1"]),  # no word: universal
        # The other PN key, alone and with PatientName.
        ("ReferringPhysicianName=welby", [], ["P6", "P4", "P2"]),
        ("ReferringPhysicianName=SOREN", [], ["P5"]),
        ("ReferringPhysicianName=hou&PatientName=smi", [], ["P1"]),
        # Other keys match as always.
        ("PatientName=smi&PatientID=P2", [], ["P2"]),
    ],
)
def test_fuzzy_and_exact_matching_on_the_same_studies(
    reader, name_studies, query, exact, fuzzy_ids
):
    assert patient_ids(reader.get(f"/dicomweb/studies?{query}")) == exact
    assert patient_ids(reader.get(f"/dicomweb/studies?{query}&fuzzymatching=false")) == exact
    assert fuzzy(reader, query) == fuzzy_ids


@pytest.mark.parametrize(
    "query",
    [
        "fuzzymatching=true&PatientName=joh%20smi",  # before the key it changes
        "PatientName=joh%20smi&FuzzyMatching=TRUE",
        "PatientName=joh%20smi&fuzzymatching=false&fuzzymatching=true",  # the last one counts
    ],
)
def test_fuzzymatching_in_any_place_and_case(reader, name_studies, query):
    assert patient_ids(reader.get(f"/dicomweb/studies?{query}")) == ["P2", "P1"]


def test_fuzzy_answers_carry_no_warning(reader, name_studies):
    # PS3.18 asks for a Warning only from servers that ignore fuzzymatching.
    response = reader.get("/dicomweb/studies?PatientName=smi&fuzzymatching=true")

    assert response.status_code == 200 and "Warning" not in response


def test_series_and_instance_searches_match_fuzzy_names(reader, name_studies):
    p1, p2 = name_studies["P1"], name_studies["P2"]

    series = reader.get("/dicomweb/series?PatientName=joh%20smi&fuzzymatching=true").json()
    exact_series = reader.get("/dicomweb/series?PatientName=joh%20smi").json()
    instances = reader.get(
        "/dicomweb/instances?ReferringPhysicianName=hou&fuzzymatching=true"
    ).json()
    in_study = reader.get(
        f"/dicomweb/studies/{p2.uid}/series/{p2.series_uids[0]}/instances"
        "?PatientName=SMITH&fuzzymatching=true"
    ).json()
    not_in_study = reader.get(
        f"/dicomweb/studies/{p2.uid}/series?PatientName=jones&fuzzymatching=true"
    ).json()

    assert sorted(i["0020000E"]["Value"][0] for i in series) == sorted(
        p1.series_uids + p2.series_uids
    )
    assert exact_series == []
    assert [i["00080018"]["Value"][0] for i in instances] == p1.sop_uids
    assert [i["00080018"]["Value"][0] for i in in_study] == p2.sop_uids
    assert not_in_study == []


# --- tenants, errors --------------------------------------------------------------------------


def test_another_organizations_names_never_match(other_org, token_client, reader, name_studies):
    other = token_client(other_org, ["dicom:read"])

    assert fuzzy(reader, "PatientName=smith john") == ["P2", "P1"]
    assert fuzzy(other, "PatientName=smith john") == ["X1"]
    assert fuzzy(other, "PatientName=joh", "instances") == ["X1", "X1"]
    assert fuzzy(other, "PatientName=smithers") == []
    assert fuzzy(other, "ReferringPhysicianName=welby") == []
    p2 = name_studies["P2"]
    response = other.get(f"/dicomweb/studies/{p2.uid}/series?PatientName=smi&fuzzymatching=true")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("fuzzymatching=yes", "fuzzymatching"),
        ("fuzzymatching=", "fuzzymatching"),
        ("PatientName=a&fuzzymatching=1", "fuzzymatching"),
        ("PatientName=a%20b%20c%20d%20e%20f%20g%20h%20i&fuzzymatching=true", "PatientName"),
        ("ReferringPhysicianName=a^b^c^d^e=f^g^h^i&fuzzymatching=true", "ReferringPhysicianName"),
    ],
)
def test_bad_fuzzy_queries_are_400_naming_the_parameter(reader, name_studies, query, name):
    response = reader.get(f"/dicomweb/studies?{query}")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_query"
    assert list(error["fields"]) == [name]
    assert name in error["message"]


# --- the words ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("SMITH^JOHN", ["smith", "john"]),
        ("Smíth^John", ["smith", "john"]),
        ("O'Brien-Ñúñez^María José", ["obrien", "nunez", "maria", "jose"]),
        ("Sørensen^Søren^^Dr.", ["sorensen", "soren", "dr"]),
        ("STRAßE^Œdipe", ["strasse", "oedipe"]),
        ("Yamada^Tarou=山田^太郎", ["yamada", "tarou", "山田", "太郎"]),
        ("Smith^John=Smith^John", ["smith", "john"]),
        ("", []),
        ("A" * 100, ["a" * 64]),
    ],
)
def test_name_words(text, words):
    assert split_words(text) == words


def test_query_words_keep_wildcards_and_become_prefixes():
    assert query_words("Smí joh* *ith sm?th * **") == ["smi*", "joh*", "*ith*", "sm?th*"]
    assert normalize("ÀÉÎ?*") == "aei?*"


def words(**filters) -> set[tuple[str, int, int, str]]:
    """(Study column, organization, study, word) of the rows of both word tables."""
    return {
        (field, *row)
        for field, model in NAME_WORD_MODELS.items()
        for row in model.objects.filter(**filters).values_list(
            "organization_id", "study_id", "word"
        )
    }


def test_ingest_writes_the_words_of_both_names_and_they_go_with_the_study(org, name_studies):
    study = Study.objects.for_org(org).get(patient_id="P4")

    assert words(study=study) == {
        ("patient_name", org.pk, study.pk, "obrien"),
        ("patient_name", org.pk, study.pk, "nunez"),
        ("patient_name", org.pk, study.pk, "maria"),
        ("patient_name", org.pk, study.pk, "jose"),
        ("referring_physician", org.pk, study.pk, "welby"),
        ("referring_physician", org.pk, study.pk, "marcus"),
    }
    # Six studies of two instances each: every study's words once (four each, six for P4).
    assert len(words(organization=org)) == 5 * 4 + 6
    study.instances.all().delete()
    study.series.all().delete()
    study.delete()
    assert words(study_id=study.pk) == set()
    assert len(words(organization=org)) == 5 * 4


def test_the_migration_backfills_the_words_of_older_studies(org, other_org, name_studies):
    before = words()
    for model in NAME_WORD_MODELS.values():
        model.objects.filter(study__patient_id__in=["P1", "P4", "X1"]).delete()
    backfill = importlib.import_module("archive.migrations.0017_name_words_backfill")

    class Editor:
        connection = connection

    backfill.BATCH = 2  # several batches
    backfill.backfill(apps, Editor())
    backfill.backfill(apps, Editor())  # a rerun adds nothing

    assert words() == before
    assert fuzzy_ids_of(org, "obrien") == ["P4"]


def fuzzy_ids_of(org, value: str) -> list[str]:
    key = KEYS["00100010"]
    condition = key_condition(
        key,
        "PatientName",
        value,
        PREFIX[("study", "study")],
        uid_problem=uid_problem,
        fuzzy_org=org,
    )
    return list(level_queryset(org, "study").filter(condition).values_list("patient_id", flat=True))


@pytest.mark.parametrize(
    ("keyword", "index"),
    [
        ("PatientName", "patient_name_word_prefix"),
        ("ReferringPhysicianName", "referring_name_word_prefix"),
    ],
)
def test_fuzzy_words_are_looked_up_in_the_word_index(org, name_studies, keyword, index):
    """The database plans each word's lookup on its table's prefix index from the word's literal
    start (PostgreSQL LIKE with pattern operators, whatever the collation; SQLite GLOB), even
    at test size once sequential scans are ruled out."""
    key = next(k for k in KEYS.values() if k.keyword == keyword)
    condition = key_condition(
        key,
        keyword,
        "smi jo",
        PREFIX[("series", "study")],
        uid_problem=uid_problem,
        fuzzy_org=org,
    )
    sql, params = level_queryset(org, "series").filter(condition).query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = "\n".join(str(row) for row in cursor.fetchall())

    assert index in plan, plan
    if connection.vendor == "postgresql":
        assert "~>=~ 'smi'" in plan, plan  # the LIKE prefix became an index range
        assert "Seq Scan" not in plan, plan
    else:
        assert "word>? AND word<?" in plan, plan
        assert "SCAN " not in plan.replace("SCAN CONSTANT", ""), plan
