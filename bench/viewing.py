"""Viewing: what a web viewer reads (WADO-RS frames; rendered images and thumbnails are parts
added beside them), next to Orthanc 1.10 from Debian with its DICOMweb plugin, same machine, same
corpus, same run, alternating.

    .venv/bin/python bench/viewing.py

Runs on PostgreSQL in its own scratch database ``strata_bench_viewing`` (on the server of
DATABASE_URL, or postgres://postgres@127.0.0.1:5432; created at the start, dropped at the end,
BENCH_KEEP=1 keeps it; skipped with a message when PostgreSQL is unreachable). Strata is the
production web server (gunicorn as ``manage.py serve`` starts it) on a filesystem storage root;
Orthanc (``/usr/sbin/Orthanc`` with ``libOrthancDicomWeb.so``, Debian package orthanc-dicomweb,
and its PostgreSQL index plugin when installed, on a scratch database of its own) holds the same
instances. Clients are separate processes with one keep-alive connection each.

Parts (``BENCH_ONLY=frame,series,wsi`` runs some; each is a function in ``PARTS``, which gets the
shared ``Context``: parts that need the CT corpus and the servers ask for them, so a part added
later -- rendered images, thumbnails -- reuses them):

- frame: one frame of a 512x512 16-bit CT instance (native), one client, requests one after
  another: p50/p95 and the rate, Strata and Orthanc in alternating rounds. Target: p95 < 20 ms
  and at least Orthanc's rate.
- series: a 500-slice CT series read frame by frame by 6 concurrent clients (a browser's
  connections per host), each slice once: frames/s and MB/s, Strata and Orthanc alternating.
  Target: >= 500 frames/s on the filesystem and >= 2x Orthanc.
- wsi: a whole-slide image of ``BENCH_WSI_GB`` (3) GB of 256x256 JPEG tiles, stored through the
  ingest pipeline in a bucket on moto's S3 server, then one tile at a time from random places:
  p50/p95 per tile, the bytes read from the store per tile against the tile's size, and the web
  worker's resident memory above idle. Targets: p95 < 100 ms, < 2 tiles' worth read per tile,
  < 50 MB above idle. moto 5 reads a whole object for every GET and slices the range out of it
  afterwards; the benchmark's moto reads only the range (``bench.servers.moto_ranged_reads``),
  so that what is timed is Strata's read, not moto's copy of 3 GB.
- rendered: one 512x512 CT slice rendered as JPEG (its own window, rescale), random slices, one
  client, next to Orthanc's DICOMweb plugin's ``/rendered``, alternating rounds: p50/p95, rate,
  server CPU per image. Target: p95 < 50 ms.
- thumbnail: thumbnails of the slices: the first request of 100 of them (render and keep,
  timed), then random kept ones, one client, next to Orthanc's ``/rendered?viewport=128,128``
  (Orthanc keeps no thumbnail), alternating rounds; and the series' own thumbnail. Target: a
  kept thumbnail p95 < 20 ms.

BENCH_SERIES=500 changes the series, BENCH_FRAME_SAMPLES=300 the single-frame requests per
server, BENCH_ROUNDS=3 the alternating rounds, BENCH_WSI_GB=3 the slide, BENCH_TILES=300 the
tiles read, BENCH_RENDERED_SAMPLES=300 the rendered images and thumbnails read per server.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.index_loader import pct  # noqa: E402
from bench.scratch import ScratchDatabase  # noqa: E402
from bench.servers import (  # noqa: E402
    MOTO_KEYS,
    PeakRss,
    cpu_seconds,
    free_port,
    moto_s3,
    process_tree,
    s3_client,
    server_description,
    stop,
    wait_for_port,
    web_server,
)

DB_NAME = "strata_bench_viewing"
SERIES_SLICES = int(os.environ.get("BENCH_SERIES", "500"))
FRAME_SAMPLES = int(os.environ.get("BENCH_FRAME_SAMPLES", "300"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLIENTS = 6
WSI_GB = float(os.environ.get("BENCH_WSI_GB", "3"))
TILES = int(os.environ.get("BENCH_TILES", "300"))
ONLY = {p for p in os.environ.get("BENCH_ONLY", "").split(",") if p}
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'
STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")

SCRATCH_DB = ScratchDatabase(DB_NAME, "viewing.py")
SCRATCH = Path(tempfile.mkdtemp(prefix="strata-bench-viewing-"))


def _setup_django() -> None:
    SCRATCH_DB.create()
    # The server processes inherit this environment: production settings, scratch database and
    # storage; the S3 test server listens on the loopback.
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "saas.settings.base",
            "DATABASE_URL": SCRATCH_DB.url(),
            "DEBUG": "0",
            "SECRET_KEY": "strata-bench-viewing-secret-key-0123456789abcdef",
            "SECURE_SSL_REDIRECT": "0",  # plain HTTP on the loopback, no TLS proxy in front
            "ARCHIVE_BACKEND": "FILESYSTEM",
            "ARCHIVE_ROOT": str(SCRATCH / "archive"),
            "ARCHIVE_SPOOL_ROOT": str(SCRATCH / "spool"),
            "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS": "1",
            "CELERY_BROKER_URL": "memory://",  # follow-up tasks are queued, not run
            "API_THROTTLE_RATE": "100000000/min",
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# --- what the parts share -------------------------------------------------------------------------


@dataclass
class Series:
    """The CT series as stored in both servers: the paths of slice n's first frame."""

    strata: list[str]
    orthanc: list[str]
    files: list[Path]


