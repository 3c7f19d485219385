"""nginx in front of gunicorn: the buffering reverse proxy ``manage.py serve`` runs.

Why: gunicorn's threads are few (workers x 2). A client that announces a 2 GB body and sends
64 bytes a second holds one of them for hours, and four such clients held them all. nginx reads
every request completely (headers and body, into a temporary file under the var directory)
before gunicorn sees it, and drops a client that sends nothing for ``WEB_CLIENT_TIMEOUT_SECONDS``;
a slow client then costs one nginx connection (a few kilobytes), not a thread.

The config is rendered here from the settings, written under the var directory, and run with
``nginx -p <prefix> -c <file> -e stderr`` so that nginx needs neither root nor /etc/nginx.
``manage.py serve --print-nginx-config`` prints the same config for operators who run their own
nginx.

What must stay true:
- The access log names the path only, never the query string: QIDO-RS queries carry patient
  names and IDs (``PatientName=DOE^JANE``). Hence ``$uri``, never ``$request``/``$request_uri``/
  ``$args``, and no ``$http_referer`` (a portal page's address carries its search).
- The forwarding headers gunicorn and Django trust are set by nginx and overwrite what the
  client sent: ``X-Forwarded-Proto`` is nginx's own scheme unless the connection comes from one
  of ``WEB_TRUSTED_PROXIES`` (a TLS-terminating load balancer), ``X-Real-IP``/``X-Forwarded-For``
  are the client's address as nginx saw it (after the same trusted proxies).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import resource
import shutil
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from gunicorn import glogging

PROXY_MODES = ("auto", "nginx", "none")
# Between two reads from (or writes to) gunicorn. A STOW-RS request is answered only after its
# last instance is stored and indexed, a study ZIP starts after its first object is read from a
# cold tier: minutes, not seconds. gunicorn's own --timeout bounds a stuck worker.
UPSTREAM_TIMEOUT_SECONDS = 600
# A response up to this size is taken from gunicorn at once and fed to a slow reader by nginx
# from a temporary file (the thread is free again); a larger one (a big WADO-RS retrieve) is then
# passed on at the client's pace, and a client that stops reading is dropped after the timeout.
RESPONSE_TEMP_FILE_MAX = "256m"
# A unix socket path must fit sockaddr_un (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100
_SIZE = re.compile(r"^[0-9]+[kKmMgG]?$")

TEMPLATE = """\
# Strata: nginx in front of gunicorn, rendered by saas/proxy.py
# (`manage.py serve --print-nginx-config` prints it). Run: nginx -p {prefix} -c <this file> -e stderr
{user}worker_processes auto;
worker_rlimit_nofile {nofile};
daemon off;
pid {run_dir}/nginx.pid;
# nginx's error messages quote the request line, query string and all (a QIDO-RS query carries
# patient names), and cannot be told otherwise: only messages about nginx itself (alert, emerg)
# are logged. A request's failure is in the access log (502, 504), without the query.
error_log stderr alert;

events {{
    worker_connections {connections};
}}

