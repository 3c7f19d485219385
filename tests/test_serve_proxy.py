"""nginx in front of gunicorn (saas/proxy.py, manage.py serve): slow and silent clients are
nginx's problem, never gunicorn's; the access log has no query strings.

The stack tests start the processes ``serve`` builds (``web_commands``) on a free loopback port,
with a 2 s client timeout and a single gunicorn worker of 2 threads: without nginx in front, two
slow clients would be enough to stop it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from gunicorn.config import Config

from saas import proxy
from saas.management.commands import serve
from saas.proxy import (
    ProxySettings,
    QuerylessGunicornLogger,
    behind_proxy,
    render_nginx_config,
)
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 2  # WEB_CLIENT_TIMEOUT_SECONDS of the stack under test
TRUSTED_PROXY = "127.0.0.2"  # a load balancer in front of nginx, for the forwarding tests
BOUNDARY = "strata-test-boundary"
OPTIONS = ProxySettings(client_timeout=60, max_body_size="4g", trusted_proxies=())


def config(tmp_path: Path, **overrides: Any) -> str:
    options = ProxySettings(**{**OPTIONS.__dict__, **overrides})
    return render_nginx_config(
        listen="127.0.0.1:8000",
        upstream="unix:/srv/gunicorn.sock",
        var_dir=tmp_path,
        options=options,
    )


# --- the config -------------------------------------------------------------------------------


def test_access_log_names_the_path_without_the_query_string(tmp_path):
    text = config(tmp_path)
    log_format = text[text.index("log_format") : text.index("\n    access_log ")]
    assert "$uri" in log_format
    for leaking in ("$request ", '$request"', "$request_uri", "$args", "$query_string", "referer"):
        assert leaking not in log_format
    assert "%(U)s" in serve.ACCESS_LOG_FORMAT
    assert "%(r)s" not in serve.ACCESS_LOG_FORMAT and "%(q)s" not in serve.ACCESS_LOG_FORMAT


def test_nginx_error_log_leaves_out_request_errors_that_quote_the_query(tmp_path):
    assert "error_log stderr alert;" in config(tmp_path)


def test_gunicorn_error_log_names_the_path_without_the_query_string(capfd):
    logger = QuerylessGunicornLogger(Config())
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception(
            "Error handling request %s %s", "GET", "/dicomweb/studies?PatientName=DOE^JANE"
        )
    logger.warning(
        "Invalid request from ip=%s: %s",
        "192.0.2.1",
        "Invalid HTTP request line: 'GET /dicomweb/studies?PatientID=PAT123 HTTP/1.1'",
    )
    err = capfd.readouterr().err
    assert "Error handling request GET /dicomweb/studies?[query removed]" in err
    assert "'GET /dicomweb/studies?[query removed] HTTP/1.1'" in err
    assert "DOE" not in err and "PAT123" not in err
    assert "--logger-class" in serve.gunicorn_command("127.0.0.1:8000")


def test_client_timeouts_come_from_one_setting(tmp_path):
    text = config(tmp_path, client_timeout=17)
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert f"{directive} 17s;" in text
    assert "keepalive_timeout 17s;" in text


def test_requests_are_buffered_and_forwarding_headers_set_by_nginx(tmp_path):
    text = config(tmp_path)
    for line in (
        "proxy_request_buffering on;",
        "proxy_buffering on;",
        "client_max_body_size 4g;",
        f"proxy_read_timeout {proxy.UPSTREAM_TIMEOUT_SECONDS}s;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $strata_forwarded_proto;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-Port $strata_forwarded_port;",
        'proxy_set_header X-Forwarded-Ssl "";',
        "server unix:/srv/gunicorn.sock;",
        "listen 127.0.0.1:8000;",
        "daemon off;",
    ):
        assert line in text
    # Every path nginx writes is under the var directory.
    assert f"pid {tmp_path}/nginx/nginx.pid;" in text
    assert f"client_body_temp_path {tmp_path}/nginx/temp/client_body" in text
    assert "/etc/nginx" not in text and "include " not in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_body_size", "4 GB"), ("max_body_size", "-1"), ("trusted_proxies", ("lb.example",))],
)
def test_bad_proxy_setting_is_refused_with_its_name(tmp_path, field, value):
    with pytest.raises(ImproperlyConfigured, match="WEB_"):
        config(tmp_path, **{field: value})


def test_nginx_accepts_the_rendered_config(tmp_path):
    nginx = proxy.find_nginx()
    require_service("nginx", nginx is not None, "no nginx binary (Debian package nginx)")
    assert nginx is not None
    text = render_nginx_config(
        listen="127.0.0.1:8000",
        upstream=proxy.private_upstream(tmp_path),
        var_dir=tmp_path,
        options=ProxySettings(
            client_timeout=60, max_body_size="0", trusted_proxies=("10.0.0.0/8",)
        ),
    )
    path = proxy.write_nginx_config(text, tmp_path)
    command = [*proxy.nginx_command(nginx, path), "-t", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)  # noqa: S603
    assert result.returncode == 0, result.stderr


def test_print_nginx_config_prints_the_config_serve_runs(capsys, settings):
    settings.WEB_CLIENT_TIMEOUT_SECONDS = 33
    call_command("serve", "--print-nginx-config", "--addr", "0.0.0.0:8080")
    out = capsys.readouterr().out
    assert "listen 0.0.0.0:8080;" in out
    assert "client_body_timeout 33s;" in out
    assert "server 127.0.0.1:8001;" in out
    assert "manage.py serve --behind-proxy --addr 127.0.0.1:8001" in out
    assert "\nuser " not in out  # the operator's nginx runs as its own account


# --- which processes serve starts ------------------------------------------------------------


def test_serve_runs_gunicorn_behind_nginx_on_a_private_socket(tmp_path):
    commands = serve.web_commands(
        "127.0.0.1:8000", nginx="/usr/sbin/nginx", var_dir=tmp_path, options=OPTIONS
    )
    assert set(commands) == {"web", "nginx"}
    gunicorn = commands["web"]
    bind = gunicorn[gunicorn.index("--bind") + 1]
    assert bind == f"unix:{tmp_path}/run/gunicorn.sock"
    assert serve.PROXIED_APP in gunicorn
    assert gunicorn[gunicorn.index("--forwarded-allow-ips") + 1] == "127.0.0.1,::1"
    assert oct((tmp_path / "run").stat().st_mode & 0o777) == "0o700"
    assert commands["nginx"][:3] == ["/usr/sbin/nginx", "-p", str(tmp_path / "nginx")]


def test_var_dir_too_long_for_a_socket_address_uses_a_loopback_port(tmp_path):
    var_dir = tmp_path / ("x" * 120)
    commands = serve.web_commands("127.0.0.1:8000", nginx="/usr/sbin/nginx", var_dir=var_dir)
    bind = commands["web"][commands["web"].index("--bind") + 1]
    assert bind.startswith("127.0.0.1:")
    assert f"server {bind};" in (var_dir / "nginx" / "nginx.conf").read_text()


def test_access_log_goes_to_a_file_when_standard_output_cannot_be_opened(tmp_path, monkeypatch):
    # Under a service manager standard output is a socket, which nginx cannot open by name.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(6, "No such device or address")

    monkeypatch.setattr("builtins.open", refuse)
    assert proxy.default_access_log(tmp_path) == str(tmp_path / "log" / "access.log")
    assert (tmp_path / "log").is_dir()


def test_without_nginx_gunicorn_serves_the_public_address_alone(tmp_path):
    commands = serve.web_commands("127.0.0.1:8000", nginx=None, var_dir=tmp_path)
    assert set(commands) == {"web"}
    assert commands["web"][commands["web"].index("--bind") + 1] == "127.0.0.1:8000"
    assert "saas.wsgi:application" in commands["web"]


def test_gunicorn_behind_an_operators_own_proxy_takes_the_client_address_from_it(tmp_path):
    commands = serve.web_commands(
        "127.0.0.1:8001", nginx=None, var_dir=tmp_path, behind_own_proxy=True
    )
    assert serve.PROXIED_APP in commands["web"]


def test_proxy_mode_nginx_fails_clearly_when_nginx_is_missing(monkeypatch):
    monkeypatch.setattr(serve, "find_nginx", lambda: None)
    with pytest.raises(CommandError, match="apt-get install nginx"):
        serve.resolve_proxy("nginx")
    assert serve.resolve_proxy("auto") is None
    assert serve.resolve_proxy("none") is None


def test_proxy_mode_none_runs_gunicorn_alone_although_nginx_is_installed(monkeypatch):
    monkeypatch.setattr(serve, "find_nginx", lambda: "/usr/sbin/nginx")
    assert serve.resolve_proxy("none") is None
    assert serve.resolve_proxy("auto") == "/usr/sbin/nginx"


class _ExitedProcess:
    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float) -> int:
        return 0


def test_serve_warns_when_it_falls_back_to_gunicorn_alone(monkeypatch, capsys):
    monkeypatch.setattr(serve, "find_nginx", lambda: None)
    started: list[list[str]] = []
    monkeypatch.setattr(
        serve.subprocess, "Popen", lambda cmd: started.append(cmd) or _ExitedProcess()
    )
    monkeypatch.setattr(serve.signal, "signal", lambda *args: None)
    call_command("serve", "--proxy", "auto", "--addr", "127.0.0.1:8123")
    assert (
        "WARNING: nginx not found: gunicorn serves 127.0.0.1:8123 alone" in capsys.readouterr().err
    )
    web = next(cmd for cmd in started if "gunicorn" in cmd)
    assert web[web.index("--bind") + 1] == "127.0.0.1:8123"
    assert not any("nginx" in cmd[0] for cmd in started)


# --- the client's address behind the proxy ----------------------------------------------------


@pytest.mark.parametrize(
    ("remote_addr", "real_ip", "seen"),
    [
        ("", "203.0.113.7", "203.0.113.7"),  # over the unix socket: nginx's word
        ("127.0.0.1", "203.0.113.7", "203.0.113.7"),  # loopback upstream
        ("198.51.100.1", "203.0.113.7", "198.51.100.1"),  # from the network: not believed
        ("", "not-an-address", ""),
    ],
)
def test_client_address_comes_from_nginx_only_over_the_private_listener(remote_addr, real_ip, seen):
    environ = {"REMOTE_ADDR": remote_addr, "HTTP_X_REAL_IP": real_ip}
    captured: dict[str, Any] = {}
    behind_proxy(lambda env, start: captured.update(env))(environ, None)
    assert captured["REMOTE_ADDR"] == seen


# --- the running stack ------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    port: int
    access_log: Path
    token: str
    processes: dict[str, subprocess.Popen[bytes]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


SEED = """
import django, sys
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tenants.context import Actor
from tenants.models import Organization
from tenants.roles import Scope
from tenants.services import token_create
org = Organization.objects.create(name="Proxy Hospital", slug="proxy-hospital")
_, secret = token_create(org=org, name="t", scopes=[s.value for s in Scope], actor=Actor.system("t"))
sys.stdout.write(secret)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = proxy.find_nginx()
    require_service("nginx", nginx is not None, "no nginx binary (Debian package nginx)")
    base = tmp_path_factory.mktemp("proxy")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "saas.settings.base",
        "DEBUG": "0",
        "SECRET_KEY": "strata-proxy-test-secret-key-0123456789abcdef",
        "DATABASE_URL": f"sqlite:///{base / 'db.sqlite3'}",
        "ARCHIVE_BACKEND": "FILESYSTEM",
        "ARCHIVE_ROOT": str(base / "archive"),
        "ARCHIVE_SPOOL_ROOT": str(base / "spool"),
        "CELERY_BROKER_URL": "memory://",
        "SECURE_SSL_REDIRECT": "0",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    seeded = subprocess.run(  # noqa: S603
        [sys.executable, "-c", SEED], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert seeded.returncode == 0, seeded.stderr.decode()[-2000:]
    port = free_port()
    access_log = base / "access.log"
    with override_settings(WEB_CLIENT_TIMEOUT_SECONDS=TIMEOUT, WEB_TRUSTED_PROXIES=[TRUSTED_PROXY]):
        commands = serve.web_commands(
            f"127.0.0.1:{port}",
            nginx=nginx,
            var_dir=base / "var",
            options=ProxySettings.from_settings(),
            workers=1,
            threads=2,
            access_log=str(access_log),
        )
    output = open(base / "server.log", "wb")  # noqa: SIM115 - closed below
    processes = {
        name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)  # noqa: S603
        for name, command in commands.items()
    }
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                pytest.fail(
                    f"the stack did not start:\n{(base / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield Stack(url, port, access_log, seeded.stdout.decode(), processes)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        output.close()


def _seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads and discards what it answers)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return limit
    except ConnectionResetError:
        pass
    return time.monotonic() - started


