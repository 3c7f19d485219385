"""Run the shared DICOM C-STORE / C-ECHO listener until SIGTERM or Ctrl-C.

    manage.py run_scp [--host 0.0.0.0] [--port 11112] [--ae-title STRATA]

Defaults come from the settings DICOM_SCP_HOST, DICOM_SCP_PORT, DICOM_SCP_AE_TITLE,
DICOM_SCP_MAX_ASSOCIATIONS, DICOM_SCP_RECEIVE_DIR and DICOM_SCP_INDEXER when they are set.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from archive.ae_titles.services import AE_PATTERN
from archive.dimse.listener import DEFAULT_AE_TITLE, DEFAULT_PORT, StrataSCP

logger = logging.getLogger("archive.dimse")
STALE_SECONDS = 3600.0


class Command(BaseCommand):
    help = "Run the DICOM C-STORE / C-ECHO listener shared by all organizations."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=getattr(settings, "DICOM_SCP_HOST", "0.0.0.0"))  # noqa: S104
        parser.add_argument(
            "--port", type=int, default=getattr(settings, "DICOM_SCP_PORT", DEFAULT_PORT)
        )
        parser.add_argument(
            "--ae-title",
            default=getattr(settings, "DICOM_SCP_AE_TITLE", DEFAULT_AE_TITLE),
            help="The listener's own AE title (organizations are told apart by the called AE "
            "title of their DicomAE, not by this one).",
        )
        parser.add_argument(
            "--max-associations",
            type=int,
            default=getattr(settings, "DICOM_SCP_MAX_ASSOCIATIONS", 10),
        )
        parser.add_argument(
            "--indexer",
            choices=["process", "thread"],
            default=getattr(settings, "DICOM_SCP_INDEXER", "process"),
            help="Where acknowledged objects are stored and indexed: a process of its own "
            "(default: the listener keeps its CPU for receiving) or a thread of the listener.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="Seconds running associations get to finish on SIGTERM before they are aborted.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ae_title = str(options["ae_title"]).strip()
        if not AE_PATTERN.match(ae_title):
            raise CommandError(f"--ae-title {ae_title!r}: use 1-16 printable ASCII characters.")
        port = int(options["port"])
        if not 0 <= port <= 65535:
            raise CommandError(f"--port {port}: not a TCP port.")
        # pynetdicom writes incoming data sets to the process's temporary folder; keep them on
        # the spool volume (/tmp may be a RAM disk, and a 3 GB data set must not land in RAM).
        receive_dir = Path(
            getattr(settings, "DICOM_SCP_RECEIVE_DIR", None)
            or Path(settings.ARCHIVE_SPOOL_ROOT) / "dimse"
        )
        receive_dir.mkdir(parents=True, exist_ok=True)
        removed = _remove_stale(receive_dir)
        if removed:
            logger.warning("dimse: removed %d data sets left over by a stopped listener", removed)
        tempfile.tempdir = str(receive_dir)
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)

        indexer = str(options["indexer"])
        if indexer == "process" and _in_memory_database():
            indexer = "thread"  # another process cannot open this database
        scp = StrataSCP(
            ae_title=ae_title,
            max_associations=int(options["max_associations"]),
            indexer=indexer,
        )
        try:
            host, bound_port = scp.start(str(options["host"]), port)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{port}: {exc}") from exc

        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        logger.info("dimse: listening on %s:%s as %s", host, bound_port, ae_title)
        self.stdout.write(f"DICOM listener on {host}:{bound_port} (AE title {ae_title})")
        self.stdout.flush()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            # A second signal now acts as usual (Ctrl-C again: stop without waiting).
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            logger.info("dimse: stopping (running associations get %ss)", options["grace"])
            scp.stop(grace=float(options["grace"]))
            logger.info("dimse: stopped")


def _in_memory_database() -> bool:
    name = str(connection.settings_dict.get("NAME") or "")
    return connection.vendor == "sqlite" and (name == ":memory:" or "mode=memory" in name)


def _remove_stale(folder: Path, older_than: float = STALE_SECONDS) -> int:
    """Delete pynetdicom's receive files that nothing has written to for ``older_than`` seconds.

    A listener killed mid-transfer leaves its partial file behind; one still receiving writes to
    its file continuously, so a file untouched for an hour belongs to no running listener.
    """
    removed = 0
    cutoff = time.time() - older_than
    for path in folder.glob("tmp*.dcm"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed
