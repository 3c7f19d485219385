"""Every command example of README.md and docs/*.md runs against a live Strata with the demo data.

Each page's shell blocks (```sh, ```bash) and Python client examples (dicomweb-client,
pynetdicom) run, in the order written, against pytest-django's live server with
``seed_demo --history-studies 4``, tokens of the demo organization, the DICOM listener on a free
port, and loopback stand-ins for what a hospital brings (an S3 bucket in moto's server, a PACS
and a workstation in dcmtk's storescp, a webhook receiver). See ``harness.py`` for what is
substituted and checked, ``blocks.py`` for which blocks run and how one is marked "not run".
The live server and the listener run in threads with their own connections, hence
transactional tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from tenants.context import Actor
from tenants.models import Organization
from tenants.roles import Scope
from tenants.services import token_create
from tests.archive.test_dimse_retrieve import storescp as dcmtk_storescp
from tests.conftest import Receiver, require_service
from tests.docs import blocks as docs
from tests.docs.harness import Outcome, Stage, check, environment_for, run

DEMO_SLUG = "demo-hospital"
PAGES_RUN = [
    path
    for path in docs.pages()
    if any(b.kind in ("shell", "python") for b in docs.blocks_of(path))
]
SUMMARY: dict[str, dict[str, Any]] = {}


# --- which blocks run --------------------------------------------------------------------------


def test_every_shell_block_is_run_or_marked_with_a_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    every = docs.all_blocks()
    assert docs.problems(every) == []
    shell = [b for b in every if b.lang in docs.SHELL]
    assert shell, "no shell block found: the extraction is broken"
    for block in shell:
        assert block.kind in ("shell", "marked"), block.name
        assert block.path in PAGES_RUN or block.kind == "marked", block.name
    ran = [b for b in every if b.kind in ("shell", "python")]
    marked = [b for b in every if b.kind == "marked"]
    other = [b for b in every if b.kind == "other"]
    with capsys.disabled():
        print(
            f"\ndocumentation examples: {len(every)} blocks; {len(ran)} run "
            f"({sum(b.kind == 'shell' for b in ran)} shell, {sum(b.kind == 'python' for b in ran)} "
            f"Python), {len(marked)} marked not run, {len(other)} not run by their language "
            f"({', '.join(sorted({b.lang or 'plain' for b in other}))})"
        )
        for block in marked:
            print(f"  not run: {block.name} ({block.marker})")


def test_a_new_shell_block_is_run_and_a_marker_skips_it(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Intro\n\n```sh\ncurl $API/organization/\n```\n\n"
        "<!-- example: not run (needs the hospital's VPN) -->\n```bash\nssh pacs\n```\n\n"
        "```console\n$ make run\n```\n\n```python\nfrom pynetdicom import AE\n```\n\n"
        "```python\ndef verify(): ...\n```\n\n```json\n{}\n```\n\n"
        "```\ncurl $API/tokens/\n```\n\n```\nsaas/    settings\n```\n"
    )
    found = docs.blocks_of(page)
    assert [(b.lang, b.kind) for b in found] == [
        ("sh", "shell"),
        ("bash", "marked"),
        ("console", "other"),
        ("python", "python"),
        ("python", "other"),
        ("json", "other"),
        ("", "other"),
        ("", "other"),
    ]
    assert found[1].marker == "needs the hospital's VPN"
    problems = docs.problems(found)
    assert len(problems) == 2
    assert "```console" in problems[0]
    assert "page.md:28: commands in a block without a language" in problems[1]


# --- the stage: live server, demo, listener, stand-ins -------------------------------------------


@contextlib.contextmanager
def storescp(folder: Path, ae_title: str) -> Iterator[int]:
    """A PACS or workstation: dcmtk's storescp on a free port of 127.0.0.1."""
    binary = shutil.which("storescp")
    require_service("dcmtk", binary is not None, "storescp not found (Debian package dcmtk)")
    assert binary is not None
    folder.mkdir(parents=True, exist_ok=True)
    with dcmtk_storescp(binary, folder, ae_title, "+xa") as port:
        yield port


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """The DICOM listener as ``run_scp`` runs it, in threads of this process: (scp, port)."""
    import tempfile

    from pynetdicom import _config

    from archive.dimse.listener import StrataSCP

    for switch in ("STORE_RECV_CHUNKED_DATASET", "STORE_SEND_CHUNKED_DATASET", "LOG_HANDLER_LEVEL"):
        monkeypatch.setattr(_config, switch, getattr(_config, switch))
    receive_dir = tmp_path / "dimse-receive"
    receive_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(receive_dir))
    scp = StrataSCP(ae_title="STRATA")
    _host, port = scp.start("127.0.0.1", 0)
    try:
        yield scp, port
    finally:
        scp.stop(grace=5)


