"""A real OpenID Connect provider (panva's oidc-provider, tests/sso_idp) on loopback for the
single sign-on tests, and a browserless way through its sign-in form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from joserfc.jwk import KeySet, RSAKey

from tests.conftest import require_service

IDP_DIR = Path(__file__).resolve().parents[2] / "sso_idp"
CLIENT_ID = "strata-portal"
CLIENT_SECRET = "strata-idp-client-secret-0123456789"
PASSWORD = "idp-passphrase"


def node_available() -> tuple[bool, str]:
    node = shutil.which("node")
    if node is None:
        return False, "node is not installed"
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        return False, "run `npm ci --prefix tests/sso_idp` (make install does when npm exists)"
    return True, ""


@dataclass
class Idp:
    issuer: str
    process: subprocess.Popen[str]
    key: RSAKey
    accounts: list[dict[str, Any]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def private_keys(self) -> KeySet:
        return KeySet([self.key])


def account(sub: str, email: str, groups: list[str], **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "email": email, "groups": groups, "password": PASSWORD, **extra}


def start_idp(*, redirect_uri: str, accounts: list[dict[str, Any]]) -> Idp:
    """Start the provider on a free loopback port; returns once it listens."""
    ok, reason = node_available()
    require_service("OpenID Connect test provider", ok, reason)
    key = RSAKey.generate_key(2048, parameters={"kid": "idp-key-1", "alg": "RS256", "use": "sig"})
    env = {
        **os.environ,
        "IDP_PORT": "0",
        "IDP_CLIENT_ID": CLIENT_ID,
        "IDP_CLIENT_SECRET": CLIENT_SECRET,
        "IDP_REDIRECT_URI": redirect_uri,
        "IDP_ACCOUNTS": json.dumps(accounts),
        "IDP_JWKS": json.dumps({"keys": [key.as_dict(private=True)]}),
        "NODE_ENV": "test",
    }
    process = subprocess.Popen(
        ["node", str(IDP_DIR / "server.mjs")],
        cwd=IDP_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output: list[str] = []
    issuer = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("READY "):
            issuer = line.split()[1]
            break
    if not issuer:
        process.kill()
        raise RuntimeError("the OpenID Connect test provider did not start:\n" + "".join(output))
    # Keep reading its output so that it never blocks on a full pipe.
    threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True).start()
    return Idp(issuer=issuer, process=process, key=key, accounts=accounts, output=output)


def log_in_at_idp(authorize_url: str, *, email: str, password: str = PASSWORD) -> str:
    """Follow the IdP's redirects and fill its sign-in form like a browser would; returns the
    redirect back to the relying party (its callback URL with code and state)."""
    session = requests.Session()
    session.trust_env = False
    url = authorize_url
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(authorize_url))
    for _ in range(12):
        if not url.startswith(origin):
            return url
        response = session.get(url, allow_redirects=False, timeout=10)
        if response.status_code in (302, 303):
            url = urljoin(url, response.headers["Location"])
            continue
        assert response.status_code == 200, response.text[:500]
        if "/interaction/" in url and 'name="email"' in response.text:
            response = session.post(
                url.rstrip("/") + "/login",
                data={"email": email, "password": password},
                allow_redirects=False,
                timeout=10,
            )
            assert response.status_code in (302, 303), response.text[:500]
            url = urljoin(url, response.headers["Location"])
            continue
        raise AssertionError(f"unexpected page at {url}: {response.text[:300]}")
    raise AssertionError("too many redirects at the IdP")


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
