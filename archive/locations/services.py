"""Storage location writes: a hospital's own S3 bucket next to the platform default, the
connection test, and the organization's storage quota.

Rules that must stay true:

- One primary location per organization (a database constraint backs this). Ingest writes to the
  primary; a replica is a disaster-recovery copy.
- The primary can only change while the organization has no instances: switching it later would
  need every stored object moved first (a migration, not a setting). The platform default is
  removed when a bucket replaces it, and comes back (``ingest.location_primary``) when that bucket
  is deleted again.
- A location that instances point at is never deleted.
- The secret key is stored encrypted (``archive.storage.credentials``) and never shown again.
- A bucket must come with its own credentials: without them boto3 would fall back to the
  platform's own credentials and a tenant could read any bucket the platform can.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from archive.models import (
    DEFAULT_STORAGE_CLASSES,
    TIERS,
    ArchiveSettings,
    Instance,
    PendingObject,
    StorageLocation,
)
from archive.replicas.selectors import replica_rows_exist
from archive.replicas.services import (
    replica_location_check_locked,
    replica_location_release_locked,
)
from archive.storage import StorageUnavailable, store_for
from archive.storage.credentials import encrypt
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization
from tenants.netguard import AddressRefused, url_check
from tenants.services import audit_record

logger = logging.getLogger(__name__)

# Storage classes S3 accepts on upload (GLACIER and DEEP_ARCHIVE objects need a restore to read).
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
)
# The tiers a read must not wait for: their storage classes must be instantly readable.
INSTANT_TIERS = ("hot", "warm", "cold")
NEEDS_RESTORE = ("GLACIER", "DEEP_ARCHIVE")
# In place of a storage class: the store has no class for this tier (an S3-compatible store
# without, say, Deep Archive). Stored as "" (see archive.storage.tiers.location_serves); never for hot.
NOT_AVAILABLE = "NONE"

# API and form names of the encryption modes -> the value stored (and sent as ServerSideEncryption).
ENCRYPTION_MODES: dict[str, str] = {
    "none": StorageLocation.Encryption.NONE,
    "sse-s3": StorageLocation.Encryption.SSE_S3,
    "sse-kms": StorageLocation.Encryption.SSE_KMS,
}
ENCRYPTION_LABELS: dict[str, str] = {
    "none": "None (bucket default)",
    "sse-s3": "SSE-S3 (AES-256)",
    "sse-kms": "SSE-KMS (your KMS key)",
}

# AWS bucket naming rules (the strictest common subset of S3, MinIO and Ceph).
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
REGION_PATTERN = re.compile(r"^[a-z0-9-]{0,64}$")
KMS_PATTERN = re.compile(r"^[A-Za-z0-9:/_+=,.@-]{1,2048}$")


def encryption_mode(value: str) -> str:
    """The stored encryption value -> its API/form name."""
    for mode, stored in ENCRYPTION_MODES.items():
        if stored == value:
            return mode
    return "none"


# --- validation shared with bucket import jobs -------------------------------------------------


def _allow_private_endpoints() -> bool:
    return bool(getattr(settings, "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS", False))


def endpoint_check(endpoint_url: str) -> str | None:
    """Why ``endpoint_url`` may not be used, or None. Empty means AWS's own endpoint.

    A tenant-chosen endpoint makes the platform send requests there; a private, loopback or
    link-local address would reach into the platform's own network (SSRF). Checked when saved and
    before each use for a clear answer; every connection of the S3 client is checked again and
    pinned to the checked address (``archive.storage.s3.guard_client``), because DNS can change.
    """
    if not endpoint_url:
        return None
    try:
        parts = urlsplit(endpoint_url)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Enter an http:// or https:// URL with a host name, e.g. https://s3.eu-central-1.amazonaws.com."
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return "Enter the endpoint only (scheme, host and port); the bucket goes in its own field."
    try:
        url_check(endpoint_url, allow_private=_allow_private_endpoints())
    except AddressRefused as exc:
        if exc.address:
            return (
                f"The host {exc.host} resolves to {exc.address} ({exc.kind}), a private or "
                "internal address; the endpoint must be reachable on a public address."
            )
        return str(exc)
    return None


def bucket_errors(
    *,
    bucket: str,
    prefix: str,
    endpoint_url: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    secret_required: bool = True,
) -> dict[str, list[str]]:
    """Field errors of a bucket's connection settings (shape only; nothing is contacted)."""
    errors: dict[str, list[str]] = {}
    if not BUCKET_PATTERN.match(bucket or "") or ".." in bucket or _is_ip(bucket):
        errors["bucket"] = [
            "Enter a bucket name of 3-63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit."
        ]
    if prefix.startswith("/") or ".." in prefix.split("/") or len(prefix) > 255:
        errors["prefix"] = [
            "Enter a key prefix like 'strata/' (no leading slash, no '..', at most 255 characters)."
        ]
    problem = endpoint_check(endpoint_url)
    if problem:
        errors["endpoint_url"] = [problem]
    if not REGION_PATTERN.match(region or ""):
        errors["region"] = [
            "Enter a region like eu-central-1 (lowercase letters, digits, hyphens)."
        ]
    if not (access_key_id or "").strip():
        errors["access_key_id"] = ["Enter the access key id of a key that may use this bucket."]
    elif len(access_key_id) > 255 or any(c.isspace() for c in access_key_id):
        errors["access_key_id"] = ["The access key id must not contain spaces."]
    if secret_required and not secret_access_key:
        errors["secret_access_key"] = ["Enter the secret access key."]
    return errors


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _clean_storage_classes(
    raw: dict[str, Any] | None, errors: dict[str, list[str]]
) -> dict[str, str]:
    chosen = {**DEFAULT_STORAGE_CLASSES, **{k: v for k, v in (raw or {}).items() if v}}
    unknown_tiers = sorted(set(chosen) - set(TIERS))
    if unknown_tiers:
        errors.setdefault("storage_classes", []).append(
            f"Unknown tier(s): {', '.join(unknown_tiers)}; use hot, warm, cold and archive."
        )
        return {}
    for tier in TIERS:
        value = str(chosen[tier]).upper()
        if value == NOT_AVAILABLE:
            if tier == "hot":
                errors.setdefault("storage_classes", []).append(
                    "hot: new images land in the hot tier; it needs a storage class."
                )
            chosen[tier] = ""
            continue
        if value not in STORAGE_CLASSES:
            errors.setdefault("storage_classes", []).append(
                f"{tier}: {chosen[tier]!r} is not an S3 storage class ({', '.join(STORAGE_CLASSES)})."
            )
        elif tier in INSTANT_TIERS and value in NEEDS_RESTORE:
            errors.setdefault("storage_classes", []).append(
                f"{tier}: {value} objects must be restored before they can be read; "
                "use it for the archive tier only."
            )
        chosen[tier] = value
    return {tier: chosen[tier] for tier in TIERS}


