"""Meter every API request (REST and DICOMweb) that resolved an organization as ``api.requests``.

Also: the time limits of a signed-in session (``SessionTimeoutMiddleware``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import SESSION_KEY, logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.utils import timezone

from billing.metering import record_usage

logger = logging.getLogger(__name__)


class ApiUsageMiddleware:
    """Meters the request once its answer has been sent.

    The event is written when the server closes the response (after the last byte of a streamed
    one): the client has its answer before the insert and its commit. The worker's thread (and a
    kept-alive connection's next request) still waits for them. The event's time is that of the
    request; its key is new, so it is counted once.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        org = getattr(request, "strata_org", None)
        if org is not None:
            at = timezone.now()
            key = f"api:{uuid.uuid4().hex}"

            def meter() -> None:
                # Outside the view's transaction: a failed request is still a request served.
                try:
                    record_usage(
                        org=org,
                        meter="api.requests",
                        quantity=1,
                        at=at,
                        idempotency_key=key,
                        dimensions={},
                    )
                except Exception:  # the answer is sent: log, as the response's closers are silent
                    logger.exception("api.requests: the request could not be metered")

            # Django's own list of what close() runs (FileResponse adds its file to it).
            cast(Any, response)._resource_closers.append(meter)
        return response


class SessionTimeoutMiddleware:
    """Sign a session out after ``SESSION_IDLE_TIMEOUT_SECONDS`` without activity and
    ``SESSION_ABSOLUTE_LIFETIME_SECONDS`` after sign-in, whatever the activity.

    Activity is any request made with the session, API requests included, except the views in
    ``SESSION_BACKGROUND_URL_NAMES`` (a page polling a job's progress must not keep an unattended
    screen signed in). A portal page with an expired session sends the browser to the sign-in page
    with a message; any other request (an API call, a poll) goes on signed out, so it gets the
    answer an anonymous request gets, and the message waits for the next page.

    The session holds ``{"user", "start", "seen"}`` (epoch seconds). Activity is written at most
    once a minute (a session save is a database write), so a session may end up to a minute early.
    Bearer-token requests carry no session and are not concerned.
    """

    STATE_KEY = "strata.session_clock"
    EXPIRED_KEY = "strata.session_expired"
    # Seconds between two writes of the activity time; a tenth of the idle limit when shorter.
    WRITE_INTERVAL_SECONDS = 60

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        session = request.session
        now = time.time()
        match = request.resolver_match
        background = match is not None and match.url_name in settings.SESSION_BACKGROUND_URL_NAMES
        page = not background and not _is_api(request) and not _wants_json(request)
        if SESSION_KEY not in session:
            if page and self.EXPIRED_KEY in session:
                _tell_expired(request, session.pop(self.EXPIRED_KEY))
            return None
        user_id = str(session[SESSION_KEY])
        state = session.get(self.STATE_KEY)
        if not isinstance(state, dict) or state.get("user") != user_id:
            # A new sign-in (or a session from before these limits): its clock starts now.
            session[self.STATE_KEY] = {"user": user_id, "start": now, "seen": now}
            session.pop(self.EXPIRED_KEY, None)
            return None
        reason = None
        if now - float(state["start"]) >= settings.SESSION_ABSOLUTE_LIFETIME_SECONDS:
            reason = "absolute"
        elif now - float(state["seen"]) >= settings.SESSION_IDLE_TIMEOUT_SECONDS:
            reason = "idle"
        if reason is not None:
            logger.info("Session of user id %s ended: %s limit", user_id, reason)
            logout(request)  # a new, empty session; the old one is deleted
            if not page:
                request.session[self.EXPIRED_KEY] = reason
                return None
            _tell_expired(request, reason)
            if request.method in ("GET", "HEAD"):
                return redirect_to_login(request.get_full_path())
            return HttpResponseRedirect(resolve_url(settings.LOGIN_URL))
        interval = min(self.WRITE_INTERVAL_SECONDS, settings.SESSION_IDLE_TIMEOUT_SECONDS / 10)
        if not background and now - float(state["seen"]) >= interval:
            session[self.STATE_KEY] = {**state, "seen": now}
        return None


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/dicomweb/"))


def _wants_json(request: HttpRequest) -> bool:
    # A script's fetch (a poll that followed the redirect to the sign-in page) must not take the
    # "you were signed out" message meant for the next page the person opens.
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _tell_expired(request: HttpRequest, reason: object) -> None:
    if reason == "absolute":
        hours = settings.SESSION_ABSOLUTE_LIFETIME_SECONDS / 3600
        text = f"You were signed out {hours:g} hours after signing in. Please sign in again."
    else:
        minutes = settings.SESSION_IDLE_TIMEOUT_SECONDS / 60
        text = (
            f"You were signed out after {minutes:g} minutes without activity. Please sign in again."
        )
    messages.info(request, text)