http {{
    # No mime.types: every answer comes from Django with its own Content-Type.
    default_type application/octet-stream;
    server_tokens off;
    # nginx creates every temporary directory at start: all of them under the var directory.
    client_body_temp_path {temp_dir}/client_body 1 2;
    proxy_temp_path {temp_dir}/proxy 1 2;
    fastcgi_temp_path {temp_dir}/fastcgi;
    uwsgi_temp_path {temp_dir}/uwsgi;
    scgi_temp_path {temp_dir}/scgi;

    # The path without the query string: QIDO-RS queries carry patient names.
    log_format strata '$remote_addr [$time_iso8601] "$request_method $uri $server_protocol" '
                      '$status $body_bytes_sent $request_length $request_time '
                      '"$http_user_agent"';
    access_log {access_log};

    # A client that sends nothing (no request line, no header, no body bytes), or reads nothing
    # of its answer, for this long is dropped; so is an idle kept-alive connection.
    client_header_timeout {timeout}s;
    client_body_timeout {timeout}s;
    send_timeout {timeout}s;
    keepalive_timeout {timeout}s;
    reset_timedout_connection on;

    # Bodies are read completely before gunicorn sees them; above the buffer, into a file.
    client_max_body_size {max_body_size};
    client_body_buffer_size 1m;

{trusted}
    upstream strata_gunicorn {{
        server {upstream};
        keepalive 16;
    }}

    server {{
        listen {listen};
        server_name _;

        # Errors nginx answers itself are JSON, like the application's.
        error_page 413 @strata_413;
        error_page 502 @strata_502;
        error_page 504 @strata_504;

        location / {{
            proxy_pass http://strata_gunicorn;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $strata_forwarded_proto;
            # The port the client connected to (links built from a Host without one).
            proxy_set_header X-Forwarded-Port $strata_forwarded_port;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            # Other spellings gunicorn would also read as the scheme: never from the client.
            proxy_set_header X-Forwarded-Protocol "";
            proxy_set_header X-Forwarded-Ssl "";
            proxy_set_header Forwarded "";

            proxy_request_buffering on;
            proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size {response_temp_max};
            proxy_connect_timeout 10s;
            proxy_send_timeout {upstream_timeout}s;
            proxy_read_timeout {upstream_timeout}s;
        }}

        location @strata_413 {{
            default_type application/json;
            return 413 '{{"detail": "The request body is larger than this server accepts ({max_body_size}); send the instances in several requests."}}';
        }}
        location @strata_502 {{
            default_type application/json;
            return 502 '{{"detail": "The application server is not answering; try again shortly."}}';
        }}
        location @strata_504 {{
            default_type application/json;
            return 504 '{{"detail": "The application server did not answer in time."}}';
        }}
    }}
}}
"""


@dataclass(frozen=True)
class ProxySettings:
    client_timeout: int
    max_body_size: str
    trusted_proxies: tuple[str, ...]

    @classmethod
    def from_settings(cls) -> ProxySettings:
        from django.conf import settings

        return cls(
            client_timeout=int(settings.WEB_CLIENT_TIMEOUT_SECONDS),
            max_body_size=str(settings.WEB_MAX_BODY_SIZE),
            trusted_proxies=tuple(settings.WEB_TRUSTED_PROXIES),
        )


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where Debian and the source build put it (/usr/sbin is not
    on an unprivileged user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def socket_path(var_dir: Path) -> Path:
    return var_dir / "run" / "gunicorn.sock"


def private_upstream(var_dir: Path) -> str:
    """Where gunicorn listens behind nginx: a unix socket in a directory only this account can
    enter (no other local user can reach gunicorn around nginx), or a free loopback port when
    the var directory's path is too long for a socket address."""
    path = socket_path(var_dir)
    if len(str(path)) <= _MAX_SOCKET_PATH:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        return f"unix:{path}"
    return f"127.0.0.1:{_free_loopback_port()}"


def _check_size(value: str) -> str:
    value = value.strip()
    if not _SIZE.match(value):
        raise ImproperlyConfigured(
            f"Environment variable WEB_MAX_BODY_SIZE={value!r} is invalid: expected a size such "
            "as 4g, 512m or 0 (no limit)."
        )
    return value.lower()


def _check_networks(values: Iterable[str]) -> list[str]:
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable WEB_TRUSTED_PROXIES contains {value!r}: expected IP "
                "addresses or networks (10.0.0.0/8), comma-separated."
            ) from None
    return networks


def _trusted_block(networks: list[str]) -> str:
    """realip and the scheme map: only a trusted load balancer may say who the client is and
    that it spoke HTTPS; from anyone else the headers are replaced."""
    lines = []
    if networks:
        lines += [f"    set_real_ip_from {network};" for network in networks]
        lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"]
    lines.append("    geo $realip_remote_addr $strata_trusted_proxy {")
    lines.append("        default 0;")
    lines += [f"        {network} 1;" for network in networks]
    lines.append("    }")
    lines.append("    map $strata_trusted_proxy:$http_x_forwarded_proto $strata_forwarded_proto {")
    lines.append("        default $scheme;")
    lines.append('        "~^1:(?<proto>https?)$" $proto;')
    lines.append("    }")
    lines.append("    map $strata_trusted_proxy:$http_x_forwarded_port $strata_forwarded_port {")
    lines.append("        default $server_port;")
    lines.append('        "~^1:(?<port>[0-9]{1,5})$" $port;')
    lines.append("    }")
    return "\n".join(lines) + "\n"


def _listen(addr: str) -> str:
    # nginx takes "host:port", "[v6]:port" and "port" as Django's and gunicorn's addresses are
    # written; a unix socket is "unix:/path" in both.
    return addr.strip()


