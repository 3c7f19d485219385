"""`make run` writes a local .env that manage.py reads, so that the README's commands run as
written after it; and the embedded broker's start-up says nothing about a missing hostname."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from kombu import Connection

from saas import env
from saas.localenv import local_env_write

ROOT = Path(__file__).resolve().parent.parent
# What the shell of someone who just ran `make run` has: none of the settings make exports.
CLEARED = ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "REDIS_URL", "CELERY_BROKER_URL")


def manage(tmp_path: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in CLEARED and not k.startswith(("STRATA_", "SITE_URL"))
    }
    environ["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    environ.update(variables)
    return subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def read(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


def test_the_file_holds_debug_and_a_secret_key_of_its_own(tmp_path: Path) -> None:
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    assert local_env_write(first) and local_env_write(second)
    values = read(first)
    assert values["DEBUG"] == "1"
    assert len(values["SECRET_KEY"]) >= 50
    assert values["SECRET_KEY"] != read(second)["SECRET_KEY"]
    assert "STORAGE_CREDENTIALS_KEY" not in values
    assert stat.S_IMODE(first.stat().st_mode) == 0o600  # it holds a secret


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("DEBUG=0\nSECRET_KEY=an-operator-chosen-key-0123456789abcdef\n")
    assert local_env_write(path) is False
    assert read(path)["DEBUG"] == "0"


def test_data_of_an_earlier_run_keeps_its_credentials_key(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    local_env_write(path, existing_data=True)
    assert read(path)["STORAGE_CREDENTIALS_KEY"] == env.INSECURE_DEV_KEY


def test_manage_py_runs_as_written_with_the_file_and_refuses_without(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    local_env_write(path)
    without = manage(tmp_path, "check", STRATA_ENV_FILE="")
    assert without.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in without.stderr
    with_file = manage(tmp_path, "check", STRATA_ENV_FILE=str(path))
    assert with_file.returncode == 0, with_file.stderr[-2000:]
    assert "no issues" in with_file.stdout


SHOW = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.DEBUG, s.SITE_URL, s.CELERY_BROKER_URL, s.SECRET_KEY == {key!r})"
)


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    local_env_write(path)
    key = read(path)["SECRET_KEY"]
    environ = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environ.update(
        STRATA_ENV_FILE=str(path),
        DJANGO_SETTINGS_MODULE="saas.settings.base",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        STRATA_ADDR="127.0.0.1:8123",
        SITE_URL="",
    )
    shown = subprocess.run(  # noqa: S603
        [sys.executable, "-c", SHOW.format(key=key)],
        cwd=ROOT,
        env={**environ, "DEBUG": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    # DEBUG from the environment, SECRET_KEY from the file; emailed links follow STRATA_ADDR.
    assert shown.stdout.split() == [
        "False",
        "http://localhost:8123",
        env.EMBEDDED_BROKER_URL,
        "True",
    ]


def test_a_named_env_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    result = manage(tmp_path, "check", STRATA_ENV_FILE=str(tmp_path / "missing.env"))
    assert result.returncode != 0
    assert "STRATA_ENV_FILE" in result.stderr


def test_the_embedded_broker_names_a_host(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = str(tmp_path)
    options = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder}
    with caplog.at_level(logging.WARNING, logger="kombu"):
        connection = Connection(env.EMBEDDED_BROKER_URL, transport_options=options)
        # What the worker's and beat's start-up banners and every publish do.
        connection.as_uri()
        connection.clone().info()
        with connection.Producer() as producer:
            producer.publish({"ping": 1}, routing_key="celery")
    assert [r.getMessage() for r in caplog.records if "hostname" in r.getMessage()] == []


def test_make_run_writes_the_checkouts_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from saas import localenv

    monkeypatch.delenv("STRATA_ENV_FILE")
    monkeypatch.setattr(env, "DEFAULT_ENV_FILE", tmp_path / ".env")
    monkeypatch.setattr(env, "DEFAULT_VAR_DIR", tmp_path / "var")
    assert localenv.main() == 0
    assert f"wrote {tmp_path / '.env'}" in capsys.readouterr().out
    written = (tmp_path / ".env").read_text()
    assert localenv.main() == 0
    assert f"kept {tmp_path / '.env'}" in capsys.readouterr().out
    assert (tmp_path / ".env").read_text() == written
