"""The streaming multipart/related reader: framing across every chunk edge, in constant memory."""

from __future__ import annotations

import io

import pytest

from archive.dicomweb.multipart import (
    MAX_BOUNDARY_LENGTH,
    MultipartError,
    MultipartReader,
    valid_boundary,
)

BOUNDARY = "b0undary-strata"


def body(parts: list[bytes], *, leading_crlf: bool = False, close: bool = True) -> bytes:
    out = b"\r\n" if leading_crlf else b""
    for index, part in enumerate(parts):
        if index:
            out += b"\r\n"
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
    if close:
        out += f"\r\n--{BOUNDARY}--\r\n".encode()
    return out


def read_all(
    data: bytes, read_size: int, boundary: str = BOUNDARY
) -> list[tuple[bytes, str | None]]:
    reader = MultipartReader(io.BytesIO(data).read, boundary, read_size=read_size)
    out = []
    for part in reader.parts():
        content = b"".join(part.chunks())
        out.append((content, part.error))
    return out


# Contents that tempt a naive parser: CRLFs, dashes and almost-boundaries at the edges.
TRICKY = [
    b"",
    b"\r\n",
    b"--",
    b"\r\n--" + BOUNDARY[:-1].encode(),
    b"x" * 1000 + b"\r\n--" + BOUNDARY[:5].encode() + b"y" * 1000,
    bytes(range(256)) * 40,
]


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 17, 64, 1000, 1 << 20])
@pytest.mark.parametrize("leading_crlf", [False, True])
def test_parts_come_out_byte_for_byte_at_any_chunk_size(read_size, leading_crlf):
    data = body(TRICKY, leading_crlf=leading_crlf)
    assert read_all(data, read_size) == [(p, None) for p in TRICKY]


def test_preamble_epilogue_padding_and_headers_are_handled():
    data = (
        b"this is a preamble\r\n"
        + f"--{BOUNDARY}  \t\r\n".encode()
        + b"Content-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        + b"Content-Location: a\r\n\r\nPART1"
        + f"\r\n--{BOUNDARY}\r\n\r\nPART2\r\n--{BOUNDARY}--epilogue ignored".encode()
    )
    reader = MultipartReader(io.BytesIO(data).read, BOUNDARY, read_size=5)
    parts = []
    for part in reader.parts():
        parts.append((part.media_type, part.params, part.headers, b"".join(part.chunks())))
    assert parts[0][0] == "application/dicom"
    assert parts[0][1] == {"transfer-syntax": "1.2.840.10008.1.2.1"}
    assert parts[0][2]["content-location"] == "a"
    assert parts[0][3] == b"PART1"
    assert parts[1] == ("", {}, {}, b"PART2")


def test_unread_parts_are_skipped_by_the_reader():
    data = body([b"a" * 5000, b"b" * 5000, b"c"])
    reader = MultipartReader(io.BytesIO(data).read, BOUNDARY, read_size=100)
    seen = [
        (part.index, b"".join(part.chunks()) if part.index == 2 else None)
        for part in reader.parts()
    ]
    assert seen == [(0, None), (1, None), (2, b"c")]


def test_a_large_part_is_streamed_in_bounded_chunks():
    data = body([b"z" * 100_000, b"tail"])
    reader = MultipartReader(io.BytesIO(data).read, BOUNDARY, read_size=4096)
    sizes: list[int] = []
    contents = []
    for part in reader.parts():
        chunks = list(part.chunks())
        sizes.extend(len(c) for c in chunks)
        contents.append(b"".join(chunks))
    assert contents == [b"z" * 100_000, b"tail"]
    assert max(sizes) <= 4096 + len(BOUNDARY) + 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"no boundary anywhere in here", "does not occur"),
        (body([b"x"]).replace(BOUNDARY.encode(), b"another-boundary"), "does not occur"),
        (f"--{BOUNDARY}--\r\n".encode(), "no parts"),
        (
            body([b"x"]).replace(BOUNDARY.encode(), (BOUNDARY + "-longer").encode()),
            "does not match",
        ),
        (f"--{BOUNDARY}\r\nContent-Type: application/dicom".encode(), "inside a part's headers"),
        (f"--{BOUNDARY}\r\nno colon here\r\n\r\nx".encode(), "malformed"),
        (f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n", "longer than"),
    ],
    ids=[
        "no-boundary",
        "wrong-boundary",
        "no-parts",
        "boundary-prefix",
        "cut-in-headers",
        "bad-header",
        "huge-headers",
    ],
)
def test_an_unframeable_body_is_refused_before_any_part(data, message):
    reader = MultipartReader(io.BytesIO(data).read, BOUNDARY, read_size=64)
    with pytest.raises(MultipartError, match=message):
        next(reader.parts())


def test_a_body_cut_inside_a_part_marks_that_part_incomplete():
    data = body([b"complete", b"cut short" * 100], close=False)[:-50]
    parts = read_all(data, 64)
    assert parts[0] == (b"complete", None)
    assert parts[1][1] is not None and "before its closing boundary" in parts[1][1]
    assert len(parts) == 2


def test_a_broken_connection_is_reported_on_the_part():
    chunks = [body([b"first"]).split(b"\r\n--" + BOUNDARY.encode() + b"--")[0] + b"\r\n"]

    def read(_size: int) -> bytes:
        if chunks:
            return chunks.pop()
        raise ConnectionResetError("peer reset")

    reader = MultipartReader(read, BOUNDARY)
    (part,) = list(reader.parts())
    assert part.error is not None  # read after the generator ran
    assert part.truncated


def test_an_unsupported_transfer_encoding_fails_only_that_part():
    data = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD"
        f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nok\r\n--{BOUNDARY}--"
    ).encode()
    parts = read_all(data, 16)
    assert parts[0][1] is not None and "base64" in parts[0][1]
    assert parts[1] == (b"ok", None)


@pytest.mark.parametrize(
    ("boundary", "ok"),
    [
        ("abc", True),
        ("0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1", True),
        ("a" * 70, True),
        # Longer than RFC 2046's 70: real clients send them (73), accepted up to the limit.
        ("a" * 71, True),
        ("a" * 73, True),
        ("a" * MAX_BOUNDARY_LENGTH, True),
        ("a" * (MAX_BOUNDARY_LENGTH + 1), False),
        ("ends with space ", False),
        ("semi;colon", False),
        ("", False),
    ],
)
def test_boundary_syntax(boundary, ok):
    assert valid_boundary(boundary) is ok
