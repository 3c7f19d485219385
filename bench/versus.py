"""Strata and Orthanc side by side on this machine: ingest, search latency, memory.

    .venv/bin/python bench/versus.py

The peer is Orthanc 1.10 from Debian with its DICOMweb and PostgreSQL plugins, and DCMTK's
storescu sends C-STORE (as root: ``apt-get install orthanc orthanc-dicomweb orthanc-postgresql
dcmtk``). Nothing is installed here: without them, ``unshare``/``ip`` (util-linux, iproute2) or
PostgreSQL the benchmark prints one ``SKIP:`` line saying what is missing and exits 0.

Orthanc binds every interface, so the whole benchmark runs in a network namespace of its own with
only the loopback up: the script re-executes itself under ``unshare --net`` (as root; otherwise
``unshare --net --map-root-user``). The host's TCP ports are out of reach there, so both servers
reach PostgreSQL over its Unix socket (PGHOST, default /var/run/postgresql, user postgres).

Rounds (BENCH_VERSUS_ROUNDS, default 3): both servers in each round, Strata first in odd rounds,
Orthanc first in even ones. Each server gets a fresh database (strata_bench_vs_strata,
strata_bench_vs_orthanc: dropped and created) and a fresh storage folder, is started, measured
and stopped. Both index in PostgreSQL and store files on the local filesystem. Strata runs its
production settings (DEBUG 0, filesystem backend, in-memory Celery broker, API throttle off), the
production web server (``manage.py serve``'s gunicorn, default worker count) and the DICOM listener
``manage.py run_scp`` (its indexer a child process). Orthanc runs its defaults apart from the ports,
the storage folder, authentication off, remote access allowed (from the loopback of the
namespace), the DICOMweb plugin at /dicom-web/ and the PostgreSQL index plugin (index only, files
on disk; SyncStorageArea at its default, true).

Per server and round:

- STOW-RS: BENCH_VERSUS_STOW (default 400) CT instances of 512x512x16 bit (~513 KB), 10 per
  request, 4 client threads on keep-alive sessions, after one warm-up request per client:
  instances/s; the server's CPU per instance (Strata: the gunicorn process tree; Orthanc: its
  process); PostgreSQL's CPU per instance, i.e. that of the backends connected to the server's
  database (pg_stat_activity, sampled before, during and after; CPU from /proc/<pid>/stat); and
  the sum. Every request must answer 200 and the index must hold every instance.
- C-STORE: as many instances (other UIDs) from files, one storescu association: instances/s until
  all are in the index; CPU per instance of Strata's listener and indexer (the run_scp process
  tree) or Orthanc's process, and PostgreSQL's as above.
- QIDO-RS study searches, client-observed on a keep-alive session, 200 samples after 10 warm-ups,
  p50/p95: PatientName=PAT* (no match), PatientName=<family name prefix>* (a few studies),
  PatientID=<exact>, StudyDate=<range>, ModalitiesInStudy=CT, StudyInstanceUID=<exact>; for
  Strata also GET /api/v1/organization/ with a bearer token. The HTTP floor next to them: the
  cheapest answer of each server (Strata's /healthz, Orthanc's /system), the same way.
- Memory after the ingest: Strata's web server (the gunicorn tree's summed RSS, and summed PSS,
  which counts shared pages once), the listener's and its indexer's RSS; Orthanc's RSS.

PostgreSQL's own background processes (WAL writer, checkpointer) are not counted for either. The
table at the end has, per figure, Strata's and Orthanc's median (min-max) over the rounds, the
Strata/Orthanc ratio of each round, and the target where there is one: STOW server+PostgreSQL CPU
per instance below Orthanc's; STOW throughput >= 1.5x Orthanc's; C-STORE listener+indexer CPU per
instance below Orthanc's; QIDO no-match and /api/v1/organization/ p50 < 2 ms; QIDO p50 no worse
than Orthanc's on every form; web server RSS < 300 MiB; listener and indexer < 100 MiB each.

BENCH_VERSUS_ROUNDS=3 and BENCH_VERSUS_STOW=400 change the sizes; BENCH_KEEP=1 keeps the databases
and storage folders of the last round.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import STOW_CONTENT_TYPE, ct_corpus, multipart  # noqa: E402
from bench.servers import cpu_seconds, free_port, process_tree, rss_kb, wait_for_port  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_VERSUS_ROUNDS", "3"))
INSTANCES = int(os.environ.get("BENCH_VERSUS_STOW", "400"))
KEEP = os.environ.get("BENCH_KEEP") == "1"
PER_REQUEST = 10
CLIENTS = 4
QIDO_SAMPLES = 200
QIDO_WARMUP = 10
STRATA_DB = "strata_bench_vs_strata"
ORTHANC_DB = "strata_bench_vs_orthanc"
PG_SOCKET_DIR = os.environ.get("PGHOST", "/var/run/postgresql")
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
POSTGRESQL_PLUGIN = ORTHANC_PLUGINS / "libOrthancPostgreSQLIndex.so"
INSTALL = "apt-get install orthanc orthanc-dicomweb orthanc-postgresql dcmtk"
NETNS_MARKER = "STRATA_BENCH_VERSUS_NETNS"
STRATA_AE = "BENCH-STRATA"
ORTHANC_AE = "BENCH-ORTHANC"
CALLING_AE = "BENCH-SCU"
MIB = 1024 * 1024


def skip(reason: str) -> NoReturn:
    print(f"SKIP: versus.py: {' '.join(reason.split())}", flush=True)
    sys.exit(0)


# --- prerequisites and the network namespace ---------------------------------------------------


def missing_tools() -> list[str]:
    missing = []
    if not os.access(ORTHANC, os.X_OK):
        missing.append(f"Orthanc ({ORTHANC})")
    for plugin in (DICOMWEB_PLUGIN, POSTGRESQL_PLUGIN):
        if not plugin.is_file():
            missing.append(f"the Orthanc plugin {plugin}")
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            missing.append(f"DCMTK's {tool}")
    return missing


def enter_namespace() -> None:
    """Re-execute this script in a network namespace of its own (unless already in it), with the
    loopback up; SKIP when that cannot be made."""
    if os.environ.get(NETNS_MARKER) == "1":
        done = subprocess.run(
            ["ip", "link", "set", "lo", "up"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            skip(f"cannot bring the loopback up in the network namespace: {done.stderr.strip()}")
        return
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            skip(
                f"needs `{tool}` to run in a network namespace of its own (apt-get install {package})"
            )
    variants = [["unshare", "--net"]] if os.geteuid() == 0 else []
    variants.append(["unshare", "--net", "--map-root-user"])
    errors = []
    for variant in variants:
        probe = subprocess.run(  # noqa: S603
            [*variant, "true"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            sys.stdout.flush()
            os.execvpe(
                variant[0],
                [*variant, "--", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                {**os.environ, NETNS_MARKER: "1"},
            )
        errors.append(f"`{' '.join(variant)}`: {probe.stderr.strip() or probe.returncode}")
    skip(
        "Orthanc binds every interface, so this runs in a network namespace of its own, which "
        f"cannot be made here ({'; '.join(errors)})"
    )


# --- PostgreSQL -----------------------------------------------------------------------------------


def pg_url(dbname: str) -> str:
    return f"postgresql://postgres@/{dbname}?host={PG_SOCKET_DIR}"


def pg_admin() -> Any:
    import psycopg

    return psycopg.connect(pg_url("postgres"), autocommit=True, connect_timeout=3)


def recreate_database(name: str) -> None:
    with pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgBackendCpu:
    """CPU time of the PostgreSQL backends connected to one database while in the block: their pids
    from pg_stat_activity (read before, every 0.2 s during, and after, on a connection of its own
    to another database), their CPU from /proc/<pid>/stat. A backend that starts meanwhile counts
    from zero; ``exclude`` names backends that are not the server's (the benchmark's own)."""

    def __init__(self, dbname: str, exclude: set[int] | None = None) -> None:
        self.dbname = dbname
        self.exclude = exclude or set()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn: Any = None
        self.seconds = 0.0

    def _sample(self, *, initial: bool) -> None:
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.dbname,),
        ).fetchall()
        for (pid,) in rows:
            if pid in self.exclude:
                continue
            cpu = cpu_seconds(pid)
            if pid not in self.first:
                self.first[pid] = cpu if initial else 0.0
            self.last[pid] = max(self.last.get(pid, 0.0), cpu)

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self._sample(initial=False)

    def __enter__(self) -> PgBackendCpu:
        self._conn = pg_admin()
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._sample(initial=False)
        self._conn.close()
        self.seconds = sum(self.last[pid] - self.first[pid] for pid in self.first)


# --- processes ----------------------------------------------------------------------------------


def tree_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_group(process: subprocess.Popen[Any], seconds: float = 30) -> int:
    """SIGTERM to the process group of ``process`` (started in a session of its own), SIGKILL
    when it has not ended in ``seconds``; its exit code."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        code = process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        code = -9
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is still there
    process.wait()
    return code


