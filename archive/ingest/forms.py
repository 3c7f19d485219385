"""Portal form of a bucket import: it checks shape; ``archive.ingest.jobs`` checks the rules (bucket,
endpoint, credentials) and refuses with field errors.
"""

from __future__ import annotations

from django import forms

from archive.ingest.jobs import ImportInput
from tenants.forms import PortalForm


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
