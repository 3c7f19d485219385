"""Shared fixtures, and the rule for real services.

Without DATABASE_URL / REDIS_URL / Chromium the tests that need them skip with the reason shown;
with REQUIRE_SERVICES=1 (CI) a missing service fails the run instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tenants.context import Actor
from tenants.models import ApiToken, Membership, Organization
from tenants.roles import Role, Scope
from tenants.services import token_create
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def require_service(name: str, available: bool, reason: str) -> None:
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {name} is not available: {reason}", pytrace=False)
    pytest.skip(f"{name} not available: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE_SERVICES:
        url = os.environ.get("DATABASE_URL", "")
        if not url.startswith(("postgres://", "postgresql://", "pgsql://")):
            raise pytest.UsageError("REQUIRE_SERVICES=1 needs DATABASE_URL pointing at PostgreSQL.")
        if not os.environ.get("REDIS_URL"):
            raise pytest.UsageError("REQUIRE_SERVICES=1 needs REDIS_URL.")


def pytest_report_header(config: pytest.Config) -> list[str]:
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return [
        f"strata: database={engine} redis={'yes' if os.environ.get('REDIS_URL') else 'no'} "
        f"require_services={'yes' if REQUIRE_SERVICES else 'no'}"
    ]


def _tcp_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres() -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    require_service(
        "PostgreSQL", engine == "django.db.backends.postgresql", "DATABASE_URL is not PostgreSQL"
    )


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    require_service("Redis", bool(url) and _tcp_open(url, 6379), "REDIS_URL unset or unreachable")
    return url


CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    require_service("Chromium", os.path.exists(CHROMIUM), f"no browser at {CHROMIUM}")
    return CHROMIUM


# --- tenancy fixtures ------------------------------------------------------------------------


@pytest.fixture
def org(db: Any) -> Organization:
    return OrganizationFactory.create(name="St. Mary Hospital", slug="st-mary")


@pytest.fixture
def other_org(db: Any) -> Organization:
    return OrganizationFactory.create(name="Other Clinic", slug="other-clinic")


@pytest.fixture
def make_member(db: Any) -> Callable[..., Membership]:
    def make(org: Organization, role: str = Role.MEMBER, email: str | None = None) -> Membership:
        kwargs: dict[str, Any] = {"organization": org, "role": role}
        if email:
            kwargs["user"] = UserFactory(email=email, username=email)
        return MembershipFactory.create(**kwargs)

    return make


@pytest.fixture
def owner(org: Organization, make_member: Callable[..., Membership]) -> Membership:
    return make_member(org, Role.OWNER, email="owner@stmary.example")


@pytest.fixture
def make_token(db: Any) -> Callable[..., tuple[ApiToken, str]]:
    def make(
        org: Organization, scopes: list[str] | None = None, **kwargs: Any
    ) -> tuple[ApiToken, str]:
        return token_create(
            org=org,
            name=kwargs.pop("name", "integration"),
            scopes=scopes or [s.value for s in Scope],
            actor=Actor.system("tests"),
            **kwargs,
        )

    return make


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def token_client(make_token: Callable[..., tuple[ApiToken, str]]) -> Callable[..., APIClient]:
    """An API client authenticated with a new token of ``org`` with ``scopes`` (all by default)."""

    def make(org: Organization, scopes: list[str] | None = None) -> APIClient:
        _, secret = make_token(org, scopes)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


# --- a real HTTP receiver for webhooks -------------------------------------------------------


class Receiver:
    """A local HTTP server that records requests and answers with ``status`` after ``delay``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.statuses: list[int] = []  # consumed first, then ``status``
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"received": True}).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/strata"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def _default_price_plan(request: pytest.FixtureRequest) -> None:
    """Keep the migration-shipped default plan present: transactional tests flush every table,
    data migrations included, and later tests price usage with it."""
    marker = request.node.get_closest_marker("django_db")
    requested = {"db", "transactional_db"} & set(request.fixturenames)
    if marker is None and not requested:
        return
    for name in sorted(requested, reverse=True):  # set the database up before using it
        request.getfixturevalue(name)
    from importlib import import_module

    from django.apps import apps

    from billing.models import PricePlan

    if not PricePlan.objects.filter(code="standard").exists():
        import_module("billing.migrations.0002_default_plan").create(apps, None)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Cache entries (throttle counters, settle debouncing) never leak from one test to the next."""
    from django.core.cache import caches

    for alias in settings.CACHES:  # "default", and "throttle" for the API throttle's counts
        caches[alias].clear()
    yield
