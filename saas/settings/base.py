"""Django settings. Every value that differs between machines comes from ``saas.env``."""

from __future__ import annotations

from datetime import timedelta

from saas import env, schema

BASE_DIR = env.BASE_DIR
VAR_DIR = env.DEFAULT_VAR_DIR

DEBUG = env.boolean("DEBUG", False)
SECRET_KEY = env.secret_key(DEBUG)
ALLOWED_HOSTS = env.csv_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.csv_list("CSRF_TRUSTED_ORIGINS", [])
# Where `manage.py serve` listens (its --addr overrides it); the start-up messages name it.
STRATA_ADDR = env.listen_address("STRATA_ADDR", env.DEFAULT_ADDR)
# Links in emails: by default the served address, so that another STRATA_ADDR port still works.
SITE_URL = env.string(
    "SITE_URL", env.browse_url(STRATA_ADDR) or env.browse_url(env.DEFAULT_ADDR) or ""
).rstrip("/")
# The URL API clients reach Strata at (https://pacs.example.org); absolute URLs in DICOMweb answers
# (BulkDataURI, Location, RetrieveURL) are built from it. Unset: from the request (its Host header,
# and the server's port when the Host header has none).
PUBLIC_BASE_URL = env.public_base_url("PUBLIC_BASE_URL")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "corsheaders",
    "saas",
    "tenants",
    "archive",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before any middleware that answers (CommonMiddleware, the input guard): a preflight is
    # answered here, without credentials; see CORS_* below.
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # NUL in a query parameter, too many parameters: a 400 naming it; an id in the path beyond
    # 64 bits: 404 (saas/input_guard.py).
    "saas.input_guard.InputGuardMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # A person whose organization requires a second factor and who has none: to enrolment.
    "tenants.mfa.middleware.MfaEnrolmentMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "saas.middleware.ApiUsageMiddleware",
    "saas.middleware.SessionTimeoutMiddleware",
    # After the timeout (a timed-out session is gone): last_seen_at of the session's record.
    "tenants.middleware.SessionSeenMiddleware",
    # Last, as axes asks: turns a sign-in refused for a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "saas.urls"
WSGI_APPLICATION = "saas.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "saas" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "saas.context_processors.portal",
            ],
        },
    },
]

