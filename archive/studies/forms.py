"""Portal form of the study search: it checks shape; the selector applies it."""

from __future__ import annotations

from typing import Any

from django import forms

from tenants.forms import PortalForm

MODALITIES = ["CT", "MR", "CR", "DX", "MG", "US", "NM", "PT", "XA", "RF", "OT", "SM"]


class DateInput(forms.DateInput):
    input_type = "date"


class StudySearchForm(PortalForm):
    patient = forms.CharField(
        required=False,
        max_length=100,
        label="Patient name or ID",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "e.g. Curie or PAT12345"}),
    )
    accession = forms.CharField(required=False, max_length=64, label="Accession number")
    modality = forms.ChoiceField(
        required=False,
        choices=[("", "Any")] + [(m, m) for m in MODALITIES],
        label="Modality",
    )
    date_from = forms.DateField(required=False, label="Study date from", widget=DateInput())
    date_to = forms.DateField(required=False, label="to", widget=DateInput())

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def filters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "patient": data.get("patient") or "",
            "accession": data.get("accession") or "",
            "modality": data.get("modality") or "",
            "date_from": data.get("date_from"),
            "date_to": data.get("date_to"),
        }
