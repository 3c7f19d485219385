"""Two indexes for the access curve (and the cost simulator, which counts it in its inventory
statement):

- an organization's reads (``retrieve`` and ``download`` events; ``metadata`` requests are not
  reads) by study and time, so that the latest read of every study is grouped as the index
  streams in study order, neither sorting the reads nor hashing them, and without reading other
  organizations' logs or other kinds of events. On PostgreSQL it carries ``series_id`` (whether
  the read was of the whole study), for an index-only scan;
- an organization's series by study and modality, in the order in which the curve groups them
  per study and modality (without it, the series of every organization are read in study order
  and sorted by modality). Neither column changes after a series is created, so the counters
  updated at each ingest stay out of it.

Raw SQL (a condition, and INCLUDE on PostgreSQL); the model's state is unchanged.
"""

from typing import Any

from django.db import migrations

READS = "access_reads_org_study_at"
SERIES = "series_org_study_modality"


def forward(apps: Any, schema_editor: Any) -> None:
    include = " INCLUDE (series_id)" if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {READS} ON archive_accessevent (organization_id, study_id, at){include} "
        "WHERE kind IN ('retrieve', 'download')"
    )
    schema_editor.execute(
        f"CREATE INDEX {SERIES} ON archive_series (organization_id, study_id, modality)"
    )


def backward(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(f"DROP INDEX {READS}")
    schema_editor.execute(f"DROP INDEX {SERIES}")


class Migration(migrations.Migration):
    dependencies = [("archive", "0006_instance_nonhot_tier_entered_index")]

    operations = [migrations.RunPython(forward, backward)]
