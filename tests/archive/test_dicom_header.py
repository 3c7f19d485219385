"""read_header: one pass over the file, the same metadata as a full read of the header."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import generate_uid

from archive.ingest.dicom import BULK_THRESHOLD, DicomRejected, read_header
from archive.synthetic import make_instance, study_spec, write


def full_header_json(path) -> dict:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    full = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=lambda _e: ""
    )
    return {tag: v for tag, v in full.items() if "BulkDataURI" not in v}


def test_metadata_is_the_header_without_bulk_data_and_large_text_is_kept(tmp_path):
    ds = make_instance(study_spec("CT"), series_uid=generate_uid(), rows=32, columns=32)
    ds.ImageComments = "x" * 3000  # text above the bulk threshold: kept, as a full read keeps it
    ds.add_new(0x00091010, "OB", b"\x01" * 4000)  # binary above it: bulk data, left out
    path = write(ds, tmp_path / "a.dcm")
    header = read_header(path)
    assert header.metadata == full_header_json(path)
    assert header.metadata["00204000"]["Value"] == ["x" * 3000]
    assert "00091010" not in header.metadata and "7FE00010" not in header.metadata
    assert header.study_json["00100020"] == header.metadata["00100020"]
    assert header.series_json["00080060"] == {"vr": "CS", "Value": ["CT"]}


def test_a_file_cut_inside_the_pixel_data_is_refused(tmp_path):
    ds = make_instance(study_spec("CT"), series_uid=generate_uid(), rows=64, columns=64)
    path = write(ds, tmp_path / "a.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DicomRejected, match="truncated"):
        read_header(path)
