"""DICOM AE titles of the shared C-STORE listener: which organization a called AE title belongs
to, and which calling AE titles and networks may send to it."""

from __future__ import annotations

import ipaddress
import re

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from archive.models import DicomAE
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

# PS3.5: AE titles are up to 16 characters of the default repertoire, no backslash or controls.
AE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _clean_ae(value: str, field: str) -> str:
    value = (value or "").strip()
    if not value or not AE_PATTERN.match(value):
        raise ValidationFailed(
            "Invalid AE title.",
            fields={field: [f"{value!r}: use 1-16 printable ASCII characters, no backslash."]},
        )
    return value


def _clean_lists(calling: list[str], networks: list[str]) -> tuple[list[str], list[str]]:
    titles = sorted({_clean_ae(t, "allowed_calling_ae_titles") for t in calling or []})
    nets: list[str] = []
    for raw in networks or []:
        try:
            nets.append(str(ipaddress.ip_network(str(raw).strip(), strict=False)))
        except ValueError:
            raise ValidationFailed(
                "Invalid network.",
                fields={"allowed_networks": [f"{raw!r} is not an IP address or CIDR range."]},
            ) from None
    return titles, sorted(set(nets))


def ae_list(*, org: Organization) -> QuerySet[DicomAE]:
    return DicomAE.objects.for_org(org).order_by("ae_title")


def ae_get(*, org: Organization, ae_id: int | str) -> DicomAE:
    try:
        return DicomAE.objects.for_org(org).get(pk=int(ae_id))
    except (DicomAE.DoesNotExist, ValueError):
        raise NotFound("AE title not found.") from None


def ae_create(
    *,
    org: Organization,
    ae_title: str,
    allowed_calling_ae_titles: list[str],
    allowed_networks: list[str],
    actor: Actor,
) -> DicomAE:
    title = _clean_ae(ae_title, "ae_title")
    calling, networks = _clean_lists(allowed_calling_ae_titles, allowed_networks)
    try:
        with transaction.atomic():
            ae = DicomAE.objects.create(
                organization=org,
                ae_title=title,
                allowed_calling_ae_titles=calling,
                allowed_networks=networks,
            )
            audit_record(
                org=org,
                actor=actor,
                action="dicom_ae.created",
                target=ae,
                details={"calling": calling, "networks": networks},
            )
    except IntegrityError:
        raise ValidationFailed(
            "Invalid AE title.", fields={"ae_title": [f"{title} is already in use."]}
        ) from None
    return ae


def ae_update(
    *,
    org: Organization,
    ae: DicomAE,
    allowed_calling_ae_titles: list[str],
    allowed_networks: list[str],
    actor: Actor,
) -> DicomAE:
    if ae.organization_id != org.pk:
        raise NotFound("AE title not found.")
    calling, networks = _clean_lists(allowed_calling_ae_titles, allowed_networks)
    with transaction.atomic():
        ae.allowed_calling_ae_titles = calling
        ae.allowed_networks = networks
        ae.save(update_fields=["allowed_calling_ae_titles", "allowed_networks"])
        audit_record(
            org=org,
            actor=actor,
            action="dicom_ae.updated",
            target=ae,
            details={"calling": calling, "networks": networks},
        )
    return ae


def ae_delete(*, org: Organization, ae: DicomAE, actor: Actor) -> None:
    if ae.organization_id != org.pk:
        raise NotFound("AE title not found.")
    with transaction.atomic():
        audit_record(org=org, actor=actor, action="dicom_ae.deleted", target=ae)
        ae.delete()


def ae_admit(*, called_ae: str, calling_ae: str, address: str) -> DicomAE | None:
    """The AE config that admits this association, or None (unknown title or not allowed)."""
    ae = DicomAE.objects.select_related("organization").filter(ae_title=called_ae.strip()).first()
    if ae is None or not ae.organization.is_active:
        return None
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
