"""Platform staff's admin. Every change made here writes an audit event; the audit log is read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import Model
from django.http import HttpRequest

from tenants.context import Actor
from tenants.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from tenants.services import audit_record


def _org_of(obj: Model) -> Organization | None:
    if isinstance(obj, Organization):
        return obj
    return getattr(obj, "organization", None)


class AuditedAdmin(admin.ModelAdmin):
    """Writes ``admin.<model>.created|changed|deleted`` in the same transaction as the change."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            changed = list(form.changed_data) if form is not None else []
            audit_record(
                org=_org_of(obj),
                actor=Actor.from_request(request),
                action=f"admin.{obj._meta.model_name}.{'changed' if change else 'created'}",
                target=obj,
                details={"fields": changed, "via": "admin"},
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit_record(
                org=_org_of(obj) if not isinstance(obj, Organization) else None,
                actor=Actor.from_request(request),
                action=f"admin.{obj._meta.model_name}.deleted",
                target=obj,
                details={"via": "admin"},
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin):
    list_display = ["name", "slug", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The audit trail outlives a hospital: organizations are closed (status), never deleted.
        return False

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_formset(request, form, formset, change)
            for obj in formset.new_objects + [o for o, _ in formset.changed_objects]:
                audit_record(
                    org=obj.organization,
                    actor=Actor.from_request(request),
                    action="admin.membership.saved",
                    target=obj,
                    details={"role": obj.role, "via": "admin"},
                )
            for obj in formset.deleted_objects:
                audit_record(
                    org=obj.organization,
                    actor=Actor.from_request(request),
                    action="admin.membership.deleted",
                    target=obj,
                    details={"via": "admin"},
                )


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__email", "organization__slug"]
    autocomplete_fields = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(AuditedAdmin):
    list_display = [
        "email",
        "organization",
        "role",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    ]
    list_filter = ["role"]
    search_fields = ["email", "organization__slug"]
    readonly_fields = ["token_hash", "accepted_at", "accepted_by"]


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin):
    list_display = [
        "name",
        "prefix",
        "organization",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    search_fields = ["name", "prefix", "organization__slug"]
    readonly_fields = ["prefix", "secret_hash", "last_used_at", "created_by", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Secrets are shown once at creation: tokens are made in the portal, the API or create_token.
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "organization",
        "actor_label",
        "action",
        "target_type",
        "target_label",
        "ip",
    ]
    list_filter = ["action", "organization"]
    search_fields = ["actor_label", "action", "target_label"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(AuditedAdmin):
    list_display = ["url", "organization", "state", "consecutive_failures", "created_at"]
    list_filter = ["state"]
    search_fields = ["url", "organization__slug"]


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = [
        "number",
        "attempted_at",
        "status_code",
        "latency_ms",
        "error",
        "response_excerpt",
    ]
    exclude = ["organization"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["event", "endpoint", "state", "attempt_count", "next_attempt_at"]
    list_filter = ["state"]
    inlines = [WebhookAttemptInline]
    readonly_fields = [
        "organization",
        "endpoint",
        "event",
        "attempt_count",
        "claimed_at",
        "created_at",
    ]
