"""API latency of the tenancy core: bearer-token authentication and audit-log paging.

Builds a hospital with 200 members and 100,000 audit events in a scratch database (SQLite file by
default, or DATABASE_URL), then times requests through the full Django stack in-process.
Prints p50/p95/p99 latency and requests per second for each endpoint.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{SCRATCH / 'bench.sqlite3'}")
os.environ["DJANGO_SETTINGS_MODULE"] = "saas.settings.test"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

MEMBERS = 200
AUDIT_EVENTS = 100_000
REQUESTS = 400


def build() -> str:
    from django.contrib.auth import get_user_model

    from tenants.context import Actor
    from tenants.models import AuditEvent, Membership
    from tenants.services import organization_create, token_create

    call_command("migrate", verbosity=0)
    org = organization_create(
        name="Bench Hospital", slug="bench", owner_email="o@bench.example", actor=Actor.system()
    )
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [
            user_model(username=f"u{i}@bench.example", email=f"u{i}@bench.example")
            for i in range(MEMBERS)
        ]
    )
    Membership.objects.bulk_create([Membership(user=u, organization=org) for u in users])
    batch = [
        AuditEvent(
            organization=org,
            actor_label=f"u{i % MEMBERS}@bench.example",
            action="member.role_changed",
        )
        for i in range(AUDIT_EVENTS)
    ]
    AuditEvent.objects.bulk_create(batch, batch_size=5000)
    _, secret = token_create(org=org, name="bench", scopes=["admin"], actor=Actor.system())
    return secret


def measure(client: Client, path: str, secret: str) -> tuple[list[float], float]:
    headers = {"Authorization": f"Bearer {secret}"}
    for _ in range(20):
        client.get(path, headers=headers)
    samples = []
    started = time.perf_counter()
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.content[:300]
    return samples, REQUESTS / (time.perf_counter() - started)


def pct(samples: list[float], p: float) -> float:
    return statistics.quantiles(samples, n=100)[int(p) - 1]


def main() -> None:
    setup_test_environment()
    secret = build()
    client = Client()
    print(
        f"database: {connection.vendor}; {MEMBERS} members, {AUDIT_EVENTS} audit events, {REQUESTS} requests each"
    )
    for path in [
        "/api/v1/organization/",
        "/api/v1/members/",
        "/api/v1/audit-events/",
        "/api/v1/audit-events/?action=member.role_changed&actor=u7@",
    ]:
        samples, rps = measure(client, path, secret)
        print(
            f"GET {path:<55} p50 {pct(samples, 50):6.2f} ms  p95 {pct(samples, 95):6.2f} ms  "
            f"p99 {pct(samples, 99):6.2f} ms  {rps:7.1f} req/s"
        )


if __name__ == "__main__":
    main()
