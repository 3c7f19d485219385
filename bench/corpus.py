"""The DICOM corpora the benchmarks send: no side effect on import (Django is not needed).

- ``ct_corpus``: CT instances as Part 10 bytes, a few per study, 512 x 512 x 16 bit (~513 KB).
- ``multipart``: a STOW-RS request body (``multipart/related; type="application/dicom"``) with
  the boundary ``BOUNDARY``.
"""

from __future__ import annotations

import io
import random

BOUNDARY = "strata-bench-boundary"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def ct_corpus(count: int, per_study: int, *, rows: int = 512, columns: int = 512) -> list[bytes]:
    """``count`` CT instances (Part 10 bytes), ``per_study`` per study; 512x512 16-bit ~ 512 KB.

    The patients, dates and descriptions are the same from run to run (a seeded generator); the
    UIDs are new each time."""
    from pydicom.uid import generate_uid

    from archive.synthetic import make_instance, study_spec, to_bytes

    rng = random.Random(11)
    files: list[bytes] = []
    while len(files) < count:
        spec = study_spec("CT", rng=rng)
        series = generate_uid()
        for n in range(min(per_study, count - len(files))):
            ds = make_instance(
                spec, series_uid=series, instance_number=n + 1, rows=rows, columns=columns
            )
            files.append(to_bytes(ds))
    return files


def multipart(parts: list[bytes]) -> bytes:
    """A STOW-RS body of ``parts`` (one Part 10 instance each), boundary ``BOUNDARY``."""
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()
