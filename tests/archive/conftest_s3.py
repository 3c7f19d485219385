"""S3 over real HTTP for the archive tests: moto's server in a thread, a fresh bucket per test, an
endpoint that answers every request with 500 and one where nothing listens.

A test module loads them with ``pytest_plugins = ["tests.archive.conftest_s3"]`` (importing the
fixture functions by name would shadow them); they would move to ``tests/archive/conftest.py``
once every archive test module may rely on them. Any credentials work against moto.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest

from archive.locations.services import LocationInput, location_create
from archive.models import StorageLocation
from tenants.context import Actor
from tenants.models import Organization

ACCESS_KEY = "AKIASTRATATEST0000"
SECRET_KEY = "strata-test-secret-key"
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1; yields its endpoint URL."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class Bucket:
    endpoint_url: str
    name: str
    client: Any

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def head(self, key: str) -> dict[str, Any]:
        return dict(self.client.head_object(Bucket=self.name, Key=key))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def s3_client(endpoint_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def s3_bucket(moto_server: str, settings: Any) -> Bucket:
    """A new, empty bucket. Private endpoints are allowed: moto listens on 127.0.0.1."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    client = s3_client(moto_server)
    name = f"strata-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(endpoint_url=moto_server, name=name, client=client)


class _FailingHandler(BaseHTTPRequestHandler):
    """Answers every request as an S3 server in trouble: 500 InternalError."""

    def _fail(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>"
        )
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _fail  # noqa: N815

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def failing_s3(settings: Any) -> Iterator[str]:
    """An endpoint that answers 500 to everything; yields its URL."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port(settings: Any) -> str:
    """An endpoint URL where nothing listens (connection refused)."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def make_bucket_location(settings: Any) -> Callable[..., StorageLocation]:
    """Make a hospital bucket location through the service, as the portal would."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True

    def make(
        org: Organization,
        *,
        endpoint_url: str,
        bucket: str,
        role: str = StorageLocation.Role.PRIMARY,
        **kwargs: Any,
    ) -> StorageLocation:
        data = LocationInput(
            name=kwargs.pop("name", "Radiology bucket"),
            bucket=bucket,
            endpoint_url=endpoint_url,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            role=role,
            **kwargs,
        )
        return location_create(org=org, data=data, actor=Actor.system("tests"))

    return make
