"""``manage.py dr_drill --org <slug> [--sample N]``: read back a random sample of replicated
instances from the organization's replica location and verify their SHA-256 against the index.

Prints a report and exits with status 1 when anything is missing or damaged (so that a cron job
or a CI pipeline notices), 0 when every sampled replica verified.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from archive.replicas.drill import DRILL_DEFAULT_SAMPLE, DRILL_MAX_SAMPLE, replica_drill
from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.labels import bytes_label
from tenants.models import Organization


class Command(BaseCommand):
    help = "Disaster-recovery drill: verify a random sample of an organization's replica."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="The organization's slug.")
        parser.add_argument(
            "--sample",
            type=int,
            default=DRILL_DEFAULT_SAMPLE,
            help=f"How many replicated instances to read back (1-{DRILL_MAX_SAMPLE}, "
            f"default {DRILL_DEFAULT_SAMPLE}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"No organization with the slug {options['org']!r}.")
        try:
            check = replica_drill(
                org=org, sample=options["sample"], actor=Actor.system("manage.py dr_drill")
            )
        except ServiceError as exc:
            details = "; ".join(m for msgs in (exc.fields or {}).values() for m in msgs)
            raise CommandError(f"{exc.message} {details}".strip()) from None
        out = self.stdout
        out.write(f"DR drill {check.pk} of {org.name} ({org.slug})")
        out.write(f"  replica location: {check.location.name} (id {check.location_id})")
        out.write(f"  sampled:    {check.sampled}")
        out.write(f"  verified:   {check.verified}")
        out.write(f"  missing:    {check.missing}")
        out.write(f"  mismatched: {check.mismatched}")
        out.write(f"  bytes read: {bytes_label(check.bytes_read)} ({check.bytes_read} bytes)")
        if check.finished_at is not None:
            seconds = (check.finished_at - check.started_at).total_seconds()
            out.write(f"  duration:   {seconds:.1f} s")
        if check.sampled == 0:
            out.write(
                self.style.WARNING("Nothing is replicated yet: there was nothing to read back.")
            )
        for problem in check.problems:
            out.write(
                f"  {problem['problem'].upper():<10} {problem['sop_instance_uid']}: "
                f"{problem.get('detail', '')}"
            )
        if check.missing or check.mismatched:
            raise CommandError(
                f"{check.missing + check.mismatched} of {check.sampled} sampled replicas are "
                "missing or damaged; they were queued to be copied again."
            )
        if check.sampled:
            out.write(self.style.SUCCESS(f"All {check.sampled} sampled replicas verified."))
