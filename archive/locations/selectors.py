"""Storage location reads, scoped to the organization: another organization's id is not found."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from archive.models import Instance, StorageLocation
from tenants.errors import NotFound
from tenants.models import Organization


def location_list(*, org: Organization) -> QuerySet[StorageLocation]:
    """The organization's locations, primary first. The platform default is created on first
    sight (as ingest would), so the list always shows where the next image goes."""
    location_primary(org)
    return StorageLocation.objects.for_org(org).order_by("role", "id")


def location_get(*, org: Organization, location_id: int | str) -> StorageLocation:
    try:
        return StorageLocation.objects.for_org(org).get(pk=int(location_id))
    except (StorageLocation.DoesNotExist, ValueError, TypeError):
        raise NotFound("Storage location not found.") from None


def location_in_use(*, org: Organization, location: StorageLocation) -> bool:
    return Instance.objects.for_org(org).filter(location=location).exists()


def location_primary(org: Organization) -> StorageLocation:
    """The organization's primary location; the platform default unless it configured a bucket."""
    location = (
        StorageLocation.objects.for_org(org).filter(role=StorageLocation.Role.PRIMARY).first()
    )
    if location is not None:
        return location
    try:
        with transaction.atomic():
            return StorageLocation.objects.create(
                organization=org, name="Platform storage", kind=StorageLocation.Kind.PLATFORM
            )
    except IntegrityError:  # created concurrently
        return StorageLocation.objects.for_org(org).get(role=StorageLocation.Role.PRIMARY)
