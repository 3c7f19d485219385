"""Meter every API request (REST and DICOMweb) that resolved an organization as ``api.requests``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from billing.metering import record_usage

logger = logging.getLogger(__name__)


class ApiUsageMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        org = getattr(request, "strata_org", None)
        if org is not None:
            # Outside the view's transaction: a failed request is still a request served.
            record_usage(
                org=org,
                meter="api.requests",
                quantity=1,
                at=timezone.now(),
                idempotency_key=f"api:{uuid.uuid4().hex}",
                dimensions={},
            )
        return response
