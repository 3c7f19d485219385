"""Platform staff's admin for the archive.

The DICOM index, ingest jobs and the access log are records here, read-only: a change behind the
ingest pipeline would break invariants (bytes verified before the index, aggregates, metering).
Storage locations are editable, but every write goes through ``archive.locations`` (validation,
the one-primary rule, the encrypted secret, the audit event with the staff member as actor).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest
from django.utils.html import format_html

from archive.index import selectors
from archive.locations import selectors as location_selectors
from archive.locations import services as location_services
from archive.models import (
    TIERS,
    AccessEvent,
    DicomAssociation,
    DicomOperation,
    IngestFailure,
    IngestJob,
    Instance,
    Series,
    StorageLocation,
    Study,
)
from tenants.context import Actor
from tenants.errors import ServiceError, ValidationFailed


class ReadOnlyAdmin(admin.ModelAdmin):
    """Staff may look, never add, change or delete."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = [
        "study_uid",
        "organization",
        "study_date",
        "modalities",
        "series_count",
        "instance_count",
        "total_bytes",
        "last_accessed_at",
    ]
    list_filter = ["organization"]
    search_fields = ["study_uid", "accession_number"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"
    # Patient names and IDs stay out of lists and searches of staff tools.
    exclude = ["metadata"]


@admin.register(Series)
class SeriesAdmin(ReadOnlyAdmin):
    list_display = ["series_uid", "organization", "modality", "instance_count", "total_bytes"]
    list_filter = ["organization", "modality"]
    search_fields = ["series_uid"]
    list_select_related = ["organization"]
    raw_id_fields = ["study"]
    exclude = ["metadata"]


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    list_display = ["sop_instance_uid", "organization", "tier", "size_bytes", "received_at"]
    list_filter = ["organization", "tier"]
    search_fields = ["sop_instance_uid", "sha256"]
    list_select_related = ["organization"]
    raw_id_fields = ["study", "series", "location"]
    exclude = ["metadata"]


class IngestFailureInline(admin.TabularInline):
    model = IngestFailure
    extra = 0
    can_delete = False
    fields = ["source", "sop_instance_uid", "reason_code", "reason", "created_at"]
    readonly_fields = ["source", "sop_instance_uid", "reason_code", "reason", "created_at"]
    max_num = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(IngestJob)
class IngestJobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "kind",
        "state",
        "received",
        "stored",
        "duplicate",
        "failed",
        "created_at",
        "heartbeat_at",
    ]
    list_filter = ["kind", "state", "organization"]
    list_select_related = ["organization"]
    # ``params`` may hold an import's encrypted secret: shown without it.
    exclude = ["params"]
    readonly_fields = ["settings"]
    inlines = [IngestFailureInline]

    @admin.display(description="Settings")
    def settings(self, obj: IngestJob) -> str:
        safe = {k: v for k, v in (obj.params or {}).items() if k != "secret"}
        return format_html("<pre>{}</pre>", json.dumps(safe, indent=2, sort_keys=True))


@admin.register(AccessEvent)
class AccessEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "organization", "kind", "study", "actor_label", "bytes", "instances"]
    list_filter = ["kind", "organization"]
    list_select_related = ["organization", "study"]
    raw_id_fields = ["study", "series"]
    date_hierarchy = "at"


_OPERATION_COLUMNS: tuple[str, ...] = (
    "kind",
    "started_at",
    "finished_at",
    "status_hex",
    "outcome",
    "level",
    "keys",
    "matches",
    "completed",
    "failed",
    "warning",
    "destination_ae",
    "comment",
)


class DicomOperationInline(admin.TabularInline):
    model = DicomOperation
    extra = 0
    can_delete = False
    fields = _OPERATION_COLUMNS
    readonly_fields = _OPERATION_COLUMNS
    max_num = 0
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DicomAssociation)
class DicomAssociationAdmin(ReadOnlyAdmin):
    """What each admitted DICOM association did (``archive.dimse.activity``); no patient data."""

    list_display = [
        "started_at",
        "organization",
        "calling_ae",
        "called_ae",
        "address",
        "end",
        "outcome",
    ]
    list_filter = ["end", "outcome", "organization"]
    list_select_related = ["organization"]
    search_fields = ["calling_ae", "called_ae", "address"]
    date_hierarchy = "started_at"
    raw_id_fields = ["dicom_ae"]
    inlines = [DicomOperationInline]


# --- storage locations, through the services ---------------------------------------------------


