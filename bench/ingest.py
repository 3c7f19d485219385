"""Ingest throughput and search latency on PostgreSQL, each measurement in its own function.

Needs PostgreSQL: a scratch database ``strata_bench_ingest`` on the server of DATABASE_URL (or
postgres://postgres@127.0.0.1:5432), created here and dropped at the end (BENCH_KEEP=1 keeps
it). Skips with a message when PostgreSQL is unreachable. Objects go to a temporary filesystem
storage root.

- stow_throughput: 400 CT instances of ~512 KB, 10 per STOW-RS request, sent by 4 concurrent
  clients (threads with requests) to the production web server (gunicorn as ``manage.py serve``
  starts it, its configuration printed) on the scratch database; prints instances/s, MB/s and
  the web processes' CPU time per instance. Once on the filesystem backend, once on S3 (moto's
  ThreadedMotoServer over HTTP, in its own process), next to moto's own ceiling: a bare boto3
  ``put_object`` loop of 512 KB objects with 1 and with 4 threads.
- stow_large / wado_large: one 1 GiB instance sent by STOW-RS (streamed from a file) and
  retrieved by WADO-RS (streamed, discarded); the peak resident memory above idle of the web
  process that served it, sampled from /proc (target < 150 MB each).
- qido_latency: 100k, then 1M studies (each with a series and an instance) of one hospital loaded
  with COPY (``bench.index_loader``); p50/p95 of study searches by PatientID, by PatientName
  wildcard (prefix, and infix) and by fuzzy PatientName (``fuzzymatching=true``: the full given
  and family names in the other order, the start of both, one given name), through the full
  Django stack in-process (test client), with the name indexes of migration 0002 and the name
  words' index.

Targets: STOW >= 200 instances/s with 4 clients (filesystem); QIDO p95 < 20 ms by PatientID and < 100 ms by
wildcard name at 1M studies. BENCH_STUDIES=100000,1000000 and BENCH_STOW=400 change the sizes;
BENCH_ONLY=stow, stow-s3, large or qido runs one part (comma-separated for several);
BENCH_LARGE_MB=1024 changes the large instance.
"""

from __future__ import annotations

import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import BOUNDARY, ct_corpus, multipart  # noqa: E402
from bench.index_loader import SIZE, load_studies, patient, pct  # noqa: E402
from bench.scratch import ScratchDatabase  # noqa: E402
from bench.servers import (  # noqa: E402
    MOTO_KEYS,
    PeakRss,
    cpu_seconds,
    moto_s3,
    process_tree,
    s3_client,
    server_description,
    web_server,
)

DB_NAME = "strata_bench_ingest"
STOW_INSTANCES = int(os.environ.get("BENCH_STOW", "400"))
STOW_PER_REQUEST = 10
STOW_CLIENTS = 4
LARGE_MB = int(os.environ.get("BENCH_LARGE_MB", "1024"))
STUDY_SIZES = [int(n) for n in os.environ.get("BENCH_STUDIES", "100000,1000000").split(",")]
QIDO_SAMPLES = 200

SCRATCH_DB = ScratchDatabase(DB_NAME, "ingest.py")
pg_url = SCRATCH_DB.url
create_database = SCRATCH_DB.create
drop_database = SCRATCH_DB.drop


SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-ingest-"))
create_database()
# The server process inherits this environment: production settings, scratch database and storage.
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "saas.settings.base",
        "DATABASE_URL": pg_url(DB_NAME),
        "DEBUG": "0",
        "SECRET_KEY": "strata-bench-ingest-secret-key-0123456789abcdef",
        "SECURE_SSL_REDIRECT": "0",  # plain HTTP on the loopback, no TLS proxy in front
        "ARCHIVE_BACKEND": "FILESYSTEM",
        "ARCHIVE_ROOT": str(SCRATCH / "archive"),
        "ARCHIVE_SPOOL_ROOT": str(SCRATCH / "spool"),
        "CELERY_BROKER_URL": "memory://",  # follow-up tasks are queued, not run, as in production
        "API_THROTTLE_RATE": "1000000/min",
        "LOG_LEVEL": "WARNING",
    }
)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from archive.models import Instance, StorageLocation  # noqa: E402
from tenants.context import Actor  # noqa: E402
from tenants.models import Organization  # noqa: E402
from tenants.services import token_create  # noqa: E402

