"""Storage locations, the DICOM index (study / series / instance), ingest jobs and the access log."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Organization, OrgQuerySet

TIERS = ("hot", "warm", "cold", "archive")
TIER_CHOICES = [(t, t.capitalize()) for t in TIERS]
DEFAULT_STORAGE_CLASSES = {
    "hot": "STANDARD",
    "warm": "STANDARD_IA",
    "cold": "GLACIER_IR",
    "archive": "DEEP_ARCHIVE",
}


class StorageLocation(models.Model):
    """Where an organization's bytes live: the platform default or the hospital's own bucket."""

    class Kind(models.TextChoices):
        PLATFORM = "platform", "Platform default"
        S3 = "s3", "S3-compatible bucket"

    class Role(models.TextChoices):
        PRIMARY = "primary", "Primary"
        REPLICA = "replica", "Disaster-recovery replica"

    class Encryption(models.TextChoices):
        NONE = "", "None"
        SSE_S3 = "AES256", "SSE-S3"
        SSE_KMS = "aws:kms", "SSE-KMS"

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="locations"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PLATFORM)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.PRIMARY)
    endpoint_url = models.URLField(blank=True)
    region = models.CharField(max_length=64, blank=True)
    bucket = models.CharField(max_length=255, blank=True)
    prefix = models.CharField(max_length=255, blank=True)
    access_key_id = models.CharField(max_length=255, blank=True)
    # Fernet token of the secret key (key from settings.STORAGE_CREDENTIALS_KEY); never the plain text.
    secret_access_key_encrypted = models.TextField(blank=True)
    encryption = models.CharField(max_length=16, choices=Encryption.choices, blank=True, default="")
    kms_key_id = models.CharField(max_length=255, blank=True)
    storage_classes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True)
    last_test_message = models.CharField(max_length=500, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["organization", "role", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=models.Q(role="primary"),
                name="location_one_primary",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def storage_class(self, tier: str) -> str:
        return str({**DEFAULT_STORAGE_CLASSES, **(self.storage_classes or {})}[tier])


class Study(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    study_uid = models.CharField(max_length=64)
    patient_id = models.CharField(max_length=64, blank=True, db_index=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    study_description = models.CharField(max_length=256, blank=True)
    study_id = models.CharField(max_length=16, blank=True)
    referring_physician = models.CharField(max_length=324, blank=True)
    # Modalities in study as "\\CT\\MR\\": substring matching on "\\CT\\" finds one exactly.
    modalities = models.CharField(max_length=256, blank=True)
    series_count = models.PositiveIntegerField(default=0)
    instance_count = models.PositiveIntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    bytes_hot = models.BigIntegerField(default=0)
    bytes_warm = models.BigIntegerField(default=0)
    bytes_cold = models.BigIntegerField(default=0)
    bytes_archive = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    # ``ingest.completed`` was sent for the study as it stood at this time.
    notified_at = models.DateTimeField(null=True, blank=True)
    # Study-level DICOM JSON attributes (patient/study module) for QIDO-RS answers.
    metadata = models.JSONField(default=dict, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "study_uid"], name="study_uid_unique")
        ]
        indexes = [
            models.Index(fields=["organization", "patient_id"], name="study_org_patient"),
            models.Index(fields=["organization", "study_date"], name="study_org_date"),
            models.Index(fields=["organization", "accession_number"], name="study_org_accession"),
            models.Index(fields=["organization", "patient_name"], name="study_org_name"),
        ]

    def __str__(self) -> str:
        return self.study_uid

    @property
    def modality_list(self) -> list[str]:
        return [m for m in self.modalities.split("\\") if m]


class Series(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=256, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    instance_count = models.PositiveIntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    bytes_hot = models.BigIntegerField(default=0)
    bytes_warm = models.BigIntegerField(default=0)
    bytes_cold = models.BigIntegerField(default=0)
    bytes_archive = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "series"
        constraints = [
            models.UniqueConstraint(fields=["organization", "series_uid"], name="series_uid_unique")
        ]
        indexes = [models.Index(fields=["organization", "modality"], name="series_org_modality")]

    def __str__(self) -> str:
        return self.series_uid


class Instance(models.Model):
    """One stored DICOM object. The row exists only once its bytes are stored and verified."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="instances")
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64, blank=True)
    instance_number = models.IntegerField(null=True, blank=True)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    location = models.ForeignKey(StorageLocation, on_delete=models.PROTECT, related_name="+")
    object_key = models.CharField(max_length=512)
    tier = models.CharField(max_length=16, choices=TIER_CHOICES, default="hot")
    received_at = models.DateTimeField(default=timezone.now)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    # DICOM JSON of the dataset without bulk data (PS3.18 F.2), for WADO-RS metadata.
    metadata = models.JSONField(default=dict, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "sop_instance_uid"], name="instance_sop_uid_unique"
            )
        ]
        indexes = [models.Index(fields=["organization", "tier"], name="instance_org_tier")]

    def __str__(self) -> str:
        return self.sop_instance_uid


