"""Portal forms: they check shape (required, lengths, choices); services check the rules.

A service's ``ServiceError`` is put back onto the form with ``form_apply_service_error`` so its
field errors appear next to the field they name.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm

from tenants.context import Actor
from tenants.errors import ServiceError
from tenants.roles import Role, Scope
from tenants.webhooks import EVENT_TYPES

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def form_apply_service_error(form: forms.Form, exc: ServiceError) -> None:
    """Show a service's refusal on the form: field errors on their fields, the rest on top.

    Precondition: ``form.is_valid()`` has run (``add_error`` needs ``cleaned_data``).
    """
    placed = False
    for name, messages in exc.fields.items():
        target = name if name in form.fields else None
        for message in messages:
            form.add_error(target, message)
            placed = True
    if not placed:
        form.add_error(None, exc.message)


class PortalForm(forms.Form):
    # Labels are rendered by the field template; no trailing colon.
    label_suffix = ""


class EmailAuthenticationForm(AuthenticationForm):
    """Sign in with the email address. Usernames are emails here, but people type them in any case."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "The email or password is not correct.",
    }

    def __init__(self, request: Any = None, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(request, *args, **kwargs)
        field = self.fields["username"]
        field.label = "Email"
        field.widget.attrs.update(
            {"autocomplete": "username", "inputmode": "email", "spellcheck": "false"}
        )

    def clean_username(self) -> str:
        value = str(self.cleaned_data["username"]).strip()
        if "@" in value:
            user_model = get_user_model()
            usernames = list(
                user_model.objects.filter(email__iexact=value).values_list(
                    user_model.USERNAME_FIELD, flat=True
                )[:2]
            )
            # Only an unambiguous address stands for a username; otherwise the value is tried as typed.
            if len(usernames) == 1:
                return str(usernames[0])
        return value

    def confirm_login_allowed(self, user: Any) -> None:
        """An organization that requires single sign-on refuses its members' passwords; its
        owners keep theirs (the break-glass path when the identity provider is down). Each refusal
        is audited (``auth.password_refused``) in every organization that caused it."""
        super().confirm_login_allowed(user)
        from tenants.services import audit_record
        from tenants.sso.selectors import password_refused_in

        orgs = password_refused_in(user=user)
        if not orgs:
            return
        base = Actor.from_request(self.request) if self.request is not None else Actor()
        actor = Actor(user=user, ip=base.ip, user_agent=base.user_agent)
        for org in orgs:
            audit_record(
                org=org,
                actor=actor,
                action="auth.password_refused",
                target=user,
                target_label=user.email,
                details={"reason": "sso_required"},
            )
        names = ", ".join(org.name for org in orgs)
        raise forms.ValidationError(
            f"{names} requires single sign-on: choose “Sign in with single sign-on” below and "
            "enter your work email.",
            code="sso_required",
        )


class InvitationForm(PortalForm):
    email = forms.EmailField(
        label="Email address",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "off", "placeholder": "name@hospital.org"}),
    )
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args: Any, allowed_roles: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if allowed_roles is not None:
            role_field = self.fields["role"]
            assert isinstance(role_field, forms.ChoiceField)
            role_field.choices = [(v, label) for v, label in Role.choices if v in allowed_roles]


class MemberRoleForm(PortalForm):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class TokenForm(PortalForm):
    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="Say what uses the token, e.g. “Radiology PACS router”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        choices=[(s.value, f"{s.value} — {s.label}") for s in Scope],
        widget=forms.CheckboxSelectMultiple,
        help_text="Grant only what the integration needs.",
    )
    expires_at = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="The token stops working at 00:00 UTC on this date. Leave empty for no expiry.",
    )

    def expires_at_datetime(self) -> datetime | None:
        value: date | None = self.cleaned_data.get("expires_at")
        if value is None:
            return None
        return datetime.combine(value, time.min, tzinfo=UTC)


class WebhookForm(PortalForm):
    url = forms.URLField(
        label="Endpoint URL",
        max_length=1000,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"placeholder": "https://integrations.hospital.org/strata"}),
    )
    description = forms.CharField(label="Description", max_length=200, required=False)
    event_types = forms.MultipleChoiceField(
        label="Event types",
        choices=[(name, f"{name} — {text}") for name, text in EVENT_TYPES.items()],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Leave all unchecked to receive every event type, including ones added later.",
    )


class CorsOriginForm(PortalForm):
    """Shape only; ``services.cors_origin_add`` checks and normalizes the origin."""

    origin = forms.CharField(
        label="Origin",
        max_length=300,
        help_text="Where the viewer's pages are served from: <code>https://host</code> or "
        "<code>https://host:port</code>, without a path. Copy it from the viewer's address bar "
        "up to, not including, the first “/” after the host.",
        widget=forms.TextInput(
            attrs={
                "placeholder": "https://viewer.hospital.org",
                "autocomplete": "off",
                "spellcheck": "false",
                "inputmode": "url",
            }
        ),
    )
    description = forms.CharField(
        label="Description",
        max_length=200,
        required=False,
        help_text="Say what is served there, e.g. “OHIF viewer in the radiology portal”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class AuditFilterForm(PortalForm):
    actor = forms.CharField(label="Actor", max_length=255, required=False)
    action = forms.ChoiceField(label="Action", required=False)
    since = forms.DateField(
        label="From",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )
    until = forms.DateField(
        label="Until",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )

    def __init__(self, *args: Any, actions: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        groups = sorted({a.split(".", 1)[0] for a in actions if "." in a})
        choices: list[tuple[str, str]] = [("", "All actions")]
        choices += [(f"{g}.", f"{g}.* (all)") for g in groups]
        choices += [(a, a) for a in actions]
        action_field = self.fields["action"]
        assert isinstance(action_field, forms.ChoiceField)
        action_field.choices = choices

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until < since:
            self.add_error("until", "The end date is before the start date.")
        return cleaned

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for ``selectors.audit_list``; ``until`` becomes an exclusive bound."""
        data = self.cleaned_data
        since: date | None = data.get("since")
        until: date | None = data.get("until")
        return {
            "actor": data.get("actor") or None,
            "action": data.get("action") or None,
            "since": datetime.combine(since, time.min, tzinfo=UTC) if since else None,
            "until": datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC)
            if until
            else None,
        }


class InvitationSignupForm(PortalForm):
    """Create the account an invitation is for: the email comes from the invitation, not the form."""

    name = forms.CharField(
        label="Full name",
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args: Any, email: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.email = email

    def _unsaved_user(self) -> User:
        first, _, last = (self.cleaned_data.get("name") or "").strip().partition(" ")
        return get_user_model()(
            username=self.email,
            email=self.email,
            first_name=first[:150],
            last_name=last.strip()[:150],
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords do not match.")
        elif password1:
            try:
                password_validation.validate_password(password1, self._unsaved_user())
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned
