"""What every DICOMweb view shares: the base view, errors, media types and URLs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.http import parse_header_parameters
from pydicom.uid import UID
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.errors import ServiceError
from tenants.rest import OrgAPIView

DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"


class NotAcceptable(ServiceError):
    status = 406
    code = "not_acceptable"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class LengthRequired(ServiceError):
    status = 411
    code = "length_required"


class RestoreRequired(ServiceError):
    """Some of the requested objects sit in a tier that cannot be read without a restore."""

    status = 503
    code = "restore_required"

    def __init__(self, message: str, *, retry_after: int, fields: dict[str, list[str]]):
        super().__init__(message, fields=fields)
        self.retry_after = retry_after


class StreamParser(BaseParser):
    """Hands DRF the raw stream untouched: bodies are read by the view, chunk by chunk.

    Any media type: a DICOMweb body is never parsed by DRF (``request.data`` is not used).
    """

    media_type = "*/*"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Any = None,
    ) -> Any:
        return stream


class DicomWebView(OrgAPIView):
    """Token auth, the organization and permission checks and JSON errors come from OrgAPIView.

    Content negotiation is the view's own business (PS3.18 media types are not DRF renderers);
    errors are always rendered as JSON, whatever the Accept header asked for.
    """

    parser_classes = [StreamParser]
    renderer_classes = [JSONRenderer]
    # DICOMweb is a standard API documented by its conformance statement, not by the OpenAPI schema.
    schema = None

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        return super().perform_content_negotiation(request, force=True)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(exc, RestoreRequired):
            response["Retry-After"] = str(exc.retry_after)
        return response


def dicom_json_response(data: Any, *, status: int = 200, warning: str = "") -> HttpResponse:
    response = HttpResponse(
        json.dumps(data, separators=(",", ":"), ensure_ascii=False),
        content_type=DICOM_JSON,
        status=status,
    )
    if warning:
        response["Warning"] = warning
    return response


def warning_header(request: HttpRequest, text: str) -> str:
    """An RFC 7234 ``Warning: 299 <agent> "<text>"`` value, as PS3.18 8.3.3.2 uses it."""
    safe = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {request.get_host()} "{safe}"'


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def accepted_ranges(request: HttpRequest) -> list[MediaRange]:
    """The Accept header's media ranges with q > 0; an absent header accepts anything."""
    header = request.headers.get("Accept", "").strip()
    if not header:
        return [MediaRange("*/*")]
    ranges = []
    for item in _split_outside_quotes(header, ","):
        try:
            media_type, params = parse_header_parameters(item)
        except (ValueError, TypeError, LookupError):  # RFC 2231 forms that do not decode
            continue
        params = {k.lower(): v.strip('"') for k, v in params.items()}
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(media_type.strip().lower(), params, q))
    return ranges


def preferred_ranges(request: HttpRequest) -> list[MediaRange]:
    """``accepted_ranges``, the most preferred first: by q, ranges of equal q in the order the
    client wrote them (RFC 9110 12.5.1 leaves that order to the server)."""
    return sorted(accepted_ranges(request), key=lambda media: -media.q)


def accept_asked(request: HttpRequest) -> str:
    """The Accept header as a 406 quotes it (what was asked), cut to a readable length."""
    header = request.headers.get("Accept", "")
    return repr(header if len(header) <= 300 else header[:300] + "...")


def transfer_syntax_name(uid: str) -> str:
    """``uid`` with pydicom's name for it, as error messages quote it."""
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else uid


def require_json_acceptable(request: HttpRequest) -> None:
    """QIDO-RS, metadata and STOW-RS answers are DICOM JSON (XML is not offered)."""
    for media in accepted_ranges(request):
        if media.media_type in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise NotAcceptable(
        f"This resource is available as {DICOM_JSON} (or application/json) only; "
        f"the request accepts {request.headers.get('Accept', '')!r}.",
        fields={"Accept": [f"Send 'Accept: {DICOM_JSON}'."]},
    )


def request_authority(request: HttpRequest) -> str:
    """``host[:port]`` as the client reached this server.

    The Host header (checked against ALLOWED_HOSTS by ``get_host``) with its port; when it has
    none, the port the request came in on unless it is the scheme's default: some clients
    (dicomweb-client) send ``Host: 127.0.0.1`` to ``127.0.0.1:8042``, and a URL built from the
    header alone would send them to port 80.
    """
    host = request.get_host()
    has_port = "]:" in host if host.startswith("[") else ":" in host
    if has_port:
        return host
    port = str(request.get_port() or "")
    default = "443" if request.is_secure() else "80"
    if port.isdigit() and port != default:
        return f"{host}:{port}"
    return host


def public_url(request: HttpRequest, path: str) -> str:
    """The absolute URL of ``path`` (starting with "/") for answers that name resources
    (BulkDataURI, Location, RetrieveURL, a restore's URL).

    ``settings.PUBLIC_BASE_URL`` when set (behind a load balancer or a proxy that rewrites the
    Host header); otherwise the request's scheme and ``request_authority``.
    """
    configured: str = settings.PUBLIC_BASE_URL
    if configured:
        return configured + path
    return f"{request.scheme}://{request_authority(request)}{path}"


def base_url(request: HttpRequest) -> str:
    """The DICOMweb service root, absolute: every DICOMweb URL in an answer starts with it."""
    return public_url(request, "/dicomweb")


def study_url(base: str, study_uid: str) -> str:
    return f"{base}/studies/{study_uid}"


def series_url(base: str, study_uid: str, series_uid: str) -> str:
    return f"{base}/studies/{study_uid}/series/{series_uid}"


def instance_url(base: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
