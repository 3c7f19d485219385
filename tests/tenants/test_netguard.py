"""tenants.netguard: which addresses and host forms are refused, and that a guarded connection
goes to the address that was checked (Host header and TLS still name the host)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tenants import netguard
from tenants.netguard import AddressRefused, address_problem, guarded_session, resolve
from tests.tenants.netguard_support import (
    PUBLIC,
    REFUSED_HOSTS,
    REFUSED_IDS,
    CountingServer,
    Rebinding,
    loopback_server_running,
)


@pytest.fixture
def loopback_server() -> Iterator[CountingServer]:
    yield from loopback_server_running()


@pytest.mark.parametrize(("host", "label"), REFUSED_HOSTS, ids=REFUSED_IDS)
def test_every_form_of_an_internal_host_is_refused(host: str, label: str) -> None:
    with pytest.raises(AddressRefused):
        resolve(host.strip("[]").replace("%25", "%"), 80, allow_private=False)


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None
    assert resolve(address, 443, allow_private=False)


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("100.100.100.200", "shared address space (100.64.0.0/10)"),
        ("2002:7f00:1::", "6to4 address of 127.0.0.1, which is loopback"),
        ("64:ff9b::7f00:1", "NAT64 address of 127.0.0.1, which is loopback"),
        ("::ffff:127.0.0.1", "IPv4-mapped address of 127.0.0.1, which is loopback"),
    ],
)
def test_the_reason_names_what_the_address_really_is(address: str, said: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == said


def test_python_calls_some_internal_addresses_global_which_is_not_trusted() -> None:
    # Why netguard does not rely on is_global alone (Python 3.11).
    for lie in ("2002:7f00:1::", "64:ff9b::7f00:1", "::7f00:1", "224.0.0.1", "fec0::1"):
        address = ipaddress.ip_address(lie)
        assert address_problem(address) is not None
    assert not ipaddress.ip_address("100.64.0.1").is_global
    assert address_problem(ipaddress.ip_address("100.64.0.1")) is not None


@pytest.mark.parametrize(
    ("host", "meant"),
    [("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1")],
)
def test_a_non_canonical_number_is_refused_naming_what_it_means(host: str, meant: str) -> None:
    with pytest.raises(AddressRefused, match=f"non-standard form \\(read as {meant}\\)"):
        resolve(host, 80, allow_private=True)  # a form rule: allowing private does not lift it


def test_a_name_with_one_internal_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:169.254.169.254", port, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(AddressRefused) as caught:
        resolve("mixed.example", 443, allow_private=False)
    assert caught.value.address == "::ffff:a9fe:a9fe"
    assert "169.254.169.254, which is link-local" in caught.value.kind


@pytest.mark.parametrize(
    "url",
    [
        "http://a.example\\@127.0.0.1/",  # urllib and urllib3 read different hosts
        "http://[::1/",
        "http://host:99999/",
        "gopher://example.com/",
        "http://ⓛocalhost/",
    ],
)
def test_urls_read_differently_or_badly_are_refused(url: str) -> None:
    with pytest.raises(AddressRefused):
        netguard.url_check(url, allow_private=True)


def test_a_guarded_connection_refuses_a_name_that_now_answers_loopback(
    monkeypatch: pytest.MonkeyPatch, settings: Any, loopback_server: CountingServer
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    dns = Rebinding(monkeypatch, honest=0)
    with (
        guarded_session(allow_private_setting="WEBHOOK_ALLOW_PRIVATE_ADDRESSES") as session,
        pytest.raises(AddressRefused, match="resolves to 127.0.0.1"),
    ):
        session.get(f"http://rebind.example:{loopback_server.port}/", timeout=2)
    assert loopback_server.requests == []
    assert dns.connects == []


def test_a_guarded_connection_goes_to_the_checked_address_only(
    monkeypatch: pytest.MonkeyPatch, settings: Any, loopback_server: CountingServer
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    dns = Rebinding(monkeypatch, honest=1)  # public to the one lookup, loopback to any later one
    with (
        guarded_session(allow_private_setting="WEBHOOK_ALLOW_PRIVATE_ADDRESSES") as session,
        pytest.raises(requests.ConnectionError),
    ):
        session.get(f"http://rebind.example:{loopback_server.port}/", timeout=2)
    assert dns.connects == [PUBLIC]
    assert loopback_server.requests == []


def test_allowing_private_addresses_still_pins_and_keeps_the_host_header(
    monkeypatch: pytest.MonkeyPatch, settings: Any, loopback_server: CountingServer
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    dns = Rebinding(monkeypatch, honest=0)
    with guarded_session(allow_private_setting="WEBHOOK_ALLOW_PRIVATE_ADDRESSES") as session:
        response = session.get(f"http://hooks.hospital.example:{loopback_server.port}/x")
    assert response.content == CountingServer.BODY
    assert dns.lookups == ["hooks.hospital.example"]
    assert dns.connects == ["127.0.0.1"]
    assert loopback_server.requests == [
        ("GET", "/x", f"hooks.hospital.example:{loopback_server.port}")
    ]


def test_a_proxy_is_never_used(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with (
        guarded_session(allow_private_setting="WEBHOOK_ALLOW_PRIVATE_ADDRESSES") as session,
        pytest.raises(AddressRefused, match="never via a proxy"),
    ):
        session.get("http://hooks.example/", proxies={"http": "http://127.0.0.1:9"})


# --- TLS: pinned to the address, verified against the name ---------------------------------------


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """HTTPS on 127.0.0.1 with a certificate for hooks.hospital.example; records the SNI names."""
    cert, key = _certificate(tmp_path, "hooks.hospital.example")
    server_names: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name or "")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1]), cert, server_names
    httpd.shutdown()
    httpd.server_close()


def test_tls_names_the_host_and_verifies_its_certificate_while_pinned(
    monkeypatch: pytest.MonkeyPatch, settings: Any, tls_server: tuple[int, Path, list[str]]
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    port, cert, server_names = tls_server
    dns = Rebinding(monkeypatch, honest=0)
    with guarded_session(allow_private_setting="WEBHOOK_ALLOW_PRIVATE_ADDRESSES") as session:
        response = session.get(f"https://hooks.hospital.example:{port}/", verify=str(cert))
        assert response.status_code == 204
        assert server_names == ["hooks.hospital.example"]
        # Same address, another name: the certificate does not match, the call fails.
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://other.example:{port}/", verify=str(cert))
    assert dns.connects == ["127.0.0.1", "127.0.0.1"]
