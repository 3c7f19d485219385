"""The JSON body parser of the API (settings REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]).

Its own module: DRF imports the parser classes while ``rest_framework.views`` is being imported,
so this module must not import that (``tenants.rest`` does).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from django.conf import settings
from django.utils.http import parse_header_parameters
from rest_framework import parsers, renderers

from tenants.errors import ServiceError, ValidationFailed


class BodyTooLarge(ServiceError):
    status = 413
    code = "body_too_large"


# The characters that open, close or escape something in JSON text.
_JSON_STRUCTURE = re.compile(r'["\\\[\]{}]')


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether arrays/objects in ``text`` nest deeper than ``limit``, in one linear pass that
    looks at quotes, backslashes and brackets only (brackets inside strings do not count).

    Done before ``json.loads``: the decoder recurses once per level and would end in a
    RecursionError (or, for a decoder without the guard, in the C stack)."""
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _JSON_STRUCTURE.finditer(text):
        at = match.start()
        if at == escaped_at:
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _nul_at(data: Any) -> str | None:
    """The path (``a.b.2``) of the first string or key holding a NUL character, or None.

    NUL ends a C string and PostgreSQL refuses it in text and JSON columns: never stored."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                sub = f"{path}.{key}" if path else str(key)
                if "\x00" in key:
                    return sub.replace("\x00", "\\u0000")
                stack.append((sub, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _invalid_body(message: str, *, code: str = "invalid_json", field: str = "body") -> ServiceError:
    return ValidationFailed(message, code=code, fields={field: [message]})


class JSONBodyParser(parsers.BaseParser):
    """``application/json`` bodies, with the limits every request must have.

    - size: at most ``API_MAX_JSON_BYTES`` (413 otherwise), read from the stream with that
      bound; ``request.body`` is never touched, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE and its
      HTML 400 page play no part;
    - nesting: at most ``API_MAX_JSON_DEPTH`` levels of arrays/objects, checked before decoding;
    - strict JSON: no ``NaN``/``Infinity`` (not JSON, and PostgreSQL's JSON cannot hold them),
      no NUL character in any string or key.
    Each refusal is a JSON 400 (413 for the size) naming ``body`` or the field at fault.
    """

    media_type = "application/json"
    renderer_class = renderers.JSONRenderer

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit: int = settings.API_MAX_JSON_BYTES
        max_depth: int = settings.API_MAX_JSON_DEPTH
        too_large = BodyTooLarge(
            f"The JSON body is larger than {limit} bytes.",
            fields={"body": [f"At most {limit} bytes."]},
        )
        request = (parser_context or {}).get("request")
        meta = getattr(request, "META", {}) if request is not None else {}
        try:
            declared = int(meta.get("CONTENT_LENGTH") or 0)
        except (TypeError, ValueError):
            declared = 0
        if declared > limit:
            raise too_large
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise too_large
        encoding = "utf-8"
        if media_type:
            _, params = parse_header_parameters(media_type)
            encoding = params.get("charset", encoding)
        try:
            codecs.lookup(encoding)
            text = raw.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            raise _invalid_body(f"The JSON body is not valid {encoding} text.") from None
        if _nesting_exceeds(text, max_depth):
            raise _invalid_body(
                f"The JSON body nests arrays/objects deeper than {max_depth} levels.",
                code="too_deep",
            )
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise _invalid_body("The JSON body nests too deep.", code="too_deep") from None
        except ValueError as exc:
            raise _invalid_body(f"The body is not valid JSON: {exc}.") from None
        where = _nul_at(data)
        if where is not None:
            raise _invalid_body(
                "A NUL character (\\u0000) is not allowed in a value.", code="invalid", field=where
            )
        return data
