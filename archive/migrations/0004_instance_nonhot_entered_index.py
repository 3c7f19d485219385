"""An index for the cost simulator's inventory: the non-hot instances of an organization by the
time they entered their tier (``tier_changed_at``; ``received_at`` when never moved), so that the
ones that entered it recently (their minimum storage duration still running) are found without
reading every instance row. On PostgreSQL it carries the columns the inventory reads from them,
for an index-only scan. Hot instances, the index's writes at ingest, are left out.

Raw SQL (a condition, and INCLUDE on PostgreSQL); the model's state is unchanged.
"""

from typing import Any

from django.db import migrations

NAME = "instance_nonhot_entered"


def create(apps: Any, schema_editor: Any) -> None:
    include = ""
    if schema_editor.connection.vendor == "postgresql":
        include = " INCLUDE (series_id, tier, size_bytes, received_at)"
    schema_editor.execute(
        f"CREATE INDEX {NAME} ON archive_instance (organization_id, tier_changed_at)"
        f"{include} WHERE tier <> 'hot'"
    )


def drop(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(f"DROP INDEX {NAME}")


class Migration(migrations.Migration):
    dependencies = [("archive", "0003_tiering_restores_retention_replicas")]

    operations = [migrations.RunPython(create, drop)]
