"""Input that no view can use safely is refused before any view runs.

- A NUL character (``%00``) in a query parameter is never meaningful, and PostgreSQL refuses it
  in any text it is compared with (a 500 from deep inside a query); more parameters than
  DATA_UPLOAD_MAX_NUMBER_FIELDS make Django raise while parsing. Both answer 400 naming the
  parameter.
- An id in the path (``<int:...>``) beyond a 64-bit integer names no row, and SQLite cannot even
  compare with it (OverflowError): 404, like any id that does not exist.
- A Content-Type header whose parameters cannot be parsed (``saas.wsgi.Request`` keeps the
  reason): 400 naming the header.
The JSON error body for the API and DICOMweb, a short text page for the portal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotFound,
    JsonResponse,
)

from tenants.rest import error_body

API_PREFIXES = ("/api/", "/dicomweb/")
NUL_MESSAGE = "A NUL character (%00) is not allowed in a query parameter."
MAX_PATH_ID = 2**63 - 1  # the largest value of a BigAutoField


class InputGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        content_type_error = getattr(request, "content_type_error", "")
        if content_type_error:  # see saas.wsgi.Request
            return self._refuse(request, "Content-Type", content_type_error, code="invalid_header")
        try:
            params = request.GET
        except SuspiciousOperation as exc:  # TooManyFieldsSent
            return self._refuse(request, "query", str(exc))
        for name, values in params.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return self._refuse(request, name.replace("\x00", "%00"), NUL_MESSAGE)
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        values = [*view_args, *view_kwargs.values()]
        if any(isinstance(v, int) and not -MAX_PATH_ID <= v <= MAX_PATH_ID for v in values):
            if request.path.startswith(API_PREFIXES):
                return JsonResponse(error_body("not_found", "Not found."), status=404)
            return HttpResponseNotFound("Not found.", content_type="text/plain")
        return None

    @staticmethod
    def _refuse(
        request: HttpRequest, name: str, message: str, *, code: str = "invalid_query"
    ) -> HttpResponse:
        if request.path.startswith(API_PREFIXES):
            return JsonResponse(error_body(code, message, {name: [message]}), status=400)
        return HttpResponseBadRequest(f"{name}: {message}", content_type="text/plain")
