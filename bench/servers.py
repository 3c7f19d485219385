"""The servers and process probes the benchmarks share: no side effect on import.

- ``web_server``: the production web server (``manage.py serve``'s gunicorn) in its own process
  group, on the environment of the benchmark (its scratch database and storage); yields its URL
  and the master's pid.
- ``moto_s3``: moto's S3 server in its own process; ``ranged=True`` first makes moto read only
  the bytes a ranged GET asks for (``moto_ranged_reads``).
- Probes of a process tree (Linux /proc): ``process_tree``, ``cpu_seconds``, ``rss_kb``,
  ``PeakRss``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MOTO_KEYS = {"ARCHIVE_S3_ACCESS_KEY_ID": "bench", "ARCHIVE_S3_SECRET_ACCESS_KEY": "bench-secret"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), 0.0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (gunicorn's master and its workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for_port(port: int, process: subprocess.Popen[Any], what: str, seconds: float) -> None:
    """Until ``port`` of the loopback accepts a connection; RuntimeError when ``process`` ends
    or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


@contextmanager
def web_server(log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """The production web server (``manage.py serve``'s gunicorn) on this process's environment
    plus ``env``, its output appended to ``log``; yields (URL, master pid)."""
    from saas.management.commands.serve import gunicorn_command

    port = free_port()
    out = open(log, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(  # noqa: S603
        gunicorn_command(f"127.0.0.1:{port}"),
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_for_port(port, process, f"the web server (see {log})", 60)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop(process)
        out.close()


def stop(process: subprocess.Popen[Any], seconds: float = 30) -> None:
    """Terminate ``process``, killed when it does not end in ``seconds``."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_description() -> str:
    from saas.management.commands.serve import WEB_THREADS, web_workers

    return (
        f"gunicorn saas.wsgi, {web_workers()} worker processes x {WEB_THREADS} threads "
        "(manage.py serve, production)"
    )


class PeakRss:
    """Peak RSS above idle of the processes of a tree, sampled every 10 ms while in the block."""

    def __init__(self, pid: int, *, target_mb: float = 150) -> None:
        self.pids = process_tree(pid)
        self.target_mb = target_mb
        self.idle = {p: rss_kb(p) for p in self.pids}
        self.peak = dict(self.idle)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss_kb(p))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def above_idle_mb(self) -> float:
        """What the process that grew most grew (the worker that served the requests)."""
        return max((self.peak[p] - self.idle[p]) * 1024 / 1e6 for p in self.pids)

    def report(self) -> str:
        grown = max(self.pids, key=lambda p: self.peak[p] - self.idle[p])
        return (
            f"worker RSS idle {self.idle[grown] * 1024 / 1e6:.0f} MB, peak "
            f"{self.peak[grown] * 1024 / 1e6:.0f} MB, {self.above_idle_mb():.1f} MB above idle "
            f"(target < {self.target_mb:.0f} MB)"
        )


def moto_ranged_reads() -> None:
    """Make moto's S3 server read only the bytes a ranged GET asks for.

    moto 5 builds every GET's answer from the whole object (``FakeKey.value``) and slices the
    range out of it afterwards: one tile of a 3 GB slide costs moto a 3 GB read and copy, which
    an S3 service never does. While a GET with a ``Range`` header is answered, ``value`` is an
    object of the key's size that reads only the slice asked for.
    """
    from moto.s3 import models, responses

    state = threading.local()
    stock_value: Any = models.FakeKey.value

    class _Slices:
        def __init__(self, key: Any) -> None:
            self.key = key

        def __len__(self) -> int:
            return int(self.key.size)

        def __getitem__(self, where: slice) -> bytes:
            start, stop, _ = where.indices(len(self))
            with self.key.lock:
                self.key._value_buffer.seek(start)
                return bytes(self.key._value_buffer.read(max(stop - start, 0)))

    def value(key: Any) -> Any:
        if getattr(state, "ranged", False):
            return _Slices(key)
        return stock_value.fget(key)

    models.FakeKey.value = property(value, stock_value.fset)  # type: ignore[method-assign,assignment]
    stock_key_response = responses.S3Response.key_response

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        state.ranged = request.method == "GET" and bool(request.headers.get("range"))
        try:
            status, answer_headers, body = stock_key_response(self, request, full_url, headers)
        finally:
            state.ranged = False
        if isinstance(body, _Slices):  # a Range moto did not apply: the whole object after all
            body = body[0 : len(body)]
        return status, answer_headers, body

    responses.S3Response.key_response = key_response  # type: ignore[method-assign]


@contextmanager
def moto_s3(*, ranged: bool = False) -> Iterator[str]:
    """moto's ThreadedMotoServer in its own process (as an S3 service would be); yields its URL.
    ``ranged``: with ``moto_ranged_reads``."""
    port = free_port()
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        + ("from bench.servers import moto_ranged_reads\nmoto_ranged_reads()\n" if ranged else "")
        + "from moto.server import ThreadedMotoServer\n"
        f"server = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False)\n"
        "server.start()\n"
        "sys.stdin.read()\n"
        "server.stop()\n"
    )
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process, "moto's server", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=MOTO_KEYS["ARCHIVE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_KEYS["ARCHIVE_S3_SECRET_ACCESS_KEY"],
    )
