"""REST API of storage locations (with the connection test), of the storage quota, and of the
replication status (``GET replication/``: the replica location and how far its copies lag; the
replica's failures and drills are ``archive.replicas.apis``).

Every view subclasses ``tenants.rest.OrgAPIView``; another organization's id answers 404. Secrets
go in and never come out: a location says only whether its secret key is set. Component names
start with "Archive" so that they never collide with other apps' components.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from archive.common.api import tier_field
from archive.index import selectors as index_selectors
from archive.locations import selectors, services
from archive.models import TIERS, StorageLocation
from archive.replicas import selectors as replica_selectors
from archive.replicas.apis import DrillOutputSerializer
from tenants.rest import (
    NamedChoiceField,
    OldestFirstPagination,
    OrgAPIView,
    error_responses_for,
    paginated,
)
from tenants.roles import Perm

_errors = error_responses_for(
    {409: "The change conflicts with the current state (e.g. the location holds images)."}
)

# --- storage locations -----------------------------------------------------------------------

ENCRYPTION_CHOICES = [
    (mode, services.ENCRYPTION_LABELS[mode]) for mode in services.ENCRYPTION_MODES
]
# NONE: the store has no storage class for the tier, which it then cannot serve (not for hot).
STORAGE_CLASS_CHOICES = [(c, c) for c in (*services.STORAGE_CLASSES, services.NOT_AVAILABLE)]


def _storage_class_field(**kwargs: Any) -> NamedChoiceField:
    return NamedChoiceField(
        enum_name="ArchiveStorageClassEnum", choices=STORAGE_CLASS_CHOICES, **kwargs
    )


class StorageClassesSerializer(serializers.Serializer):
    hot = _storage_class_field()
    warm = _storage_class_field()
    cold = _storage_class_field()
    archive = _storage_class_field()

    class Meta:
        ref_name = "ArchiveStorageClasses"


class StorageClassesInputSerializer(serializers.Serializer):
    hot = _storage_class_field(required=False)
    warm = _storage_class_field(required=False)
    cold = _storage_class_field(required=False)
    archive = _storage_class_field(required=False)

    class Meta:
        ref_name = "ArchiveStorageClassesInput"


class LocationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = NamedChoiceField(
        enum_name="ArchiveLocationKindEnum", choices=StorageLocation.Kind.choices
    )
    role = NamedChoiceField(
        enum_name="ArchiveLocationRoleEnum", choices=StorageLocation.Role.choices
    )
    replica_tier = tier_field(help_text="A replica keeps its copies in this tier.")
    endpoint_url = serializers.CharField()
    region = serializers.CharField()
    bucket = serializers.CharField()
    prefix = serializers.CharField()
    access_key_id = serializers.CharField()
    secret_access_key_set = serializers.SerializerMethodField(
        help_text="Whether a secret key is stored. The key itself is never returned."
    )
    encryption = serializers.SerializerMethodField()
    kms_key_id = serializers.CharField()
    storage_classes = serializers.SerializerMethodField()
    in_use = serializers.SerializerMethodField(help_text="Images are stored in this location.")
    created_at = serializers.DateTimeField()
    last_test_at = serializers.DateTimeField(allow_null=True)
    last_test_ok = serializers.BooleanField(allow_null=True)
    last_test_message = serializers.CharField()

    class Meta:
        ref_name = "ArchiveStorageLocation"

    def get_secret_access_key_set(self, obj: StorageLocation) -> bool:
        return bool(obj.secret_access_key_encrypted)

    @extend_schema_field(
        NamedChoiceField(enum_name="ArchiveEncryptionEnum", choices=ENCRYPTION_CHOICES)
    )
    def get_encryption(self, obj: StorageLocation) -> str:
        return services.encryption_mode(obj.encryption)

    @extend_schema_field(StorageClassesSerializer)
    def get_storage_classes(self, obj: StorageLocation) -> dict[str, str]:
        return {tier: obj.storage_class(tier) or services.NOT_AVAILABLE for tier in TIERS}

    def get_in_use(self, obj: StorageLocation) -> bool:
        return selectors.location_in_use(org=obj.organization, location=obj)


class LocationInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    role = NamedChoiceField(
        enum_name="ArchiveLocationRoleEnum",
        choices=StorageLocation.Role.choices,
        default=StorageLocation.Role.REPLICA,
        help_text="primary: new images go here (only before the first image is stored). "
        "replica: the disaster-recovery copy (at most one; not the primary's own bucket).",
    )
    replica_tier = tier_field(
        required=False, help_text="Replica only: the tier its copies are kept in (default cold)."
    )
    endpoint_url = serializers.CharField(max_length=200, required=False, allow_blank=True)
    region = serializers.CharField(max_length=64, required=False, allow_blank=True)
    bucket = serializers.CharField(max_length=63)
    prefix = serializers.CharField(max_length=255, required=False, allow_blank=True)
    access_key_id = serializers.CharField(max_length=255)
    secret_access_key = serializers.CharField(
        max_length=255,
        write_only=True,
        help_text="Stored encrypted; never returned. On PATCH, omit it to keep the stored one.",
    )
    encryption = NamedChoiceField(
        enum_name="ArchiveEncryptionEnum", choices=ENCRYPTION_CHOICES, default="sse-s3"
    )
    kms_key_id = serializers.CharField(
        max_length=2048, required=False, allow_blank=True, help_text="Only with sse-kms."
    )
    storage_classes = StorageClassesInputSerializer(
        required=False,
        help_text="Per tier; defaults STANDARD, STANDARD_IA, GLACIER_IR, DEEP_ARCHIVE.",
    )

    class Meta:
        ref_name = "ArchiveStorageLocationInput"


def _location_input(
    data: dict[str, Any], base: StorageLocation | None = None
) -> services.LocationInput:
    """Validated input -> the service's input; on PATCH, omitted fields keep their value."""
    current: dict[str, Any] = {}
    if base is not None:
        current = {
            "name": base.name,
            "role": base.role,
            "replica_tier": base.replica_tier,
            "endpoint_url": base.endpoint_url,
            "region": base.region,
            "bucket": base.bucket,
            "prefix": base.prefix,
            "access_key_id": base.access_key_id,
            "encryption": services.encryption_mode(base.encryption),
            "kms_key_id": base.kms_key_id,
            "storage_classes": {
                tier: base.storage_class(tier) or services.NOT_AVAILABLE for tier in TIERS
            },
        }
    merged = {**current, **data}
    classes = {**current.get("storage_classes", {}), **(data.get("storage_classes") or {})}
    return services.LocationInput(
        name=merged["name"],
        role=merged.get("role", StorageLocation.Role.REPLICA),
        replica_tier=merged.get("replica_tier", "cold"),
        endpoint_url=merged.get("endpoint_url", ""),
        region=merged.get("region", ""),
        bucket=merged["bucket"],
        prefix=merged.get("prefix", ""),
        access_key_id=merged["access_key_id"],
        secret_access_key=data.get("secret_access_key", ""),
        encryption=merged.get("encryption", "sse-s3"),
        kms_key_id=merged.get("kms_key_id", ""),
        storage_classes=classes or None,
    )


