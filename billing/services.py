"""Every write of billing: plans and subscriptions, invoice finalization and corrections, budgets."""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.forecast import forecast_month
from billing.invoicing import invoice_compute
from billing.meters import METERS, TIERS
from billing.models import (
    Budget,
    BudgetAlert,
    CreditNote,
    DocumentCounter,
    Invoice,
    InvoiceLine,
    PlanPrice,
    PricePlan,
    Rollup,
    Subscription,
)
from billing.periods import month_bounds, month_start
from billing.pricing import parse_tiers, round_money
from tenants.context import Actor
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Membership, Organization
from tenants.roles import Role
from tenants.services import audit_record, webhook_event_emit

logger = logging.getLogger(__name__)


def _next_number(series: str, year: int) -> str:
    """Take the next gap-free number. Precondition: inside the transaction that uses it."""
    DocumentCounter.objects.get_or_create(series=series, year=year)
    counter = DocumentCounter.objects.select_for_update().get(series=series, year=year)
    counter.last += 1
    counter.save(update_fields=["last"])
    return f"{series}-{year}-{counter.last:06d}"


# --- plans -----------------------------------------------------------------------------------


def _decimal(value: Any, field: str, *, minimum: Decimal = Decimal(0)) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationFailed("Invalid price.", fields={field: ["Enter a number."]}) from None
    if not number.is_finite() or number < minimum:
        raise ValidationFailed("Invalid price.", fields={field: [f"Must be at least {minimum}."]})
    return number


def plan_price_validate(data: dict[str, Any]) -> dict[str, Any]:
    """Check one price definition; returns the cleaned fields for PlanPrice."""
    meter = data.get("meter")
    if meter not in METERS:
        raise ValidationFailed(
            "Unknown meter.",
            fields={"meter": [f"Unknown meter {meter!r}; known: {', '.join(METERS)}."]},
        )
    tier = data.get("tier") or ""
    if tier and tier not in TIERS:
        raise ValidationFailed(
            "Unknown tier.",
            fields={"tier": [f"Unknown tier {tier!r}; tiers are {', '.join(TIERS)}."]},
        )
    model = data.get("model", PlanPrice.Model.PER_UNIT)
    if model not in PlanPrice.Model.values:
        raise ValidationFailed(
            "Unknown pricing model.",
            fields={"model": [f"Choose one of {', '.join(PlanPrice.Model.values)}."]},
        )
    tiers = data.get("tiers") or []
    if model in (PlanPrice.Model.GRADUATED, PlanPrice.Model.VOLUME):
        if not tiers:
            raise ValidationFailed(
                "Tiers are required.", fields={"tiers": ["Graduated and volume prices need tiers."]}
            )
        parse_tiers(tiers)
    return {
        "meter": meter,
        "tier": tier,
        "model": model,
        "unit_price": _decimal(data.get("unit_price", 0), "unit_price"),
        "tiers": tiers,
        "package_size": _decimal(
            data.get("package_size", 1), "package_size", minimum=Decimal("0.000001")
        ),
        "package_price": _decimal(data.get("package_price", 0), "package_price"),
        "included_quantity": _decimal(data.get("included_quantity", 0), "included_quantity"),
    }


def plan_create(
    *,
    code: str,
    name: str,
    currency: str,
    prices: list[dict[str, Any]],
    actor: Actor,
    monthly_minimum: Decimal | None = None,
    description: str = "",
    is_default: bool = False,
) -> PricePlan:
    if not code or not name:
        raise ValidationFailed(
            "Invalid plan.", fields={"code" if not code else "name": ["This field is required."]}
        )
    if len(currency or "") != 3 or not currency.isalpha():
        raise ValidationFailed(
            "Invalid plan.", fields={"currency": ["Use a 3-letter ISO 4217 code, e.g. USD."]}
        )
    cleaned = [plan_price_validate(p) for p in prices]
    keys = [(p["meter"], p["tier"]) for p in cleaned]
    if len(keys) != len(set(keys)):
        raise ValidationFailed(
            "Invalid plan.", fields={"prices": ["Each meter and tier may be priced once."]}
        )
    if PricePlan.objects.filter(code=code).exists():
        raise ValidationFailed(
            "Invalid plan.", fields={"code": [f"A plan with code '{code}' exists."]}
        )
    with transaction.atomic():
        if is_default:
            PricePlan.objects.filter(is_default=True).update(is_default=False)
        plan = PricePlan.objects.create(
            code=code,
            name=name,
            currency=currency.upper(),
            monthly_minimum=monthly_minimum,
            description=description,
            is_default=is_default,
        )
        PlanPrice.objects.bulk_create([PlanPrice(plan=plan, **p) for p in cleaned])
        audit_record(
            org=None,
            actor=actor,
            action="billing.plan_created",
            target=plan,
            details={"prices": len(cleaned)},
        )
    return plan


