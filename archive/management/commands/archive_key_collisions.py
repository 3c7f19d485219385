"""``manage.py archive_key_collisions [--org <slug>] [--no-read]``: find index rows that name one
object between them, and index rows whose UIDs break DICOM's rules.

Before object keys were derived from digests, a key was the UIDs joined by ``/``: crafted UIDs
(``1.2.3/9`` as a series, ``9/9`` as an instance) made two instances share one key, and the second
one's bytes replaced the first's. This command tells a hospital whether that happened to it: each
object named by more than one index row is listed with, for every row, whether the object's bytes
are that row's (size and SHA-256 read back; ``--no-read`` compares sizes only). Each affected
organization gets an audit event, so that its admins see it in their own audit log.

Exits with status 1 when any object is shared (for a cron job or a pipeline), 0 otherwise.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from archive.ingest.dicom import uid_problem
from archive.models import Instance
from archive.storage import StorageUnavailable, store_for
from tenants.context import Actor
from tenants.models import Organization
from tenants.services import audit_record

ACTOR = Actor.system("key-collisions")


def _object_digest(instance: Instance) -> tuple[int, str] | None:
    """Size and SHA-256 of the object the row names, streamed; None when it cannot be read."""
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in store_for(instance.location).iter_bytes(
            key=instance.object_key, tier=instance.tier
        ):
            digest.update(chunk)
            size += len(chunk)
    except StorageUnavailable:
        return None
    return size, digest.hexdigest()


class Command(BaseCommand):
    help = "Report index rows that share one stored object, and rows with invalid UIDs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", help="Only this organization (its slug).")
        parser.add_argument(
            "--no-read",
            action="store_true",
            help="Compare sizes only (a HEAD per object) instead of reading the bytes back.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = Instance.objects.all()
        if options.get("org"):
            org = Organization.objects.filter(slug=options["org"]).first()
            if org is None:
                raise CommandError(f"No organization with slug {options['org']!r}.")
            rows = rows.filter(organization=org)
        shared = list(
            rows.values("location_id", "object_key")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .order_by("location_id", "object_key")
        )
        affected: dict[int, list[str]] = {}
        for group in shared:
            members = list(
                rows.filter(location_id=group["location_id"], object_key=group["object_key"])
                .select_related("location", "series", "study")
                .order_by("pk")
            )
            org_id = members[0].organization_id
            affected.setdefault(org_id, []).append(group["object_key"])
            self.stdout.write(
                f"organization {org_id}: object {group['object_key']} is named by "
                f"{len(members)} index rows:"
            )
            found = None if options["no_read"] else _object_digest(members[0])
            for member in members:
                self.stdout.write(
                    f"  instance {member.pk} (study {member.study.study_uid}, series "
                    f"{member.series.series_uid}, SOP {member.sop_instance_uid}): "
                    f"{self._verdict(member, found, read=not options['no_read'])}"
                )
        invalid = 0
        for pk, org_id, uids in (
            (row.pk, row.organization_id, (row.sop_instance_uid, row.series.series_uid))
            for row in rows.select_related("series").iterator(chunk_size=2000)
        ):
            problems = [u for u in uids if uid_problem(u) is not None]
            if problems:
                invalid += 1
                self.stdout.write(
                    f"organization {org_id}: instance {pk} has an invalid UID {problems[0]!r}"
                )
        for org_id, keys in affected.items():
            audit_record(
                org=Organization.objects.get(pk=org_id),
                actor=ACTOR,
                action="archive.key_collision_found",
                target_type="object",
                target_label=f"{len(keys)} shared object(s)",
                details={"object_keys": keys[:100]},
            )
        if not shared:
            self.stdout.write(
                f"No two index rows share an object ({invalid} row(s) with an invalid UID)."
            )
            return
        self.stdout.write(
            f"{len(shared)} object(s) named by more than one index row, in "
            f"{len(affected)} organization(s); {invalid} row(s) with an invalid UID."
        )
        raise SystemExit(1)

    @staticmethod
    def _verdict(member: Instance, found: tuple[int, str] | None, *, read: bool) -> str:
        if read:
            if found is None:
                return "object not readable now (archive tier or store unavailable)"
            size, sha = found
            if size == member.size_bytes and sha == member.sha256:
                return "bytes match"
            return "bytes do not match (the object holds another instance's bytes)"
        try:
            head = store_for(member.location).head(key=member.object_key, tier=member.tier)
        except StorageUnavailable:
            head = None
        if head is None:
            return "object missing"
        if head.size != member.size_bytes:
            return "bytes do not match (size differs)"
        return "size matches (bytes not read)"
