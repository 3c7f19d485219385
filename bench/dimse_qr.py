"""DIMSE query/retrieve through the shared listener (manage.py run_scp), on PostgreSQL.

    .venv/bin/python bench/dimse_qr.py

The index is loaded with COPY by ``bench/index_loader.py`` (``load_studies``: each study with one
series and one instance, about two studies per patient), in this benchmark's scratch database
(``strata_bench_dimse`` on the server of DATABASE_URL, or postgres://postgres@127.0.0.1:5432,
created at the start and dropped at the end; BENCH_KEEP=1 keeps it). Skips with a message when
PostgreSQL is unreachable. The listener runs in its own process, as in production; the SCU is
pynetdicom in this process.

C-FIND (find_latency): 100k, then 1M studies of one hospital; p50/p95 of Study Root STUDY-level
C-FINDs by PatientID and by PatientName prefix (``FAMILY^GI*``), asking the return keys a PACS
asks (name, ID, birth date, sex, date, time, accession, description, modalities, number of
instances, availability), each timed from the request to the final response: (a) from
pynetdicom's SCU in this process on one open association (its socket with TCP_NODELAY, as DCMTK's
and dcm4che's SCUs have, and without pynetdicom's per-message and per-identifier log formatting,
which the listener turns off for itself too; (a2) is the same with pynetdicom's default logging,
a cost of the SCU's alone, up to a third of its time per match); from DCMTK's findscu when it is
installed (Debian package dcmtk), timed from its own log, with TCP_NODELAY=1: (b) every query on
one association, (c) one findscu and association per query, from the association request on
(the listener's association set-up included), and (d) as (b) with DCMTK's default, Nagle's
algorithm on. Target: p95 < 50 ms at 1M studies for the C-FIND itself, (a) and (b). A
PatientName prefix matches about 83 studies at 1M: each match is a pending response that
pynetdicom's SCU reads and decodes in Python (about 0.3 ms each on this machine when it is
otherwise idle, more when the cores are shared), which is most of what (a) measures there.

BENCH_STUDIES=100000,1000000 changes the sizes, BENCH_FIND_SAMPLES=200 the queries per figure;
BENCH_ONLY=find runs the C-FIND part only (comma-separated names for several parts).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import index_loader  # noqa: E402
from bench.scratch import ScratchDatabase  # noqa: E402

DB_NAME = "strata_bench_dimse"
STUDY_SIZES = [int(n) for n in os.environ.get("BENCH_STUDIES", "100000,1000000").split(",")]
SCRATCH_DB = ScratchDatabase(DB_NAME, "dimse_qr.py")
SCRATCH_DB.create()
SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-dimse-"))
# The listener process inherits this environment: production settings, scratch database and
# storage.
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "saas.settings.base",
        "DATABASE_URL": SCRATCH_DB.url(),
        "DEBUG": "0",
        "SECRET_KEY": "strata-bench-dimse-secret-key-0123456789abcdef",
        "ARCHIVE_BACKEND": "FILESYSTEM",
        "ARCHIVE_ROOT": str(SCRATCH / "archive"),
        "ARCHIVE_SPOOL_ROOT": str(SCRATCH / "spool"),
        "CELERY_BROKER_URL": "memory://",  # follow-up tasks are queued, not run, as in production
        "LOG_LEVEL": "WARNING",
    }
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, _config, build_role, evt, transport  # noqa: E402
from pynetdicom.association import Association  # noqa: E402

from archive.ae_titles.services import ae_create  # noqa: E402
from archive.dimse import commitment  # noqa: E402
from archive.models import (  # noqa: E402
    DicomDestination,
    Instance,
    StorageCommitment,
    StorageLocation,
)
from tenants.context import Actor  # noqa: E402
from tenants.models import Organization  # noqa: E402

CALLED_AE = "BENCH-QR"
CALLING_AE = "BENCH-PACS"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_SAMPLES = int(os.environ.get("BENCH_FIND_SAMPLES", "200"))
WARMUP = 10
LOG = SCRATCH / "run_scp.log"

# --- the listener ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def listener() -> Iterator[int]:
    """``manage.py run_scp`` on a free port of the loopback, stopped at the end; yields the port."""
    port = free_port()
    with open(LOG, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "run_scp", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"run_scp exited with {proc.returncode}:\n{LOG.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("run_scp did not listen within 60 s") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_create_socket = transport.AssociationSocket._create_socket


def _create_socket_nodelay(self: transport.AssociationSocket, address: Any) -> socket.socket:
    """pynetdicom's SCU socket with TCP_NODELAY, as dcm4che's SCUs have by default and DCMTK's
    with TCP_NODELAY=1: without it, Nagle's algorithm holds the request's second PDU (its
    identifier) until the listener's delayed ACK, about 40 ms per request on Linux."""
    sock = _create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


