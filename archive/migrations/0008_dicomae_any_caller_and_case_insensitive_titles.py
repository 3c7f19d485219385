"""AE titles: the explicit "any caller" choice, and titles unique regardless of case.

- ``allow_any_caller``: an AE title with neither allowed calling AE titles nor allowed networks
  used to admit any caller from anywhere. From now on that needs this explicit choice. Existing
  AE titles with both lists empty get ``allow_any_caller = True``, so that no hospital's modality
  is refused after the upgrade without anyone having decided it; the portal and the API then show
  these titles with an "any caller" warning until an admin restricts them. The migration cannot
  write the organizations' audit log (it runs outside any request and actor); it logs the number
  and the titles it opened (no PHI), and the upgrade notes say so.
- ``UPPER(ae_title)`` unique: ``PACS`` of one hospital and ``pacs`` of another would be confused.
  Titles that already differ only in case are not renamed (either choice would cut one hospital's
  modalities off): the migration stops and names them, for an operator to resolve first.
"""

import logging
from collections import defaultdict
from typing import Any

import django.db.models.functions.text
from django.db import migrations, models

logger = logging.getLogger("archive.migrations")


def refuse_case_duplicates(apps: Any, schema_editor: Any) -> None:
    DicomAE = apps.get_model("archive", "DicomAE")
    by_upper: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for title, org_id in DicomAE.objects.values_list("ae_title", "organization_id"):
        by_upper[title.upper()].append((title, org_id))
    clashes = [titles for titles in by_upper.values() if len(titles) > 1]
    if clashes:
        listed = "; ".join(
            ", ".join(f"{title!r} (organization {org_id})" for title, org_id in sorted(group))
            for group in clashes
        )
        raise RuntimeError(
            "AE titles must be unique regardless of case, but these differ only in case: "
            f"{listed}. Agree with the hospitals which one keeps its title, add a new title for "
            "the other (its senders must be reconfigured), delete the old one, then migrate again."
        )


def open_unrestricted(apps: Any, schema_editor: Any) -> None:
    """What admitted any caller before keeps doing so, now as an explicit choice."""
    DicomAE = apps.get_model("archive", "DicomAE")
    opened = [
        (pk, title)
        for pk, title, calling, networks in DicomAE.objects.values_list(
            "pk", "ae_title", "allowed_calling_ae_titles", "allowed_networks"
        )
        if not calling and not networks
    ]
    if opened:
        DicomAE.objects.filter(pk__in=[pk for pk, _ in opened]).update(allow_any_caller=True)
        logger.warning(
            "%d AE title(s) without restrictions now marked allow_any_caller (unchanged "
            "behaviour; restrict them in the portal): %s",
            len(opened),
            ", ".join(title for _, title in opened),
        )


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0007_curve_reads_and_series_indexes"),
    ]

    operations = [
        migrations.RunPython(refuse_case_duplicates, migrations.RunPython.noop),
        migrations.AddField(
            model_name="dicomae",
            name="allow_any_caller",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(open_unrestricted, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="dicomae",
            constraint=models.UniqueConstraint(
                django.db.models.functions.text.Upper("ae_title"),
                name="archive_dicomae_title_upper_unique",
            ),
        ),
    ]
