"""Slow clients against the web tier: nginx in front of gunicorn (``manage.py serve``) and, for
comparison, gunicorn alone.

100 clients each announce a 2 GB STOW-RS body (with a valid token, so the application would
read it) and send 64 bytes a second. While they are connected, sequential requests measure the
latency of ``/healthz``, a QIDO-RS study search and the portal's login page. Then: how long a
connection that sends nothing stays open (up to WEB_CLIENT_TIMEOUT_SECONDS + 15 s). Both web
tiers are started from ``serve.web_commands`` (gunicorn with its production worker count,
``WEB_CONCURRENCY`` or two per core, 2 threads each), on loopback, on a scratch PostgreSQL
database (``strata_bench_slow``; skips without PostgreSQL).

Bounded: BENCH_SLOW_CLIENTS=100 clients, BENCH_SLOW_SAMPLES=20 requests per endpoint behind nginx
(5 for gunicorn alone, where each may wait its whole timeout), 5 s timeout per request; about
four minutes in all. Expected: behind nginx every answer within milliseconds and the silent
connection dropped after WEB_CLIENT_TIMEOUT_SECONDS; gunicorn alone stops answering once the slow
clients hold its threads.
"""

from __future__ import annotations

import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import ScratchDatabase  # noqa: E402

SLOW_CLIENTS = int(os.environ.get("BENCH_SLOW_CLIENTS", "100"))
SAMPLES = int(os.environ.get("BENCH_SLOW_SAMPLES", "20"))
REQUEST_TIMEOUT = 5.0
TRICKLE_BYTES = 64  # per client per second
BOUNDARY = "strata-bench-boundary"

SCRATCH_DB = ScratchDatabase("strata_bench_slow", "slow_clients.py")
SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-slow-"))
SCRATCH_DB.create()
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "saas.settings.base",
        "DATABASE_URL": SCRATCH_DB.url(),
        "DEBUG": "0",
        "SECRET_KEY": "strata-bench-slow-secret-key-0123456789abcdef",
        "SECURE_SSL_REDIRECT": "0",
        "ARCHIVE_BACKEND": "FILESYSTEM",
        "ARCHIVE_ROOT": str(SCRATCH / "archive"),
        "ARCHIVE_SPOOL_ROOT": str(SCRATCH / "spool"),
        "CELERY_BROKER_URL": "memory://",
        "API_THROTTLE_RATE": "1000000/min",
        "LOG_LEVEL": "WARNING",
    }
)

import django  # noqa: E402

django.setup()

