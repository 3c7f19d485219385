"""A DNS that rebinds, for the SSRF tests of webhooks, storage locations and bucket imports.

``Rebinding`` answers every name with a public address for the first ``honest`` lookups and with
127.0.0.1 afterwards, as an attacker's DNS server with a zero TTL does. IP literals resolve as
usual. The test machine has no route to the public address, so connecting to it is simulated as
"connection refused" (at ``tenants.netguard._connect_address``, where the guarded connection opens
its socket); connections to anything else are real. ``connects`` records every address a guarded
connection opened a socket to.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tenants import netguard

PUBLIC = "93.184.215.14"  # a globally routable address (example.com's)


class Rebinding:
    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, *, honest: int, then: str = "127.0.0.1"
    ) -> None:
        self.honest = honest
        self.then = then
        self.lookups: list[str] = []
        self.connects: list[str] = []
        real_getaddrinfo = socket.getaddrinfo
        real_connect = netguard._connect_address

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                ipaddress.ip_address(str(host))
            except ValueError:
                self.lookups.append(str(host))
                answer = PUBLIC if len(self.lookups) <= self.honest else self.then
                return real_getaddrinfo(answer, port, *args, **kwargs)
            return real_getaddrinfo(host, port, *args, **kwargs)

        def connect(info: Any, *args: Any) -> Any:
            address = str(info[4][0])
            self.connects.append(address)
            if address == PUBLIC:
                raise ConnectionRefusedError(111, "Connection refused (no route in tests)")
            return real_connect(info, *args)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(netguard, "_connect_address", connect)


class CountingServer:
    """An HTTP server on 127.0.0.1 that records requests; answers a secret body (DELETE: 204)."""

    BODY = b"internal-secret-from-loopback"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests.append((self.command, self.path, self.headers.get("Host", "")))
                body = b"" if self.command in ("DELETE", "HEAD") else CountingServer.BODY
                self.send_response(204 if self.command == "DELETE" else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def loopback_server_running() -> Iterator[CountingServer]:
    """For a test module's ``loopback_server`` fixture: ``yield from loopback_server_running()``."""
    server = CountingServer()
    yield server
    server.close()


# Hosts that must never be connected to, written every way a URL can carry them (issue 11 item 6),
# with what they mean. Literals need no DNS; a name is answered by ``Rebinding`` (see tests).
REFUSED_HOSTS = [
    ("2130706433", "decimal 127.0.0.1"),
    ("0177.0.0.1", "octal 127.0.0.1"),
    ("0x7f.1", "hex short 127.0.0.1"),
    ("0x7f000001", "hex 127.0.0.1"),
    ("127.1", "short 127.0.0.1"),
    ("127.0.0.1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("[::1]", "IPv6 loopback"),
    ("[::]", "IPv6 unspecified"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped loopback"),
    ("[::ffff:a9fe:a9fe]", "IPv4-mapped metadata"),
    ("[::7f00:1]", "IPv4-compatible loopback"),
    ("[2002:7f00:1::]", "6to4 of 127.0.0.1"),
    ("[2002:a9fe:a9fe::1]", "6to4 of 169.254.169.254"),
    ("[64:ff9b::7f00:1]", "NAT64 of 127.0.0.1"),
    ("[64:ff9b::a64:6464]", "NAT64 of 10.100.100.100"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "Teredo client 127.0.0.1"),
    ("100.64.0.1", "shared address space"),
    ("100.100.100.200", "a cloud's metadata service"),
    ("169.254.169.254", "link-local metadata service"),
    ("[fe80::1]", "IPv6 link-local"),
    ("[fe80::1%25eth0]", "IPv6 link-local with a zone id"),
    ("10.0.0.5", "private"),
    ("[fd00::1]", "IPv6 unique local"),
    ("[fec0::1]", "IPv6 site-local"),
    ("224.0.0.1", "multicast"),
    ("233.252.0.1", "multicast that Python 3.11 calls global"),
    ("[ff02::1]", "IPv6 multicast"),
    ("255.255.255.255", "broadcast"),
]
REFUSED_IDS = [label for _, label in REFUSED_HOSTS]
