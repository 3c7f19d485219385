"""Test settings: the base settings with fast hashing, in-memory email and eager-capable Celery.

PostgreSQL and Redis are used when DATABASE_URL / REDIS_URL are set (CI sets both); with
REQUIRE_SERVICES=1 the test session refuses to run without them (see tests/conftest.py).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "strata-test-secret-key-0123456789abcdef")
os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
# The suite reads no local .env: the DEBUG=1 `make run` writes there would change what it tests.
os.environ.setdefault("STRATA_ENV_FILE", "")

from saas.settings.base import *  # noqa: E402,F403
from saas.settings.base import DATABASES, REST_FRAMEWORK  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_URL = "memory://localhost/"  # with a host: no "No hostname" warnings
CELERY_BROKER_TRANSPORT_OPTIONS = {}
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
SSO_ALLOW_PRIVATE_ISSUERS = True  # the tests' OpenID Connect provider listens on loopback
WEBHOOK_RETRY_BASE_SECONDS = 0
WEBHOOK_TIMEOUT_SECONDS = 2
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The test database is a file, as the embedded default is: Django cannot close a connection
    # to an in-memory database, and a lock held by another thread's connection fails at once
    # ("database table is locked") where a file's waits. Each test session has its own file.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"strata-test-{os.getpid()}.sqlite3")
    }
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"].get("OPTIONS", {}),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF",
    }
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token": "100000/min"}}
# The test client speaks plain HTTP; the production TLS defaults are tested in a subprocess.
SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0
