"""DICOM AE titles of the shared C-STORE listener, the writes: which organization a called AE
title belongs to, and which calling AE titles and networks may send to it (the reads, and the
listener's check, are in ``archive.ae_titles.selectors``).

Who may call an AE title: a caller must pass every restriction that is set (its calling AE title
in ``allowed_calling_ae_titles``, its address in ``allowed_networks``). With neither set, nobody
is admitted unless the organization chose ``allow_any_caller`` explicitly (audited); that choice
and restrictions exclude each other, so what the portal shows is what the listener does.

Called AE titles are stored as entered and matched exactly, as DICOM compares them, but two
titles that differ only in case cannot exist, in one organization or across organizations.

Destinations are the other direction: the DICOM peers (PACS, workstations) an organization
registers for Strata to send to, the Move Destinations of C-MOVE. Their AE titles are unique per
organization regardless of case; their host is checked and every connection pinned as
``tenants.netguard`` requires for tenant-supplied hosts (``destination_associate``, used by the
C-ECHO test ``destination_echo``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Upper
from django.utils import timezone
from pydicom.uid import UID

from archive.ae_titles import selectors
from archive.models import DicomAE, DicomDestination
from tenants import netguard
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import Organization
from tenants.services import audit_record

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.presentation import PresentationContext

logger = logging.getLogger(__name__)

VERIFICATION = UID("1.2.840.10008.1.1")  # PS3.4 A.4: the SOP class of C-ECHO

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


# --- destinations: the DICOM peers the organization sends to (C-MOVE) -------------------------
#
# A destination is a host and port a tenant chose: connecting to it follows the platform's rule
# for tenant-supplied hosts (``tenants.netguard``): the host is resolved once per connection,
# every address must be public unless the operator allows private ones
# (ARCHIVE_ALLOW_PRIVATE_ENDPOINTS, for on-premises deployments whose PACS live on private
# networks), and the socket connects to exactly the addresses that were checked.

HOST_MAX_LENGTH = 253
DESCRIPTION_MAX_LENGTH = 200
# A DNS name's labels: letters, digits, hyphens (not first or last) and, as some hospital
# networks name their hosts, underscores.
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DestinationUnreachable(Exception):
    """Why no association with a destination could be established, worded for the tenant."""


def _allow_private_destinations() -> bool:
    return bool(getattr(settings, "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS", False))


def _host_shape_problem(host: str) -> str | None:
    """Why ``host`` (stripped) is not a DNS name or an IP literal, or None."""
    if not host:
        return "Enter the destination's host name or IP address."
    if len(host) > HOST_MAX_LENGTH:
        return f"A host name has at most {HOST_MAX_LENGTH} characters."
    if "://" in host:
        return "Enter the host only, without a scheme such as dicom:// (e.g. pacs.stmary.org)."
    if any(ch.isspace() for ch in host):
        return "A host name has no spaces."
    if any(ch in host for ch in "/?#@\\"):
        return "Enter the host only, without a path, user or query (e.g. pacs.stmary.org)."
    problem = netguard.host_problem(host)
    if problem:
        if ":" in host and host.count(":") == 1:
            return "Enter the port in its own field, not after the host."
        return problem
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    labels = host.rstrip(".").split(".")
    if not all(_HOST_LABEL.match(label) for label in labels):
        return (
            f"{host} is not a valid host name: use letters, digits and hyphens in dot-separated "
            "labels of at most 63 characters, or an IP address."
        )
    return None


def clean_host(value: object) -> str:
    """The host as it is stored: stripped, brackets of an IPv6 literal and a final dot removed,
    an IP address in its canonical form. Raises ValidationFailed naming ``host``."""
    host = value.strip() if isinstance(value, str) else ""
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]  # an IPv6 address written as in a URL
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    problem = _host_shape_problem(host)
    if problem:
        raise ValidationFailed("Invalid host.", fields={"host": [problem]})
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _address_problem(host: str, port: int) -> str | None:
    """Why the platform may not connect to ``host`` (a resolved address that is not public),
    or None. Checked when a destination is saved for a clear answer early; every connection
    checks again (``destination_associate``)."""
    if _allow_private_destinations():
        return None  # on-premises: the host may resolve only inside the hospital's network
    try:
        netguard.resolve(host, port, allow_private=False)
    except netguard.AddressRefused as exc:
        if exc.address and exc.address == host:
            return (
                f"{host} is a private or internal address ({exc.kind}); a destination must be "
                "reachable on a public address."
            )
        if exc.address:
            return (
                f"The host {exc.host} resolves to {exc.address} ({exc.kind}), a private or "
                "internal address; a destination must be reachable on a public address."
            )
        return str(exc)
    return None


def _destination_title_taken(
    title: str, *, org: Organization, exclude_pk: int | None = None
) -> str | None:
    """The message for a title the organization uses already for a destination, in any case."""
    clashes = (
        DicomDestination.objects.for_org(org)
        .annotate(upper=Upper("ae_title"))
        .filter(upper=title.upper())
    )
    if exclude_pk is not None:
        clashes = clashes.exclude(pk=exclude_pk)
    existing = clashes.values_list("ae_title", flat=True).first()
    if existing is None:
        return None
    if existing == title:
        return f"A destination {title} exists already."
    return (
        f"{title} differs from your destination {existing} only in case; destination AE titles "
        "must be unique regardless of case."
    )


def _clean_destination(
    *,
    org: Organization,
    ae_title: object,
    host: object,
    port: object,
    tls: object,
    description: object,
    exclude_pk: int | None = None,
) -> dict[str, Any]:
    """The cleaned fields of a destination, or ValidationFailed naming every field in error."""
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    checks: list[tuple[str, Callable[[], Any]]] = [
        (
            "ae_title",
            lambda: clean_ae_title(ae_title if isinstance(ae_title, str) else "", "ae_title"),
        ),
        ("host", lambda: clean_host(host)),
    ]
    for name, check in checks:
        try:
            cleaned[name] = check()
        except ValidationFailed as exc:
            errors[name] = list(exc.fields[name])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        errors["port"] = [
            f"{port!r}: enter a TCP port from 1 to 65535 (DICOM often uses 104 or 11112)."
        ]
    else:
        cleaned["port"] = port
    if not isinstance(tls, bool):
        errors["tls"] = ["Enter true or false."]
    else:
        cleaned["tls"] = tls
    text = description.strip() if isinstance(description, str) else None
    if text is None:
        errors["description"] = ["Enter text."]
    elif len(text) > DESCRIPTION_MAX_LENGTH:
        errors["description"] = [
            f"At most {DESCRIPTION_MAX_LENGTH} characters ({len(text)} given)."
        ]
    elif _CONTROL.search(text):
        errors["description"] = ["Use one line of text without control characters."]
    else:
        cleaned["description"] = text
    if "ae_title" in cleaned:
        taken = _destination_title_taken(cleaned["ae_title"], org=org, exclude_pk=exclude_pk)
        if taken:
            errors["ae_title"] = [taken]
    if "host" in cleaned and "port" in cleaned:
        problem = _address_problem(cleaned["host"], cleaned["port"])
        if problem:
            errors["host"] = [problem]
    if errors:
        raise ValidationFailed("Invalid destination.", fields=errors)
    return cleaned


def _title_clash_error(title: str) -> ValidationFailed:
    return ValidationFailed(
        "Invalid destination.",
        fields={
            "ae_title": [
                f"A destination {title} exists already; destination AE titles must be unique "
                "regardless of case."
            ]
        },
    )


def _destination_details(destination: DicomDestination) -> dict[str, Any]:
    return {
        "ae_title": destination.ae_title,
        "host": destination.host,
        "port": destination.port,
        "tls": destination.tls,
        "description": destination.description,
    }


def destination_create(
    *,
    org: Organization,
    ae_title: str,
    host: str,
    port: int,
    actor: Actor,
    tls: bool = False,
    description: str = "",
) -> DicomDestination:
    """Register a DICOM peer the organization's images may be sent to (a C-MOVE destination).

    The AE title follows PS3.5 and is unique in the organization regardless of case; the host is
    a DNS name or an IP address that resolves to public addresses only (unless the operator
    allows private networks); the port is 1-65535.
    """
    data = _clean_destination(
        org=org, ae_title=ae_title, host=host, port=port, tls=tls, description=description
    )
    try:
        with transaction.atomic():
            now = timezone.now()
            destination = DicomDestination.objects.create(
                organization=org, created_at=now, updated_at=now, **data
            )
            audit_record(
                org=org,
                actor=actor,
                action="dicom_destination.created",
                target=destination,
                details=_destination_details(destination),
            )
    except IntegrityError:  # created concurrently (the same title in any case)
        raise _title_clash_error(data["ae_title"]) from None
    return destination


def destination_update(
    *,
    org: Organization,
    destination: DicomDestination,
    ae_title: str,
    host: str,
    port: int,
    tls: bool,
    description: str,
    actor: Actor,
) -> DicomDestination:
    """Replace a destination's fields (the same rules as ``destination_create``). A change of
    AE title, host, port or TLS clears the last test: it tested a different peer."""
    if destination.organization_id != org.pk:
        raise NotFound("Destination not found.")
    data = _clean_destination(
        org=org,
        ae_title=ae_title,
        host=host,
        port=port,
        tls=tls,
        description=description,
        exclude_pk=destination.pk,
    )
    before = _destination_details(destination)
    changed = {name: before[name] for name, value in data.items() if before[name] != value}
    if not changed:
        return destination
    try:
        with transaction.atomic():
            for name, value in data.items():
                setattr(destination, name, value)
            destination.updated_at = timezone.now()
            fields = [*data, "updated_at"]
            if set(changed) - {"description"}:
                destination.last_echo_at = None
                destination.last_echo_ok = None
                destination.last_echo_message = ""
                fields += ["last_echo_at", "last_echo_ok", "last_echo_message"]
            destination.save(update_fields=fields)
            audit_record(
                org=org,
                actor=actor,
                action="dicom_destination.updated",
                target=destination,
                details={**_destination_details(destination), "before": changed},
            )
    except IntegrityError:  # renamed concurrently onto a title taken meanwhile
        destination.refresh_from_db()
        raise _title_clash_error(data["ae_title"]) from None
    return destination


def destination_delete(*, org: Organization, destination: DicomDestination, actor: Actor) -> None:
    """Remove a destination: C-MOVE requests naming it are refused (0xA801) from then on."""
    if destination.organization_id != org.pk:
        raise NotFound("Destination not found.")
    with transaction.atomic():
        audit_record(
            org=org,
            actor=actor,
            action="dicom_destination.deleted",
            target=destination,
            details=_destination_details(destination),
        )
        destination.delete()


# --- connecting to a destination ----------------------------------------------------------------


def destination_timeout() -> float:
    """Seconds allowed for each step of an association with a destination (TCP connect and TLS
    handshake, the association's answer, each DIMSE response): DIMSE_ECHO_TIMEOUT_SECONDS."""
    return float(getattr(settings, "DIMSE_ECHO_TIMEOUT_SECONDS", 10))


def destination_tls_context() -> ssl.SSLContext:
    """The TLS client context for destinations: the system's trusted CAs, plus the CAs in
    DIMSE_TLS_CA_FILE (a PEM bundle) when set, for hospitals whose DICOM certificates are signed
    by their own CA. The certificate must name the destination's host (or IP address)."""
    context = ssl.create_default_context()
    ca_file = str(getattr(settings, "DIMSE_TLS_CA_FILE", "") or "")
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _connect_failure(exc: OSError, where: str, timeout: float) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return (
            f"TLS error: certificate not accepted ({detail}) at {where}. It must be signed by "
            "a CA the platform trusts and name the destination's host."
        )
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).replace("_", " ").lower()
        hint = " Is TLS enabled on the destination's port?" if "version" in reason else ""
        return f"TLS error: handshake failed ({reason}) with {where}.{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"Connection refused by {where}: nothing listens on that port, or a firewall refuses."
        )
    if isinstance(exc, TimeoutError):
        return f"Timed out: {where} did not accept a connection within {timeout:g} s."
    if isinstance(exc, ConnectionResetError):
        return f"Connection reset by {where} while connecting."
    return f"Cannot connect to {where}: {exc.strerror or exc}."


