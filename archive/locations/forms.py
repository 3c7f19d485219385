"""Portal forms of storage locations and the quota: they check shape; ``services`` checks the
rules and refuses with field errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from archive.locations.services import (
    ENCRYPTION_LABELS,
    NOT_AVAILABLE,
    STORAGE_CLASSES,
    LocationInput,
    encryption_mode,
)
from archive.models import DEFAULT_STORAGE_CLASSES, TIERS, StorageLocation
from tenants.forms import PortalForm

GIB = 2**30


def _storage_class_field(tier: str) -> forms.ChoiceField:
    choices = [(c, c) for c in STORAGE_CLASSES]
    if tier != "hot":
        choices.append((NOT_AVAILABLE, "Not available in this store"))
    return forms.ChoiceField(
        choices=choices,
        initial=DEFAULT_STORAGE_CLASSES[tier],
        label=f"{tier.capitalize()} tier",
    )


class LocationForm(PortalForm):
    name = forms.CharField(max_length=100, help_text="How the portal names this location.")
    role = forms.ChoiceField(
        choices=StorageLocation.Role.choices,
        initial=StorageLocation.Role.REPLICA,
        help_text="New images go to the primary location. The primary can only change before "
        "the first image is stored.",
    )
    replica_tier = forms.ChoiceField(
        required=False,
        choices=[(t, t.capitalize()) for t in TIERS],
        initial="cold",
        label="Replica tier",
        help_text="Replica only: the tier its copies are kept in. They are read only in a "
        "disaster, so cold is usual; archive needs a restore before a drill can read them.",
    )
    endpoint_url = forms.CharField(
        required=False,
        max_length=200,
        label="Endpoint URL",
        help_text="Leave empty for AWS S3. For MinIO, Ceph or another S3 API: "
        "https://s3.hospital.example.",
    )
    region = forms.CharField(required=False, max_length=64, help_text="e.g. eu-central-1")
    bucket = forms.CharField(max_length=63)
    # Named as the service's field; the form's own ``prefix`` is an instance attribute.
    prefix = forms.CharField(  # type: ignore[assignment]
        required=False, max_length=255, label="Key prefix", help_text="e.g. strata/ (optional)"
    )
    access_key_id = forms.CharField(max_length=255, label="Access key id")
    secret_access_key = forms.CharField(
        required=False,
        max_length=255,
        label="Secret access key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    encryption = forms.ChoiceField(
        choices=list(ENCRYPTION_LABELS.items()),
        initial="sse-s3",
        label="Server-side encryption",
    )
    kms_key_id = forms.CharField(
        required=False, max_length=2048, label="KMS key id", help_text="Only for SSE-KMS."
    )
    storage_class_hot = _storage_class_field("hot")
    storage_class_warm = _storage_class_field("warm")
    storage_class_cold = _storage_class_field("cold")
    storage_class_archive = _storage_class_field("archive")

    def __init__(self, *args: Any, secret_set: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secret_set = secret_set
        field = self.fields["secret_access_key"]
        if secret_set:
            field.help_text = "Set. Leave empty to keep it; it is stored encrypted and never shown."
        else:
            field.required = True
            field.help_text = "Stored encrypted and never shown again."

    @classmethod
    def initial_for(cls, location: StorageLocation) -> dict[str, Any]:
        initial: dict[str, Any] = {
            "name": location.name,
            "role": location.role,
            "replica_tier": location.replica_tier,
            "endpoint_url": location.endpoint_url,
            "region": location.region,
            "bucket": location.bucket,
            "prefix": location.prefix,
            "access_key_id": location.access_key_id,
            "encryption": encryption_mode(location.encryption),
            "kms_key_id": location.kms_key_id,
        }
        for tier in TIERS:
            initial[f"storage_class_{tier}"] = location.storage_class(tier) or NOT_AVAILABLE
        return initial

    def to_input(self) -> LocationInput:
        data = self.cleaned_data
        return LocationInput(
            name=data["name"],
            role=data["role"],
            replica_tier=data.get("replica_tier") or "cold",
            endpoint_url=data.get("endpoint_url") or "",
            region=data.get("region") or "",
            bucket=data["bucket"],
            prefix=data.get("prefix") or "",
            access_key_id=data["access_key_id"],
            secret_access_key=data.get("secret_access_key") or "",
            encryption=data["encryption"],
            kms_key_id=data.get("kms_key_id") or "",
            storage_classes={tier: data[f"storage_class_{tier}"] for tier in TIERS},
        )


class QuotaForm(PortalForm):
    quota_gib = forms.DecimalField(
        required=False,
        min_value=Decimal("0.001"),
        max_value=Decimal(2**30),
        decimal_places=3,
        label="Storage quota (GiB)",
        help_text="Ingest refuses images beyond this size. Leave empty for no quota.",
    )

    def quota_bytes(self) -> int | None:
        value = self.cleaned_data.get("quota_gib")
        return None if value is None else int(value * GIB)