# --- shared helpers ------------------------------------------------------------------------------


def bench_org(slug: str, scopes: list[str]) -> tuple[Organization, str]:
    """A hospital and a token secret with ``scopes``."""
    org = Organization.objects.create(name=f"Bench {slug}", slug=slug)
    _, secret = token_create(org=org, name="bench", scopes=scopes, actor=Actor.system("bench"))
    return org, secret


# --- STOW-RS throughput ---------------------------------------------------------------------------


def stow_throughput(
    label: str, slug: str, env: dict[str, str] | None = None, target: str = ""
) -> None:
    """4 clients, 10 instances per request, against the production web server."""
    import requests

    org, secret = bench_org(f"stow-{slug}", ["dicom:write"])
    warm_count = STOW_PER_REQUEST * STOW_CLIENTS
    files = ct_corpus(STOW_INSTANCES + warm_count, STOW_PER_REQUEST)
    warm_up, files = files[:warm_count], files[warm_count:]
    bodies = [
        multipart(files[i : i + STOW_PER_REQUEST]) for i in range(0, len(files), STOW_PER_REQUEST)
    ]
    warm_bodies = [
        multipart(warm_up[i : i + STOW_PER_REQUEST])
        for i in range(0, len(warm_up), STOW_PER_REQUEST)
    ]
    total_bytes = sum(map(len, files))
    headers = {
        "Authorization": f"Bearer {secret}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    with web_server(SCRATCH / "server.log", env) as (base, pid):
        url = f"{base}/dicomweb/studies"

        def send_all(work: queue.Queue[bytes], statuses: list[int], latencies: list[float]) -> None:
            lock = threading.Lock()

            def client() -> None:
                with requests.Session() as session:
                    while True:
                        try:
                            body = work.get_nowait()
                        except queue.Empty:
                            return
                        t0 = time.perf_counter()
                        answer = session.post(url, data=body, headers=headers, timeout=300)
                        with lock:
                            statuses.append(answer.status_code)
                            latencies.append((time.perf_counter() - t0) * 1000)
                            if answer.status_code != 200:
                                print(answer.text[:500])

            threads = [threading.Thread(target=client) for _ in range(STOW_CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        # First requests (imports, connections, caches in every worker), concurrently so that
        # they spread over the workers.
        warm: queue.Queue[bytes] = queue.Queue()
        for body in warm_bodies:
            warm.put(body)
        warm_statuses: list[int] = []
        send_all(warm, warm_statuses, [])
        assert warm_statuses == [200] * len(warm_bodies), warm_statuses
        work: queue.Queue[bytes] = queue.Queue()
        for body in bodies:
            work.put(body)
        statuses: list[int] = []
        latencies: list[float] = []
        pids = process_tree(pid)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.perf_counter()
        send_all(work, statuses, latencies)
        elapsed = time.perf_counter() - t0
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    stored = Instance.objects.for_org(org).count() - len(warm_up)
    assert statuses == [200] * len(bodies), sorted(set(statuses))
    assert stored == len(files), (stored, len(files))
    print(
        f"STOW-RS {STOW_CLIENTS} clients, {label}: {len(files)} instances in "
        f"{elapsed:.2f} s = {len(files) / elapsed:7.1f} instances/s, "
        f"{total_bytes / elapsed / 1e6:6.1f} MB/s; request p50 {pct(latencies, 50):.0f} ms, "
        f"p95 {pct(latencies, 95):.0f} ms; web CPU {cpu * 1000 / len(files):.1f} ms/instance"
        f"{target}",
        flush=True,
    )


def moto_put_ceiling(endpoint: str, bucket: str, count: int = 200) -> None:
    """What moto itself manages: bare ``put_object`` of 512 KB objects, 1 and 4 threads."""
    body = os.urandom(SIZE)
    for threads in (1, STOW_CLIENTS):
        clients = [s3_client(endpoint) for _ in range(threads)]
        per_thread = count // threads

        def put(client: Any, prefix: str, count: int) -> None:
            for k in range(count):
                client.put_object(Bucket=bucket, Key=f"{prefix}/{k}", Body=body)

        workers = [
            threading.Thread(target=put, args=(clients[n], f"ceiling/{threads}/{n}", per_thread))
            for n in range(threads)
        ]
        t0 = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - t0
        print(
            f"  moto ceiling: bare boto3 put_object of 512 KB, {threads} thread(s): "
            f"{per_thread * threads / elapsed:6.1f} PUTs/s, "
            f"{per_thread * threads * SIZE / elapsed / 1e6:5.1f} MB/s",
            flush=True,
        )


def stow_s3() -> None:
    with moto_s3() as endpoint:
        bucket = "strata-bench"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        moto_put_ceiling(endpoint, bucket)
        stow_throughput(
            "S3 backend (moto over HTTP; one PUT per object, its SHA-256 checked by the server)",
            "s3",
            {
                "ARCHIVE_BACKEND": "S3",
                "ARCHIVE_S3_ENDPOINT_URL": endpoint,
                "ARCHIVE_S3_BUCKET": bucket,
                **MOTO_KEYS,
            },
        )


# --- one large instance: memory of the web process --------------------------------------------------


def write_large_instance(path: Path, megabytes: int) -> Path:
    """A multi-frame CT of about ``megabytes`` MiB, written frame by frame (never in memory)."""
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
    return path


def large_instance() -> None:
    """One large instance in by STOW-RS and out by WADO-RS: the web worker's memory."""
    import pydicom
    import requests

    org, secret = bench_org("large", ["dicom:write", "dicom:read"])
    source = write_large_instance(SCRATCH / "large.dcm", LARGE_MB)
    size = source.stat().st_size
    head = pydicom.dcmread(source, stop_before_pixels=True)
    body = SCRATCH / "large.multipart"
    with open(body, "wb") as out, open(source, "rb") as data:
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        shutil.copyfileobj(data, out, 1024 * 1024)
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    source.unlink()
    auth = {"Authorization": f"Bearer {secret}"}
    with web_server(SCRATCH / "server.log") as (base, pid), requests.Session() as session:
        # Every worker has served a request (its imports and caches are in its idle RSS).
        for _ in range(20):
            session.get(f"{base}/dicomweb/studies?PatientID=none", headers=auth, timeout=60)
        with PeakRss(pid) as memory, open(body, "rb") as stream:
            t0 = time.perf_counter()
            answer = session.post(
                f"{base}/dicomweb/studies",
                data=stream,  # streamed from the file with its Content-Length
                headers={
                    **auth,
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                    "Accept": "application/dicom+json",
                },
                timeout=600,
            )
            elapsed = time.perf_counter() - t0
        assert answer.status_code == 200, answer.text[:500]
        print(
            f"STOW-RS one {size / 1e6:.0f} MB instance: {elapsed:.1f} s "
            f"({size / elapsed / 1e6:.0f} MB/s); {memory.report()}",
            flush=True,
        )
        body.unlink()
        url = (
            f"{base}/dicomweb/studies/{head.StudyInstanceUID}/series/{head.SeriesInstanceUID}"
            f"/instances/{head.SOPInstanceUID}"
        )
        with PeakRss(pid) as memory:
            t0 = time.perf_counter()
            received = 0
            with session.get(
                url,
                headers={**auth, "Accept": 'multipart/related; type="application/dicom"'},
                stream=True,
                timeout=600,
            ) as answer:
                assert answer.status_code == 200, answer.text[:500]
                for chunk in answer.iter_content(1024 * 1024):
                    received += len(chunk)
            elapsed = time.perf_counter() - t0
        assert received > size, (received, size)
        print(
            f"WADO-RS one {size / 1e6:.0f} MB instance: {elapsed:.1f} s "
            f"({received / elapsed / 1e6:.0f} MB/s); {memory.report()}",
            flush=True,
        )


# --- QIDO-RS latency -----------------------------------------------------------------------------


def measure(client: Client, secret: str, make_path: Callable[[random.Random], str]) -> list[float]:
    rng = random.Random(5)
    headers = {"Authorization": f"Bearer {secret}", "Accept": "application/dicom+json"}
    for _ in range(10):
        client.get(make_path(rng), headers=headers)
    samples = []
    for _ in range(QIDO_SAMPLES):
        path = make_path(rng)
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.content[:300]
        assert response.json(), f"no match for {path}"
    return samples


def qido_latency() -> None:
    setup_test_environment()
    org, secret = bench_org("qido", ["dicom:read"])
    location = StorageLocation.objects.create(organization=org, name="Platform storage")
    client = Client()
    loaded = 0
    for size in STUDY_SIZES:
        t0 = time.perf_counter()
        load_studies(org, location, loaded, size)
        loaded = size
        print(
            f"QIDO-RS index: {size:,} studies / series / instances (loaded in "
            f"{time.perf_counter() - t0:.0f} s)"
        )

        def by_id(rng: random.Random, count: int = size) -> str:
            return f"/dicomweb/studies?PatientID={patient(rng.randrange(count))[0]}"

        def by_name_prefix(rng: random.Random, count: int = size) -> str:
            family, given = patient(rng.randrange(count))[1].split("^")
            return f"/dicomweb/studies?PatientName={family}^{given[:2]}*"

        def by_name_infix(rng: random.Random, count: int = size) -> str:
            family, given = patient(rng.randrange(count))[1].split("^")
            return f"/dicomweb/studies?PatientName=*{family[1:]}^{given}*"

        def fuzzy(words: str) -> str:
            return f"/dicomweb/studies?PatientName={words}&fuzzymatching=true"

        def fuzzy_given_family(rng: random.Random, count: int = size) -> str:
            family, given = patient(rng.randrange(count))[1].split("^")
            return fuzzy(f"{given.lower()}%20{family.lower()}")

        def fuzzy_prefixes(rng: random.Random, count: int = size) -> str:
            family, given = patient(rng.randrange(count))[1].split("^")
            return fuzzy(f"{family[:4].lower()}%20{given[:2].lower()}")

        def fuzzy_one_word(rng: random.Random, count: int = size) -> str:
            return fuzzy(patient(rng.randrange(count))[1].split("^")[1].lower())

        # The name indexes of migration 0002 (UPPER text_pattern_ops, trigrams) and the name
        # words' index are in place.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE archive_study")
        for name, make_path in (
            ("PatientID exact", by_id),
            ("PatientName FAMILY^GI*", by_name_prefix),
            ("PatientName *AMILY^GIVEN*", by_name_infix),
            # Fuzzy matching (the name words' index): ~83, ~670 and ~33,000 matching studies.
            ("fuzzy 'given family'", fuzzy_given_family),
            ("fuzzy 'fami gi'", fuzzy_prefixes),
            ("fuzzy 'given'", fuzzy_one_word),
        ):
            samples = measure(client, secret, make_path)
            print(
                f"  {size:>9,} studies, {name:<26} p50 {pct(samples, 50):7.2f} "
                f"ms  p95 {pct(samples, 95):7.2f} ms"
            )


def main() -> None:
    call_command("migrate", verbosity=0)
    print(
        f"database: PostgreSQL {getattr(connection, 'pg_version', 0) // 10000}, scratch {DB_NAME}; CPUs: "
        f"{os.cpu_count()}"
    )
    only = {name for name in os.environ.get("BENCH_ONLY", "").split(",") if name}
    try:
        if not only or "stow" in only:
            print(
                f"STOW-RS corpus: {STOW_INSTANCES} CT instances of 512x512x16 bit (~513 KB), "
                f"{STOW_PER_REQUEST} per request"
            )
            print(f"web server: {server_description()}")
            stow_throughput("filesystem backend", "fs", target=" (target >= 200 instances/s)")
        if not only or "stow-s3" in only:
            stow_s3()
        if not only or "large" in only:
            large_instance()
        if not only or "qido" in only:
            qido_latency()
    finally:
        drop_database()
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