@dataclass
class Context:
    """The corpus and the servers, made on first use and kept for the parts that follow."""

    stack: ExitStack
    _token: str | None = None
    _series: Series | None = None
    _strata: tuple[str, int] | None = None
    _orthanc: Orthanc | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = bench_token("viewing", ["dicom:read", "dicom:write"])
        return self._token

    @property
    def strata(self) -> tuple[str, int]:
        """(base URL, gunicorn master pid) of Strata's web server on the filesystem."""
        if self._strata is None:
            self._strata = self.stack.enter_context(web_server(SCRATCH / "server.log"))
            print(f"Strata: {server_description()}, filesystem storage", flush=True)
        return self._strata

    @property
    def orthanc(self) -> Orthanc | None:
        """Orthanc with the DICOMweb plugin, or None (said why) when it is not installed."""
        if self._orthanc is None and shutil.which("Orthanc"):
            if not (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").exists():
                print("Orthanc's DICOMweb plugin is not installed (orthanc-dicomweb): no peer")
                return None
            self._orthanc = self.stack.enter_context(orthanc_server())
        return self._orthanc

    @property
    def series(self) -> Series:
        if self._series is None:
            self._series = ct_series(self)
        return self._series


def bench_token(slug: str, scopes: list[str]) -> str:
    from tenants.context import Actor
    from tenants.models import Organization
    from tenants.services import token_create

    org = Organization.objects.get_or_create(slug=slug, defaults={"name": f"Bench {slug}"})[0]
    _, secret = token_create(org=org, name="bench", scopes=scopes, actor=Actor.system("bench"))
    return secret


def organization(slug: str) -> Any:
    from tenants.models import Organization

    return Organization.objects.get_or_create(slug=slug, defaults={"name": f"Bench {slug}"})[0]


def ingest_files(org: Any, paths: list[Path], batch: int = 20) -> None:
    """Through the ingest pipeline, as every door stores (the frame index included)."""
    from archive.ingest import pipeline
    from archive.storage import store_for

    store = store_for(pipeline.location_primary(org))
    for start in range(0, len(paths), batch):
        spooled = []
        for path in paths[start : start + batch]:
            with open(path, "rb") as source:
                spooled.append(pipeline.spool_file(store, source))
        results = pipeline.instances_ingest(org=org, batch=spooled)
        assert all(r.status == "stored" for r in results), [r.reason for r in results]


def ct_series(ctx: Context) -> Series:
    """``SERIES_SLICES`` CT slices of 512x512 16-bit (512 KiB each), one series, in both."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, write

    folder = SCRATCH / "ct"
    folder.mkdir()
    spec = study_spec("CT", rng=random.Random(3))
    series_uid = generate_uid()
    files, strata, orthanc = [], [], []
    for n in range(SERIES_SLICES):
        ds = make_instance(
            spec, series_uid=series_uid, instance_number=n + 1, rows=512, columns=512, seed=n
        )
        files.append(write(ds, folder / f"{n:04d}.dcm"))
        tail = f"studies/{spec.study_uid}/series/{series_uid}/instances/{ds.SOPInstanceUID}"
        strata.append(f"/dicomweb/{tail}/frames/1")
        orthanc.append(f"/dicom-web/{tail}/frames/1")
    t0 = time.perf_counter()
    ingest_files(organization("viewing"), files)
    print(
        f"corpus: {SERIES_SLICES} CT slices 512x512 16-bit, "
        f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB, stored in Strata in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    peer = ctx.orthanc
    if peer is not None:
        t0 = time.perf_counter()
        peer.upload(files)
        print(f"  and in Orthanc in {time.perf_counter() - t0:.1f} s", flush=True)
    return Series(strata=strata, orthanc=orthanc, files=files)


# --- Orthanc -------------------------------------------------------------------------------------


@dataclass
class Orthanc:
    port: int
    pid: int
    index: str

    def upload(self, files: list[Path]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        for path in files:
            connection.request(
                "POST",
                "/instances",
                body=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            answer = connection.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"Orthanc refused {path.name}: {answer.status} {body[:300]!r}")
        connection.close()


@contextmanager
def orthanc_server() -> Iterator[Orthanc]:
    """Orthanc from Debian's package with its DICOMweb plugin, on a scratch configuration (and
    its PostgreSQL index on a scratch database, as bench/dimse_qr.py starts it)."""
    binary = shutil.which("Orthanc")
    assert binary is not None
    work = SCRATCH / "orthanc"
    work.mkdir()
    http_port, dicom_port = free_port(), free_port()
    plugins = [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")]
    index_plugin = ORTHANC_PLUGINS / "libOrthancPostgreSQLIndex.so"
    database = ScratchDatabase("strata_bench_viewing_orthanc", "viewing.py (Orthanc)")
    config: dict[str, Any] = {
        "Name": "bench-viewing",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "SaveJobs": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "Plugins": plugins,
    }
    if index_plugin.exists():
        database.create()
        server = urlsplit(database.url())
        plugins.append(str(index_plugin))
        config["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": server.hostname or "127.0.0.1",
            "Port": server.port or 5432,
            "Database": database.name,
            "Username": server.username or "postgres",
            "Password": server.password or "",
            "Lock": False,
        }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        wait_for_port(http_port, process, f"Orthanc (see {work / 'orthanc.log'})", 60)
        index = "PostgreSQL index" if index_plugin.exists() else "SQLite index"
        print(f"Orthanc 1.10 (Debian) with its DICOMweb plugin, {index}", flush=True)
        yield Orthanc(port=http_port, pid=process.pid, index=index)
    finally:
        stop(process)
        log.close()
        if index_plugin.exists():
            database.drop()


# --- clients -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    headers: dict[str, str]
    pids: list[int]


def _read(paths: list[str], target: Target) -> tuple[list[float], float, float, int]:
    """One client: each path once over one keep-alive connection; (latencies in ms, start, end,
    bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=120)
    latencies: list[float] = []
    received = 0
    start = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        connection.request("GET", path, headers=target.headers)
        answer = connection.getresponse()
        body = answer.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"{target.name} {path}: {answer.status} {body[:300]!r}")
        received += len(body)
    end = time.perf_counter()
    connection.close()
    return latencies, start, end, received


