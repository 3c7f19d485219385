"""Hostile parameters of the billing API answer a JSON 400 naming them, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tenants.models import Organization

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["usage/", "usage/export.csv", "usage/report.pdf"])
@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("start", "0001-01-01T00:19:14+01:01"),  # before the first UTC datetime Python has
        ("end", "9999-12-31T23:59:59-01:00"),  # after the last one
    ],
)
def test_datetime_out_of_range_answers_400_naming_it(
    org: Organization, token_client: Any, path: str, parameter: str, value: str
) -> None:
    response = token_client(org).get(f"/api/v1/{path}", {parameter: value})

    assert response.status_code == 400, response.content
    assert parameter in response.json()["error"]["fields"]
