"""Figures as people read them: byte sizes, amounts of money, durations and person names, one
way each.

Every page, e-mail, PDF and command output that shows one of these goes through this module,
so that the portal never says "MB" on one page and "MiB" on the next. It imports nothing else
of the project (it is usable from every app).

Rules:

- Bytes use binary units, as the invoices bill them (1 GiB = 2**30 bytes): ``B``, ``KiB``,
  ``MiB``, ``GiB``, ``TiB``, ``PiB``. The unit is the largest one the value reaches; below 100 of
  it the number has one decimal, rounded half to even (Python's float formatting) and dropped
  when it is ``.0`` (``1.5 GiB``, ``3 GiB``, ``33.4 TiB``); from 100 on it is a whole number
  (``512 MiB``). Under 1 KiB the exact count is shown (``1,023 B``). Negative values (a balance
  that went down) keep their sign. ``None`` reads ``—``.
- Money: thousands separators, ``places`` decimals (2, as invoices round), then the currency
  code when there is one (``1,234.50 USD``). An amount above zero that would show as zero reads
  ``less than 0.01 USD``; ``None`` (nothing is charged) reads ``not charged``.
- Quantities: thousands separators and a fixed number of decimals, rounded half-up
  (``quantity_label``; billing says how many a unit needs); prices per unit as a plan states
  them, 2 to 8 decimals (``rate_label``: ``0.023``, ``0.40``).
- Durations: ``45 s``, ``3 min 05 s``, ``2 h 07 min``, from 48 hours on ``3 days 4 h`` (the
  smaller units truncated, never rounded up); ``None`` reads ``—``.
- Person names (DICOM PN, ``Family^Given^Middle^Prefix^Suffix``) read as a PACS worklist shows
  them: ``Family, Prefix Given Middle, Suffix`` (``Curie^Marie`` reads ``Curie, Marie``;
  ``Smith^John^A^Dr.^Jr.`` reads ``Smith, Dr. John A, Jr.``). Empty components are left out with
  their separators (``Curie`` alone reads ``Curie``, ``^Marie`` reads ``Marie``). Of a name's
  ``=``-separated groups the alphabetic one is shown, else the ideographic, else the phonetic.
  Case is kept as stored. An empty name reads ``""`` so that templates can ``|default:`` it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

BYTE_UNITS = [("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)]
NONE = "—"


def byte_scale(max_bytes: float) -> tuple[int, str]:
    """The binary unit that shows ``max_bytes`` as a number of at least 1: (divisor, name)."""
    for name, size in BYTE_UNITS:
        if abs(max_bytes) >= size:
            return size, name
    return 1, "B"


def bytes_label(value: int | float | None) -> str:
    """A byte size in binary units: ``0 B``, ``1,023 B``, ``1 KiB``, ``1.5 MiB``, ``33.4 TiB``."""
    if value is None:
        return NONE
    size, unit = byte_scale(value)
    if size == 1:
        return f"{int(value):,} B"
    number = value / size
    text = f"{number:,.1f}".removesuffix(".0") if abs(number) < 100 else f"{number:,.0f}"
    return f"{text} {unit}"


def money_label(amount: Decimal | None, currency: str = "", *, places: int = 2) -> str:
    """An amount: ``1,234.50 USD`` (``1,234.50`` without a currency); ``places`` decimals."""
    if amount is None:
        return "not charged"
    smallest = Decimal(1).scaleb(-places)
    if Decimal(0) < amount < smallest:
        text = f"less than {smallest:.{places}f}"
    else:
        text = f"{amount:,.{places}f}"
    return f"{text} {currency}" if currency else text


def quantity_label(value: Decimal, places: int) -> str:
    """A quantity rounded half-up to ``places`` decimals, thousands separated: ``1,234.568``,
    ``25,000``. A negative value that rounds to zero reads as zero."""
    shown = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{shown.copy_abs() if shown.is_zero() else shown:,.{places}f}"


def rate_label(value: Decimal) -> str:
    """A price per unit as a plan states it: at least 2 decimals, up to 8, no trailing zeros
    beyond the second (``0.023``, ``0.40``, ``5.00``, ``0.00012345``)."""
    text = f"{value.quantize(Decimal('1e-8'), rounding=ROUND_HALF_UP):,.8f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def duration_label(seconds: int | None) -> str:
    """A duration: ``45 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 days 4 h``."""
    if seconds is None:
        return NONE
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h"


def person_name_label(value: str | None) -> str:
    """A DICOM person name as people read it: ``Curie^Marie`` -> ``Curie, Marie``.

    Only for display: DICOM answers (QIDO-RS, C-FIND) keep the stored value, as the standard says.
    """
    if not value:
        return ""
    group = next((g for g in value.split("=") if g.strip(" ^")), "")
    # A name with more than five components is not valid DICOM; its extra ones are kept after the
    # suffix rather than dropped, so that nothing stored is hidden.
    parts = [p.strip() for p in group.split("^")] + [""] * 4
    family, given, middle, prefix = parts[:4]
    suffix = " ".join(p for p in parts[4:] if p)
    first = " ".join(p for p in (prefix, given, middle) if p)
    return ", ".join(p for p in (family, first, suffix) if p)