@dataclass(frozen=True)
class LocationInput:
    """The settings of a hospital bucket. ``secret_access_key`` empty on update: keep the old one."""

    name: str
    bucket: str
    access_key_id: str
    secret_access_key: str = ""
    endpoint_url: str = ""
    region: str = ""
    prefix: str = ""
    encryption: str = "sse-s3"
    kms_key_id: str = ""
    storage_classes: dict[str, str] | None = None
    role: str = StorageLocation.Role.REPLICA
    # The tier a disaster-recovery replica keeps its copies in (ignored for a primary).
    replica_tier: str = "cold"


def location_validate(data: LocationInput, *, creating: bool) -> dict[str, Any]:
    """Clean ``data`` into model field values, or raise ``ValidationFailed`` with field errors."""
    name = (data.name or "").strip()
    errors: dict[str, list[str]] = {}
    if not name or len(name) > 100:
        errors["name"] = ["Enter a name of at most 100 characters, e.g. 'Radiology bucket'."]
    prefix = (data.prefix or "").strip()
    endpoint_url = (data.endpoint_url or "").strip().rstrip("/")
    errors.update(
        bucket_errors(
            bucket=(data.bucket or "").strip(),
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=(data.region or "").strip(),
            access_key_id=(data.access_key_id or "").strip(),
            secret_access_key=data.secret_access_key or "",
            secret_required=creating,
        )
    )
    if data.encryption not in ENCRYPTION_MODES:
        errors["encryption"] = [f"Choose one of: {', '.join(ENCRYPTION_MODES)}."]
    kms_key_id = (data.kms_key_id or "").strip()
    if data.encryption == "sse-kms" and not KMS_PATTERN.match(kms_key_id):
        errors["kms_key_id"] = ["SSE-KMS needs the KMS key id or ARN."]
    if data.encryption != "sse-kms" and kms_key_id:
        errors["kms_key_id"] = ["A KMS key is used only with SSE-KMS; leave it empty."]
    if data.role not in StorageLocation.Role.values:
        errors["role"] = ["Choose primary or replica."]
    if data.replica_tier not in TIERS:
        errors["replica_tier"] = [f"Choose one of: {', '.join(TIERS)}."]
    classes = _clean_storage_classes(data.storage_classes, errors)
    if errors:
        raise ValidationFailed("The storage location settings are not valid.", fields=errors)
    return {
        "name": name,
        "bucket": data.bucket.strip(),
        "prefix": prefix,
        "endpoint_url": endpoint_url,
        "region": (data.region or "").strip(),
        "access_key_id": data.access_key_id.strip(),
        "encryption": ENCRYPTION_MODES[data.encryption],
        "kms_key_id": kms_key_id,
        "storage_classes": classes,
        "replica_tier": data.replica_tier,
    }


