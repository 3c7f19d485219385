"""Headers that Django cannot parse while it builds the request reach the input guard, through
the WSGI application itself (the test client builds its requests another way)."""

from __future__ import annotations

import io
import json

import pytest

from saas.wsgi import application

pytestmark = pytest.mark.django_db

BAD_CONTENT_TYPES = [
    "multipart/related; boundary*0=x; boundary*=utf-8'",
    "multipart/related; boundary*=bogus''abc",
    "text/plain; charset*=x''y",
]


def call(method: str, path: str, content_type: str) -> tuple[int, dict[str, str], bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": "1",
        "wsgi.input": io.BytesIO(b"x"),
        "wsgi.url_scheme": "https",
        "wsgi.errors": io.StringIO(),
    }
    answer: dict[str, object] = {}

    def start_response(status, headers, exc_info=None):
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(headers)

    body = b"".join(application(environ, start_response))
    return answer["status"], answer["headers"], body  # type: ignore[return-value]


@pytest.mark.parametrize("content_type", BAD_CONTENT_TYPES)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/dicomweb/studies"),
        ("GET", "/api/v1/organization/"),
        ("POST", "/api/v1/webhooks/"),
    ],
)
def test_an_unparsable_content_type_is_a_json_400_naming_the_header(method, path, content_type):
    status, headers, body = call(method, path, content_type)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_header" and "Content-Type" in error["fields"]


@pytest.mark.parametrize("content_type", BAD_CONTENT_TYPES)
def test_an_unparsable_content_type_on_a_portal_page_is_a_400(content_type):
    status, _, body = call("GET", "/accounts/login/", content_type)
    assert status == 400 and b"Content-Type" in body


def test_a_good_content_type_still_passes():
    status, _, _ = call("GET", "/healthz", "text/plain; charset=utf-8")
    assert status == 200
