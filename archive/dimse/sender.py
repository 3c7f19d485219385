"""Sending stored instances with C-STORE: the sub-operations of C-MOVE and C-GET.

Each instance goes through three steps, in constant memory whatever its size:

1. **Spool** (``spool_instance``): on a filesystem store the stored object is opened in place
   and read from there (nothing is copied); from S3 its bytes are streamed into a local Part 10
   file. Either way its size is checked against the index (as WADO-RS checks it). A spool
   file's File Meta Information is written from the index (only the data set crosses the
   network; File Meta never does), followed by the stored data set bytes unchanged.
   ``Prefetch`` spools the next instances in a helper thread while the current one is sent.
2. **Transfer syntax** (``Link.syntax_for``): the data set is sent as stored when the peer
   accepted the stored transfer syntax for its SOP class. Otherwise, when the peer accepted
   Explicit (or Implicit) VR Little Endian, it is decoded with pydicom and its pixel data
   handlers (pylibjpeg with libjpeg and openjpeg: JPEG, JPEG-LS, JPEG 2000; RLE natively) and
   re-encoded uncompressed (``transcode``); such a data set is held in memory, so only up to
   ``TRANSCODE_MAX_BYTES`` of decoded pixel data, at most ``TRANSCODE_SLOTS`` at a time. An
   instance that can be sent in no accepted syntax, or cannot be decoded, is refused
   (``SubOperationFailed`` with the reason) and the others go on.
3. **Send** (``Link.send``): the C-STORE request is written on the association's socket from
   the thread that runs the sub-operations, the data set read from the spool file into one
   buffer of P-DATA-TF PDUs (at most ``MAX_PDU`` each, even for a peer that announced no
   limit) written ``DIRECT_BATCH`` bytes at a time, and the response read at once
   (``_Direct``). pynetdicom's own path (a Python object, a state-machine event and an encoding
   per fragment, through a network thread that naps 1 ms when idle) caps a sender at a couple
   of hundred data sets per second and queues every fragment of a data set in memory before a
   slow peer takes it. A peer that takes or sends nothing for ``stall_seconds`` is gone.

A ``Link`` is either an association Strata opened to a C-MOVE destination
(``archive.ae_titles.services.destination_associate``: the host checked by ``tenants.netguard``
and the connection pinned to the checked address, TLS when the destination says so) or, for
C-GET, the caller's own association, on whose storage contexts Strata holds the SCU role.

Temporary files live in a folder per retrieve (``spool_folder``), removed when it ends; folders
a crashed process left behind are removed by the next retrieve after a day.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from archive.common import threads
from archive.storage import ObjectStore, StorageUnavailable

logger = logging.getLogger("archive.dimse")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Decoded pixel data one transcode may hold in memory, and transcodes running at once.
TRANSCODE_MAX_BYTES = 256 * 1024 * 1024
TRANSCODE_SLOTS = 2
_transcode_slots = threading.BoundedSemaphore(TRANSCODE_SLOTS)
# The largest PDU sent, whatever the peer announced (0 means unlimited in DICOM).
MAX_PDU = 1024 * 1024
# P-DATA-TF PDU with one PDV item (PS3.8 9.3.5, E.2): PDU type 04H, reserved, PDU length; item
# length, presentation context ID, message control header (bit 0: command, bit 1: last).
_PDU_HEADER = struct.Struct(">BBIIBB")
# Bytes of PDUs written to the socket at once on the direct path.
DIRECT_BATCH = 1024 * 1024
# Bytes of spooled instances ahead of the one being sent (at least one instance).
PREFETCH_BYTES = 64 * 1024 * 1024
PREFETCH_INSTANCES = 8
# How many File Meta bytes are read at most before the data set must have started.
META_MAX = 1024 * 1024
# A presentation context ID is odd and below 256 (PS3.8 9.3.2.2): 128 per association.
MAX_CONTEXTS = 128
SPOOL_DIRNAME = "dimse-retrieve"
STALE_SPOOL_SECONDS = 24 * 3600

# C-STORE response statuses that count as a warning sub-operation (PS3.4 B.2.3).
_WARNING_STATUSES = range(0xB000, 0xC000)


class SubOperationFailed(Exception):
    """One instance could not be sent; the reason is worded for the Error Comment and the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LinkGone(Exception):
    """The association the sub-operations go over is gone (aborted, closed, stalled)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One instance to send, as the index knows it."""

    instance_id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    store: ObjectStore
    object_key: str
    tier: str
    study_id: int
    series_id: int


