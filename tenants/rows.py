"""Model instances from one hand-written SQL join, for the look-ups every request makes.

The ORM spends ten times a small query's own time compiling it (a select_related of a few
tables costs 0.5-1.5 ms of CPU per request); a request path that runs on every frame a viewer
reads or every token-authenticated call writes its join once with ``Join`` and gets the same
model instances back, converted as the ORM converts them.

    join = Join([(ApiToken, "t", columns(ApiToken)), (Organization, "o", columns(Organization))])
    sql = f"SELECT {join.select()} FROM ... WHERE ..."
    token, org = join.load(cursor.fetchone())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db.models import Field, Model


def columns(model: type[Model], skip: tuple[str, ...] = ()) -> list[Field[Any, Any]]:
    """The model's concrete fields but ``skip`` (large values the request does not need)."""
    return [f for f in model._meta.concrete_fields if f.name not in skip]


def _converters(model: type[Model], fields: list[Field[Any, Any]]) -> list[tuple[Any, list[Any]]]:
    """The backend's and the fields' converters of the columns, as the ORM applies them."""
    found = []
    for field in fields:
        column = field.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(column)
        found.append((column, [*converters, *column.get_db_converters(connection)]))
    return found


class Join:
    """The models of one join, each with its table alias and the fields selected.

    The select list and the converters are worked out once per database vendor."""

    def __init__(self, parts: Sequence[tuple[type[Model], str, list[Field[Any, Any]]]]):
        self.parts = list(parts)
        self._select: dict[str, str] = {}
        self._converters: dict[str, list[list[tuple[Any, list[Any]]]]] = {}

    def select(self) -> str:
        if connection.vendor not in self._select:
            quote = connection.ops.quote_name
            self._select[connection.vendor] = ", ".join(
                f"{alias}.{quote(str(f.column))}" for _, alias, fields in self.parts for f in fields
            )
        return self._select[connection.vendor]

    def table(self, model: type[Model]) -> str:
        return connection.ops.quote_name(model._meta.db_table)

    def load(self, row: Sequence[Any]) -> list[Model | None]:
        """One instance per model, in order; None for a model whose first selected column
        (its primary key) is null: the missing side of a LEFT JOIN."""
        if connection.vendor not in self._converters:
            self._converters[connection.vendor] = [
                _converters(model, fields) for model, _, fields in self.parts
            ]
        loaded: list[Model | None] = []
        at = 0
        for (model, _, fields), converters_of in zip(
            self.parts, self._converters[connection.vendor], strict=True
        ):
            values = row[at : at + len(fields)]
            at += len(fields)
            if values[0] is None:
                loaded.append(None)
                continue
            converted = []
            for (column, converters), value in zip(converters_of, values, strict=True):
                for converter in converters:
                    value = converter(value, column, connection)
                converted.append(value)
            loaded.append(model.from_db(connection.alias, [f.attname for f in fields], converted))
        return loaded
