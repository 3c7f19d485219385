"""Load-balancer checks. ``/healthz``: the process answers. ``/readyz``: its dependencies do."""

from __future__ import annotations

import logging
import time
import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_broker() -> None:
    from saas.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _check_storage() -> None:
    # Write, read and delete a probe: an unwritable storage fails here, not on an upload.
    name = default_storage.save(f"_probe/readyz-{uuid.uuid4().hex}", ContentFile(b"ok"))
    try:
        with default_storage.open(name) as handle:
            if handle.read() != b"ok":
                raise OSError("storage probe read back different bytes")
    finally:
        default_storage.delete(name)


CHECKS = {"database": _check_database, "broker": _check_broker, "storage": _check_storage}


def readyz(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict[str, object]] = {}
    ready = True
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # a failing dependency is the answer, not an error
            ready = False
            logger.warning("readiness check %s failed: %s", name, type(exc).__name__)
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": results},
        status=200 if ready else 503,
    )
