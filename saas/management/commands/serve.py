"""Run the web server, a Celery worker, Celery beat and the DICOM listener; Ctrl-C stops them all.

The web server is gunicorn, as in production: several worker processes with a few threads each
(one Python process is bound to one core by its interpreter lock, and a STOW-RS request is
CPU work: parsing, hashing, indexing). ``--runserver`` uses Django's development server instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

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


def gunicorn_command(
    addr: str, *, workers: int | None = None, threads: int = WEB_THREADS, reload: bool = False
) -> list[str]:
    """The production web server's command line: gunicorn with threaded workers.

    gunicorn reads request bodies in chunked transfer encoding (STOW-RS from streaming clients)
    and marks the stream as terminated; streamed responses (WADO-RS) are passed through.
    """
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "saas.wsgi:application",
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
    ]
    if reload:
        command.append("--reload")
    return command


class Command(BaseCommand):
    help = "Start web + Celery worker + beat (the embedded defaults need no other server)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default=os.environ.get("STRATA_ADDR", "127.0.0.1:8000"))
        parser.add_argument(
            "--runserver",
            action="store_true",
            help="Django's development server instead of gunicorn.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
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
            "web": (
                [python, "manage.py", "runserver", options["addr"]]
                if options["runserver"]
                else gunicorn_command(options["addr"], reload=settings.DEBUG)
            ),
        }
        procs = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}  # noqa: S603

        def stop(signum: int, frame: object) -> None:
            # SIGTERM (a service manager, `timeout`, `kill`) stops everything as Ctrl-C does;
            # Python's default would end this process alone and leave the children running.
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(
            f"Strata running at http://{options['addr']}/, DICOM C-STORE on port {settings.DICOM_SCP_PORT} (Ctrl-C stops all)"
        )
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