transport.AssociationSocket._create_socket = _create_socket_nodelay  # type: ignore[method-assign]


def associate(port: int) -> Association:
    scu = AE(ae_title=CALLING_AE)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(STUDY_ROOT_FIND, [ExplicitVRLittleEndian])
    assoc = scu.associate("127.0.0.1", port, ae_title=CALLED_AE)
    if not assoc.is_established:
        raise RuntimeError("the listener did not accept the association")
    return assoc


# --- C-FIND -----------------------------------------------------------------------------------------

# The return keys a PACS asks for in a study list.
STUDY_RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
    "InstanceAvailability",
)


def study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in STUDY_RETURN_KEYS:
        setattr(ds, keyword, "")
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# pynetdicom's SCU now and then loses a response of its own C-FIND: its association thread,
# resumed at the wrong moment, takes the message that send_c_find waits for and drops it as
# "unexpected" (pynetdicom issue 875). A lost pending response shows as fewer matches; a lost
# final one leaves send_c_find waiting for LOST_AFTER seconds, then pynetdicom aborts the
# association: that query is left out (and counted), the measure goes on on a new association.
LOST_AFTER = 10
LOST_MAX = 3


class LostResponse(Exception):
    """pynetdicom's SCU did not see the final response of its C-FIND."""


def c_find(assoc: Association, query: Dataset) -> int:
    """One C-FIND; the number of matches (asserts the final status is success)."""
    matches = 0
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        if status is None:
            raise RuntimeError("the association ended without an answer")
        if identifier is not None:
            matches += 1
        elif "Status" not in status:
            raise LostResponse
        elif status.Status != 0x0000:
            raise RuntimeError(f"C-FIND answered 0x{status.Status:04X}")
    return matches


@contextmanager
def scu_logging(*, quiet: bool) -> Iterator[None]:
    """pynetdicom's SCU logging for the associations made meanwhile: by default (``quiet``
    False) it formats every DIMSE message and every response identifier for its log, whether
    the log is shown or not; ``quiet`` turns both off, as the listener does for itself."""
    saved = _config.LOG_HANDLER_LEVEL, _config.LOG_RESPONSE_IDENTIFIERS
    if quiet:
        _config.LOG_HANDLER_LEVEL, _config.LOG_RESPONSE_IDENTIFIERS = "none", False
    try:
        yield
    finally:
        _config.LOG_HANDLER_LEVEL, _config.LOG_RESPONSE_IDENTIFIERS = saved


def find_samples(
    port: int, make_query: Callable[[random.Random], Dataset], *, quiet: bool = True
) -> tuple[list[float], float]:
    """Milliseconds per C-FIND from pynetdicom's SCU on one open association, from the request
    to the final response, and the mean number of matches; ``quiet``: see ``scu_logging``."""
    rng = random.Random(5)
    samples: list[float] = []
    matches = done = lost = 0
    with scu_logging(quiet=quiet):
        assoc = associate(port)
        assoc.dimse_timeout = LOST_AFTER
        try:
            while done < WARMUP + FIND_SAMPLES:
                query = make_query(rng)
                started = time.perf_counter()
                try:
                    found = c_find(assoc, query)
                except LostResponse:
                    lost += 1
                    if lost > LOST_MAX:
                        raise RuntimeError(
                            f"pynetdicom's SCU lost {lost} final responses"
                        ) from None
                    assoc = associate(port)
                    assoc.dimse_timeout = LOST_AFTER
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if found == 0:
                    raise RuntimeError("a query found nothing: the loader and the queries disagree")
                if done >= WARMUP:
                    samples.append(elapsed)
                    matches += found
                done += 1
        finally:
            assoc.release()
    if lost:
        print(
            f"  pynetdicom's SCU lost the final response of {lost} C-FIND(s) (see LOST_AFTER), "
            "left out",
            flush=True,
        )
    return samples, matches / FIND_SAMPLES


def find_org() -> Organization:
    org = Organization.objects.create(name="Bench C-FIND", slug="bench-cfind")
    StorageLocation.objects.create(organization=org, name="Platform storage")
    ae_create(
        org=org,
        ae_title=CALLED_AE,
        allowed_calling_ae_titles=[CALLING_AE],
        allowed_networks=[],
        actor=Actor.system("bench"),
    )
    return org