@dataclass(frozen=True)
class Spooled:
    """An instance's data set in a local Part 10 file, ready to be sent from ``path``.

    ``transfer_syntax`` is the data set's ("" when the stored object did not say: it is then
    always re-encoded); ``dataset_bytes`` what crosses the network. ``in_place``: the file is
    the stored object itself (a filesystem store), opened as ``in_place`` and never removed;
    otherwise ``path`` is a temporary file of the retrieve's."""

    path: Path
    transfer_syntax: str
    dataset_bytes: int
    offset: int  # where the data set starts in the file
    in_place: BufferedReader | None = None

    @contextlib.contextmanager
    def opened(self) -> Iterator[BufferedReader]:
        """The file, open for reading (the stored object's own handle, rewound, when in
        place)."""
        if self.in_place is not None:
            self.in_place.seek(0)
            yield self.in_place
            return
        with open(self.path, "rb") as handle:
            yield handle

    def discard(self) -> None:
        """Done with it: the temporary file removed, the stored object only closed."""
        if self.in_place is not None:
            self.in_place.close()
        else:
            self.path.unlink(missing_ok=True)


# --- spooling ---------------------------------------------------------------------------------

_LONG_LENGTH_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _meta_end(head: bytes | bytearray) -> tuple[int, str] | None:
    """Where the data set starts in a Part 10 file whose first bytes are ``head``, and the
    Transfer Syntax UID of its File Meta ("" when absent); None when more bytes are needed.

    File Meta is group 0002 in explicit VR little endian after the 128-byte preamble and
    "DICM" (PS3.10 7.1); it ends at the first element of another group.
    """
    if len(head) < 132:
        return None
    if head[128:132] != b"DICM":
        raise SubOperationFailed("The stored object is not a DICOM Part 10 file.")
    pos = 132
    syntax = ""
    while True:
        if len(head) < pos + 8:
            return None
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return pos, syntax
        vr = bytes(head[pos + 4 : pos + 6])
        if vr in _LONG_LENGTH_VRS:
            if len(head) < pos + 12:
                return None
            length = struct.unpack_from("<I", head, pos + 8)[0]
            value_at = pos + 12
        else:
            length = struct.unpack_from("<H", head, pos + 6)[0]
            value_at = pos + 8
        if length == 0xFFFFFFFF:
            raise SubOperationFailed("The stored object's File Meta cannot be read.")
        if len(head) < value_at + length:
            return None
        if element == 0x0010:
            syntax = bytes(head[value_at : value_at + length]).decode("ascii", "replace")
            syntax = syntax.strip(" \0")
        pos = value_at + length


def _file_meta(item: Item, syntax: str) -> bytes:
    meta = create_file_meta(
        sop_class_uid=UID(item.sop_class_uid),
        sop_instance_uid=UID(item.sop_instance_uid),
        transfer_syntax=UID(syntax),
    )
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return bytes(out.getvalue())


def _size_differs(item: Item, size: int) -> SubOperationFailed:
    logger.error(
        "dimse: stored object %s has %d bytes, the index says %d", item.object_key, size, item.size
    )
    return SubOperationFailed("The stored object's size differs from the index.")


def _open_in_place(item: Item) -> Spooled | None:
    """The stored object itself, when the store keeps it in a local file: opened (so that a
    tier move or a deletion meanwhile cannot change what is read), its size checked against
    the index and its File Meta located; nothing is copied. None for other stores."""
    try:
        handle = item.store.open_local(key=item.object_key, tier=item.tier)
    except StorageUnavailable as exc:
        logger.warning("dimse: reading %s failed: %s", item.object_key, exc)
        raise SubOperationFailed("The object store cannot be read right now.") from None
    if handle is None:
        return None
    try:
        size = os.fstat(handle.fileno()).st_size
        if size != item.size:
            raise _size_differs(item, size)
        head = b""
        start: tuple[int, str] | None = None
        while start is None:
            chunk = handle.read(64 * 1024)
            if not chunk:
                raise SubOperationFailed("The stored object is truncated.")
            head += chunk
            start = _meta_end(head)
            if start is None and len(head) > META_MAX:
                raise SubOperationFailed("The stored object's File Meta is too long.")
    except BaseException:
        handle.close()
        raise
    return Spooled(
        path=Path(getattr(handle, "name", "")),
        transfer_syntax=start[1],
        dataset_bytes=size - start[0],
        offset=start[0],
        in_place=handle,
    )


