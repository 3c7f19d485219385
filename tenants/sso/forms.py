"""Forms of single sign-on: the identity provider, an email domain, and sign-in by email."""

from __future__ import annotations

from typing import Any

from django import forms

from tenants.forms import PortalForm
from tenants.roles import Role
from tenants.sso.saml import MAX_METADATA_BYTES

# Blank rows the role mapping editor offers below the saved ones.
BLANK_MAPPING_ROWS = 3


class ProviderForm(PortalForm):
    protocol = forms.ChoiceField(
        label="Protocol",
        choices=[("oidc", "OpenID Connect"), ("saml", "SAML 2.0")],
        initial="oidc",
        required=False,  # a form without the choice keeps to OpenID Connect
        widget=forms.RadioSelect,
    )
    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="Shown on the sign-in page, e.g. “St. Mary’s Microsoft Entra ID”.",
    )
    issuer = forms.CharField(
        label="Issuer URL",
        max_length=500,
        required=False,
        help_text="The OpenID Connect issuer; Strata reads "
        "<code>&lt;issuer&gt;/.well-known/openid-configuration</code>.",
        widget=forms.URLInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    client_id = forms.CharField(
        label="Client id",
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    client_secret = forms.CharField(
        label="Client secret",
        max_length=1000,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}, render_value=False),
        help_text="Stored encrypted and never shown again. Leave empty to keep the saved secret.",
    )
    scopes = forms.CharField(
        label="Scopes",
        max_length=255,
        required=False,
        initial="openid email profile",
        help_text="Separated by spaces; must include <code>openid</code>.",
    )
    saml_metadata_url = forms.CharField(
        label="SAML metadata URL",
        max_length=500,
        required=False,
        help_text="The IdP's federation metadata URL; Strata fetches it when you save (save again "
        "to refresh it after the IdP changes its certificate).",
        widget=forms.URLInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    saml_metadata_xml = forms.CharField(
        label="SAML metadata XML",
        max_length=MAX_METADATA_BYTES,
        required=False,
        strip=False,
        help_text="Or paste the IdP's metadata document, when Strata cannot reach its URL. "
        "Leave empty to keep the saved one.",
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
    )
    groups_claim = forms.CharField(
        label="Groups claim",
        max_length=100,
        initial="groups",
        help_text="The ID token claim (SAML: the attribute) listing the person’s groups or roles "
        "(Entra ID: <code>groups</code> or <code>roles</code>; Okta and Keycloak: <code>groups</code>; "
        "Entra ID SAML: <code>http://schemas.microsoft.com/ws/2008/06/identity/claims/groups</code>).",
    )
    enabled = forms.BooleanField(label="Single sign-on is on", required=False, initial=True)
    sso_required = forms.BooleanField(
        label="Require single sign-on",
        required=False,
        help_text="Members can no longer sign in with a password. Owners still can (break-glass).",
    )

    def __init__(self, *args: Any, mapping: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rows = list((mapping or {}).items()) + [("", "")] * BLANK_MAPPING_ROWS
        self.mapping_rows: list[tuple[str, str, str]] = []
        for i, (group, role) in enumerate(rows):
            self.fields[f"map_group_{i}"] = forms.CharField(
                label=f"Group {i + 1}", max_length=255, required=False, initial=group
            )
            self.fields[f"map_role_{i}"] = forms.ChoiceField(
                label=f"Role for group {i + 1}",
                choices=[("", "— no access —"), *Role.choices],
                required=False,
                initial=role,
            )
            self.mapping_rows.append((str(i), f"map_group_{i}", f"map_role_{i}"))

    @property
    def mapping_fields(self) -> list[tuple[forms.BoundField, forms.BoundField]]:
        return [(self[g], self[r]) for _, g, r in self.mapping_rows]

    def role_mapping(self) -> dict[str, str]:
        """The rows with both a group and a role; a group without a role is dropped."""
        data = self.cleaned_data
        mapping: dict[str, str] = {}
        for _, group_field, role_field in self.mapping_rows:
            group = str(data.get(group_field) or "").strip()
            role = str(data.get(role_field) or "")
            if group and role:
                mapping[group] = role
        return mapping


class DomainForm(PortalForm):
    domain = forms.CharField(
        label="Email domain",
        max_length=253,
        widget=forms.TextInput(attrs={"placeholder": "hospital.org", "spellcheck": "false"}),
    )


class SsoEmailForm(forms.Form):
    label_suffix = ""
    email = forms.EmailField(
        label="Work email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "username", "spellcheck": "false"}),
    )
