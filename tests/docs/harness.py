"""Running one documentation example against the live server and the stand-ins of a test.

What is changed in an example before it runs, and nothing else:

- the documented connection values (``http://localhost:8000``, ``localhost 11112`` and
  ``"localhost", 11112``, the hospital's own hosts, buckets and endpoints named in
  ``Stage.replacements``) become the live server, the DICOM listener and the stand-ins started
  by the test;
- an example's own ``TOKEN=...`` / ``ADMIN_TOKEN=...`` / ``API=...`` line gets the test's value;
  blocks that use ``$TOKEN`` without setting it get it from the environment;
- ``.venv/bin/python manage.py <command>`` runs the command in the test process (its database is
  the live server's; SQLite's is in memory), through ``manage_client.py``.

A shell block runs under ``set -euo pipefail`` with ``curl`` wrapped: every request must answer
2xx (the status of each is recorded), and a status written after a request in the example
(``# 202``, ``# 200: ...``, or a comment line starting with it right below) must be the one
answered.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import close_old_connections

from tests.docs.blocks import Block

HERE = Path(__file__).resolve().parent
REAL_PYTHON = sys.executable
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

PRELUDE = r"""set -euo pipefail
curl() {
  local log rc status
  log=$(mktemp)
  rc=0
  command curl -sS -w '%{stderr}@@ %{http_code} %{method} %{url_effective}\n' "$@" 2>"$log" || rc=$?
  grep -v '^@@' "$log" >&2 || true
  grep '^@@' "$log" >> "$STRATA_CURL_LOG" || true
  status=$(grep '^@@' "$log" | tail -n 1 | cut -d ' ' -f 2)
  rm -f "$log"
  if [ "$rc" -ne 0 ]; then echo "curl failed with exit status $rc" >&2; return "$rc"; fi
  case "$status" in
    2??) return 0 ;;
    *) echo "curl: HTTP $status (not 2xx)" >&2; return 22 ;;
  esac
}
"""


@dataclass
class Stage:
    """The live Strata and stand-ins an example runs against."""

    workdir: Path
    env: dict[str, str]
    replacements: list[tuple[str, str]] = field(default_factory=list)
    assignments: dict[str, str] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)  # what the stand-ins received
    # Waits until the DICOM listener has indexed and recorded what an example sent (SQLite in
    # memory is shared between the threads: a write still going on would lock the next request).
    settle: Callable[[], None] = lambda: None
    receiver: Any = None  # the webhook receiver (tests.conftest.Receiver)


@dataclass
class Call:
    status: int
    method: str
    url: str


@dataclass
class Outcome:
    block: Block
    code: int
    output: str
    calls: list[Call]
    seconds: float
    script: str

    def report(self) -> str:
        calls = "\n".join(f"  {c.status} {c.method} {c.url}" for c in self.calls)
        return (
            f"{self.block.name} exited {self.code} after {self.seconds:.1f} s\n"
            f"--- requests\n{calls or '  (none)'}\n--- output\n{self.output[-6000:]}\n"
            f"--- as run\n{self.script}"
        )


def substitute(block: Block, stage: Stage) -> str:
    text = block.text
    for old, new in stage.replacements:
        text = text.replace(old, new)
    if block.kind == "shell":
        for name, value in stage.assignments.items():
            text = re.sub(rf"^(\s*){name}=\S+", rf"\g<1>{name}={value}", text, flags=re.M)
    return text


# --- the status written beside a request -------------------------------------------------------


def _split_comment(line: str) -> tuple[str, str]:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1 :]
    return line, ""


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


CURL = re.compile(r"(?<![\w./-])curl\s")
STATUS = re.compile(r"^\s*(\d{3})\b")


def expected_statuses(text: str) -> list[int | None]:
    """One entry per curl written in the example, in order: the status it must answer, if said."""
    lines = _logical_lines(text)
    out: list[int | None] = []
    for i, line in enumerate(lines):
        code, comment = _split_comment(line)
        count = len(CURL.findall(code))
        if not count:
            continue
        said = STATUS.match(comment)
        if said is None and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("#"):
            said = STATUS.match(lines[i + 1].lstrip()[1:])
        out.extend([None] * (count - 1) + [int(said[1]) if said else None])
    return out


def check(outcome: Outcome) -> list[str]:
    """What is wrong with an outcome (nothing: an empty list)."""
    if outcome.code != 0:
        return [outcome.report()]
    expected = expected_statuses(outcome.block.text) if outcome.block.kind == "shell" else []
    if not any(status is not None for status in expected):
        return []
    if len(expected) != len(outcome.calls):
        return [
            f"{outcome.block.name}: {len(expected)} requests written, {len(outcome.calls)} made; "
            "an example with expected statuses runs each request once\n" + outcome.report()
        ]
    wrong = [
        f"request {i + 1} ({call.method} {call.url}) answered {call.status}, the example says {want}"
        for i, (call, want) in enumerate(zip(outcome.calls, expected, strict=True))
        if want is not None and call.status != want
    ]
    return [f"{outcome.block.name}: " + "; ".join(wrong) + "\n" + outcome.report()] if wrong else []


# --- manage.py in the test process ---------------------------------------------------------------


def _manage(argv: list[str]) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    if not argv:
        return {"stdout": "", "stderr": "manage.py: no command\n", "code": 2}
    name, *args = argv
    close_old_connections()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            call_command(name, *args, stdout=out, stderr=err)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
        code = exc.returncode or 1
    except Exception:  # the example fails with the traceback, as manage.py would
        err.write(traceback.format_exc())
        code = 1
    return {"stdout": out.getvalue(), "stderr": err.getvalue(), "code": code}


def _serve(conn: socket.socket) -> None:
    with conn:
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        request = json.loads(b"".join(chunks))
        conn.sendall(json.dumps(_manage(list(request["argv"]))).encode())


# --- running ------------------------------------------------------------------------------------


def _workdir_tools(workdir: Path) -> None:
    """``.venv/bin/python`` in the example's folder: manage.py goes to the test process, the
    rest to the real interpreter (the examples use it for pydicom's test files)."""
    bin_dir = workdir / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "${1-}" = "manage.py" ]; then shift; '
        f'exec "{REAL_PYTHON}" "{HERE / "manage_client.py"}" "$@"; fi\n'
        f'exec "{REAL_PYTHON}" "$@"\n'
    )
    wrapper.chmod(0o755)