@contextmanager
def started(
    command: list[str], log: Path, env: dict[str, str], port: int, what: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in a process group of its own, until ``port`` answers; stopped at the end."""
    with open(log, "ab") as out:
        process = subprocess.Popen(  # noqa: S603
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_port(port, process, what, 120)
        except RuntimeError:
            print(log.read_text()[-3000:], flush=True)
            raise
        yield process
    finally:
        stop_group(process)


def echo(ae_title: str, port: int) -> None:
    """A C-ECHO: the first association also warms the listener up."""
    subprocess.run(  # noqa: S603
        ["echoscu", "-aet", CALLING_AE, "-aec", ae_title, "127.0.0.1", str(port)],  # noqa: S607
        check=True,
        capture_output=True,
    )


# --- the corpus -----------------------------------------------------------------------------------


@dataclass
class Corpus:
    warm_bodies: list[bytes]
    bodies: list[bytes]
    cstore_dir: Path
    warm_count: int
    stow_count: int
    cstore_count: int
    queries: list[tuple[str, str]]  # (label, query string)
    expected: dict[str, int]  # label -> matching studies


def build_corpus(folder: Path) -> Corpus:
    import pydicom

    warm_count = PER_REQUEST * CLIENTS
    files = ct_corpus(warm_count + 2 * INSTANCES, PER_REQUEST)
    warm, stow, cstore = (
        files[:warm_count],
        files[warm_count : warm_count + INSTANCES],
        files[warm_count + INSTANCES :],
    )
    folder.mkdir(parents=True)
    for n, data in enumerate(cstore):
        (folder / f"ct-{n:04d}.dcm").write_bytes(data)
    studies: dict[str, tuple[str, str, str]] = {}
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        studies[ds.StudyInstanceUID] = (str(ds.PatientName), ds.PatientID, ds.StudyDate)
    first_uid, (first_name, first_id, _) = next(iter(studies.items()))
    prefix = first_name.split("^")[0][:4]
    dates = sorted(date for _, _, date in studies.values())
    low, high = dates[len(dates) // 4], dates[len(dates) // 2]
    queries = [
        ("PatientName=PAT* (no match)", "PatientName=PAT*"),
        (f"PatientName={prefix}*", f"PatientName={prefix}*"),
        ("PatientID=<exact>", f"PatientID={first_id}"),
        ("StudyDate=<range>", f"StudyDate={low}-{high}"),
        ("ModalitiesInStudy=CT", "ModalitiesInStudy=CT"),
        ("StudyInstanceUID=<exact>", f"StudyInstanceUID={first_uid}"),
    ]
    values = list(studies.values())
    expected = {
        queries[0][0]: 0,
        queries[1][0]: sum(name.upper().startswith(prefix.upper()) for name, _, _ in values),
        queries[2][0]: sum(pid == first_id for _, pid, _ in values),
        queries[3][0]: sum(low <= date <= high for _, _, date in values),
        queries[4][0]: len(values),
        queries[5][0]: 1,
    }
    return Corpus(
        warm_bodies=[
            multipart(warm[i : i + PER_REQUEST]) for i in range(0, len(warm), PER_REQUEST)
        ],
        bodies=[multipart(stow[i : i + PER_REQUEST]) for i in range(0, len(stow), PER_REQUEST)],
        cstore_dir=folder,
        warm_count=len(warm),
        stow_count=len(stow),
        cstore_count=len(cstore),
        queries=queries,
        expected=expected,
    )


# --- the measurements, the same for both servers -------------------------------------------------


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def post_all(url: str, headers: dict[str, str], bodies: list[bytes]) -> list[int]:
    """``bodies`` POSTed by ``CLIENTS`` threads on keep-alive sessions; the statuses."""
    import requests

    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                answer = session.post(url, data=body, headers=headers, timeout=300)
                with lock:
                    statuses.append(answer.status_code)
                    if answer.status_code != 200:
                        print(f"  STOW answered {answer.status_code}: {answer.text[:300]}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def measure_stow(
    figures: Figures,
    corpus: Corpus,
    url: str,
    headers: dict[str, str],
    server_pids: Callable[[], list[int]],
    dbname: str,
    exclude: set[int],
    count: Callable[[], int],
) -> None:
    headers = {**headers, "Content-Type": STOW_CONTENT_TYPE, "Accept": "application/dicom+json"}
    warm = post_all(url, headers, corpus.warm_bodies)
    assert warm == [200] * len(corpus.warm_bodies), warm
    pids = server_pids()
    cpu0 = tree_cpu(pids)
    with PgBackendCpu(dbname, exclude) as pg:
        t0 = time.perf_counter()
        statuses = post_all(url, headers, corpus.bodies)
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu(pids) - cpu0
    stored = count()
    expected = corpus.warm_count + corpus.stow_count
    assert statuses == [200] * len(corpus.bodies), sorted(set(statuses))
    assert stored == expected, f"{stored} instances in the index, {expected} sent"
    n = corpus.stow_count
    figures.values["STOW instances/s"] = n / elapsed
    figures.values["STOW server CPU ms/instance"] = cpu * 1000 / n
    figures.values["STOW PostgreSQL CPU ms/instance"] = pg.seconds * 1000 / n
    figures.values["STOW server+PG CPU ms/instance"] = (cpu + pg.seconds) * 1000 / n
    print(
        f"  STOW-RS: {n} instances in {elapsed:.2f} s = {n / elapsed:.1f} instances/s; CPU "
        f"ms/instance server {cpu * 1000 / n:.1f}, PostgreSQL {pg.seconds * 1000 / n:.1f} "
        f"({len(pg.first)} backends)",
        flush=True,
    )


def measure_cstore(
    figures: Figures,
    corpus: Corpus,
    ae_title: str,
    port: int,
    server_pids: Callable[[], list[int]],
    dbname: str,
    exclude: set[int],
    count: Callable[[], int],
) -> None:
    expected = corpus.warm_count + corpus.stow_count + corpus.cstore_count
    pids = server_pids()
    cpu0 = tree_cpu(pids)
    with PgBackendCpu(dbname, exclude) as pg:
        t0 = time.perf_counter()
        done = subprocess.run(  # noqa: S603
            ["storescu", "-aet", CALLING_AE, "-aec", ae_title, "127.0.0.1", str(port), "+sd"]  # noqa: S607
            + [str(corpus.cstore_dir)],
            capture_output=True,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            check=False,
        )
        acknowledged = time.perf_counter() - t0
        deadline = time.monotonic() + 600
        while (stored := count()) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu(pids) - cpu0
    assert done.returncode == 0, done.stderr[-2000:]
    assert stored == expected, f"{stored} instances in the index, {expected} expected"
    n = corpus.cstore_count
    figures.values["C-STORE instances/s (all indexed)"] = n / elapsed
    figures.values["C-STORE server CPU ms/instance"] = cpu * 1000 / n
    figures.values["C-STORE PostgreSQL CPU ms/instance"] = pg.seconds * 1000 / n
    figures.values["C-STORE server+PG CPU ms/instance"] = (cpu + pg.seconds) * 1000 / n
    print(
        f"  C-STORE (storescu, one association): acknowledged after {acknowledged:.2f} s, all "
        f"{n} indexed after {elapsed:.2f} s = {n / elapsed:.1f} instances/s; CPU ms/instance "
        f"server {cpu * 1000 / n:.1f}, PostgreSQL {pg.seconds * 1000 / n:.1f}",
        flush=True,
    )


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def latency(session: Any, url: str, headers: dict[str, str]) -> tuple[list[float], int]:
    """Client-observed milliseconds of ``QIDO_SAMPLES`` GETs after ``QIDO_WARMUP``; the answer's
    number of results (a JSON list) or 1 for an object."""
    for _ in range(QIDO_WARMUP):
        session.get(url, headers=headers, timeout=60)
    samples = []
    answer = None
    for _ in range(QIDO_SAMPLES):
        t0 = time.perf_counter()
        answer = session.get(url, headers=headers, timeout=60)
        samples.append((time.perf_counter() - t0) * 1000)
        assert answer.status_code in (200, 204), (url, answer.status_code, answer.text[:300])
    assert answer is not None
    if answer.status_code == 204 or not answer.content:
        return samples, 0
    body = answer.json()
    return samples, len(body) if isinstance(body, list) else 1


def measure_qido(figures: Figures, corpus: Corpus, base: str, headers: dict[str, str]) -> None:
    import requests

    headers = {**headers, "Accept": "application/dicom+json"}
    with requests.Session() as session:
        for label, query in corpus.queries:
            samples, found = latency(session, f"{base}/studies?{query}", headers)
            figures.values[f"QIDO {label} p50 ms"] = percentile(samples, 50)
            figures.values[f"QIDO {label} p95 ms"] = percentile(samples, 95)
            mismatch = "" if found == corpus.expected[label] else " (MISMATCH)"
            print(
                f"  QIDO-RS {label:<28} p50 {percentile(samples, 50):6.2f} ms  p95 "
                f"{percentile(samples, 95):6.2f} ms  {found} studies, "
                f"{corpus.expected[label]} expected{mismatch}",
                flush=True,
            )


# --- Strata ---------------------------------------------------------------------------------------

_django_ready = False


def strata_env(storage: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "WEB_CONCURRENCY", "DATABASE_CONN_MAX_AGE")
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "saas.settings.base",
            "DATABASE_URL": pg_url(STRATA_DB),
            "DEBUG": "0",
            "SECRET_KEY": "strata-bench-versus-secret-key-0123456789abcdef",
            "SECURE_SSL_REDIRECT": "0",  # plain HTTP on the loopback, no TLS proxy in front
            "ARCHIVE_BACKEND": "FILESYSTEM",
            "ARCHIVE_ROOT": str(storage / "archive"),
            "ARCHIVE_SPOOL_ROOT": str(storage / "spool"),
            "CELERY_BROKER_URL": "memory://",  # follow-up tasks are queued, not run
            "API_THROTTLE_RATE": "1000000/min",
            "LOG_LEVEL": "WARNING",
            "STRATA_ENV_FILE": "",  # no local settings file: this environment only
        }
    )
    return env


def strata_prepare(env: dict[str, str]) -> tuple[str, str]:
    """Schema, a hospital with a token (DICOM read and write) and the listener's AE title, made in
    this process; Django's connections closed afterwards. The token's secret and the table of
    instances."""
    global _django_ready
    os.environ.update(env)
    for key in ("REDIS_URL", "WEB_CONCURRENCY", "DATABASE_CONN_MAX_AGE"):
        os.environ.pop(key, None)
    import django

    if not _django_ready:
        django.setup()
        _django_ready = True
    from django.core.management import call_command
    from django.db import connections

    from archive.ae_titles.services import ae_create
    from archive.models import Instance
    from tenants.context import Actor
    from tenants.models import Organization
    from tenants.services import token_create

    try:
        call_command("migrate", verbosity=0, interactive=False)
        org = Organization.objects.create(name="Bench Hospital", slug="bench-hospital")
        _, secret = token_create(
            org=org, name="bench", scopes=["dicom:read", "dicom:write"], actor=Actor.system("bench")
        )
        ae_create(
            org=org,
            ae_title=STRATA_AE,
            allowed_calling_ae_titles=[CALLING_AE],
            allowed_networks=["127.0.0.0/8"],
            actor=Actor.system("bench"),
        )
        return secret, Instance._meta.db_table
    finally:
        connections.close_all()


def close_django() -> None:
    if _django_ready:
        from django.db import connections

        connections.close_all()


def run_strata(corpus: Corpus, work: Path) -> Figures:
    import psycopg
    import requests

    from bench.servers import web_server

    figures = Figures()
    storage = work / "strata"
    storage.mkdir()
    env = strata_env(storage)
    secret, table = strata_prepare(env)
    auth = {"Authorization": f"Bearer {secret}"}
    port = free_port()
    with (
        web_server(storage / "web.log") as (base, web_pid),
        started(
            [sys.executable, "manage.py", "run_scp", "--host", "127.0.0.1", "--port", str(port)],
            storage / "run_scp.log",
            env,
            port,
            "Strata's listener (manage.py run_scp)",
        ) as listener,
        psycopg.connect(pg_url(STRATA_DB), autocommit=True) as probe,
    ):
        echo(STRATA_AE, port)
        exclude = {probe.info.backend_pid}

        def count() -> int:
            row = probe.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            return int(row[0]) if row else 0

        measure_stow(
            figures,
            corpus,
            f"{base}/dicomweb/studies",
            auth,
            lambda: process_tree(web_pid),
            STRATA_DB,
            exclude,
            count,
        )
        measure_cstore(
            figures,
            corpus,
            STRATA_AE,
            port,
            lambda: process_tree(listener.pid),
            STRATA_DB,
            exclude,
            count,
        )
        measure_qido(figures, corpus, f"{base}/dicomweb", auth)
        with requests.Session() as session:
            samples, _ = latency(session, f"{base}/api/v1/organization/", auth)
        figures.values["API /api/v1/organization/ p50 ms"] = percentile(samples, 50)
        figures.values["API /api/v1/organization/ p95 ms"] = percentile(samples, 95)
        print(
            f"  GET /api/v1/organization/{'':<11} p50 {percentile(samples, 50):6.2f} ms  p95 "
            f"{percentile(samples, 95):6.2f} ms",
            flush=True,
        )
        with requests.Session() as session:
            samples, _ = latency(session, f"{base}/healthz", {})
        figures.values["HTTP floor p50 ms"] = percentile(samples, 50)
        print(
            f"  GET /healthz (the HTTP floor){'':<7} p50 {percentile(samples, 50):6.2f} ms  p95 "
            f"{percentile(samples, 95):6.2f} ms",
            flush=True,
        )
        web = process_tree(web_pid)
        web_rss = sum(rss_kb(p) for p in web) / 1024
        web_pss = sum(pss_kb(p) for p in web) / 1024
        children = [p for p in process_tree(listener.pid) if p != listener.pid]
        indexers = [p for p in children if "resource_tracker" not in cmdline(p)]
        trackers = [p for p in children if p not in indexers]
        listener_rss = rss_kb(listener.pid) / 1024
        indexer_rss = sum(rss_kb(p) for p in indexers) / 1024
        tracker_rss = sum(rss_kb(p) for p in trackers) / 1024
        figures.values["web server RSS MiB (sum)"] = web_rss
        figures.values["web server PSS MiB (sum)"] = web_pss
        figures.values["listener RSS MiB"] = listener_rss
        figures.values["indexer RSS MiB"] = indexer_rss
        print(
            f"  memory: web server {len(web)} processes RSS {web_rss:.0f} MiB, PSS "
            f"{web_pss:.0f} MiB; listener RSS {listener_rss:.0f} MiB, indexer "
            f"({len(indexers)} process) RSS {indexer_rss:.0f} MiB, multiprocessing's resource "
            f"tracker ({len(trackers)} process) RSS {tracker_rss:.0f} MiB",
            flush=True,
        )
    return figures


# --- Orthanc --------------------------------------------------------------------------------------


def orthanc_version() -> str:
    done = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].strip() if lines else "Orthanc (version unknown)"


def orthanc_config(folder: Path, http_port: int, dicom_port: int) -> dict[str, Any]:
    return {
        "Name": "strata-bench-versus",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE,
        "AuthenticationEnabled": False,
        "RemoteAccessAllowed": True,
        "Plugins": [str(DICOMWEB_PLUGIN), str(POSTGRESQL_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": PG_SOCKET_DIR,
            "Port": 5432,
            "Database": ORTHANC_DB,
            "Username": "postgres",
            "Password": "",
        },
    }


def run_orthanc(corpus: Corpus, work: Path) -> Figures:
    import requests

    figures = Figures()
    folder = work / "orthanc"
    folder.mkdir()
    http_port, dicom_port = free_port(), free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, http_port, dicom_port), indent=2))
    base = f"http://127.0.0.1:{http_port}"

    def count() -> int:
        answer = requests.get(f"{base}/statistics", timeout=30)
        answer.raise_for_status()
        return int(answer.json()["CountInstances"])

    with started(
        [ORTHANC, str(config)], folder / "orthanc.log", dict(os.environ), http_port, "Orthanc"
    ) as orthanc:
        wait_for_port(dicom_port, orthanc, "Orthanc's DICOM port", 60)
        echo(ORTHANC_AE, dicom_port)
        measure_stow(
            figures,
            corpus,
            f"{base}/dicom-web/studies",
            {},
            lambda: [orthanc.pid],
            ORTHANC_DB,
            set(),
            count,
        )
        measure_cstore(
            figures,
            corpus,
            ORTHANC_AE,
            dicom_port,
            lambda: [orthanc.pid],
            ORTHANC_DB,
            set(),
            count,
        )
        measure_qido(figures, corpus, f"{base}/dicom-web", {})
        with requests.Session() as session:
            samples, _ = latency(session, f"{base}/system", {})
        figures.values["HTTP floor p50 ms"] = percentile(samples, 50)
        print(
            f"  GET /system (the HTTP floor){'':<8} p50 {percentile(samples, 50):6.2f} ms  p95 "
            f"{percentile(samples, 95):6.2f} ms",
            flush=True,
        )
        rss = rss_kb(orthanc.pid) / 1024
        figures.values["Orthanc RSS MiB"] = rss
        print(f"  memory: Orthanc RSS {rss:.0f} MiB", flush=True)
    return figures


# --- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    strata_key: str | None
    orthanc_key: str | None
    target: str = ""
    # (Strata's median, Orthanc's median) -> met?
    check: Callable[[float, float | None], bool] | None = None


def rows(corpus: Corpus) -> list[Row]:
    def below(s: float, o: float | None) -> bool:
        return o is not None and s < o

    def no_worse(s: float, o: float | None) -> bool:
        return o is not None and s <= o

    table = [
        Row(
            "STOW instances/s",
            "STOW instances/s",
            "STOW instances/s",
            ">= 1.5x Orthanc",
            lambda s, o: o is not None and s >= 1.5 * o,
        ),
        Row(
            "STOW server CPU ms/instance",
            "STOW server CPU ms/instance",
            "STOW server CPU ms/instance",
        ),
        Row(
            "STOW PostgreSQL CPU ms/instance",
            "STOW PostgreSQL CPU ms/instance",
            "STOW PostgreSQL CPU ms/instance",
        ),
        Row(
            "STOW server+PG CPU ms/instance",
            "STOW server+PG CPU ms/instance",
            "STOW server+PG CPU ms/instance",
            "< Orthanc",
            below,
        ),
        Row(
            "C-STORE instances/s (all indexed)",
            "C-STORE instances/s (all indexed)",
            "C-STORE instances/s (all indexed)",
        ),
        Row(
            "C-STORE server CPU ms/instance",
            "C-STORE server CPU ms/instance",
            "C-STORE server CPU ms/instance",
            "< Orthanc",
            below,
        ),
        Row(
            "C-STORE PostgreSQL CPU ms/instance",
            "C-STORE PostgreSQL CPU ms/instance",
            "C-STORE PostgreSQL CPU ms/instance",
        ),
        Row(
            "C-STORE server+PG CPU ms/instance",
            "C-STORE server+PG CPU ms/instance",
            "C-STORE server+PG CPU ms/instance",
        ),
    ]
    for n, (label, _) in enumerate(corpus.queries):
        p50 = f"QIDO {label} p50 ms"
        if n == 0:
            table.append(
                Row(
                    p50,
                    p50,
                    p50,
                    "< 2 ms, <= Orthanc",
                    lambda s, o: s < 2 and o is not None and s <= o,
                )
            )
        else:
            table.append(Row(p50, p50, p50, "<= Orthanc", no_worse))
        table.append(Row(f"QIDO {label} p95 ms", f"QIDO {label} p95 ms", f"QIDO {label} p95 ms"))
    table += [
        Row(
            "API /api/v1/organization/ p50 ms",
            "API /api/v1/organization/ p50 ms",
            None,
            "< 2 ms",
            lambda s, o: s < 2,
        ),
        Row("API /api/v1/organization/ p95 ms", "API /api/v1/organization/ p95 ms", None),
        Row(
            "HTTP floor p50 ms (/healthz, /system)",
            "HTTP floor p50 ms",
            "HTTP floor p50 ms",
        ),
        Row(
            "server RSS MiB (web sum / Orthanc)",
            "web server RSS MiB (sum)",
            "Orthanc RSS MiB",
            "web < 300 MiB",
            lambda s, o: s < 300,
        ),
        Row("web server PSS MiB (sum)", "web server PSS MiB (sum)", None),
        Row("listener RSS MiB", "listener RSS MiB", None, "< 100 MiB", lambda s, o: s < 100),
        Row("indexer RSS MiB", "indexer RSS MiB", None, "< 100 MiB", lambda s, o: s < 100),
    ]
    return table


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def print_table(corpus: Corpus, strata: list[Figures], orthanc: list[Figures]) -> None:
    table = rows(corpus)
    width = max(len(row.name) for row in table)
    print(
        f"\n{'figure':<{width}}  {'Strata median (min-max)':<26} {'Orthanc median (min-max)':<26} "
        f"{'Strata/Orthanc per round':<26} target"
    )
    for row in table:
        s_values = [f.values[row.strata_key] for f in strata if row.strata_key in f.values]
        o_values = (
            [f.values[row.orthanc_key] for f in orthanc if row.orthanc_key in f.values]
            if row.orthanc_key
            else []
        )
        ratios = " ".join(
            f"{s / o:.2f}" if o else "-" for s, o in zip(s_values, o_values, strict=False)
        )
        verdict = ""
        if row.check is not None and s_values:
            o_median = statistics.median(o_values) if o_values else None
            met = row.check(statistics.median(s_values), o_median)
            verdict = f"{row.target}: {'met' if met else 'MISSED'}"
        print(
            f"{row.name:<{width}}  {spread(s_values):<26} {spread(o_values):<26} "
            f"{ratios or '-':<26} {verdict}",
            flush=True,
        )


# --- main -----------------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    missing = missing_tools()
    if missing:
        skip(f"needs {', '.join(missing)} (as root: {INSTALL})")
    enter_namespace()
    try:
        with pg_admin() as admin:
            row = admin.execute("SHOW server_version").fetchone()
            pg_version = str(row[0]) if row else "?"
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: no PostgreSQL here
        skip(f"needs PostgreSQL on its Unix socket in {PG_SOCKET_DIR} (user postgres): {exc}")

    # Stopped from outside: the servers, databases and folders go all the same (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="strata-bench-versus-"))
    strata: list[Figures] = []
    orthanc: list[Figures] = []
    started_at = time.monotonic()
    try:
        t0 = time.monotonic()
        corpus = build_corpus(work / "cstore")
        print(
            f"{os.cpu_count()} CPUs; {orthanc_version()}; PostgreSQL {pg_version} (Unix socket "
            f"{PG_SOCKET_DIR}); network namespace of its own"
        )
        print(
            f"corpus: CT 512x512x16 bit (~513 KB per instance), {PER_REQUEST} per study; STOW-RS "
            f"{corpus.stow_count} instances, {PER_REQUEST} per request, {CLIENTS} clients, after "
            f"{len(corpus.warm_bodies)} warm-up requests; C-STORE {corpus.cstore_count} more by "
            f"one storescu association; QIDO {QIDO_SAMPLES} samples after {QIDO_WARMUP} warm-ups; "
            f"{ROUNDS} rounds (made in {time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        for number in range(1, ROUNDS + 1):
            order = ["Strata", "Orthanc"] if number % 2 else ["Orthanc", "Strata"]
            print(f"\nround {number}: {' then '.join(order)}; load before {loadavg()}", flush=True)
            last = number == ROUNDS
            for server in order:
                folder = work / f"round-{number}-{server.lower()}"
                folder.mkdir()
                db = STRATA_DB if server == "Strata" else ORTHANC_DB
                recreate_database(db)
                print(f" {server}", flush=True)
                try:
                    if server == "Strata":
                        strata.append(run_strata(corpus, folder))
                    else:
                        orthanc.append(run_orthanc(corpus, folder))
                finally:
                    close_django()
                    if not (KEEP and last):
                        drop_database(db)
                        shutil.rmtree(folder, ignore_errors=True)
            print(f"round {number}: load after {loadavg()}", flush=True)
        print_table(corpus, strata, orthanc)
        print(f"\nrun time {time.monotonic() - started_at:.0f} s", flush=True)
    finally:
        close_django()
        if KEEP:
            print(f"kept {work} and the last round's databases {STRATA_DB}, {ORTHANC_DB}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            for db in (STRATA_DB, ORTHANC_DB):
                drop_database(db)


if __name__ == "__main__":
    main()
