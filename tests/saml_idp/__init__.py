"""A real SAML 2.0 identity provider on loopback for the tests: pysaml2's own IdP
(``saml2.server.Server``) behind a small WSGI app, with a key and a self-signed certificate made
at test time.

- ``GET /metadata`` answers the IdP's metadata (entity id, HTTP-Redirect SSO URL, certificate).
- ``GET /sso/redirect?SAMLRequest=...&RelayState=...`` reads the AuthnRequest, signs in the
  account ``SamlIdp.user`` names (no login form: the tests are about the service provider) and
  answers an auto-submitting form that POSTs the signed Response to the requester's ACS.

``SamlIdp.response(...)`` builds a Response directly, with the variations the refusal tests need
(unsigned, signed by another key, another audience, expired, answering another request).
"""

from __future__ import annotations

import base64
import datetime
import html
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"


def xmlsec_required() -> None:
    """Skip (fail under REQUIRE_SERVICES=1) when the xmlsec1 program is not installed."""
    from tests.conftest import require_service

    require_service(
        "xmlsec1", shutil.which("xmlsec1") is not None, "apt-get install xmlsec1 (Debian)"
    )


def key_and_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A 2048-bit RSA key and a self-signed certificate for it, written as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass
class Account:
    name_id: str
    email: str
    groups: list[str]
    name_id_format: str = NAMEID_EMAIL


def sp_metadata(entity_id: str, acs_url: str) -> str:
    return (
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f'entityID="{html.escape(entity_id)}"><md:SPSSODescriptor '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f'<md:AssertionConsumerService Binding="{BINDING_POST}" Location="{html.escape(acs_url)}" '
        'index="0"/></md:SPSSODescriptor></md:EntityDescriptor>'
    )


@dataclass
class SamlIdp:
    """One IdP; ``base`` is its URL once ``start()`` has run (or any URL for browserless use)."""

    base: str = "http://127.0.0.1:0"
    accounts: dict[str, Account] = field(default_factory=dict)
    user: str = ""
    groups_attribute: str = "groups"
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="saml-idp-")))
    _server: Any = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.key, self.cert = key_and_certificate(self.directory, "idp")
        self.other_key, self.other_cert = key_and_certificate(self.directory, "intruder")

    @property
    def entity_id(self) -> str:
        return f"{self.base}/metadata"

    @property
    def sso_url(self) -> str:
        return f"{self.base}/sso/redirect"

    def idp_server(
        self,
        sp_entity_id: str,
        acs_url: str,
        *,
        key: Path | None = None,
        cert: Path | None = None,
        lifetime_minutes: int = 5,
    ) -> Any:
        from saml2.config import IdPConfig
        from saml2.server import Server

        config = IdPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "xmlsec_binary": shutil.which("xmlsec1"),
                "key_file": str(key or self.key),
                "cert_file": str(cert or self.cert),
                "metadata": {"inline": [sp_metadata(sp_entity_id, acs_url)]},
                "service": {
                    "idp": {
                        "name": "Test IdP",
                        "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_REDIRECT)]},
                        "policy": {
                            "default": {
                                "lifetime": {"minutes": lifetime_minutes},
                                "attribute_restrictions": None,
                                "name_form": "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
                            }
                        },
                        "name_id_format": [NAMEID_EMAIL, NAMEID_PERSISTENT],
                        "want_authn_requests_signed": False,
                    }
                },
            }
        )
        return Server(config=config)

    def metadata(self) -> str:
        from saml2.metadata import create_metadata_string

        # The IdP's own metadata, by pysaml2, from a config with no SP to know of.
        server = self.idp_server("urn:nobody", "http://127.0.0.1/none")
        return create_metadata_string(None, server.config, valid=24).decode("utf-8")

    def response(
        self,
        *,
        account: Account,
        in_response_to: str,
        acs_url: str,
        sp_entity_id: str,
        audience: str | None = None,
        sign: str = "assertion",
        other_key: bool = False,
        lifetime_minutes: int = 5,
        destination: str | None = None,
    ) -> str:
        """A base64 SAMLResponse. ``sign``: "assertion", "response", "both" or "none"."""
        from saml2.saml import NameID

        server = self.idp_server(
            audience or sp_entity_id,
            acs_url,
            key=self.other_key if other_key else None,
            cert=self.other_cert if other_key else None,
            lifetime_minutes=lifetime_minutes,
        )
        identity = {"mail": [account.email], self.groups_attribute: list(account.groups)}
        response = server.create_authn_response(
            identity,
            in_response_to=in_response_to,
            destination=destination or acs_url,
            sp_entity_id=audience or sp_entity_id,
            name_id=NameID(format=account.name_id_format, text=account.name_id),
            authn={
                "class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
            },
            sign_response=sign in ("response", "both"),
            sign_assertion=sign in ("assertion", "both"),
            sign_alg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            digest_alg="http://www.w3.org/2001/04/xmlenc#sha256",
        )
        return base64.b64encode(str(response).encode("utf-8")).decode("ascii")

    # --- the WSGI app ------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metadata":
            start_response("200 OK", [("Content-Type", "application/samlmetadata+xml")])
            return [self.metadata().encode("utf-8")]
        if path == "/sso/redirect":
            return self._sso(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    def _sso(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        saml_request = query.get("SAMLRequest", [""])[0]
        relay_state = query.get("RelayState", [""])[0]
        # Parse once with a throwaway config to learn who asks, then answer with one that knows it.
        probe = self.idp_server("urn:probe", "http://127.0.0.1/probe")
        request = probe.parse_authn_request(saml_request, BINDING_REDIRECT).message
        sp_entity_id = request.issuer.text
        acs_url = request.assertion_consumer_service_url
        account = self.accounts.get(self.user)
        if account is None:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"no such test account"]
        saml_response = self.response(
            account=account, in_response_to=request.id, acs_url=acs_url, sp_entity_id=sp_entity_id
        )
        page = (
            "<!doctype html><html><head><title>Test IdP</title></head><body>"
            f'<form method="post" action="{html.escape(acs_url)}" id="f">'
            f'<input type="hidden" name="SAMLResponse" value="{html.escape(saml_response)}">'
            f'<input type="hidden" name="RelayState" value="{html.escape(relay_state)}">'
            '<button type="submit">Continue to the service</button></form>'
            '<script>document.getElementById("f").submit();</script></body></html>'
        )
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [page.encode("utf-8")]

    def start(self) -> SamlIdp:
        xmlsec_required()

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        class Threaded(WSGIServer):
            daemon_threads = True

        self._server = make_server(
            "127.0.0.1", 0, self.app, server_class=Threaded, handler_class=Quiet
        )
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
