"""The scratch PostgreSQL database every benchmark runs in: created fresh, dropped at the end.

The server is the one DATABASE_URL names (or postgres://postgres@127.0.0.1:5432 when that is not
PostgreSQL); ``BENCH_KEEP=1`` keeps the database for a look afterwards. Without a reachable server
the benchmark prints why and exits 0, so ``make bench`` runs on a machine without one.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg


def server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://", "pgsql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    return url


class ScratchDatabase:
    def __init__(self, name: str, script: str):
        self.name = name
        self.script = script
        self.server = server_url()

    def url(self, dbname: str | None = None) -> str:
        parts = urlsplit(self.server)
        scheme = "postgresql" if parts.scheme in ("postgres", "pgsql") else parts.scheme
        return urlunsplit((scheme, parts.netloc, f"/{dbname or self.name}", parts.query, ""))

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=3)

    def create(self) -> None:
        try:
            admin = self._admin()
        except psycopg.OperationalError as exc:
            netloc = urlsplit(self.server).netloc
            print(f"SKIP: {self.script} needs PostgreSQL at {netloc}: {exc}".strip())
            sys.exit(0)
        with admin:
            # A killed run's leftover goes first.
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        from django.db import connections

        connections.close_all()
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"kept database {self.name}")
            return
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
