from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.services import organization_create


class Command(BaseCommand):
    help = "Create an organization (hospital) with its first owner."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner-email", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            org = organization_create(
                name=options["name"],
                slug=options["slug"],
                owner_email=options["owner_email"],
                actor=Actor.system("manage.py create_organization"),
            )
        except ServiceError as exc:
            details = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items())
            raise CommandError(f"{exc.message} {details}".strip()) from None
        self.stdout.write(
            f"Created organization {org.slug} ({org.name}) owned by {options['owner_email']}"
        )
