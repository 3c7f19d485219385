"""Every demo account walks every portal page its role allows, at 1280, 1366 and 1920 px: nothing
overflows its card, no chart label leaves its chart, no button or link is cut off, no template
artefact ("None", "{}", "{{") shows, and the pages the role may not see answer 403 (or 404) and
are not in its navigation. A screenshot of each page at each width is kept (in the directory
named by STRATA_SCREENSHOTS, else the test's temporary directory) for a look.

The pages come from the URLconfs: a portal URL that is neither walked here nor excluded below
(with the reason) fails ``test_every_portal_page_is_walked_or_excluded``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from archive.models import (
    DicomAE,
    DicomAssociation,
    DicomDestination,
    DicomOperation,
    IngestFailure,
    IngestJob,
    Instance,
    PolicyVersion,
    RestoreRequest,
    Series,
    StorageLocation,
    Study,
)
from archive.reconcile.services import reconcile_run
from archive.restores.services import restore_for_read
from archive.retention.services import legal_hold_set, study_trash
from billing.metering import storage_delta
from billing.models import Invoice
from billing.rollups import rollup_run
from billing.services import budget_set, invoice_finalize
from saas.management.commands.seed_demo import DEMO_EMAIL, DEMO_PASSWORD, STAFF
from tenants.context import Actor
from tenants.models import (
    AuditEvent,
    Membership,
    Organization,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from tenants.roles import Perm, Role, role_permissions
from tenants.services import cors_origin_add, invitation_create, token_create
from tests.archive.test_restores_support import to_tier

pytestmark = pytest.mark.browser

ORG = "demo-hospital"
WIDTHS = (1280, 1366, 1920)
ACCOUNTS = [DEMO_EMAIL, *(email for email, _ in STAFF)]
STAFF_ONLY = "staff"  # a platform page: Strata's staff, whatever their role in an organization

# --- the pages -------------------------------------------------------------------------------


@dataclass
class Demo:
    """The rows the detail pages show, made on top of seed_demo so that no page is empty."""

    study: int = 0
    series: int = 0
    archived_study: int = 0
    archived_series: int = 0
    restore: int = 0
    job: int = 0
    event: int = 0
    invoice: int = 0
    ae: int = 0
    destination: int = 0
    association: int = 0
    location: int = 0
    webhook: int = 0
    member: int = 0


@dataclass(frozen=True)
class Page:
    """A GET page: its URL name, the permission it needs (any of several), its arguments after
    the organization's slug, and a variant name when one URL is walked in two states."""

    name: str
    perms: tuple[str, ...]
    args: Callable[[Demo], list[Any]] = lambda d: []
    query: str = ""
    variant: str = ""
    org: bool = True

    @property
    def key(self) -> str:
        return f"{self.name}.{self.variant}" if self.variant else self.name

    def url(self, demo: Demo) -> str:
        args = ([ORG] if self.org else []) + self.args(demo)
        return reverse(self.name, args=args) + self.query

    def allowed(self, perms: frozenset[str], is_staff: bool) -> bool:
        if STAFF_ONLY in self.perms:
            return is_staff
        return any(p in perms for p in self.perms)


def _p(name: str, *perms: str, **kw: Any) -> Page:
    return Page(name, perms or (Perm.ORG_VIEW,), **kw)


READ, WRITE, STORAGE = Perm.IMAGES_READ, Perm.IMAGES_WRITE, Perm.STORAGE_MANAGE
INVOICES, WEBHOOKS = Perm.INVOICES_VIEW, Perm.WEBHOOKS_MANAGE

# The usage report of last month and this one so far, a row per tier and day (its widest form).
_TODAY = date.today()
USAGE_REPORT = (
    f"?start={(_TODAY.replace(day=1) - timedelta(days=1)).replace(day=1)}&end={_TODAY}"
    "&group_by=tier&group_by=day&format=html"
)

