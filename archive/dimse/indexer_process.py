"""Entry point of the C-STORE indexer's own process (``archive.dimse.indexer``).

A module of its own: ``multiprocessing`` (spawn) imports the target's module in the new process
before Django is set up, so nothing here may import models at module level.
"""

from __future__ import annotations

import contextlib
from typing import Any

import django
from django.conf import settings


def indexer_process_main(inbox: Any, backlog: Any, database: dict[str, Any] | None) -> None:
    """Set up Django (the listener's settings; ``database`` overrides the default database's
    entries, e.g. the name of a test database), then serve the inbox until told to stop."""
    if database:  # before set-up: no connection has been made yet
        settings.DATABASES["default"].update(database)
    django.setup()
    # Deferred: the indexer imports the models, which only exist once django.setup() has run.
    from archive.dimse.indexer import indexer_loop

    with contextlib.suppress(KeyboardInterrupt):
        indexer_loop(inbox, backlog)
