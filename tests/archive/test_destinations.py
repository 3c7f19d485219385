"""An organization's DICOM destinations (the peers C-MOVE sends to): the rules of the services
(every bad input refused with a reason naming its field, AE titles unique per organization
regardless of case, tenant-supplied hosts checked by the platform's guard when saved and when
connected to), the C-ECHO test against real SCPs (pynetdicom, TLS, dcmtk's storescp) and what it
records when the peer refuses, rejects or stays silent, the REST API and the portal pages."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.contrib.messages import get_messages
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from pynetdicom import AE, VerificationPresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from rest_framework.test import APIClient

from archive.ae_titles import selectors, services
from archive.models import DicomDestination
from tenants import netguard
from tenants.context import Actor
from tenants.errors import NotFound, ValidationFailed
from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Role
from tests.conftest import require_service

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
PUBLIC_IP = "93.184.216.34"  # a globally routable address; nothing here connects to it
FIELDS = {"ae_title", "host", "port", "tls", "description"}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names the tests resolve (name -> IPv4 address); other names resolve as usual. Changing
    an entry between save and echo is a DNS answer that changed (rebinding)."""
    names: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(netguard.socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture(autouse=True)
def _public_addresses_only(settings: Any) -> None:
    """The production default whatever the environment says (DEBUG=1, which `make test` sets,
    allows private addresses); ``private_allowed`` turns them on where a test needs them."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = False


@pytest.fixture
def private_allowed(settings: Any) -> None:
    """An on-premises deployment: destinations on private networks (here: loopback) allowed."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    settings.DIMSE_ECHO_TIMEOUT_SECONDS = 3


@pytest.fixture
def api(org: Organization, make_token: Callable[..., tuple[ApiToken, str]]) -> APIClient:
    _, secret = make_token(org, ["admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def portal(owner: Membership) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


class EchoSCP:
    """A pynetdicom Verification SCP on a free loopback port, in its own threads; ``calls``
    records the calling AE title of every C-ECHO it answered."""

    def __init__(
        self,
        *,
        ae_title: str = "PACS",
        status: int = 0x0000,
        ssl_context: ssl.SSLContext | None = None,
        **requirements: Any,
    ) -> None:
        self.calls: list[str] = []

        def on_echo(event: Any) -> int:
            self.calls.append(event.assoc.requestor.ae_title)
            return status

        ae = AE(ae_title=ae_title)
        ae.supported_contexts = VerificationPresentationContexts
        for name, value in requirements.items():
            setattr(ae, name, value)
        server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_ECHO, on_echo)],
            ssl_context=ssl_context,
        )
        assert server is not None
        self.server = server
        self.port = int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def start_scp() -> Iterator[Callable[..., EchoSCP]]:
    started: list[EchoSCP] = []

    def start(**options: Any) -> EchoSCP:
        scp = EchoSCP(**options)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield int(sock.getsockname()[1])
    sock.close()


def make_destination(org: Organization, **fields: Any) -> DicomDestination:
    values: dict[str, Any] = {"ae_title": "PACS", "host": PUBLIC_IP, "port": 104}
    values.update(fields)
    return services.destination_create(org=org, actor=ACTOR, **values)


def loopback_destination(org: Organization, port: int, **fields: Any) -> DicomDestination:
    """A destination on 127.0.0.1, saved directly (private addresses are refused by default)."""
    values: dict[str, Any] = {"ae_title": "PACS", "host": "127.0.0.1", "port": port}
    values.update(fields)
    return DicomDestination.objects.create(organization=org, **values)


def refusal(call: Callable[[], Any]) -> dict[str, list[str]]:
    with pytest.raises(ValidationFailed) as refused:
        call()
    return dict(refused.value.fields)


def audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


# --- create, update, delete: the rules --------------------------------------------------------


def test_create_stores_the_destination_and_audits_it(
    org: Organization, dns: dict[str, str]
) -> None:
    dns["pacs.stmary.org"] = PUBLIC_IP
    destination = make_destination(
        org, ae_title=" STMARY_PACS ", host=" pacs.stmary.org. ", tls=True, description=" Main "
    )
    destination.refresh_from_db()
    assert (destination.ae_title, destination.host, destination.port) == (
        "STMARY_PACS",
        "pacs.stmary.org",
        104,
    )
    assert destination.tls is True and destination.description == "Main"
    assert destination.last_echo_at is None and destination.last_echo_ok is None
    (event,) = audit("dicom_destination.created")
    assert event.organization_id == org.pk and event.target_id == str(destination.pk)
    assert event.details == {
        "ae_title": "STMARY_PACS",
        "host": "pacs.stmary.org",
        "port": 104,
        "tls": True,
        "description": "Main",
    }


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("ae_title", "", "1-16 printable ASCII"),
        ("ae_title", "   ", "1-16 printable ASCII"),
        ("ae_title", "A" * 17, "1-16 printable ASCII"),
        ("ae_title", "PACS\\1", "no backslash"),
        ("ae_title", "PA\nCS", "1-16 printable ASCII"),
        ("ae_title", "PÄCS", "1-16 printable ASCII"),
        ("ae_title", None, "1-16 printable ASCII"),
        ("host", "", "Enter the destination's host"),
        ("host", "dicom://pacs.stmary.org", "without a scheme"),
        ("host", "pacs.stmary.org/ae", "without a path"),
        ("host", "user@pacs.stmary.org", "without a path, user"),
        ("host", "pacs stmary.org", "no spaces"),
        ("host", "pacs.stmary.org:104", "port in its own field"),
        ("host", "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62 + ".x", "at most 253"),
        ("host", "-pacs.stmary.org", "not a valid host name"),
        ("host", "pacs..stmary.org", "not a valid host name"),
        ("host", "pacs_" + "x" * 60 + ".org", "not a valid host name"),
        ("host", "päcs.stmary.org", "xn--"),
        ("host", "0x5d.0xb8.0xd8.0x22", "non-standard form"),
        ("host", "1572395042", "non-standard form"),
        ("host", "fe80::1%eth0", "zone id"),
        ("host", "2001:db8::g", "not a valid IPv6"),
        ("host", 104, "Enter the destination's host"),
        ("port", 0, "1 to 65535"),
        ("port", 65536, "1 to 65535"),
        ("port", -104, "1 to 65535"),
        ("port", "104", "1 to 65535"),
        ("port", True, "1 to 65535"),
        ("port", None, "1 to 65535"),
        ("tls", "yes", "true or false"),
        ("description", "x" * 201, "At most 200"),
        ("description", "line one\nline two", "control characters"),
        ("description", "nul\x00", "control characters"),
        ("description", 5, "Enter text"),
    ],
)
def test_each_bad_field_is_refused_naming_it(
    org: Organization, field: str, value: Any, says: str
) -> None:
    fields = refusal(lambda: make_destination(org, **{field: value}))
    assert set(fields) == {field}
    assert says in fields[field][0]
    assert not DicomDestination.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="dicom_destination").exists()