# --- primary switching -------------------------------------------------------------------------


def _primary_switch_locked(
    *, org: Organization, new_primary: StorageLocation | None, actor: Actor
) -> None:
    """Make room for a new primary: the platform default goes, a bucket primary becomes a replica.

    Precondition: inside a transaction holding the organization's location rows locked.
    Refused while the organization has instances or an ingest is storing one right now (its
    pending row would point at the location being replaced).
    """
    if Instance.objects.for_org(org).exists():
        raise Conflict(
            "The primary location cannot change once images are stored: every object would "
            "have to move. Add this bucket as a replica instead.",
            fields={
                "role": [
                    "The organization already has images in its primary location; "
                    "the primary can only be chosen before the first image arrives."
                ]
            },
        )
    if PendingObject.objects.for_org(org).exists():
        raise Conflict(
            "Images are being stored right now; try again in a minute.",
            fields={"role": ["An ingest is in progress; try again in a minute."]},
        )
    current = (
        StorageLocation.objects.for_org(org)
        .filter(role=StorageLocation.Role.PRIMARY)
        .exclude(pk=new_primary.pk if new_primary else None)
        .first()
    )
    if current is None:
        return
    if current.kind == StorageLocation.Kind.PLATFORM:
        audit_record(
            org=org,
            actor=actor,
            action="storage_location.deleted",
            target=current,
            details={"reason": "replaced as primary"},
        )
        current.delete()
    else:
        replica_location_check_locked(
            org=org, values=None, exclude_pk=new_primary.pk if new_primary else None
        )
        current.role = StorageLocation.Role.REPLICA
        current.save(update_fields=["role"])
        audit_record(
            org=org,
            actor=actor,
            action="storage_location.updated",
            target=current,
            details={"role": "replica", "reason": "another location became primary"},
        )


def _lock_locations(org: Organization) -> None:
    list(StorageLocation.objects.for_org(org).select_for_update().values_list("pk", flat=True))


# --- create, update, delete --------------------------------------------------------------------