def _where(destination: DicomDestination, checked: list[netguard.AddrInfo]) -> str:
    shown = f"[{destination.host}]" if ":" in destination.host else destination.host
    addresses = sorted({str(info[4][0]) for info in checked})
    resolved = "" if addresses == [destination.host] else f" ({', '.join(addresses)})"
    return f"{shown}:{destination.port}{resolved}"


_REJECT_SOURCES = {
    1: "service user",
    2: "service provider (ACSE)",
    3: "service provider (presentation)",
}


def destination_associate(
    *,
    destination: DicomDestination,
    calling_ae_title: str,
    contexts: list[PresentationContext],
    timeout: float | None = None,
    evt_handlers: list[Any] | None = None,
) -> Association:
    """An established association with ``destination``, or ``DestinationUnreachable`` saying why
    not (the address is refused, the connection or the TLS handshake failed, the association was
    rejected or aborted, no answer in time, none of ``contexts`` accepted).

    The host is resolved once and checked by ``tenants.netguard`` (public addresses only unless
    ARCHIVE_ALLOW_PRIVATE_ENDPOINTS); the connection goes to one of exactly those addresses, TLS
    verifying the certificate against the host name. The caller releases the association.
    """
    # pynetdicom (some 7 MB beyond pydicom) loads with the first association a process makes
    # (a C-ECHO test, a C-MOVE), not in every web worker.
    from pynetdicom import evt

    from archive.ae_titles.association import PinnedAE

    timeout = destination_timeout() if timeout is None else timeout
    try:
        checked = netguard.resolve(
            destination.host, destination.port, allow_private=_allow_private_destinations()
        )
    except netguard.AddressRefused as exc:
        raise DestinationUnreachable(f"Refused: {exc}") from None
    where = _where(destination, checked)
    ae = PinnedAE(calling_ae_title, checked)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    tls_args = (destination_tls_context(), destination.host) if destination.tls else None
    received: list[object] = []
    handlers = [(evt.EVT_PDU_RECV, lambda event: received.append(event.pdu)), *(evt_handlers or [])]
    started = time.monotonic()
    assoc = ae.associate(
        str(checked[0][4][0]),
        destination.port,
        contexts=contexts,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=handlers,
    )
    if assoc.is_established:
        return assoc
    failure = next((s.failure for s in ae.sockets if s.failure is not None), None)
    if failure is not None:
        raise DestinationUnreachable(_connect_failure(failure, where, timeout))
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        kind = "permanent" if answer.result == 0x01 else "transient"
        source = _REJECT_SOURCES.get(answer.result_source or 0, "unknown source")
        raise DestinationUnreachable(
            f"Association rejected: {answer.reason_str} ({kind}, {source}). Check that "
            f"{destination.ae_title} at {where} knows the calling AE title {calling_ae_title} "
            f"and its own AE title {destination.ae_title}."
        )
    if answer is not None and answer.result == 0x00:
        offered = ", ".join(sorted({UID(str(cx.abstract_syntax)).name for cx in contexts}))
        raise DestinationUnreachable(
            f"Service not accepted: {destination.ae_title} at {where} accepted the association "
            f"but none of the requested services ({offered})."
        )
    if any(type(pdu).__name__ == "A_ABORT_RQ" for pdu in received):
        raise DestinationUnreachable(f"Association aborted by {where} before it was accepted.")
    if time.monotonic() - started >= timeout * 0.9:
        raise DestinationUnreachable(
            f"Timed out: {where} did not answer the association request within {timeout:g} s."
        )
    raise DestinationUnreachable(
        f"No answer: {where} closed the connection without answering the association request "
        f"(is it a DICOM service{'' if destination.tls else ', or does it expect TLS'}?)."
    )


