"""DICOMweb (PS3.18) at /dicomweb/: STOW-RS, QIDO-RS and WADO-RS for one organization per token.

Conformance in short:
- Authentication: ``Authorization: Bearer <token>``; the organization is the token's. Reading
  (QIDO-RS, WADO-RS) needs the scope ``dicom:read``, storing (STOW-RS) ``dicom:write``.
  UIDs of another organization answer exactly like unknown ones (404, or no search results).
- STOW-RS: ``POST /studies`` and ``/studies/{study}``, ``multipart/related;
  type="application/dicom"``. Any storage SOP class in any transfer syntax is stored as it was
  received (byte for byte, no coercion). Failure reasons: see ``stow`` and ``archive.ingest.dicom``.
- QIDO-RS: ``/studies``, ``/series``, ``/instances`` and their study- / series-scoped forms,
  answered as ``application/dicom+json`` (matching rules: see ``qido``).
- WADO-RS: ``/studies/{study}[/series/{series}[/instances/{instance}]]`` as
  ``multipart/related; type="application/dicom"`` in the stored transfer syntax (no
  transcoding), and ``.../metadata`` as ``application/dicom+json`` with each instance's pixel
  data as a ``BulkDataURI``. The bulk data resource
  ``.../instances/{instance}/bulkdata/{tag}`` sends that value (see ``bulkdata``). Rendered and
  frames resources are not offered (404).
- Errors are JSON: ``{"error": {"code", "message", "fields"}}``.
"""
