"""Forms of the second step of sign-in, of a person's factors and of the organization policy."""

from __future__ import annotations

from django import forms

from tenants.forms import PortalForm
from tenants.models import SecurityPolicy

_CODE_ATTRS = {
    "autocomplete": "one-time-code",
    "inputmode": "numeric",
    "spellcheck": "false",
    "autocapitalize": "off",
}


class CodeForm(PortalForm):
    code = forms.CharField(
        label="Code from your authenticator app",
        max_length=32,
        widget=forms.TextInput(attrs={**_CODE_ATTRS, "autofocus": True}),
        help_text="6 digits; a new one every 30 seconds.",
    )


class RecoveryCodeForm(PortalForm):
    code = forms.CharField(
        label="Recovery code",
        max_length=32,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "off",
                "spellcheck": "false",
                "autocapitalize": "off",
                "autofocus": True,
            }
        ),
        help_text="One of the ten codes you saved when you set up your second factor, e.g. 7kq2m-x9fha. Each works once.",
    )


class TotpAddForm(PortalForm):
    name = forms.CharField(
        label="Name",
        max_length=64,
        required=False,
        help_text="To tell your devices apart, e.g. “Phone”.",
    )
    code = forms.CharField(
        label="Code the app shows now",
        max_length=32,
        widget=forms.TextInput(attrs=_CODE_ATTRS),
    )


class WebAuthnAddForm(PortalForm):
    name = forms.CharField(
        label="Name",
        max_length=64,
        required=False,
        help_text="To tell your keys apart, e.g. “YubiKey” or “Laptop passkey”.",
    )


class RemoveFactorForm(PortalForm):
    """Re-authentication before a factor goes: the account's password, or for an account without
    one (single sign-on only) a current code from an authenticator app."""

    password = forms.CharField(
        label="Your password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    code = forms.CharField(
        label="Code from your authenticator app",
        max_length=32,
        required=False,
        widget=forms.TextInput(attrs=_CODE_ATTRS),
    )


class MfaPolicyForm(PortalForm):
    mfa_required = forms.ChoiceField(
        label="Who must use a second factor",
        choices=SecurityPolicy.Mfa.choices,
        widget=forms.RadioSelect,
    )