def _client_process(arguments: tuple[list[str], Target]) -> tuple[list[float], float, float, int]:
    return _read(*arguments)


@dataclass
class Run:
    latencies: list[float]
    seconds: float
    requests: int
    received: int
    cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def concurrent_read(target: Target, paths: list[str], clients: int) -> Run:
    """``clients`` processes share ``paths`` (client k reads every k-th): from the first
    request sent to the last answer received."""
    shares = [(paths[k::clients], target) for k in range(clients)]
    cpu0 = sum(cpu_seconds(p) for p in target.pids)
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        results = pool.map(_client_process, shares)
    cpu = sum(cpu_seconds(p) for p in target.pids) - cpu0
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    latencies = [ms for r in results for ms in r[0]]
    return Run(latencies, end - start, len(paths), sum(r[3] for r in results), cpu)


def targets(ctx: Context, accept: str) -> list[Target]:
    base, pid = ctx.strata
    found = [
        Target(
            "Strata",
            int(urlsplit(base).port or 80),
            {"Authorization": f"Bearer {ctx.token}", "Accept": accept},
            process_tree(pid),
        )
    ]
    peer = ctx.orthanc
    if peer is not None:
        found.append(Target("Orthanc", peer.port, {"Accept": accept}, [peer.pid]))
    return found