def location_create(*, org: Organization, data: LocationInput, actor: Actor) -> StorageLocation:
    values = location_validate(data, creating=True)
    try:
        with transaction.atomic():
            _lock_locations(org)
            if data.role == StorageLocation.Role.PRIMARY:
                _primary_switch_locked(org=org, new_primary=None, actor=actor)
            else:
                replica_location_check_locked(org=org, values=values)
            location = StorageLocation.objects.create(
                organization=org,
                kind=StorageLocation.Kind.S3,
                role=data.role,
                secret_access_key_encrypted=encrypt(data.secret_access_key),
                **values,
            )
            audit_record(
                org=org,
                actor=actor,
                action="storage_location.created",
                target=location,
                details=_audit_details(location),
            )
    except IntegrityError:
        raise Conflict(
            "Another primary location was added at the same time; reload and try again.",
            fields={"role": ["The organization already has a primary location."]},
        ) from None
    return location


def location_update(
    *, org: Organization, location: StorageLocation, data: LocationInput, actor: Actor
) -> StorageLocation:
    if location.organization_id != org.pk:
        raise NotFound("Storage location not found.")
    if location.kind == StorageLocation.Kind.PLATFORM:
        raise Conflict(
            "The platform storage is managed by Strata and has no settings to change. "
            "Add your own bucket as primary to replace it."
        )
    values = location_validate(data, creating=False)
    if location.role == StorageLocation.Role.PRIMARY and data.role != location.role:
        raise Conflict(
            "There is always one primary location: make another location primary instead.",
            fields={"role": ["Make another location primary instead."]},
        )
    connection_fields = ("bucket", "prefix", "endpoint_url", "region")
    moved = any(values[f] != getattr(location, f) for f in connection_fields)
    if moved and Instance.objects.for_org(org).filter(location=location).exists():
        raise Conflict(
            "Images are stored in this location: its bucket, prefix, endpoint and region cannot "
            "change (the stored objects would no longer be found). Credentials and encryption "
            "can.",
            fields={"bucket": ["Images are stored here; the bucket settings are fixed."]},
        )
    if moved and replica_rows_exist(org=org, location=location):
        raise Conflict(
            "Replicas are stored in this location: its bucket, prefix, endpoint and region "
            "cannot change. Remove the replica and add a new one instead.",
            fields={"bucket": ["Replicas are stored here; the bucket settings are fixed."]},
        )
    changed = sorted(f for f, v in values.items() if getattr(location, f) != v)
    try:
        with transaction.atomic():
            _lock_locations(org)
            if data.role == StorageLocation.Role.PRIMARY and location.role != data.role:
                _primary_switch_locked(org=org, new_primary=location, actor=actor)
                changed.append("role")
            elif data.role == StorageLocation.Role.REPLICA:
                replica_location_check_locked(
                    org=org, values={"kind": location.kind, **values}, exclude_pk=location.pk
                )
            for field, value in values.items():
                setattr(location, field, value)
            location.role = data.role
            if data.secret_access_key:
                location.secret_access_key_encrypted = encrypt(data.secret_access_key)
                changed.append("secret_access_key")
            if changed:
                # A test result describes the old settings.
                location.last_test_at = None
                location.last_test_ok = None
                location.last_test_message = ""
            location.save()
            audit_record(
                org=org,
                actor=actor,
                action="storage_location.updated",
                target=location,
                details={"changed": changed, **_audit_details(location)},
            )
    except IntegrityError:
        raise Conflict(
            "Another primary location was set at the same time; reload and try again.",
            fields={"role": ["The organization already has a primary location."]},
        ) from None
    return location


def location_delete(*, org: Organization, location: StorageLocation, actor: Actor) -> None:
    if location.organization_id != org.pk:
        raise NotFound("Storage location not found.")
    with transaction.atomic():
        _lock_locations(org)
        if Instance.objects.for_org(org).filter(location=location).exists():
            raise Conflict(
                "Images are stored in this location; it cannot be removed while they are."
            )
        if location.kind == StorageLocation.Kind.PLATFORM:
            raise Conflict(
                "The platform storage is the default primary; add your own bucket as primary "
                "to replace it."
            )
        if (
            location.role == StorageLocation.Role.PRIMARY
            and PendingObject.objects.for_org(org).filter(location=location).exists()
        ):
            raise Conflict("Images are being stored right now; try again in a minute.")
        if location.role == StorageLocation.Role.REPLICA:
            replica_location_release_locked(org=org, location=location, actor=actor)
        audit_record(
            org=org,
            actor=actor,
            action="storage_location.deleted",
            target=location,
            details=_audit_details(location),
        )
        location.delete()


