"""Forms of the billing portal pages and the admin's invoice actions.

They check shape (numbers, ranges, required fields); ``billing.services`` checks the rules and
its ``ServiceError`` is put back on the form with ``form_apply_service_error``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings

from billing.models import Budget
from tenants.forms import PortalForm

PRESET_THRESHOLDS = (50, 80, 100)
THRESHOLD_MIN, THRESHOLD_MAX = 1, 1000


class BudgetForm(PortalForm):
    monthly_amount = forms.DecimalField(
        label="Monthly budget",
        min_value=Decimal("0.01"),
        max_digits=14,
        decimal_places=2,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    thresholds = forms.TypedMultipleChoiceField(
        label="Alert me at",
        choices=[(t, f"{t}% of the budget") for t in PRESET_THRESHOLDS],
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Owners and billing members are emailed, and a budget.threshold webhook is "
        "sent, the first time spending so far or the month-end forecast reaches a threshold.",
    )
    custom_thresholds = forms.CharField(
        label="Other thresholds",
        required=False,
        max_length=200,
        help_text="Comma-separated percentages between 1 and 1000, e.g. 90, 120.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "inputmode": "numeric"}),
    )

    def __init__(self, *args: Any, currency: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if currency:
            self.fields["monthly_amount"].help_text = (
                f"In {currency}, the currency of your price plan. Usage plus any minimum "
                "commitment is compared with it."
            )

    @classmethod
    def initial_for(cls, budget: Budget | None) -> dict[str, Any]:
        if budget is None:
            return {"thresholds": list(PRESET_THRESHOLDS)}
        values = [int(t) for t in budget.thresholds]
        return {
            "monthly_amount": budget.monthly_amount,
            "thresholds": [t for t in values if t in PRESET_THRESHOLDS],
            "custom_thresholds": ", ".join(str(t) for t in values if t not in PRESET_THRESHOLDS),
        }

    def clean_custom_thresholds(self) -> list[int]:
        text = self.cleaned_data.get("custom_thresholds") or ""
        values: list[int] = []
        errors: list[str] = []
        for part in text.replace(";", ",").split(","):
            token = part.strip().removesuffix("%").strip()
            if not token:
                continue
            if not token.isdigit():
                errors.append(f"“{part.strip()}” is not a whole percentage.")
                continue
            value = int(token)
            if not THRESHOLD_MIN <= value <= THRESHOLD_MAX:
                errors.append(f"{value}% is outside {THRESHOLD_MIN}–{THRESHOLD_MAX}%.")
                continue
            values.append(value)
        if errors:
            raise forms.ValidationError(errors)
        return values

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "custom_thresholds" in cleaned and not self.threshold_values():
            self.add_error("thresholds", "Choose at least one threshold, e.g. 50, 80 and 100%.")
        return cleaned

    def threshold_values(self) -> list[int]:
        """The chosen and typed thresholds, deduplicated and sorted. Precondition: cleaned."""
        checked = [int(t) for t in self.cleaned_data.get("thresholds") or []]
        custom = self.cleaned_data.get("custom_thresholds") or []
        return sorted(set(checked) | set(custom))


class UsageReportForm(PortalForm):
    """A usage report over whole UTC days, both ends included."""

    start = forms.DateField(
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    end = forms.DateField(
        label="To",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="Included. Days are UTC.",
    )
    group_by = forms.MultipleChoiceField(
        label="Split rows by",
        choices=[("tier", "Storage tier"), ("day", "Day")],
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start: date | None = cleaned.get("start")
        end: date | None = cleaned.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "Must be on or after the first day.")
            elif (end - start).days + 1 > settings.BILLING_MAX_REPORT_DAYS:
                self.add_error(
                    "end", f"A report covers at most {settings.BILLING_MAX_REPORT_DAYS} days."
                )
        return cleaned

    def range(self) -> tuple[datetime, datetime]:
        """The half-open UTC range [start 00:00, day after end 00:00). Precondition: valid."""
        start: date = self.cleaned_data["start"]
        end: date = self.cleaned_data["end"]
        return (
            datetime.combine(start, time.min, tzinfo=UTC),
            datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
        )


# --- admin actions -----------------------------------------------------------------------------


class InvoiceVoidForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded on the invoice and in the organization's audit log.",
    )


class CreditNoteForm(forms.Form):
    amount = forms.DecimalField(
        label="Amount", min_value=Decimal("0.01"), max_digits=14, decimal_places=2
    )
    reason = forms.CharField(
        label="Reason",
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Shown on the invoice and recorded in the organization's audit log.",
    )
