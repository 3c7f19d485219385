"""STOW-RS multipart amplification: what a small body of many empty parts costs the server.

The attack of issue 11 item 8: a 1.2 MB body of 100,000 empty parts took 20 s, wrote 100,000
failure rows, answered 20 MB and grew the worker by 116 MB for good. Here, through the full Django
stack in-process (test client) on a scratch database (a SQLite file, or with a PostgreSQL
DATABASE_URL a scratch database ``strata_bench_stow_amp`` on that server, dropped at the end):

- 100,000 empty parts: refused with 413 after ``STOW_MAX_PARTS`` (10,000) parts;
- exactly 10,000 empty parts (the limit): 409, every part failed, at most
  ``INGEST_MAX_FAILURE_ROWS`` (1,000) failure rows;

each sent 3 times, printing the body size, status, time, response size, failure rows written and
the process's resident memory (VmRSS) after each request compared to after a warm-up request
(growth that stays is what "for good" meant). BENCH_PARTS=100000 changes the large body.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import ScratchDatabase  # noqa: E402

SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-stow-amp-"))
SCRATCH_DB: ScratchDatabase | None = None
if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
    SCRATCH_DB = ScratchDatabase("strata_bench_stow_amp", "stow_amplification.py")
    SCRATCH_DB.create()
    os.environ["DATABASE_URL"] = SCRATCH_DB.url()
else:
    os.environ["DATABASE_URL"] = f"sqlite:///{SCRATCH / 'bench.sqlite3'}"
os.environ["DJANGO_SETTINGS_MODULE"] = "saas.settings.test"
os.environ["ARCHIVE_ROOT"] = str(SCRATCH / "archive")
os.environ["ARCHIVE_SPOOL_ROOT"] = str(SCRATCH / "spool")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

BOUNDARY = "b"
LARGE = int(os.environ.get("BENCH_PARTS", "100000"))
ROUNDS = 3


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def empty_parts(n: int) -> bytes:
    """n parts with no headers and no bytes: 9 bytes each with a one-letter boundary."""
    return b"--b\r\n\r\n" + b"\r\n--b\r\n\r\n" * (n - 1) + b"\r\n--b--\r\n"


def build() -> str:
    from tenants.context import Actor
    from tenants.services import organization_create, token_create

    call_command("migrate", verbosity=0)
    org = organization_create(
        name="Bench Hospital", slug="bench", owner_email="o@bench.example", actor=Actor.system()
    )
    _, secret = token_create(org=org, name="bench", scopes=["dicom:write"], actor=Actor.system())
    return secret


def main() -> None:
    from archive.models import IngestFailure

    setup_test_environment()
    secret = build()
    client = Client()
    headers = {"Authorization": f"Bearer {secret}", "Accept": "application/dicom+json"}
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    print(
        f"STOW_MAX_PARTS={settings.STOW_MAX_PARTS:,} "
        f"INGEST_MAX_FAILURE_ROWS={settings.INGEST_MAX_FAILURE_ROWS:,} "
        f"database={settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
    )
    # A warm-up request loads what any first request loads (views, URL patterns, serializers).
    client.post(
        "/dicomweb/studies", data=empty_parts(1), content_type=content_type, headers=headers
    )
    gc.collect()
    baseline = rss_mb()
    print(f"RSS after a warm-up request: {baseline:.1f} MB")
    for label, parts in (
        (f"{LARGE:,} empty parts", LARGE),
        (f"{settings.STOW_MAX_PARTS:,} empty parts", settings.STOW_MAX_PARTS),
    ):
        body = empty_parts(parts)
        for round_ in range(1, ROUNDS + 1):
            rows_before = IngestFailure.objects.count()
            started = time.perf_counter()
            response = client.post(
                "/dicomweb/studies", data=body, content_type=content_type, headers=headers
            )
            elapsed = time.perf_counter() - started
            rows = IngestFailure.objects.count() - rows_before
            status, answer = response.status_code, len(response.content)
            del response  # the answer is measured, not kept
            gc.collect()
            print(
                f"{label}: body {len(body) / 1e6:.2f} MB, round {round_}: HTTP {status}, "
                f"{elapsed:.2f} s, answer {answer / 1e3:,.1f} KB, failure rows {rows:,}, "
                f"RSS {rss_mb() - baseline:+.1f} MB"
            )


if __name__ == "__main__":
    try:
        main()
    finally:
        if SCRATCH_DB is not None:
            SCRATCH_DB.drop()
