"""C-STORE ingest through the DICOM listener (manage.py run_scp) on PostgreSQL + filesystem storage.

    .venv/bin/python bench/ingest_cstore.py

Creates the scratch database strata_bench_cstore on the PostgreSQL server of DATABASE_URL (or
postgres://postgres@127.0.0.1:5432) and drops it at the end; storage is a temporary folder.
Skips with a message when PostgreSQL is unreachable.

(a) 400 CT instances of ~512 KB over one association from pynetdicom's SCU (streamed from files):
    instances/s and MB/s, association set-up to release (target >= 150 instances/s).
(b) One 1 GiB instance: the listener process's peak resident memory above its idle level
    (target < 150 MB), sampled from /proc/<pid>/status while the transfer runs.
(a2) The same corpus (other UIDs) from DCMTK's storescu when it is installed (Debian package
    dcmtk): a sender whose own CPU cost is negligible, unlike pynetdicom's SCU in this process.
    The listener answers once an object is durable and checked; "all indexed after" is when the
    last one was in the index (its indexer process works meanwhile).
(c) pynetdicom's own ceiling: the same 400 instances to a bare pynetdicom SCP whose C-STORE
    handler does nothing (same maximum PDU, data sets received to a file), in its own process;
    (c2) the same fed by storescu.

BENCH_CSTORE_INSTANCES=400 and BENCH_CSTORE_LARGE_MB=1024 change the sizes; BENCH_KEEP=1 keeps the
scratch database and the storage folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.scratch import ScratchDatabase  # noqa: E402

DB_NAME = "strata_bench_cstore"
INSTANCES = int(os.environ.get("BENCH_CSTORE_INSTANCES", "400"))
LARGE_MB = int(os.environ.get("BENCH_CSTORE_LARGE_MB", "1024"))
KEEP = os.environ.get("BENCH_KEEP") == "1"
CALLED_AE = "BENCH-HOSP"
CALLING_AE = "BENCH-SCU"
MB = 1_000_000
VERIFICATION = "1.2.840.10008.1.1"


SCRATCH_DB = ScratchDatabase(DB_NAME, "ingest_cstore.py")
pg_url = SCRATCH_DB.url


SCRATCH_DB.create()
WORK = Path(tempfile.mkdtemp(prefix="strata-bench-cstore-"))
ENV = {
    **os.environ,
    "DATABASE_URL": pg_url(DB_NAME),
    "DJANGO_SETTINGS_MODULE": "saas.settings.base",
    "DEBUG": "0",
    "SECRET_KEY": os.environ.get("SECRET_KEY") or "strata-bench-cstore-secret-0123456789abcdef",
    "ARCHIVE_BACKEND": "FILESYSTEM",
    "ARCHIVE_ROOT": str(WORK / "archive"),
    "ARCHIVE_SPOOL_ROOT": str(WORK / "spool"),
    # An in-process broker: the follow-up task is queued as in production, nothing leaves.
    "CELERY_BROKER_URL": "memory://",
    "LOG_LEVEL": "WARNING",
}
os.environ.update(ENV)

import django  # noqa: E402

django.setup()

from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE, _config  # noqa: E402
from pynetdicom.association import Association  # noqa: E402

from archive.ae_titles.services import ae_create  # noqa: E402
from archive.dimse.listener import DEFAULT_MAX_PDU  # noqa: E402
from archive.models import IngestJob, Instance  # noqa: E402
from archive.synthetic import make_instance, study_spec, write  # noqa: E402
from tenants.context import Actor  # noqa: E402
from tenants.models import Organization  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def associate(port: int) -> Association:
    scu = AE(ae_title=CALLING_AE)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 600
    scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    scu.add_requested_context(UID(VERIFICATION), [ExplicitVRLittleEndian])
    assoc = scu.associate("127.0.0.1", port, ae_title=CALLED_AE)
    if not assoc.is_established:
        raise RuntimeError("the listener did not accept the association")
    return assoc


def start_listener(port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "run_scp", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"run_scp exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    assoc = associate(port)  # the first association also warms up the listener
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return proc


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_ct_files(folder: Path, count: int) -> list[Path]:
    """``count`` CT instances of one series, 512 x 512 x 16 bit (~513 KB each)."""
    folder.mkdir(parents=True)
    spec = study_spec("CT")
    series = generate_uid()
    return [
        write(
            make_instance(
                spec, series_uid=series, instance_number=n + 1, rows=512, columns=512, seed=n + 1
            ),
            folder / f"ct-{n:04d}.dcm",
        )
        for n in range(count)
    ]


def write_large_instance(path: Path, megabytes: int) -> Path:
    """A multi-frame CT of about ``megabytes`` MiB, written frame by frame (never in memory)."""
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


def indexer_pids(pid: int) -> list[int]:
    """The listener's child processes (its indexer)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


