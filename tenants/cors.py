"""CORS: which browser origins may call the bearer-token APIs (DICOMweb and REST), per organization.

django-cors-headers writes the headers (the ``CORS_*`` settings: which paths, which headers are
allowed and exposed, no credentials); this module decides, through its ``check_request_enabled``
signal, whether a request's ``Origin`` is allowed:

- A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) carries no credentials, and a
  DICOMweb URL names no organization (the token does): it is allowed when some organization allows
  the origin. It reveals no data, only that some organization uses that viewer.
- Every other request gets ``Access-Control-Allow-Origin`` only when the organization of its
  bearer token allows the origin. A request without a valid token (a 401) gets no CORS header:
  a browser then hides the answer from the page.
- Nothing else is ever CORS-enabled: the portal and the session API (``/api/v1/o/<slug>/``)
  run on cookies, so no origin may read them.

Origins are stored normalized (``origin_normalize``), as browsers send them, so that the header
compares as a string. Both look-ups are cached for ``CACHE_SECONDS`` (a preflight costs at most one
indexed query, usually none); a change deletes the cache entries it affects once committed. With
Redis (``REDIS_URL``) every web process sees a change at once; with the in-process cache, other
processes see it within ``CACHE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

from corsheaders.signals import check_request_enabled
from django.conf import settings
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest

from tenants.errors import ValidationFailed
from tenants.models import ApiToken, CorsOrigin

# Origins one organization may list: each is a viewer deployment, a handful in practice.
MAX_ORIGINS_PER_ORGANIZATION = 50
ORIGIN_MAX_LENGTH = 300  # the model's column
CACHE_SECONDS = 60
EXAMPLE = "https://viewer.example.org"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IPV4_LIKE = re.compile(r"[0-9.]+")


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_origin", fields={"origin": [message]})


def _host_normalize(host: str) -> str:
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _invalid(f"{host!r} is not a valid IPv6 address.") from None
        return f"[{address.compressed}]"
    host = host.lower()
    if not host:
        raise _invalid(f"An origin names a host: {EXAMPLE}.")
    if _IPV4_LIKE.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _invalid(f"{host!r} is not a valid IPv4 address.") from None
    if host.endswith("."):
        raise _invalid(f"Remove the final dot of {host!r}: browsers send the host name without it.")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _invalid(
            f"{host!r} is not a valid host name: letters, digits and hyphens, "
            "in labels of at most 63 characters separated by dots."
        )
    if labels[-1].isdigit():
        raise _invalid(f"{host!r} is not a valid host name: its last label is a number.")
    return host


def origin_normalize(value: str) -> str:
    """``value`` as a browser's ``Origin`` header carries it: ``scheme://host[:port]``, lower case,
    the scheme's default port dropped. Raises ``ValidationFailed`` (field ``origin``) saying what
    is wrong: only http and https, no path, query, fragment, user name or wildcard."""
    raw = str(value or "").strip()
    if not raw:
        raise _invalid(f"Enter an origin such as {EXAMPLE}.")
    if len(raw) > ORIGIN_MAX_LENGTH:
        raise _invalid(f"An origin is at most {ORIGIN_MAX_LENGTH} characters long.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw):
        raise _invalid("An origin contains no spaces or control characters.")
    if not raw.isascii():
        raise _invalid(
            "Write an internationalized host name in its ASCII form (xn--…), "
            "as browsers send it in the Origin header."
        )
    if "*" in raw:
        raise _invalid(
            f"Wildcards are not accepted: add each origin the viewer is served from ({EXAMPLE})."
        )
    if raw.lower() == "null":
        raise _invalid(
            "The origin 'null' (sandboxed frames, local files) cannot be allowed: any page can "
            "send it. Serve the viewer from an http(s) origin."
        )
    scheme, separator, rest = raw.partition("://")
    scheme = scheme.lower()
    if not separator:
        raise _invalid(f"An origin starts with https:// or http://, as in {EXAMPLE}.")
    if scheme not in _DEFAULT_PORTS:
        raise _invalid(f"Only http and https origins are accepted, not {scheme[:20]!r}.")
    authority = re.match(r"[^/?#]*", rest)
    authority_text = authority.group(0) if authority else ""
    tail = rest[len(authority_text) :]
    if tail:
        raise _invalid(
            f"An origin has no path, query or fragment: remove {tail[:60]!r} "
            f"({scheme}://{authority_text[:100]})."
        )
    if "@" in authority_text:
        raise _invalid("An origin has no user name or password.")
    if authority_text.startswith("["):
        end = authority_text.find("]")
        if end < 0:
            raise _invalid(f"{authority_text!r} is not a valid IPv6 address: ']' is missing.")
        host, after = authority_text[: end + 1], authority_text[end + 1 :]
        if after and not after.startswith(":"):
            raise _invalid(f"Unexpected {after!r} after the IPv6 address.")
        port_text: str | None = after[1:] if after else None
    else:
        host, colon, port_part = authority_text.partition(":")
        port_text = port_part if colon else None
    host = _host_normalize(host)
    port = ""
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
            raise _invalid(f"The port {port_text[:10]!r} is not a number from 1 to 65535.")
        if int(port_text) != _DEFAULT_PORTS[scheme]:
            port = f":{int(port_text)}"
    return f"{scheme}://{host}{port}"


def request_origin(header: str | None) -> str | None:
    """A request's ``Origin`` header, or None when it is not an origin that could be allowed.

    Browsers send the origin already serialized as ``origin_normalize`` writes it; anything else
    (other case, a default port, white space) comes from some other client and is not matched.
    """
    if not header:
        return None
    try:
        normalized = origin_normalize(header)
    except ValidationFailed:
        return None
    return normalized if normalized == header else None


# --- look-ups, cached ----------------------------------------------------------------------------


def _anywhere_key(origin: str) -> str:
    # Platform-wide by nature (a preflight has no organization); the digest bounds the key length.
    return "cors:any:" + hashlib.sha256(origin.encode()).hexdigest()[:40]


def _organization_key(organization_id: int) -> str:
    return f"cors:org:{organization_id}"


def origin_allowed_anywhere(origin: str) -> bool:
    """Does any organization allow ``origin`` (normalized)? One indexed query on a cache miss."""
    key = _anywhere_key(origin)
    cached = cache.get(key)
    if cached is not None:
        return bool(cached)
    allowed = CorsOrigin.objects.filter(origin=origin).exists()
    cache.set(key, allowed, CACHE_SECONDS)
    return allowed


def organization_origins(organization_id: int) -> frozenset[str]:
    """The origins one organization allows. One indexed query on a cache miss."""
    key = _organization_key(organization_id)
    cached = cache.get(key)
    if cached is None:
        cached = list(CorsOrigin.objects.for_org(organization_id).values_list("origin", flat=True))
        cache.set(key, cached, CACHE_SECONDS)
    return frozenset(cached)


def cache_invalidate(*, organization_id: int, origin: str) -> None:
    """Forget what the cache says about ``origin`` and the organization's list; call it once the
    change is committed (a reader in between would cache the old state again)."""
    cache.delete_many([_anywhere_key(origin), _organization_key(organization_id)])


# --- the decision --------------------------------------------------------------------------------


def _is_preflight(request: HttpRequest) -> bool:
    return request.method == "OPTIONS" and "access-control-request-method" in request.headers


@receiver(check_request_enabled)
def cors_request_allowed(sender: Any, request: HttpRequest, **kwargs: Any) -> bool:
    """django-cors-headers asks whether ``request`` may be answered with CORS headers.

    It asks before the view (for paths outside ``CORS_URLS_REGEX``: never) and after it (for the
    ``Origin``): by then DRF has set ``request.auth`` to the bearer token it authenticated.
    """
    if not re.match(settings.CORS_URLS_REGEX, request.path_info):
        return False
    origin = request_origin(request.headers.get("Origin"))
    if origin is None:
        return False
    if _is_preflight(request):
        return origin_allowed_anywhere(origin)
    token = getattr(request, "auth", None)
    if not isinstance(token, ApiToken):
        return False
    return origin in organization_origins(token.organization_id)