FINDSCU = shutil.which("findscu")
# DCMTK's log with a millisecond timestamp per line: the queries are timed from findscu's own log.
FINDSCU_LOG_CONFIG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%q} %m%n
"""


def findscu_samples(
    port: int, queries: list[Dataset], *, per_query_association: bool, nagle: bool = False
) -> tuple[list[float], float]:
    """The same measure with DCMTK's findscu (a C client, as a PACS is): all queries on one
    association (one findscu, one query file each), or one findscu and association per query
    (timed from its association request); milliseconds from findscu's log, and the mean number
    of matches. Nagle's algorithm off (TCP_NODELAY=1) unless ``nagle``: DCMTK's default since
    3.6.2 keeps it on."""
    assert FINDSCU is not None
    folder = SCRATCH / "findscu"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    config = folder / "log.cfg"
    config.write_text(FINDSCU_LOG_CONFIG)
    files = []
    for n, query in enumerate(queries):
        query.file_meta = FileMetaDataset()
        query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"q{n:04d}.dcm"
        query.save_as(path, enforce_file_format=False)
        files.append(str(path))
    command = [FINDSCU, "-S", "-aet", CALLING_AE, "-aec", CALLED_AE, "-lc", str(config)]
    address = ["127.0.0.1", str(port)]
    runs = [[f] for f in files] if per_query_association else [files]
    lines: list[str] = []
    for run in runs:
        done = subprocess.run(  # noqa: S603
            [*command, *address, *run],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "TCP_NODELAY": "0" if nagle else "1"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"findscu failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        lines.extend((done.stdout + done.stderr).splitlines())
    samples: list[float] = []
    started = 0.0
    matches = pending = 0
    for line in lines:
        stamp, _, message = line.partition(" ")
        if message.startswith("Requesting Association") or (
            message.startswith("Sending Find Request") and not per_query_association
        ):
            started = float(stamp)
        elif message.startswith("Find Response:"):
            pending += 1
        elif message.startswith("Received Final Find Response"):
            if "Success" not in message:
                raise RuntimeError(f"findscu: {message}")
            if pending == 0:
                raise RuntimeError("a query found nothing: the loader and the queries disagree")
            samples.append((float(stamp) - started) * 1000)
            matches += pending
            pending = 0
    if len(samples) != len(queries):
        raise RuntimeError(f"findscu answered {len(samples)} of {len(queries)} queries")
    return samples[WARMUP:], matches / len(samples)


def find_latency() -> None:
    org = find_org()
    location = StorageLocation.objects.for_org(org).get()
    loaded = 0
    for size in STUDY_SIZES:
        started = time.perf_counter()
        index_loader.load_studies(org, location, loaded, size)
        loaded = size
        print(
            f"C-FIND index: {size:,} studies / series / instances (loaded in "
            f"{time.perf_counter() - started:.0f} s)",
            flush=True,
        )

        def by_id(rng: random.Random, count: int = size) -> Dataset:
            return study_query(PatientID=index_loader.patient(rng.randrange(count))[0])

        def by_name_prefix(rng: random.Random, count: int = size) -> Dataset:
            family, given = index_loader.patient(rng.randrange(count))[1].split("^")
            return study_query(PatientName=f"{family}^{given[:2]}*")

        with listener() as port:
            for name, make_query in (
                ("PatientID exact", by_id),
                ("PatientName FAMILY^GI*", by_name_prefix),
            ):
                figures = [
                    ("pynetdicom, open association", *find_samples(port, make_query)),
                    (
                        "pynetdicom, its default logging",
                        *find_samples(port, make_query, quiet=False),
                    ),
                ]
                if FINDSCU is None:
                    print("  findscu not installed (Debian package dcmtk): its figures are skipped")
                else:
                    rng = random.Random(5)
                    queries = [make_query(rng) for _ in range(WARMUP + FIND_SAMPLES)]
                    for per_query, nagle, how in (
                        (False, False, "open association"),
                        (True, False, "+ association"),
                        (False, True, "open association, Nagle on"),
                    ):
                        measured = findscu_samples(
                            port, queries, per_query_association=per_query, nagle=nagle
                        )
                        figures.append((f"findscu, {how}", *measured))
                for how, samples, matches in figures:
                    print(
                        f"  {size:>9,} studies, {name:<23} {how:<38} p50 "
                        f"{index_loader.pct(samples, 50):7.2f} ms  p95 "
                        f"{index_loader.pct(samples, 95):7.2f} ms  ({matches:.1f} matches/query)",
                        flush=True,
                    )
    print("target: p95 < 50 ms at 1M studies")


# --- move, get: C-MOVE and C-GET ------------------------------------------------------------------
#
# move: BENCH_RETRIEVE_INSTANCES (1000) CT instances of ~512 KB, one study, C-MOVEd by dcmtk's
#     movescu to dcmtk's storescp (writing each to disk as received, +B); alternating with the
#     same C-MOVE from Orthanc (Debian's package, with its PostgreSQL index plugin, when
#     installed), a bare pynetdicom C-STORE loop of the same objects to the same storescp, and
#     both C-MOVEs to a storescp that discards what it receives (what the senders can do when the
#     destination is not the limit), BENCH_RETRIEVE_RUNS (3) runs of each; then one
#     BENCH_RETRIEVE_LARGE_MB (1024) MiB instance C-MOVEd to the discarding storescp: the
#     listener's resident memory above idle (target < 150 MB).
# get: the same study C-GET by dcmtk's getscu (writing to disk), alternating with Orthanc.
# Each figure also gives the server's CPU per instance: the listener's process for Strata,
# Orthanc's for Orthanc (user + system, from /proc).

# This part appends to the shared benchmark; what it needs beyond the shared imports it imports
# in its functions.
RETRIEVE_INSTANCES = int(os.environ.get("BENCH_RETRIEVE_INSTANCES", "1000"))
RETRIEVE_RUNS = int(os.environ.get("BENCH_RETRIEVE_RUNS", "3"))
RETRIEVE_LARGE_MB = int(os.environ.get("BENCH_RETRIEVE_LARGE_MB", "1024"))
RETRIEVE_CALLED_AE = "BENCH-ARCHIVE"
RETRIEVE_DESTINATION = "BENCH-WS"
RETRIEVE_NULL = "BENCH-NULL"  # a storescp that discards what it receives
RETRIEVE_MB = 1_000_000
# DCMTK's tools leave Nagle's algorithm on unless told (every request would wait for a delayed
# ACK, about 40 ms, measuring the TCP stack rather than the archive).
_RETRIEVE_DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _retrieve_tool(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        print(f"retrieve: {name} is not installed (Debian package dcmtk); skipped", flush=True)
    return path


def _retrieve_ct_files(folder: Path, count: int) -> tuple[str, list[Path]]:
    """``count`` CT instances of one study and series, 512 x 512 x 16 bit (~513 KB each)."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, write

    folder.mkdir(parents=True)
    spec = study_spec("CT")
    series = generate_uid()
    files = [
        write(
            make_instance(
                spec, series_uid=series, instance_number=n + 1, rows=512, columns=512, seed=n + 1
            ),
            folder / f"ct-{n:04d}.dcm",
        )
        for n in range(count)
    ]
    return spec.study_uid, files