def wait_indexed(expected: int, timeout: float = 300) -> float:
    """Poll the index until ``expected`` instances are there; returns when that was seen."""
    deadline = time.monotonic() + timeout
    while Instance.objects.count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.perf_counter()


def bench_many(port: int, pid: int, files: list[Path]) -> None:
    total = sum(p.stat().st_size for p in files)
    before = Instance.objects.count()
    children = indexer_pids(pid)
    cpu_before = cpu_seconds(pid) + sum(cpu_seconds(c) for c in children)
    started = time.perf_counter()
    assoc = associate(port)
    statuses = [assoc.send_c_store(path).Status for path in files]
    assoc.release()
    elapsed = time.perf_counter() - started
    indexed_at = wait_indexed(before + len(files))
    cpu = cpu_seconds(pid) + sum(cpu_seconds(c) for c in children) - cpu_before
    failed = [s for s in statuses if s != 0x0000]
    stored = Instance.objects.count() - before
    print(
        f"(a) {len(files)} CT instances ({total / MB:.1f} MB) over one association from "
        f"pynetdicom: acknowledged in {elapsed:.2f} s, {len(files) / elapsed:.1f} instances/s, "
        f"{total / MB / elapsed:.1f} MB/s (target >= 150 instances/s); all indexed after "
        f"{indexed_at - started:.2f} s ({len(files) / (indexed_at - started):.1f} instances/s); "
        f"{len(failed)} failed, {stored} indexed; listener + indexer CPU "
        f"{cpu * 1000 / len(files):.1f} ms/instance",
        flush=True,
    )


