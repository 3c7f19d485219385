"""Email-domain verification asks a real DNS server for the TXT record: a server on loopback,
answering from a zone the test fills (dnspython's message API), named by SSO_DNS_NAMESERVERS."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from django.test import override_settings

from tenants.context import Actor
from tenants.errors import ValidationFailed
from tenants.models import EmailDomain
from tenants.sso import services

ACTOR = Actor.system("tests")


class LoopbackDns:
    """A UDP DNS server on 127.0.0.1 answering TXT questions from ``zone``; NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.zone: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        # Closing a socket does not wake a thread blocked on it: poll, so that close() ends it.
        self.sock.settimeout(0.1)
        self.stopped = threading.Event()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            self.asked.append(name)
            answer = dns.message.make_response(query)
            if question.rdtype == dns.rdatatype.TXT and name in self.zone:
                texts = " ".join(f'"{t}"' for t in self.zone[name])
                answer.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", texts))
            else:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(answer.to_wire(), peer)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[LoopbackDns]:
    server = LoopbackDns()
    with override_settings(SSO_DNS_NAMESERVERS=[("127.0.0.1", server.port)]):
        yield server
    server.close()


def test_the_txt_record_published_in_dns_verifies_the_domain(org: Any, dns_server: Any) -> None:
    record = services.domain_add(org=org, actor=ACTOR, domain="stmary.example")
    dns_server.zone["_strata-verification.stmary.example"] = [services.domain_txt_value(record)]
    services.domain_verify_dns(org=org, actor=ACTOR, domain=record)
    record.refresh_from_db()
    assert record.verified_by == EmailDomain.VerifiedBy.DNS
    assert dns_server.asked == ["_strata-verification.stmary.example"]


def test_no_record_or_another_value_in_dns_is_refused_and_leaves_the_domain_unverified(
    org: Any, dns_server: Any
) -> None:
    record = services.domain_add(org=org, actor=ACTOR, domain="stmary.example")
    with pytest.raises(ValidationFailed) as missing:
        services.domain_verify_dns(org=org, actor=ACTOR, domain=record)
    dns_server.zone["_strata-verification.stmary.example"] = ["strata-domain-verification=nope"]
    with pytest.raises(ValidationFailed) as wrong:
        services.domain_verify_dns(org=org, actor=ACTOR, domain=record)
    assert missing.value.code == wrong.value.code == "txt_not_found"
    record.refresh_from_db()
    assert record.verified_at is None


def test_a_dns_server_that_does_not_answer_is_a_clear_error(org: Any) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        record = services.domain_add(org=org, actor=ACTOR, domain="stmary.example")
        with (
            override_settings(SSO_DNS_NAMESERVERS=[("127.0.0.1", silent.getsockname()[1])]),
            pytest.MonkeyPatch.context() as patch,
        ):
            patch.setattr(services, "DNS_TIMEOUT_SECONDS", 0.5)
            with pytest.raises(ValidationFailed) as exc:
                services.domain_verify_dns(org=org, actor=ACTOR, domain=record)
        assert exc.value.code == "dns_unavailable"
        assert "try again later" in str(exc.value)
    finally:
        silent.close()
