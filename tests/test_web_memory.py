"""The production web server's memory: a web worker imports only what every request may need, and
gunicorn loads the application once in its master and forks the workers from it
(``--preload``, saas/gunicorn_conf.py).

The code paths that need the libraries left out (PDFs, security keys, authenticator apps, single
sign-on, S3 stores, bucket imports, C-ECHO) are tested where they live: tests/billing,
tests/tenants, tests/archive.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from django.db import connection

from bench.servers import free_port, process_tree
from saas import gunicorn_conf
from saas.management.commands import serve

ROOT = Path(__file__).resolve().parent.parent

# Loaded by the code that needs them, when it first runs: none of them in a web worker at start.
LAZY = ("boto3", "botocore", "s3transfer", "reportlab", "webauthn", "segno", "saml2", "pynetdicom")

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "saas.settings.base",
    "DEBUG": "0",
    "SECRET_KEY": "strata-web-memory-test-secret-key-0123456789abcdef",
    "SECURE_SSL_REDIRECT": "0",
    "CELERY_BROKER_URL": "memory://",
    "LOG_LEVEL": "WARNING",
}


def production_env(tmp_path: Path, **more: str) -> dict[str, str]:
    env = {
        **os.environ,
        **PRODUCTION,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "ARCHIVE_ROOT": str(tmp_path / "archive"),
        "ARCHIVE_SPOOL_ROOT": str(tmp_path / "spool"),
        **more,
    }
    env.pop("REDIS_URL", None)
    return env


@pytest.mark.parametrize("backend", ["FILESYSTEM", "s3"])
def test_a_web_worker_at_start_imports_none_of_the_large_optional_libraries(tmp_path, backend):
    probe = (
        "import json, sys\n"
        "import saas.wsgi\n"
        f"print(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)))\n"
    )
    env = production_env(
        tmp_path, ARCHIVE_BACKEND=backend, ARCHIVE_S3_BUCKET="strata", ARCHIVE_S3_REGION="eu"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout.decode().strip().splitlines()[-1]) == []


def test_the_libraries_load_when_their_code_first_runs(tmp_path):
    probe = (
        "import json, sys\n"
        "import saas.wsgi\n"
        "from archive.storage.registry import _s3_store\n"
        "_s3_store()\n"
        "from billing import reports_pdf\n"
        "from archive.ae_titles import association\n"
        "from tenants.mfa import passkeys, totp\n"
        "totp.qr_svg('otpauth://totp/Strata:a?secret=JBSWY3DPEHPK3PXP')\n"
        f"print(json.dumps(sorted(m for m in {LAZY!r} if m not in sys.modules)))\n"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # saml2 is imported by tenants.sso.saml's functions themselves.
    assert json.loads(done.stdout.decode().strip().splitlines()[-1]) == ["saml2"]


# --- gunicorn: the application loaded before the workers are forked -----------------------------


def test_production_gunicorn_loads_the_application_before_forking():
    command = serve.gunicorn_command("127.0.0.1:8000")
    assert "--preload" in command
    assert command[command.index("--config") + 1] == "python:saas.gunicorn_conf"
    assert "--reload" not in command


def test_gunicorn_behind_nginx_is_preloaded_too(tmp_path):
    commands = serve.web_commands("127.0.0.1:8000", nginx="/usr/sbin/nginx", var_dir=tmp_path)
    assert "--preload" in commands["web"]
    assert serve.PROXIED_APP in commands["web"]


def test_development_reload_loads_in_each_worker():
    # gunicorn's --reload restarts workers on a code change: they must import the code themselves.
    command = serve.gunicorn_command("127.0.0.1:8000", reload=True)
    assert "--reload" in command
    assert "--preload" not in command


def _server(*, preload: bool) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(preload_app=preload))


@pytest.mark.django_db(transaction=True)  # a connection in a test's transaction never closes
def test_pre_fork_closes_the_masters_database_connection_and_freezes_the_loaded_objects():
    connection.ensure_connection()
    assert connection.connection is not None
    try:
        gunicorn_conf.pre_fork(_server(preload=True), worker=None)
        assert connection.connection is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_pre_fork_without_preload_touches_no_django_state(monkeypatch):
    # Without --preload the master never loaded Django: there is nothing of it to close.
    monkeypatch.setattr(
        "django.db.connections.close_all", lambda: pytest.fail("closed connections")
    )
    try:
        gunicorn_conf.pre_fork(_server(preload=False), worker=None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _open_files(pid: int) -> list[str]:
    names = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:
            continue
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc (Linux)")
def test_preloaded_gunicorn_serves_from_every_worker_with_its_own_database_connection(tmp_path):
    env = production_env(tmp_path, ARCHIVE_BACKEND="FILESYSTEM")
    migrated = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert migrated.returncode == 0, migrated.stderr.decode()[-2000:]
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(  # noqa: S603
        serve.gunicorn_command(f"127.0.0.1:{port}", workers=2, threads=1),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"gunicorn did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.2)
        # New connections each time, so that both workers answer some of them.
        answers = [requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10) for _ in range(20)]
        assert {a.status_code for a in answers} == {200}
        workers = process_tree(process.pid)[1:]  # the master's children
        assert len(workers) == 2
        database = str(tmp_path / "db.sqlite3")
        # Only the workers opened the database; the master that loaded the application did not.
        assert database not in _open_files(process.pid)
        assert any(database in _open_files(pid) for pid in workers)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