def _echo(destination: DicomDestination, calling: str) -> tuple[bool, str]:
    from pynetdicom import build_context  # with the association (destination_associate)

    timeout = destination_timeout()
    started = time.monotonic()
    try:
        assoc = destination_associate(
            destination=destination,
            calling_ae_title=calling,
            contexts=[build_context(VERIFICATION)],
            timeout=timeout,
        )
    except DestinationUnreachable as exc:
        return False, str(exc)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed_ms = round((time.monotonic() - started) * 1000)
    address = assoc.acceptor.address
    shown = f"[{destination.host}]" if ":" in destination.host else destination.host
    where = f"{destination.ae_title} at {shown}:{destination.port}"
    if address != destination.host:
        where += f" ({address})"
    if "Status" not in status:
        if assoc.is_aborted:
            return False, f"Association aborted by {where} during the C-ECHO."
        return False, f"Timed out: {where} did not answer the C-ECHO within {timeout:g} s."
    code = int(status.Status)
    if code != 0x0000:
        return False, f"C-ECHO failed: {where} answered with status 0x{code:04X}."
    security = "over TLS" if destination.tls else "without TLS"
    return True, f"C-ECHO succeeded in {elapsed_ms} ms: {where} answered {calling}, {security}."


def destination_echo(
    *, org: Organization, destination: DicomDestination, actor: Actor
) -> DicomDestination:
    """C-ECHO the destination (the portal's and the API's "test") and keep the outcome on it.

    Network failures are outcomes, not errors: the reason is recorded in ``last_echo_message``.
    The echo runs outside any transaction (up to a few timeouts long); only the result is
    written, and only if the destination still names the peer that was tested.
    """
    if destination.organization_id != org.pk:
        raise NotFound("Destination not found.")
    calling = selectors.calling_ae_title(org=org)
    ok, message = _echo(destination, calling)
    message = message[:500]
    now = timezone.now()
    with transaction.atomic():
        DicomDestination.objects.for_org(org).filter(
            pk=destination.pk,
            ae_title=destination.ae_title,
            host=destination.host,
            port=destination.port,
            tls=destination.tls,
        ).update(last_echo_at=now, last_echo_ok=ok, last_echo_message=message)
        audit_record(
            org=org,
            actor=actor,
            action="dicom_destination.echoed",
            target=destination,
            details={"ok": ok, "message": message, "calling_ae_title": calling},
        )
    destination.last_echo_at, destination.last_echo_ok = now, ok
    destination.last_echo_message = message
    if not ok:
        logger.info("destination %s of org %s failed its C-ECHO", destination.pk, org.pk)
    return destination
