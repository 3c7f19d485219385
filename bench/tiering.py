"""Tier policies and tier moves on PostgreSQL, each measurement in its own function.

Needs PostgreSQL: a scratch database ``strata_bench_tiering`` on the server of DATABASE_URL (or
postgres://postgres@127.0.0.1:5432), created here and dropped at the end (BENCH_KEEP=1 keeps
it). Skips with a message when PostgreSQL is unreachable. Objects go to a temporary filesystem
root, or to moto's S3 server over HTTP (three ways of serving it, see s3_moves below).

- planning: an index of 1M instances (100k studies of 10) bulk-loaded with COPY, received over
  two years and mostly never read again; a policy that moves most of them (CT/MR unread 90 days
  to cold, anything unread 30 days to warm). Time of ``archive.tiering.planning.moves_plan`` called in
  its default batches until nothing is left to plan. Target: < 10 s.
- simulation: ``archive.analytics.simulator.simulate`` for that organization (1M instances).
  Target: < 1 s.
- replication: ``archive.replicas.selectors.replication_status`` for that organization with a
  replica location (97% replicated, 2% pending, 1% not synced yet), then with a hole (anti-join).
- s3_moves: N objects of 256 KB in a bucket; storage-class changes per second of one worker
  (``archive.tiering.moves.moves_execute`` in batches of 100, as the dispatcher hands them out: claim,
  CopyObject, HEAD, index switch) against the server's own CopyObject rate measured by a bare
  boto3 loop in the same run, over as many objects of the same size, both warmed up first and
  interleaved in rounds (median of the per-round ratios). Target: >= 80%. Run against moto's
  S3 served three ways (BENCH_S3_SERVERS=thread,process,keep-alive picks some):
  - thread: ``ThreadedMotoServer`` in this process, sharing an interpreter with the worker;
  - process: ``moto_server`` in its own process: every moto service behind a dispatcher that
    lists moto's packages on disk for each request, on werkzeug's development server, which
    closes the connection after each request (a TCP connection and a server thread per request);
  - keep-alive (the representative one): moto's S3 application alone (``bench/moto_app.py``) in
    gunicorn's threaded worker, one process, connections kept open as an S3 endpoint keeps them.
  A move sends two requests (CopyObject and the HEAD that verifies it) where the bare loop sends
  one, so a fixed cost per request at the server weighs twice on the worker; the process and
  keep-alive modes report the server's CPU per request, which shows that cost.
  Also counts the requests that carry object bytes through the worker (GetObject, PutObject,
  UploadPart): must be zero.
- fs_moves: the filesystem backend: moves per second against the rate of a bare ``os.replace``
  loop over as many files of the same size on the same disk.

BENCH_ONLY=planning,simulation,replication,s3,fs runs some parts; BENCH_INSTANCES=1000000, BENCH_S3=600 and
BENCH_FS=2000 change the sizes; BENCH_S3_SERVERS=keep-alive runs one way of serving S3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "strata_bench_tiering"
SERVER_URL = os.environ.get("DATABASE_URL", "")
if not SERVER_URL.startswith(("postgres://", "postgresql://", "pgsql://")):
    SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"
INSTANCES = int(os.environ.get("BENCH_INSTANCES", "1000000"))
PER_STUDY = 10
S3_OBJECTS = int(os.environ.get("BENCH_S3", "600"))
S3_SIZE = 256 * 1024
S3_SERVERS = os.environ.get("BENCH_S3_SERVERS", "thread,process,keep-alive").split(",")
FS_FILES = int(os.environ.get("BENCH_FS", "2000"))
FS_SIZE = 64 * 1024
MOVE_BATCH = int(os.environ.get("BENCH_MOVE_BATCH", "100"))


def pg_url(dbname: str) -> str:
    parts = urlsplit(SERVER_URL)
    scheme = "postgresql" if parts.scheme in ("postgres", "pgsql") else parts.scheme
    return urlunsplit((scheme, parts.netloc, f"/{dbname}", parts.query, ""))


def admin_connect() -> psycopg.Connection[Any]:
    return psycopg.connect(pg_url("postgres"), autocommit=True, connect_timeout=3)


def create_database() -> None:
    try:
        admin = admin_connect()
    except psycopg.OperationalError as exc:
        print(f"SKIP: tiering.py needs PostgreSQL at {urlsplit(SERVER_URL).netloc}: {exc}".strip())
        sys.exit(0)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')  # a killed run's
        admin.execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database() -> None:
    from django.db import connections

    connections.close_all()
    if os.environ.get("BENCH_KEEP") == "1":
        print(f"kept database {DB_NAME}")
        return
    with admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-tiering-"))
create_database()
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "saas.settings.base",
        "DATABASE_URL": pg_url(DB_NAME),
        "DEBUG": "0",
        "SECRET_KEY": "strata-bench-tiering-secret-key-0123456789abcdef",
        "ARCHIVE_BACKEND": "FILESYSTEM",
        "ARCHIVE_ROOT": str(SCRATCH / "archive"),
        "ARCHIVE_SPOOL_ROOT": str(SCRATCH / "spool"),
        "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS": "1",
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "WARNING",
    }
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count, Model  # noqa: E402

from archive.models import (  # noqa: E402
    Instance,
    Series,
    StorageLocation,
    Study,
    TierMove,
)
from archive.tiering import moves as tier_moves  # noqa: E402
from tenants.context import Actor  # noqa: E402
from tenants.models import Organization  # noqa: E402

# --- bulk loading ------------------------------------------------------------------------------


def _copy(model: type[Model], rows: Iterator[dict[str, Any]]) -> None:
    """COPY rows into a model's table; columns not given take the field's default."""
    fields = list(model._meta.concrete_fields)
    defaults: dict[str, Any] = {}
    for f in fields:
        value = f.get_default()  # "" for text without a default, None when nullable
        if isinstance(value, dict | list):
            value = json.dumps(value)
        defaults[f.attname] = value
    columns = [str(f.column) for f in fields]
    names = [f.attname for f in fields]
    with connection.cursor() as cursor:
        raw = cursor.cursor
        table = model._meta.db_table
        with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row.get(n, defaults[n]) for n in names])
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
        )
        cursor.execute(f"ANALYZE {table}")


def _next_id(model: type[Model]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {model._meta.db_table}")
        return int(cursor.fetchone()[0])


def load_index(
    org: Organization,
    location: StorageLocation,
    count: int,
    *,
    size: int,
    now: datetime,
    keys: list[str] | None = None,
    sha256: str = "0" * 64,
) -> list[int]:
    """``count`` instances, ``PER_STUDY`` per study (one series each), loaded with COPY; received
    over the two years before ``now``, 1 in 10 read again since. Returns the instance ids."""
    rng = random.Random(count)
    studies = (count + PER_STUDY - 1) // PER_STUDY
    study0, series0, instance0 = _next_id(Study), _next_id(Series), _next_id(Instance)
    modalities = ["CT", "MR", "CR", "US", "MG"]
    received = [now - timedelta(days=rng.randrange(730)) for _ in range(studies)]
    mods = [rng.choice(modalities) for _ in range(studies)]
    tag = uuid.uuid4().hex[:8]

    def study_rows() -> Iterator[dict[str, Any]]:
        for k in range(studies):
            n = min(PER_STUDY, count - k * PER_STUDY)
            yield {
                "id": study0 + k,
                "organization_id": org.pk,
                "study_uid": f"1.2.826.0.1.3680043.10.{tag}.1.{k}",
                "patient_id": f"P{k:08d}",
                "study_date": date.fromordinal(received[k].date().toordinal()),
                "study_description": f"{mods[k]} EXAM",
                "modalities": f"\\{mods[k]}\\",
                "series_count": 1,
                "instance_count": n,
                "total_bytes": n * size,
                "bytes_hot": n * size,
                "created_at": received[k],
                "updated_at": received[k],
            }

    def series_rows() -> Iterator[dict[str, Any]]:
        for k in range(studies):
            n = min(PER_STUDY, count - k * PER_STUDY)
            yield {
                "id": series0 + k,
                "organization_id": org.pk,
                "study_id": study0 + k,
                "series_uid": f"1.2.826.0.1.3680043.10.{tag}.2.{k}",
                "modality": mods[k],
                "instance_count": n,
                "total_bytes": n * size,
                "bytes_hot": n * size,
                "created_at": received[k],
            }

    def instance_rows() -> Iterator[dict[str, Any]]:
        for i in range(count):
            k = i // PER_STUDY
            read = received[k] + timedelta(days=1) if i % 10 == 0 else None
            yield {
                "id": instance0 + i,
                "organization_id": org.pk,
                "study_id": study0 + k,
                "series_id": series0 + k,
                "sop_instance_uid": f"1.2.826.0.1.3680043.10.{tag}.3.{i}",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "size_bytes": size,
                "sha256": sha256,
                "location_id": location.pk,
                "object_key": keys[i] if keys else f"org-{org.pk}/{tag}/{i}.dcm",
                "tier": "hot",
                "received_at": received[k],
                "last_accessed_at": read,
            }

    _copy(Study, study_rows())
    _copy(Series, series_rows())
    _copy(Instance, instance_rows())
    return list(range(instance0, instance0 + count))


def plan_moves(org: Organization, instance_ids: list[int], to_tier: str) -> list[int]:
    """TierMove rows for the instances, as the planner writes them (one INSERT ... SELECT)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO archive_tiermove (organization_id, instance_id, study_id, origin, "
            "from_tier, to_tier, from_location_id, to_location_id, size_bytes, state, attempts, "
            "error, planned_at, claimed_by) SELECT organization_id, id, study_id, 'manual', tier, "
            "%s, location_id, location_id, size_bytes, 'planned', 0, '', now(), '' "
            "FROM archive_instance WHERE id = ANY(%s) ORDER BY id RETURNING id",
            [to_tier, instance_ids],
        )
        return sorted(r[0] for r in cursor.fetchall())


