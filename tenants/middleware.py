"""Keeps ``UserSession.last_seen_at`` of signed-in sessions roughly current.

The session is already loaded by then (the session timeout reads it), so a request whose
session was seen less than ``SESSION_SEEN_INTERVAL_SECONDS`` ago costs no query at all; the
others write one UPDATE, and the session is saved with the new time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import SESSION_KEY
from django.http import HttpRequest, HttpResponse

from tenants import services


class SessionSeenMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        session = getattr(request, "session", None)
        if session is None or SESSION_KEY not in session:
            return None
        services.user_session_seen(request=request, user_id=session[SESSION_KEY])
        return None
