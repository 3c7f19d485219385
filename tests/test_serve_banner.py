"""The start-up messages name the address actually served (STRATA_ADDR or --addr), never a
fixed localhost:8000, and a malformed address is refused before anything starts."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from saas import env
from saas.management.commands import serve


class _ExitedProcess:
    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float) -> int:
        return 0


def run_serve(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[str, dict[str, list[str]]]:
    """serve as `make run` starts it, with processes that exit at once; its output and commands."""
    started: dict[str, list[str]] = {}

    def popen(command: list[str]) -> _ExitedProcess:
        name = "web" if "gunicorn" in command else command[-1]
        started[name] = command
        return _ExitedProcess()

    monkeypatch.setattr(serve.subprocess, "Popen", popen)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    out = StringIO()
    call_command("serve", "--proxy", "none", *args, stdout=out, stderr=StringIO())
    return out.getvalue(), started


def bound(started: dict[str, list[str]]) -> str:
    web = started["web"]
    return web[web.index("--bind") + 1]


def test_banner_names_the_addr_option(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    settings.DICOM_SCP_PORT = 11112
    out, started = run_serve(monkeypatch, "--addr", "127.0.0.1:8123")
    assert bound(started) == "127.0.0.1:8123"
    assert "Strata running at http://localhost:8123/ (listening on 127.0.0.1:8123;" in out
    assert "DICOM C-STORE on 127.0.0.1 port 11112" in out
    assert "8000" not in out


def test_banner_names_strata_addr_by_default(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.STRATA_ADDR = "0.0.0.0:9090"  # noqa: S104 - what an operator may set
    out, started = run_serve(monkeypatch)
    assert bound(started) == "0.0.0.0:9090"  # noqa: S104
    assert "at http://localhost:9090/ (listening on 0.0.0.0:9090;" in out


def test_banner_for_a_host_name_and_ipv6() -> None:
    assert "at http://pacs.example.org:8080/ (listening on pacs.example.org:8080;" in (
        serve.start_banner("pacs.example.org:8080", front="x", dicom_port=104)
    )
    assert "at http://[2001:db8::1]:8000/" in serve.start_banner(
        "[2001:db8::1]:8000", front="x", dicom_port=104
    )
    assert "on unix:/run/strata.sock (a unix socket" in serve.start_banner(
        "unix:/run/strata.sock", front="x", dicom_port=104
    )


@pytest.mark.parametrize(
    "addr", ["8000", "localhost", "127.0.0.1:", "127.0.0.1:99999", "::1:80", "a b:80"]
)
def test_malformed_addr_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, addr: str
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(serve.subprocess, "Popen", lambda cmd: started.append(cmd))
    with pytest.raises(CommandError, match="--addr .*expected host:port"):
        call_command("serve", "--addr", addr, stdout=StringIO(), stderr=StringIO())
    assert started == []


@pytest.mark.parametrize("value", ["8000", "localhost:http", "[::1]8000"])
def test_malformed_strata_addr_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("STRATA_ADDR", value)
    with pytest.raises(ImproperlyConfigured, match="STRATA_ADDR"):
        env.listen_address("STRATA_ADDR", env.DEFAULT_ADDR)


def test_browse_url_names_what_a_browser_on_this_machine_opens() -> None:
    assert env.browse_url("127.0.0.1:8000") == "http://localhost:8000/"
    assert env.browse_url("192.0.2.10:8443") == "http://192.0.2.10:8443/"
    assert env.browse_url("unix:/run/strata.sock") is None


@pytest.mark.django_db
def test_seed_demo_names_the_address_serve_will_listen_on(settings: Any) -> None:
    settings.STRATA_ADDR = "127.0.0.1:8123"
    out = StringIO()
    call_command("seed_demo", history_studies=4, stdout=out)
    assert "Demo ready: open http://localhost:8123/ and sign in" in out.getvalue()
    assert "STOW-RS to http://localhost:8123/dicomweb/studies" in out.getvalue()
    assert "8000" not in out.getvalue()
