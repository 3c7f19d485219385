"""The words of person names, for fuzzy person-name matching (QIDO-RS ``fuzzymatching=true``,
C-FIND with fuzzy semantic matching of person names negotiated).

A person name matches a fuzzy query when every word of the query is the start of some word of
the name, in any order, whatever the case and the accents: ``smi`` matches ``SMITH^JOHN``,
``Smíth^John`` and ``JONES^SMITHERS``; ``joh smi`` matches ``SMITH^JOHN``. A word is a run of
characters between the separators of a name: ``^`` (components), ``=`` (component groups),
``\\`` (values), spaces, commas, periods and hyphens (``Smith-Jones`` is two words).
Normalization (``normalize``): Unicode compatibility decomposition (NFKD) without the combining
marks, then case folding; the letters that do not decompose are spelled out (``ø`` -> ``o``,
``æ`` -> ``ae``, ``ł`` -> ``l``...), apostrophes dropped (``O'Brien`` is ``obrien``). Words are
compared on their first ``WORD_MAX`` characters.

Each word of a study's PatientName and ReferringPhysicianName is a row of that attribute's word
table (``archive.models.NAME_WORD_MODELS``), written with the study (``archive.ingest.pipeline``),
so that a query reads a btree index of words instead of every name: ``name_word_rows`` makes
them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

# A PN component group holds at most 64 characters (PS3.5 6.2), so no valid word is longer.
WORD_MAX = 64
_SEPARATORS = re.compile(r"[\s^=\\,.\-]+")
# Apostrophes are dropped; letters that Unicode does not decompose into a base letter and a
# mark are written as the letters they are typed as (lower case: they come after case folding).
_FOLDED = str.maketrans(
    {
        "'": None,
        "\u2019": None,
        "\u02bc": None,
        "ø": "o",
        "æ": "ae",
        "œ": "oe",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "ı": "i",
        "ħ": "h",
        "ŧ": "t",
    }
)


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Case- and accent-free form of ``text``: ``Smíth`` -> ``smith``, ``STRAßE`` ->
    ``strasse``. Wildcards ``*`` and ``?`` stay as they are."""
    # Case folding can produce characters that decompose again (U+0130 -> i + dot above).
    return _strip_marks(_strip_marks(text).casefold()).translate(_FOLDED)


def split_words(text: str) -> list[str]:
    """The distinct normalized words of ``text``, in order, each cut to ``WORD_MAX``."""
    words: dict[str, None] = {}
    for word in _SEPARATORS.split(normalize(text)):
        if word:
            words[word[:WORD_MAX]] = None
    return list(words)


def name_word_rows(model: type[Any], name_field: str, studies: Iterable[Any]) -> list[Any]:
    """Unsaved ``model`` rows (the word table of ``name_field``, ``archive.models.NAME_WORD_MODELS``,
    or its historical version in a migration) of that name of each of ``studies``, which have
    their primary keys."""
    return [
        model(organization_id=study.organization_id, study_id=study.pk, word=word)
        for study in studies
        for word in split_words(getattr(study, name_field) or "")
    ]


def query_words(value: str) -> list[str]:
    """The words of a fuzzy query value as DICOM wildcard patterns matching a name word that
    starts with them: ``Smí`` -> ``smi*``, ``sm?th`` -> ``sm?th*``; a word of ``*`` alone
    matches anything and is left out."""
    patterns: dict[str, None] = {}
    for word in split_words(value):
        stem = word.rstrip("*")
        if stem:
            patterns[stem + "*"] = None
    return list(patterns)
