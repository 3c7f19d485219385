"""Storage locations: where an organization's images are kept, and its storage quota.

A hospital's own S3 bucket (primary or the disaster-recovery replica) next to the platform default,
the connection test, and the quota ingest enforces.

Rules that must stay true (see ``services``): one primary per organization, which changes only
while the organization has no instances; a location that instances point at is never deleted; the
secret key is stored encrypted and never shown again; a bucket comes with its own credentials; a
tenant-chosen endpoint must not reach the platform's own network (``services.endpoint_check``).

Rooms: ``services`` (writes and the validation shared with bucket imports), ``selectors``
(reads), ``apis`` (REST), ``views`` (the Storage page and the location forms), ``forms``.
Other archive packages use only ``services`` and ``selectors``.
"""
