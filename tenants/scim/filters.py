"""The part of SCIM's filter language (RFC 7644 section 3.4.2.2) that identity providers send.

Microsoft Entra ID and Okta look a person up by ``userName eq "..."`` or ``externalId eq "..."``
and a group by ``displayName eq "..."`` before creating it; Entra ID also asks whether a group
has a member with ``members[value eq "..."]`` next to ``id eq "..."``. So: comparisons with
``eq`` joined by ``and``, on the attributes each resource names. Anything else (``or``, ``not``,
other operators, unknown attributes) is refused with ``invalidFilter``, never guessed at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tenants.scim.errors import ScimError

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"

MAX_FILTER_LENGTH = 1000

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<open>\[) | (?P<close>\]) | (?P<lparen>\() | (?P<rparen>\))
      | (?P<word>[A-Za-z0-9_:.$\-]+)
    )""",
    re.VERBOSE,
)
_OPERATORS = {"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le", "pr"}


@dataclass(frozen=True)
class Comparison:
    attribute: str  # lower case, schema prefix removed: "username", "emails.value"
    value: Any


def invalid_filter(detail: str) -> ScimError:
    return ScimError(400, detail, "invalidFilter")


def _strip_schema(path: str, schema: str) -> str:
    if path.lower().startswith(schema.lower() + ":"):
        return path[len(schema) + 1 :]
    return path


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    text = text.strip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise invalid_filter(
                f"The filter cannot be read at character {at + 1}: {text[at : at + 20]!r}."
            )
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        at = match.end()
        while at < len(text) and text[at].isspace():
            at += 1
    return out


def _value(kind: str, raw: str) -> Any:
    if kind == "string":
        try:
            return json.loads(raw)
        except ValueError:
            raise invalid_filter(f"The filter's string {raw} is not valid.") from None
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    try:
        return int(raw)
    except ValueError:
        raise invalid_filter(
            f"The filter compares with {raw!r}; a value is a quoted string, true, false or a number."
        ) from None


def parse_filter(text: str, *, allowed: set[str], schema: str) -> list[Comparison]:
    """``text`` -> the comparisons that must all hold. ``allowed``: lower-case attribute names
    the resource can be filtered by (``emails.value``; ``members[value eq "x"]`` is read as
    ``members.value``)."""
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid_filter(f"The filter is longer than {MAX_FILTER_LENGTH} characters.")
    tokens = _tokens(text)
    if not tokens:
        raise invalid_filter("The filter is empty.")
    comparisons: list[Comparison] = []
    i = 0
    while True:
        # attribute
        if i >= len(tokens) or tokens[i][0] != "word":
            raise invalid_filter('The filter must be: attribute eq "value" [and ...].')
        attribute = _strip_schema(tokens[i][1], schema)
        i += 1
        if i < len(tokens) and tokens[i][0] == "open":
            # attribute[sub eq "value"]
            inner_end = next((j for j in range(i, len(tokens)) if tokens[j][0] == "close"), None)
            if inner_end is None:
                raise invalid_filter("The filter opens '[' without closing it.")
            inner = tokens[i + 1 : inner_end]
            if len(inner) != 3 or inner[0][0] != "word" or inner[1][1].lower() != "eq":
                raise invalid_filter('A filter in brackets must be: attribute[sub eq "value"].')
            attribute = f"{attribute}.{inner[0][1]}"
            value = _value(inner[2][0], inner[2][1])
            i = inner_end + 1
        else:
            if i >= len(tokens) or tokens[i][0] != "word":
                raise invalid_filter('The filter must be: attribute eq "value" [and ...].')
            operator = tokens[i][1].lower()
            if operator != "eq":
                if operator in _OPERATORS:
                    raise invalid_filter(
                        f"The filter operator '{operator}' is not supported; use 'eq'."
                    )
                raise invalid_filter(f"'{tokens[i][1]}' is not a filter operator.")
            i += 1
            if i >= len(tokens) or tokens[i][0] not in ("string", "word"):
                raise invalid_filter("The filter's 'eq' needs a value to compare with.")
            value = _value(tokens[i][0], tokens[i][1])
            i += 1
        key = attribute.lower()
        if key not in allowed:
            raise invalid_filter(
                f"Filtering by '{attribute}' is not supported; use one of: "
                f"{', '.join(sorted(allowed))}."
            )
        comparisons.append(Comparison(attribute=key, value=value))
        if i == len(tokens):
            return comparisons
        if tokens[i][0] == "word" and tokens[i][1].lower() == "and":
            i += 1
            continue
        if tokens[i][0] == "word" and tokens[i][1].lower() in ("or", "not"):
            raise invalid_filter(
                f"The filter operator '{tokens[i][1]}' is not supported; use 'and'."
            )
        raise invalid_filter(f"Unexpected {tokens[i][1]!r} in the filter.")
