from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.models import Organization
from tenants.services import token_create


class Command(BaseCommand):
    help = "Create an API token for an organization; prints the secret alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", required=True, help="comma-separated, e.g. dicom:read,dicom:write"
        )
        parser.add_argument(
            "--expires-at", default=None, help="ISO 8601 date-time (UTC if no offset)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"No organization with slug '{options['org']}'.")
        expires_at: datetime | None = None
        if options["expires_at"]:
            expires_at = parse_datetime(options["expires_at"])
            if expires_at is None:
                raise CommandError(
                    "--expires-at must be an ISO 8601 date-time, e.g. 2027-01-31T00:00:00Z."
                )
            if timezone.is_naive(expires_at):
                expires_at = timezone.make_aware(expires_at, UTC)
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            token, secret = token_create(
                org=org,
                name=options["name"],
                scopes=scopes,
                expires_at=expires_at,
                actor=Actor.system("manage.py create_token"),
            )
        except ServiceError as exc:
            details = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items())
            raise CommandError(f"{exc.message} {details}".strip()) from None
        self.stderr.write(
            f"Created token {token.name} ({token.prefix}) for {org.slug}, scopes {','.join(token.scopes)}"
        )
        self.stdout.write(secret)
