"""gunicorn's hooks for the production web server (``manage.py serve`` passes
``--config python:saas.gunicorn_conf`` with ``--preload``; see ``gunicorn_command``).

With ``--preload`` the master imports the application once (Django, the settings, every view
module: what ``saas.wsgi`` loads) and forks the workers from it, so the workers share those pages
copy-on-write instead of each importing the same ~1,700 modules into memory of its own. Two
things keep that sharing true:

- Nothing the master opened while loading reaches a worker: a database connection or a cache
  client's socket used from two processes mixes their conversations. ``pre_fork`` closes them
  (loading opens none today; this keeps it so). Loading starts no thread.
- The loaded objects are moved to the garbage collector's permanent generation (``gc.freeze``)
  before each fork: a worker's collections then never visit them, and so never write to the
  pages they live on (only reference counts still do, for the objects a worker touches).

Settings given on the command line or in GUNICORN_CMD_ARGS win over this module.
"""

from __future__ import annotations

import gc
from typing import Any


def pre_fork(server: Any, worker: Any) -> None:
    """In the master, before each worker is forked (at start, and for each worker it replaces)."""
    if server.cfg.preload_app:
        # Only a preloaded master has Django loaded (and its settings configured).
        from django.core.cache import caches
        from django.db import connections

        connections.close_all()
        for cache in caches.all(initialized_only=True):
            cache.close()
    gc.freeze()
