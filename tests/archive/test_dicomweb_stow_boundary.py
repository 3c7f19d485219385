"""STOW-RS multipart boundaries longer than RFC 2046's 70 characters: accepted up to
MAX_BOUNDARY_LENGTH (real clients send 73), refused beyond it with the reason, and framed by the
streaming reader in bounded memory whatever the read size."""

from __future__ import annotations

import io

import pytest

from archive.dicomweb.multipart import MAX_BOUNDARY_LENGTH, MultipartReader
from archive.models import Instance
from tests.archive.test_dicomweb_support import stored_bytes

pytestmark = pytest.mark.django_db

# 73 characters, as sent by a widely deployed open-source archive's STOW-RS client.
LONG_BOUNDARY = "----=_Part_0_1458275417.1712345678901-" + "0123456789abcdef0123456789abcdef123"


def _body(parts: list[bytes], boundary: str) -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _content_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary="{boundary}"'


def test_the_long_boundary_is_73_characters() -> None:
    assert len(LONG_BOUNDARY) == 73


@pytest.mark.parametrize("length", [73, MAX_BOUNDARY_LENGTH])
def test_stow_accepts_a_boundary_longer_than_70(org, token_client, ct_study, length) -> None:
    boundary = (LONG_BOUNDARY * 3)[:length]
    response = token_client(org, ["dicom:write"]).post(
        "/dicomweb/studies", data=_body(ct_study, boundary), content_type=_content_type(boundary)
    )

    assert response.status_code == 200, response.content
    stored = sorted(stored_bytes(i) for i in Instance.objects.for_org(org))
    assert stored == sorted(ct_study)


def test_stow_refuses_a_boundary_beyond_the_limit_with_the_reason(
    org, token_client, ct_study
) -> None:
    boundary = "b" * (MAX_BOUNDARY_LENGTH + 1)
    response = token_client(org, ["dicom:write"]).post(
        "/dicomweb/studies", data=_body(ct_study, boundary), content_type=_content_type(boundary)
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_multipart"
    assert f"at most {MAX_BOUNDARY_LENGTH}" in error["message"]
    assert str(MAX_BOUNDARY_LENGTH + 1) in error["message"]
    assert not Instance.objects.exists()


@pytest.mark.parametrize("read_size", [1, 7, 74, 75, 76, 4096])
def test_reader_frames_a_73_character_boundary_split_across_reads(read_size: int) -> None:
    payloads = [b"A" * 1000, b"--" + LONG_BOUNDARY[:-1].encode() + b" not a delimiter", b"x"]
    data = _body(payloads, LONG_BOUNDARY)
    stream = io.BytesIO(data)
    reader = MultipartReader(stream.read, LONG_BOUNDARY, read_size=read_size)

    got = []
    for part in reader.parts():
        chunks = list(part.chunks())
        assert part.error is None
        # A chunk is never longer than one read: memory stays bounded whatever the part's size.
        assert all(len(chunk) <= max(read_size, len(LONG_BOUNDARY) + 4) for chunk in chunks)
        got.append(b"".join(chunks))

    assert got == payloads