DATABASES = {"default": env.database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'strata.sqlite3'}")}
if str(DATABASES["default"]["NAME"]).startswith(str(VAR_DIR)):
    VAR_DIR.mkdir(parents=True, exist_ok=True)  # the embedded default lives in ./var
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Persistent connections: a new PostgreSQL connection per request costs the server a backend
# process and a few milliseconds; checked before reuse, so a restarted server is survived.
DATABASES["default"]["CONN_MAX_AGE"] = env.integer("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the worker and the web process write without "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 20}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.redis_url("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# The API throttle's counters (tenants/throttling.py). In Redis when REDIS_URL is set: every web
# process counts against one limit per token. Without it, in each process's own memory: a token
# then gets up to (number of web processes) x its rate.
CACHES["throttle"] = (
    {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "throttle",
    }
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle"}
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal-home"
LOGOUT_REDIRECT_URL = "login"

# Brute-force protection (tenants/lockout.py, django-axes). axes' backend comes first and refuses
# a locked-out sign-in before the password is checked; every authenticate() must pass request.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = env.integer("LOGIN_FAILURE_LIMIT", 5, minimum=1)  # per account
# Per client address, for any accounts; higher than per account because a hospital's workstations
# often reach the internet through one address. 0 turns the per-address lockout off.
LOGIN_FAILURE_LIMIT_PER_ADDRESS = env.integer("LOGIN_FAILURE_LIMIT_PER_ADDRESS", 20, minimum=0)
LOGIN_LOCKOUT_MINUTES = env.integer("LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
PASSWORD_RESET_LIMIT = env.integer("PASSWORD_RESET_LIMIT", 3, minimum=1)  # per email address
PASSWORD_RESET_LIMIT_PER_ADDRESS = env.integer("PASSWORD_RESET_LIMIT_PER_ADDRESS", 10, minimum=1)
PASSWORD_RESET_WINDOW_MINUTES = env.integer("PASSWORD_RESET_WINDOW_MINUTES", 60, minimum=1)
# The database handler: one count for all web processes, on SQLite and PostgreSQL alike.
AXES_HANDLER = "tenants.lockout.LockoutHandler"
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_LOCKOUT_PARAMETERS = (
    ["username", "ip_address"] if LOGIN_FAILURE_LIMIT_PER_ADDRESS else ["username"]
)
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
# A refused attempt during a lockout does not restart it: it ends when the page says it does.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True  # the account's failures only (LockoutHandler.reset_user_attempts)
AXES_LOCKOUT_CALLABLE = "tenants.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "tenants.lockout.client_address"
AXES_USERNAME_CALLABLE = "tenants.lockout.username_of"
AXES_DISABLE_ACCESS_LOG = True  # successful sign-ins are in the audit log (auth.login)
AXES_HTTP_RESPONSE_CODE = 429

# Portal sessions (saas.middleware.SessionTimeoutMiddleware): signed out after this long without
# activity, and this long after sign-in whatever the activity.
SESSION_IDLE_TIMEOUT_SECONDS = env.integer("SESSION_IDLE_TIMEOUT_SECONDS", 15 * 60, minimum=60)
SESSION_ABSOLUTE_LIFETIME_SECONDS = env.integer(
    "SESSION_ABSOLUTE_LIFETIME_SECONDS", 12 * 60 * 60, minimum=300
)
SESSION_COOKIE_AGE = SESSION_ABSOLUTE_LIFETIME_SECONDS  # cookie and stored session go with it
# Pages that poll in the background (a job's progress): they do not count as activity, so an open
# tab does not keep a session alive.
SESSION_BACKGROUND_URL_NAMES = ["portal-ingest-job-progress"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env.path("STATIC_ROOT", VAR_DIR / "staticfiles")
STATIC_ROOT.mkdir(
    parents=True, exist_ok=True
)  # collectstatic's target; whitenoise wants it to exist
STATICFILES_DIRS = [BASE_DIR / "saas" / "static"]
WHITENOISE_USE_FINDERS = True  # serve straight from installed packages; no collectstatic needed
MEDIA_ROOT = str(env.path("STORAGE_ROOT", VAR_DIR / "storage"))

# Unset: the console with DEBUG (make run), else files under var/mail; SMTP via EMAIL_URL.
EMAIL_CONFIG = env.email_settings("EMAIL_URL", debug=DEBUG, file_dir=VAR_DIR / "mail")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.string("DEFAULT_FROM_EMAIL", "Strata <no-reply@strata.local>")

# Celery: Redis when REDIS_URL is set, otherwise a broker that needs no server (a folder).
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", REDIS_URL or env.EMBEDDED_BROKER_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
if CELERY_BROKER_URL.startswith("filesystem"):
    for _folder in ("queue", "processed", "control"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = env.boolean("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.throttling.TokenRateThrottle"],
    # JSON with size, depth and NUL limits (tenants/parsers.py); forms as DRF parses them.
    "DEFAULT_PARSER_CLASSES": [
        "tenants.parsers.JSONBodyParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_RATES": {"token": env.throttle_rate("API_THROTTLE_RATE", "1200/min")},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "tenants.rest.CursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "tenants.rest.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
# CORS (django-cors-headers) for the bearer-token APIs only: /dicomweb/ and /api/v1/, not the
# session-authenticated /api/v1/o/<slug>/ nor the portal. No origin is allowed by default: each
# organization lists its own (tenants/cors.py decides through check_request_enabled). Tokens are
# bearer tokens, so no credentials (cookies) are ever allowed cross-origin.
CORS_URLS_REGEX = r"^/(?:dicomweb/|api/v1/(?!o/))"
CORS_ALLOWED_ORIGINS: list[str] = []
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type")
CORS_ALLOW_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
CORS_EXPOSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Location",
    "Location",
    "Retry-After",
    "Warning",
    # WADO-RS frames: the bytes read from the object store for the frames sent.
    "X-Strata-Store-Bytes",
)
# A browser may reuse a preflight's answer this long; each actual request is still checked
# against its organization's origins.
CORS_PREFLIGHT_MAX_AGE = 3600
# Limits of a JSON request body (tenants.parsers.JSONBodyParser): larger answers 413, deeper 400.
API_MAX_JSON_BYTES = env.integer("API_MAX_JSON_BYTES", 1024 * 1024, minimum=1024)
API_MAX_JSON_DEPTH = env.integer("API_MAX_JSON_DEPTH", 32, minimum=4)
_SYSTEM_FONTS = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
_MONO_FONTS = 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace'
SPECTACULAR_SETTINGS = {
    "TITLE": "Strata API",
    "DESCRIPTION": schema.DESCRIPTION,
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # ReDoc's default fonts come from Google Fonts (the page's head leaves them out, see
    # saas/templates/drf_spectacular/redoc.html): the portal's system fonts instead.
    "REDOC_UI_SETTINGS": {
        "theme": {
            "typography": {
                "fontFamily": _SYSTEM_FONTS,
                "headings": {"fontFamily": _SYSTEM_FONTS},
                "code": {"fontFamily": _MONO_FONTS},
            }
        }
    },
    "COMPONENT_SPLIT_REQUEST": True,
    # Each endpoint once, not again under /api/v1/o/{org_slug}/ (saas.schema).
    "PREPROCESSING_HOOKS": ["saas.schema.drop_org_slug_copies"],
    "APPEND_COMPONENTS": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
    },
    "SECURITY": [{"bearerAuth": []}],
    # 413 and 415 on every operation that takes a body (tenants.rest.document_body_errors).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tenants.rest.document_body_errors",
    ],
}

# Tenancy
INVITATION_TTL_HOURS = env.integer("INVITATION_TTL_HOURS", 72, minimum=1)
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env.boolean("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", False)
WEBHOOK_TIMEOUT_SECONDS = env.integer("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
WEBHOOK_MAX_ATTEMPTS = env.integer("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = env.integer("WEBHOOK_RETRY_BASE_SECONDS", 30, minimum=0)
WEBHOOK_FAILING_AFTER = env.integer("WEBHOOK_FAILING_AFTER", 3, minimum=1)
# Single sign-on: an organization's identity provider (its issuer and the endpoints its discovery
# names) must be on a public address over https, unless this is on (development, tests, and an
# on-premises installation whose IdP is on the hospital's own network).
SSO_ALLOW_PRIVATE_ISSUERS = env.boolean("SSO_ALLOW_PRIVATE_ISSUERS", DEBUG)
# The DNS servers that email-domain verification asks for TXT records (``ip[:port]``, comma
# separated); empty: the system's resolver. An air-gapped installation names its own.
SSO_DNS_NAMESERVERS = env.nameservers("SSO_DNS_NAMESERVERS")

# Archive: the platform's default storage location (hospitals may add their own buckets).
ARCHIVE_BACKEND = env.choice("ARCHIVE_BACKEND", "FILESYSTEM", ["FILESYSTEM", "S3"]).lower()
ARCHIVE_ROOT = env.path("ARCHIVE_ROOT", VAR_DIR / "archive")
ARCHIVE_SPOOL_ROOT = env.path("ARCHIVE_SPOOL_ROOT", VAR_DIR / "spool")
ARCHIVE_S3_ENDPOINT_URL = env.string("ARCHIVE_S3_ENDPOINT_URL", "") or None
ARCHIVE_S3_REGION = env.string("ARCHIVE_S3_REGION", "us-east-1")
ARCHIVE_S3_BUCKET = env.string("ARCHIVE_S3_BUCKET", "strata-archive")
ARCHIVE_S3_PREFIX = env.string("ARCHIVE_S3_PREFIX", "")
ARCHIVE_S3_ACCESS_KEY_ID = env.string("ARCHIVE_S3_ACCESS_KEY_ID", "") or None
ARCHIVE_S3_SECRET_ACCESS_KEY = env.string("ARCHIVE_S3_SECRET_ACCESS_KEY", "") or None
STORAGE_CREDENTIALS_KEY = env.string("STORAGE_CREDENTIALS_KEY", "") or SECRET_KEY
DICOM_SCP_HOST = env.string("DICOM_SCP_HOST", "localhost")
DICOM_SCP_PORT = env.integer("DICOM_SCP_PORT", 11112, minimum=1)
# Outgoing associations to an organization's destinations (the C-ECHO test): each step (TCP
# connect and TLS handshake, the association's answer, the C-ECHO's) within this many seconds;
# the calling AE title when the organization has no AE title of its own; a PEM bundle of CAs
# trusted for destinations' TLS certificates besides the system's. Destinations on private
# addresses need ARCHIVE_ALLOW_PRIVATE_ENDPOINTS.
DIMSE_ECHO_TIMEOUT_SECONDS = env.integer("DIMSE_ECHO_TIMEOUT_SECONDS", 10, minimum=1)
DIMSE_CALLING_AE_TITLE = env.ae_title("DIMSE_CALLING_AE_TITLE", "STRATA")
DIMSE_TLS_CA_FILE = env.optional_file("DIMSE_TLS_CA_FILE")
ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = env.boolean("ARCHIVE_ALLOW_PRIVATE_ENDPOINTS", DEBUG)
ARCHIVE_ORPHAN_AGE_MINUTES = env.integer("ARCHIVE_ORPHAN_AGE_MINUTES", 60, minimum=1)
ARCHIVE_SETTLE_SECONDS = env.integer("ARCHIVE_SETTLE_SECONDS", 120, minimum=0)
# STOW-RS: parts one request may carry (more: 413) and failure rows kept per ingest job (the
# job's failed counter counts every failure).
STOW_MAX_PARTS = env.integer("STOW_MAX_PARTS", 10000, minimum=1)
INGEST_MAX_FAILURE_ROWS = env.integer("INGEST_MAX_FAILURE_ROWS", 1000, minimum=0)
# WADO-RS: an instance transcoded to Explicit (or Implicit) VR Little Endian is built in memory;
# only instances whose decoded pixel data and stored object both take at most this many bytes
# are transcoded (larger: 406; transfer-syntax=* sends them as stored).
WADO_TRANSCODE_MAX_BYTES = env.integer("WADO_TRANSCODE_MAX_BYTES", 256 * 1024 * 1024, minimum=0)
# C-FIND: matches one query answers; past it the first ones are sent, then 0xA700 says more match.
DIMSE_FIND_MAX_RESULTS = env.integer("DIMSE_FIND_MAX_RESULTS", 1000, minimum=1)
# The DICOM connections page: each admitted association and its operations are kept this many
# days (the archive.tasks.dimse_activity_purge beat job deletes older ones).
DIMSE_ACTIVITY_RETENTION_DAYS = env.integer("DIMSE_ACTIVITY_RETENTION_DAYS", 90, minimum=1)
# Tiering and restores (per-organization knobs live in ArchiveSettings).
# The filesystem backend simulates an archive-tier restore: ready after this many seconds.
ARCHIVE_FS_RESTORE_SECONDS = env.integer("ARCHIVE_FS_RESTORE_SECONDS", 60, minimum=0)
# Moves and restores claimed by a worker that stopped are taken over after this lease.
ARCHIVE_MOVE_LEASE_SECONDS = env.integer("ARCHIVE_MOVE_LEASE_SECONDS", 300, minimum=10)

# Web server (manage.py serve): nginx in front of gunicorn, see saas/proxy.py.
STRATA_PROXY = env.choice("STRATA_PROXY", "AUTO", ["AUTO", "NGINX", "NONE"]).lower()
WEB_CLIENT_TIMEOUT_SECONDS = env.integer("WEB_CLIENT_TIMEOUT_SECONDS", 60, minimum=1)
WEB_MAX_BODY_SIZE = env.string("WEB_MAX_BODY_SIZE", "4g")
WEB_TRUSTED_PROXIES = env.csv_list("WEB_TRUSTED_PROXIES", [])

# Billing
BILLING_GRACE_DAYS = env.integer("BILLING_GRACE_DAYS", 3, minimum=0)
BILLING_MAX_REPORT_DAYS = env.integer("BILLING_MAX_REPORT_DAYS", 400, minimum=1)

LOG_LEVEL = env.choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if not DEBUG:
    SESSION_COOKIE_SECURE = env.boolean("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# TLS: on by default without DEBUG. Plain HTTP is redirected to HTTPS, except the health checks
# (a load balancer probes them over plain HTTP); browsers are told to use HTTPS only (HSTS).
SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env.boolean("SECURE_HSTS_PRELOAD", False)
# Preloading is the operator's commitment (submitting the domain to the browsers' list, for all
# its subdomains, hard to undo): off unless asked for, and then check --deploy need not remind.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Behind a TLS-terminating proxy the request reaches Django as HTTP; the proxy's X-Forwarded-Proto
# says what the client used. Trusted only when configured: a client could send it too, so the
# proxy must set (overwrite) it, as saas/proxy.py's nginx does.
TRUST_X_FORWARDED_PROTO = env.boolean("TRUST_X_FORWARDED_PROTO", False)
if TRUST_X_FORWARDED_PROTO:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The port in links built from a Host header that names none (dicomweb-client sends none): the
# one the client connected to, which saas/proxy.py's nginx sets (overwriting a client's); without
# a proxy a client can only change the links of its own answers. PUBLIC_BASE_URL overrides both.
USE_X_FORWARDED_PORT = True