def test_every_bad_field_is_named_at_once(org: Organization) -> None:
    fields = refusal(
        lambda: make_destination(
            org, ae_title="", host="http://x", port=0, tls="no", description="x" * 300
        )
    )
    assert set(fields) == FIELDS


@pytest.mark.parametrize(
    ("entered", "stored"),
    [
        ("PACS.StMary.org", "PACS.StMary.org"),
        ("pacs-1.radiology.stmary.org.", "pacs-1.radiology.stmary.org"),
        ("ws_12.stmary.org", "ws_12.stmary.org"),
        (PUBLIC_IP, PUBLIC_IP),
        ("2606:2800:220:1:248:1893:25c8:1946", "2606:2800:220:1:248:1893:25c8:1946"),
        ("[2606:2800:0220:0001:0248:1893:25c8:1946]", "2606:2800:220:1:248:1893:25c8:1946"),
    ],
)
def test_valid_hosts_are_stored_in_their_plain_form(
    org: Organization, dns: dict[str, str], entered: str, stored: str
) -> None:
    for name in ("PACS.StMary.org", "pacs-1.radiology.stmary.org", "ws_12.stmary.org"):
        dns[name] = PUBLIC_IP
    assert make_destination(org, host=entered).host == stored


@pytest.mark.parametrize("port", [1, 104, 11112, 65535])
def test_ports_at_the_bounds_are_accepted(org: Organization, port: int) -> None:
    assert make_destination(org, port=port).port == port


def test_a_title_used_already_is_refused(org: Organization) -> None:
    make_destination(org, ae_title="PACS")
    fields = refusal(lambda: make_destination(org, ae_title="PACS", port=105))
    assert fields == {"ae_title": ["A destination PACS exists already."]}


def test_a_title_differing_only_in_case_is_refused_naming_the_existing_one(
    org: Organization,
) -> None:
    make_destination(org, ae_title="StMaryPACS")
    fields = refusal(lambda: make_destination(org, ae_title="STMARYPACS"))
    assert "StMaryPACS" in fields["ae_title"][0] and "regardless of case" in fields["ae_title"][0]
    assert DicomDestination.objects.count() == 1


def test_another_organization_may_use_the_same_title(
    org: Organization, other_org: Organization
) -> None:
    make_destination(org, ae_title="PACS")
    assert make_destination(other_org, ae_title="pacs").organization_id == other_org.pk


def test_a_concurrent_duplicate_is_a_field_error_not_a_500(
    org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_destination(org, ae_title="PACS")
    # The race: the check ran before the other request's row was committed.
    monkeypatch.setattr(services, "_destination_title_taken", lambda *a, **k: None)
    fields = refusal(lambda: make_destination(org, ae_title="pacs"))
    assert "regardless of case" in fields["ae_title"][0]
    assert DicomDestination.objects.count() == 1


def test_the_database_refuses_titles_differing_only_in_case(org: Organization) -> None:
    loopback_destination(org, 104, ae_title="Radiology")
    with pytest.raises(IntegrityError), transaction.atomic():
        loopback_destination(org, 105, ae_title="RADIOLOGY")


# --- tenant-supplied hosts: the guard at save time ------------------------------------------------


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.20.0.5", "private"),
        ("192.168.1.20", "private"),
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "shared address space"),
        ("::1", "loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped"),
        ("0.0.0.0", "'this network'"),
    ],
)
def test_a_private_or_internal_address_is_refused_at_save(
    org: Organization, host: str, kind: str
) -> None:
    fields = refusal(lambda: make_destination(org, host=host))
    assert set(fields) == {"host"}
    assert kind in fields["host"][0] and "public address" in fields["host"][0]
    assert not DicomDestination.objects.exists()


