import os

import django
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings.base")


class Request(WSGIRequest):
    """A request whose Content-Type parameters cannot be parsed (``boundary*=bogus''x``: Django
    raises while it builds the request, before any middleware) is still a request: it keeps the
    main type, no parameters, and the reason, which the input guard answers with a 400."""

    content_type_error = ""

    def _set_content_type_params(self, meta: dict[str, str]) -> None:
        try:
            super()._set_content_type_params(meta)  # type: ignore[misc]
        except (ValueError, TypeError, LookupError) as exc:
            self.content_type = meta.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
            self.content_params = {}
            self.content_type_error = f"The Content-Type header cannot be parsed: {exc}"


class Handler(WSGIHandler):
    request_class = Request


django.setup(set_prefix=False)
application = Handler()
# Import every view module now, when a web worker starts, not during its first requests.
get_resolver().url_patterns  # noqa: B018