@pytest.fixture
def stage(
    live_server: Any,
    settings: Any,
    tmp_path: Path,
    listener: Any,
    moto_endpoint: str,
) -> Iterator[Callable[[], Stage]]:
    from archive.storage.s3 import shared_clients_clear

    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.STORAGE_ROOT = tmp_path / "storage"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    # The stand-ins listen on 127.0.0.1, as in the other tests of buckets and destinations.
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    shared_clients_clear()
    call_command("seed_demo", quiet=True, history_studies=4)
    org = Organization.objects.get(slug=DEMO_SLUG)
    _, token = token_create(
        org=org,
        name="Documentation examples",
        scopes=[s.value for s in Scope],
        actor=Actor.system("tests"),
    )
    _, admin_token = token_create(
        org=org, name="Documentation admin", scopes=[Scope.ADMIN.value], actor=Actor.system("tests")
    )
    scp, port = listener

    def settle() -> None:
        deadline = time.monotonic() + 60
        while scp.associations and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scp.wait_indexed(60), "the listener is still indexing"
        assert scp.activity.wait_written(30), "the listener is still recording"

    receiver = Receiver()
    workdir = tmp_path / "examples"
    workdir.mkdir()
    with contextlib.ExitStack() as stack:
        pacs = stack.enter_context(storescp(tmp_path / "pacs", "STMARY_PACS"))
        workstation = stack.enter_context(storescp(tmp_path / "ws7", "WS-7"))
        url = live_server.url
        built = Stage(
            workdir=workdir,
            env=environment_for(token, admin_token, url),
            replacements=[
                ("http://localhost:8000", url),
                ("localhost 11112", f"127.0.0.1 {port}"),
                ('"localhost", 11112', f'"127.0.0.1", {port}'),
                ("https://integrations.your-hospital.org/strata", receiver.url),
                ("https://s3.eu-west-1.amazonaws.com", moto_endpoint),
                ("https://s3.eu-central-1.amazonaws.com", moto_endpoint),
                ('"host": "pacs.stmary.org", "port": 104', f'"host": "127.0.0.1", "port": {pacs}'),
                (
                    '"host": "ws7.stmary.org", "port": 104',
                    f'"host": "127.0.0.1", "port": {workstation}',
                ),
            ],
            settle=settle,
            receiver=receiver,
            folders={"STMARY_PACS": tmp_path / "pacs", "WS-7": tmp_path / "ws7"},
            assignments={
                "TOKEN": token,
                "ADMIN_TOKEN": admin_token,
                "API": f"{url}/api/v1",
            },
        )
        try:
            yield lambda: built
        finally:
            receiver.close()


def buckets(endpoint: str) -> None:
    """The hospitals' buckets the examples name: an old PACS export to import, a DR bucket."""
    import boto3
    from pydicom.data import get_testdata_file

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIASTRATATEST0000",
        aws_secret_access_key="strata-test-secret-key",  # noqa: S106 - moto takes any
    )
    for name in ("old-pacs", "stmary-dr"):
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
    for name in ("CT_small.dcm", "JPEG2000.dcm"):
        client.upload_file(get_testdata_file(name), "old-pacs", f"2019/{name}")


def invoiced_month(org: Organization) -> None:
    """A month already invoiced with a line, as the demo's year of usage has: unless the demo
    has one, some images received last month, rolled up and the month finalized."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.metering import record_usage
    from billing.models import Invoice
    from billing.periods import month_start
    from billing.rollups import rollup_run
    from billing.services import invoice_finalize

    newest = Invoice.objects.for_org(org).order_by("-id").first()
    if newest is not None and newest.lines.exists():
        return  # the demo has its months invoiced already
    last_month = month_start(month_start(timezone.now()) - timedelta(days=1))
    record_usage(
        org=org,
        meter="ingest.bytes",
        quantity=12 * 2**30,
        at=last_month + timedelta(days=3),
        idempotency_key="docs:last-month-ingest",
    )
    rollup_run()
    invoice_finalize(org=org, period_start=last_month, actor=Actor.system("tests"))


def moved_and_committed(outcomes: list[Outcome], stage: Stage) -> list[str]:
    """C-MOVE delivered the study to the workstation; the modality's image was committed."""
    problems = []
    if not any(stage.folders["WS-7"].iterdir()):
        problems.append("movescu: the workstation WS-7 received nothing")
    commitment = next(o for o in outcomes if "send_n_action" in o.block.text)
    if "committed: ['" not in commitment.output or "failed: []" not in commitment.output:
        problems.append(f"storage commitment: not committed\n{commitment.output}")
    return problems