PAGES: list[Page] = [
    _p("portal-home", org=False),
    _p("portal-account", org=False),
    _p("portal-dashboard"),
    # Studies, a study, its series viewer and downloads; an archived study needs a restore first.
    _p("portal-studies", READ),
    _p("portal-study", READ, args=lambda d: [d.study]),
    _p("portal-study", READ, args=lambda d: [d.archived_study], variant="archived"),
    _p("portal-study-download", READ, args=lambda d: [d.study]),
    _p("portal-series-view", READ, args=lambda d: [d.study, d.series]),
    _p(
        "portal-series-view",
        READ,
        args=lambda d: [d.archived_study, d.archived_series],
        variant="archived",
    ),
    _p("portal-series-download", READ, args=lambda d: [d.study, d.series]),
    _p("portal-study-restore", READ, args=lambda d: [d.archived_study]),
    _p("portal-restores", READ),
    _p("portal-restore", READ, args=lambda d: [d.restore]),
    _p("portal-trash", READ),
    _p("portal-holds", READ),
    # Ingest and DICOM connections.
    _p("portal-ingest", WRITE),
    _p("portal-ingest-import", WRITE),
    _p("portal-ingest-job", WRITE, args=lambda d: [d.job]),
    _p("portal-dicom", READ),
    _p("portal-dicom-association", READ, args=lambda d: [d.association]),
    _p("portal-ae-create", STORAGE),
    _p("portal-ae-edit", STORAGE, args=lambda d: [d.ae]),
    _p("portal-ae-delete", STORAGE, args=lambda d: [d.ae]),
    _p("portal-destination-create", STORAGE),
    _p("portal-destination-edit", STORAGE, args=lambda d: [d.destination]),
    _p("portal-destination-delete", STORAGE, args=lambda d: [d.destination]),
    # Storage, policies (the policy preview and its simulator are the page after "Preview"),
    # analytics.
    _p("portal-storage", STORAGE),
    _p("portal-location-create", STORAGE),
    _p("portal-location-edit", STORAGE, args=lambda d: [d.location]),
    _p("portal-location-delete", STORAGE, args=lambda d: [d.location]),
    _p("portal-policies", Perm.POLICIES_MANAGE),
    _p("portal-analytics", READ, Perm.POLICIES_MANAGE),
    # Usage & billing.
    _p("portal-billing", INVOICES),
    _p("portal-billing-invoices", INVOICES),
    _p("portal-billing-draft", INVOICES),
    _p("portal-billing-draft-line", INVOICES, args=lambda d: [1]),
    _p("portal-billing-invoice", INVOICES, args=lambda d: [d.invoice]),
    _p("portal-billing-invoice-line", INVOICES, args=lambda d: [d.invoice, 1]),
    _p("portal-billing-plan", INVOICES),
    _p("portal-billing-usage", INVOICES),
    _p("portal-billing-usage", INVOICES, query=USAGE_REPORT, variant="report"),
    _p("portal-billing-budget", Perm.BILLING_MANAGE),
    # The organization: members, tokens, CORS origins, webhooks, audit log.
    _p("portal-members", Perm.MEMBERS_VIEW),
    _p("portal-member-remove", Perm.MEMBERS_MANAGE, args=lambda d: [d.member]),
    _p("portal-tokens", Perm.TOKENS_MANAGE),
    _p("portal-cors-origins", Perm.SETTINGS_MANAGE),
    _p("portal-webhooks", WEBHOOKS),
    _p("portal-webhook-create", WEBHOOKS),
    _p("portal-webhook-detail", WEBHOOKS, args=lambda d: [d.webhook]),
    _p("portal-webhook-edit", WEBHOOKS, args=lambda d: [d.webhook]),
    _p("portal-webhook-delete", WEBHOOKS, args=lambda d: [d.webhook]),
    _p("portal-audit", Perm.AUDIT_READ),
    _p("portal-audit-detail", Perm.AUDIT_READ, args=lambda d: [d.event]),
    # Security: single sign-on and email domains, the second-factor policy, SCIM provisioning.
    _p("portal-security", Perm.SECURITY_MANAGE),
    _p("portal-security-mfa", Perm.SECURITY_MANAGE),
    _p("portal-scim", Perm.SECURITY_MANAGE),
    # Strata's staff.
    _p("platform-reconciliations", STAFF_ONLY, org=False),
]

