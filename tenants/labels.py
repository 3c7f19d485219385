"""Figures as people read them: byte sizes, amounts of money and durations, one way each.

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
- Durations: ``45 s``, ``3 min 05 s``, ``2 h 07 min``, from 48 hours on ``3 days 4 h`` (the
  smaller units truncated, never rounded up); ``None`` reads ``—``.
"""

from __future__ import annotations

from decimal import Decimal

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
