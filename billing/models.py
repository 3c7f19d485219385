"""Metering (usage events, the storage ledger, rollups), price plans, invoices and budgets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.meters import LEDGER_METERS, METERS, STORAGE, TIERS
from tenants.models import Organization, OrgQuerySet

METER_CHOICES = [(k, m.label) for k, m in METERS.items()]
TIER_CHOICES = [(t, t.capitalize()) for t in TIERS]


class UsageEvent(models.Model):
    """One billable occurrence. Immutable; the idempotency key makes a re-send a no-op."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    meter = models.CharField(max_length=32, choices=METER_CHOICES)
    quantity = models.BigIntegerField()
    at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=200)
    dimensions = models.JSONField(default=dict, blank=True)
    dimension_key = models.CharField(max_length=200, blank=True, default="")
    recorded_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"], name="usage_event_idempotent"
            ),
        ]
        indexes = [
            models.Index(fields=["recorded_at"], name="usage_event_recorded"),
            models.Index(fields=["organization", "meter", "at"], name="usage_event_org_meter_at"),
        ]

    def __str__(self) -> str:
        return f"{self.meter} {self.quantity} at {self.at:%Y-%m-%d %H:%M}"


class StorageDelta(models.Model):
    """A change of the bytes stored in one tier. The balance at t is the sum of deltas at or before t.

    ``meter``: the hospital's images (``storage``) or what the archive derives from them
    (``storage.derived``, thumbnails): two balances, rolled up and billed as two meters.
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    meter = models.CharField(
        max_length=32, default=STORAGE, choices=[(k, METERS[k].label) for k in LEDGER_METERS]
    )
    tier = models.CharField(max_length=16, choices=TIER_CHOICES)
    delta_bytes = models.BigIntegerField()
    at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=200)
    recorded_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"], name="storage_delta_idempotent"
            ),
        ]
        indexes = [
            models.Index(fields=["recorded_at"], name="storage_delta_recorded"),
            models.Index(fields=["organization", "tier", "at"], name="storage_delta_org_tier_at"),
        ]

    def __str__(self) -> str:
        return f"{self.tier} {self.delta_bytes:+d} B at {self.at:%Y-%m-%d %H:%M}"


class Rollup(models.Model):
    """Usage per (organization, meter, dimension, hour). Reports and invoices read only these.

    ``quantity`` is in the meter's base unit (storage: byte-seconds within the hour);
    ``balance_bytes`` is the stored bytes at the end of the hour (storage only).
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    meter = models.CharField(max_length=32, choices=METER_CHOICES)
    dimension_key = models.CharField(max_length=200, blank=True, default="")
    hour = models.DateTimeField()
    quantity = models.BigIntegerField(default=0)
    events = models.PositiveIntegerField(default=0)
    balance_bytes = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "meter", "dimension_key", "hour"], name="rollup_bucket"
            ),
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="rollup_org_hour")]

    def __str__(self) -> str:
        return f"{self.meter}[{self.dimension_key}] {self.hour:%Y-%m-%d %H}h = {self.quantity}"


class RollupMark(models.Model):
    """How far the incremental rollup has read each source (by ``recorded_at``)."""

    source = models.CharField(max_length=32, unique=True)
    recorded_until = models.DateTimeField()
    storage_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.source} until {self.recorded_until:%Y-%m-%d %H:%M:%S}"


class PricePlan(models.Model):
    code = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, default="USD")
    description = models.TextField(blank=True)
    monthly_minimum = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.currency})"


class PlanPrice(models.Model):
    class Model(models.TextChoices):
        PER_UNIT = "per_unit", "Per unit"
        GRADUATED = "graduated", "Graduated tiers"
        VOLUME = "volume", "Volume tiers"
        PACKAGE = "package", "Package"

    plan = models.ForeignKey(PricePlan, on_delete=models.CASCADE, related_name="prices")
    meter = models.CharField(max_length=32, choices=METER_CHOICES)
    # Storage tier (or target tier for transitions, tier left for early deletion); blank: any.
    tier = models.CharField(max_length=16, choices=TIER_CHOICES, blank=True, default="")
    model = models.CharField(max_length=16, choices=Model.choices, default=Model.PER_UNIT)
    unit_price = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal("0"))
    # Graduated/volume: [{"up_to": "1024" | null, "unit_price": "0.023", "flat_fee": "0"}], in billing units.
    tiers = models.JSONField(default=list, blank=True)
    package_size = models.DecimalField(max_digits=18, decimal_places=6, default=Decimal("1"))
    package_price = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal("0"))
    included_quantity = models.DecimalField(max_digits=18, decimal_places=6, default=Decimal("0"))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "meter", "tier"], name="plan_price_unique")
        ]
        ordering = ["plan", "meter", "tier"]

    def __str__(self) -> str:
        return (
            f"{self.plan.code}: {self.meter}{'/' + self.tier if self.tier else ''} ({self.model})"
        )


