"""The portal shell's navigation: its sections, in order, and the permission each needs."""

from __future__ import annotations

from typing import Any

# The portal's sections, in navigation order. ``url_name`` None: the section is not available yet
# for this deployment and is shown disabled (later capabilities enable it by naming its view).
NAV_SECTIONS: list[dict[str, Any]] = [
    {"key": "dashboard", "label": "Dashboard", "url_name": "portal-dashboard", "perm": "org.view"},
    {"key": "studies", "label": "Studies", "url_name": "portal-studies", "perm": "images.read"},
    {"key": "ingest", "label": "Ingest", "url_name": "portal-ingest", "perm": "images.write"},
    {
        "key": "dicom",
        "label": "DICOM connections",
        "url_name": "portal-dicom",
        "perm": "images.read",
    },
    {
        "key": "policies",
        "label": "Archive policies",
        "url_name": "portal-policies",
        "perm": "policies.manage",
    },
    {"key": "storage", "label": "Storage", "url_name": "portal-storage", "perm": "storage.manage"},
    {
        "key": "billing",
        "label": "Usage & billing",
        "url_name": "portal-billing",
        "perm": "invoices.view",
    },
    {"key": "members", "label": "Members", "url_name": "portal-members", "perm": "members.view"},
    {"key": "tokens", "label": "API tokens", "url_name": "portal-tokens", "perm": "tokens.manage"},
    {
        "key": "webhooks",
        "label": "Webhooks",
        "url_name": "portal-webhooks",
        "perm": "webhooks.manage",
    },
    {"key": "audit", "label": "Audit log", "url_name": "portal-audit", "perm": "audit.read"},
    {
        "key": "security",
        "label": "Security",
        "url_name": "portal-security",
        "perm": "security.manage",
    },
]