def test_a_name_resolving_to_a_private_address_is_refused_at_save(
    org: Organization, dns: dict[str, str]
) -> None:
    dns["pacs.stmary.org"] = "10.1.2.3"
    fields = refusal(lambda: make_destination(org, host="pacs.stmary.org"))
    assert fields["host"] == [
        "The host pacs.stmary.org resolves to 10.1.2.3 (private), a private or internal "
        "address; a destination must be reachable on a public address."
    ]


def test_a_name_that_does_not_resolve_is_refused_at_save(org: Organization) -> None:
    fields = refusal(lambda: make_destination(org, host="pacs.invalid"))
    assert fields["host"] == ["The host pacs.invalid cannot be resolved."]


def test_an_update_to_a_private_address_is_refused_and_changes_nothing(
    org: Organization, dns: dict[str, str]
) -> None:
    destination = make_destination(org)
    dns["pacs.stmary.org"] = "192.168.7.7"
    fields = refusal(
        lambda: services.destination_update(
            org=org,
            destination=destination,
            ae_title="PACS",
            host="pacs.stmary.org",
            port=104,
            tls=False,
            description="",
            actor=ACTOR,
        )
    )
    assert "192.168.7.7" in fields["host"][0]
    destination.refresh_from_db()
    assert destination.host == PUBLIC_IP
    assert not audit("dicom_destination.updated")


@pytest.mark.usefixtures("private_allowed")
def test_private_addresses_and_internal_names_are_accepted_when_the_operator_allows_them(
    org: Organization,
) -> None:
    assert make_destination(org, host="10.20.0.5").host == "10.20.0.5"
    # On premises a PACS's name may resolve only inside the hospital: not looked up here.
    assert make_destination(org, ae_title="WS1", host="pacs.radiology.internal").host == (
        "pacs.radiology.internal"
    )
    # The form is still checked.
    assert (
        "without a scheme"
        in refusal(lambda: make_destination(org, ae_title="WS2", host="dicom://10.0.0.1"))["host"][
            0
        ]
    )


# --- update and delete -----------------------------------------------------------------------


def _update(org: Organization, destination: DicomDestination, **changes: Any) -> DicomDestination:
    values: dict[str, Any] = {
        "ae_title": destination.ae_title,
        "host": destination.host,
        "port": destination.port,
        "tls": destination.tls,
        "description": destination.description,
    }
    values.update(changes)
    return services.destination_update(org=org, destination=destination, actor=ACTOR, **values)


def _tested(destination: DicomDestination) -> None:
    DicomDestination.objects.filter(pk=destination.pk).update(
        last_echo_at=datetime.datetime.now(datetime.UTC), last_echo_ok=True, last_echo_message="ok"
    )
    destination.refresh_from_db()


def test_update_changes_the_fields_audits_what_was_before_and_clears_the_test(
    org: Organization,
) -> None:
    destination = make_destination(org)
    _tested(destination)
    updated = _update(org, destination, ae_title="PACS2", port=11112, tls=True)
    updated.refresh_from_db()
    assert (updated.ae_title, updated.port, updated.tls) == ("PACS2", 11112, True)
    assert updated.last_echo_at is None and updated.last_echo_ok is None
    assert updated.last_echo_message == ""
    assert updated.updated_at > updated.created_at
    (event,) = audit("dicom_destination.updated")
    assert event.details["before"] == {"ae_title": "PACS", "port": 104, "tls": False}
    assert event.details["ae_title"] == "PACS2"


def test_a_new_description_keeps_the_test_result(org: Organization) -> None:
    destination = make_destination(org)
    _tested(destination)
    updated = _update(org, destination, description="The main PACS")
    updated.refresh_from_db()
    assert updated.description == "The main PACS" and updated.last_echo_ok is True


def test_an_update_that_changes_nothing_writes_nothing(org: Organization) -> None:
    destination = make_destination(org)
    _update(org, destination)
    assert not audit("dicom_destination.updated")


def test_renaming_may_change_the_case_of_its_own_title_but_not_take_anothers(
    org: Organization,
) -> None:
    pacs = make_destination(org, ae_title="PACS")
    make_destination(org, ae_title="WS1")
    assert _update(org, pacs, ae_title="Pacs").ae_title == "Pacs"
    fields = refusal(lambda: _update(org, pacs, ae_title="ws1"))
    assert "WS1" in fields["ae_title"][0]
    pacs.refresh_from_db()
    assert pacs.ae_title == "Pacs"


def test_delete_removes_and_audits(org: Organization) -> None:
    destination = make_destination(org)
    pk = destination.pk
    services.destination_delete(org=org, destination=destination, actor=ACTOR)
    assert not DicomDestination.objects.exists()
    (event,) = audit("dicom_destination.deleted")
    assert event.details["ae_title"] == "PACS" and event.target_id == str(pk)


def test_services_refuse_another_organizations_destination(
    org: Organization, other_org: Organization
) -> None:
    theirs = make_destination(other_org)
    with pytest.raises(NotFound):
        _update(org, theirs, port=105)
    with pytest.raises(NotFound):
        services.destination_delete(org=org, destination=theirs, actor=ACTOR)
    with pytest.raises(NotFound):
        services.destination_echo(org=org, destination=theirs, actor=ACTOR)
    theirs.refresh_from_db()
    assert theirs.port == 104 and theirs.last_echo_at is None
    assert not AuditEvent.objects.filter(organization=org).exists()


# --- selectors -----------------------------------------------------------------------------------


def test_selectors_are_scoped_to_the_organization(
    org: Organization, other_org: Organization
) -> None:
    ours = make_destination(org, ae_title="WS1")
    make_destination(org, ae_title="PACS")
    theirs = make_destination(other_org, ae_title="THEIRS")
    assert [d.ae_title for d in selectors.destination_list(org=org)] == ["PACS", "WS1"]
    assert selectors.destination_get(org=org, destination_id=ours.pk) == ours
    for wrong in (theirs.pk, "abc", 10**9):
        with pytest.raises(NotFound):
            selectors.destination_get(org=org, destination_id=wrong)


def test_destination_for_move_matches_the_title_exactly_within_the_organization(
    org: Organization, other_org: Organization
) -> None:
    ours = make_destination(org, ae_title="PACS")
    make_destination(other_org, ae_title="WS9")
    assert selectors.destination_for_move(org=org, ae_title="PACS ") == ours
    assert selectors.destination_for_move(org=org, ae_title="pacs") is None
    assert selectors.destination_for_move(org=org, ae_title="WS9") is None


# --- the C-ECHO test -------------------------------------------------------------------------------


@pytest.mark.usefixtures("private_allowed")
def test_echo_succeeds_against_a_verification_scp_and_is_recorded_and_audited(
    org: Organization, dicom_ae: Any, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp()
    destination = make_destination(org, host="127.0.0.1", port=scp.port)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is True
    assert result.last_echo_message.startswith("C-ECHO succeeded in ")
    assert ": PACS at 127.0.0.1:" in result.last_echo_message
    assert "without TLS" in result.last_echo_message
    # Strata calls with the organization's own (first) AE title.
    assert scp.calls == [dicom_ae.ae_title]
    destination.refresh_from_db()
    assert destination.last_echo_ok is True and destination.last_echo_at is not None
    assert destination.last_echo_message == result.last_echo_message
    (event,) = audit("dicom_destination.echoed")
    assert event.details == {
        "ok": True,
        "message": result.last_echo_message,
        "calling_ae_title": dicom_ae.ae_title,
    }


@pytest.mark.usefixtures("private_allowed")
def test_without_an_ae_title_of_its_own_the_organization_calls_as_the_setting_says(
    org: Organization, settings: Any, start_scp: Callable[..., EchoSCP]
) -> None:
    settings.DIMSE_CALLING_AE_TITLE = "STRATA_CLOUD"
    scp = start_scp()
    destination = loopback_destination(org, scp.port)
    assert services.destination_echo(org=org, destination=destination, actor=ACTOR).last_echo_ok
    assert scp.calls == ["STRATA_CLOUD"]


@pytest.mark.usefixtures("private_allowed")
def test_echo_to_a_closed_port_records_connection_refused(org: Organization) -> None:
    port = free_port()
    destination = loopback_destination(org, port)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is False
    assert result.last_echo_message.startswith(f"Connection refused by 127.0.0.1:{port}")
    destination.refresh_from_db()
    assert destination.last_echo_ok is False and "Connection refused" in (
        destination.last_echo_message
    )
    assert audit("dicom_destination.echoed")[0].details["ok"] is False


@pytest.mark.usefixtures("private_allowed")
def test_echo_rejected_by_the_peer_records_the_reason(
    org: Organization, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp(ae_title="OTHER", require_called_aet=True)
    destination = loopback_destination(org, scp.port)
    message = services.destination_echo(
        org=org, destination=destination, actor=ACTOR
    ).last_echo_message
    assert message.startswith(
        "Association rejected: Called AE title not recognised (permanent, service user). "
        "Check that PACS at 127.0.0.1:"
    )
    assert scp.calls == []


@pytest.mark.usefixtures("private_allowed")
def test_echo_rejected_for_the_calling_title_names_the_title_strata_called_with(
    org: Organization, dicom_ae: Any, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp(require_calling_aet=["SOMEONE"])
    destination = loopback_destination(org, scp.port)
    message = services.destination_echo(
        org=org, destination=destination, actor=ACTOR
    ).last_echo_message
    assert "Calling AE title not recognised" in message
    assert f"calling AE title {dicom_ae.ae_title}" in message


@pytest.mark.usefixtures("private_allowed")
def test_echo_answered_with_a_failure_status_is_a_failed_test(
    org: Organization, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp(status=0x0110)
    destination = loopback_destination(org, scp.port)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is False
    assert result.last_echo_message.startswith("C-ECHO failed: PACS at 127.0.0.1:")
    assert result.last_echo_message.endswith("answered with status 0x0110.")


@pytest.mark.usefixtures("private_allowed")
def test_echo_to_a_peer_without_verification_says_so(org: Organization) -> None:
    ae = AE(ae_title="STORE_ONLY")
    ae.add_supported_context(CTImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        destination = loopback_destination(org, int(server.server_address[1]))
        result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    finally:
        server.shutdown()
        server.server_close()
    assert result.last_echo_ok is False
    assert "Service not accepted: PACS at 127.0.0.1:" in result.last_echo_message
    assert "accepted the association but none of the requested services" in (
        result.last_echo_message
    )
    assert "Verification SOP Class" in result.last_echo_message


@pytest.mark.usefixtures("private_allowed")
def test_echo_to_a_silent_peer_times_out(
    org: Organization, settings: Any, silent_port: int
) -> None:
    settings.DIMSE_ECHO_TIMEOUT_SECONDS = 1
    destination = loopback_destination(org, silent_port)
    started = time.monotonic()
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert time.monotonic() - started < 10
    assert result.last_echo_ok is False
    assert result.last_echo_message == (
        f"Timed out: 127.0.0.1:{silent_port} did not answer the association request within 1 s."
    )


def test_echo_to_a_destination_now_resolving_to_a_refused_address_never_connects(
    org: Organization, dns: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dns["pacs.stmary.org"] = PUBLIC_IP
    destination = make_destination(org, host="pacs.stmary.org")
    dns["pacs.stmary.org"] = "127.0.0.1"  # the name's answer changed after it was checked
    attempts: list[Any] = []
    monkeypatch.setattr(netguard, "_connect_address", lambda *args: attempts.append(args))
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert attempts == []
    assert result.last_echo_ok is False
    assert result.last_echo_message == (
        "Refused: The host pacs.stmary.org resolves to 127.0.0.1 (loopback), a private or "
        "internal address; only public addresses may be used."
    )
    destination.refresh_from_db()
    assert destination.last_echo_message == result.last_echo_message


def test_echo_connects_only_to_the_address_that_was_checked(
    org: Organization, dns: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dns["pacs.stmary.org"] = PUBLIC_IP
    destination = make_destination(org, host="pacs.stmary.org")
    attempts: list[Any] = []

    def connect(info: Any, *args: Any) -> Any:
        attempts.append(info[4])
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(netguard, "_connect_address", connect)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert attempts == [(PUBLIC_IP, 104)]
    assert result.last_echo_message.startswith(
        f"Connection refused by pacs.stmary.org:104 ({PUBLIC_IP})"
    )


@pytest.mark.usefixtures("private_allowed")
def test_an_echo_result_is_not_recorded_on_a_destination_changed_meanwhile(
    org: Organization, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp()
    destination = loopback_destination(org, scp.port)
    DicomDestination.objects.filter(pk=destination.pk).update(port=free_port())
    services.destination_echo(org=org, destination=destination, actor=ACTOR)
    destination.refresh_from_db()
    assert destination.last_echo_at is None  # the test was of the old port


# --- TLS -----------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, issuer_key: Any, key: Any, *, issuer: str, ca: bool, names: list[str]
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def hospital_pki(tmp_path: Path) -> dict[str, Path]:
    """A hospital's own CA and a server certificate it signed for pacs.stmary.test."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("St. Mary CA", ca_key, ca_key, issuer="St. Mary CA", ca=True, names=[])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(
        "pacs.stmary.test", ca_key, key, issuer="St. Mary CA", ca=False, names=["pacs.stmary.test"]
    )
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "pacs.pem", "key": tmp_path / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_scp(
    hospital_pki: dict[str, Path], start_scp: Callable[..., EchoSCP], dns: dict[str, str]
) -> EchoSCP:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(hospital_pki["cert"], hospital_pki["key"])
    dns["pacs.stmary.test"] = "127.0.0.1"
    return start_scp(ssl_context=context)


@pytest.mark.usefixtures("private_allowed")
def test_tls_echo_succeeds_with_the_hospitals_ca(
    org: Organization, settings: Any, hospital_pki: dict[str, Path], tls_scp: EchoSCP
) -> None:
    settings.DIMSE_TLS_CA_FILE = str(hospital_pki["ca"])
    destination = make_destination(org, host="pacs.stmary.test", port=tls_scp.port, tls=True)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is True, result.last_echo_message
    assert result.last_echo_message.endswith("over TLS.")
    assert "pacs.stmary.test" in result.last_echo_message and "(127.0.0.1)" in (
        result.last_echo_message
    )
    assert len(tls_scp.calls) == 1


@pytest.mark.usefixtures("private_allowed")
def test_tls_echo_refuses_a_certificate_of_an_unknown_ca(
    org: Organization, tls_scp: EchoSCP
) -> None:
    destination = make_destination(org, host="pacs.stmary.test", port=tls_scp.port, tls=True)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is False
    assert result.last_echo_message.startswith(
        "TLS error: certificate not accepted (unable to get local issuer certificate) at "
        "pacs.stmary.test:"
    )
    assert "unable to get local issuer certificate" in result.last_echo_message
    assert tls_scp.calls == []


@pytest.mark.usefixtures("private_allowed")
def test_tls_echo_refuses_a_certificate_for_another_host(
    org: Organization, settings: Any, hospital_pki: dict[str, Path], tls_scp: EchoSCP
) -> None:
    settings.DIMSE_TLS_CA_FILE = str(hospital_pki["ca"])
    destination = loopback_destination(org, tls_scp.port, tls=True)  # 127.0.0.1: not in the cert
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is False
    assert "TLS error" in result.last_echo_message
    assert "mismatch" in result.last_echo_message.lower()
    assert tls_scp.calls == []


@pytest.mark.usefixtures("private_allowed")
def test_tls_to_a_plain_dicom_port_says_the_handshake_failed(
    org: Organization, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp()
    destination = loopback_destination(org, scp.port, tls=True)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is False
    assert result.last_echo_message.startswith("TLS error: handshake failed (")
    assert "with 127.0.0.1:" in result.last_echo_message


@pytest.mark.usefixtures("private_allowed")
def test_plain_dicom_to_a_tls_port_says_the_peer_closed_without_answering(
    org: Organization, tls_scp: EchoSCP
) -> None:
    destination = loopback_destination(org, tls_scp.port)
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is False
    assert result.last_echo_message.startswith("No answer: 127.0.0.1:")
    assert "closed the connection without answering" in result.last_echo_message
    assert "does it expect TLS" in result.last_echo_message


# --- dcmtk ---------------------------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[int]:
    """Debian dcmtk's storescp (it answers C-ECHO) as the destination DCMTK."""
    binary = shutil.which("storescp")
    require_service("dcmtk storescp", binary is not None, "no storescp binary (Debian dcmtk)")
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [str(binary), "-aet", "DCMTK", "-od", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("storescp did not start listening")
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.usefixtures("private_allowed")
def test_echo_to_dcmtk_storescp(org: Organization, dicom_ae: Any, storescp: int) -> None:
    destination = loopback_destination(org, storescp, ae_title="DCMTK")
    result = services.destination_echo(org=org, destination=destination, actor=ACTOR)
    assert result.last_echo_ok is True, result.last_echo_message
    assert f"answered {dicom_ae.ae_title}" in result.last_echo_message


# --- REST API ------------------------------------------------------------------------------------

API = "/api/v1/dicom-destinations/"


def test_api_create_list_get_patch_delete(api: APIClient, org: Organization) -> None:
    created = api.post(
        API,
        {"ae_title": "PACS", "host": PUBLIC_IP, "port": 104, "description": "Main PACS"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["ae_title"] == "PACS" and body["tls"] is False and body["port"] == 104
    assert body["last_echo_at"] is None and body["last_echo_ok"] is None
    assert body["last_echo_message"] == ""
    path = f"{API}{body['id']}/"
    listed = api.get(API).json()["results"]
    assert [d["id"] for d in listed] == [body["id"]]
    assert api.get(path).json()["description"] == "Main PACS"
    patched = api.patch(path, {"port": 11112, "tls": True}, format="json")
    assert patched.status_code == 200, patched.content
    assert (patched.json()["port"], patched.json()["tls"], patched.json()["ae_title"]) == (
        11112,
        True,
        "PACS",
    )
    assert api.delete(path).status_code == 204
    assert api.get(path).status_code == 404
    actions = list(
        AuditEvent.objects.filter(action__startswith="dicom_destination")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == [
        "dicom_destination.created",
        "dicom_destination.updated",
        "dicom_destination.deleted",
    ]
    events = AuditEvent.objects.filter(organization=org, action__startswith="dicom_destination")
    assert all(e.actor_token_id for e in events)


def test_api_refuses_bad_input_naming_each_field(api: APIClient) -> None:
    response = api.post(
        API,
        {"ae_title": "BAD\\AE", "host": "http://pacs.example/", "port": 0, "tls": "maybe"},
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"port", "tls"}  # the serializer's shape
    response = api.post(
        API, {"ae_title": "BAD\\AE", "host": "http://pacs.example/", "port": 104}, format="json"
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"ae_title", "host"}
    assert "without a scheme" in fields["host"][0]
    assert api.post(API, {}, format="json").status_code == 400
    assert not DicomDestination.objects.exists()


def test_api_refuses_a_duplicate_title_and_a_private_address(
    api: APIClient, org: Organization
) -> None:
    make_destination(org, ae_title="PACS")
    duplicate = api.post(API, {"ae_title": "pacs", "host": PUBLIC_IP, "port": 1}, format="json")
    assert duplicate.status_code == 400
    assert "regardless of case" in duplicate.json()["error"]["fields"]["ae_title"][0]
    private = api.post(API, {"ae_title": "WS", "host": "10.0.0.9", "port": 104}, format="json")
    assert private.status_code == 400
    assert (
        "10.0.0.9 is a private or internal address (private)"
        in private.json()["error"]["fields"]["host"][0]
    )
    assert DicomDestination.objects.count() == 1


def test_api_patch_refuses_bad_input_and_keeps_the_destination(
    api: APIClient, org: Organization
) -> None:
    destination = make_destination(org)
    path = f"{API}{destination.pk}/"
    assert api.patch(path, {"port": 70000}, format="json").status_code == 400
    response = api.patch(path, {"host": "127.0.0.1"}, format="json")
    assert (
        response.status_code == 400 and "loopback" in response.json()["error"]["fields"]["host"][0]
    )
    destination.refresh_from_db()
    assert (destination.host, destination.port) == (PUBLIC_IP, 104)


@pytest.mark.usefixtures("private_allowed")
def test_api_echo_returns_the_destination_with_the_result(
    api: APIClient, org: Organization, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp()
    works = make_destination(org, host="127.0.0.1", port=scp.port)
    response = api.post(f"{API}{works.pk}/echo/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == works.pk and body["last_echo_ok"] is True
    assert body["last_echo_message"].startswith("C-ECHO succeeded")
    assert body["last_echo_at"] is not None

    refused = make_destination(org, ae_title="GONE", host="127.0.0.1", port=free_port())
    body = api.post(f"{API}{refused.pk}/echo/").json()
    assert body["last_echo_ok"] is False and body["last_echo_message"].startswith(
        "Connection refused"
    )

    rejecting = start_scp(require_calling_aet=["NOT_US"])
    rejected = make_destination(org, ae_title="STRICT", host="127.0.0.1", port=rejecting.port)
    body = api.post(f"{API}{rejected.pk}/echo/").json()
    assert body["last_echo_ok"] is False
    assert body["last_echo_message"].startswith("Association rejected: Calling AE title")
    listed = api.get(API).json()["results"]  # oldest first
    assert [(d["ae_title"], d["last_echo_ok"]) for d in listed] == [
        ("PACS", True),
        ("GONE", False),
        ("STRICT", False),
    ]


def test_api_other_tenants_destination_answers_404_and_stays_unchanged(
    api: APIClient, other_org: Organization
) -> None:
    theirs = make_destination(other_org)
    path = f"{API}{theirs.pk}/"
    assert api.get(path).status_code == 404
    assert api.patch(path, {"port": 1}, format="json").status_code == 404
    assert api.post(f"{path}echo/").status_code == 404
    assert api.delete(path).status_code == 404
    assert api.get(API).json()["results"] == []
    theirs.refresh_from_db()
    assert theirs.port == 104 and theirs.last_echo_at is None


@pytest.mark.parametrize("scope", ["dicom:read", "dicom:write", "usage:read"])
def test_api_needs_the_admin_scope(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]], scope: str
) -> None:
    destination = make_destination(org)
    _, secret = make_token(org, [scope])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    path = f"{API}{destination.pk}/"
    for response in (
        client.get(API),
        client.post(API, {"ae_title": "X", "host": PUBLIC_IP, "port": 1}, format="json"),
        client.get(path),
        client.patch(path, {"port": 1}, format="json"),
        client.post(f"{path}echo/"),
        client.delete(path),
    ):
        assert response.status_code == 403
        assert "storage.manage" in response.content.decode()
    destination.refresh_from_db()
    assert destination.port == 104 and destination.last_echo_at is None
    assert DicomDestination.objects.count() == 1


@pytest.mark.parametrize(
    ("role", "allowed"),
    [(Role.OWNER, True), (Role.ADMIN, True), (Role.MEMBER, False), (Role.AUDITOR, False)],
)
def test_api_by_session_follows_the_role(
    org: Organization, make_member: Callable[..., Membership], role: str, allowed: bool
) -> None:
    destination = make_destination(org)
    client = Client()
    client.force_login(make_member(org, role).user)
    base = f"/api/v1/o/{org.slug}/dicom-destinations/"
    responses = [client.get(base), client.get(f"{base}{destination.pk}/")]
    assert [r.status_code for r in responses] == ([200, 200] if allowed else [403, 403])


def test_api_schema_documents_the_endpoints() -> None:
    schema = APIClient().get("/api/schema/?format=json").json()
    paths = schema["paths"]
    base = "/api/v1/dicom-destinations/"  # once: no /o/{org_slug}/ copy (saas.schema)
    assert {"get", "post"} <= set(paths[base])
    assert {"get", "patch", "delete"} <= set(paths[base + "{destination_id}/"])
    assert "post" in paths[base + "{destination_id}/echo/"]
    assert "/api/v1/o/{org_slug}/dicom-destinations/" not in paths
    components = schema["components"]["schemas"]
    for name in (
        "ArchiveDicomDestination",
        "ArchiveDicomDestinationCreateRequest",
        "PatchedArchiveDicomDestinationUpdateRequest",
    ):
        assert name in components, sorted(n for n in components if "Destination" in n)
    assert "last_echo_message" in components["ArchiveDicomDestination"]["properties"]


# --- portal --------------------------------------------------------------------------------------


def url(name: str, org: Organization, *args: Any) -> str:
    return reverse(name, args=[org.slug, *args])


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_portal_add_edit_delete(portal: Client, org: Organization) -> None:
    form = portal.get(url("portal-destination-create", org))
    assert form.status_code == 200
    assert 'name="host"' in form.content.decode() and 'name="tls"' in form.content.decode()
    created = portal.post(
        url("portal-destination-create", org),
        {"ae_title": "PACS", "host": PUBLIC_IP, "port": "104", "description": "Main"},
    )
    assert created.status_code == 302
    assert created["Location"].endswith("/archive/dicom/#destinations")
    destination = DicomDestination.objects.get()
    assert (destination.ae_title, destination.port, destination.tls) == ("PACS", 104, False)
    assert "Destination PACS added." in messages_of(created)[0]

    page = portal.get(url("portal-dicom", org)).content.decode()
    assert 'id="destination-table"' in page and f"{PUBLIC_IP}:104" in page
    assert "Not tested" in page

    edit = portal.get(url("portal-destination-edit", org, destination.pk))
    assert edit.status_code == 200 and 'value="PACS"' in edit.content.decode()
    saved = portal.post(
        url("portal-destination-edit", org, destination.pk),
        {"ae_title": "PACS", "host": PUBLIC_IP, "port": "11112", "tls": "on"},
    )
    assert saved.status_code == 302
    destination.refresh_from_db()
    assert (destination.port, destination.tls) == (11112, True)

    confirm = portal.get(url("portal-destination-delete", org, destination.pk))
    assert confirm.status_code == 200 and "Delete the destination PACS?" in confirm.content.decode()
    deleted = portal.post(url("portal-destination-delete", org, destination.pk))
    assert deleted.status_code == 302
    assert not DicomDestination.objects.exists()
    assert len(audit("dicom_destination.deleted")) == 1


def test_portal_refuses_bad_input_with_the_fields_errors(portal: Client, org: Organization) -> None:
    response = portal.post(
        url("portal-destination-create", org),
        {"ae_title": "BAD\\AE", "host": "pacs.example/x", "port": "0"},
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert set(errors) == {"ae_title", "host", "port"}  # all at once
    assert "without a path" in errors["host"][0]
    response = portal.post(
        url("portal-destination-create", org),
        {"ae_title": "PACS", "host": "192.168.0.10", "port": "104"},
    )
    assert response.status_code == 400
    assert (
        "192.168.0.10 is a private or internal address (private)"
        in response.context["form"].errors["host"][0]
    )
    assert not DicomDestination.objects.exists()


def test_portal_edit_shows_a_duplicate_title_on_the_field(
    portal: Client, org: Organization
) -> None:
    make_destination(org, ae_title="PACS")
    other = make_destination(org, ae_title="WS1")
    response = portal.post(
        url("portal-destination-edit", org, other.pk),
        {"ae_title": "pacs", "host": PUBLIC_IP, "port": "104"},
    )
    assert response.status_code == 400
    assert "regardless of case" in response.context["form"].errors["ae_title"][0]
    other.refresh_from_db()
    assert other.ae_title == "WS1"


@pytest.mark.usefixtures("private_allowed")
def test_portal_test_button_echoes_and_shows_the_result(
    portal: Client, org: Organization, start_scp: Callable[..., EchoSCP]
) -> None:
    scp = start_scp()
    works = make_destination(org, host="127.0.0.1", port=scp.port)
    response = portal.post(url("portal-destination-test", org, works.pk))
    assert response.status_code == 302
    assert messages_of(response)[0].startswith("C-ECHO succeeded")
    broken = make_destination(org, ae_title="GONE", host="127.0.0.1", port=free_port())
    response = portal.post(url("portal-destination-test", org, broken.pk))
    assert messages_of(response)[-1].startswith("The test of GONE failed. Connection refused")
    page = portal.get(url("portal-dicom", org)).content.decode()
    assert page.count("status-ok") >= 1 and "Works" in page and "Failed" in page
    assert portal.get(url("portal-destination-test", org, works.pk)).status_code == 405


def test_portal_other_tenants_destination_is_404(
    portal: Client, org: Organization, other_org: Organization
) -> None:
    theirs = make_destination(other_org)
    for name in ("portal-destination-edit", "portal-destination-delete"):
        assert portal.get(url(name, org, theirs.pk)).status_code == 404
        assert portal.post(url(name, org, theirs.pk), {"port": "1"}).status_code == 404
    assert portal.post(url("portal-destination-test", org, theirs.pk)).status_code == 404
    theirs.refresh_from_db()
    assert theirs.port == 104 and theirs.last_echo_at is None
    assert DicomDestination.objects.count() == 1


def test_portal_non_member_is_404(
    org: Organization, other_org: Organization, make_member: Callable[..., Membership]
) -> None:
    ours = make_destination(org)
    client = Client()
    client.force_login(make_member(other_org, Role.OWNER).user)
    assert client.get(url("portal-destination-create", org)).status_code == 404
    assert client.get(url("portal-destination-edit", org, ours.pk)).status_code == 404
    assert client.post(url("portal-destination-test", org, ours.pk)).status_code == 404


@pytest.mark.parametrize("role", [Role.MEMBER, Role.BILLING, Role.AUDITOR])
def test_portal_roles_without_storage_manage_get_403(
    org: Organization, make_member: Callable[..., Membership], role: str
) -> None:
    destination = make_destination(org)
    client = Client()
    client.force_login(make_member(org, role).user)
    data = {"ae_title": "X", "host": PUBLIC_IP, "port": "1"}
    responses = [
        client.get(url("portal-destination-create", org)),
        client.post(url("portal-destination-create", org), data),
        client.get(url("portal-destination-edit", org, destination.pk)),
        client.post(url("portal-destination-edit", org, destination.pk), data),
        client.post(url("portal-destination-delete", org, destination.pk)),
        client.post(url("portal-destination-test", org, destination.pk)),
    ]
    for response in responses:
        assert response.status_code == 403
        assert "storage.manage" in response.content.decode()
    destination.refresh_from_db()
    assert destination.ae_title == "PACS" and destination.last_echo_at is None
    assert DicomDestination.objects.count() == 1


def test_a_member_sees_the_destinations_without_the_buttons(
    org: Organization, make_member: Callable[..., Membership]
) -> None:
    make_destination(org, description="Main PACS")
    client = Client()
    client.force_login(make_member(org, Role.MEMBER).user)
    page = client.get(url("portal-dicom", org)).content.decode()
    assert "Main PACS" in page and 'id="destination-table"' in page
    assert "Add destination" not in page
    assert "/dicom/destinations/" not in page


def test_concurrent_echoes_each_record_their_own_outcome(
    org: Organization, settings: Any, start_scp: Callable[..., EchoSCP]
) -> None:
    """Two tests at once (two portal users) do not mix up their sockets or results."""
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True
    scp = start_scp()
    works = loopback_destination(org, scp.port)
    gone = loopback_destination(org, free_port(), ae_title="GONE")
    outcomes: dict[str, tuple[bool, str]] = {}

    def run(destination: DicomDestination) -> None:
        ok, message = services._echo(destination, "STRATA")
        outcomes[destination.ae_title] = (ok, message)

    threads = [threading.Thread(target=run, args=(d,)) for d in (works, gone)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes["PACS"][0] is True and outcomes["GONE"][0] is False
    assert outcomes["GONE"][1].startswith("Connection refused")