SILENT_CLIENTS = {
    "sends nothing": b"",
    "stops in the header": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n",
    "stops in the body": (
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nxx"
    ),
    "idle after an answer": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
}


def test_clients_that_stop_sending_are_dropped_after_the_timeout(stack):
    def lifetime(sent: bytes) -> float:
        with socket.create_connection(("127.0.0.1", stack.port)) as sock:
            sock.sendall(sent)
            return _seconds_until_closed(sock, TIMEOUT + 5)

    # All at once: each waits the whole timeout.
    with ThreadPoolExecutor(len(SILENT_CLIENTS)) as pool:
        waited = dict(zip(SILENT_CLIENTS, pool.map(lifetime, SILENT_CLIENTS.values()), strict=True))
    assert all(seconds < TIMEOUT + 2 for seconds in waited.values()), waited
    assert all(seconds > TIMEOUT - 1 for seconds in waited.values()), waited


def test_slow_clients_do_not_stop_healthz(stack):
    """20 clients announce 2 GB and send a byte every half second; gunicorn has 2 threads."""
    stop = threading.Event()
    connected = threading.Barrier(21)

    def slow_client() -> None:
        with socket.create_connection(("127.0.0.1", stack.port)) as sock:
            sock.sendall(
                b"POST /dicomweb/studies HTTP/1.1\r\nHost: localhost\r\n"
                b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
                b"Content-Length: 2000000000\r\n\r\n"
            )
            connected.wait(timeout=10)
            while not stop.wait(0.5):
                sock.sendall(b"x")

    clients = [threading.Thread(target=slow_client, daemon=True) for _ in range(20)]
    for client in clients:
        client.start()
    try:
        connected.wait(timeout=10)
        time.sleep(1)  # every slow client is now sending its body
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            answer = requests.get(f"{stack.url}/healthz", timeout=5)
            latencies.append(time.monotonic() - started)
            assert answer.status_code == 200
        assert max(latencies) < 1.0, latencies
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=5)