def _retrieve_large_file(path: Path, megabytes: int) -> str:
    """A multi-frame CT of about ``megabytes`` MiB written frame by frame; its study UID."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, write

    rows = columns = 512
    frame_bytes = rows * columns * 2
    frames = max(1, megabytes * 1024 * 1024 // frame_bytes)
    header = make_instance(study_spec("CT"), series_uid=generate_uid(), rows=rows, columns=columns)
    del header.PixelData
    header.NumberOfFrames = frames
    write(header, path)
    frame = os.urandom(frame_bytes)
    with open(path, "ab") as out:
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frames * frame_bytes).to_bytes(4, "little"))
        for _ in range(frames):
            out.write(frame)
    return str(header.StudyInstanceUID)


def _retrieve_store(port: int, files: list[Path], senders: int = 4) -> None:
    """C-STORE ``files`` to the listener over ``senders`` associations (set-up only)."""
    from pydicom.uid import CTImageStorage
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True

    def send(part: list[Path]) -> None:
        scu = AE(ae_title=CALLING_AE)
        scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 600
        scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", port, ae_title=RETRIEVE_CALLED_AE)
        assert assoc.is_established, "the listener refused the association"
        for path in part:
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000, f"C-STORE failed: 0x{status.Status:04X}"
        assoc.release()

    threads = [threading.Thread(target=send, args=(files[n::senders],)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _retrieve_wait_indexed(count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while Instance.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Instance.objects.count() >= count, "not indexed in time"


def _retrieve_storescp(
    binary: str, folder: Path | None, ae_title: str = RETRIEVE_DESTINATION
) -> tuple[subprocess.Popen[bytes], int]:
    """dcmtk's storescp as the move destination: writing what it receives to ``folder`` as
    received (+B), or discarding it (None)."""
    port = free_port()
    where = ["-od", str(folder), "-uf", "+B"] if folder is not None else ["--ignore"]
    proc = subprocess.Popen(  # noqa: S603
        [binary, "-aet", ae_title, "+xa", *where, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_RETRIEVE_DCMTK_ENV,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("storescp did not start") from None
            time.sleep(0.05)


def _retrieve_movescu(
    binary: str,
    port: int,
    keys: list[str],
    called: str = RETRIEVE_CALLED_AE,
    destination: str = RETRIEVE_DESTINATION,
) -> float:
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        [
            binary,
            "-v",
            "-S",
            "-aet",
            CALLING_AE,
            "-aec",
            called,
            "-aem",
            destination,
            *[arg for key in keys for arg in ("-k", key)],
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_RETRIEVE_DCMTK_ENV,
    )
    elapsed = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0 or "Warning" in output or "Failed" in output:
        raise RuntimeError(f"movescu: exit {done.returncode}\n{output[-3000:]}")
    return elapsed


def _retrieve_getscu(
    binary: str, port: int, study_uid: str, folder: Path, called: str = RETRIEVE_CALLED_AE
) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        [
            binary,
            "-S",
            "-aet",
            CALLING_AE,
            "-aec",
            called,
            "-od",
            str(folder),
            "+B",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_RETRIEVE_DCMTK_ENV,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"getscu: exit {done.returncode}\n{done.stderr[-2000:]}")
    received = len(list(folder.iterdir()))
    assert received == RETRIEVE_INSTANCES, f"getscu received {received} instances"
    return elapsed


def _retrieve_bare_loop(port: int, files: list[Path]) -> float | None:
    """pynetdicom's own C-STORE SCU, streaming the same objects from files, to storescp.

    Under load pynetdicom 3.0's SCU can lose a response (its association thread, resumed after
    one C-STORE, takes the next one's response off the queue): such a run is repeated."""
    from pydicom.uid import CTImageStorage

    for _ in range(3):
        scu = AE(ae_title=CALLING_AE)
        scu.acse_timeout = scu.network_timeout = 600
        scu.dimse_timeout = 5
        scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        started = time.perf_counter()
        assoc = scu.associate("127.0.0.1", port, ae_title=RETRIEVE_DESTINATION)
        assert assoc.is_established, "storescp refused the association"
        statuses = []
        for path in files:
            if not assoc.is_established:
                break
            statuses.append(assoc.send_c_store(path).get("Status"))
        if assoc.is_established:
            assoc.release()
        elapsed = time.perf_counter() - started
        if len(statuses) == len(files) and set(statuses) == {0x0000}:
            return elapsed
        print("move: the bare pynetdicom loop lost a response; repeated", flush=True)
    print("move: the bare pynetdicom loop lost a response three times; this run is left out")
    return None