import requests  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from saas.management.commands.serve import WEB_THREADS, web_commands, web_workers  # noqa: E402
from saas.proxy import find_nginx  # noqa: E402
from tenants.context import Actor  # noqa: E402
from tenants.models import Organization  # noqa: E402
from tenants.services import token_create  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def web_tier(nginx: str | None) -> Iterator[str]:
    """The processes ``manage.py serve`` starts for the web (nginx + gunicorn, or gunicorn
    alone) on a free loopback port; yields the base URL."""
    port = free_port()
    commands = web_commands(
        f"127.0.0.1:{port}", nginx=nginx, var_dir=SCRATCH / "var", access_log="off"
    )
    log = open(SCRATCH / "server.log", "ab")  # noqa: SIM115 - closed below
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        for command in commands.values()
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the web tier did not start; see {SCRATCH / 'server.log'}")
            time.sleep(0.2)
        # Every worker process imports and connects before the figures.
        for _ in range(4 * web_workers()):
            requests.get(f"{url}/accounts/login/", timeout=10)
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def seed(url: str) -> tuple[str, str]:
    """A hospital, a token and one study sent by STOW-RS; returns (token, patient name)."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, to_bytes

    org = Organization.objects.create(name="Bench slow clients", slug="bench-slow")
    _, secret = token_create(
        org=org,
        name="bench",
        scopes=["dicom:read", "dicom:write"],
        actor=Actor.system("bench"),
    )
    spec = study_spec("CT")
    body = io.BytesIO()
    body.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
    body.write(to_bytes(make_instance(spec, series_uid=generate_uid(), rows=64, columns=64)))
    body.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    answer = requests.post(
        f"{url}/dicomweb/studies",
        data=body.getvalue(),
        headers={
            "Authorization": f"Bearer {secret}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    answer.raise_for_status()
    return secret, spec.patient_name


class SlowClients:
    """``count`` connections that announce 2 GB and send TRICKLE_BYTES a second."""

    def __init__(self, url: str, token: str, count: int) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.token = token
        self.count = count
        self.stop = threading.Event()
        self.dropped = 0
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        time.sleep(3)  # every client connected and sending its body
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _trickle(self) -> None:
        head = (
            "POST /dicomweb/studies HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
            "Accept: application/dicom+json\r\n"
            "Content-Length: 2000000000\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n"
        ).encode()
        sockets = []
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(head)
            sockets.append(sock)
        while not self.stop.wait(1.0):
            for sock in list(sockets):
                try:
                    sock.sendall(b"\0" * TRICKLE_BYTES)
                except OSError:
                    self.dropped += 1
                    sockets.remove(sock)
        for sock in sockets:
            sock.close()


def idle_connection_lifetime(url: str, limit: float) -> str:
    """How long the server keeps a connection that sends nothing (waits up to ``limit``)."""
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(limit)
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            return f"still open after {limit:.0f} s"
        except OSError:
            pass
    return f"dropped after {time.monotonic() - started:.1f} s"


def latencies(url: str, headers: dict[str, str], samples: int) -> tuple[list[float], int]:
    """(milliseconds of the answered requests, how many got no answer within the timeout)."""
    answered: list[float] = []
    failed = 0
    for _ in range(samples):
        started = time.perf_counter()
        try:
            answer = requests.get(url, headers=headers, timeout=REQUEST_TIMEOUT)
            if answer.status_code != 200:
                raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:200]}")
            answered.append((time.perf_counter() - started) * 1000)
        except requests.RequestException:
            failed += 1
    return answered, failed


def figure(answered: list[float], failed: int) -> str:
    if not answered:
        return f"no answer within {REQUEST_TIMEOUT:.0f} s ({failed}/{failed} timed out)"
    text = (
        f"p50 {statistics.median(answered):6.1f} ms, max {max(answered):7.1f} ms "
        f"({len(answered)}/{len(answered) + failed} answered"
    )
    return text + (f", {failed} timed out)" if failed else ")")


def measure(label: str, url: str, token: str, patient_name: str, samples: int) -> None:
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
    family = patient_name.split("^")[0]
    endpoints = [
        ("/healthz", f"{url}/healthz", {}),
        ("QIDO-RS", f"{url}/dicomweb/studies?PatientName={family}*", auth),
        ("portal login page", f"{url}/accounts/login/", {}),
    ]
    for name, target, headers in endpoints:
        print(f"  {label}, idle: {name:18} {figure(*latencies(target, headers, 5))}", flush=True)
    with SlowClients(url, token, SLOW_CLIENTS) as slow:
        for name, target, headers in endpoints:
            print(
                f"  {label}, {SLOW_CLIENTS} slow clients: {name:18} "
                f"{figure(*latencies(target, headers, samples))}",
                flush=True,
            )
    print(f"  {label}: slow clients dropped by the server: {slow.dropped}/{SLOW_CLIENTS}")
    limit = settings.WEB_CLIENT_TIMEOUT_SECONDS + 15
    print(f"  {label}: a connection that sends nothing: {idle_connection_lifetime(url, limit)}")


def main() -> None:
    nginx = find_nginx()
    try:
        call_command("migrate", verbosity=0)
        print(
            f"web tier: gunicorn {web_workers()} workers x {WEB_THREADS} threads; "
            f"{SLOW_CLIENTS} clients announce 2 GB and send {TRICKLE_BYTES} bytes/s; "
            f"WEB_CLIENT_TIMEOUT_SECONDS={settings.WEB_CLIENT_TIMEOUT_SECONDS}",
            flush=True,
        )
        if nginx is None:
            print("nginx not installed (apt-get install nginx): only gunicorn alone measured")
            with web_tier(None) as url:
                token, patient_name = seed(url)
        else:
            with web_tier(nginx) as url:
                token, patient_name = seed(url)
                measure("nginx + gunicorn", url, token, patient_name, SAMPLES)
        with web_tier(None) as url:
            measure("gunicorn alone", url, token, patient_name, min(SAMPLES, 5))
    finally:
        SCRATCH_DB.drop()


if __name__ == "__main__":
    main()
