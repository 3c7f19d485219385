"""saas.schema leaves the /api/v1/o/{org_slug}/ copies out of the schema, and only them."""

from __future__ import annotations

from saas.schema import drop_org_slug_copies


def test_hook_drops_only_the_org_slug_copies() -> None:
    endpoints = [
        ("/api/v1/studies/", "", "GET", None),
        ("/api/v1/o/{org_slug}/studies/", "", "GET", None),
        ("/api/v1/platform/organizations/", "", "GET", None),
        ("/api/v1/organizations/", "", "GET", None),
    ]

    kept = drop_org_slug_copies(endpoints)

    assert [e[0] for e in kept] == [
        "/api/v1/studies/",
        "/api/v1/platform/organizations/",
        "/api/v1/organizations/",
    ]
