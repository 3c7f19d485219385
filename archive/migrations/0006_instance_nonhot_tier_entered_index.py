"""The cost simulator's index of non-hot instances, per tier: by organization, tier and the time
they entered it (``tier_changed_at``; NULL when never moved, then ``received_at`` counts), so
that the instances still within their own tier's minimum storage duration (warm 30, cold 90,
archive 180 days) are one range of it per tier, with nothing read past that range. It replaces
the index of 0004 (without the tier among its keys, a tier's range read every other tier's
recent moves too). On PostgreSQL it carries the columns the inventory reads, for index-only
scans. Hot instances, the index's writes at ingest, are left out.

Raw SQL (a condition, and INCLUDE on PostgreSQL); the model's state is unchanged.
"""

from typing import Any

from django.db import migrations

NAME = "instance_nonhot_tier_entered"
OLD = "instance_nonhot_entered"


def _create(schema_editor: Any, name: str, keys: str, include: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        include = ""
    schema_editor.execute(
        f"CREATE INDEX {name} ON archive_instance ({keys}){include} WHERE tier <> 'hot'"
    )


def forward(apps: Any, schema_editor: Any) -> None:
    _create(
        schema_editor,
        NAME,
        "organization_id, tier, tier_changed_at",
        " INCLUDE (series_id, size_bytes, received_at)",
    )
    schema_editor.execute(f"DROP INDEX {OLD}")


def backward(apps: Any, schema_editor: Any) -> None:
    _create(
        schema_editor,
        OLD,
        "organization_id, tier_changed_at",
        " INCLUDE (series_id, tier, size_bytes, received_at)",
    )
    schema_editor.execute(f"DROP INDEX {NAME}")


class Migration(migrations.Migration):
    dependencies = [("archive", "0005_tiermove_lean_keys")]

    operations = [migrations.RunPython(forward, backward)]