def subscription_change(
    *, org: Organization, plan: PricePlan, starts_at: datetime, actor: Actor
) -> Subscription:
    """Put ``org`` on ``plan`` from ``starts_at`` (an hour boundary); the current plan ends there.

    A change in the middle of a month prorates both plans by time on that month's invoice.
    Changes may not reach back into a month that already has a finalized invoice.
    """
    if timezone.is_naive(starts_at):
        raise ValidationFailed(
            "Invalid start.", fields={"starts_at": ["Include a timezone (UTC)."]}
        )
    if starts_at != starts_at.replace(minute=0, second=0, microsecond=0):
        raise ValidationFailed(
            "Invalid start.",
            fields={"starts_at": ["Plan changes take effect on a whole hour (UTC)."]},
        )
    if (
        Invoice.objects.for_org(org)
        .filter(status=Invoice.Status.FINALIZED, period_end__gt=starts_at)
        .exists()
    ):
        raise Conflict(
            "That month is already invoiced; a plan change must start after it.",
            code="period_finalized",
        )
    with transaction.atomic():
        Organization.objects.select_for_update().get(pk=org.pk)
        Subscription.objects.for_org(org).filter(starts_at__gte=starts_at).delete()
        current = (
            Subscription.objects.for_org(org)
            .filter(starts_at__lt=starts_at)
            .order_by("-starts_at")
            .first()
        )
        if current is not None and (current.ends_at is None or current.ends_at > starts_at):
            current.ends_at = starts_at
            current.save(update_fields=["ends_at"])
        sub = Subscription.objects.create(organization=org, plan=plan, starts_at=starts_at)
        audit_record(
            org=org,
            actor=actor,
            action="billing.plan_changed",
            target=sub,
            details={"plan": plan.code, "starts_at": starts_at.isoformat()},
        )
    return sub


# --- invoices --------------------------------------------------------------------------------


def invoice_finalize(
    *, org: Organization, period_start: datetime, actor: Actor, now: datetime | None = None
) -> Invoice:
    """Freeze the month's invoice: number it, store its lines, emit ``invoice.finalized``.

    All in one transaction: a crash leaves no invoice or a complete one. The organization row is
    locked, so two finalizers of the same month cannot both pass the "not yet finalized" check.
    """
    start, end = month_bounds(month_start(period_start))
    if end > (now or timezone.now()):
        raise Conflict(
            f"The month {start:%Y-%m} has not ended yet; its invoice is still a draft.",
            code="period_open",
        )
    with transaction.atomic():
        Organization.objects.select_for_update().get(pk=org.pk)
        if (
            Invoice.objects.for_org(org)
            .filter(period_start=start, status=Invoice.Status.FINALIZED)
            .exists()
        ):
            raise Conflict(
                f"The invoice for {start:%Y-%m} is already finalized.", code="already_finalized"
            )
        draft = invoice_compute(org=org, period_start=start)
        invoice = Invoice.objects.create(
            organization=org,
            number=_next_number("INV", start.year),
            period_start=start,
            period_end=end,
            currency=draft.currency,
            subtotal=draft.subtotal,
            minimum_adjustment=draft.minimum_adjustment,
            total=draft.total,
            finalized_at=now or timezone.now(),
        )
        InvoiceLine.objects.bulk_create(
            [
                InvoiceLine(
                    organization=org,
                    invoice=invoice,
                    position=i,
                    kind=ln.kind,
                    meter=ln.meter,
                    dimension_key=ln.dimension_key,
                    description=ln.description[:300],
                    usage_start=ln.usage_start,
                    usage_end=ln.usage_end,
                    plan_code=ln.plan_code,
                    base_quantity=ln.base_quantity,
                    quantity=ln.quantity.quantize(Decimal("0.000000001")),
                    unit=ln.unit,
                    amount=ln.amount,
                    breakdown=ln.breakdown,
                )
                for i, ln in enumerate(draft.lines, start=1)
            ]
        )
        audit_record(
            org=org,
            actor=actor,
            action="invoice.finalized",
            target=invoice,
            details={"total": str(invoice.total), "currency": invoice.currency},
        )
        webhook_event_emit(
            org=org,
            event_type="invoice.finalized",
            payload={
                "invoice": invoice.number,
                "period_start": start.isoformat(),
                "period_end": end.isoformat(),
                "currency": invoice.currency,
                "total": str(invoice.total),
            },
        )
    return invoice


