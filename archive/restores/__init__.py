"""Restores: bringing archive-tier objects back to a readable copy, on a read or in bulk.

A read (WADO-RS, portal download) that touches archive-tier instances without a readable copy
calls ``services.restore_for_read``: it opens one ``RestoreRequest`` for the instances no open
restore covers yet (or answers with the open one), asks the object store for a copy of each
object (S3 RestoreObject; the filesystem backend simulates the delay), and the caller answers
503 with the request's id. ``services.restores_poll`` (beat, every minute) asks the store how
each item stands: a ready item makes its instance readable until the copy expires
(``Instance.restored_until``) and meters ``restore.bytes`` once (key ``restore:<item id>``); a
request whose items are all ready sends ``restore.ready``; one still waiting at ``timeout_at`` is
reported as timed out. A bulk restore of a study or a patient starts only after its estimate
(``selectors.restore_estimate``: cost on the plan in force, typical time) is shown. A prefetch
(``services.prefetch_for_study``, queued by the ingest pipeline's settle check as the task
``archive.tasks.prefetch_for_study``; ``services.prefetch_for_order``, ``POST /api/v1/prefetch/``)
is a restore of a patient's priors named by the active policy's prefetch rule, with its reason
and the rule's days, refused (audited ``prefetch.capped``) when this month's prefetches would
cost more than the rule's cap.

Rules that must stay true: object-store calls never run inside a database transaction; a ready
item is metered once; two reads of the same study at once open one request.

Rooms: ``services`` (writes), ``selectors`` (reads), ``tasks`` (the Celery tasks, names
``archive.tasks.*`` unchanged), ``apis`` (REST), ``views`` (the portal pages). Other archive
packages use only ``services`` and ``selectors``.
"""
