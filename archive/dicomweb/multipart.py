"""multipart/related (RFC 2046, RFC 2387) in constant memory: a streaming reader and the writer's framing.

The reader pulls the body from a ``read(n)`` callable and hands out one part at a time; a part's
bytes come as chunks that are never longer than the read size, however large the part is. A
delimiter split across two reads is still found: the last ``len(delimiter) - 1`` bytes of the
buffer are held back until the next read shows whether they start a delimiter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from django.utils.http import parse_header_parameters

READ_SIZE = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024
# RFC 2046 5.1.1 allows boundaries of 1 to 70 characters, but real clients send longer ones (a
# widely deployed open-source archive sends 73), and a boundary is only a delimiter: up to this
# many are accepted. The reader holds back len(boundary) + 3 bytes between reads, so the limit
# also bounds that.
MAX_BOUNDARY_LENGTH = 200
# RFC 2046's characters: bcharsnospace and space, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")
_IDENTITY_ENCODINGS = {"", "binary", "8bit", "7bit"}


class MultipartError(Exception):
    """The body is not a multipart message the reader can frame (nothing of it was used)."""


class TooManyParts(MultipartError):
    """The body has more parts than the reader was allowed to hand out."""

    def __init__(self, limit: int):
        super().__init__(
            f"The body has more than {limit:,} parts, the most one request may carry; "
            "send the instances in several requests."
        )
        self.limit = limit


def boundary_problem(boundary: str) -> str | None:
    """Why ``boundary`` cannot frame a body, or None when it can."""
    if not boundary:
        return "The boundary parameter is empty."
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        return (
            f"The boundary parameter is {len(boundary):,} characters long; this server accepts "
            f"at most {MAX_BOUNDARY_LENGTH}."
        )
    if not _BOUNDARY.fullmatch(boundary):
        return (
            "The boundary parameter holds characters RFC 2046 does not allow in a boundary, or "
            "ends with a space."
        )
    return None


def valid_boundary(boundary: str) -> bool:
    return boundary_problem(boundary) is None


def header_parameters(value: str) -> tuple[str, dict[str, str]] | None:
    """``value``'s media type (lower case) and parameters (names in lower case), or None when it
    cannot be parsed. Django's parser raises ValueError, and TypeError for some RFC 2231
    continuations (``a*0=x; a*=utf-8'``): neither may become a 500."""
    try:
        media_type, params = parse_header_parameters(value)
    except (ValueError, TypeError, LookupError, UnicodeError):
        return None
    return media_type.strip().lower(), {k.lower(): v for k, v in params.items()}


class Part:
    """One body part. Read ``chunks()`` (or ``discard()``) before asking the reader for the next;
    the reader discards what is left otherwise.

    ``error`` says why the part cannot be used: its headers ask for something unsupported, or the
    body ended before the part's closing delimiter (``truncated``: the part is incomplete).
    It is final only once the chunks were read.
    """

    def __init__(self, reader: MultipartReader, index: int, headers: dict[str, str]):
        self._reader = reader
        self.index = index
        self.headers = headers
        self.size = 0
        self.error: str | None = None
        self.done = False
        # The body ended before this part's closing delimiter: nothing follows it.
        self.truncated = False
        parsed = header_parameters(headers.get("content-type", ""))
        self.media_type, self.params = parsed or ("", {})
        encoding = headers.get("content-transfer-encoding", "").strip().lower()
        if parsed is None:
            self.error = "The part's Content-Type header cannot be parsed."
        elif encoding not in _IDENTITY_ENCODINGS:
            self.error = f"Content-Transfer-Encoding {encoding[:80]!r} is not supported; send the bytes as they are (binary)."

    def chunks(self) -> Iterator[bytes]:
        """The part's bytes. Never raises for a broken body: it stops and sets ``error``."""
        if self.done:
            return
        for chunk in self._reader._body_chunks(self):
            self.size += len(chunk)
            yield chunk

    def discard(self) -> None:
        for _ in self.chunks():
            pass


class MultipartReader:
    def __init__(
        self,
        read: Callable[[int], bytes],
        boundary: str,
        *,
        read_size: int = READ_SIZE,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_parts: int | None = None,
    ):
        self._read = read
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The leading CRLF lets a body that opens with "--boundary" match like every later one.
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self._read_size = read_size
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        self.bytes_read = 0
        self.read_error: str | None = None

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            data = self._read(self._read_size)
        except (OSError, ValueError) as exc:  # the client went away, or sent broken chunking
            data = b""
            self.read_error = f"The connection broke while reading the body ({type(exc).__name__})."
        if not data:
            self._eof = True
            return False
        self.bytes_read += len(data)
        self._buf += data
        return True

    def _need(self, count: int) -> bool:
        while len(self._buf) < count:
            if not self._fill():
                return False
        return True

    def _skip_preamble(self) -> bool:
        """Discard everything up to and including the first delimiter; False if there is none."""
        keep = len(self._delimiter) - 1
        while True:
            found = self._buf.find(self._delimiter)
            if found >= 0:
                del self._buf[: found + len(self._delimiter)]
                return True
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not self._fill():
                return False

    def _after_delimiter(self) -> str:
        """Consume what follows a delimiter: ``"close"`` for ``--``, else ``"part"``.

        Raises ``MultipartError`` when the line does not end after optional white space, which is
        what a boundary that is only a prefix of the body's real one looks like.
        """
        if not self._need(2):
            raise MultipartError("The body ended right after a boundary delimiter.")
        if self._buf[:2] == b"--":
            del self._buf[:2]
            return "close"
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                break
            if len(self._buf) > 1024 or not self._fill():
                raise MultipartError("A boundary delimiter is not followed by a line break.")
        padding = bytes(self._buf[:end])
        if padding.strip(b" \t"):
            raise MultipartError(
                "The body's boundary does not match the boundary named in the Content-Type header."
            )
        del self._buf[: end + 2]
        return "part"

    def _headers(self) -> dict[str, str]:
        if not self._need(2):
            raise MultipartError("The body ended inside a part's headers.")
        if self._buf[:2] == b"\r\n":  # no headers at all
            del self._buf[:2]
            return {}
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > self._max_header_bytes:
                raise MultipartError(
                    f"A part's headers are longer than {self._max_header_bytes} bytes."
                )
            if not self._fill():
                raise MultipartError("The body ended inside a part's headers.")
        block = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        headers: dict[str, str] = {}
        name = ""
        for line in block.split("\r\n"):
            if line[:1] in (" ", "\t") and name:  # obsolete line folding
                headers[name] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep or not key.strip():
                raise MultipartError(f"A part header line is malformed: {line[:80]!r}.")
            name = key.strip().lower()
            headers[name] = value.strip()
        return headers

    def _body_chunks(self, part: Part) -> Iterator[bytes]:
        keep = len(self._delimiter) - 1
        while True:
            found = self._buf.find(self._delimiter)
            if found >= 0:
                if found:
                    yield bytes(self._buf[:found])
                del self._buf[: found + len(self._delimiter)]
                part.done = True
                return
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                yield bytes(self._buf[:cut])
                del self._buf[:cut]
            if not self._fill():
                part.done = part.truncated = True
                part.error = (
                    part.error
                    or self.read_error
                    or (
                        "The body ended inside this part, before its closing boundary: "
                        "the part is incomplete."
                    )
                )
                return

    def parts(self) -> Iterator[Part]:
        """Yield the parts in order. ``MultipartError`` before the first part means the body was
        unusable as a whole; after that, a framing problem ends the iteration with a failed part.
        ``TooManyParts`` (whenever it comes) means the body holds more than ``max_parts`` parts:
        it is raised when the next part's delimiter is found, before that part is read.
        """
        if not self._skip_preamble():
            raise MultipartError(
                "The boundary named in the Content-Type header does not occur in the body."
            )
        index = 0
        while True:
            try:
                if self._after_delimiter() == "close":
                    if index == 0:
                        raise MultipartError("The multipart body contains no parts.")
                    return
                if self._max_parts is not None and index >= self._max_parts:
                    raise TooManyParts(self._max_parts)
                headers = self._headers()
            except TooManyParts:
                raise
            except MultipartError as exc:
                if index == 0:
                    raise
                broken = Part(self, index, {})
                broken.done = broken.truncated = True
                broken.error = str(exc)
                yield broken
                return
            part = Part(self, index, headers)
            yield part
            if not part.done:
                part.discard()
            if part.truncated:
                return
            index += 1


def part_header(boundary: str, content_type: str, size: int, location: str = "") -> bytes:
    """The delimiter line and headers that open one part of a response body."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}", f"Content-Length: {size}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")
