"""Storage locations and bucket imports and SSRF: every form of an internal endpoint is refused
with the field named, and every S3 connection goes to the address it checked (DNS rebinding
reaches nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from archive.ingest import jobs
from archive.locations import services as location_services
from archive.locations.services import LocationInput
from archive.models import IngestJob, StorageLocation
from archive.storage.s3 import EndpointRefused, _client
from tenants.context import Actor
from tenants.models import Organization
from tests.tenants.netguard_support import (
    PUBLIC,
    REFUSED_HOSTS,
    REFUSED_IDS,
    CountingServer,
    Rebinding,
    loopback_server_running,
)
from tests.tenants.test_api_support import error

pytestmark = pytest.mark.django_db


@pytest.fixture
def loopback_server() -> Iterator[CountingServer]:
    yield from loopback_server_running()


ACTOR = Actor.system("tests")
ACCESS_KEY, SECRET_KEY = "AKIASTRATATEST0000", "strata-test-secret"
CREDENTIALS = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}


def location_payload(endpoint_url: str) -> dict[str, Any]:
    return {"name": "Radiology bucket", "bucket": "radiology", "endpoint_url": endpoint_url}


def import_payload(endpoint_url: str) -> dict[str, Any]:
    return {"bucket": "radiology", "endpoint_url": endpoint_url}


@pytest.mark.parametrize(
    ("path", "payload"),
    [("/api/v1/storage-locations/", location_payload), ("/api/v1/ingest-jobs/", import_payload)],
    ids=["storage-location", "bucket-import"],
)
@pytest.mark.parametrize(("host", "label"), REFUSED_HOSTS, ids=REFUSED_IDS)
def test_an_internal_endpoint_in_any_form_answers_400_naming_the_endpoint(
    org: Organization,
    token_client: Any,
    settings: Any,
    path: str,
    payload: Any,
    host: str,
    label: str,
) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False

    response = token_client(org).post(
        path, {**payload(f"http://{host}:9000"), **CREDENTIALS}, format="json"
    )

    assert response.status_code == 400, response.content
    assert set(error(response)["fields"]) == {"endpoint_url"}
    assert not StorageLocation.objects.filter(kind=StorageLocation.Kind.S3).exists()
    assert not IngestJob.objects.exists()


@pytest.mark.parametrize("answer", ["::ffff:169.254.169.254", "100.100.100.200", "2002:7f00:1::"])
def test_an_endpoint_name_resolving_inside_is_refused_with_the_address(
    org: Organization, settings: Any, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    Rebinding(monkeypatch, honest=0, then=answer)

    problem = location_services.endpoint_check("https://minio.attacker.example")

    assert problem is not None
    assert "minio.attacker.example resolves to" in problem and "private or internal" in problem


@pytest.mark.parametrize("honest_lookups", [1, 2, 3])
def test_dns_rebinding_of_a_bucket_endpoint_never_reaches_loopback(
    org: Organization,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    loopback_server: CountingServer,
    honest_lookups: int,
) -> None:
    """The endpoint's name answers a public address to the first lookups (the check when saved,
    the check before the test), then 127.0.0.1: the connection test fails and reaches nothing."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    dns = Rebinding(monkeypatch, honest=honest_lookups)
    location = location_services.location_create(
        org=org,
        data=LocationInput(
            name="Radiology bucket",
            bucket="radiology",
            endpoint_url=f"http://rebind.example:{loopback_server.port}",
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
        ),
        actor=ACTOR,
    )

    tested = location_services.location_test(org=org, location=location, actor=ACTOR)

    assert loopback_server.requests == []
    assert set(dns.connects) <= {PUBLIC}
    assert tested.last_test_ok is False
    assert "127.0.0.1" in tested.last_test_message or "refused" in tested.last_test_message


@pytest.mark.parametrize("honest_lookups", [1, 2])
def test_dns_rebinding_of_an_import_bucket_stops_the_job_and_reaches_nothing(
    org: Organization,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    loopback_server: CountingServer,
    django_capture_on_commit_callbacks: Any,
    honest_lookups: int,
) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    dns = Rebinding(monkeypatch, honest=honest_lookups)
    data = jobs.ImportInput(
        bucket="radiology",
        endpoint_url=f"http://rebind.example:{loopback_server.port}",
        region="us-east-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )

    with django_capture_on_commit_callbacks(execute=True):
        job = jobs.import_job_create(org=org, data=data, actor=ACTOR)

    job.refresh_from_db()
    assert loopback_server.requests == []
    assert dns.connects == []
    assert job.state == IngestJob.State.FAILED
    assert "resolves to 127.0.0.1 (loopback)" in job.error


def test_a_refused_s3_connection_is_not_retried(
    settings: Any, monkeypatch: pytest.MonkeyPatch, loopback_server: CountingServer
) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    dns = Rebinding(monkeypatch, honest=0)
    client = _client(f"http://rebind.example:{loopback_server.port}", "us-east-1", "a", "b")

    with pytest.raises(EndpointRefused, match="resolves to 127.0.0.1"):
        client.list_objects_v2(Bucket="radiology")

    assert len(dns.lookups) == 1
    assert loopback_server.requests == []


def test_allowed_private_endpoints_are_still_pinned_with_the_host_named(
    settings: Any, monkeypatch: pytest.MonkeyPatch, loopback_server: CountingServer
) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    dns = Rebinding(monkeypatch, honest=0)
    client = _client(f"http://minio.hospital.example:{loopback_server.port}", "us-east-1", "a", "b")

    client.delete_object(Bucket="radiology", Key="k")

    assert dns.connects == ["127.0.0.1"]
    [(method, _, host)] = loopback_server.requests
    assert method == "DELETE" and host.endswith(f"minio.hospital.example:{loopback_server.port}")


def test_the_platform_store_is_not_guarded(settings: Any, loopback_server: CountingServer) -> None:
    # The operator's own endpoint may be private (a MinIO next to the web servers).
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False
    client = _client(
        f"http://127.0.0.1:{loopback_server.port}", "us-east-1", "a", "b", guarded=False
    )
    client.delete_object(Bucket="radiology", Key="k")
    assert len(loopback_server.requests) == 1


def test_a_tenant_endpoint_is_connected_to_directly_despite_an_environment_proxy(
    settings: Any, monkeypatch: pytest.MonkeyPatch, loopback_server: CountingServer
) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    dns = Rebinding(monkeypatch, honest=0)
    client = _client(f"http://minio.hospital.example:{loopback_server.port}", "us-east-1", "a", "b")

    client.delete_object(Bucket="radiology", Key="k")

    assert dns.lookups == ["minio.hospital.example"]
    assert len(loopback_server.requests) == 1