# --- the parts -----------------------------------------------------------------------------------


def frame_part(ctx: Context) -> None:
    """One native 512x512 frame at a time, one client: latency and rate, alternating rounds."""
    series = ctx.series
    rng = random.Random(7)
    runs: dict[str, list[Run]] = {}
    for target in targets(ctx, UNCOMPRESSED):
        paths = series.strata if target.name == "Strata" else series.orthanc
        _read([rng.choice(paths) for _ in range(30)], target)  # connections, caches, imports
    for _ in range(ROUNDS):
        for target in targets(ctx, UNCOMPRESSED):
            paths = series.strata if target.name == "Strata" else series.orthanc
            sample = [rng.choice(paths) for _ in range(FRAME_SAMPLES // ROUNDS)]
            cpu0 = sum(cpu_seconds(p) for p in target.pids)
            latencies, start, end, received = _read(sample, target)
            cpu = sum(cpu_seconds(p) for p in target.pids) - cpu0
            runs.setdefault(target.name, []).append(
                Run(latencies, end - start, len(sample), received, cpu)
            )
    rates = {}
    for name, done in runs.items():
        latencies = [ms for run in done for ms in run.latencies]
        requests = sum(run.requests for run in done)
        rates[name] = requests / sum(run.seconds for run in done)
        cpu = sum(run.cpu for run in done) * 1000 / requests
        goal = " (target p95 < 20 ms)" if name == "Strata" else ""
        print(
            f"frame: one 512x512 CT frame (512 KiB, native), 1 client, {name}: p50 "
            f"{pct(latencies, 50):.1f} ms, p95 {pct(latencies, 95):.1f} ms{goal}; "
            f"{rates[name]:.0f} frames/s; server CPU {cpu:.1f} ms/frame",
            flush=True,
        )
    if "Orthanc" in rates:
        print(
            f"frame: Strata / Orthanc rate {rates['Strata'] / rates['Orthanc']:.2f}x "
            "(target >= 1x)",
            flush=True,
        )


def series_part(ctx: Context) -> None:
    """The whole series, frame by frame, 6 concurrent clients; alternating rounds."""
    series = ctx.series
    runs: dict[str, list[Run]] = {}
    for target in targets(ctx, UNCOMPRESSED):
        paths = series.strata if target.name == "Strata" else series.orthanc
        concurrent_read(target, paths[: CLIENTS * 10], CLIENTS)  # every worker warmed
    for _ in range(ROUNDS):
        for target in targets(ctx, UNCOMPRESSED):
            paths = series.strata if target.name == "Strata" else series.orthanc
            runs.setdefault(target.name, []).append(concurrent_read(target, paths, CLIENTS))
    rates = {}
    for name, done in runs.items():
        best = max(done, key=lambda run: run.rate)
        rates[name] = sum(run.rate for run in done) / len(done)
        latencies = [ms for run in done for ms in run.latencies]
        cpu = sum(run.cpu for run in done) * 1000 / sum(run.requests for run in done)
        goal = " (target >= 500)" if name == "Strata" else ""
        print(
            f"series: {SERIES_SLICES} slices frame by frame, {CLIENTS} clients, {name}: "
            f"{rates[name]:.0f} frames/s{goal} (rounds: "
            f"{', '.join(f'{run.rate:.0f}' for run in done)}; best {best.rate:.0f}), "
            f"{rates[name] * best.received / best.requests / 1e6:.0f} MB/s; request p50 "
            f"{pct(latencies, 50):.1f} ms, p95 {pct(latencies, 95):.1f} ms; server CPU "
            f"{cpu:.1f} ms/frame",
            flush=True,
        )
    if "Orthanc" in rates:
        print(
            f"series: Strata / Orthanc {rates['Strata'] / rates['Orthanc']:.2f}x (target >= 2x)",
            flush=True,
        )


def wsi_part(ctx: Context) -> None:
    """A slide of WSI_GB GB on moto's S3 server: random tiles, one at a time."""
    from archive.ingest import pipeline
    from archive.locations.services import LocationInput, location_create
    from archive.models import FrameIndex, Instance, StorageLocation
    from archive.storage import store_for
    from tenants.context import Actor
    from tests.archive.wsi import write_slide

    org = organization("wsi")
    endpoint = ctx.stack.enter_context(moto_s3(ranged=True))
    bucket = "strata-bench-wsi"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    location_create(
        org=org,
        data=LocationInput(
            name="Pathology bucket",
            bucket=bucket,
            endpoint_url=endpoint,
            region="us-east-1",
            access_key_id=MOTO_KEYS["ARCHIVE_S3_ACCESS_KEY_ID"],
            secret_access_key=MOTO_KEYS["ARCHIVE_S3_SECRET_ACCESS_KEY"],
            role=StorageLocation.Role.PRIMARY,
        ),
        actor=Actor.system("bench"),
    )
    store = store_for(pipeline.location_primary(org))
    t0 = time.perf_counter()
    # Written where the pipeline spools, and ingested from there (no copy of 3 GB).
    slide = write_slide(store.spool_dir() / "slide.part", megabytes=WSI_GB * 1000)
    size = slide.path.stat().st_size
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = pipeline.instance_ingest(org=org, spooled=pipeline.spool_existing(slide.path))
    assert result.status == "stored" and result.instance_id is not None, result.reason
    stored = time.perf_counter() - t0
    instance = Instance.objects.select_related("location").get(pk=result.instance_id)
    assert instance.location.kind == "s3", instance.location.kind
    index = FrameIndex.objects.get(instance=instance)
    assert index.frames == slide.frames and not index.problem
    print(
        f"wsi: a {size / 1e9:.2f} GB slide of {slide.frames} JPEG tiles of 256x256 (about "
        f"{size / slide.frames / 1e3:.0f} KB each), written in {written:.0f} s, stored in the "
        f"S3 bucket (moto) through the ingest pipeline in {stored:.0f} s; frame index "
        f"{len(bytes(index.boundaries)) / 1e6:.2f} MB",
        flush=True,
    )
    token = bench_token("wsi", ["dicom:read"])
    base, pid = ctx.strata
    port = int(urlsplit(base).port or 80)
    tail = (
        f"/dicomweb/studies/{slide.study_uid}/series/{slide.series_uid}"
        f"/instances/{slide.sop_instance_uid}/frames/"
    )
    headers = {"Authorization": f"Bearer {token}", "Accept": STORED}
    rng = random.Random(11)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def tile(number: int) -> tuple[float, int, int]:
        t0 = time.perf_counter()
        connection.request("GET", f"{tail}{number}", headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        ms = (time.perf_counter() - t0) * 1000
        if answer.status != 200:
            raise RuntimeError(f"tile {number}: {answer.status} {body[:300]!r}")
        return ms, int(answer.headers[STORE_BYTES_HEADER]), len(slide.tile_bytes(number))

    for _ in range(40):  # every worker has read tiles (imports, connections to the bucket)
        tile(rng.randint(1, slide.frames))
    samples = []
    with PeakRss(pid, target_mb=50) as memory:
        for _ in range(TILES):
            samples.append(tile(rng.randint(1, slide.frames)))
    latencies = [ms for ms, _, _ in samples]
    worst = max(read / size_ for _, read, size_ in samples)
    mean_read = sum(read for _, read, _ in samples) / len(samples)
    print(
        f"wsi: one 256x256 tile of the {size / 1e9:.1f} GB slide on S3 (moto), {TILES} random "
        f"tiles, 1 client: p50 {pct(latencies, 50):.1f} ms, p95 {pct(latencies, 95):.1f} ms "
        f"(target < 100 ms); read from the store per tile {mean_read / 1e3:.1f} KB on average, "
        f"at most {worst:.3f} tiles' worth (target < 2); {memory.report()}",
        flush=True,
    )
    connection.close()


# --- rendered images and thumbnails ----------------------------------------------------------------
# The rendered and thumbnail parts: PS3.18 rendered resources (archive/dicomweb/rendered.py) and
# thumbnails kept as derived objects (archive/dicomweb/thumbnails.py), on the CT corpus above.

RENDERED_SAMPLES = int(os.environ.get("BENCH_RENDERED_SAMPLES", "300"))


def _instance_paths(frame_paths: list[str], resource: str) -> list[str]:
    """The instances' ``resource`` (``rendered``, ``thumbnail``) from their first frames' paths."""
    return [path.removesuffix("/frames/1") + f"/{resource}" for path in frame_paths]


def _alternating(
    ctx: Context, accept: str, paths_of: dict[str, list[str]], samples: int, seed: int
) -> dict[str, list[Run]]:
    """One client per server, ``samples`` random requests each, in ``ROUNDS`` alternating rounds
    (after a warm-up that reaches every worker)."""
    rng = random.Random(seed)
    runs: dict[str, list[Run]] = {}
    for target in targets(ctx, accept):
        if target.name in paths_of:
            _read([rng.choice(paths_of[target.name]) for _ in range(30)], target)
    for _ in range(ROUNDS):
        for target in targets(ctx, accept):
            if target.name not in paths_of:
                continue
            sample = [rng.choice(paths_of[target.name]) for _ in range(samples // ROUNDS)]
            cpu0 = sum(cpu_seconds(p) for p in target.pids)
            latencies, start, end, received = _read(sample, target)
            cpu = sum(cpu_seconds(p) for p in target.pids) - cpu0
            runs.setdefault(target.name, []).append(
                Run(latencies, end - start, len(sample), received, cpu)
            )
    return runs


def _report(part: str, what: str, runs: dict[str, list[Run]], target: str) -> dict[str, float]:
    rates = {}
    for name, done in runs.items():
        latencies = [ms for run in done for ms in run.latencies]
        requests = sum(run.requests for run in done)
        rates[name] = requests / sum(run.seconds for run in done)
        cpu = sum(run.cpu for run in done) * 1000 / requests
        size = sum(run.received for run in done) / requests / 1e3
        aim = f" ({target})" if name == "Strata" else ""
        print(
            f"{part}: {what}, 1 client, {name}: p50 {pct(latencies, 50):.1f} ms, p95 "
            f"{pct(latencies, 95):.1f} ms{aim}; {rates[name]:.0f} images/s; {size:.1f} KB per "
            f"image; server CPU {cpu:.1f} ms/image",
            flush=True,
        )
    return rates


def _orthanc_renders(ctx: Context, path: str) -> bool:
    """Whether Orthanc's DICOMweb plugin answers ``path`` with a JPEG (its version may not
    offer the resource or the parameters)."""
    peer = ctx.orthanc
    if peer is None:
        return False
    connection = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=60)
    try:
        connection.request("GET", path, headers={"Accept": "image/jpeg"})
        answer = connection.getresponse()
        body = answer.read()
    finally:
        connection.close()
    ok = answer.status == 200 and body[:2] == b"\xff\xd8"
    if not ok:
        print(f"Orthanc answers {path.rsplit('/', 1)[-1]} with {answer.status}: not compared")
    return ok


def rendered_part(ctx: Context) -> None:
    """A 512x512 CT slice rendered as JPEG (its own window, rescale), one client, Strata and
    Orthanc's DICOMweb plugin in alternating rounds."""
    series = ctx.series
    paths = {"Strata": _instance_paths(series.strata, "rendered")}
    orthanc = _instance_paths(series.orthanc, "rendered")
    if _orthanc_renders(ctx, orthanc[0]):
        paths["Orthanc"] = orthanc
    runs = _alternating(ctx, "image/jpeg", paths, RENDERED_SAMPLES, seed=21)
    rates = _report("rendered", "one 512x512 CT slice as JPEG", runs, "target p95 < 50 ms")
    if "Orthanc" in rates:
        print(
            f"rendered: Strata / Orthanc rate {rates['Strata'] / rates['Orthanc']:.2f}x",
            flush=True,
        )


def thumbnail_part(ctx: Context) -> None:
    """Thumbnails of the CT slices: the first request of each renders and keeps it (timed), the
    next ones read the kept object (one client, random slices; the series' own thumbnail too).
    Beside them, Orthanc's DICOMweb plugin renders a 128x128 viewport of the slice on every
    request (it keeps no thumbnail)."""
    series = ctx.series
    thumbnails = _instance_paths(series.strata, "thumbnail")
    strata = targets(ctx, "image/jpeg")[0]
    keep = thumbnails[: min(len(thumbnails), 100)]
    first, _, _, _ = _read(keep, strata)
    print(
        f"thumbnail: first request of {len(keep)} slices (decode, render 128x128, keep in the "
        f"store, meter): p50 {pct(first, 50):.1f} ms, p95 {pct(first, 95):.1f} ms",
        flush=True,
    )
    series_thumbnail = thumbnails[0].split("/instances/")[0] + "/thumbnail"
    _read([series_thumbnail], strata)
    paths = {"Strata": keep}
    orthanc = [
        path + "?viewport=128,128"
        for path in _instance_paths(series.orthanc, "rendered")[: len(keep)]
    ]
    if _orthanc_renders(ctx, orthanc[0]):
        paths["Orthanc"] = orthanc
    runs = _alternating(ctx, "image/jpeg", paths, RENDERED_SAMPLES, seed=23)
    _report(
        "thumbnail",
        "a kept 128x128 thumbnail (Orthanc: its 128x128 rendered viewport)",
        runs,
        "target p95 < 20 ms",
    )
    latencies, _, _, _ = _read([series_thumbnail] * RENDERED_SAMPLES, strata)
    print(
        f"thumbnail: the {SERIES_SLICES}-slice series' kept thumbnail (its middle slice chosen "
        f"on each request), Strata: p50 {pct(latencies, 50):.1f} ms, p95 "
        f"{pct(latencies, 95):.1f} ms (target p95 < 20 ms)",
        flush=True,
    )


STORE_BYTES_HEADER = "X-Strata-Store-Bytes"
PARTS: dict[str, Callable[[Context], None]] = {
    "frame": frame_part,
    "series": series_part,
    "wsi": wsi_part,
    "rendered": rendered_part,
    "thumbnail": thumbnail_part,
}


def main() -> None:
    _setup_django()
    print(f"database: PostgreSQL, scratch {DB_NAME}; CPUs: {os.cpu_count()}", flush=True)
    try:
        with ExitStack() as stack:
            ctx = Context(stack=stack)
            for name, part in PARTS.items():
                if not ONLY or name in ONLY:
                    part(ctx)
    finally:
        SCRATCH_DB.drop()
        shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