def _stow_one(stack: Stack) -> tuple[str, str]:
    """STOW-RS one synthetic instance through nginx; returns (patient name, study UID)."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, to_bytes

    spec = study_spec("CT")
    ds = make_instance(spec, series_uid=generate_uid(), rows=16, columns=16)
    body = io.BytesIO()
    body.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
    body.write(to_bytes(ds))
    body.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=body.getvalue(),
        headers={
            "Authorization": f"Bearer {stack.token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:500]
    return spec.patient_name, spec.study_uid


def _study_url(
    stack: Stack, patient_name: str, headers: dict[str, str], source: str = "127.0.0.1"
) -> requests.Response:
    """QIDO-RS for ``patient_name`` through nginx, connecting from ``source``."""
    with requests.Session() as session:
        session.mount("http://", _FromAddress(source))
        return session.get(
            f"{stack.url}/dicomweb/studies",
            params={"PatientName": patient_name},
            headers={
                "Authorization": f"Bearer {stack.token}",
                "Accept": "application/dicom+json",
                **headers,
            },
            timeout=30,
        )


class _FromAddress(requests.adapters.HTTPAdapter):
    """Connects from ``source`` (127.0.0.2 plays the trusted load balancer)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def _retrieve_url(answer: requests.Response) -> str:
    assert answer.status_code == 200, answer.text[:500]
    studies = answer.json()
    assert len(studies) == 1
    return str(studies[0]["00081190"]["Value"][0])