def invoice_void(*, org: Organization, invoice: Invoice, reason: str, actor: Actor) -> Invoice:
    """Platform staff's correction: the invoice stays on record as void; the month is reissued."""
    if invoice.organization_id != org.pk:
        raise NotFound("Invoice not found.")
    if not (reason or "").strip():
        raise ValidationFailed(
            "A reason is required.", fields={"reason": ["Say why the invoice is voided."]}
        )
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status == Invoice.Status.VOID:
            raise Conflict("The invoice is already void.", code="already_void")
        locked.status = Invoice.Status.VOID
        locked.voided_at = timezone.now()
        locked.void_reason = reason.strip()[:500]
        locked.save(update_fields=["status", "voided_at", "void_reason"])
        audit_record(
            org=org,
            actor=actor,
            action="invoice.voided",
            target=locked,
            details={"reason": locked.void_reason},
        )
    return locked


def credit_note_create(
    *, org: Organization, invoice: Invoice, amount: Decimal, reason: str, actor: Actor
) -> CreditNote:
    if invoice.organization_id != org.pk:
        raise NotFound("Invoice not found.")
    amount = round_money(_decimal(amount, "amount", minimum=Decimal("0.01")))
    if not (reason or "").strip():
        raise ValidationFailed(
            "A reason is required.", fields={"reason": ["Say why the credit is issued."]}
        )
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status != Invoice.Status.FINALIZED:
            raise Conflict(
                "Credit notes apply to finalized invoices only.", code="invoice_not_finalized"
            )
        credited = sum((c.amount for c in locked.credit_notes.all()), Decimal(0))
        if credited + amount > locked.total:
            raise ValidationFailed(
                "The credit exceeds the invoice.",
                fields={
                    "amount": [
                        f"At most {locked.total - credited} {locked.currency} remain creditable."
                    ]
                },
            )
        note = CreditNote.objects.create(
            organization=org,
            invoice=locked,
            number=_next_number("CN", timezone.now().year),
            amount=amount,
            reason=reason.strip()[:500],
            created_by=actor.user,
        )
        audit_record(
            org=org,
            actor=actor,
            action="invoice.credit_note_issued",
            target=note,
            details={"invoice": locked.number, "amount": str(amount)},
        )
    return note