class PendingObject(models.Model):
    """Intent log: written before bytes are stored, removed with the index row that adopts them.

    A row older than the cleanup age means a crash between storing and indexing: the cleanup
    beat job deletes the object (unless an instance references it) and then the row.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    location = models.ForeignKey(StorageLocation, on_delete=models.CASCADE, related_name="+")
    object_key = models.CharField(max_length=512)
    tier = models.CharField(max_length=16, choices=TIER_CHOICES, default="hot")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = OrgQuerySet.as_manager()

    def __str__(self) -> str:
        return self.object_key


class IngestJob(models.Model):
    class Kind(models.TextChoices):
        STOW = "stow", "STOW-RS"
        CSTORE = "cstore", "C-STORE"
        UPLOAD = "upload", "Portal upload"
        IMPORT = "import", "Bucket import"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    source = models.CharField(max_length=1000, blank=True)
    # Import jobs: bucket settings; upload jobs: the spooled files' folder.
    params = models.JSONField(default=dict, blank=True)
    total_files = models.PositiveIntegerField(null=True, blank=True)
    total_bytes = models.BigIntegerField(null=True, blank=True)
    received = models.PositiveIntegerField(default=0)
    stored = models.PositiveIntegerField(default=0)
    duplicate = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    bytes_received = models.BigIntegerField(default=0)
    bytes_stored = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=1000, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} job {self.pk} ({self.state})"


class IngestFailure(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(
        IngestJob, on_delete=models.CASCADE, related_name="failures", null=True, blank=True
    )
    source = models.CharField(max_length=1000, blank=True)
    sop_instance_uid = models.CharField(max_length=64, blank=True)
    reason_code = models.PositiveIntegerField()
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.reason_code:#06x} {self.reason}"


class AccessEvent(models.Model):
    """Who read what, when, how many bytes: the tier policies and the cost simulator read this."""

    class Kind(models.TextChoices):
        RETRIEVE = "retrieve", "WADO-RS retrieve"
        METADATA = "metadata", "WADO-RS metadata"
        DOWNLOAD = "download", "Portal download"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="accesses")
    series = models.ForeignKey(
        Series, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    actor_label = models.CharField(max_length=255, blank=True)
    bytes = models.BigIntegerField(default=0)
    instances = models.PositiveIntegerField(default=0)
    at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["organization", "study", "at"], name="access_org_study_at")]

    def __str__(self) -> str:
        return f"{self.kind} {self.study_id} at {self.at:%Y-%m-%d %H:%M}"


class ArchiveSettings(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="archive_settings"
    )
    # None: no quota. Checked on ingest against the bytes indexed.
    storage_quota_bytes = models.BigIntegerField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    def __str__(self) -> str:
        return f"archive settings of {self.organization}"


class DicomAE(models.Model):
    """A called AE title on the shared C-STORE listener, and who may send to it."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="dicom_aes"
    )
    # One listener serves every organization: the called AE title says which one.
    ae_title = models.CharField(max_length=16, unique=True)
    # Empty: any calling AE title / any address.
    allowed_calling_ae_titles = models.JSONField(default=list, blank=True)
    allowed_networks = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return self.ae_title
