"""The OpenAPI schema's one view of the API.

Every organization-scoped endpoint answers at two paths: ``/api/v1/<path>`` (the organization
is the API token's) and ``/api/v1/o/<org_slug>/<path>`` (a signed-in session names it in the
URL; a token may use it too, for its own organization). Same views, same answers: the schema
documents the first and its description says the second exists, so that Swagger UI and ReDoc
list each endpoint once.
"""

from __future__ import annotations

from typing import Any

ORG_SLUG_PREFIX = "/api/v1/o/{org_slug}/"

DESCRIPTION = (
    "Multi-tenant medical image archive: organizations, members, tokens, audit log, webhooks, "
    "the archive and its DICOMweb services, usage and billing.\n\n"
    "Every path under `/api/v1/` is documented once, as an API token calls it: the token names "
    "the organization. The same endpoints also answer under `/api/v1/o/{org_slug}/` "
    "(for example `/api/v1/o/st-mary/studies/`), where the URL names the organization: that is "
    "how a signed-in portal session calls the API; a token may use it for its own organization "
    "(another slug answers 404). Requests, answers and errors are the same at both paths."
)


def drop_org_slug_copies(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """drf-spectacular preprocessing hook: leave out the ``/api/v1/o/{org_slug}/`` copies."""
    return [e for e in endpoints if not str(e[0]).startswith(ORG_SLUG_PREFIX)]