def spool_instance(item: Item, folder: Path) -> Spooled:
    """The instance ready to send: read in place from a filesystem store, otherwise streamed
    from the object store into a new Part 10 file in ``folder`` (the data set bytes are the
    stored ones, the File Meta is written from the index). Raises SubOperationFailed (the
    store cannot be read now, or the object is not what the index says: its size is checked,
    as WADO-RS checks it; the SHA-256 was checked when it was stored)."""
    in_place = _open_in_place(item)
    if in_place is not None:
        return in_place
    path = folder / f"{uuid.uuid4().hex}.dcm"
    size = 0
    head = b""
    start: tuple[int, str] | None = None
    written = 0
    chunks = item.store.iter_bytes(key=item.object_key, tier=item.tier)
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if start is not None:
                    out.write(chunk)
                    written += len(chunk)
                    continue
                head = head + chunk if head else chunk  # usually the whole object at once
                start = _meta_end(head)
                if start is None:
                    if len(head) > META_MAX:
                        raise SubOperationFailed("The stored object's File Meta is too long.")
                    continue
                out.write(_file_meta(item, start[1]) if start[1] else head[: start[0]])
                out.write(memoryview(head)[start[0] :])
                written += len(head) - start[0]
                head = b""
            if start is None:
                raise SubOperationFailed("The stored object is truncated.")
    except StorageUnavailable as exc:
        path.unlink(missing_ok=True)
        logger.warning("dimse: reading %s failed: %s", item.object_key, exc)
        raise SubOperationFailed("The object store cannot be read right now.") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the S3 body of an object read only in part
    if size != item.size:
        path.unlink(missing_ok=True)
        raise _size_differs(item, size)
    return Spooled(
        path=path,
        transfer_syntax=start[1],
        dataset_bytes=written,
        offset=path.stat().st_size - written,
    )


# --- transcoding --------------------------------------------------------------------------------


def _decoded_bytes(ds: pydicom.Dataset) -> int:
    """Bytes of the decoded pixel data, from the image attributes (0 without any)."""
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 8)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 0
    return rows * columns * samples * max(bits, 8) // 8 * max(frames, 1)


def transcode(spooled: Spooled, target: str, folder: Path) -> Spooled:
    """The data set re-encoded in ``target`` (Explicit or Implicit VR Little Endian), decoding
    compressed pixel data; a new file in ``folder``. Raises SubOperationFailed with the reason
    when it cannot be decoded or is too large to decode in memory."""
    if target not in UNCOMPRESSED:
        raise SubOperationFailed(f"Cannot encode in {UID(target).name}; only decompress.")
    source = spooled.transfer_syntax
    try:
        with spooled.opened() as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True)
    except Exception as exc:
        raise SubOperationFailed(f"The stored data set cannot be parsed ({exc}).") from None
    needed = max(_decoded_bytes(header), spooled.dataset_bytes)
    if needed > TRANSCODE_MAX_BYTES:
        raise SubOperationFailed(
            f"Too large to decompress ({needed // (1024 * 1024)} MiB); the destination must "
            f"accept {UID(source).name if source else 'the stored transfer syntax'}."
        )
    out = folder / f"{uuid.uuid4().hex}.dcm"
    with _transcode_slots:
        try:
            with spooled.opened() as handle:
                ds = pydicom.dcmread(handle)
            stored = ds.file_meta.get("TransferSyntaxUID")
            if stored is not None and UID(stored).is_compressed:
                # The same instance, decoded: its UID stays (a lossy source keeps its
                # LossyImageCompression attributes).
                ds.decompress(generate_instance_uid=False)
            ds.file_meta = create_file_meta(
                sop_class_uid=UID(ds.SOPClassUID),
                sop_instance_uid=UID(ds.SOPInstanceUID),
                transfer_syntax=UID(target),
            )
            ds.save_as(
                out,
                implicit_vr=target == ImplicitVRLittleEndian,
                little_endian=True,
                enforce_file_format=True,
            )
        except Exception as exc:
            out.unlink(missing_ok=True)
            name = UID(source).name if source else "its stored transfer syntax"
            logger.info("dimse: cannot decode %s: %s", spooled.path.name or "an object", exc)
            raise SubOperationFailed(f"Cannot be decoded from {name}.") from None
    with open(out, "rb") as handle:
        start = _meta_end(handle.read(META_MAX))
    assert start is not None
    size = out.stat().st_size
    return Spooled(path=out, transfer_syntax=target, dataset_bytes=size - start[0], offset=start[0])


