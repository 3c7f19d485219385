"""One error-response helper for every API module: each module's wording of a status (what a 409
means there) reaches its operations, the shared wording covers the rest."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tenants.rest import ERROR_DESCRIPTIONS, error_responses, error_responses_for


def test_bound_helper_answers_as_error_responses_with_the_module_wording() -> None:
    texts = {409: "The thing is busy."}
    errors = error_responses_for(texts)

    bound = errors(409)
    direct = error_responses(409, descriptions=texts)

    assert list(bound) == list(direct) == [400, 401, 403, 404, 409, 414, 429]
    assert bound[409].description == "The thing is busy."
    assert bound[400].description == ERROR_DESCRIPTIONS[400]
    assert {code: r.description for code, r in bound.items()} == {
        code: r.description for code, r in direct.items()
    }


def test_bound_helper_without_codes_gives_the_statuses_every_endpoint_has() -> None:
    assert list(error_responses_for({})()) == [400, 401, 403, 404, 414, 429]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "method", "wording"),
    [
        ("/api/v1/members/{member_id}/", "delete", "removing the last owner"),
        ("/api/v1/tier-moves/", "post", "The instance is being moved already."),
    ],
)
def test_each_module_wording_reaches_its_operations(path: str, method: str, wording: str) -> None:
    schema = APIClient().get("/api/schema/?format=json").json()

    assert wording in schema["paths"][path][method]["responses"]["409"]["description"]
