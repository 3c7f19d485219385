"""Production settings (DEBUG=0): TLS by default, proxies trusted only when configured, email
links never in the server log. The defaults are read in a fresh process, as a server reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings

from saas import env

ROOT = Path(__file__).resolve().parent.parent
SECRET = "k3V9qL2xW8pR5tY7uZ1aB4cD6eF0gH2jK4mN6pQ8rS0tU2vW4xY6zA8bC0dE2fG"
SHOWN = [
    "DEBUG",
    "SECURE_SSL_REDIRECT",
    "SECURE_REDIRECT_EXEMPT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_PROXY_SSL_HEADER",
    "EMAIL_BACKEND",
    "EMAIL_FILE_PATH",
    "SESSION_COOKIE_SECURE",
]


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECURE_", "EMAIL_", "TRUST_", "DJANGO_", "DEBUG"))
    }
    environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "saas.settings.base",
            "DEBUG": "0",
            "SECRET_KEY": SECRET,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "ALLOWED_HOSTS": "strata.example.org",
            "CELERY_BROKER_URL": "memory://",
            "STATIC_ROOT": str(tmp_path / "static"),
        }
    )
    environ.update(extra)
    return environ


def settings_in_process(tmp_path: Path, **extra: str) -> dict[str, Any]:
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {SHOWN!r}}}, default=str))"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=production_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_check_deploy_has_no_hsts_or_ssl_redirect_warning(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for warning in ("security.W004", "security.W005", "security.W008", "security.W021"):
        assert warning not in output
    assert "System check identified no issues" in output, output


def test_production_defaults_are_tls_hsts_and_email_to_files(tmp_path: Path) -> None:
    values = settings_in_process(tmp_path)
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] == 31536000
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] is None  # X-Forwarded-Proto not trusted unasked
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.filebased.EmailBackend"
    assert values["EMAIL_FILE_PATH"] == str(ROOT / "var" / "mail")


def test_production_settings_are_configurable(tmp_path: Path) -> None:
    values = settings_in_process(
        tmp_path,
        SECURE_SSL_REDIRECT="0",
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="0",
        TRUST_X_FORWARDED_PROTO="1",
        EMAIL_URL="smtp+tls://mailer:secret@smtp.hospital.example:587",
    )
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 3600
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"


def test_debug_keeps_plain_http_and_the_console_email(tmp_path: Path) -> None:
    values = settings_in_process(tmp_path, DEBUG="1")
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"


# --- the same settings in this process -----------------------------------------------------------


@override_settings(SECURE_SSL_REDIRECT=True, SECURE_HSTS_SECONDS=31536000)
@pytest.mark.django_db
def test_plain_http_is_redirected_except_the_health_checks() -> None:
    client = Client()
    response = client.get("/accounts/login/", HTTP_HOST="localhost")
    assert response.status_code == 301
    assert response["Location"] == "https://localhost/accounts/login/"
    assert client.get("/healthz").status_code == 200
    secure = client.get("/accounts/login/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@override_settings(SECURE_SSL_REDIRECT=True)
@pytest.mark.django_db
def test_x_forwarded_proto_is_ignored_unless_trusted() -> None:
    forwarded = {"X-Forwarded-Proto": "https"}
    assert Client().get("/accounts/login/", headers=forwarded).status_code == 301
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert Client().get("/accounts/login/", headers=forwarded).status_code == 200


@pytest.mark.parametrize(
    ("url", "debug", "backend", "path"),
    [
        ("", True, "console.EmailBackend", None),
        ("", False, "filebased.EmailBackend", "/srv/var/mail"),
        ("filemail://", False, "filebased.EmailBackend", "/srv/var/mail"),
        (
            "filemail:///var/spool/strata-mail",
            False,
            "filebased.EmailBackend",
            "/var/spool/strata-mail",
        ),
        ("smtp://relay.hospital.example:25", False, "smtp.EmailBackend", None),
        ("consolemail://", False, "console.EmailBackend", None),
    ],
)
def test_email_settings(
    monkeypatch: pytest.MonkeyPatch, url: str, debug: bool, backend: str, path: str | None
) -> None:
    monkeypatch.setenv("EMAIL_URL", url)
    config = env.email_settings("EMAIL_URL", debug=debug, file_dir=Path("/srv/var/mail"))
    assert config["EMAIL_BACKEND"] == f"django.core.mail.backends.{backend}"
    if path is not None:
        assert config["EMAIL_FILE_PATH"] == path
