"""The tier catalog: what each tier costs to leave early and how it is read back.

The figures follow the S3 storage classes the tiers map to by default (STANDARD, STANDARD_IA,
GLACIER_IR, DEEP_ARCHIVE): a tier's minimum storage duration is charged in full when an object
leaves it sooner (metered as ``early_deletion`` byte-days), and the archive tier cannot be read
until a restore brings a readable copy back (typically 12 hours on S3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archive.models import StorageLocation

INSTANT = "instant"
RESTORE = "restore"


@dataclass(frozen=True)
class Tier:
    key: str
    label: str
    # 0 is the warmest; a policy only ever moves data to a colder tier (restores bring it back).
    order: int
    retrieval: str
    # Typical time until a restore makes the object readable; 0 for instant tiers.
    restore_hours: int
    minimum_storage_days: int
    default_storage_class: str

    @property
    def needs_restore(self) -> bool:
        return self.retrieval == RESTORE


TIER_CATALOG: dict[str, Tier] = {
    t.key: t
    for t in [
        Tier("hot", "Hot", 0, INSTANT, 0, 0, "STANDARD"),
        Tier("warm", "Warm", 1, INSTANT, 0, 30, "STANDARD_IA"),
        Tier("cold", "Cold", 2, INSTANT, 0, 90, "GLACIER_IR"),
        Tier("archive", "Archive", 3, RESTORE, 12, 180, "DEEP_ARCHIVE"),
    ]
}


def tier_get(key: str) -> Tier:
    try:
        return TIER_CATALOG[key]
    except KeyError:
        raise ValueError(f"Unknown tier {key!r}; tiers are {', '.join(TIER_CATALOG)}.") from None


def is_colder(target: str, current: str) -> bool:
    return tier_get(target).order > tier_get(current).order


def location_serves(location: StorageLocation, tier: str) -> bool:
    """Whether a location can hold objects in ``tier``.

    The filesystem serves every tier (a folder each). A bucket serves a tier unless its storage
    class for that tier was set empty (an S3-compatible store without, say, DEEP_ARCHIVE).
    """
    if location.kind == "platform":
        return True
    return bool(location.storage_class(tier))


def early_deletion_byte_days(*, size: int, tier: str, since: datetime, left_at: datetime) -> int:
    """Byte-days still owed when ``size`` bytes leave ``tier`` before its minimum duration.

    S3 charges the remainder of the minimum storage duration when an object is deleted or
    transitioned sooner; whole days, rounded up, so that a day begun is a day charged.
    """
    minimum = tier_get(tier).minimum_storage_days
    if minimum == 0 or size <= 0:
        return 0
    stayed_seconds = max((left_at - since).total_seconds(), 0)
    remaining_seconds = minimum * 86400 - stayed_seconds
    if remaining_seconds <= 0:
        return 0
    return size * math.ceil(remaining_seconds / 86400)
