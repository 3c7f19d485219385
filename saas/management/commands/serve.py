"""Run the web server, a Celery worker, Celery beat and the DICOM listener; Ctrl-C stops them all.

The web server is gunicorn, as in production: several worker processes with a few threads each
(one Python process is bound to one core by its interpreter lock, and a STOW-RS request is
CPU work: parsing, hashing, indexing). In front of it nginx (saas/proxy.py) listens on the
public address, reads every request completely and drops clients that send nothing, so that
slow clients cannot hold gunicorn's few threads; ``STRATA_PROXY`` (auto, nginx, none) decides
whether it runs. ``--runserver`` uses Django's development server instead.
``--print-nginx-config`` prints nginx's config for operators who run their own nginx, in front of
``STRATA_PROXY=none manage.py serve --behind-proxy --addr 127.0.0.1:8001``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from saas.env import ADDR_EXPECTED, address_split, browse_url
from saas.proxy import (
    PROXY_MODES,
    ProxySettings,
    default_access_log,
    find_nginx,
    nginx_command,
    private_upstream,
    render_nginx_config,
    write_nginx_config,
)

QUEUES = "celery,ingest,tiering,billing,webhooks"


def web_workers() -> int:
    """Worker processes: ``WEB_CONCURRENCY`` or two per core (requests wait on the database and
    the object store part of the time)."""
    configured = os.environ.get("WEB_CONCURRENCY", "")
    return (
        int(configured)
        if configured.isdigit() and int(configured) > 0
        else 2 * (os.cpu_count() or 1)
    )


WEB_THREADS = 2  # per worker: a slow client (an upload, a download) does not hold a whole process


# gunicorn writes no access log by default (nginx does); one enabled with --access-logfile (for
# instance through GUNICORN_CMD_ARGS) logs the path without the query string, like nginx: QIDO-RS
# queries carry patient names.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
PROXIED_APP = "saas.proxy:proxied_application()"
# Where --print-nginx-config sends requests: a loopback port, which an operator's nginx (running
# as its own account) can reach; serve's own nginx uses a private unix socket instead.
OWN_PROXY_UPSTREAM = "127.0.0.1:8001"


def gunicorn_command(
    addr: str,
    *,
    workers: int | None = None,
    threads: int = WEB_THREADS,
    reload: bool = False,
    behind_proxy: bool = False,
) -> list[str]:
    """The production web server's command line: gunicorn with threaded workers.

    gunicorn reads request bodies in chunked transfer encoding (STOW-RS from streaming clients)
    and marks the stream as terminated; streamed responses (WADO-RS) are passed through.
    ``behind_proxy``: ``addr`` is nginx's private upstream, and the client's address comes from
    nginx's X-Real-IP (saas.proxy.behind_proxy).

    The master loads the application before it forks the workers (``--preload``; the hooks in
    saas.gunicorn_conf close what loading opened and freeze the loaded objects), so the workers
    share its pages copy-on-write: the web tier's memory is about one loaded Django plus each
    worker's own requests, not that many times the whole application. ``reload``
    (development) loads in each worker instead, as gunicorn's ``--reload`` needs.
    """
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        PROXIED_APP if behind_proxy else "saas.wsgi:application",
        "--bind",
        addr,
        "--workers",
        str(workers or web_workers()),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        # A 3 GB upload or download takes minutes; the threaded worker's heartbeat goes on
        # meanwhile, so this bounds only a stuck worker.
        "--timeout",
        "120",
        "--graceful-timeout",
        "30",
        # X-Forwarded-Proto is believed from nginx only: over the unix socket (gunicorn trusts
        # a unix peer) or from loopback, never from the network.
        "--forwarded-allow-ips",
        "127.0.0.1,::1",
        "--access-logformat",
        ACCESS_LOG_FORMAT,
        "--logger-class",
        "saas.proxy.QuerylessGunicornLogger",
        "--config",
        "python:saas.gunicorn_conf",
    ]
    if addr.startswith("unix:"):
        # Only this account may connect (the socket's directory is private too).
        command += ["--umask", "0o077"]
    if reload:
        command.append("--reload")
    else:
        # Graceful reload (SIGHUP to the master) re-reads gunicorn's settings and replaces the
        # workers with new ones forked from the master, which keeps the application it loaded at
        # start: HUP does not pick up new code or a changed Django setting. After a deploy,
        # restart the server (manage.py serve, or the service), or upgrade gunicorn's master in
        # place (USR2, then TERM to the old master once the new one serves).
        command.append("--preload")
    return command


def resolve_proxy(mode: str) -> str | None:
    """The nginx binary to run in front of gunicorn, or None for gunicorn alone.

    ``auto``: nginx when installed; ``nginx``: nginx or a clear error; ``none``: gunicorn alone
    (an operator's own proxy in front, or a development machine).
    """
    if mode not in PROXY_MODES:
        raise CommandError(f"STRATA_PROXY={mode!r}: expected one of {', '.join(PROXY_MODES)}.")
    if mode == "none":
        return None
    nginx = find_nginx()
    if nginx is None and mode == "nginx":
        raise CommandError(
            "STRATA_PROXY=nginx but no nginx binary was found on PATH or in /usr/sbin: install "
            "it (Debian: apt-get install nginx) or set STRATA_PROXY=auto or none."
        )
    return nginx


FALLBACK_WARNING = (
    "WARNING: nginx not found: gunicorn serves {addr} alone. A few clients that send their "
    "request slowly can then occupy every web thread (WEB_CLIENT_TIMEOUT_SECONDS does not "
    "apply). Install nginx (Debian: apt-get install nginx) for "
    "production, or set STRATA_PROXY=none to silence this on a development machine."
)


def web_commands(
    addr: str,
    *,
    nginx: str | None,
    var_dir: Path,
    options: ProxySettings | None = None,
    workers: int | None = None,
    threads: int = WEB_THREADS,
    reload: bool = False,
    access_log: str | None = None,
    behind_own_proxy: bool = False,
) -> dict[str, list[str]]:
    """The web tier's processes: gunicorn alone on ``addr`` when ``nginx`` is None, else gunicorn
    on a private upstream and nginx on ``addr`` in front (its config written under ``var_dir``).
    The tests and bench/slow_clients.py start exactly these commands. ``behind_own_proxy``:
    gunicorn alone, behind the operator's own proxy (see --print-nginx-config)."""
    if nginx is None:
        command = gunicorn_command(
            addr, workers=workers, threads=threads, reload=reload, behind_proxy=behind_own_proxy
        )
        return {"web": command}
    upstream = private_upstream(var_dir)
    config = render_nginx_config(
        listen=addr,
        upstream=upstream,
        var_dir=var_dir,
        options=options or ProxySettings.from_settings(),
        access_log=access_log or default_access_log(var_dir),
    )
    return {
        "web": gunicorn_command(
            upstream, workers=workers, threads=threads, reload=reload, behind_proxy=True
        ),
        "nginx": nginx_command(nginx, write_nginx_config(config, var_dir)),
    }


def start_banner(addr: str, *, front: str, dicom_port: int) -> str:
    """What serve prints once everything is started: the address it listens on, as given (never
    a default), and the URL to open on this machine."""
    url = browse_url(addr)
    where = f"at {url} (listening on {addr}" if url else f"on {addr} (a unix socket"
    return (
        f"Strata running {where}; {front}), DICOM C-STORE on 127.0.0.1 port {dicom_port} "
        "(Ctrl-C stops all)"
    )


class Command(BaseCommand):
    help = "Start web + Celery worker + beat (the embedded defaults need no other server)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--addr",
            default=settings.STRATA_ADDR,
            help="host:port (or unix:/path) to listen on; default STRATA_ADDR, %(default)s.",
        )
        parser.add_argument(
            "--runserver",
            action="store_true",
            help="Django's development server instead of gunicorn (and nginx).",
        )
        parser.add_argument(
            "--proxy",
            choices=PROXY_MODES,
            default=settings.STRATA_PROXY,
            help="nginx in front of gunicorn: auto (when installed; the default from "
            "STRATA_PROXY), nginx (required), none (gunicorn alone).",
        )
        parser.add_argument(
            "--print-nginx-config",
            action="store_true",
            help="Print the nginx config for --addr and exit (for operators who run their own "
            "nginx).",
        )
        parser.add_argument(
            "--upstream",
            default=OWN_PROXY_UPSTREAM,
            help="With --print-nginx-config: gunicorn's address (default %(default)s).",
        )
        parser.add_argument(
            "--behind-proxy",
            action="store_true",
            help="With STRATA_PROXY=none: gunicorn sits behind the operator's own proxy on this "
            "machine and takes the client's address from its X-Real-IP (believed from loopback "
            "and unix-socket peers only).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        addr = options["addr"] = str(options["addr"]).strip()
        if not addr.startswith("unix:"):
            try:
                address_split(addr)
            except ValueError:
                raise CommandError(f"--addr {addr!r}: expected {ADDR_EXPECTED}.") from None
        if options["print_nginx_config"]:
            self.stdout.write(
                f"# gunicorn for this config: STRATA_PROXY=none manage.py serve --behind-proxy "
                f"--addr {options['upstream']}\n"
                + render_nginx_config(
                    listen=options["addr"],
                    upstream=options["upstream"],
                    var_dir=settings.VAR_DIR,
                    options=ProxySettings.from_settings(),
                    as_this_account=False,
                ),
                ending="",
            )
            return
        if str(settings.CELERY_BROKER_URL).startswith("filesystem"):
            for folder in settings.CELERY_BROKER_TRANSPORT_OPTIONS.values():
                if isinstance(folder, str):
                    os.makedirs(folder, exist_ok=True)
        os.makedirs(settings.VAR_DIR, exist_ok=True)
        python = sys.executable
        commands = {
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "saas",
                "worker",
                "-Q",
                QUEUES,
                "-l",
                "INFO",
                "--concurrency",
                "2",
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "saas",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(settings.CELERY_BEAT_SCHEDULE_FILENAME),
            ],
            "dicom": [
                python,
                "manage.py",
                "run_scp",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.DICOM_SCP_PORT),
            ],
        }
        if options["runserver"]:
            commands["web"] = [python, "manage.py", "runserver", options["addr"]]
        else:
            nginx = resolve_proxy(options["proxy"])
            if nginx is None and options["proxy"] == "auto":
                self.stderr.write(FALLBACK_WARNING.format(addr=options["addr"]))
            commands.update(
                web_commands(
                    options["addr"],
                    nginx=nginx,
                    var_dir=settings.VAR_DIR,
                    reload=settings.DEBUG,
                    behind_own_proxy=options["behind_proxy"],
                )
            )
        procs = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}  # noqa: S603

        def stop(signum: int, frame: object) -> None:
            # SIGTERM (a service manager, `timeout`, `kill`) stops everything as Ctrl-C does;
            # Python's default would end this process alone and leave the children running.
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        front = "one web server"
        if "nginx" in commands:
            log = default_access_log(settings.VAR_DIR)
            front = "nginx in front of gunicorn" + (
                "" if log == "/dev/stdout" else f", access log {log}"
            )
        self.stdout.write(start_banner(addr, front=front, dicom_port=settings.DICOM_SCP_PORT))
        try:
            while True:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        self.stderr.write(
                            f"{name} exited with {proc.returncode}; stopping the others"
                        )
                        raise KeyboardInterrupt
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in procs.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
