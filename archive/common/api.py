"""REST fields shared by the archive packages' APIs."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from archive.models import TIERS
from tenants.rest import NamedChoiceField

TIER_CHOICES = [(t, t.capitalize()) for t in TIERS]


def tier_field(**kwargs: Any) -> NamedChoiceField:
    """A storage tier (hot, warm, cold, archive), one ``ArchiveTierEnum`` in the schema."""
    return NamedChoiceField(enum_name="ArchiveTierEnum", choices=TIER_CHOICES, **kwargs)


class TierBytesSerializer(serializers.Serializer):
    hot = serializers.IntegerField(source="bytes_hot")
    warm = serializers.IntegerField(source="bytes_warm")
    cold = serializers.IntegerField(source="bytes_cold")
    archive = serializers.IntegerField(source="bytes_archive")

    class Meta:
        ref_name = "ArchiveTierBytes"