class Subscription(models.Model):
    """An organization on a plan from ``starts_at`` (inclusive) to ``ends_at`` (exclusive, or open)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan = models.ForeignKey(PricePlan, on_delete=models.PROTECT, related_name="subscriptions")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["organization", "starts_at"]

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan.code} from {self.starts_at:%Y-%m-%d}"


class DocumentCounter(models.Model):
    """The platform's gap-free counters (invoices, credit notes) per year; locked while a number is taken."""

    series = models.CharField(max_length=8)
    year = models.PositiveIntegerField()
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "year"], name="document_counter_unique")
        ]

    def __str__(self) -> str:
        return f"{self.series}-{self.year}: {self.last}"


class Invoice(models.Model):
    class Status(models.TextChoices):
        FINALIZED = "finalized", "Finalized"
        VOID = "void", "Void"

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoices"
    )
    number = models.CharField(max_length=32, unique=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FINALIZED)
    subtotal = models.DecimalField(max_digits=14, decimal_places=2)
    minimum_adjustment = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    total = models.DecimalField(max_digits=14, decimal_places=2)
    finalized_at = models.DateTimeField(default=timezone.now)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=500, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            # One finalized invoice per organization and month; a voided one may be reissued.
            models.UniqueConstraint(
                fields=["organization", "period_start"],
                condition=models.Q(status="finalized"),
                name="invoice_one_per_month",
            ),
        ]

    def __str__(self) -> str:
        return self.number

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Finalized invoices are immutable; only voiding may touch an existing row.
        fields = kwargs.get("update_fields")
        if not self._state.adding and (fields is None or set(fields) - VOID_FIELDS):
            raise PermissionError(
                "A finalized invoice cannot be edited; void it or issue a credit note."
            )
        super().save(*args, **kwargs)


VOID_FIELDS = {"status", "voided_at", "void_reason"}


class InvoiceLine(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, default="usage")  # usage | minimum | adjustment
    meter = models.CharField(max_length=32, blank=True)
    dimension_key = models.CharField(max_length=200, blank=True)
    description = models.CharField(max_length=300)
    # The usage it came from: rollups of this meter/dimension in [usage_start, usage_end).
    usage_start = models.DateTimeField(null=True, blank=True)
    usage_end = models.DateTimeField(null=True, blank=True)
    plan_code = models.CharField(max_length=50, blank=True)
    # A month of storage in byte-seconds passes 2^63 at about 3.3 TiB: exact on PostgreSQL
    # (numeric); SQLite, the development default, keeps 15 significant digits beyond 2^63.
    base_quantity = models.DecimalField(max_digits=38, decimal_places=0, default=Decimal(0))
    quantity = models.DecimalField(max_digits=24, decimal_places=9, default=Decimal("0"))
    unit = models.CharField(max_length=32, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    breakdown = models.JSONField(default=list, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["invoice", "position"]

    def __str__(self) -> str:
        return f"{self.invoice.number} #{self.position} {self.description}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("Invoice lines are immutable.")
        super().save(*args, **kwargs)


class CreditNote(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    reason = models.CharField(max_length=500)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.number


class Budget(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="budget"
    )
    monthly_amount = models.DecimalField(max_digits=14, decimal_places=2)
    thresholds = models.JSONField(default=list)  # percentages, e.g. [50, 80, 100]
    updated_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.organization}: {self.monthly_amount}"


class BudgetAlert(models.Model):
    class Kind(models.TextChoices):
        ACTUAL = "actual", "Actual spend"
        FORECAST = "forecast", "Forecast spend"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    month = models.DateField()
    threshold = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    budget_amount = models.DecimalField(max_digits=14, decimal_places=2)
    fired_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-fired_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "month", "threshold", "kind"], name="budget_alert_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization} {self.month:%Y-%m} {self.kind} {self.threshold}%"