class LocationListApi(OrgAPIView):
    """The organization's storage locations: the platform default or its own buckets."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE, "POST": Perm.STORAGE_MANAGE}
    pagination_class = OldestFirstPagination

    @extend_schema(
        tags=["storage"],
        summary="List storage locations",
        responses={200: LocationOutputSerializer(many=True), **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return paginated(
            self, request, selectors.location_list(org=self.org), LocationOutputSerializer
        )

    @extend_schema(
        tags=["storage"],
        summary="Add an S3 bucket",
        description="Nothing is contacted: test the connection with "
        "`POST /storage-locations/{id}/test/`. As primary (only while the organization has no "
        "images) it replaces the platform default; a bucket that was primary becomes a replica.",
        request=LocationInputSerializer,
        responses={201: LocationOutputSerializer, **_errors(400, 409)},
    )
    def post(self, request: Request, **kwargs: Any) -> Response:
        serializer = LocationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        location = services.location_create(
            org=self.org, data=_location_input(serializer.validated_data), actor=self.actor
        )
        return Response(LocationOutputSerializer(location).data, status=status.HTTP_201_CREATED)


class LocationDetailApi(OrgAPIView):
    """One storage location."""

    permissions_required = {
        "GET": Perm.STORAGE_MANAGE,
        "PATCH": Perm.STORAGE_MANAGE,
        "DELETE": Perm.STORAGE_MANAGE,
    }

    @extend_schema(
        tags=["storage"],
        summary="One storage location",
        responses={200: LocationOutputSerializer, **_errors()},
    )
    def get(self, request: Request, location_id: int, **kwargs: Any) -> Response:
        location = selectors.location_get(org=self.org, location_id=location_id)
        return Response(LocationOutputSerializer(location).data)

    @extend_schema(
        tags=["storage"],
        summary="Change a storage location",
        description="Omitted fields keep their value. The bucket, prefix, endpoint and region "
        "are fixed once images are stored in the location; credentials and encryption are not.",
        request=LocationInputSerializer,
        responses={200: LocationOutputSerializer, **_errors(400, 409)},
    )
    def patch(self, request: Request, location_id: int, **kwargs: Any) -> Response:
        location = selectors.location_get(org=self.org, location_id=location_id)
        serializer = LocationInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        location = services.location_update(
            org=self.org,
            location=location,
            data=_location_input(serializer.validated_data, base=location),
            actor=self.actor,
        )
        return Response(LocationOutputSerializer(location).data)

    @extend_schema(
        tags=["storage"],
        summary="Remove a storage location",
        description="Refused while images are stored in it. Nothing in the bucket is deleted.",
        responses={204: None, **_errors(409)},
    )
    def delete(self, request: Request, location_id: int, **kwargs: Any) -> Response:
        location = selectors.location_get(org=self.org, location_id=location_id)
        services.location_delete(org=self.org, location=location, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LocationTestApi(OrgAPIView):
    """Write, read back and delete a probe object in the bucket."""

    permissions_required = {"POST": Perm.STORAGE_MANAGE}

    @extend_schema(
        tags=["storage"],
        summary="Test a storage location's connection",
        description="The outcome is kept on the location (`last_test_*`) and returned; a failed "
        "test is a 200 with `last_test_ok: false` and the reason in `last_test_message`.",
        request=None,
        responses={200: LocationOutputSerializer, **_errors(409)},
    )
    def post(self, request: Request, location_id: int, **kwargs: Any) -> Response:
        location = selectors.location_get(org=self.org, location_id=location_id)
        location = services.location_test(org=self.org, location=location, actor=self.actor)
        return Response(LocationOutputSerializer(location).data)


class ArchiveSettingsOutputSerializer(serializers.Serializer):
    storage_quota_bytes = serializers.IntegerField(
        allow_null=True, help_text="Null: no quota. Ingest refuses images beyond it."
    )
    stored_bytes = serializers.IntegerField()
    bytes_by_tier = serializers.DictField(child=serializers.IntegerField())

    class Meta:
        ref_name = "ArchiveSettings"


class ArchiveSettingsApi(OrgAPIView):
    """The storage quota and what is stored per tier."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE, "PATCH": Perm.STORAGE_MANAGE}

    class InputSerializer(serializers.Serializer):
        storage_quota_bytes = serializers.IntegerField(allow_null=True, min_value=1)

        class Meta:
            ref_name = "ArchiveSettingsUpdate"

    def _output(self) -> Response:
        tiers = index_selectors.bytes_by_tier(org=self.org)
        config = index_selectors.archive_settings_get(org=self.org)
        data = {
            "storage_quota_bytes": config.storage_quota_bytes,
            "stored_bytes": sum(tiers.values()),
            "bytes_by_tier": tiers,
        }
        return Response(ArchiveSettingsOutputSerializer(data).data)

    @extend_schema(
        tags=["storage"],
        summary="Storage quota and usage",
        responses={200: ArchiveSettingsOutputSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        return self._output()

    @extend_schema(
        tags=["storage"],
        summary="Set or remove the storage quota",
        request=InputSerializer,
        responses={200: ArchiveSettingsOutputSerializer, **_errors(400)},
    )
    def patch(self, request: Request, **kwargs: Any) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.archive_settings_update(
            org=self.org,
            storage_quota_bytes=serializer.validated_data["storage_quota_bytes"],
            actor=self.actor,
        )
        return self._output()


class ReplicationStatusSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(help_text="The organization has a replica location.")
    location = LocationOutputSerializer(allow_null=True)
    instances = serializers.IntegerField()
    bytes = serializers.IntegerField()
    replicated = serializers.IntegerField()
    replicated_bytes = serializers.IntegerField()
    pending = serializers.IntegerField(help_text="Instances without a replica yet.")
    pending_bytes = serializers.IntegerField()
    failed = serializers.IntegerField()
    failed_bytes = serializers.IntegerField()
    oldest_unreplicated_at = serializers.DateTimeField(
        allow_null=True, help_text="When the oldest instance without a verified replica arrived."
    )
    lag_seconds = serializers.IntegerField(
        help_text="How long the oldest instance without a verified replica has waited; 0 when "
        "everything is replicated."
    )
    last_drill = DrillOutputSerializer(allow_null=True)

    class Meta:
        ref_name = "ArchiveReplicationStatus"


class ReplicationStatusApi(OrgAPIView):
    """Where the disaster-recovery replica stands."""

    permissions_required = {"GET": Perm.STORAGE_MANAGE}

    @extend_schema(
        tags=["replication"],
        summary="Replication status and lag",
        responses={200: ReplicationStatusSerializer, **_errors()},
    )
    def get(self, request: Request, **kwargs: Any) -> Response:
        state = replica_selectors.replication_status(org=self.org)
        data = {**state.__dict__, "enabled": state.enabled}
        return Response(ReplicationStatusSerializer(data).data)