# --- prefetching ----------------------------------------------------------------------------------


class Prefetch:
    """Spools instances in order in a helper thread, a few ahead of the one being sent.

    Iterating yields ``(item, spool)`` where ``spool()`` returns the Spooled file or raises
    SubOperationFailed. ``close()`` stops it; files not handed out are removed with the folder.
    """

    def __init__(self, items: Iterable[Item], folder: Path):
        self._items = iter(items)
        self._folder = folder
        self._pool = threads.Pool(max_workers=1, thread_name_prefix="strata-retrieve-spool")
        self._ahead: deque[tuple[Item, Future[Spooled]]] = deque()
        self._ahead_bytes = 0
        self._exhausted = False

    def _fill(self) -> None:
        while not self._exhausted and len(self._ahead) < PREFETCH_INSTANCES:
            if self._ahead and self._ahead_bytes >= PREFETCH_BYTES:
                return
            item = next(self._items, None)
            if item is None:
                self._exhausted = True
                return
            self._ahead.append((item, self._pool.submit(spool_instance, item, self._folder)))
            self._ahead_bytes += item.size

    def __iter__(self) -> Iterator[tuple[Item, Callable[[], Spooled]]]:
        while True:
            self._fill()
            if not self._ahead:
                return
            item, future = self._ahead.popleft()
            self._ahead_bytes -= item.size
            self._fill()
            yield item, future.result

    def close(self) -> None:
        for _, future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for _, future in self._ahead:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().discard()  # an open stored object is closed, a spool removed
        self._ahead.clear()


def spool_folder(store: ObjectStore) -> Path:
    """A new folder for one retrieve's temporary files, next to the store's own spool; folders
    older than a day (left by a process that died) are removed on the way."""
    root = store.spool_dir() / SPOOL_DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with contextlib.suppress(OSError):
        for stale in root.iterdir():
            with contextlib.suppress(OSError):
                if now - stale.stat().st_mtime > STALE_SPOOL_SECONDS:
                    shutil.rmtree(stale, ignore_errors=True)
    folder = root / uuid.uuid4().hex
    folder.mkdir()
    return folder


# --- presentation contexts ---------------------------------------------------------------------


