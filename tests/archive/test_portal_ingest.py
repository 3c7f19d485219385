"""The Ingest pages: the upload flow end to end (files and a zip, chunked, with Celery eager),
job progress, bucket imports, the DICOMweb connection details, and AE title management (its pages
are reached from DICOM connections)."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from pydicom.uid import generate_uid

from archive.models import DicomAE, IngestFailure, IngestJob, Instance, Study
from archive.synthetic import make_instance, study_spec, to_bytes
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Role

pytestmark = pytest.mark.django_db
# The S3 fixtures: moto's server, a bucket per test, failing endpoints.
pytest_plugins = ["tests.archive.conftest_s3"]


@pytest.fixture
def client(owner: Membership) -> Client:
    c = Client()
    c.force_login(owner.user)
    return c


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def dicoms(n: int) -> list[bytes]:
    spec = study_spec("MR")
    series = generate_uid()
    return [
        to_bytes(make_instance(spec, series_uid=series, instance_number=i + 1, rows=24, columns=24))
        for i in range(n)
    ]


def send_file(
    client: Client, job: dict[str, Any], name: str, data: bytes, chunk: int = 0
) -> list[Any]:
    """Send a file as archive.js does: raw slices, the last marked final."""
    chunk = chunk or max(len(data), 1)
    upload_id = uuid.uuid4().hex
    responses = []
    offset = 0
    while True:
        piece = data[offset : offset + chunk]
        final = offset + len(piece) >= len(data)
        query = (
            f"?upload={upload_id}&name={name}&offset={offset}&size={len(data)}"
            f"&final={'1' if final else '0'}"
        )
        responses.append(
            client.post(
                job["upload_url"] + query, data=piece, content_type="application/octet-stream"
            )
        )
        offset += len(piece)
        if final:
            return responses


def test_upload_of_files_and_a_zip_end_to_end(
    client: Client, org: Organization, django_capture_on_commit_callbacks
) -> None:
    files = dicoms(4)
    created = client.post(url("portal-ingest-upload", org))
    assert created.status_code == 201
    job = created.json()
    assert set(job) >= {"upload_url", "finish_url", "progress_url", "job_url"}

    for response in send_file(client, job, "study/IM1.dcm", files[0], chunk=1500):
        assert response.status_code == 200, response.content
    send_file(client, job, "study/IM2.dcm", files[1])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("more/IM3.dcm", files[2])
        zf.writestr("more/IM4.dcm", files[3])
        zf.writestr("more/report.pdf", b"%PDF-1.4 not an image")
    last = send_file(client, job, "more.zip", buffer.getvalue(), chunk=2048)[-1]
    assert last.json()["complete"] is True

    waiting = client.get(job["progress_url"]).json()
    assert waiting["phase"] == "receiving" and waiting["total_files"] == 3

    with django_capture_on_commit_callbacks(execute=True):
        finished = client.post(job["finish_url"])
    assert finished.status_code == 200
    progress = client.get(job["progress_url"]).json()
    assert progress["state"] == "done" and progress["finished"] is True
    assert (progress["stored"], progress["duplicate"], progress["failed"]) == (4, 0, 1)
    assert progress["percent"] == 100
    assert progress["bytes_stored"] == sum(map(len, files))

    study = Study.objects.for_org(org).get()
    assert study.instance_count == 4
    page = client.get(job["job_url"])
    content = page.content.decode()
    assert page.status_code == 200
    assert "more.zip/more/report.pdf" in content and "No failures" not in content
    assert IngestFailure.objects.get().reason in content


def test_upload_resumes_at_the_servers_offset(client: Client, org: Organization) -> None:
    job = client.post(url("portal-ingest-upload", org)).json()
    upload_id = uuid.uuid4().hex
    base = f"{job['upload_url']}?upload={upload_id}&name=a.dcm&size=10"
    ok = client.post(
        base + "&offset=0&final=0", data=b"01234", content_type="application/octet-stream"
    )
    assert ok.json() == {"upload": upload_id, "received": 5, "complete": False}
    wrong = client.post(
        base + "&offset=7&final=1", data=b"789", content_type="application/octet-stream"
    )
    assert wrong.status_code == 409
    assert wrong.json()["error"]["fields"]["offset"] == ["5"]
    done = client.post(
        base + "&offset=5&final=1", data=b"56789", content_type="application/octet-stream"
    )
    assert done.json()["complete"] is True


def test_bad_chunk_requests_answer_json_field_errors(client: Client, org: Organization) -> None:
    job = client.post(url("portal-ingest-upload", org)).json()
    response = client.post(
        job["upload_url"] + "?upload=bad&name=&offset=0&size=1&final=1",
        data=b"x",
        content_type="application/octet-stream",
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "upload" in fields and "name" in fields


def test_finishing_an_empty_upload_is_refused(client: Client, org: Organization) -> None:
    job = client.post(url("portal-ingest-upload", org)).json()
    response = client.post(job["finish_url"])
    assert response.status_code == 400
    assert "No file has arrived" in response.json()["error"]["message"]
    assert IngestJob.objects.get().state == "pending"


def test_a_finished_upload_takes_no_more_files(
    client: Client, org: Organization, django_capture_on_commit_callbacks
) -> None:
    job = client.post(url("portal-ingest-upload", org)).json()
    send_file(client, job, "a.dcm", dicoms(1)[0])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(job["finish_url"])
    late = send_file(client, job, "b.dcm", b"late")[-1]
    assert late.status_code == 409
    assert Instance.objects.count() == 1


def test_ingest_page_shows_dicomweb_details_and_points_to_dicom_connections(
    client: Client, org: Organization, settings
) -> None:
    from archive.ae_titles import services as ae
    from tenants.context import Actor

    settings.SITE_URL = "https://strata.example.com"
    settings.DICOM_SCP_HOST = "dicom.strata.example.com"
    settings.DICOM_SCP_PORT = 4242
    ae.ae_create(
        org=org,
        ae_title="STMARY_PACS",
        allowed_calling_ae_titles=["MODALITY1"],
        allowed_networks=["203.0.113.0/24"],
        actor=Actor.system("tests"),
    )
    content = client.get(url("portal-ingest", org)).content.decode()
    assert "https://strata.example.com/dicomweb/studies" in content
    assert url("portal-tokens", org) in content
    # The listener, the AE titles and the destinations moved to DICOM connections.
    assert url("portal-dicom", org) in content and 'id="dimse"' in content
    assert "dicom.strata.example.com" not in content and 'id="ae-table"' not in content
    connections = client.get(url("portal-dicom", org)).content.decode()
    assert "dicom.strata.example.com" in connections and "4242" in connections
    assert "STMARY_PACS" in connections and "MODALITY1" in connections
    assert "203.0.113.0/24" in connections
    assert url("portal-ae-create", org) in connections


def test_ingest_page_member_view(org: Organization, make_member, settings) -> None:
    for name in ("DICOM_SCP_HOST", "DICOM_SCP_PORT"):
        if hasattr(settings, name):
            delattr(settings, name)
    member = make_member(org, Role.MEMBER)
    c = Client()
    c.force_login(member.user)
    content = c.get(url("portal-ingest", org)).content.decode()
    assert url("portal-tokens", org) not in content
    assert "Owners and admins create tokens" in content
    connections = c.get(url("portal-dicom", org)).content.decode()
    assert "localhost" in connections and "11112" in connections
    assert url("portal-ae-create", org) not in connections  # storage.manage only


# --- bucket import ---------------------------------------------------------------------------


def test_import_form_refuses_bad_bucket_settings_and_saves_nothing(
    client: Client, org: Organization
) -> None:
    response = client.post(
        url("portal-ingest-import", org),
        {
            "bucket": "Not_A_Bucket",
            "endpoint_url": "gopher://x",
            "access_key_id": "AKIA",
            "secret_access_key": "never-echoed-secret",
        },
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert "bucket" in form.errors and "endpoint_url" in form.errors
    assert not IngestJob.objects.exists()
    assert "never-echoed-secret" not in response.content.decode()


def test_import_with_unreachable_bucket_shows_the_failure_on_the_job_page(
    client: Client, org: Organization, closed_port: str, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url("portal-ingest-import", org),
            {
                "bucket": "hospital-export",
                "prefix": "2024/",
                "endpoint_url": closed_port,
                "access_key_id": "AKIA",
                "secret_access_key": "secret",
            },
        )
    job = IngestJob.objects.get()
    assert response.status_code == 302 and response["Location"] == url(
        "portal-ingest-job", org, job.pk
    )
    page = client.get(response["Location"])
    assert page.status_code == 200
    content = page.content.decode()
    assert "Could not list s3://hospital-export/2024/" in content
    assert job.source in content
    assert (
        json.loads(client.get(url("portal-ingest-job-progress", org, job.pk)).content)["state"]
        == "failed"
    )


# --- AE titles -------------------------------------------------------------------------------


def test_ae_titles_are_added_edited_and_deleted_with_audit(
    client: Client, org: Organization
) -> None:
    response = client.post(
        url("portal-ae-create", org),
        {
            "ae_title": "STMARY_CT",
            "allowed_calling_ae_titles": "CT_SCANNER_1\nCT_SCANNER_2",
            "allowed_networks": "10.20.0.0/16, 192.0.2.7",
        },
    )
    assert response.status_code == 302
    ae = DicomAE.objects.get()
    assert ae.allowed_calling_ae_titles == ["CT_SCANNER_1", "CT_SCANNER_2"]
    assert ae.allowed_networks == ["10.20.0.0/16", "192.0.2.7/32"]

    edit = client.get(url("portal-ae-edit", org, ae.pk)).content.decode()
    assert "CT_SCANNER_2" in edit and "disabled" in edit
    client.post(
        url("portal-ae-edit", org, ae.pk),
        {
            "ae_title": "IGNORED",
            "allowed_calling_ae_titles": "",
            "allowed_networks": "",
            "allow_any_caller": "on",
        },
    )
    ae.refresh_from_db()
    assert ae.ae_title == "STMARY_CT" and ae.allowed_networks == [] and ae.allow_any_caller

    client.post(url("portal-ae-delete", org, ae.pk))
    assert not DicomAE.objects.exists()
    actions = set(
        AuditEvent.objects.filter(action__startswith="dicom_ae").values_list("action", flat=True)
    )
    assert actions == {"dicom_ae.created", "dicom_ae.updated", "dicom_ae.deleted"}


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"ae_title": "BAD\\TITLE"}, "ae_title", "no backslash"),
        ({"ae_title": "A" * 17}, "ae_title", "at most 16"),
        ({"ae_title": "OK", "allowed_networks": "10.0.0.0/33"}, "allowed_networks", "CIDR"),
        ({"ae_title": "OK", "allowed_networks": "not-a-network"}, "allowed_networks", "CIDR"),
        (
            {"ae_title": "OK", "allowed_calling_ae_titles": "FINE\nTHIS_ONE_IS_FAR_TOO_LONG"},
            "allowed_calling_ae_titles",
            "1-16",
        ),
    ],
)
def test_bad_ae_input_is_refused_with_field_errors_and_nothing_saved(
    client: Client, org: Organization, data, field, message
) -> None:
    response = client.post(url("portal-ae-create", org), data)
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not DicomAE.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="dicom_ae").exists()


def test_an_ae_title_in_use_by_another_hospital_is_refused(
    client: Client, org: Organization, other_org: Organization
) -> None:
    from archive.ae_titles import services as ae
    from tenants.context import Actor

    ae.ae_create(
        org=other_org,
        ae_title="SHARED",
        allowed_calling_ae_titles=[],
        allowed_networks=[],
        allow_any_caller=True,
        actor=Actor.system("tests"),
    )
    response = client.post(
        url("portal-ae-create", org), {"ae_title": "SHARED", "allow_any_caller": "on"}
    )
    assert response.status_code == 400
    assert "already in use" in " ".join(response.context["form"].errors["ae_title"])
    assert not DicomAE.objects.for_org(org).exists()