def _nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 65536
    limit = min(limit, 65536)
    # Each proxied client takes two descriptors (client and gunicorn) and perhaps a temp file.
    return limit, max(256, min(8192, limit // 3))


def render_nginx_config(
    *,
    listen: str,
    upstream: str,
    var_dir: Path,
    options: ProxySettings,
    access_log: str = "/dev/stdout",
    as_this_account: bool = True,
) -> str:
    """The nginx config for ``listen`` -> gunicorn at ``upstream`` ("unix:/path" or
    "host:port"). ``access_log`` is a file, "/dev/stdout", or "off" (see default_access_log).
    ``as_this_account``: nginx runs as the account that renders the config (serve), not as an
    operator's own nginx does."""
    prefix = var_dir / "nginx"
    nofile, connections = _nofile()
    user = ""
    if as_this_account and os.geteuid() == 0:
        # nginx started as root would run its workers as "nobody", who cannot enter the
        # socket's private directory: they run as the account serve runs everything else as
        # (in production that is an unprivileged account, and this line is not written).
        account = pwd.getpwuid(os.geteuid())
        user = f"user {account.pw_name};\n"
    return TEMPLATE.format(
        user=user,
        prefix=prefix,
        nofile=nofile,
        connections=connections,
        run_dir=prefix,
        temp_dir=prefix / "temp",
        access_log="off" if access_log == "off" else f"{access_log} strata",
        timeout=int(options.client_timeout),
        max_body_size=_check_size(options.max_body_size),
        trusted=_trusted_block(_check_networks(options.trusted_proxies)),
        upstream=upstream,
        listen=_listen(listen),
        response_temp_max=RESPONSE_TEMP_FILE_MAX,
        upstream_timeout=UPSTREAM_TIMEOUT_SECONDS,
    )


def default_access_log(var_dir: Path) -> str:
    """nginx's access log: this process's standard output when it can be opened by name, as
    nginx opens it (a terminal, a pipe, a file); else a file under the var directory (a service
    manager's log socket cannot be opened by name, nor another account's pipe)."""
    try:
        with open("/dev/stdout", "ab"):
            return "/dev/stdout"
    except OSError:
        path = var_dir / "log" / "access.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)


def write_nginx_config(config: str, var_dir: Path) -> Path:
    prefix = var_dir / "nginx"
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(config)
    return path


def nginx_command(nginx: str, config_path: Path) -> list[str]:
    """``-p``/``-e``: no path outside the var directory is touched (the compiled-in error log
    under /var/log would be opened before the config is read)."""
    return [nginx, "-p", str(config_path.parent), "-c", str(config_path), "-e", "stderr"]


# --- gunicorn's log ---------------------------------------------------------------------------

_QUERY = re.compile(r"\?[^\s'\"]*")


def without_query(message: str) -> str:
    """``message`` with every query string (from "?" to the next space or quote) removed."""
    return _QUERY.sub("?[query removed]", message)


class QuerylessGunicornLogger(glogging.Logger):
    """gunicorn's error log without query strings (``--logger-class``): gunicorn quotes the
    request's URI when the application raises, and the request line when it refuses one."""

    def _clean(self, msg: object, args: tuple[object, ...]) -> str:
        text = str(msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        return without_query(text)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        super().critical(self._clean(msg, args), **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        super().error(self._clean(msg, args), **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        super().warning(self._clean(msg, args), **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        super().info(self._clean(msg, args), **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        super().exception(self._clean(msg, args), **kwargs)


# --- the WSGI application behind the proxy --------------------------------------------------


def _is_private_peer(remote_addr: str) -> bool:
    if remote_addr == "":  # a unix socket: only nginx can enter its directory
        return True
    try:
        return ipaddress.ip_address(remote_addr).is_loopback
    except ValueError:
        return False


def behind_proxy(app: Callable[..., Any]) -> Callable[..., Any]:
    """``app`` with REMOTE_ADDR set to the client's address that nginx passes in X-Real-IP,
    for requests that come over the private listener (so the audit log and per-address
    limits see the client, not the proxy)."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        real_ip = environ.get("HTTP_X_REAL_IP", "").strip()
        if real_ip and _is_private_peer(environ.get("REMOTE_ADDR", "")):
            try:
                environ["REMOTE_ADDR"] = str(ipaddress.ip_address(real_ip))
                environ.pop("REMOTE_PORT", None)
            except ValueError:
                pass
        return app(environ, start_response)

    return application


def proxied_application() -> Callable[..., Any]:
    """gunicorn's application factory behind nginx (``saas.proxy:proxied_application()``)."""
    from saas.wsgi import application

    return behind_proxy(application)