class StorageLocationAdminForm(forms.ModelForm):
    # A plain field: the service checks the URL (and that it is not a private address).
    endpoint_url = forms.CharField(required=False, max_length=200, label="Endpoint URL")
    secret_access_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted, never shown. On change: leave empty to keep the stored key.",
    )
    encryption_mode = forms.ChoiceField(
        choices=list(location_services.ENCRYPTION_LABELS.items()), label="Encryption"
    )
    storage_class_hot = forms.ChoiceField(
        choices=[(c, c) for c in location_services.STORAGE_CLASSES]
    )
    storage_class_warm = forms.ChoiceField(
        choices=[(c, c) for c in location_services.STORAGE_CLASSES]
    )
    storage_class_cold = forms.ChoiceField(
        choices=[(c, c) for c in location_services.STORAGE_CLASSES]
    )
    storage_class_archive = forms.ChoiceField(
        choices=[(c, c) for c in location_services.STORAGE_CLASSES]
    )

    class Meta:
        model = StorageLocation
        fields = [
            "organization",
            "name",
            "role",
            "endpoint_url",
            "region",
            "bucket",
            "prefix",
            "access_key_id",
            "kms_key_id",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        location: StorageLocation = self.instance
        self.fields["encryption_mode"].initial = location_services.encryption_mode(
            location.encryption if location.pk else "AES256"
        )
        for tier in TIERS:
            self.fields[f"storage_class_{tier}"].initial = location.storage_class(tier)
        if location.pk:
            self.fields["organization"].disabled = True

    def _post_clean(self) -> None:
        # The rules are the service's (see ``clean``): the model's own constraint check would
        # refuse a new primary before the service could make room for it.
        try:
            self.instance = construct_instance(
                self, self.instance, self._meta.fields, self._meta.exclude
            )
        except DjangoValidationError as exc:
            self.add_error(None, exc)

    def to_input(self) -> location_services.LocationInput:
        data = self.cleaned_data
        return location_services.LocationInput(
            name=data.get("name") or "",
            bucket=data.get("bucket") or "",
            access_key_id=data.get("access_key_id") or "",
            secret_access_key=data.get("secret_access_key") or "",
            endpoint_url=data.get("endpoint_url") or "",
            region=data.get("region") or "",
            prefix=data.get("prefix") or "",
            encryption=data.get("encryption_mode") or "none",
            kms_key_id=data.get("kms_key_id") or "",
            storage_classes={t: data.get(f"storage_class_{t}") or "" for t in TIERS},
            role=data.get("role") or StorageLocation.Role.REPLICA,
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            location_services.location_validate(self.to_input(), creating=self.instance.pk is None)
        except ValidationFailed as exc:
            for name, errors in exc.fields.items():
                self.add_error(name if name in self.fields else None, errors)
        # The primary can only change before the first image (the service refuses it too; said
        # here so that the admin shows it on the form).
        org = data.get("organization") or getattr(self.instance, "organization", None)
        changes_primary = data.get("role") == StorageLocation.Role.PRIMARY and (
            self.instance.pk is None or self.instance.role != StorageLocation.Role.PRIMARY
        )
        if org is not None and changes_primary and selectors.org_has_instances(org=org):
            self.add_error(
                "role",
                "The organization already has images; the primary can only change before "
                "the first image arrives.",
            )
        return data


@admin.register(StorageLocation)
class StorageLocationAdmin(admin.ModelAdmin):
    form = StorageLocationAdminForm
    list_display = ["name", "organization", "kind", "role", "bucket_label", "last_test"]
    list_filter = ["kind", "role", "organization"]
    list_select_related = ["organization"]
    search_fields = ["name", "bucket"]
    readonly_fields = ["kind", "created_at", "last_test_at", "last_test_ok", "last_test_message"]
    actions = ["test_connection"]
    fieldsets = [
        (None, {"fields": ["organization", "name", "role", "kind"]}),
        ("Bucket", {"fields": ["endpoint_url", "region", "bucket", "prefix"]}),
        ("Credentials", {"fields": ["access_key_id", "secret_access_key"]}),
        ("Encryption", {"fields": ["encryption_mode", "kms_key_id"]}),
        (
            "Storage classes",
            {
                "fields": [
                    "storage_class_hot",
                    "storage_class_warm",
                    "storage_class_cold",
                    "storage_class_archive",
                ]
            },
        ),
        (
            "Connection test",
            {"fields": ["last_test_at", "last_test_ok", "last_test_message", "created_at"]},
        ),
    ]

    @admin.display(description="Bucket")
    def bucket_label(self, obj: StorageLocation) -> str:
        return f"s3://{obj.bucket}/{obj.prefix}" if obj.kind == StorageLocation.Kind.S3 else "—"

    @admin.display(description="Last test")
    def last_test(self, obj: StorageLocation) -> str:
        if obj.last_test_at is None:
            return "—"
        return f"{'ok' if obj.last_test_ok else 'failed'} {obj.last_test_at:%Y-%m-%d %H:%M}"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The platform default has nothing to configure.
        if obj is not None and obj.kind == StorageLocation.Kind.PLATFORM:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and (
            obj.kind == StorageLocation.Kind.PLATFORM
            or location_selectors.location_in_use(org=obj.organization, location=obj)
        ):
            return False
        return super().has_delete_permission(request, obj)

    def save_model(
        self, request: HttpRequest, obj: StorageLocation, form: Any, change: bool
    ) -> None:
        actor = Actor.from_request(request)
        data = form.to_input()
        if change:
            saved = location_services.location_update(
                org=obj.organization,
                location=StorageLocation.objects.get(pk=obj.pk),
                data=data,
                actor=actor,
            )
        else:
            saved = location_services.location_create(
                org=form.cleaned_data["organization"], data=data, actor=actor
            )
        # The admin's own save is replaced by the service's; it reads the pk for its message.
        obj.pk = saved.pk
        obj.organization = saved.organization

    def delete_model(self, request: HttpRequest, obj: StorageLocation) -> None:
        location_services.location_delete(
            org=obj.organization, location=obj, actor=Actor.from_request(request)
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[StorageLocation]) -> None:
        for obj in queryset:
            try:
                self.delete_model(request, obj)
            except ServiceError as exc:
                messages.error(request, f"{obj.name}: {exc.message}")

    @admin.action(description="Test the connection of the selected locations")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[StorageLocation]) -> None:
        actor = Actor.from_request(request)
        for location in queryset.select_related("organization"):
            try:
                result = location_services.location_test(
                    org=location.organization, location=location, actor=actor
                )
            except ServiceError as exc:
                messages.warning(request, f"{location.name}: {exc.message}")
                continue
            level = messages.SUCCESS if result.last_test_ok else messages.ERROR
            messages.add_message(request, level, f"{location.name}: {result.last_test_message}")