def run(block: Block, stage: Stage, timeout: float = 180.0) -> Outcome:
    _workdir_tools(stage.workdir)
    text = substitute(block, stage)
    # In /tmp: a unix socket's path must stay under 108 bytes, which pytest's folders may not.
    socket_dir = Path(tempfile.mkdtemp(prefix="strata-docs-", dir="/tmp"))
    curl_log = stage.workdir / f"curl-{block.line}.log"
    curl_log.write_text("")
    output = stage.workdir / f"output-{block.line}.log"
    if block.kind == "shell":
        script = PRELUDE + text
        path = stage.workdir / f"example-{block.line}.sh"
        command = ["bash", str(path)]
    else:
        script = text
        path = stage.workdir / f"example-{block.line}.py"
        command = [REAL_PYTHON, str(path)]
    path.write_text(script)
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(stage.workdir),
        "LANG": "C.UTF-8",
        "TMPDIR": str(stage.workdir),
        "STRATA_CURL_LOG": str(curl_log),
        "STRATA_MANAGE_SOCKET": str(socket_dir / "manage.sock"),
        **stage.env,
    }
    started = time.monotonic()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(env["STRATA_MANAGE_SOCKET"])
        server.listen()
        with output.open("wb") as sink:
            proc = subprocess.Popen(  # noqa: S603 - the documentation's own example
                command, cwd=stage.workdir, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
            with selectors.DefaultSelector() as waiting:
                waiting.register(server, selectors.EVENT_READ)
                while proc.poll() is None:
                    if time.monotonic() - started > timeout:
                        proc.kill()
                        proc.wait()
                        break
                    for _ in waiting.select(timeout=0.05):
                        conn, _addr = server.accept()
                        _serve(conn)
    finally:
        server.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    stage.settle()
    calls = []
    for line in curl_log.read_text().splitlines():
        _, status, method, url = (line.split(" ", 3) + ["", "", ""])[:4]
        calls.append(Call(status=int(status or 0), method=method, url=url))
    code = proc.returncode if proc.returncode is not None else -1
    return Outcome(
        block=block,
        code=code,
        output=output.read_text(errors="replace"),
        calls=calls,
        seconds=time.monotonic() - started,
        script=script if len(script) < 8000 else script[:8000],
    )


def environment_for(token: str, admin_token: str, url: str) -> dict[str, str]:
    return {"TOKEN": token, "ADMIN_TOKEN": admin_token, "API": f"{url}/api/v1"}
