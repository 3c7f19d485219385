"""Patient-name search indexes on PostgreSQL: prefix wildcards (``CURIE^M*``) use the
text_pattern_ops index, infix ones (``*URIE*``) the trigram index. SQLite scans; fine at its size."""

from django.db import migrations

CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS study_org_name_upper ON archive_study "
    "(organization_id, upper(patient_name) text_pattern_ops)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS study_name_upper_trgm ON archive_study "
    "USING gin (upper(patient_name) gin_trgm_ops)",
]
DROP = [
    "DROP INDEX CONCURRENTLY IF EXISTS study_name_upper_trgm",
    "DROP INDEX CONCURRENTLY IF EXISTS study_org_name_upper",
]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("archive", "0001_initial")]
    operations = [migrations.RunPython(_run(CREATE), _run(DROP))]
