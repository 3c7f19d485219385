"""Byte sizes, amounts of money and durations are written one way, by tenants.labels."""

from __future__ import annotations

import re
from decimal import Decimal as D
from pathlib import Path

import pytest
from django.template import Context, Template

from tenants.labels import bytes_label, duration_label, money_label, person_name_label

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (None, "—"),
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1,023 B"),
        (1024, "1 KiB"),
        (20_000, "19.5 KiB"),
        (int(1.5 * 2**20), "1.5 MiB"),
        (3 * 2**30, "3 GiB"),
        (512 * 2**20, "512 MiB"),
        (int(33.4 * 2**40), "33.4 TiB"),
        (2**50, "1 PiB"),
        (5 * 2**60, "5,120 PiB"),
        (-3 * 2**30, "-3 GiB"),
        (-int(1.5 * 2**20), "-1.5 MiB"),
        (-500, "-500 B"),
        (1.5 * 2**30, "1.5 GiB"),
    ],
)
def test_bytes_label_uses_binary_units(value: int | float | None, label: str) -> None:
    assert bytes_label(value) == label


@pytest.mark.parametrize(
    ("amount", "currency", "places", "label"),
    [
        (None, "USD", 2, "not charged"),
        (D("0"), "USD", 2, "0.00 USD"),
        (D("0.004"), "USD", 2, "less than 0.01 USD"),
        (D("0.01"), "EUR", 2, "0.01 EUR"),
        (D("1234.5"), "EUR", 2, "1,234.50 EUR"),
        (D("-12.3"), "GBP", 2, "-12.30 GBP"),
        (D("1234.5"), "", 2, "1,234.50"),
        (D("0.0032"), "", 4, "0.0032"),
        (D("0.00004"), "USD", 4, "less than 0.0001 USD"),
        (D("7"), "JPY", 0, "7 JPY"),
    ],
)
def test_money_label(amount: D | None, currency: str, places: int, label: str) -> None:
    assert money_label(amount, currency, places=places) == label


@pytest.mark.parametrize(
    ("seconds", "label"),
    [
        (None, "—"),
        (0, "0 s"),
        (59, "59 s"),
        (185, "3 min 05 s"),
        (2 * 3600 + 7 * 60 + 30, "2 h 07 min"),
        (47 * 3600 + 59 * 60, "47 h 59 min"),
        (3 * 86400 + 4 * 3600 + 59 * 60, "3 days 4 h"),
    ],
)
def test_duration_label(seconds: int | None, label: str) -> None:
    assert duration_label(seconds) == label


# A formatter is a function named like one, or code spelling a table of byte units.
FORMATTER = re.compile(
    r"def (bytes_label|size_label|_size|_bytes|byte_scale|money_label|_money|money_text"
    r"|duration_label|lag_label)\("
    r"|\(\"[KMGT]i?B\", *(2\*\*|10\*\*|1024|1000)"
    r"|\|filesizeformat"
)


def test_no_other_module_formats_bytes_money_or_durations() -> None:
    offenders = []
    for folder in ("archive", "billing", "saas", "tenants"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".html"} or "migrations" in path.parts:
                continue
            if path == ROOT / "tenants" / "labels.py":
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [
                f"{path.relative_to(ROOT)}: {m.group(0)}" for m in FORMATTER.finditer(text)
            ]
    allowed = {
        # The simulator shows sub-cent amounts to 4 places and currency symbols, through money_label.
        "archive/analytics/simulator/results.py: def money_text(",
        "archive/analytics/simulator/results.py: def _money(",
        # A serializer field for amounts, not a label.
        "billing/apis.py: def _money(",
    }
    assert sorted(set(offenders) - allowed) == []


def test_the_template_filter_shows_binary_units() -> None:
    """Django's filesizeformat would say "1.5 MB" for 1.5 MiB."""
    template = Template("{% load labels %}{{ n|bytes_label }} · {{ s|duration_label }}")
    assert template.render(Context({"n": int(1.5 * 2**20), "s": 185})) == "1.5 MiB · 3 min 05 s"


def test_the_policy_preview_shows_binary_units() -> None:
    template = (ROOT / "archive/templates/archive/policies_preview.html").read_text()
    assert "|bytes_label" in template and "filesizeformat" not in template


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (None, ""),
        ("", ""),
        ("Curie^Marie", "Curie, Marie"),
        ("CURIE^MARIE", "CURIE, MARIE"),  # case is kept as stored
        ("Curie", "Curie"),
        ("^Marie", "Marie"),
        ("Curie^Marie^Salomea", "Curie, Marie Salomea"),
        ("Smith^John^A^Dr.^Jr.", "Smith, Dr. John A, Jr."),
        ("Doe^^^^", "Doe"),
        ("^^^^", ""),
        (" Curie ^ Marie ", "Curie, Marie"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou"),
        ("=山田^太郎=やまだ^たろう", "山田, 太郎"),
        ("==やまだ^たろう", "やまだ, たろう"),
        ("A^B^C^D^E^F", "A, D B C, E F"),  # invalid extra components are kept, not dropped
        ("Anonymous", "Anonymous"),
    ],
)
def test_person_name_label_reads_family_comma_given(value: str | None, label: str) -> None:
    assert person_name_label(value) == label


def test_person_name_filter_escapes_what_it_shows() -> None:
    out = Template("{% load labels %}{{ n|person_name }}").render(
        Context({"n": "<b>Curie</b>^Marie"})
    )

    assert out == "&lt;b&gt;Curie&lt;/b&gt;, Marie"