def test_requests_pass_through_with_the_scheme_and_host_django_must_see(stack):
    patient_name, study_uid = _stow_one(stack)
    host = f"localhost:{stack.port}"
    claims = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}

    # A client cannot claim HTTPS (nor another address): nginx replaces the headers.
    answer = _study_url(stack, patient_name, {"Host": host, **claims})
    assert _retrieve_url(answer) == f"http://{host}/dicomweb/studies/{study_uid}"
    # The trusted load balancer can: it terminated TLS.
    answer = _study_url(stack, patient_name, {"Host": host, **claims}, source=TRUSTED_PROXY)
    assert _retrieve_url(answer) == f"https://{host}/dicomweb/studies/{study_uid}"
    # A Host without a port (dicomweb-client sends none): links name the port nginx listens on,
    # whatever port a client claims; the trusted load balancer says which port it listens on.
    answer = _study_url(stack, patient_name, {"Host": "localhost", "X-Forwarded-Port": "9"})
    assert _retrieve_url(answer) == f"http://{host}/dicomweb/studies/{study_uid}"
    answer = _study_url(
        stack, patient_name, {"Host": "localhost", "X-Forwarded-Port": "8443"}, TRUSTED_PROXY
    )
    assert _retrieve_url(answer) == f"http://localhost:8443/dicomweb/studies/{study_uid}"
    # The Host reaches Django as the client sent it, and is checked there.
    answer = _study_url(stack, patient_name, {"Host": "evil.example"})
    assert answer.status_code == 400

    log = stack.access_log.read_text()
    assert "GET /dicomweb/studies HTTP/1.1" in log
    assert "PatientName" not in log
    assert patient_name.split("^")[0] not in log
    lines = [line for line in log.splitlines() if "GET /dicomweb/studies" in line]
    # nginx took the client's address from the trusted load balancer only.
    assert lines[0].startswith("127.0.0.1 ")
    assert lines[1].startswith("203.0.113.7 ")