def bench_storescu(port: int, pid: int, files: list[Path]) -> None:
    """The same corpus from DCMTK's storescu (a C sender: its own CPU cost is negligible)."""
    storescu = shutil.which("storescu")
    if storescu is None:
        print("(a2) storescu: not installed (Debian package dcmtk); skipped", flush=True)
        return
    total = sum(p.stat().st_size for p in files)
    before = Instance.objects.count()
    children = indexer_pids(pid)
    cpu_before = cpu_seconds(pid) + sum(cpu_seconds(c) for c in children)
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        [storescu, "-aet", CALLING_AE, "-aec", CALLED_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
    elapsed = time.perf_counter() - started
    indexed_at = wait_indexed(before + len(files))
    cpu = cpu_seconds(pid) + sum(cpu_seconds(c) for c in children) - cpu_before
    stored = Instance.objects.count() - before
    print(
        f"(a2) the same from DCMTK storescu (new UIDs): acknowledged in {elapsed:.2f} s, "
        f"{len(files) / elapsed:.1f} instances/s, {total / MB / elapsed:.1f} MB/s "
        f"(target >= 150 instances/s); all indexed after {indexed_at - started:.2f} s "
        f"({len(files) / (indexed_at - started):.1f} instances/s); exit {done.returncode}, "
        f"{stored} indexed; listener + indexer CPU {cpu * 1000 / len(files):.1f} ms/instance",
        flush=True,
    )


def bench_large(port: int, pid: int, path: Path) -> None:
    size = path.stat().st_size
    idle_kb = status_kb(pid, "VmRSS")
    peak_kb = idle_kb
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_kb
        while not done.is_set():
            try:
                peak_kb = max(peak_kb, status_kb(pid, "VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.01)

    # The kernel's own high-water mark catches spikes between samples; reset it where allowed.
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    assoc = associate(port)
    status = assoc.send_c_store(path).Status
    assoc.release()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if hwm_reset:
        peak_kb = max(peak_kb, status_kb(pid, "VmHWM"))
    above_mb = (peak_kb - idle_kb) * 1024 / MB
    print(
        f"(b) one {size / MB:.0f} MB instance: status 0x{status:04X}, {elapsed:.1f} s "
        f"({size / MB / elapsed:.1f} MB/s); listener RSS idle {idle_kb * 1024 / MB:.1f} MB, "
        f"peak {peak_kb * 1024 / MB:.1f} MB, {above_mb:.1f} MB above idle (target < 150 MB)",
        flush=True,
    )


EMPTY_SCP = """
import sys
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_HANDLER_LEVEL = "none"
ae = AE("EMPTY")
ae.maximum_pdu_size = int(sys.argv[2])
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax)
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])
"""


def bench_empty_scp(files: list[Path]) -> None:
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", EMPTY_SCP, str(port), str(DEFAULT_MAX_PDU)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the empty SCP did not start") from None
                time.sleep(0.1)
        scu = AE(ae_title=CALLING_AE)
        scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", port, ae_title="EMPTY")
        assert assoc.is_established
        started = time.perf_counter()
        statuses = [assoc.send_c_store(path).Status for path in files]
        elapsed = time.perf_counter() - started
        assoc.release()
        assert set(statuses) == {0}, set(statuses)
        print(
            f"(c) pynetdicom's ceiling, an SCP with an empty C-STORE handler: {len(files)} "
            f"instances in {elapsed:.2f} s, {len(files) / elapsed:.1f} instances/s",
            flush=True,
        )
        storescu = shutil.which("storescu")
        if storescu is not None:
            started = time.perf_counter()
            done = subprocess.run(  # noqa: S603
                [storescu, "-aet", CALLING_AE, "-aec", "EMPTY", "127.0.0.1", str(port)]
                + [str(p) for p in files],
                capture_output=True,
                env={**os.environ, "TCP_NODELAY": "1"},
                check=False,
            )
            elapsed = time.perf_counter() - started
            print(
                f"(c2) the same empty SCP fed by storescu: {len(files) / elapsed:.1f} "
                f"instances/s (exit {done.returncode})",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    org = Organization.objects.create(name="Bench Hospital", slug="bench-hospital")
    ae_create(
        org=org,
        ae_title=CALLED_AE,
        allowed_calling_ae_titles=[CALLING_AE],
        allowed_networks=["127.0.0.0/8"],
        actor=Actor.system("bench"),
    )
    files = write_ct_files(WORK / "send", INSTANCES)
    files_dcmtk = write_ct_files(WORK / "send-dcmtk", INSTANCES)
    large = write_large_instance(WORK / "large.dcm", LARGE_MB)
    _config.STORE_SEND_CHUNKED_DATASET = True  # the SCU streams from the files
    port = free_port()
    proc = start_listener(port, WORK / "run_scp.log")
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"{os.cpu_count()} CPUs, load average {load} before the run", flush=True)
        bench_many(port, proc.pid, files)
        bench_storescu(port, proc.pid, files_dcmtk)
        bench_large(port, proc.pid, large)
        bench_empty_scp(files)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        print(f"run_scp stopped on SIGTERM with exit code {code}", flush=True)
        if code != 0:
            print((WORK / "run_scp.log").read_text())
    jobs = list(IngestJob.objects.order_by("id").values_list("state", "received", "stored"))
    print(f"ingest jobs (state, received, stored): {jobs}")


if __name__ == "__main__":
    try:
        main()
    finally:
        SCRATCH_DB.drop()
        if KEEP:
            print(f"kept folder {WORK}")
        else:
            shutil.rmtree(WORK, ignore_errors=True)
