"""Absolute URLs in DICOMweb answers (BulkDataURI, RetrieveURL): from PUBLIC_BASE_URL when it is
set, otherwise from the request, with the server's port when the Host header names none."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory

from archive.dicomweb.common import base_url, public_url, request_authority
from saas import env
from tests.archive.test_dicomweb_support import (
    STOW_TYPE,
    SeededStudy,
    ingest_study,
    multipart,
    study,
)

pytestmark = pytest.mark.django_db

PIXEL_DATA = "7FE00010"
RETRIEVE_URL = "00081190"


def _request(host: str | None, port: str, *, secure: bool = False) -> Any:
    extra: dict[str, Any] = {"SERVER_PORT": port, "SERVER_NAME": "strata.internal"}
    if host is not None:
        extra["HTTP_HOST"] = host
    return RequestFactory().get("/dicomweb/studies", secure=secure, **extra)


@pytest.mark.parametrize(
    ("host", "port", "secure", "expected"),
    [
        # dicomweb-client's Host header: no port, though it connected to 8042.
        ("127.0.0.1", "8042", False, "http://127.0.0.1:8042/dicomweb"),
        ("pacs.example.org", "8443", True, "https://pacs.example.org:8443/dicomweb"),
        ("[::1]", "8042", False, "http://[::1]:8042/dicomweb"),
        # The Host header's own port wins: a proxy in front may listen elsewhere than we do.
        ("127.0.0.1:9000", "8042", False, "http://127.0.0.1:9000/dicomweb"),
        ("[::1]:9000", "8042", False, "http://[::1]:9000/dicomweb"),
        # The scheme's default port is never written.
        ("pacs.example.org", "80", False, "http://pacs.example.org/dicomweb"),
        ("pacs.example.org", "443", True, "https://pacs.example.org/dicomweb"),
        # No Host header at all (HTTP/1.0): the server's name and port.
        (None, "8042", False, "http://strata.internal:8042/dicomweb"),
    ],
)
def test_base_url_from_the_request_keeps_the_port(
    settings, host: str | None, port: str, secure: bool, expected: str
) -> None:
    settings.PUBLIC_BASE_URL = ""
    settings.ALLOWED_HOSTS = ["*"]

    assert base_url(_request(host, port, secure=secure)) == expected


def test_https_on_port_80_keeps_the_port(settings) -> None:
    settings.PUBLIC_BASE_URL = ""
    settings.ALLOWED_HOSTS = ["*"]

    assert request_authority(_request("pacs.example.org", "80", secure=True)) == (
        "pacs.example.org:80"
    )


def test_public_base_url_wins_over_the_request(settings) -> None:
    settings.PUBLIC_BASE_URL = "https://pacs.example.org/strata"
    settings.ALLOWED_HOSTS = ["*"]
    request = _request("10.0.0.7", "8000")

    assert base_url(request) == "https://pacs.example.org/strata/dicomweb"
    assert public_url(request, "/api/v1/restores/7/") == (
        "https://pacs.example.org/strata/api/v1/restores/7/"
    )


# --- in the answers ------------------------------------------------------------------------------


@pytest.fixture
def seeded(org) -> SeededStudy:
    return ingest_study(
        org,
        study(
            patient_id="PAT-URL",
            patient_name="Lovelace^Ada",
            study_date=dt.date(2026, 3, 1),
            instances_per_series=1,
        ),
    )


def _body(response: Any) -> Any:
    if getattr(response, "streaming", False):
        return json.loads(b"".join(response.streaming_content))
    return json.loads(response.content)


def _metadata_uri(client: Any, seeded: SeededStudy, **extra: Any) -> str:
    response = client.get(f"/dicomweb/studies/{seeded.uid}/metadata", **extra)
    assert response.status_code == 200, response.content
    (item,) = _body(response)
    return str(item[PIXEL_DATA]["BulkDataURI"])


def test_bulkdata_uri_keeps_the_servers_port_when_host_has_none(
    settings, org, token_client, seeded
) -> None:
    settings.PUBLIC_BASE_URL = ""
    uri = _metadata_uri(
        token_client(org, ["dicom:read"]), seeded, HTTP_HOST="127.0.0.1", SERVER_PORT="8042"
    )

    assert uri.startswith(f"http://127.0.0.1:8042/dicomweb/studies/{seeded.uid}/series/")


def test_bulkdata_uri_from_public_base_url(settings, org, token_client, seeded) -> None:
    settings.PUBLIC_BASE_URL = "https://pacs.example.org"
    uri = _metadata_uri(
        token_client(org, ["dicom:read"]), seeded, HTTP_HOST="127.0.0.1", SERVER_PORT="8042"
    )

    assert uri.startswith(f"https://pacs.example.org/dicomweb/studies/{seeded.uid}/series/")


@pytest.mark.parametrize(
    ("public", "expected"),
    [("", "http://127.0.0.1:8042/dicomweb"), ("https://pacs.example.org", None)],
)
def test_stow_retrieve_urls(settings, org, token_client, ct_study, public, expected) -> None:
    settings.PUBLIC_BASE_URL = public
    response = token_client(org, ["dicom:write"]).post(
        "/dicomweb/studies",
        data=multipart(ct_study),
        content_type=STOW_TYPE,
        HTTP_HOST="127.0.0.1",
        SERVER_PORT="8042",
    )

    assert response.status_code == 200, response.content
    base = expected or f"{public}/dicomweb"
    body = response.json()
    assert body[RETRIEVE_URL]["Value"][0].startswith(f"{base}/studies/")
    for item in body["00081199"]["Value"]:
        assert item[RETRIEVE_URL]["Value"][0].startswith(f"{base}/studies/")


# --- with dicomweb-client over HTTP --------------------------------------------------------------


@pytest.fixture
def http_client(live_server, org, make_token) -> Iterator[DICOMwebClient]:
    _, secret = make_token(org, ["dicom:read"])
    with requests.Session() as session:
        # The client as it comes: it sends "Host: <host>" without the live server's port.
        yield DICOMwebClient(
            f"{live_server.url}/dicomweb",
            session=session,
            headers={"Authorization": f"Bearer {secret}"},
        )


@pytest.mark.django_db(transaction=True)
def test_dicomweb_client_follows_the_bulkdata_uri_to_the_right_port(
    settings, live_server, org, http_client
) -> None:
    settings.PUBLIC_BASE_URL = ""
    seeded = ingest_study(
        org,
        study(
            patient_id="PAT-URL2",
            patient_name="Hopper^Grace",
            study_date=dt.date(2026, 3, 2),
            instances_per_series=1,
        ),
    )

    metadata = http_client.retrieve_instance_metadata(
        seeded.uid, seeded.series_uids[0], seeded.sop_uids[0]
    )
    uri = metadata[PIXEL_DATA]["BulkDataURI"]

    assert urlsplit(uri).port == urlsplit(live_server.url).port
    assert len(http_client.retrieve_bulkdata(uri)[0]) == 16 * 16 * 2


# --- the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("https://pacs.example.org", "https://pacs.example.org"),
        ("https://pacs.example.org/", "https://pacs.example.org"),
        ("http://10.0.0.7:8042", "http://10.0.0.7:8042"),
        ("https://example.org/strata/", "https://example.org/strata"),
    ],
)
def test_public_base_url_setting(monkeypatch, value: str, expected: str) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", value)

    assert env.public_base_url("PUBLIC_BASE_URL") == expected


@pytest.mark.parametrize(
    "value",
    [
        "pacs.example.org",
        "ftp://pacs.example.org",
        "https://",
        "https://pacs.example.org?x=1",
        "https://pacs.example.org#top",
        "https://user:pw@pacs.example.org",
        "https://pacs.example.org:99999",
        "https://pacs.example.org:0",
        "https://pacs example.org",
    ],
)
def test_bad_public_base_url_stops_the_start(monkeypatch, value: str) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", value)

    with pytest.raises(ImproperlyConfigured, match="PUBLIC_BASE_URL"):
        env.public_base_url("PUBLIC_BASE_URL")
