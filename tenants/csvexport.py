"""CSV files streamed line by line, with the text people typed defused for spreadsheets.

The one CSV writer of the project: the audit export (portal and API) and billing's reports use it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC
from itertools import chain
from typing import Any

from tenants.models import AuditEvent

# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> str:
    """A cell of user-supplied text: a leading apostrophe keeps a formula from running.

    Only for text: a number such as -1.00 written through this would gain an apostrophe.
    """
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


class _Echo:
    """A file-like object whose write hands the line back, so csv.writer can feed a generator."""

    def write(self, value: str) -> str:
        return value


def csv_lines(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """One CSV line per row, written as the rows come: constant memory for any number of rows."""
    writer = csv.writer(_Echo())
    for row in rows:
        yield writer.writerow(row)


def audit_events_csv(
    events: Iterable[AuditEvent], *, header: Sequence[str], details: Callable[[Any], str]
) -> Iterator[str]:
    """The audit export: ``header``, then one line per event in the order given.

    The portal and the API name the columns and format ``details`` each their own documented way;
    every cell is defused the same way, since labels and user agents are caller-controlled text.
    """
    rows = (
        [
            csv_text(cell)
            for cell in (
                event.created_at.astimezone(UTC).isoformat(),
                event.actor_label,
                event.action,
                event.target_type,
                event.target_id,
                event.target_label,
                event.ip,
                event.user_agent,
                details(event.details),
            )
        ]
        for event in events
    )
    return csv_lines(chain([header], rows))
