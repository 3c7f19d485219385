"""Model names read as English in the admin: "Studies", "Webhook deliveries", "API tokens", never
"Studys", "Webhook deliverys" or "Api tokens"."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.apps import apps
from django.test import Client

from tests.factories import UserFactory

PROJECT_APPS = ("tenants", "archive", "billing")
# Initialisms the admin shows in capitals, as the portal does.
INITIALISMS = ("api", "dicom", "cors", "ae")


def _models() -> list[type]:
    return [m for m in apps.get_models() if m._meta.app_label in PROJECT_APPS]


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_plural_is_english(model: type) -> None:
    plural = str(model._meta.verbose_name_plural)  # type: ignore[attr-defined]

    # Django adds an "s": "studys", "deliverys", "indexs", "settingss".
    assert not re.search(r"[^aeiou]ys$|ss$|xs$|chs$|shs$", plural), plural


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_initialisms_are_capitals(model: type) -> None:
    meta = model._meta  # type: ignore[attr-defined]
    for name in (str(meta.verbose_name), str(meta.verbose_name_plural)):
        words = name.split()
        assert not [w for w in words if w in INITIALISMS], name


@pytest.mark.django_db
def test_admin_index_lists_the_names(client: Client) -> None:
    user: Any = UserFactory(
        email="ops@strata.example", username="ops@strata.example", is_staff=True, is_superuser=True
    )
    client.force_login(user)

    page = client.get("/admin/").content.decode()

    for name in ("Studies", "Webhook deliveries", "API tokens"):
        assert f">{name}<" in page, name
    for wrong in ("Studys", "Webhook deliverys", "Api tokens"):
        assert wrong not in page, wrong