def requested_contexts(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """The contexts to propose to a destination for instances of these (SOP class, stored
    transfer syntax) pairs: per SOP class one context per stored syntax (each offered alone, so
    that the destination accepts or refuses exactly that one) and one with Explicit and Implicit
    VR Little Endian, which anything can be decoded to. Beyond 128 contexts, the uncompressed
    ones of every SOP class come first."""
    syntaxes: dict[str, list[str]] = {}
    for sop_class, syntax in pairs:
        known = syntaxes.setdefault(sop_class, [])
        if syntax and syntax not in known:
            known.append(syntax)
    fallback: list[PresentationContext] = []
    as_stored: list[PresentationContext] = []
    for sop_class, stored in syntaxes.items():
        if not set(UNCOMPRESSED) <= set(stored):
            fallback.append(build_context(sop_class, list(UNCOMPRESSED)))
        as_stored.extend(build_context(sop_class, syntax) for syntax in stored)
    return (fallback + as_stored)[:MAX_CONTEXTS]


# --- the association the C-STOREs go over ---------------------------------------------------------


def _element(group_element: int, value: bytes) -> bytes:
    """One element of a command set (Implicit VR Little Endian, PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, group_element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_command(
    *,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    originator_aet: str | None,
    originator_id: int | None,
) -> bytes:
    """The encoded command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1), as pynetdicom
    encodes it, without building and encoding a pydicom data set per instance."""
    body = [
        _element(0x0002, _uid(sop_class_uid)),  # Affected SOP Class UID
        _element(0x0100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
        _element(0x0110, struct.pack("<H", message_id)),  # Message ID
        _element(0x0700, struct.pack("<H", 2)),  # Priority: low, as pynetdicom
        _element(0x0800, struct.pack("<H", 0x0001)),  # Command Data Set Type: present
        _element(0x1000, _uid(sop_instance_uid)),  # Affected SOP Instance UID
    ]
    if originator_aet:
        title = originator_aet.encode("ascii")
        body.append(_element(0x1030, title + b" " if len(title) % 2 else title))
    if originator_id is not None:
        body.append(_element(0x1031, struct.pack("<H", originator_id)))
    joined = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(joined))) + joined


_held_classes: dict[type, type] = {}


def held(wrapper: Any) -> bool:
    """Whether the sub-operations of a C-GET hold this association socket (``_Direct``): the
    network thread must then neither read it nor wait for it to be readable."""
    return bool(getattr(wrapper, "strata_held", False))


def _held_class(base: type[AssociationSocket]) -> type[AssociationSocket]:
    """``base`` (pynetdicom's association socket, or a subclass) whose network thread stops
    reading while ``strata_held`` is set, and whose writes take ``strata_lock``."""
    held = _held_classes.get(base)
    if held is None:

        class Held(base):  # type: ignore[valid-type,misc]
            strata_held = False
            strata_lock: threading.Lock

            @property
            def ready(self) -> bool:
                return False if self.strata_held else bool(base.ready.fget(self))  # type: ignore[attr-defined]

            def send(self, bytestream: bytes) -> None:
                with self.strata_lock:
                    base.send(self, bytestream)

        held = _held_classes[base] = Held
    return held


def _command_values(command: bytes) -> dict[int, bytes]:
    """A command set's values by element number (group 0000, Implicit VR Little Endian)."""
    values: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(command):
        _, element, length = struct.unpack_from("<HHI", command, pos)
        values[element] = command[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return values


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value[:2])[0] if value is not None and len(value) >= 2 else None


class _Direct:
    """C-STORE requests and their responses exchanged on an association's socket by the thread
    that sends the sub-operations, instead of through pynetdicom's network thread.

    pynetdicom sends every fragment as a Python object, a state-machine event and an encoding
    (often 16 KB each), and reads each response in its network thread, which naps 1 ms when
    idle: a few hundred data sets per second at most. Here the fragments are read from the spool
    file into one buffer, PDU headers in place, and written with one ``sendall`` per
    ``DIRECT_BATCH`` bytes; the response is read at once with a blocking read.

    While the Link holds the socket, pynetdicom's network thread does not read it (its socket's
    ``ready`` says nothing is there) and its own writes (a pending response of a C-GET) take the
    same lock as ours, so messages never interleave. What arrives meanwhile is read here: the
    C-STORE responses, a C-CANCEL of the C-GET (remembered for the caller), an A-ABORT or an
    A-RELEASE request (the link is gone).
    """

    wrapper: Any  # pynetdicom's AssociationSocket, its class swapped while held

    def __init__(self, assoc: Association, fragment: int, stall_seconds: float, settle: float):
        wrapper: Any = assoc.dul.socket
        self.wrapper = wrapper
        self._wake: Callable[[], None] | None = getattr(assoc.dul, "wake", None)
        self.sock: socket.socket = wrapper.socket
        self.fragment = fragment
        self.buffer = bytearray(DIRECT_BATCH + _PDU_HEADER.size + fragment)
        self.cancelled: set[int] = set()
        self._pdvs: deque[tuple[int, bytes]] = deque()
        self._base: type[AssociationSocket] = type(wrapper)
        self._timeout = self.sock.gettimeout()
        self.wrapper.strata_lock = threading.Lock()
        self.wrapper.__class__ = _held_class(self._base)
        self.wrapper.strata_held = True
        if settle:
            time.sleep(settle)  # a read the network thread had started finishes first
        self.sock.settimeout(stall_seconds)  # a peer that sends or takes nothing is gone

    def release(self) -> None:
        """Hand the socket back to pynetdicom's network thread."""
        self.wrapper.strata_held = False
        self.wrapper.__class__ = self._base
        with contextlib.suppress(OSError):
            self.sock.settimeout(self._timeout)
        if self._wake is not None:
            self._wake()  # the listener's network thread watches the connection again

    def _flush(self, used: int) -> int:
        if used:
            self.sock.sendall(memoryview(self.buffer)[:used])
        return 0

    def _put(self, used: int, context_id: int, control: int, size: int) -> int:
        _PDU_HEADER.pack_into(self.buffer, used, 0x04, 0, size + 6, size + 2, context_id, control)
        return used + _PDU_HEADER.size

    def write(self, context_id: int, command: bytes, spooled: Spooled) -> None:
        """The command set, then the data set bytes of ``spooled``, as P-DATA-TF PDUs of one
        PDV each. Raises OSError when the connection fails."""
        view = memoryview(self.buffer)
        with self.wrapper.strata_lock:
            used = 0
            for start in range(0, len(command), self.fragment):
                piece = command[start : start + self.fragment]
                last = start + self.fragment >= len(command)
                used = self._put(used, context_id, 0x03 if last else 0x01, len(piece))
                view[used : used + len(piece)] = piece
                used += len(piece)
            with spooled.opened() as handle:
                handle.seek(spooled.offset)
                left = spooled.dataset_bytes
                while left > 0:
                    if used + _PDU_HEADER.size + self.fragment > len(self.buffer):
                        used = self._flush(used)
                    size = min(self.fragment, left)
                    left -= size
                    at = self._put(used, context_id, 0x02 if left == 0 else 0x00, size)
                    if handle.readinto(view[at : at + size]) != size:
                        raise OSError("The spool file is shorter than its data set.")
                    used = at + size
            self._flush(used)

    def _exact(self, size: int) -> bytes:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            count = self.sock.recv_into(view[got:], size - got)
            if not count:
                raise LinkGone("The peer closed the connection.")
            got += count
        return bytes(data)

    def _read_pdvs(self) -> None:
        pdu_type, _, length = struct.unpack(">BBI", self._exact(6))
        if length > 64 * 1024 * 1024:
            raise LinkGone("The peer sent a PDU longer than 64 MiB.")
        body = self._exact(length)
        if pdu_type == 0x07:
            raise LinkGone("The peer aborted the association.")
        if pdu_type == 0x05:
            raise LinkGone("The peer asked to release the association during the transfer.")
        if pdu_type != 0x04:
            raise LinkGone(f"The peer sent an unexpected PDU (type {pdu_type:02X}H).")
        pos = 0
        while pos + 6 <= len(body):
            item_length = struct.unpack_from(">I", body, pos)[0]
            self._pdvs.append((body[pos + 5], body[pos + 6 : pos + 4 + item_length]))
            pos += 4 + item_length

    def read_command(self) -> dict[int, bytes]:
        """The next message the peer sends, which must be a command without a data set."""
        fragments: list[bytes] = []
        while True:
            while not self._pdvs:
                self._read_pdvs()
            control, data = self._pdvs.popleft()
            if not control & 0x01:
                raise LinkGone("The peer sent a data set where a response was expected.")
            fragments.append(data)
            if control & 0x02:
                return _command_values(b"".join(fragments))

    def exchange(self, context_id: int, message_id: int, command: bytes, spooled: Spooled) -> int:
        """Send one C-STORE request; the status of its response."""
        self.write(context_id, command, spooled)
        while True:
            values = self.read_command()
            field = _us(values.get(0x0100))
            if field == 0x0FFF:  # C-CANCEL-RQ of the caller's C-GET
                being = _us(values.get(0x0120))
                if being is not None:
                    self.cancelled.add(being)
                continue
            status = _us(values.get(0x0900))
            if field != 0x8001 or _us(values.get(0x0120)) != message_id or status is None:
                raise LinkGone("The peer answered a C-STORE with something else.")
            return status


def _classify(status: int) -> str:
    if status == 0x0000:
        return "completed"
    if status in _WARNING_STATUSES:
        return "warning"
    return "failed"


class Link:
    """An established association that C-STOREs are sent over (see the module docstring).

    ``owned``: Strata opened it (a C-MOVE destination) and releases it in ``close``; otherwise
    it is the caller's (C-GET) and ``close`` hands it back to pynetdicom as it was.
    """

    def __init__(
        self,
        assoc: Association,
        *,
        owned: bool,
        stall_seconds: float,
        first_message_id: int = 1,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ):
        self.assoc = assoc
        self.owned = owned
        self.stall_seconds = stall_seconds
        self.originator_aet = originator_aet
        self.originator_id = originator_id
        self.gone_reason = ""
        if not isinstance(getattr(assoc.dul.socket, "socket", None), socket.socket):
            raise LinkGone("The association has no connection to send on.")
        self._message_id = first_message_id
        self._accepted: dict[str, list[str]] = {}
        self._context_ids: dict[tuple[str, str], int] = {}
        for cx in assoc.accepted_contexts:
            if cx.as_scu and cx.transfer_syntax and cx.context_id is not None:
                sop_class, syntax = str(cx.abstract_syntax), str(cx.transfer_syntax[0])
                self._accepted.setdefault(sop_class, []).append(syntax)
                self._context_ids.setdefault((sop_class, syntax), int(cx.context_id))
        if owned:
            # Its association thread would only watch for requests from the destination (none
            # come): paused while the sub-operations run, as pynetdicom's send_c_store pauses it
            # for each (which costs up to a millisecond per instance to wait for).
            assoc._reactor_checkpoint.clear()
            deadline = time.monotonic() + 5
            while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.0001)
            # C-STORE is request/response: Nagle would hold back a data set's last fragment.
            sock = getattr(assoc.dul.socket, "socket", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The largest PDU the peer takes (0: no limit, then ours).
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        largest = int(peer.maximum_length or 0)
        largest = MAX_PDU if not largest or largest > MAX_PDU else largest
        # The caller's association may be reading a C-CANCEL just now: let it finish.
        settle = 0.0 if owned else 0.005
        self._direct = _Direct(assoc, largest - 6, stall_seconds, settle)

    def cancelled(self, message_id: int) -> bool:
        """Whether a C-CANCEL for ``message_id`` arrived while the link held the socket."""
        return message_id in self._direct.cancelled

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established) and not self.gone_reason

    def syntaxes(self, sop_class: str) -> list[str]:
        """The transfer syntaxes the peer accepted for ``sop_class`` with Strata sending."""
        return self._accepted.get(sop_class, [])

    def syntax_for(self, sop_class: str, stored: str) -> str:
        """The transfer syntax to send a ``stored`` data set of ``sop_class`` in: as stored when
        accepted, else an accepted uncompressed one (decoded); SubOperationFailed otherwise."""
        accepted = self.syntaxes(sop_class)
        if not accepted:
            raise SubOperationFailed(f"The peer accepted no context for {UID(sop_class).name}.")
        if stored and stored in accepted:
            return stored
        for syntax in UNCOMPRESSED:
            if syntax in accepted:
                return syntax
        names = ", ".join(UID(s).name for s in accepted)
        raise SubOperationFailed(
            f"Stored as {UID(stored).name if stored else 'unknown'}; the peer accepts only "
            f"{names} for {UID(sop_class).name}."
        )

    def send(self, spooled: Spooled, *, sop_class_uid: str, sop_instance_uid: str) -> str:
        """C-STORE the data set of ``spooled`` (its file, read fragment by fragment):
        "completed", "warning" or "failed" (the peer's answer). Raises LinkGone when the
        association ends meanwhile."""
        if not self.alive:
            raise LinkGone(self.gone_reason or "The association is no longer established.")
        context_id = self._context_ids.get((sop_class_uid, spooled.transfer_syntax))
        if context_id is None:
            raise SubOperationFailed(f"No context for {UID(spooled.transfer_syntax).name}.")
        message_id = self._message_id
        self._message_id = message_id % 65535 + 1
        command = c_store_command(
            message_id=message_id,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            originator_aet=self.originator_aet,
            originator_id=self.originator_id,
        )
        try:
            return _classify(self._direct.exchange(context_id, message_id, command, spooled))
        except LinkGone as exc:
            self.break_off(exc.reason)
            raise
        except TimeoutError:
            self.break_off(f"The peer took or sent nothing for {self.stall_seconds:g} s.")
            raise LinkGone(self.gone_reason) from None
        except OSError as exc:
            self.break_off(f"The association ended: {exc}")
            raise LinkGone(self.gone_reason) from None

    def break_off(self, reason: str) -> None:
        """End a link that cannot go on: a half-sent data set cannot be taken back, so the
        association is aborted (the socket shut first: pynetdicom's network thread may be
        blocked writing to a peer that reads nothing)."""
        self.gone_reason = self.gone_reason or reason
        self._direct.release()
        sock = getattr(getattr(self.assoc.dul, "socket", None), "socket", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.assoc.abort()

    def close(self) -> None:
        """Release Strata's own association; for the caller's, hand it back as it was."""
        self._direct.release()
        if self.owned:
            self.assoc._reactor_checkpoint.set()
        if self.owned and self.assoc.is_established:
            try:
                self.assoc.release()
            except Exception:
                logger.warning("dimse: releasing the destination's association failed")
                with contextlib.suppress(Exception):
                    self.assoc.abort()
