"""DICOM AE titles of the shared C-STORE listener, the reads: an organization's AE titles, and
``ae_admit``, the listener's check of who may call an AE title (the rules are in
``archive.ae_titles.services``); the organization's destinations (the peers C-MOVE sends to).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.db.models import QuerySet

from archive.models import DicomAE, DicomDestination
from tenants.errors import NotFound
from tenants.models import Organization


def ae_list(*, org: Organization) -> QuerySet[DicomAE]:
    return DicomAE.objects.for_org(org).order_by("ae_title")


def ae_get(*, org: Organization, ae_id: int | str) -> DicomAE:
    try:
        return DicomAE.objects.for_org(org).get(pk=int(ae_id))
    except (DicomAE.DoesNotExist, ValueError):
        raise NotFound("AE title not found.") from None


def ae_admit(*, called_ae: str, calling_ae: str, address: str) -> DicomAE | None:
    """The AE config that admits this association, or None (unknown title or not allowed).

    Nobody is admitted to a title with no restriction unless it allows any caller explicitly (a
    row written around the services, e.g. in the Django admin or by SQL, stays closed).
    """
    ae = DicomAE.objects.select_related("organization").filter(ae_title=called_ae.strip()).first()
    if ae is None or not ae.organization.is_active:
        return None
    if not ae.allowed_calling_ae_titles and not ae.allowed_networks:
        return ae if ae.allow_any_caller else None
    if ae.allowed_calling_ae_titles and calling_ae.strip() not in ae.allowed_calling_ae_titles:
        return None
    if ae.allowed_networks:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if not any(ip in ipaddress.ip_network(net) for net in ae.allowed_networks):
            return None
    return ae


def destination_list(*, org: Organization) -> QuerySet[DicomDestination]:
    return DicomDestination.objects.for_org(org).order_by("ae_title", "pk")


def destination_get(*, org: Organization, destination_id: int | str) -> DicomDestination:
    try:
        return DicomDestination.objects.for_org(org).get(pk=int(destination_id))
    except (DicomDestination.DoesNotExist, ValueError, TypeError):
        raise NotFound("Destination not found.") from None


def calling_ae_title(*, org: Organization) -> str:
    """The AE title Strata calls destinations with: the organization's first called AE title
    (what its PACS already knows Strata as), else DIMSE_CALLING_AE_TITLE."""
    first = DicomAE.objects.for_org(org).order_by("ae_title").values_list("ae_title", flat=True)
    return first.first() or str(getattr(settings, "DIMSE_CALLING_AE_TITLE", "STRATA"))


def destination_for_move(*, org: Organization, ae_title: str) -> DicomDestination | None:
    """The organization's destination that a C-MOVE's Move Destination names (exactly, as DICOM
    compares AE titles), or None: an unknown destination is refused with 0xA801."""
    return DicomDestination.objects.for_org(org).filter(ae_title=ae_title.strip()).first()
