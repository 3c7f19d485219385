"""The local settings file of a checkout: ``make run`` writes ``.env`` with ``DEBUG=1`` and a
``SECRET_KEY`` of its own, so that every ``manage.py`` command of the README runs as written with
the settings the demo server runs with (saas/env.py reads the file).

``python -m saas.localenv`` writes it when it is missing and never changes an existing one.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from saas import env

HEADER = """\
# Written by `make run` for this checkout's local demo, and never overwritten: edit it, or delete
# it to get a new one. manage.py, Celery and gunicorn read it (saas/env.py); a variable set in the
# environment wins over it. A production host sets its environment (or STRATA_ENV_FILE) instead.
"""


def local_env_lines(*, existing_data: bool) -> list[str]:
    lines = ["DEBUG=1", f"SECRET_KEY={secrets.token_urlsafe(48)}"]
    if existing_data:
        # The data of an earlier `make run` was made with the development key: the bucket
        # credentials encrypted with it stay readable under the new SECRET_KEY.
        lines.append(f"STORAGE_CREDENTIALS_KEY={env.INSECURE_DEV_KEY}")
    return lines


def local_env_write(path: Path, *, existing_data: bool = False) -> bool:
    """Write the file unless it exists (True when written), readable by this account only: it
    holds the secret key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(
            HEADER + "".join(f"{line}\n" for line in local_env_lines(existing_data=existing_data))
        )
    return True


def main() -> int:
    if os.environ.get("STRATA_ENV_FILE"):
        print(f"STRATA_ENV_FILE={os.environ['STRATA_ENV_FILE']} is set: no .env written")
        return 0
    path = env.DEFAULT_ENV_FILE
    written = local_env_write(path, existing_data=(env.DEFAULT_VAR_DIR / "strata.sqlite3").exists())
    print(f"{'wrote' if written else 'kept'} {path} (local settings that manage.py reads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