def execute_in_batches(org: Organization, move_ids: list[int]) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(move_ids), MOVE_BATCH):
        result = tier_moves.moves_execute(org=org, move_ids=move_ids[start : start + MOVE_BATCH])
        assert result.failed == 0, result.errors
    return time.perf_counter() - t0


# --- planning ----------------------------------------------------------------------------------

RULES = [
    {
        "name": "CT and MR unread for 90 days to cold",
        "conditions": {"days_since_last_access": {"min": 90}, "modalities": ["CT", "MR"]},
        "action": {"type": "move", "tier": "cold"},
    },
    {
        "name": "Anything unread for 30 days to warm",
        "conditions": {"days_since_last_access": {"min": 30}},
        "action": {"type": "move", "tier": "warm"},
    },
]


PLAN_BATCH = int(os.environ.get("BENCH_PLAN_BATCH", "250000"))


def planning() -> Organization:
    from archive.policies.versions import policy_save
    from archive.tiering.planning import moves_plan

    org = Organization.objects.create(name="Bench planning", slug="bench-planning")
    location = StorageLocation.objects.create(organization=org, name="Platform storage")
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    load_index(org, location, INSTANCES, size=524_288, now=now)
    print(f"planning: index of {INSTANCES:,} instances loaded in {time.perf_counter() - t0:.0f} s")
    policy_save(org=org, actor=Actor.system("bench"), rules=RULES, activate=True)
    t0 = time.perf_counter()
    planned = calls = 0
    while True:
        calls += 1
        n = moves_plan(org=org, limit=PLAN_BATCH, now=now)
        planned += n
        # As the beat task does: a batch that was not full ended the pass over the index.
        if n < PLAN_BATCH:
            break
    elapsed = time.perf_counter() - t0
    by_tier = dict(
        TierMove.objects.filter(organization=org).values_list("to_tier").annotate(n=Count("id"))
    )
    print(
        f"planning: {planned:,} moves planned over {INSTANCES:,} instances in {elapsed:.2f} s "
        f"({calls} calls of moves_plan; {by_tier}) target < 10 s: "
        f"{'OK' if elapsed < 10 else 'MISSED'}"
    )
    return org


