"""Portal forms of an AE title and of a destination: they check shape;
``archive.ae_titles.services`` checks the rules and refuses with field errors.
"""

from __future__ import annotations

from typing import Any

from django import forms

from archive.ae_titles.services import clean_ae_title, clean_host
from tenants.errors import ValidationFailed
from tenants.forms import PortalForm


def _lines(value: str) -> list[str]:
    return [item.strip() for item in value.replace(",", "\n").splitlines() if item.strip()]


def _valid_ae_title(value: str) -> None:
    # Checked here too, so that the title's errors show with the form's own (the service, which
    # checks again, is only called with a valid form).
    try:
        clean_ae_title(value, "ae_title")
    except ValidationFailed as exc:
        raise forms.ValidationError(exc.fields["ae_title"]) from None


def _valid_host(value: str) -> None:
    # The host's shape, shown with the form's other errors; whether it resolves to an address
    # the platform may connect to is the service's answer.
    try:
        clean_host(value)
    except ValidationFailed as exc:
        raise forms.ValidationError(exc.fields["host"]) from None


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


class DestinationForm(PortalForm):
    ae_title = forms.CharField(
        max_length=16,
        validators=[_valid_ae_title],
        label="AE title",
        help_text="The destination's own AE title, as its PACS or workstation is configured, "
        "e.g. STMARY_PACS. A C-MOVE names it as the move destination.",
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    host = forms.CharField(
        max_length=300,
        validators=[_valid_host],
        label="Host",
        help_text="DNS name or IP address, without scheme or port, e.g. pacs.stmary.org.",
        widget=forms.TextInput(
            attrs={"spellcheck": "false", "autocomplete": "off", "autocapitalize": "none"}
        ),
    )
    port = forms.IntegerField(
        min_value=1,
        max_value=65535,
        label="Port",
        help_text="The destination's DICOM port, often 104 or 11112.",
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )
    tls = forms.BooleanField(
        required=False,
        label="Use TLS",
        help_text="Encrypt the association. The destination's certificate must be valid for the "
        "host above.",
    )
    description = forms.CharField(
        required=False,
        max_length=200,
        label="Description",
        help_text="Which PACS or workstation this is, for the people who read this list.",
    )
