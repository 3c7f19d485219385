"""The API reference pages load nothing from the internet: ReDoc's script comes from the sidecar
package and its fonts are the system's (ReDoc's default head loads Google Fonts)."""

from __future__ import annotations

import re

import pytest
from django.test import Client


@pytest.mark.parametrize("path", ["/api/redoc/", "/api/docs/"])
def test_reference_page_names_no_url_outside_the_server(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert not re.search(r"https?://|//fonts\.", html), re.findall(r"\S*https?://[^\"' ]+", html)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_redoc_uses_the_system_fonts(client: Client) -> None:
    html = client.get("/api/redoc/").content.decode()
    assert "Montserrat" not in html
    assert '"fontFamily": "system-ui' in html
