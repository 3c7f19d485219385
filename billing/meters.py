"""The meter catalog: every billable thing, its base unit and how it is billed.

Base units are integers and exact. Storage is integrated from the ledger in byte-seconds (exact),
reported as byte-hours (byte-seconds / 3600) and billed in GiB-months, as S3 does:
``GiB-months = byte-hours / 2^30 / hours in the calendar month``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

GIB = 2**30

TIERS = ("hot", "warm", "cold", "archive")


@dataclass(frozen=True)
class Meter:
    key: str
    label: str
    base_unit: str
    billing_unit: str
    # How many base units make one billing unit; storage's divisor depends on the month (see above).
    divisor: int
    by_tier: bool = False
    description: str = ""
    # A plan without a price of this meter prices it as this meter (same tier, same model).
    priced_as: str = ""


STORAGE = "storage"
DERIVED_STORAGE = "storage.derived"
# The meters integrated from the storage ledger (byte-seconds per tier); the others add up
# usage events.
LEDGER_METERS = (STORAGE, DERIVED_STORAGE)

METERS: dict[str, Meter] = {
    m.key: m
    for m in [
        Meter(
            STORAGE,
            "Storage",
            "byte-second",
            "GiB-month",
            0,
            by_tier=True,
            description="Bytes stored per tier, integrated over time.",
        ),
        Meter(
            DERIVED_STORAGE,
            "Derived storage",
            "byte-second",
            "GiB-month",
            0,
            by_tier=True,
            description=(
                "Objects the archive derives from the images to serve them faster (thumbnails), "
                "per tier, integrated over time; never counted as images."
            ),
            priced_as=STORAGE,
        ),
        Meter(
            "ingest.bytes",
            "Ingest volume",
            "byte",
            "GiB",
            GIB,
            description="Bytes received and stored.",
        ),
        Meter(
            "ingest.instances",
            "Ingested instances",
            "instance",
            "1,000 instances",
            1000,
            description="DICOM instances received and stored.",
        ),
        Meter(
            "egress.bytes",
            "Egress",
            "byte",
            "GiB",
            GIB,
            description="Bytes read out (WADO-RS, downloads).",
        ),
        Meter(
            "restore.bytes",
            "Restores",
            "byte",
            "GiB",
            GIB,
            description="Bytes brought back from archive.",
        ),
        Meter(
            "tier.transitions",
            "Tier transitions",
            "object",
            "1,000 transitions",
            1000,
            by_tier=True,
            description="Objects moved between tiers (dimension: target tier).",
        ),
        Meter(
            "early_deletion",
            "Early deletion",
            "byte-day",
            "GiB-day",
            GIB,
            by_tier=True,
            description="Byte-days charged when data leaves a tier before its minimum storage duration.",
        ),
        Meter(
            "compute.seconds",
            "Compute",
            "second",
            "hour",
            3600,
            description="Worker CPU seconds spent on the organization's jobs.",
        ),
        Meter(
            "api.requests",
            "API requests",
            "request",
            "1,000 requests",
            1000,
            description="REST API and DICOMweb requests.",
        ),
    ]
}


def meter_get(key: str) -> Meter:
    try:
        return METERS[key]
    except KeyError:
        raise ValueError(f"Unknown meter {key!r}; known meters: {', '.join(METERS)}.") from None


def dimension_key(dimensions: dict[str, str] | None) -> str:
    """A stable text form of dimensions, used for grouping: ``tier=hot`` or ``""``."""
    if not dimensions:
        return ""
    return ",".join(f"{k}={dimensions[k]}" for k in sorted(dimensions))


def billing_quantity(meter: Meter, base_quantity: int, *, hours_in_month: int) -> Decimal:
    """Base units to billing units, exact (Decimal); rounding happens on the invoice line only."""
    if meter.key in LEDGER_METERS:
        # byte-seconds -> byte-hours -> GiB-months
        return Decimal(base_quantity) / Decimal(3600) / Decimal(GIB) / Decimal(hours_in_month)
    return Decimal(base_quantity) / Decimal(meter.divisor)


@dataclass(frozen=True)
class ShownQuantity:
    """A billing quantity as documents show it: ``value`` in ``unit`` (exact), shown rounded to
    ``places`` decimals; ``per`` is how the plan's unit price reads (``1,000 requests``)."""

    value: Decimal
    unit: str
    places: int
    per: str


# Decimals a quantity in each billing unit is shown with; the exact figure stays in the CSV and
# the portal's hover. 3 decimals of a GiB-month is about a MiB-month; of an hour, 3.6 seconds.
_SHOWN_PLACES = {"GiB-month": 3, "GiB": 3, "GiB-day": 3, "hour": 3}


def shown_quantity(unit: str, quantity: Decimal) -> ShownQuantity:
    """How ``quantity`` (in billing unit ``unit``) is shown: counts billed per thousand read as
    the whole count (``25 × 1,000 requests`` is ``25,000 requests``, priced per 1,000 requests),
    byte and time units to the decimals of ``_SHOWN_PLACES``, anything else to 3."""
    size, _, noun = unit.partition(" ")
    if noun and size.replace(",", "").isdigit():
        return ShownQuantity(quantity * int(size.replace(",", "")), noun, 0, unit)
    return ShownQuantity(quantity, unit, _SHOWN_PLACES.get(unit, 3), unit)
