from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.management.base import BaseCommand, CommandError, CommandParser

from saas.env import browse_url
from tenants.context import Actor
from tenants.models import Membership, Organization
from tenants.roles import Role
from tenants.services import organization_create

DEMO_EMAIL = "owner@demo-hospital.example"
DEMO_PASSWORD = "strata-demo-2026"  # noqa: S105 - a published demo login for the local demo only

MAX_HISTORY_STUDIES = 5000

STAFF = [
    ("radiology.admin@demo-hospital.example", Role.ADMIN),
    ("finance@demo-hospital.example", Role.BILLING),
    ("compliance@demo-hospital.example", Role.AUDITOR),
    ("radiologist@demo-hospital.example", Role.MEMBER),
]


def demo_password_ensure(user: AbstractBaseUser) -> None:
    """Make the documented demo password sign this account in.

    Checking the password itself rather than ``has_usable_password()``: an account made by
    ``get_or_create`` has an empty password, which Django counts as usable although nothing
    matches it, so a database seeded by an older version is repaired by running this again.
    """
    if not user.check_password(DEMO_PASSWORD):
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])


class Command(BaseCommand):
    help = "Create (or keep) the demo hospitals and their accounts for a local run. Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true")
        parser.add_argument(
            "--history-studies",
            type=int,
            default=None,
            help="Studies in the demo hospital's history (default 400: two years of studies, "
            "the older half imported from its old PACS at go-live).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = options.get("history_studies")
        if count is not None and not 1 <= count <= MAX_HISTORY_STUDIES:
            # Checked before anything is written: a refused seed leaves no half-made demo.
            raise CommandError(
                f"--history-studies must be between 1 and {MAX_HISTORY_STUDIES:,} "
                f"(each study is real DICOM stored on this machine); got {count}."
            )
        actor = Actor.system("manage.py seed_demo")
        User = get_user_model()
        org = Organization.objects.filter(slug="demo-hospital").first()
        if org is None:
            org = organization_create(
                name="Demo General Hospital",
                slug="demo-hospital",
                owner_email=DEMO_EMAIL,
                actor=actor,
                # With its password given, the owner is not sent a "set your password" email.
                owner_password=DEMO_PASSWORD,
            )
        owner = User.objects.get(email=DEMO_EMAIL)
        demo_password_ensure(owner)
        owner.first_name, owner.last_name = "Dana", "Owner"
        owner.is_staff = owner.is_superuser = True  # the local demo's owner is also platform staff
        owner.save(update_fields=["first_name", "last_name", "is_staff", "is_superuser"])
        for email, role in STAFF:
            user, created = User.objects.get_or_create(username=email, defaults={"email": email})
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
            else:
                demo_password_ensure(user)
            Membership.objects.get_or_create(user=user, organization=org, defaults={"role": role})
        second = Organization.objects.filter(slug="demo-imaging-center").first()
        if second is None:
            second = organization_create(
                name="Demo Imaging Center",
                slug="demo-imaging-center",
                owner_email=DEMO_EMAIL,
                actor=actor,
            )
        # The year comes first: it is the organization's history, before today's images.
        from saas.demo import demo_year

        year = (
            demo_year(org=org, studies=options["history_studies"])
            if options.get("history_studies") is not None
            else demo_year(org=org)
        )
        studies = self._ingest_demo_studies(org, again=year.skipped)
        from archive.models import DicomAE

        if not DicomAE.objects.filter(ae_title="DEMO_HOSPITAL").exists():
            from archive.ae_titles.services import ae_create

            ae_create(
                org=org,
                ae_title="DEMO_HOSPITAL",
                allowed_calling_ae_titles=[],
                allowed_networks=[],
                allow_any_caller=True,  # any local storescu; shown with its warning badge
                actor=actor,
            )
        if not options["quiet"]:
            # The address `manage.py serve` will listen on (STRATA_ADDR), not a fixed port; a
            # unix socket is reached through the proxy at SITE_URL.
            url = browse_url(settings.STRATA_ADDR) or f"{settings.SITE_URL}/"
            self.stdout.write(
                f"\nDemo ready: open {url} and sign in as\n"
                f"  email:    {DEMO_EMAIL}\n  password: {DEMO_PASSWORD}\n"
                f"Organizations: {org.slug}, {second.slug}. Other demo accounts use the same password:\n"
                + "".join(f"  {email} ({role})\n" for email, role in STAFF)
                + f"Demo images: {studies} studies ingested through the pipeline.\n"
                + (
                    f"Its year on Strata (since {year.go_live:%d %B %Y}): {year.studies} studies "
                    f"({year.imported} imported from the old PACS), {year.reads} reads, "
                    f"{year.restores} restores, "
                    f"{year.moved} instances moved by the archive policy, {year.invoices} "
                    f"invoices; replayed in {year.seconds:.0f} s.\n"
                    if not year.skipped
                    else ""
                )
                + f"Send more: STOW-RS to {url}dicomweb/studies (make a token with dicom:write),\n"
                + f"or C-STORE to called AE title DEMO_HOSPITAL at localhost:{settings.DICOM_SCP_PORT}.\n"
            )

    def _ingest_demo_studies(self, org: Organization, *, again: bool) -> int:
        """Today's images: a CT, an MR and a multi-frame tomosynthesis study, generated here and
        ingested for real, after the history (once)."""
        from archive.ingest.pipeline import instance_ingest, spool_chunks
        from archive.locations.selectors import location_primary
        from archive.models import Study
        from archive.storage import store_for
        from archive.synthetic import demo_studies, to_bytes

        if again:  # seeded before: the history and today's images are there
            return Study.objects.for_org(org).count()
        store = store_for(location_primary(org))
        for datasets in demo_studies():
            for ds in datasets:
                result = instance_ingest(org=org, spooled=spool_chunks(store, [to_bytes(ds)]))
                if not result.ok:
                    raise RuntimeError(f"demo ingest failed: {result.reason}")
        return Study.objects.for_org(org).count()
