"""Outgoing connections to tenant-supplied hosts: only to the address that was checked.

A tenant can make the platform connect to a host of its choice (webhook URLs, the S3 endpoint of
a hospital bucket, a bucket to import from). Without care that is server-side request forgery:
the platform's own network, loopback services and the cloud's metadata service are one URL away.
The rules, which every such connection follows:

- A host is a DNS name or a canonical IP literal. Numbers written the way ``inet_aton`` also
  reads them (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) and IPv6 zone ids
  (``fe80::1%eth0``) are refused outright, so that what is checked is what any library connects to.
- The host is resolved once per connection, and every address it resolves to must be globally
  routable (``address_problem``). Addresses that carry an IPv4 address inside (IPv4-mapped,
  IPv4-compatible, 6to4, NAT64, Teredo) are judged by that IPv4 address as well.
- The socket then connects to one of exactly those checked addresses (``connect``); TLS still
  verifies the certificate against the host name, and the Host header names it. A name that
  answers a public address to the check and 127.0.0.1 to the connection (DNS rebinding) therefore
  never reaches 127.0.0.1: there is no second lookup.
- Connections go direct, never through an environment proxy (a proxy would be the one to connect).
- ``allow_private`` (set from WEBHOOK_ALLOW_PRIVATE_ADDRESSES or ARCHIVE_ALLOW_PRIVATE_ENDPOINTS,
  for test and on-premises setups) skips only the "globally routable" rule; the connection is still
  pinned to the address resolved for it.

``GuardedConnectionMixin`` puts these rules into urllib3 connections (used by requests and by
botocore); ``guarded_session`` is a requests session built on it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import parse_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (family, type, proto, canonname, sockaddr) as socket.getaddrinfo answers.
AddrInfo = tuple[Any, Any, int, str, Any]


class AddressRefused(ValueError):
    """The host may not be connected to; the message says why, for the tenant to read.

    When the refusal is about an address the host resolved to, ``host``, ``address`` and ``kind``
    (why it is not public) are set, for callers that word the message for their field.
    """

    def __init__(self, message: str, *, host: str = "", address: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.host, self.address, self.kind = host, address, kind


# Ranges that Python's ``is_global`` (3.11) calls global although no tenant host lives there, or
# that we refuse whatever a Python version says: shared address space (carrier-grade NAT; one
# cloud's metadata service is at 100.100.100.200), the 6to4 relay anycast, benchmarking, IPv6
# site-local (deprecated, routed inside sites), the NAT64 local-use prefix, discard-only and
# documentation prefixes.
_NOT_PUBLIC: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "'this network'"),
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space (100.64.0.0/10)"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments"),
    (ipaddress.ip_network("192.88.99.0/24"), "6to4 relay anycast"),
    (ipaddress.ip_network("198.18.0.0/15"), "benchmarking"),
    (ipaddress.ip_network("255.255.255.255/32"), "broadcast"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64"),
    (ipaddress.ip_network("100::/64"), "discard-only"),
    (ipaddress.ip_network("2001:db8::/32"), "documentation"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

# What inet_aton (and so getaddrinfo, curl, requests) reads as an IPv4 address: one to four parts,
# each decimal, octal (leading 0) or hexadecimal (0x), optionally a trailing dot; more parts are
# no DNS name either.
_NUMERIC_HOST = re.compile(r"^((0x[0-9a-f]*|[0-9]+)\.)*(0x[0-9a-f]*|[0-9]+)\.?$", re.I)


def _kind(address: IPAddress) -> str | None:
    """Why ``address`` on its own (not what it embeds) is not a public unicast address."""
    for network, label in _NOT_PUBLIC:
        if address.version == network.version and address in network:
            return label
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    for failed, label in checks:
        if failed:
            return label
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address carries, with the name of the embedding."""
    found: list[tuple[ipaddress.IPv4Address, str]] = []
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append((address.ipv4_mapped, "IPv4-mapped"))
    elif address in _IPV4_TRANSLATED:
        found.append((low32, "IPv4-translated"))
    elif address in _NAT64:
        found.append((low32, "NAT64"))
    elif address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append((low32, "IPv4-compatible"))
    if address.sixtofour is not None:
        found.append((address.sixtofour, "6to4"))
    if address.teredo is not None:
        server, client = address.teredo
        found += [(server, "Teredo server"), (client, "Teredo client")]
    return found


def address_problem(address: IPAddress) -> str | None:
    """Why the platform must not connect to ``address``, or None if it is globally routable.

    ``ipaddress.is_global`` alone is not enough: Python 3.11 calls 6to4 ``2002:7f00:1::``, NAT64
    ``64:ff9b::7f00:1``, IPv4-compatible ``::7f00:1`` and multicast global. An IPv6 address that
    embeds an IPv4 address is refused when either is not public.
    """
    if isinstance(address, ipaddress.IPv6Address):
        for inner, embedding in _embedded_ipv4(address):
            inner_kind = _kind(inner)
            if inner_kind:
                return f"{embedding} address of {inner}, which is {inner_kind}"
        if address.ipv4_mapped is not None or address in _NAT64:
            return None  # only a way of writing the IPv4 address the connection goes to
    return _kind(address)