_POST = "an action (POST only): its result is the page it redirects to, walked above"
EXCLUDED: dict[str, str] = {
    "portal-study-thumbnail": "an image, loaded by the studies page",
    "portal-series-thumbnail": "an image, loaded by the study page",
    "portal-instance-thumbnail": "an image, loaded by the series viewer",
    "portal-instance-rendered": "an image, loaded by the series viewer",
    "portal-frame-rendered": "an image, loaded by the series viewer",
    "portal-ingest-job-progress": "JSON the ingest job page polls",
    "portal-billing-draft-csv": "a download (CSV)",
    "portal-billing-draft-pdf": "a download (PDF)",
    "portal-billing-invoice-csv": "a download (CSV)",
    "portal-billing-invoice-pdf": "a download (PDF)",
    "portal-audit-export": "a download (CSV)",
    "portal-ingest-upload": _POST,
    "portal-ingest-upload-chunk": _POST,
    "portal-ingest-upload-finish": _POST,
    "portal-destination-test": _POST,
    "portal-storage-quota": _POST,
    "portal-replica-drill": _POST,
    "portal-location-test": _POST,
    "portal-location-test-clear": _POST,
    "portal-policy-activate": _POST,
    "portal-policy-plan": _POST,
    "portal-study-trash": _POST,
    "portal-study-untrash": _POST,
    "portal-study-hold": _POST,
    "portal-hold-lift": _POST,
    "portal-member-role": _POST,
    "portal-member-sessions-end": _POST,
    "portal-invitation-create": _POST,
    "portal-invitation-revoke": _POST,
    "portal-token-revoke": _POST,
    "portal-cors-origin-remove": _POST,
    "portal-webhook-toggle": _POST,
    "portal-webhook-rotate": _POST,
    "portal-webhook-test": _POST,
    "portal-security-provider": _POST,
    "portal-security-domain-add": _POST,
    "portal-security-domain-verify": _POST,
    "portal-security-domain-remove": _POST,
    "portal-scim-token-revoke": _POST,
}


