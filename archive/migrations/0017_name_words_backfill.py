"""The person-name words (``archive.index.names``) of the studies indexed before fuzzy matching
existed: PatientName into PatientNameWord, ReferringPhysicianName into
ReferringPhysicianNameWord. Ingest writes them for new studies from now on.

In batches of ``BATCH`` studies, each batch its own transaction, so that a large index is not one
transaction and an interrupted run resumes: words already there are skipped (the unique
constraints).
"""

import logging
from typing import Any

from django.db import migrations, transaction

from archive.index.names import name_word_rows

logger = logging.getLogger("archive.migrations")

BATCH = 2000
# Study column -> its word table (``archive.models.NAME_WORD_MODELS``).
TABLES = {"patient_name": "PatientNameWord", "referring_physician": "ReferringPhysicianNameWord"}


def backfill(apps: Any, schema_editor: Any) -> None:
    Study = apps.get_model("archive", "Study")
    word_models = {field: apps.get_model("archive", name) for field, name in TABLES.items()}
    db = schema_editor.connection.alias
    last, studies, words = 0, 0, 0
    while True:
        batch = list(
            Study.objects.using(db)
            .filter(pk__gt=last)
            .order_by("pk")
            .only("pk", "organization_id", *TABLES)[:BATCH]
        )
        if not batch:
            break
        with transaction.atomic(using=db):
            for field, model in word_models.items():
                rows = name_word_rows(model, field, batch)
                model.objects.using(db).bulk_create(rows, ignore_conflicts=True)
                words += len(rows)
        last = batch[-1].pk
        studies += len(batch)
    if studies:
        logger.info("person-name words of %d studies indexed (%d words)", studies, words)


class Migration(migrations.Migration):
    atomic = False  # one transaction per batch (see above)

    dependencies = [("archive", "0016_name_words")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
