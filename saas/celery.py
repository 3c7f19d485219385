"""The Celery app. Queues: ingest, tiering, billing, webhooks (and celery for the rest)."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings.base")

app = Celery("strata")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    "webhook-sweep": {"task": "tenants.tasks.webhook_sweep", "schedule": crontab(minute="*/5")},
    "archive-orphans": {
        "task": "archive.tasks.archive_orphans_cleanup",
        "schedule": crontab(minute="*/15"),
    },
    "archive-ingest-jobs": {
        "task": "archive.tasks.ingest_jobs_sweep",
        "schedule": crontab(minute="*/5"),
    },
    "archive-replicas": {"task": "archive.tasks.replica_tick", "schedule": crontab()},
    "archive-restores-poll": {"task": "archive.tasks.restores_poll", "schedule": crontab()},
    "archive-trash-purge": {
        "task": "archive.tasks.trash_purge_due",
        "schedule": crontab(minute="*/10"),
    },
    "archive-derived-objects-sweep": {
        "task": "archive.tasks.derived_objects_sweep",
        "schedule": crontab(minute="*/10"),
    },
    "archive-tier-moves": {
        "task": "archive.tasks.tier_moves_dispatch",
        "schedule": crontab(minute="*"),
    },
    "archive-tier-policy": {
        "task": "archive.tasks.tier_policy_evaluate",
        "schedule": crontab(minute="*/15"),
    },
    # Daily, one task per organization: index = ledger = object store (archive.reconcile).
    "archive-reconcile": {
        "task": "archive.tasks.reconcile_dispatch",
        "schedule": crontab(minute=20, hour=3),
    },
    "archive-dimse-activity-purge": {
        "task": "archive.tasks.dimse_activity_purge",
        "schedule": crontab(minute=40),
    },
    "billing-rollup": {"task": "billing.tasks.billing_rollup", "schedule": crontab(minute="*/5")},
    "billing-finalize": {
        "task": "billing.tasks.billing_finalize_due",
        "schedule": crontab(minute=15, hour="*"),
    },
}
app.conf.task_default_queue = "celery"
# Work is routed by app to its own queue so each can get its own workers (see DESIGN.md).
app.conf.task_routes = {
    "tenants.tasks.webhook_*": {"queue": "webhooks"},
    "archive.tasks.ingest_*": {"queue": "ingest"},
    "archive.tasks.study_*": {"queue": "ingest"},
    "archive.tasks.tier_*": {"queue": "tiering"},
    "archive.tasks.replica_*": {"queue": "tiering"},
    "billing.tasks.*": {"queue": "billing"},
}