def _url_patterns() -> list[tuple[str, URLPattern]]:
    """Every URL pattern of the site with its whole route."""
    found: list[tuple[str, URLPattern]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                found.append((prefix + str(p.pattern), p))

    walk(get_resolver().url_patterns, "")
    return found


def _portal_url_names() -> set[str]:
    """Named URLs of the portal: under /o/<slug>/ and /platform/, the home and the account."""
    return {
        p.name
        for route, p in _url_patterns()
        if p.name
        and (
            route.startswith(("o/<slug:org_slug>/", "platform/"))
            or p.name in ("portal-home", "portal-account")
        )
    }


def test_every_portal_page_is_walked_or_excluded() -> None:
    walked = {page.name for page in PAGES}
    assert walked.isdisjoint(EXCLUDED)
    assert sorted(_portal_url_names() - walked - set(EXCLUDED)) == [], "add the page to PAGES"
    assert sorted((walked | set(EXCLUDED)) - _portal_url_names()) == [], "no such URL any more"


# --- the checks, run in the page -------------------------------------------------------------

# Problems of the page as the browser lays it out, one string each:
# - an element of the content whose content is wider than its box and that does not scroll, or
#   that cuts it without an ellipsis and a title (the house's "cut" cells say what they cut);
# - a scrolling box (a table's wrapper) whose content does not fit: at these widths every table
#   fits its card;
# - a chart's text outside its svg's view box;
# - a button or link not wholly inside the window, its card, and every box that clips it.
LAYOUT_PROBLEMS = r"""
() => {
  const problems = [];
  const main = document.querySelector("main");
  if (!main) return ["no <main>"];
  const label = (el) => {
    const id = el.id ? "#" + el.id : "";
    const cls = typeof el.className === "string" && el.className.trim()
      ? "." + el.className.trim().split(/\s+/).join(".") : "";
    const text = (el.innerText || el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 50);
    return `${el.tagName.toLowerCase()}${id}${cls} "${text}"`;
  };
  const shown = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return false;
    const closed = el.closest("details:not([open])");
    if (closed && !el.closest("summary")) return false;
    for (let e = el; e; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === "none" || s.visibility === "hidden") return false;
      if (e.classList.contains("visually-hidden")) return false;
      if (s.position === "absolute" && s.clip && s.clip !== "auto") return false;
    }
    return true;
  };
  // The house's cut: an ellipsis, the whole value in a title.
  const cut = (el) => getComputedStyle(el).textOverflow === "ellipsis" && el.title;
  for (const el of main.querySelectorAll("*")) {
    if (el.closest("svg, input, select, textarea") || !shown(el)) continue;
    const s = getComputedStyle(el);
    if (s.display.startsWith("inline") && s.display !== "inline-block" && s.display !== "inline-flex") continue;
    const over = el.scrollWidth - el.clientWidth;
    if (over <= 1) continue;
    const ox = s.overflowX;
    if (ox === "auto" || ox === "scroll") {
      problems.push(`scrolls ${over}px: ${label(el)}`);
    } else if (ox === "visible") {
      problems.push(`overflows ${over}px: ${label(el)}`);
    } else if (!cut(el)) {
      problems.push(`clipped ${over}px without an ellipsis and a title: ${label(el)}`);
    }
  }
  for (const svg of main.querySelectorAll("svg[viewBox]")) {
    if (!shown(svg)) continue;
    const vb = svg.viewBox.baseVal;
    for (const t of svg.querySelectorAll("text")) {
      const b = t.getBBox();
      if (b.width === 0) continue;
      if (b.x < vb.x - 0.5 || b.y < vb.y - 0.5 || b.x + b.width > vb.x + vb.width + 0.5
          || b.y + b.height > vb.y + vb.height + 0.5) {
        problems.push(`chart text outside its view box: "${t.textContent}"`);
      }
    }
  }
  // Neighbouring x-axis labels of a chart must not run into each other.
  for (const axis of main.querySelectorAll("svg g.axis-x")) {
    if (!shown(axis)) continue;
    const boxes = [...axis.querySelectorAll("text")].map((t) => [t.textContent, t.getBBox()])
      .filter(([, b]) => b.width > 0).sort((a, b) => a[1].x - b[1].x);
    for (let i = 1; i < boxes.length; i++) {
      const [left, a] = boxes[i - 1];
      const [right, b] = boxes[i];
      if (a.x + a.width + 2 > b.x) problems.push(`chart labels touch: "${left}" and "${right}"`);
    }
  }
  // A select shows its chosen option whole (a text input scrolls its value; a select cannot).
  for (const select of main.querySelectorAll("select")) {
    const chosen = select.selectedOptions[0];
    if (!shown(select) || !chosen) continue;
    const s = getComputedStyle(select);
    const probe = document.createElement("span");
    Object.assign(probe.style, {font: s.font, whiteSpace: "pre", position: "absolute",
                                visibility: "hidden"});
    probe.textContent = chosen.textContent;
    document.body.appendChild(probe);
    const room = select.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
    if (probe.getBoundingClientRect().width > room + 1) {
      problems.push(`select cuts its choice: ${label(select).split(" ")[0]} "${chosen.textContent}"`);
    }
    probe.remove();
  }
  const vw = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > vw + 1) {
    problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth}px > ${vw}px`);
  }
  function* ancestors(el) {
    for (let e = el.parentElement; e && e !== main; e = e.parentElement) yield e;
  }
  const controls = main.querySelectorAll("a[href], button, .btn, input[type=submit], summary");
  for (const el of controls) {
    if (!shown(el) || [...ancestors(el)].some(cut)) continue;
    const r = el.getBoundingClientRect();
    if (r.left < -0.5 || r.right > vw + 0.5) {
      problems.push(`control outside the window: ${label(el)}`);
      continue;
    }
    for (let box = el.parentElement; box && box !== main; box = box.parentElement) {
      const s = getComputedStyle(box);
      const clips = s.overflowX !== "visible";
      if (!clips && !box.classList.contains("card")) continue;
      const b = box.getBoundingClientRect();
      if (r.left < b.left - 0.5 || r.right > b.right + 0.5) {
        problems.push(`control cut off by ${label(box).split(" ")[0]}: ${label(el)}`);
        break;
      }
    }
  }
  return problems;
}
"""

# Text a template left raw: a Python None, an empty dict or list, an unrendered tag or variable,
# or a script's undefined/NaN. Options of a select are skipped ("None" is an encryption choice).
ARTEFACTS = r"""
() => {
  const found = [];
  const bad = /(^|[^\w])(None|undefined|NaN)([^\w]|$)|\{\}|\[\]|\{\{|\}\}|\{%|%\}/;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const parent = node.parentElement;
    if (!parent || parent.closest("script, style, option, template, noscript")) continue;
    const text = node.textContent.trim();
    if (text && bad.test(text)) found.push(text.slice(0, 80));
  }
  for (const el of document.querySelectorAll("[title], [aria-label], [alt], input[value]")) {
    for (const name of ["title", "aria-label", "alt", "value"]) {
      const value = el.getAttribute(name);
      if (value && bad.test(value)) found.push(`${name}="${value.slice(0, 80)}"`);
    }
  }
  return found;
}
"""


def _screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("STRATA_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# --- the demo --------------------------------------------------------------------------------


def _demo_extras(org: Organization) -> Demo:
    """What seed_demo leaves empty: a restore, an archived study, trash and a hold, an ingest job
    with failures, a DICOM association and destination, a bucket, a webhook with a failed
    delivery, a token, an origin, an invitation, a budget, an invoice, a consistency check."""
    actor = Actor.system("manage.py seed_demo")
    demo = Demo()
    owner = get_user_model().objects.get(email=DEMO_EMAIL)
    studies = list(
        Study.objects.for_org(org)
        .filter(instance_count__gt=0, trashed_at__isnull=True, legal_hold=False)
        .order_by("pk")
    )
    in_archive = set(
        Instance.objects.for_org(org).filter(tier="archive").values_list("study_id", flat=True)
    )
    readable = [s for s in studies if s.pk not in in_archive]
    archived_ones = [s for s in studies if s.pk in in_archive]
    assert len(readable) >= 3 + (not archived_ones), "seed_demo made fewer studies than needed"
    # A study the viewer shows; one in the archive tier (the seed's, else one moved there here),
    # part of it being restored; one in the trash and one under legal hold.
    shown, trashed, held = readable[0], readable[-1], readable[-2]
    archived = archived_ones[0] if archived_ones else readable[1]
    demo.study = shown.pk
    first = Series.objects.filter(study=shown).order_by("series_number", "pk").first()
    assert first is not None
    demo.series = first.pk
    instances = list(Instance.objects.for_org(org).filter(study=archived).order_by("pk"))
    for instance in instances:
        if instance.tier != "archive":
            to_tier(instance, "archive")
    restore = restore_for_read(
        org=org, instances=instances[: max(1, len(instances) // 2)], actor=actor
    ) or (RestoreRequest.objects.filter(organization=org).order_by("-pk").first())
    assert restore is not None
    demo.restore = restore.pk
    demo.archived_study = archived.pk
    last = Series.objects.filter(study=archived).order_by("-series_number", "-pk").first()
    assert last is not None
    demo.archived_series = last.pk
    study_trash(org=org, study=trashed, actor=actor, reason="Duplicate of a study sent twice")
    legal_hold_set(org=org, study=held, actor=actor, reason="Litigation hold LH-2026-114")

    job = IngestJob.objects.create(
        organization=org,
        kind=IngestJob.Kind.IMPORT,
        state=IngestJob.State.DONE,
        source="s3://demo-hospital-legacy-pacs-export/2019/radiology/ct/",
        total_files=3,
        received=3,
        stored=2,
        failed=1,
        total_bytes=3 * 2**20,
        bytes_received=3 * 2**20,
        bytes_stored=2 * 2**20,
        created_by=owner,
        started_at=datetime.now(UTC) - timedelta(minutes=5),
        finished_at=datetime.now(UTC),
    )
    IngestFailure.objects.create(
        organization=org,
        job=job,
        source="2019/radiology/ct/IMG-0003-not-dicom-at-all-but-a-scanned-requisition.pdf",
        reason_code=0xC000,
        reason="Not a DICOM file: no DICM prefix at byte 128",
    )
    demo.job = job.pk

    ae = DicomAE.objects.filter(organization=org).first()
    assert ae is not None
    demo.ae = ae.pk
    demo.destination = DicomDestination.objects.create(
        organization=org,
        ae_title="READING-ROOM-1",
        host="reading-room-1.radiology.demo-hospital.example",
        port=104,
        description="Reading room workstation, second floor",
    ).pk
    association = DicomAssociation.objects.create(
        organization=org,
        dicom_ae=ae,
        called_ae=ae.ae_title,
        calling_ae="CT-SCANNER-EAST",
        address="2001:db8:85a3::8a2e:370:7334",
        started_at=datetime.now(UTC) - timedelta(seconds=4),
        ended_at=datetime.now(UTC),
        end=DicomAssociation.End.RELEASED,
        outcome=DicomOperation.Outcome.FAILURE,
        counts={"store": {"ok": 2, "failed": 1}},
    )
    DicomOperation.objects.create(
        organization=org,
        association=association,
        kind=DicomOperation.Kind.STORE,
        outcome=DicomOperation.Outcome.FAILURE,
        status=0xA700,
        completed=2,
        failed=1,
        bytes=2 * 2**20,
        comment="Out of resources: the organization's storage quota is reached",
    )
    demo.association = association.pk
    # The consistency check before the bucket below is added: the check lists every store, and
    # the demo's bucket has no credentials to list it with.
    reconcile_run(org=org)
    demo.location = StorageLocation.objects.create(
        organization=org,
        name="Disaster recovery copy, second region",
        kind=StorageLocation.Kind.S3,
        role=StorageLocation.Role.REPLICA,
        endpoint_url="https://s3.eu-central-2.wasabisys.example",
        region="eu-central-2",
        bucket="demo-hospital-dicom-disaster-recovery-replica",
        prefix="strata/replica/",
        access_key_id="AKIAEXAMPLEREPLICA01",
    ).pk

    endpoint = WebhookEndpoint.objects.create(
        organization=org,
        url="https://integration.demo-hospital.example/hooks/strata/invoices-and-restores",
        description="Finance and RIS integration",
        secret="whsec_demo",  # noqa: S106 - a test row, never sent anywhere
        event_types=["invoice.finalized", "restore.completed"],
    )
    event = WebhookEvent.objects.create(
        organization=org, type="invoice.finalized", payload={"invoice": 1}
    )
    delivery = WebhookDelivery.objects.create(
        organization=org,
        endpoint=endpoint,
        event=event,
        state=WebhookDelivery.State.FAILED,
        attempt_count=1,
    )
    WebhookAttempt.objects.create(
        organization=org,
        delivery=delivery,
        number=1,
        status_code=502,
        latency_ms=1234,
        error="Bad gateway",
        response_excerpt="<html><body>502 Bad Gateway: upstream integration-engine-01</body></html>",
    )
    demo.webhook = endpoint.pk
    token_create(org=org, name="PACS gateway, east wing", scopes=["dicom:read"], actor=actor)
    cors_origin_add(
        org=org, actor=actor, origin="https://viewer.demo-hospital.example", description="OHIF"
    )
    invitation_create(
        org=org, email="new.radiographer@demo-hospital.example", role=Role.MEMBER, actor=actor
    )
    budget_set(org=org, monthly_amount="500", thresholds=[50, 80, 100], actor=actor)
    member = Membership.objects.filter(organization=org, role=Role.MEMBER).first()
    assert member is not None
    demo.member = member.pk

    invoice = (
        Invoice.objects.for_org(org)
        .filter(status=Invoice.Status.FINALIZED, lines__isnull=False)
        .first()
    )
    if invoice is None:
        # A finalized month with a line to trace: last month's storage.
        last_month = datetime.now(UTC).replace(day=1) - timedelta(days=20)
        storage_delta(
            org=org, tier="hot", delta_bytes=40 * 2**30, at=last_month, idempotency_key="walk"
        )
        rollup_run(now=datetime.now(UTC))
        invoice = invoice_finalize(org=org, period_start=last_month, actor=actor)
    demo.invoice = invoice.pk
    audit = AuditEvent.objects.create(
        organization=org,
        action="integration.token_rotated_by_scheduled_maintenance",
        actor_label="token:pacs-gateway-radiology-east-wing-integration (abcd0001)",
        target_type="api_token",
        target_label="PACS gateway for the radiology department, east wing, building C",
        ip="2001:db8:85a3:1234:5678:8a2e:370:7334",
        details={"scopes": ["dicom:read", "dicom:write"], "rotated": True, "previous": {}},
    )
    demo.event = audit.pk
    assert PolicyVersion.objects.filter(organization=org).exists()
    rollup_run(now=datetime.now(UTC))  # the month's usage on the draft, line by line
    return demo


@pytest.fixture
def one_request_at_a_time(monkeypatch: Any) -> None:
    """On in-memory SQLite the live server's threads share the test's one connection, which
    cannot serve two requests at once (a page loading its thumbnails); PostgreSQL gives each
    thread its own and needs nothing of this."""
    if connection.vendor != "sqlite":
        return
    from django.core.handlers.wsgi import WSGIHandler

    lock = threading.Lock()
    handle = WSGIHandler.__call__

    def serialized(self: Any, environ: Any, start_response: Any) -> Any:
        with lock:
            return handle(self, environ, start_response)

    monkeypatch.setattr(WSGIHandler, "__call__", serialized)


@pytest.fixture
def demo(transactional_db: None, settings: Any, one_request_at_a_time: None) -> Iterator[Demo]:
    settings.ARCHIVE_FS_RESTORE_SECONDS = 3600  # the restore stays in progress during the walk
    call_command("seed_demo", quiet=True, history_studies=4)
    yield _demo_extras(Organization.objects.get(slug=ORG))


def _sign_in(page: Any, base: str, email: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))


def _check(page: Any, where: str) -> list[str]:
    problems = [f"{where}: {p}" for p in page.evaluate(LAYOUT_PROBLEMS)]
    problems += [f"{where}: template artefact {t!r}" for t in page.evaluate(ARTEFACTS)]
    return problems


@pytest.mark.parametrize("email", ACCOUNTS)
def test_demo_account_walks_every_page_it_may_see(
    demo: Demo, live_server: Any, browser_page: Any, email: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    user = get_user_model().objects.get(email=email)
    role = Membership.objects.get(organization__slug=ORG, user=user).role
    perms = role_permissions(role)
    shots = _screenshots(tmp_path)
    _sign_in(page, base, email)

    allowed = [p for p in PAGES if p.allowed(perms, user.is_staff)]
    refused = [p for p in PAGES if not p.allowed(perms, user.is_staff)]
    # The pages a role may not see answer 403 (a portal page) or 404 (a staff page), and its
    # navigation does not offer their sections.
    page.goto(f"{base}/o/{ORG}/")
    nav = page.get_by_role("navigation", name="Demo General Hospital")
    offered = set(nav.locator("a.nav-link").evaluate_all("links => links.map(a => a.pathname)"))
    for p in refused:
        status = page.request.get(base + p.url(demo), max_redirects=0).status
        assert status == (404 if STAFF_ONLY in p.perms else 403), (email, p.key, status)
        assert p.url(demo) not in offered, (email, p.key)
    # The POST-only actions answer GET with 405, never a page.
    for name, reason in EXCLUDED.items():
        if reason == _POST and role == Role.OWNER:
            url = _excluded_url(name)
            assert page.request.get(base + url, max_redirects=0).status == 405, name

    problems: list[str] = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for p in allowed:
            response = page.goto(base + p.url(demo))
            assert response is not None and response.status == 200, (email, p.key, width)
            page.wait_for_load_state("load")
            problems += _check(page, f"{p.key} at {width}")
            page.screenshot(path=str(shots / f"{role}-{p.key}-{width}.png"), full_page=True)
        if Perm.POLICIES_MANAGE in perms:
            # The policy preview and the simulator: the policies page after "Preview".
            page.goto(base + reverse("portal-policies", args=[ORG]))
            page.locator("#preview-button").click()
            expect(page.locator("#policy-preview")).to_be_visible()
            problems += _check(page, f"policy preview at {width}")
            page.screenshot(path=str(shots / f"{role}-policy-preview-{width}.png"), full_page=True)
        if refused:
            page.goto(base + refused[0].url(demo))
            problems += _check(page, f"403 {refused[0].key} at {width}")
            page.screenshot(path=str(shots / f"{role}-forbidden-{width}.png"), full_page=True)
    assert problems == [], "\n".join(problems)


def _excluded_url(name: str) -> str:
    """A URL of an excluded POST-only action (any id: the method is refused before it is read)."""
    pattern = next(p for _, p in _url_patterns() if p.name == name)
    converters = getattr(pattern.pattern, "converters", {})
    return reverse(name, kwargs={"org_slug": ORG, **dict.fromkeys(converters, 1)})