def _retrieve_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _retrieve_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _retrieve_listener_pid() -> int:
    """The pid of the ``manage.py run_scp`` this process started."""
    me = os.getpid()
    for children in Path(f"/proc/{me}/task").glob("*/children"):
        for pid in children.read_text().split():
            if b"run_scp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
    raise RuntimeError("the listener process was not found")


def _retrieve_large(port: int, movescu: str) -> None:
    """One large instance C-MOVEd to the storescp that discards: the listener's resident
    memory sampled every 10 ms, and its high-water mark where the kernel lets it be reset."""
    path = SCRATCH / "retrieve" / "large.dcm"
    study_uid = _retrieve_large_file(path, RETRIEVE_LARGE_MB)
    size = path.stat().st_size
    before = Instance.objects.count()
    _retrieve_store(port, [path], senders=1)
    _retrieve_wait_indexed(before + 1)
    path.unlink()
    pid = _retrieve_listener_pid()
    time.sleep(1.0)  # let the listener settle after indexing
    idle_kb = _retrieve_status_kb(pid, "VmRSS")
    peak_kb = idle_kb
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_kb
        while not done.is_set():
            try:
                peak_kb = max(peak_kb, _retrieve_status_kb(pid, "VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.01)

    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the high-water mark
        hwm = True
    except OSError:
        hwm = False
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]
    elapsed = _retrieve_movescu(movescu, port, keys, destination=RETRIEVE_NULL)
    done.set()
    sampler.join()
    if hwm:
        peak_kb = max(peak_kb, _retrieve_status_kb(pid, "VmHWM"))
    print(
        f"move: one {size / RETRIEVE_MB:.0f} MB instance C-MOVEd in {elapsed:.1f} s "
        f"({size / RETRIEVE_MB / elapsed:.0f} MB/s); listener RSS idle "
        f"{idle_kb * 1024 / RETRIEVE_MB:.0f} MB, peak {peak_kb * 1024 / RETRIEVE_MB:.0f} MB: "
        f"{(peak_kb - idle_kb) * 1024 / RETRIEVE_MB:.1f} MB above idle (target < 150 MB)",
        flush=True,
    )


class _RetrieveOrthanc:
    """Orthanc from Debian's package with its PostgreSQL index (a scratch database), holding
    the same instances, with the same storescp as its modality BENCH-WS."""

    def __init__(self, binary: str, storescp_port: int, null_port: int, files: list[Path]):
        import json
        from urllib.parse import urlsplit

        from bench.scratch import ScratchDatabase

        work = SCRATCH / "orthanc"
        work.mkdir()
        self.database = ScratchDatabase("strata_bench_orthanc", "dimse_qr.py (Orthanc)")
        self.database.create()
        server = urlsplit(self.database.url())
        self.http_port, self.port = free_port(), free_port()
        plugin = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
        config = {
            "Name": "bench",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": "BENCH-ORTHANC",
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomModalities": {
                "ws": [RETRIEVE_DESTINATION, "127.0.0.1", storescp_port],
                "null": [RETRIEVE_NULL, "127.0.0.1", null_port],
                "pacs": [CALLING_AE, "127.0.0.1", 104],
            },
            "StorageCompression": False,
            "SaveJobs": False,
            "Plugins": [str(plugin)] if plugin.exists() else [],
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": server.hostname or "127.0.0.1",
                "Port": server.port or 5432,
                "Database": "strata_bench_orthanc",
                "Username": server.username or "postgres",
                "Password": server.password or "",
                "Lock": False,
            },
        }
        self.index = "PostgreSQL" if plugin.exists() else "SQLite (no PostgreSQL plugin)"
        config_path = work / "orthanc.json"
        config_path.write_text(json.dumps(config))
        self.log = open(work / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603
            [binary, str(config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=_RETRIEVE_DCMTK_ENV,  # Orthanc's DICOM side is DCMTK: no Nagle either
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Orthanc did not start; see {work / 'orthanc.log'}"
                    ) from None
                time.sleep(0.2)
        storescu = shutil.which("storescu")
        assert storescu is not None
        done = subprocess.run(  # noqa: S603
            [storescu, "-aet", CALLING_AE, "-aec", "BENCH-ORTHANC", "127.0.0.1", str(self.port)]
            + [str(path) for path in files],
            capture_output=True,
            text=True,
            check=False,
            env=_RETRIEVE_DCMTK_ENV,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"storescu to Orthanc: exit {done.returncode}\n{done.stderr[-2000:]}"
            )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.database.drop()


def retrieve_bench(parts: set[str]) -> None:
    tools = {}
    for name in ("storescp", "movescu", "getscu"):
        found = _retrieve_tool(name)
        if found is None:
            return
        tools[name] = found
    # The move destination listens on the loopback (read by the listener process at its start).
    os.environ["ARCHIVE_ALLOW_PRIVATE_ENDPOINTS"] = "1"
    org = Organization.objects.create(name="Bench retrieve", slug="bench-retrieve")
    ae_create(
        org=org,
        ae_title=RETRIEVE_CALLED_AE,
        allowed_calling_ae_titles=[CALLING_AE],
        allowed_networks=["127.0.0.0/8"],
        actor=Actor.system("bench"),
    )
    work = SCRATCH / "retrieve"
    study_uid, files = _retrieve_ct_files(work / "send", RETRIEVE_INSTANCES)
    total = sum(path.stat().st_size for path in files)
    received = work / "storescp"
    received.mkdir()
    storescp, storescp_port = _retrieve_storescp(tools["storescp"], received)
    null, null_port = _retrieve_storescp(tools["storescp"], None, RETRIEVE_NULL)
    for title, to_port in ((RETRIEVE_DESTINATION, storescp_port), (RETRIEVE_NULL, null_port)):
        DicomDestination.objects.create(
            organization=org, ae_title=title, host="127.0.0.1", port=to_port
        )
    orthanc: _RetrieveOrthanc | None = None
    orthanc_binary = shutil.which("Orthanc")
    try:
        if orthanc_binary is None:
            print("retrieve: Orthanc is not installed (Debian package orthanc); skipped")
        else:
            started = time.perf_counter()
            orthanc = _RetrieveOrthanc(orthanc_binary, storescp_port, null_port, files)
            print(
                f"retrieve: Orthanc ({orthanc.index} index) has the study after "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
        with listener() as port:
            before = Instance.objects.count()
            started = time.perf_counter()
            _retrieve_store(port, files)
            _retrieve_wait_indexed(before + len(files))
            print(
                f"retrieve: {len(files)} CT instances ({total / RETRIEVE_MB:.0f} MB) stored and "
                f"indexed in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]
            times: dict[str, list[float]] = {}

            cpu: dict[str, list[float]] = {}
            # The server's CPU per instance: the listener (Strata) or Orthanc's process.
            server_pid = {"": _retrieve_listener_pid()}
            if orthanc is not None:
                server_pid["orthanc"] = orthanc.proc.pid

            def timed(label: str, run: Callable[[], float | None]) -> None:
                pid = server_pid["orthanc" if label.startswith("orthanc") else ""]
                before = _retrieve_cpu_seconds(pid)
                elapsed = run()
                if elapsed is None:
                    return
                times.setdefault(label, []).append(elapsed)
                used = _retrieve_cpu_seconds(pid) - before
                cpu.setdefault(label, []).append(used * 1000 / len(files))

            folder = work / "get"
            for _ in range(RETRIEVE_RUNS):  # alternating, so that load changes hit all alike
                if "move" in parts:
                    timed("move", lambda: _retrieve_movescu(tools["movescu"], port, keys))
                    got = len(list(received.iterdir()))
                    assert got == len(files), f"storescp has {got} of {len(files)}"
                    if orthanc is not None:
                        timed(
                            "orthanc move",
                            lambda: _retrieve_movescu(
                                tools["movescu"], orthanc.port, keys, called="BENCH-ORTHANC"
                            ),
                        )
                    timed("loop", lambda: _retrieve_bare_loop(storescp_port, files))
                    timed(
                        "move null",
                        lambda: _retrieve_movescu(
                            tools["movescu"], port, keys, destination=RETRIEVE_NULL
                        ),
                    )
                    if orthanc is not None:
                        timed(
                            "orthanc move null",
                            lambda: _retrieve_movescu(
                                tools["movescu"],
                                orthanc.port,
                                keys,
                                called="BENCH-ORTHANC",
                                destination=RETRIEVE_NULL,
                            ),
                        )
                if "get" in parts:
                    timed("get", lambda: _retrieve_getscu(tools["getscu"], port, study_uid, folder))
                    if orthanc is not None:
                        timed(
                            "orthanc get",
                            lambda: _retrieve_getscu(
                                tools["getscu"], orthanc.port, study_uid, folder, "BENCH-ORTHANC"
                            ),
                        )

            def rate(label: str) -> str:
                runs = times[label]
                median = len(files) / statistics.median(runs)
                return (
                    f"median {median:.0f} instances/s "
                    f"({median * total / len(files) / RETRIEVE_MB:.0f} MB/s), best "
                    f"{len(files) / min(runs):.0f} over {len(runs)} runs"
                    + (
                        f"; server CPU {statistics.median(cpu[label]):.2f} ms per instance"
                        if label != "loop"
                        else ""
                    )
                )

            lines = {
                "move": f"move: Strata, C-MOVE of the {len(files)}-instance study by movescu to "
                "storescp (written to disk)",
                "orthanc move": "move: Orthanc 1.10 (Debian), the same C-MOVE, same storescp",
                "loop": "move: a bare pynetdicom C-STORE loop of the same files to the same "
                "storescp",
                "move null": "move: Strata, the same C-MOVE to a storescp that discards (--ignore)",
                "orthanc move null": "move: Orthanc, the same C-MOVE to that storescp",
                "get": "get: Strata, C-GET of the study by getscu (written to disk)",
                "orthanc get": "get: Orthanc 1.10 (Debian), the same C-GET",
            }
            for label, text in lines.items():
                if label in times:
                    print(f"{text}: {rate(label)}", flush=True)
            if "move" in parts and RETRIEVE_LARGE_MB > 0:
                _retrieve_large(port, tools["movescu"])
    finally:
        if orthanc is not None:
            orthanc.stop()
        for proc in (storescp, null):
            proc.terminate()
            proc.wait(timeout=10)


# --- storage commitment -----------------------------------------------------------------------

COMMIT_INSTANCES = int(os.environ.get("BENCH_COMMIT_INSTANCES", "1000"))
COMMIT_RUNS = int(os.environ.get("BENCH_COMMIT_RUNS", "5"))
COMMIT_CALLED_AE = "BENCH-STGCMT"
COMMIT_MODALITY_AE = "BENCH-MODALITY"


class _CommitReports:
    """The N-EVENT-REPORTs the modality receives (on its association or its own SCP)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.committed: dict[str, int] = {}
        self.arrived = threading.Condition()

    def handler(self, event: Any) -> tuple[int, None]:
        info = event.event_information
        with self.arrived:
            uid = str(info.TransactionUID)
            self.at[uid] = time.perf_counter()
            self.committed[uid] = len(info.get("ReferencedSOPSequence", []))
            self.arrived.notify_all()
        return 0x0000, None

    def wait(self, uid: str, timeout: float = 60) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: uid in self.at, timeout):
                raise RuntimeError("no N-EVENT-REPORT arrived")
            return self.at[uid]


def _commit_request(pairs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = f"2.25.{int.from_bytes(os.urandom(15), 'big')}"
    items = []
    for sop_class, sop_instance in pairs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _commit_once(
    port: int, pairs: list[tuple[str, str]], *, same: bool, reports: _CommitReports
) -> float:
    """Seconds from sending the N-ACTION to the N-EVENT-REPORT received: on the N-ACTION's
    association (the modality proposes the SCP role) or, without the role, on the association
    the listener opens to the modality's SCP."""
    scu = AE(ae_title=COMMIT_MODALITY_AE)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(commitment.SOP_CLASS, [ExplicitVRLittleEndian])
    role: list[Any] | None = None
    if same:
        role = [build_role(commitment.SOP_CLASS, scu_role=True, scp_role=True)]
    assoc = scu.associate(
        "127.0.0.1",
        port,
        ae_title=COMMIT_CALLED_AE,
        ext_neg=role,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
    )
    if not assoc.is_established:
        raise RuntimeError("the listener did not accept the association")
    request = _commit_request(pairs)
    started = time.perf_counter()
    status, _ = assoc.send_n_action(request, 1, commitment.SOP_CLASS, commitment.SOP_INSTANCE)
    if status.get("Status") != 0x0000:
        raise RuntimeError(f"N-ACTION answered {status.get('Status')}")
    if not same:
        assoc.release()
    arrived = reports.wait(str(request.TransactionUID))
    if same:
        # pynetdicom answers the report once the handler returned; releasing before that races
        # its own association thread.
        time.sleep(0.1)
        assoc.release()
    if reports.committed[str(request.TransactionUID)] != len(pairs):
        raise RuntimeError("not every instance was committed")
    return arrived - started


def commit_latency() -> None:
    """Storage commitment (BENCH_ONLY=commit): N-ACTION to N-EVENT-REPORT for COMMIT_INSTANCES
    (BENCH_COMMIT_INSTANCES, 1000) indexed instances, loaded with COPY (the decision reads only
    the index), BENCH_COMMIT_RUNS (5) times on the N-ACTION's association and as many on a new
    association to the modality. Target: < 1 s."""
    # The modality's SCP listens on the loopback (read by the listener process at its start).
    os.environ["ARCHIVE_ALLOW_PRIVATE_ENDPOINTS"] = "1"
    org = Organization.objects.create(name="Bench commitment", slug="bench-commitment")
    location = StorageLocation.objects.create(organization=org, name="Platform storage")
    ae_create(
        org=org,
        ae_title=COMMIT_CALLED_AE,
        allowed_calling_ae_titles=[COMMIT_MODALITY_AE],
        allowed_networks=[],
        actor=Actor.system("bench"),
    )
    index_loader.load_studies(org, location, 0, COMMIT_INSTANCES)
    pairs = [
        (str(sop_class), str(uid))
        for sop_class, uid in Instance.objects.for_org(org).values_list(
            "sop_class_uid", "sop_instance_uid"
        )
    ]
    reports = _CommitReports()
    modality = AE(ae_title=COMMIT_MODALITY_AE)
    modality.add_supported_context(commitment.SOP_CLASS, [ExplicitVRLittleEndian])
    server = modality.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)]
    )
    assert server is not None
    DicomDestination.objects.create(
        organization=org,
        ae_title=COMMIT_MODALITY_AE,
        host="127.0.0.1",
        port=server.server_address[1],
    )
    try:
        with listener() as port:
            for same, how in ((True, "same association"), (False, "new association")):
                seconds = [
                    _commit_once(port, pairs, same=same, reports=reports)
                    for _ in range(COMMIT_RUNS)
                ]
                print(
                    f"commit: storage commitment of {len(pairs):,} instances, {how:<16}: "
                    f"N-ACTION to N-EVENT-REPORT median {statistics.median(seconds) * 1000:4.0f} "
                    f"ms, max {max(seconds) * 1000:4.0f} ms ({COMMIT_RUNS} runs; target < 1000 ms)",
                    flush=True,
                )
        reported = StorageCommitment.objects.for_org(org).filter(state="reported")
        deadline = time.monotonic() + 10  # the last one is marked just after its report arrived
        while reported.count() < 2 * COMMIT_RUNS and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"commit: {reported.count()} of {2 * COMMIT_RUNS} commitments reported", flush=True)
    finally:
        server.shutdown()


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    call_command("migrate", verbosity=0)
    print(
        f"database: PostgreSQL {getattr(connection, 'pg_version', 0) // 10000}, scratch "
        f"{DB_NAME}; CPUs: {os.cpu_count()}",
        flush=True,
    )
    only = {name for name in os.environ.get("BENCH_ONLY", "").split(",") if name}
    try:
        if not only or "find" in only:
            find_latency()
        if not only or "commit" in only:
            commit_latency()
        if not only or only & {"move", "get"}:
            retrieve_bench(only & {"move", "get"} or {"move", "get"})
    finally:
        connection.close()
        SCRATCH_DB.drop()
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
