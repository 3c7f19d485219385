"""Every setting that comes from the environment is read here, and only here.

A bad value stops the process at start-up with an ``ImproperlyConfigured`` that names the
variable and says what was expected, instead of failing later on a request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_env = environ.Env()

# The embedded defaults: a machine with only Python gets a working system.
DEFAULT_VAR_DIR = BASE_DIR / "var"
INSECURE_DEV_KEY = "strata-insecure-development-key-do-not-use-in-production"  # noqa: S105
# The embedded broker is a folder (see CELERY_BROKER_TRANSPORT_OPTIONS). It names a host although
# it needs none: without one, kombu warns "No hostname was supplied" each time it describes the
# connection (worker and beat start-up, every publish).
EMBEDDED_BROKER_URL = "filesystem://localhost/"
# The local settings file `make run` writes (saas/localenv.py); STRATA_ENV_FILE names another.
DEFAULT_ENV_FILE = BASE_DIR / ".env"
DEFAULT_ADDR = "127.0.0.1:8000"


def _fail(name: str, expected: str, value: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"Environment variable {name}={value!r} is invalid: expected {expected}."
    )


def env_file_read() -> Path | None:
    """Read the local settings file into the environment; variables already set there win.

    So that the commands of the README work as written after ``make run`` in this checkout
    (``manage.py create_token`` needs the DEBUG and SECRET_KEY the server runs with).
    ``STRATA_ENV_FILE`` names another file; set to an empty value it reads none. The default file
    may be missing (a production host sets its environment), a named one may not.
    """
    named = os.environ.get("STRATA_ENV_FILE")
    if named == "":
        return None
    path = Path(named).expanduser() if named else DEFAULT_ENV_FILE
    if not path.is_file():
        if named:
            raise _fail(
                "STRATA_ENV_FILE", "the path of an existing file (or empty for none)", named
            )
        return None
    environ.Env.read_env(path, overwrite=False)
    return path


ENV_FILE = env_file_read()


def raw(name: str) -> str | None:
    return _env.str(name, default=None)


def string(name: str, default: str) -> str:
    value = raw(name)
    return default if value in (None, "") else str(value)


def boolean(name: str, default: bool) -> bool:
    value = raw(name)
    if value in (None, ""):
        return default
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise _fail(name, "a boolean (1/0, true/false, yes/no, on/off)", str(value))


def integer(name: str, default: int, *, minimum: int | None = None) -> int:
    value = raw(name)
    if value in (None, ""):
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _fail(name, "an integer", str(value)) from None
    if minimum is not None and number < minimum:
        raise _fail(name, f"an integer >= {minimum}", str(value))
    return number


def choice(name: str, default: str, choices: list[str]) -> str:
    value = string(name, default).upper()
    if value not in choices:
        raise _fail(name, "one of " + ", ".join(choices), value)
    return value


def path(name: str, default: Path) -> Path:
    value = raw(name)
    return default if value in (None, "") else Path(str(value)).expanduser().resolve()


def csv_list(name: str, default: list[str]) -> list[str]:
    value = raw(name)
    if value in (None, ""):
        return list(default)
    return [item.strip() for item in str(value).split(",") if item.strip()]


def ae_title(name: str, default: str) -> str:
    """A DICOM AE title (PS3.5: 1-16 characters of the default repertoire, no backslash)."""
    value = string(name, default).strip()
    if not 1 <= len(value) <= 16 or not all(" " <= ch <= "~" and ch != "\\" for ch in value):
        raise _fail(name, "an AE title of 1-16 printable ASCII characters, no backslash", value)
    return value


def optional_file(name: str) -> str:
    """The path of an existing file, or "" when unset."""
    value = raw(name)
    if value in (None, ""):
        return ""
    found = Path(str(value)).expanduser().resolve()
    if not found.is_file():
        raise _fail(name, "the path of an existing file", str(value))
    return str(found)


def database(name: str, default: str) -> dict[str, Any]:
    url = string(name, default)
    try:
        config = environ.Env.db_url_config(url)
    except Exception as exc:  # django-environ raises several types for a malformed URL
        raise _fail(name, "a database URL such as postgres://user@host:5432/db", url) from exc
    if not config.get("ENGINE") or not config.get("NAME"):
        raise _fail(name, "a database URL such as postgres://user@host:5432/db", url)
    return dict(config)


def email(name: str, default: str) -> dict[str, Any]:
    url = string(name, default)
    try:
        return dict(environ.Env.email_url_config(url))
    except Exception as exc:
        raise _fail(
            name, "an email URL such as smtp://user:pass@host:587 or consolemail://", url
        ) from exc


def redis_url(name: str) -> str | None:
    value = raw(name)
    if value in (None, ""):
        return None
    if not str(value).startswith(("redis://", "rediss://", "unix://")):
        raise _fail(name, "a Redis URL such as redis://127.0.0.1:6379/0", str(value))
    return str(value)


def throttle_rate(name: str, default: str) -> str:
    value = string(name, default)
    count, _, period = value.partition("/")
    if not count.isdigit() or period not in {"s", "sec", "m", "min", "h", "hour", "d", "day"}:
        raise _fail(name, "a rate such as 1200/min (count/s|min|hour|day)", value)
    return value


def public_base_url(name: str) -> str:
    """The URL clients reach this server at (``https://pacs.example.org``, optionally with a path
    prefix), without a trailing slash; "" when unset.

    Absolute URLs in answers (DICOMweb's BulkDataURI, Location, RetrieveURL) are built from it
    instead of the request's Host header.
    """
    value = string(name, "").strip()
    if not value:
        return ""
    expected = "an absolute http(s) URL such as https://pacs.example.org, without query or fragment"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError:
        raise _fail(name, expected, value) from None
    if (
        parts.scheme.lower() not in {"http", "https"}
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or value.endswith("?")
        or value.endswith("#")
        or any(ch.isspace() for ch in value)
        or port == 0
    ):
        raise _fail(name, expected, value)
    return value.rstrip("/")


def secret_key(debug: bool) -> str:
    value = raw("SECRET_KEY")
    if value:
        if len(value) < 32:
            raise _fail("SECRET_KEY", "at least 32 characters", "<hidden>")
        return str(value)
    if debug:
        return INSECURE_DEV_KEY
    raise ImproperlyConfigured("Environment variable SECRET_KEY is required when DEBUG is off.")


def email_settings(name: str, *, debug: bool, file_dir: Path) -> dict[str, Any]:
    """Django's EMAIL_* settings from ``name`` (an email URL), or the default for the mode.

    Unset: the console in DEBUG (``make run``), otherwise files under ``file_dir``: an invitation
    or password-reset link is a credential and must not land in the server log. ``filemail:///abs``
    keeps its absolute path (django-environ drops the leading slash); ``filemail://`` means
    ``file_dir``.
    """
    url = string(name, "")
    if not url:
        if debug:
            return email(name, "consolemail://")
        url = "filemail://"
    config = email(name, url)
    if url.startswith("filemail://"):
        location = url[len("filemail://") :]
        config["EMAIL_FILE_PATH"] = str(
            Path(location).expanduser().resolve() if location else file_dir
        )
    return config


ADDR_EXPECTED = "host:port such as 127.0.0.1:8000, 0.0.0.0:8080 or [::1]:8000, or unix:/path"
# A server listening on these is reached on this machine as localhost.
_LOCAL_HOSTS = {"127.0.0.1", "::1", "0.0.0.0", "::", "localhost"}  # noqa: S104 - names, not binds


def address_split(addr: str) -> tuple[str, int]:
    """The host and port of a listen address ``host:port`` (``[::1]:port`` for IPv6).

    Raises ``ValueError`` for anything else, so that a typo is refused before a server starts.
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(addr)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # a bare IPv6 address: which colon starts the port is a guess
        raise ValueError(addr)
    if not host or any(ch.isspace() or ch in "/?#@[]" for ch in host):
        raise ValueError(addr)
    return host, int(port)


def nameservers(name: str) -> list[tuple[str, int]]:
    """DNS servers as ``ip[:port]`` separated by commas (``[v6]:port`` for IPv6); empty: the
    system's resolver."""
    import ipaddress

    found: list[tuple[str, int]] = []
    for item in csv_list(name, []):
        try:
            if item.startswith("[") or item.count(":") == 1:
                host, port = address_split(item)
            else:
                host, port = item, 53
            ipaddress.ip_address(host)
        except ValueError:
            raise _fail(
                name, "DNS server addresses as ip[:port], separated by commas", item
            ) from None
        found.append((host, port))
    return found


def listen_address(name: str, default: str) -> str:
    """The address the web server listens on (``STRATA_ADDR``): ``host:port`` or ``unix:/path``."""
    value = string(name, default).strip()
    if value.startswith("unix:") and len(value) > len("unix:"):
        return value
    try:
        address_split(value)
    except ValueError:
        raise _fail(name, ADDR_EXPECTED, value) from None
    return value


def browse_url(addr: str) -> str | None:
    """The URL a browser on this machine opens for a server listening on ``addr``; None for a
    unix socket. A loopback or every-interface address is named ``localhost``, as in the
    default ``ALLOWED_HOSTS``."""
    if addr.startswith("unix:"):
        return None
    host, port = address_split(addr)
    if host in _LOCAL_HOSTS:
        host = "localhost"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"
