"""DICOM JSON (PS3.18 F.2) building blocks and the attribute names QIDO-RS accepts.

Attributes are addressed by keyword (``PatientID``) or by tag (``00100020``); both resolve to
the 8-digit upper-case hex tag the DICOM JSON model uses as its key.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

DicomJson = dict[str, Any]

# Tags of the attributes this package writes itself.
SPECIFIC_CHARACTER_SET = "00080005"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
INSTANCE_AVAILABILITY = "00080056"
MODALITIES_IN_STUDY = "00080061"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"
ERROR_COMMENT = "00000902"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"

_TAG = re.compile(r"[0-9A-Fa-f]{8}")


class UnknownAttribute(ValueError):
    """A name that is neither a DICOM keyword nor an 8-digit hex tag."""


def element(vr: str, *values: Any) -> dict[str, Any]:
    """One DICOM JSON attribute; without values it is present but empty (zero length)."""
    if not values:
        return {"vr": vr}
    return {"vr": vr, "Value": list(values)}


def tag_of(name: str) -> str:
    """``PatientID`` or ``00100020`` -> ``"00100020"``; raises ``UnknownAttribute``."""
    if _TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise UnknownAttribute(name)
    return f"{tag:08X}"


def keyword_of(tag: str) -> str:
    """The keyword of a tag, or the tag itself for private and unknown tags."""
    try:
        return keyword_for_tag(int(tag, 16)) or tag
    except ValueError:
        return tag