def echoed_and_stored(outcomes: list[Outcome], stage: Stage) -> list[str]:
    """The destination's test reached the PACS; storescu's image was stored."""
    problems = []
    echo = next(o for o in outcomes if "/echo/" in o.block.text)
    if '"last_echo_ok":true' not in echo.output.replace(" ", ""):
        problems.append(f"the C-ECHO test of the destination failed\n{echo.output}")
    store = next(o for o in outcomes if "storescu" in o.block.text)
    if store.code != 0:
        problems.append(f"storescu failed\n{store.output}")
    return problems


def prefetch_started(outcomes: list[Outcome], stage: Stage) -> list[str]:
    """The order restored the patient's archived prior, as the answer shown below it says."""
    order = next(o for o in outcomes if "/prefetch/" in o.block.text)
    answer = order.output.replace(" ", "")
    if '"status":"started"' not in answer or '"origin":"prefetch"' not in answer:
        return [f"the prefetch order started no restore\n{order.output}"]
    return []


def delivered_and_verified(outcomes: list[Outcome], stage: Stage) -> list[str]:
    """The test event reaches the receiver (sent as a webhooks worker sends it), and the page's
    own ``verify`` accepts its signature with the endpoint's secret."""
    from tenants import webhooks
    from tenants.models import WebhookDelivery, WebhookEndpoint

    org = Organization.objects.get(slug=DEMO_SLUG)
    pending = WebhookDelivery.objects.filter(organization=org, event__type="webhook.test")
    for delivery in pending:
        webhooks.delivery_attempt(org_id=org.pk, delivery_id=delivery.pk)
    received = [
        r for r in stage.receiver.requests if r["headers"].get("strata-event") == "webhook.test"
    ]
    if not received:
        return ["the webhook.test event of the example never reached the receiver"]
    receiver_code = next(
        b.text
        for b in docs.blocks_of(docs.ROOT / "docs/organizations-and-api.md")
        if "def verify" in b.text
    )
    namespace: dict[str, Any] = {}
    exec(receiver_code, namespace)  # noqa: S102 - the documentation's own receiver code
    secret = WebhookEndpoint.objects.get(organization=org, url=stage.receiver.url).secret
    request = received[0]
    if not namespace["verify"](secret, request["headers"]["strata-signature"], request["body"]):
        return ["the page's verify() refused the signature of a real delivery"]
    return []


# What the examples of a page must have done besides answering 2xx and exiting 0.
AFTERWARDS: dict[str, Callable[[list[Outcome], Stage], list[str]]] = {
    "docs/dicom-conformance.md": moved_and_committed,
    "docs/images.md": echoed_and_stored,
    "docs/organizations-and-api.md": delivered_and_verified,
    "docs/policies-and-tiers.md": prefetch_started,
}


def archived_ct_study(org: Organization) -> None:
    """A CT study whose images are in the archive tier, as a year unread leaves one under the
    demo's policy: unless the demo has one, its oldest CT study moved as the tiering workers
    move images."""
    from archive.models import Instance, Study
    from archive.tiering.moves import move_request, moves_execute

    ct = Study.objects.for_org(org).filter(modalities__contains="CT")
    if ct.filter(bytes_archive__gt=0).exists():
        return  # the demo's policy archived one already
    study = ct.order_by("study_date")[0]
    moves = [
        move_request(org=org, instance=instance, to_tier="archive").pk
        for instance in Instance.objects.for_org(org).filter(series__study=study)
    ]
    result = moves_execute(org=org, move_ids=moves)
    assert result.done == len(moves), result