def host_problem(host: str) -> str | None:
    """Why ``host`` (a URL's host, brackets removed) is refused before any lookup, or None."""
    if not host:
        return "Enter a host name."
    if not host.isascii():
        return f"Write the host {host} in its ASCII (xn--) form."
    if "%" in host:
        return f"The host {host} has an IPv6 zone id; zone ids name local interfaces only."
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"The host {host} is not a valid IPv6 address."
        return None
    if _NUMERIC_HOST.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            pass
        else:
            return None
        try:
            meant = f" (read as {socket.inet_ntoa(socket.inet_aton(host.rstrip('.')))})"
        except OSError:
            meant = ""
        return (
            f"The host {host} is an IP address in a non-standard form{meant}; write an IPv4 "
            "address as four decimal numbers without leading zeros (a.b.c.d), or use a host name."
        )
    return None


def _address_of(sockaddr: Any) -> IPAddress:
    # A zone id ("fe80::1%eth0") only comes with link-local addresses, which are refused anyway.
    return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])


def resolve(host: str, port: int, *, allow_private: bool) -> list[AddrInfo]:
    """Resolve ``host`` once; every address must pass ``address_problem`` unless private is allowed.

    Returns getaddrinfo's answers (TCP only) for ``connect``. Raises ``AddressRefused``.
    """
    problem = host_problem(host)
    if problem:
        raise AddressRefused(problem)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise AddressRefused(f"The host {host} cannot be resolved.") from None
    infos = [info for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not infos:
        raise AddressRefused(f"The host {host} has no IPv4 or IPv6 address.")
    if not allow_private:
        for info in infos:
            address = _address_of(info[4])
            kind = address_problem(address)
            if kind:
                raise AddressRefused(
                    f"The host {host} resolves to {address} ({kind}), a private or internal "
                    "address; only public addresses may be used.",
                    host=host,
                    address=str(address),
                    kind=kind,
                )
    return infos


def url_check(url: str, *, allow_private: bool, lookup: bool = True) -> None:
    """Refuse ``url`` unless it is http(s) with a host that passes ``resolve``.

    With ``allow_private`` (or without ``lookup``) only the URL's form is checked: a host that
    does not resolve yet is accepted, as it always was in such setups.

    Raises ``AddressRefused``. The check at saving time gives the tenant a clear answer early;
    what protects the platform is that the connection itself goes through ``resolve`` again and
    connects to exactly what that answered.
    """
    try:
        parts = urlsplit(url or "")
        port = parts.port
    except ValueError:
        raise AddressRefused(
            "Enter an http:// or https:// URL with a valid host and port."
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("Enter an http:// or https:// URL with a host name.")
    host = parts.hostname
    problem = host_problem(host)
    if problem:
        raise AddressRefused(problem)
    # requests and botocore parse with urllib3 and urllib; a URL they read differently
    # ("http://a.example\\@127.0.0.1/") is refused instead of checked for the wrong host.
    try:
        other = (parse_url(url).host or "").strip("[]").lower()
    except ValueError:
        other = ""
    if other != host.lower():
        raise AddressRefused("The URL's host is ambiguous; enter a plain http(s)://host/path URL.")
    if lookup and not allow_private:
        resolve(host, port or (443 if parts.scheme == "https" else 80), allow_private=allow_private)


def _connect_address(info: AddrInfo, timeout: Any, source_address: Any, options: Any) -> Any:
    """Open a TCP connection to one checked address (a seam for tests that have no network)."""
    family, socktype, proto, _, sockaddr = info
    sock = socket.socket(family, socktype, proto)
    try:
        for option in options or ():
            sock.setsockopt(*option)
        if isinstance(timeout, int | float):
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(
    infos: list[AddrInfo],
    *,
    timeout: Any = None,
    source_address: Any = None,
    socket_options: Any = None,
) -> Any:
    """Connect to the first of the checked addresses that answers; never resolves again."""
    error: OSError | None = None
    for info in infos:
        try:
            return _connect_address(info, timeout, source_address, socket_options)
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


class GuardedConnectionMixin:
    """For urllib3 connection classes: resolve, check and connect to the checked address.

    Subclasses name the setting that allows private addresses (read at every connection, so that
    a process-wide client follows the setting). ``AddressRefused`` leaves ``_new_conn`` as it is
    (not an OSError), so that nothing retries it as a network failure.
    """

    allow_private_setting = ""

    def _new_conn(self) -> Any:
        conn: Any = self
        if conn.proxy is not None or conn._tunnel_host:
            raise AddressRefused("Connections to this host are made directly, never via a proxy.")
        host = conn._dns_host.rstrip(".")
        allow_private = bool(getattr(settings, self.allow_private_setting, False))
        infos = resolve(host, conn.port, allow_private=allow_private)
        try:
            return connect(
                infos,
                timeout=conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


def guarded_session(*, allow_private_setting: str) -> requests.Session:
    """A requests session whose every connection follows the rules above.

    No environment proxies (``trust_env`` off) and no netrc. The caller still passes
    ``allow_redirects=False`` or checks each hop: a redirect is a new connection and is checked
    like the first, but a tenant should not be able to bounce the platform around either way.
    """

    class _HTTP(GuardedConnectionMixin, HTTPConnection):
        pass

    class _HTTPS(GuardedConnectionMixin, HTTPSConnection):
        pass

    _HTTP.allow_private_setting = _HTTPS.allow_private_setting = allow_private_setting

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTP

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPS

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

        def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
            raise AddressRefused("Connections to this host are made directly, never via a proxy.")

    session = requests.Session()
    session.trust_env = False
    adapter = _Adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