def _audit_details(location: StorageLocation) -> dict[str, Any]:
    # Never the secret, not even encrypted.
    return {
        "role": location.role,
        "bucket": location.bucket,
        "prefix": location.prefix,
        "endpoint_url": location.endpoint_url,
        "region": location.region,
        "encryption": encryption_mode(location.encryption),
        "storage_classes": location.storage_classes,
        "replica_tier": location.replica_tier,
    }


# --- connection test ---------------------------------------------------------------------------


def location_test(*, org: Organization, location: StorageLocation, actor: Actor) -> StorageLocation:
    """Write, read back and delete a probe object; keep the outcome on the location.

    The probe runs outside any transaction (it can take seconds); only the result is written.
    """
    if location.organization_id != org.pk:
        raise NotFound("Storage location not found.")
    if location.kind == StorageLocation.Kind.PLATFORM:
        raise Conflict("The platform storage is monitored by Strata; there is nothing to test.")
    problem = endpoint_check(location.endpoint_url)
    if problem:
        ok, message = False, problem
    else:
        try:
            message = store_for(location).probe()
            ok = True
        except StorageUnavailable as exc:
            ok, message = False, str(exc)
        except ValueError as exc:  # credentials that no longer decrypt
            ok, message = False, str(exc)
    message = message[:500]
    now = timezone.now()
    with transaction.atomic():
        StorageLocation.objects.for_org(org).filter(pk=location.pk).update(
            last_test_at=now, last_test_ok=ok, last_test_message=message
        )
        audit_record(
            org=org,
            actor=actor,
            action="storage_location.tested",
            target=location,
            details={"ok": ok, "message": message},
        )
    location.last_test_at, location.last_test_ok, location.last_test_message = now, ok, message
    if not ok:
        logger.info("storage location %s of org %s failed its test", location.pk, org.pk)
    return location


def location_test_clear(
    *, org: Organization, location: StorageLocation, actor: Actor
) -> StorageLocation:
    if location.organization_id != org.pk:
        raise NotFound("Storage location not found.")
    with transaction.atomic():
        StorageLocation.objects.for_org(org).filter(pk=location.pk).update(
            last_test_at=None, last_test_ok=None, last_test_message=""
        )
        audit_record(org=org, actor=actor, action="storage_location.test_cleared", target=location)
    location.last_test_at, location.last_test_ok, location.last_test_message = None, None, ""
    return location


# --- quota -------------------------------------------------------------------------------------

# 1 EiB: far beyond any hospital, small enough for a BigIntegerField.
MAX_QUOTA_BYTES = 2**60


def archive_settings_update(
    *, org: Organization, storage_quota_bytes: int | None, actor: Actor
) -> ArchiveSettings:
    """Set (or with None remove) the storage quota. Ingest refuses what would exceed it."""
    if storage_quota_bytes is not None and not 0 < storage_quota_bytes <= MAX_QUOTA_BYTES:
        raise ValidationFailed(
            "Invalid quota.",
            fields={"storage_quota_bytes": ["Enter a positive size, or nothing for no quota."]},
        )
    with transaction.atomic():
        config, _ = ArchiveSettings.objects.select_for_update().get_or_create(organization=org)
        before = config.storage_quota_bytes
        config.storage_quota_bytes = storage_quota_bytes
        config.save(update_fields=["storage_quota_bytes"])
        audit_record(
            org=org,
            actor=actor,
            action="archive_settings.updated",
            target=org,
            details={"storage_quota_bytes": {"from": before, "to": storage_quota_bytes}},
        )
    return config