# What a page's examples need besides the demo and the stand-ins.
PREPARE: dict[str, Callable[[Organization], None]] = {
    "docs/billing.md": invoiced_month,
    "docs/policies-and-tiers.md": archived_ct_study,
    "docs/restores-and-replicas.md": archived_ct_study,
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("page", PAGES_RUN, ids=[str(p.relative_to(docs.ROOT)) for p in PAGES_RUN])
def test_examples_of_the_page_run_against_the_demo(
    page: Path, stage: Callable[[], Stage], moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for tool in ("curl", "findscu", "movescu", "getscu", "storescu", "echoscu"):
        require_service("curl and dcmtk", shutil.which(tool) is not None, f"{tool} not found")
    buckets(moto_endpoint)
    current = stage()
    prepare = PREPARE.get(str(page.relative_to(docs.ROOT)))
    if prepare is not None:
        prepare(Organization.objects.get(slug=DEMO_SLUG))
    found = docs.blocks_of(page)
    outcomes: list[Outcome] = []
    failures: list[str] = []
    started = time.monotonic()
    program = ""  # the page's Python example so far, for one that continues it
    for block in found:
        if block.kind not in ("shell", "python"):
            continue
        if block.kind == "python":
            program = (program if block.continues else "") + block.text
            block = dataclasses.replace(block, text=program)
        outcome = run(block, current)
        outcomes.append(outcome)
        failures.extend(check(outcome))
    afterwards = AFTERWARDS.get(str(page.relative_to(docs.ROOT)))
    if afterwards is not None and not failures:
        failures.extend(afterwards(outcomes, current))
    ran = len(outcomes)
    skipped = len(found) - ran
    SUMMARY[str(page.relative_to(docs.ROOT))] = {
        "ran": ran,
        "skipped": skipped,
        "seconds": time.monotonic() - started,
    }
    with capsys.disabled():
        print(
            f"\n{page.relative_to(docs.ROOT)}: {ran} examples run, {skipped} blocks not run, "
            f"{time.monotonic() - started:.1f} s ("
            + ", ".join(f"{o.block.line}: {o.seconds:.1f} s" for o in outcomes)
            + ")"
        )
    assert not failures, "\n\n".join(failures)


# --- the harness itself ------------------------------------------------------------------------


class _Answers(BaseHTTPRequestHandler):
    """``/200``, ``/201``, ``/404``: answers with that status."""

    def do_GET(self) -> None:  # noqa: N802
        status = int(self.path.strip("/") or 200)
        body = b'{"id": 7}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def answers() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _outcome(text: str, url: str, workdir: Path) -> Outcome:
    block = docs.Block(path=workdir / "page.md", line=1, lang="sh", text=text, marker=None)
    return run(block, Stage(workdir=workdir, env={}, replacements=[("http://localhost:8000", url)]))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_the_harness_fails_a_request_that_is_not_2xx_or_not_the_status_written(
    answers: str, tmp_path: Path
) -> None:
    passed = _outcome(
        "curl http://localhost:8000/200\ncurl http://localhost:8000/201  # 201\n", answers, tmp_path
    )
    assert check(passed) == []
    assert [(c.status, c.method) for c in passed.calls] == [(200, "GET"), (201, "GET")]

    not_found = _outcome("curl http://localhost:8000/404\necho after\n", answers, tmp_path)
    assert not_found.code != 0 and "after" not in not_found.output
    assert "HTTP 404" in check(not_found)[0]

    piped = _outcome(
        "ID=$(curl -s http://localhost:8000/404 | cat)\necho after\n", answers, tmp_path
    )
    assert piped.code != 0 and "after" not in piped.output

    wrong = _outcome("curl http://localhost:8000/200   # 201: created\n", answers, tmp_path)
    assert wrong.code == 0
    assert "answered 200, the example says 201" in check(wrong)[0]

    below = _outcome("curl http://localhost:8000/201\n# 200 {...}\n", answers, tmp_path)
    assert "answered 201, the example says 200" in check(below)[0]


@pytest.mark.django_db
def test_manage_py_in_an_example_runs_in_the_test_process(tmp_path: Path) -> None:
    ok = _outcome(".venv/bin/python manage.py check --fail-level ERROR\n", "", tmp_path)
    assert ok.code == 0, ok.report()
    assert "System check identified" in ok.output
    unknown = _outcome(".venv/bin/python manage.py no_such_command\necho after\n", "", tmp_path)
    assert unknown.code != 0 and "after" not in unknown.output
