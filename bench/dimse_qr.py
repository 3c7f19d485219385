"""DIMSE query/retrieve through the shared listener (manage.py run_scp), on PostgreSQL.

    .venv/bin/python bench/dimse_qr.py

The index is loaded with COPY by ``bench/ingest.py``'s loader (``load_studies``: each study with
one series and one instance, about two studies per patient), in that benchmark's scratch database
(``strata_bench_ingest`` on the server of DATABASE_URL, or postgres://postgres@127.0.0.1:5432,
created on import and dropped at the end; BENCH_KEEP=1 keeps it). Skips with a message when
PostgreSQL is unreachable. The listener runs in its own process, as in production; the SCU is
pynetdicom in this process.

C-FIND (find_latency): 100k, then 1M studies of one hospital; p50/p95 of Study Root STUDY-level
C-FINDs by PatientID and by PatientName prefix (``FAMILY^GI*``), asking the return keys a PACS
asks (name, ID, birth date, sex, date, time, accession, description, modalities, number of
instances, availability), each timed from the request to the final response: (a) from
pynetdicom's SCU in this process on one open association (its socket with TCP_NODELAY, as DCMTK's
and dcm4che's SCUs have); from DCMTK's findscu when it is installed (Debian package dcmtk), timed
from its own log, with TCP_NODELAY=1: (b) every query on one association, (c) one findscu and
association per query, from the association request on (the listener's association set-up
included), and (d) as (b) with DCMTK's default, Nagle's algorithm on. Target: p95 < 50 ms at 1M
studies for the C-FIND itself, (a) and (b).

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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Importing the ingest benchmark creates its scratch database and sets Django up on it.
from bench import ingest as ingest_bench  # noqa: E402

# isort: split
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, build_role, evt, transport  # noqa: E402
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
LOG = ingest_bench.SCRATCH / "run_scp.log"

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


def c_find(assoc: Association, query: Dataset) -> int:
    """One C-FIND; the number of matches (asserts the final status is success)."""
    matches = 0
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        if status is None:
            raise RuntimeError("the association ended without an answer")
        if identifier is not None:
            matches += 1
        elif status.Status != 0x0000:
            raise RuntimeError(f"C-FIND answered 0x{status.Status:04X}")
    return matches


def find_samples(
    port: int, make_query: Callable[[random.Random], Dataset]
) -> tuple[list[float], float]:
    """Milliseconds per C-FIND from pynetdicom's SCU on one open association, from the request
    to the final response, and the mean number of matches."""
    rng = random.Random(5)
    samples: list[float] = []
    matches = 0
    assoc = associate(port)
    try:
        for n in range(WARMUP + FIND_SAMPLES):
            query = make_query(rng)
            started = time.perf_counter()
            found = c_find(assoc, query)
            elapsed = (time.perf_counter() - started) * 1000
            if found == 0:
                raise RuntimeError("a query found nothing: the loader and the queries disagree")
            if n >= WARMUP:
                samples.append(elapsed)
                matches += found
    finally:
        assoc.release()
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
    folder = ingest_bench.SCRATCH / "findscu"
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
    for size in ingest_bench.STUDY_SIZES:
        started = time.perf_counter()
        ingest_bench.load_studies(org, location, loaded, size)
        loaded = size
        print(
            f"C-FIND index: {size:,} studies / series / instances (loaded in "
            f"{time.perf_counter() - started:.0f} s)",
            flush=True,
        )

        def by_id(rng: random.Random, count: int = size) -> Dataset:
            return study_query(PatientID=ingest_bench.patient(rng.randrange(count))[0])

        def by_name_prefix(rng: random.Random, count: int = size) -> Dataset:
            family, given = ingest_bench.patient(rng.randrange(count))[1].split("^")
            return study_query(PatientName=f"{family}^{given[:2]}*")

        with listener() as port:
            for name, make_query in (
                ("PatientID exact", by_id),
                ("PatientName FAMILY^GI*", by_name_prefix),
            ):
                figures = [("pynetdicom, open association", *find_samples(port, make_query))]
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
                        f"{ingest_bench.pct(samples, 50):7.2f} ms  p95 "
                        f"{ingest_bench.pct(samples, 95):7.2f} ms  ({matches:.1f} matches/query)",
                        flush=True,
                    )
    print("target: p95 < 50 ms at 1M studies")


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
    ingest_bench.load_studies(org, location, 0, COMMIT_INSTANCES)
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
        f"{ingest_bench.DB_NAME}; CPUs: {os.cpu_count()}",
        flush=True,
    )
    only = {name for name in os.environ.get("BENCH_ONLY", "").split(",") if name}
    try:
        if not only or "find" in only:
            find_latency()
        if not only or "commit" in only:
            commit_latency()
    finally:
        connection.close()
        ingest_bench.drop_database()
        shutil.rmtree(ingest_bench.SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
