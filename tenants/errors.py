"""Errors a service raises for the caller to show: a code, a message and optional field errors.

The API turns them into ``{"error": {"code", "message", "fields"}}`` with ``status``; the portal
shows the message next to the form.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "invalid"

    def __init__(
        self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.fields = fields or {}


class ValidationFailed(ServiceError):
    status = 400
    code = "invalid"


class PermissionMissing(ServiceError):
    status = 403
    code = "permission_denied"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"