def test_chunked_stow_and_streamed_wado_pass_through(stack):
    """A STOW-RS body sent in chunked transfer encoding reaches gunicorn whole; a WADO-RS
    retrieve comes back whole through nginx's response buffering."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, to_bytes

    spec = study_spec("CT")
    dicom = to_bytes(make_instance(spec, series_uid=generate_uid(), rows=256, columns=256))
    parts = [
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
        dicom,
        f"\r\n--{BOUNDARY}--\r\n".encode(),
    ]
    headers = {"Authorization": f"Bearer {stack.token}"}
    answer = requests.post(
        f"{stack.url}/dicomweb/studies",
        data=iter(parts),  # a generator: requests sends it chunked
        headers={
            **headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:500]
    retrieved = requests.get(
        f"{stack.url}/dicomweb/studies/{spec.study_uid}",
        headers={**headers, "Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    assert retrieved.status_code == 200
    assert dicom in retrieved.content


def test_nginx_answers_json_when_the_body_is_too_large(stack):
    with socket.create_connection(("127.0.0.1", stack.port)) as sock:
        sock.sendall(
            b"POST /dicomweb/studies HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/dicom\r\nContent-Length: 5368709120\r\n\r\n"
        )
        sock.settimeout(5)
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"application/json" in head
    assert "larger than this server accepts" in json.loads(body)["detail"]