# --- the simulator at 1M instances -------------------------------------------------------------


def simulation_at_1m(org: Organization) -> None:
    """The cost simulator over the planning index (owned by the simulator; timed here)."""
    try:
        from archive.analytics.simulator import simulate
    except ImportError:
        print("simulation: archive.analytics.simulator not available")
        return
    simulate(org=org)  # warm caches / connections once
    t0 = time.perf_counter()
    simulate(org=org)
    elapsed = time.perf_counter() - t0
    print(
        f"simulation: {INSTANCES:,} instances in {elapsed * 1000:.0f} ms, target < 1 s: "
        f"{'OK' if elapsed < 1 else 'MISSED'}"
    )


# --- replication status at 1M instances --------------------------------------------------------


def replication_at_1m(org: Organization) -> None:
    """``archive.replicas.selectors.replication_status`` over the planning index with a replica
    location: 97% of the instances replicated, 2% pending, 1% (the newest) not synced yet; then
    with an older instance's row missing too (the anti-join case)."""
    from archive.models import InstanceReplica
    from archive.replicas.selectors import replication_status

    replica = StorageLocation.objects.create(
        organization=org, name="Bench replica", role=StorageLocation.Role.REPLICA
    )
    ids = list(
        Instance.objects.filter(organization=org).order_by("id").values_list("id", flat=True)
    )
    synced = ids[: len(ids) * 99 // 100]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO archive_instancereplica (organization_id, instance_id, location_id, tier, "
            "state, attempts, error, created_at) SELECT organization_id, id, %s, 'cold', CASE "
            "WHEN id %% 50 = 0 THEN 'pending' ELSE 'done' END, 1, '', now() "
            "FROM archive_instance WHERE organization_id = %s AND id <= %s",
            [replica.pk, org.pk, synced[-1]],
        )
        cursor.execute("ANALYZE archive_instancereplica")

    def timed() -> tuple[float, Any]:
        replication_status(org=org)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            status = replication_status(org=org)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs), status

    usual, status = timed()
    InstanceReplica.objects.filter(location=replica, instance_id=synced[len(synced) // 2]).delete()
    hole, _ = timed()
    print(
        f"replication status: {len(ids):,} instances ({status.replicated:,} replicated, "
        f"{status.pending:,} pending of which {len(ids) - len(synced):,} not synced): median "
        f"{usual * 1000:.0f} ms; with an older instance's row missing (anti-join) "
        f"{hole * 1000:.0f} ms; {load()}"
    )


# --- S3 moves ----------------------------------------------------------------------------------


@dataclass
class MotoServer:
    url: str
    pid: int | None  # the server's own process, None in thread mode

    def cpu_seconds(self) -> float | None:
        """CPU time the server process and its children (gunicorn's worker) used so far (Linux
        /proc), None when not measurable."""
        if self.pid is None:
            return None
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            ticks = 0
            for pid in [self.pid, *map(int, children)]:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        except OSError:
            return None
        return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def moto_endpoint(mode: str) -> Iterator[MotoServer]:
    """moto's S3 server: in a thread of this process (sharing its interpreter with the worker
    and the bare loop), as its own process (``moto_server``), or moto's S3 application alone in
    gunicorn with connections kept open (``keep-alive``)."""
    if mode == "thread":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield MotoServer(f"http://{host}:{port}", None)
        finally:
            server.stop()
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if mode == "keep-alive":
        # moto's own S3 application (the one moto_server runs) served by gunicorn's threaded
        # worker, which keeps connections open between requests as S3 does; moto_server's
        # development server closes every connection after one request.
        command = [
            str(Path(sys.executable).parent / "gunicorn"),
            "--worker-class", "gthread", "--workers", "1", "--threads", "8",
            "--keep-alive", "30", "--bind", f"127.0.0.1:{port}",
            "--chdir", str(Path(__file__).resolve().parent), "moto_app:app",
        ]  # fmt: skip
    else:
        command = [
            str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port),
        ]  # fmt: skip
    process = subprocess.Popen(  # noqa: S603
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield MotoServer(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.wait(10)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def s3_moves(mode: str) -> None:
    """Rounds of: bare loop over half a round's keys, the worker over a round's moves, the bare
    loop over the other half; after a warm-up of both (client, connections, first batch). The
    ratio is taken per round (each against the bare rate around it) and its median reported,
    so that a burst of other load on the machine weighs on one round, not on the figure."""
    import boto3

    from archive.storage.credentials import encrypt

    print(f"s3 moves ({mode} server): start, {load()}")
    rounds = max(1, S3_OBJECTS // (2 * MOVE_BATCH))
    per_round = S3_OBJECTS // rounds
    warm = MOVE_BATCH
    with moto_endpoint(mode) as server:
        endpoint = server.url
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
        )
        bucket = f"strata-bench-tiering-{mode}"
        client.create_bucket(Bucket=bucket)
        body = os.urandom(S3_SIZE)
        sha = hashlib.sha256(body).hexdigest()
        # Same object size and count for the worker and the bare loop.
        moved_keys = [f"moves/{i:06d}.dcm" for i in range(warm + rounds * per_round)]
        bare_keys = [f"bare/{i:06d}.dcm" for i in range(len(moved_keys))]
        for key in moved_keys + bare_keys:
            client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"sha256": sha})

        org = Organization.objects.create(name=f"Bench S3 {mode}", slug=f"bench-s3-{mode}")
        location = StorageLocation.objects.create(
            organization=org,
            name="Bench bucket",
            kind=StorageLocation.Kind.S3,
            endpoint_url=endpoint,
            region="us-east-1",
            bucket=bucket,
            access_key_id="bench",
            secret_access_key_encrypted=encrypt("bench-secret"),
        )
        ids = load_index(
            org, location, len(moved_keys), size=S3_SIZE, now=datetime.now(UTC), keys=moved_keys,
            sha256=sha,
        )  # fmt: skip
        move_ids = plan_moves(org, ids, "cold")

        # Count what the worker sends: no request may carry object bytes.
        calls: dict[str, int] = {}
        real_store_for = tier_moves.store_for

        hooked: set[int] = set()

        def counting(loc: StorageLocation) -> Any:
            store: Any = real_store_for(loc)
            # Stores share one client per endpoint: hook each client once.
            if id(store.client) not in hooked:
                hooked.add(id(store.client))
                store.client.meta.events.register(
                    "before-call.s3",
                    lambda model, **kwargs: calls.__setitem__(
                        model.name, calls.get(model.name, 0) + 1
                    ),
                )
            return store

        tier_moves.store_for = counting  # type: ignore[assignment]

        def bare(keys: list[str]) -> float:
            t0 = time.perf_counter()
            for key in keys:
                client.copy_object(
                    Bucket=bucket,
                    Key=key,
                    CopySource={"Bucket": bucket, "Key": key},
                    StorageClass="GLACIER_IR",
                    MetadataDirective="COPY",
                )
            return time.perf_counter() - t0

        bare(bare_keys[:warm])
        execute_in_batches(org, move_ids[:warm])
        calls.clear()
        ratios: list[float] = []
        bare_time = worker_time = 0.0
        worker_cpu = 0.0
        server_cpu = {"bare": 0.0, "worker": 0.0}
        for r in range(rounds):
            keys = bare_keys[warm + r * per_round : warm + (r + 1) * per_round]
            moves = move_ids[warm + r * per_round : warm + (r + 1) * per_round]
            s0 = server.cpu_seconds()
            first = bare(keys[: len(keys) // 2])
            s1 = server.cpu_seconds()
            cpu0 = time.process_time()
            worker = execute_in_batches(org, moves)
            worker_cpu += time.process_time() - cpu0
            s2 = server.cpu_seconds()
            second = bare(keys[len(keys) // 2 :])
            s3 = server.cpu_seconds()
            if s0 is not None and s1 is not None and s2 is not None and s3 is not None:
                server_cpu["bare"] += (s1 - s0) + (s3 - s2)
                server_cpu["worker"] += s2 - s1
            bare_time += first + second
            worker_time += worker
            ratios.append((len(moves) / worker) / (len(keys) / (first + second)))
        tier_moves.store_for = real_store_for

        measured = rounds * per_round
        bare_rate = measured / bare_time
        worker_rate = measured / worker_time
        ratio = statistics.median(ratios)
        classes = {
            client.head_object(Bucket=bucket, Key=k).get("StorageClass", "STANDARD")
            for k in moved_keys[:: max(1, len(moved_keys) // 50)]
        }
        done = TierMove.objects.filter(pk__in=move_ids, state="done").count()
        byte_calls = sum(calls.get(n, 0) for n in ("GetObject", "PutObject", "UploadPart"))
        print(
            f"s3 moves ({mode} server): {measured} objects of {S3_SIZE // 1024} KB in {rounds} "
            f"rounds (after a warm-up of {warm}), batches of {MOVE_BATCH}, {tier_moves.THREADS} "
            f"threads: worker {worker_rate:.0f} storage-class changes/s (claim, CopyObject, HEAD, "
            f"index switch) vs bare boto3 CopyObject loop {bare_rate:.0f}/s; per round "
            f"{' '.join(f'{x:.0%}' for x in ratios)}, median {ratio:.0%} (target >= 80%: "
            f"{'OK' if ratio >= 0.8 else 'MISSED'}); {done} done, classes after {sorted(classes)}"
        )
        cpu = f"worker process CPU {worker_cpu / measured * 1000:.1f} ms per move"
        if server.pid is not None and server_cpu["worker"]:
            cpu += (
                f"; S3 server CPU {server_cpu['bare'] / measured * 1000:.1f} ms per bare "
                f"CopyObject, {server_cpu['worker'] / measured * 1000:.1f} ms per move "
                f"(CopyObject + HEAD): the server alone caps the worker at "
                f"{measured / server_cpu['worker']:.0f} moves/s on a free core"
            )
        else:
            cpu += " (includes the server's, which runs in this process)"
        print(f"s3 moves ({mode}): {cpu}; {load()}")
        print(
            f"s3 moves ({mode}): requests by the worker {dict(sorted(calls.items()))}; requests "
            f"carrying object bytes (GetObject/PutObject/UploadPart): {byte_calls}, object bytes "
            f"through the worker: {byte_calls * S3_SIZE}"
        )


# --- filesystem moves --------------------------------------------------------------------------


def fs_moves() -> None:
    from django.conf import settings

    org = Organization.objects.create(name="Bench FS moves", slug="bench-fs-moves")
    location = StorageLocation.objects.create(organization=org, name="Platform storage")
    root = Path(settings.ARCHIVE_ROOT)
    body = os.urandom(FS_SIZE)
    keys = [f"org-{org.pk}/fs/{i // 100:03d}/{i:06d}.dcm" for i in range(FS_FILES)]
    for key in keys:
        path = root / "hot" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    raw = [SCRATCH / "raw" / "hot" / f"{i // 100:03d}" / f"{i:06d}" for i in range(FS_FILES)]
    for path in raw:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    os.sync()
    ids = load_index(
        org, location, FS_FILES, size=FS_SIZE, now=datetime.now(UTC), keys=keys,
        sha256=hashlib.sha256(body).hexdigest(),
    )  # fmt: skip
    move_ids = plan_moves(org, ids, "cold")

    t0 = time.perf_counter()
    for path in raw:
        target = SCRATCH / "raw" / "cold" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    replace_rate = FS_FILES / (time.perf_counter() - t0)
    worker = execute_in_batches(org, move_ids)
    moved = sum(1 for key in keys if (root / "cold" / key).exists())
    left = sum(1 for key in keys if (root / "hot" / key).exists())
    rate = FS_FILES / worker
    print(
        f"fs moves: {FS_FILES} files of {FS_SIZE // 1024} KB, batches of {MOVE_BATCH}: worker "
        f"{rate:.0f} moves/s, {1000 / rate:.2f} ms per move (claim, link, stat, index switch, "
        f"unlink) vs bare os.replace loop {replace_rate:.0f}/s "
        f"= {rate / replace_rate:.0%}; {moved} in cold, {left} left in hot; {load()}"
    )
    # The disk itself: what a byte copy would cost instead (the move copies none).
    t0 = time.perf_counter()
    for key in keys[:200]:
        shutil.copyfile(root / "cold" / key, SCRATCH / "copy.tmp")
    copy_rate = 200 / (time.perf_counter() - t0)
    print(
        f"fs moves: for scale, copying the bytes would run at {copy_rate:.0f} files/s "
        f"({copy_rate * FS_SIZE / 1e6:.0f} MB/s)"
    )


def main() -> None:
    call_command("migrate", verbosity=0)
    print(
        f"database: PostgreSQL {getattr(connection, 'pg_version', 0) // 10000}, scratch "
        f"{DB_NAME}; CPUs: {os.cpu_count()}; {load()}"
    )
    only = {name for name in os.environ.get("BENCH_ONLY", "").split(",") if name}
    try:
        if not only or {"planning", "simulation", "replication"} & only:
            org = planning()
            if not only or "simulation" in only:
                simulation_at_1m(org)
            if not only or "replication" in only:
                replication_at_1m(org)
        if not only or "s3" in only:
            for mode in S3_SERVERS:
                s3_moves(mode)
        if not only or "fs" in only:
            fs_moves()
    finally:
        drop_database()
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