def invoice_organization_ids() -> list[int]:
    """The organizations whose ended months may need an invoice: not closed, with any usage."""
    with_usage = Rollup.objects.values("organization_id")
    return list(
        Organization.objects.exclude(status=Organization.Status.CLOSED)
        .filter(pk__in=with_usage)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def invoices_finalize_due(
    *,
    org: Organization | None = None,
    now: datetime | None = None,
    grace: timedelta | None = None,
) -> list[Invoice]:
    """Finalize every ended month (plus grace) of ``org``, or of every organization with usage.

    Safe to run twice and at once: ``invoice_finalize`` locks the organization row, and a month
    finalized meanwhile is skipped. Without ``org`` one organization's failure is logged and does
    not stop the next one's; the beat job fans out one task per organization instead.
    """
    if org is not None:
        return _org_invoices_finalize_due(org=org, now=now, grace=grace)
    created: list[Invoice] = []
    for one in Organization.objects.filter(pk__in=invoice_organization_ids()).order_by("pk"):
        try:
            created.extend(_org_invoices_finalize_due(org=one, now=now, grace=grace))
        except Exception:
            logger.exception("Finalizing the invoices of organization %s failed", one.pk)
    return created


def _org_invoices_finalize_due(
    *, org: Organization, now: datetime | None, grace: timedelta | None
) -> list[Invoice]:
    now = now or timezone.now()
    grace = grace if grace is not None else timedelta(days=settings.BILLING_GRACE_DAYS)
    last_month_start = month_start(now - grace)  # months starting before this have ended + grace
    created: list[Invoice] = []
    first = Rollup.objects.for_org(org).order_by("hour").values_list("hour", flat=True).first()
    if first is None:
        return created
    month = month_start(first)
    while month < last_month_start:
        _, next_start = month_bounds(month)
        if next_start + grace > now:
            break
        if (
            not Invoice.objects.for_org(org)
            .filter(period_start=month, status=Invoice.Status.FINALIZED)
            .exists()
        ):
            with suppress(Conflict):  # another finalizer won the race
                created.append(
                    invoice_finalize(
                        org=org, period_start=month, actor=Actor.system("billing"), now=now
                    )
                )
        month = next_start
    return created


# --- budgets ---------------------------------------------------------------------------------


def budget_set(
    *, org: Organization, monthly_amount: Any, thresholds: list[Any], actor: Actor
) -> Budget:
    amount = _decimal(monthly_amount, "monthly_amount", minimum=Decimal("0.01"))
    clean: list[int] = []
    for t in thresholds or []:
        try:
            value = int(t)
        except (TypeError, ValueError):
            raise ValidationFailed(
                "Invalid thresholds.", fields={"thresholds": [f"{t!r} is not a whole percentage."]}
            ) from None
        if not 1 <= value <= 1000:
            raise ValidationFailed(
                "Invalid thresholds.",
                fields={"thresholds": ["Use percentages between 1 and 1000."]},
            )
        clean.append(value)
    if not clean:
        raise ValidationFailed(
            "Invalid thresholds.",
            fields={"thresholds": ["Choose at least one threshold, e.g. 50, 80, 100."]},
        )
    with transaction.atomic():
        budget, created = Budget.objects.update_or_create(
            organization=org,
            defaults={
                "monthly_amount": round_money(amount),
                "thresholds": sorted(set(clean)),
                "updated_at": timezone.now(),
            },
        )
        audit_record(
            org=org,
            actor=actor,
            action="budget.created" if created else "budget.updated",
            target=budget,
            details={"monthly_amount": str(budget.monthly_amount), "thresholds": budget.thresholds},
        )
    return budget


def _budget_recipients(org: Organization) -> list[str]:
    emails = (
        Membership.objects.for_org(org)
        .filter(role__in=[Role.BILLING, Role.OWNER])
        .values_list("user__email", flat=True)
    )
    return sorted({e for e in emails if e})


def _alert_notify(*, org: Organization, alert: BudgetAlert, currency: str) -> None:
    kind = "Forecast month-end spend" if alert.kind == BudgetAlert.Kind.FORECAST else "Spend so far"
    body = (
        f"{kind} for {org.name} in {alert.month:%B %Y} is {alert.amount} {currency}, "
        f"{alert.threshold}% or more of the monthly budget of {alert.budget_amount} {currency}.\n\n"
        f"Usage & billing: {settings.SITE_URL}/o/{org.slug}/billing/\n"
    )
    recipients = _budget_recipients(org)
    if recipients:
        send_mail(
            subject=f"[Strata] {org.name}: budget {alert.threshold}% reached ({alert.kind})",
            message=body,
            from_email=None,
            recipient_list=recipients,
        )


def budget_check(*, org: Organization, now: datetime | None = None) -> list[BudgetAlert]:
    """Fire each threshold once per month and kind (a unique row is the 'fired' flag)."""
    budget = Budget.objects.for_org(org).first()
    if budget is None:
        return []
    now = now or timezone.now()
    forecast = forecast_month(org=org, now=now)
    month: date = forecast.period_start.date()
    fired: list[BudgetAlert] = []
    for kind, amount in (
        (BudgetAlert.Kind.ACTUAL, forecast.actual_total),
        (BudgetAlert.Kind.FORECAST, forecast.projected_total),
    ):
        for threshold in budget.thresholds:
            if amount * 100 < budget.monthly_amount * threshold:
                continue
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        organization=org,
                        month=month,
                        threshold=threshold,
                        kind=kind,
                        amount=amount,
                        budget_amount=budget.monthly_amount,
                    )
                    webhook_event_emit(
                        org=org,
                        event_type="budget.threshold",
                        payload={
                            "month": month.strftime("%Y-%m"),
                            "kind": kind,
                            "threshold_percent": threshold,
                            "amount": str(amount),
                            "budget": str(budget.monthly_amount),
                            "currency": forecast.currency,
                        },
                    )
                    transaction.on_commit(
                        partial(_alert_notify, org=org, alert=alert, currency=forecast.currency)
                    )
            except IntegrityError:
                continue  # already fired this month
            fired.append(alert)
    return fired
