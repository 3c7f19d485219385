"""Query strings that no view can use safely are refused before any view runs.

A NUL character (``%00``) in a query parameter is never meaningful and PostgreSQL refuses it in
any text it is compared with (a 500 from deep inside a query); more parameters than
DATA_UPLOAD_MAX_NUMBER_FIELDS make Django raise while parsing. Both answer 400 naming the
parameter: the JSON error body for the API and DICOMweb, a short text page for the portal.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from tenants.api import error_body

API_PREFIXES = ("/api/", "/dicomweb/")
NUL_MESSAGE = "A NUL character (%00) is not allowed in a query parameter."


class QueryStringGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            params = request.GET
        except SuspiciousOperation as exc:  # TooManyFieldsSent
            return self._refuse(request, "query", str(exc))
        for name, values in params.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return self._refuse(request, name.replace("\x00", "%00"), NUL_MESSAGE)
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, name: str, message: str) -> HttpResponse:
        if request.path.startswith(API_PREFIXES):
            return JsonResponse(error_body("invalid_query", message, {name: [message]}), status=400)
        return HttpResponseBadRequest(f"{name}: {message}", content_type="text/plain")
