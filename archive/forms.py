"""Portal forms of the archive: they check shape; the services in ``archive.jobs`` and
``archive.dimse.services`` check the rules and refuse with field errors (the location forms are
``archive.locations.forms``)."""

from __future__ import annotations

from typing import Any

from django import forms

from archive.dimse.services import clean_ae_title
from archive.jobs import ImportInput
from tenants.errors import ValidationFailed
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


class ImportForm(PortalForm):
    bucket = forms.CharField(max_length=63)
    prefix = forms.CharField(  # type: ignore[assignment]
        required=False,
        max_length=255,
        label="Key prefix",
        help_text="Only objects whose key starts with this are imported, e.g. exports/2024/.",
    )
    endpoint_url = forms.CharField(
        required=False,
        max_length=200,
        label="Endpoint URL",
        help_text="Leave empty for AWS S3.",
    )
    region = forms.CharField(required=False, max_length=64)
    access_key_id = forms.CharField(max_length=255, label="Access key id")
    secret_access_key = forms.CharField(
        max_length=255,
        label="Secret access key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Read-only access is enough. Stored encrypted until the import ends, then removed.",
    )

    def to_input(self) -> ImportInput:
        data = self.cleaned_data
        return ImportInput(
            bucket=data["bucket"],
            prefix=data.get("prefix") or "",
            endpoint_url=data.get("endpoint_url") or "",
            region=data.get("region") or "",
            access_key_id=data["access_key_id"],
            secret_access_key=data["secret_access_key"],
        )


def _lines(value: str) -> list[str]:
    return [item.strip() for item in value.replace(",", "\n").splitlines() if item.strip()]


def _valid_ae_title(value: str) -> None:
    # Checked here too, so that the title's errors show with the form's own (the service, which
    # checks again, is only called with a valid form).
    try:
        clean_ae_title(value, "ae_title")
    except ValidationFailed as exc:
        raise forms.ValidationError(exc.fields["ae_title"]) from None


class AEForm(PortalForm):
    ae_title = forms.CharField(
        max_length=16,
        validators=[_valid_ae_title],
        label="Called AE title",
        help_text="What the PACS sends to, e.g. STMARY_ARCHIVE. Unique across Strata, "
        "regardless of case.",
    )
    allowed_calling_ae_titles = forms.CharField(
        required=False,
        label="Allowed calling AE titles",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One per line. Empty: not restricted by calling AE title.",
    )
    allowed_networks = forms.CharField(
        required=False,
        label="Allowed networks",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="IP addresses or CIDR ranges, one per line, e.g. 203.0.113.0/24. Empty: not "
        "restricted by address.",
    )
    allow_any_caller = forms.BooleanField(
        required=False,
        label="Allow any caller",
        help_text="Admit any calling AE title from any network address. Anyone who can reach "
        "the listener and knows this AE title can then store images into your archive. Only "
        "with both lists above empty; prefer restricting to your PACS and modalities.",
    )

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            field = self.fields["ae_title"]
            field.disabled = True
            field.required = False
            field.help_text = "An AE title cannot be renamed; add a new one instead."

    def clean(self) -> dict[str, Any]:
        # The service refuses the same (for the API too); here in the portal's words.
        data = super().clean() or {}
        restricted = self.calling() or self.networks()
        if not restricted and not data.get("allow_any_caller"):
            self.add_error(
                None,
                "Restrict who may send: give allowed calling AE titles or allowed networks, "
                'or tick "Allow any caller".',
            )
        elif restricted and data.get("allow_any_caller"):
            self.add_error(
                "allow_any_caller",
                'Untick "Allow any caller" to restrict by the lists above, or empty both '
                "lists to allow any caller.",
            )
        return data

    def calling(self) -> list[str]:
        return _lines(self.cleaned_data.get("allowed_calling_ae_titles") or "")

    def networks(self) -> list[str]:
        return _lines(self.cleaned_data.get("allowed_networks") or "")
