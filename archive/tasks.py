"""Every archive package's Celery tasks, imported here so that the worker's autodiscovery
(``archive.tasks``) registers them. Task names stay ``archive.tasks.<name>`` wherever they are
defined, so that queued messages, task routes and the beat schedule survive a move."""

from archive.dicomweb import tasks as dicomweb_tasks  # noqa: F401
from archive.dimse import tasks as dimse_tasks  # noqa: F401
from archive.ingest import tasks as ingest_tasks  # noqa: F401
from archive.reconcile import tasks as reconcile_tasks  # noqa: F401
from archive.replicas import tasks as replica_tasks  # noqa: F401
from archive.restores import tasks as restore_tasks  # noqa: F401
from archive.retention import tasks as retention_tasks  # noqa: F401
from archive.tiering import tasks as tiering_tasks  # noqa: F401
