"""DICOM AE titles of the shared C-STORE listener, the writes: which organization a called AE
title belongs to, and which calling AE titles and networks may send to it (the reads, and the
listener's check, are in ``archive.ae_titles.selectors``).

Who may call an AE title: a caller must pass every restriction that is set (its calling AE title
in ``allowed_calling_ae_titles``, its address in ``allowed_networks``). With neither set, nobody
is admitted unless the organization chose ``allow_any_caller`` explicitly (audited); that choice
and restrictions exclude each other, so what the portal shows is what the listener does.

Called AE titles are stored as entered and matched exactly, as DICOM compares them, but two
titles that differ only in case cannot exist, in one organization or across organizations.
"""

from __future__ import annotations

import ipaddress
import re

from django.db import IntegrityError, transaction
from django.db.models.functions import Upper

from archive.models import DicomAE
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

# PS3.5: AE titles are up to 16 characters of the default repertoire, no backslash or controls.
AE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def clean_ae_title(value: str, field: str) -> str:
    """``value`` stripped of padding, or ValidationFailed naming ``field``."""
    value = (value or "").strip()
    if not value or not AE_PATTERN.match(value):
        raise ValidationFailed(
            "Invalid AE title.",
            fields={field: [f"{value!r}: use 1-16 printable ASCII characters, no backslash."]},
        )
    return value


def _clean_lists(
    calling: list[str], networks: list[str], allow_any_caller: bool
) -> tuple[list[str], list[str]]:
    titles = sorted({clean_ae_title(t, "allowed_calling_ae_titles") for t in calling or []})
    nets: list[str] = []
    for raw in networks or []:
        try:
            nets.append(str(ipaddress.ip_network(str(raw).strip(), strict=False)))
        except ValueError:
            raise ValidationFailed(
                "Invalid network.",
                fields={"allowed_networks": [f"{raw!r} is not an IP address or CIDR range."]},
            ) from None
    if not titles and not nets and not allow_any_caller:
        message = (
            "Restrict who may send: give allowed calling AE titles or allowed networks, "
            "or choose allow_any_caller explicitly."
        )
        raise ValidationFailed(
            "No restriction and no explicit choice to allow any caller.",
            fields={
                "allowed_calling_ae_titles": [message],
                "allowed_networks": [message],
                "allow_any_caller": [message],
            },
        )
    if (titles or nets) and allow_any_caller:
        raise ValidationFailed(
            "Restrictions and allow_any_caller exclude each other.",
            fields={
                "allow_any_caller": [
                    "Any caller and restrictions exclude each other: clear allow_any_caller to "
                    "restrict by allowed_calling_ae_titles / allowed_networks, or empty both "
                    "lists to allow any caller."
                ]
            },
        )
    return titles, sorted(set(nets))


def _title_taken(title: str, *, org: Organization) -> None:
    """Refuse a title that exists already, whatever its case and whichever organization has it.

    The unique constraint on ``UPPER(ae_title)`` decides under concurrency; this check gives the
    clear message first. Another organization's title is not named as such: that it exists is all
    the listener's callers can learn too.
    """
    clash = (
        DicomAE.objects.annotate(upper=Upper("ae_title"))
        .filter(upper=title.upper())
        .values_list("ae_title", "organization_id")
        .first()
    )
    if clash is None:
        return
    existing, org_id = clash
    if existing == title:
        message = f"{title} is already in use."
    elif org_id == org.pk:
        message = (
            f"{title} differs from your AE title {existing} only in case; AE titles must be "
            "unique regardless of case."
        )
    else:
        message = (
            f"{title} is already in use with a different case; AE titles must be unique "
            "regardless of case."
        )
    raise ValidationFailed("Invalid AE title.", fields={"ae_title": [message]})


def ae_create(
    *,
    org: Organization,
    ae_title: str,
    allowed_calling_ae_titles: list[str],
    allowed_networks: list[str],
    actor: Actor,
    allow_any_caller: bool = False,
) -> DicomAE:
    """Add a called AE title. Needs a restriction (calling AE titles or networks) or the explicit
    ``allow_any_caller``, not both; the title must be unique regardless of case."""
    title = clean_ae_title(ae_title, "ae_title")
    calling, networks = _clean_lists(allowed_calling_ae_titles, allowed_networks, allow_any_caller)
    _title_taken(title, org=org)
    try:
        with transaction.atomic():
            ae = DicomAE.objects.create(
                organization=org,
                ae_title=title,
                allowed_calling_ae_titles=calling,
                allowed_networks=networks,
                allow_any_caller=allow_any_caller,
            )
            audit_record(
                org=org,
                actor=actor,
                action="dicom_ae.created",
                target=ae,
                details={
                    "calling": calling,
                    "networks": networks,
                    "allow_any_caller": allow_any_caller,
                },
            )
    except IntegrityError:  # created concurrently (the same title in any case)
        raise ValidationFailed(
            "Invalid AE title.",
            fields={
                "ae_title": [
                    f"{title} is already in use; AE titles must be unique regardless of case."
                ]
            },
        ) from None
    return ae


def ae_update(
    *,
    org: Organization,
    ae: DicomAE,
    allowed_calling_ae_titles: list[str],
    allowed_networks: list[str],
    actor: Actor,
    allow_any_caller: bool = False,
) -> DicomAE:
    """Replace who may send to ``ae``; the same rule as ``ae_create``."""
    if ae.organization_id != org.pk:
        raise NotFound("AE title not found.")
    calling, networks = _clean_lists(allowed_calling_ae_titles, allowed_networks, allow_any_caller)
    with transaction.atomic():
        before = ae.allow_any_caller
        ae.allowed_calling_ae_titles = calling
        ae.allowed_networks = networks
        ae.allow_any_caller = allow_any_caller
        ae.save(update_fields=["allowed_calling_ae_titles", "allowed_networks", "allow_any_caller"])
        details: dict[str, object] = {
            "calling": calling,
            "networks": networks,
            "allow_any_caller": allow_any_caller,
        }
        if before != allow_any_caller:
            details["allow_any_caller_was"] = before
        audit_record(org=org, actor=actor, action="dicom_ae.updated", target=ae, details=details)
    return ae


def ae_delete(*, org: Organization, ae: DicomAE, actor: Actor) -> None:
    if ae.organization_id != org.pk:
        raise NotFound("AE title not found.")
    with transaction.atomic():
        audit_record(org=org, actor=actor, action="dicom_ae.deleted", target=ae)
        ae.delete()
