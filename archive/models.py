"""Storage locations, the DICOM index (study / series / instance), ingest jobs and the access log."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper
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
    # A disaster-recovery replica keeps its copies in this tier (they are read only in a disaster).
    replica_tier = models.CharField(max_length=16, choices=TIER_CHOICES, default="cold")
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
    # Retention: a trashed study is invisible to searches and reads; it is purged (bytes first,
    # then rows) after ``purge_after`` unless restored from the trash before.
    trashed_at = models.DateTimeField(null=True, blank=True)
    purge_after = models.DateTimeField(null=True, blank=True)
    trash_reason = models.CharField(max_length=500, blank=True)
    # Mirrors "an active LegalHold row exists" (kept in the same transaction), so that policy
    # selection in SQL can exclude held studies with a plain column test.
    legal_hold = models.BooleanField(default=False)
    # Study-level DICOM JSON attributes (patient/study module) for QIDO-RS answers.
    metadata = models.JSONField(default=dict, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "studies"
        constraints = [
            models.UniqueConstraint(fields=["organization", "study_uid"], name="study_uid_unique")
        ]
        indexes = [
            models.Index(fields=["organization", "patient_id"], name="study_org_patient"),
            models.Index(fields=["organization", "study_date"], name="study_org_date"),
            models.Index(fields=["organization", "accession_number"], name="study_org_accession"),
            models.Index(fields=["organization", "patient_name"], name="study_org_name"),
            models.Index(
                fields=["organization", "purge_after"],
                condition=models.Q(trashed_at__isnull=False),
                name="study_org_trash",
            ),
        ]

    def __str__(self) -> str:
        return self.study_uid

    @property
    def modality_list(self) -> list[str]:
        return [m for m in self.modalities.split("\\") if m]


class NameWord(models.Model):
    """One word of a study's person name, case- and accent-free (``archive.index.names``), for
    fuzzy person-name matching: a word prefix is found in the index of its table instead of by
    reading every name. Written with the study by the ingest pipeline; goes with it.

    One table per name attribute (``NAME_WORD_MODELS``): the database estimates how many rows a
    prefix matches from each table's own statistics, and a word common in one attribute (the
    referring physician of half the studies) does not make a rare one in the other look common
    (which turned a 15 ms search into a walk through every study).
    """

    # Both foreign keys are indexed by the index and the constraint of each table, which start
    # with them.
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+", db_index=False)
    word = models.CharField(max_length=64)

    objects = OrgQuerySet.as_manager()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.word


class PatientNameWord(NameWord):
    """A word of ``Study.patient_name``."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "word"], name="patient_name_word_unique")
        ]
        indexes = [
            # Pattern operators: a LIKE 'smi%' prefix uses the index whatever the database's
            # collation (PostgreSQL; other databases ignore opclasses, and SQLite's GLOB 'smi*'
            # uses the plain index). The study last: a search reads the index only.
            models.Index(
                fields=["organization", "word", "study"],
                name="patient_name_word_prefix",
                opclasses=["int8_ops", "varchar_pattern_ops", "int8_ops"],
            ),
        ]


class ReferringPhysicianNameWord(NameWord):
    """A word of ``Study.referring_physician``; indexed as ``PatientNameWord``."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "word"], name="referring_name_word_unique")
        ]
        indexes = [
            models.Index(
                fields=["organization", "word", "study"],
                name="referring_name_word_prefix",
                opclasses=["int8_ops", "varchar_pattern_ops", "int8_ops"],
            ),
        ]


# The word table of each person-name column of Study.
NAME_WORD_MODELS: dict[str, type[NameWord]] = {
    "patient_name": PatientNameWord,
    "referring_physician": ReferringPhysicianNameWord,
}


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
    # When the object entered its current tier (None: since it was received). Leaving a tier
    # before its minimum storage duration is charged as early deletion from this time.
    tier_changed_at = models.DateTimeField(null=True, blank=True)
    # Archive tier: a restored, readable copy exists until this time.
    restored_until = models.DateTimeField(null=True, blank=True)
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


class FrameIndex(models.Model):
    """Where the frames of one instance's pixel data lie in its stored object, so that a frame
    is read from the store by one byte range (WADO-RS frames, rendered images).

    Written with the instance at ingest, or on the first frame request for an instance stored
    before frame indexes existed; never changed afterwards (a stored object never changes, and
    its copies in other tiers, restores and replicas hold the same bytes). Native pixel data:
    frame n starts (n - 1) frame sizes into the value. Encapsulated: ``boundaries`` holds
    ``frames + 1`` object offsets (little endian unsigned 64-bit) and the items of frame n span
    ``[boundaries[n-1], boundaries[n])``: 8 bytes per frame.
    """

    instance = models.OneToOneField(
        Instance, on_delete=models.CASCADE, primary_key=True, related_name="frame_index"
    )
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    vr = models.CharField(max_length=2)
    little_endian = models.BooleanField(default=True)
    # The pixel data value's first byte in the object, and its length (None: encapsulated).
    offset = models.BigIntegerField()
    length = models.BigIntegerField(null=True, blank=True)
    frames = models.PositiveIntegerField()
    boundaries = models.BinaryField(default=b"", blank=True)
    # Why the frames cannot be told apart (a broken encapsulation); frames is then 0.
    problem = models.CharField(max_length=500, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "frame indexes"

    def __str__(self) -> str:
        return f"{self.frames} frame(s) of instance {self.instance_id}"


class DerivedObject(models.Model):
    """An object the archive derives from one of the hospital's instances and keeps to serve it
    faster (a thumbnail). Stored in the organization's primary location, hot tier, under
    ``org-<id>/derived/...``; metered as derived storage (``storage.derived``), never as images:
    it is no instance and counts in no study's bytes, instances or quota.

    ``instance`` becomes NULL when the instance is purged and ``location`` when the location is
    removed; such rows, and those of a trashed study, are removed by the derived-object sweep
    (``archive.dicomweb.thumbnails.derived_sweep``), bytes first, their bytes leaving the ledger.
    """

    class Kind(models.TextChoices):
        THUMBNAIL = "thumbnail", "Thumbnail"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    instance = models.ForeignKey(
        Instance, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # What was derived from the instance (frame, size, media type): one object per variant.
    variant = models.CharField(max_length=64)
    location = models.ForeignKey(
        StorageLocation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    object_key = models.CharField(max_length=512)
    tier = models.CharField(max_length=16, choices=TIER_CHOICES, default="hot")
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "kind", "variant"], name="derived_object_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.variant} of instance {self.instance_id}"


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
        THUMBNAIL = "thumbnail", "Thumbnail"

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
    # Image reads (frames, rendered images, thumbnails) of one series by one reader within one
    # minute share a row (``archive.index.services.image_read_record``): ``reads`` requests,
    # ``bytes`` and ``instances`` their sums, ``at`` the first. Null for every other access.
    reads = models.PositiveIntegerField(default=1)
    # Null, not "": the other accesses must never meet in the unique constraint below.
    window_key = models.CharField(  # noqa: DJ001
        max_length=120, null=True, blank=True, editable=False
    )

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["organization", "study", "at"], name="access_org_study_at")]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "window_key"], name="access_org_window_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.study_id} at {self.at:%Y-%m-%d %H:%M}"


class ArchiveSettings(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="archive_settings"
    )
    # None: no quota. Checked on ingest against the bytes indexed.
    storage_quota_bytes = models.BigIntegerField(null=True, blank=True)
    # The policy version the engine applies; None: no automatic moves or deletions.
    active_policy = models.ForeignKey(
        "PolicyVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The shortest retention the organization's law allows: no delete rule may be shorter.
    retention_minimum_days = models.PositiveIntegerField(null=True, blank=True)
    trash_grace_days = models.PositiveIntegerField(default=30)
    # How long a restored archive-tier object stays readable.
    restore_days = models.PositiveIntegerField(default=7)
    # A restore not ready after this long is reported as timed out.
    restore_timeout_hours = models.PositiveIntegerField(default=72)
    # Rate limit of tier moves handed to the workers, per organization.
    moves_per_minute = models.PositiveIntegerField(default=6000)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "archive settings"
        verbose_name_plural = "archive settings"

    def __str__(self) -> str:
        return f"archive settings of {self.organization}"


class DicomAE(models.Model):
    """A called AE title on the shared C-STORE listener, and who may send to it."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="dicom_aes"
    )
    # One listener serves every organization: the called AE title says which one. Stored as
    # entered and matched exactly (DICOM compares AE titles case-sensitively), but unique
    # regardless of case across organizations (the constraint below): ``PACS`` of one hospital
    # and ``pacs`` of another would be confused by people and mistyped into the wrong one.
    ae_title = models.CharField(max_length=16, unique=True)
    # Empty list: that restriction does not apply. Both empty admit nobody unless
    # ``allow_any_caller`` was chosen explicitly (``archive.ae_titles.services``).
    allowed_calling_ae_titles = models.JSONField(default=list, blank=True)
    allowed_networks = models.JSONField(default=list, blank=True)
    # The explicit, audited choice to admit any calling AE title from any address; only with
    # both lists empty.
    allow_any_caller = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "DICOM AE title"
        verbose_name_plural = "DICOM AE titles"
        ordering = ["ae_title"]
        constraints = [
            models.UniqueConstraint(Upper("ae_title"), name="archive_dicomae_title_upper_unique"),
        ]

    def __str__(self) -> str:
        return self.ae_title


class DicomDestination(models.Model):
    """A DICOM peer an organization sends to: the move destinations of C-MOVE (its PACS, its
    workstations), known by AE title, reached at host and port, with TLS or without."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="dicom_destinations"
    )
    # Matched exactly against a C-MOVE's Move Destination (DICOM compares AE titles
    # case-sensitively); unique per organization regardless of case, so that ``PACS`` and
    # ``pacs`` never name two different peers.
    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=253)
    port = models.PositiveIntegerField()
    tls = models.BooleanField(default=False)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # The last C-ECHO the portal or the API asked for (the "test" button).
    last_echo_at = models.DateTimeField(null=True, blank=True)
    last_echo_ok = models.BooleanField(null=True, blank=True)
    last_echo_message = models.CharField(max_length=500, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "DICOM destination"
        verbose_name_plural = "DICOM destinations"
        ordering = ["ae_title"]
        constraints = [
            models.UniqueConstraint(
                "organization", Upper("ae_title"), name="archive_dicomdestination_title_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class PolicyVersion(models.Model):
    """One version of an organization's archive policy: ordered rules, immutable once written.

    ``rules`` is a list of ``{"name", "conditions": {...}, "action": {...}}`` validated by
    ``archive.policies.validate.rules_validate``; every change is a new version (see ``policy_save``).
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    number = models.PositiveIntegerField()
    rules = models.JSONField(default=list)
    note = models.CharField(max_length=500, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_label = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "number"], name="policy_version_unique")
        ]

    def __str__(self) -> str:
        return f"policy v{self.number}"


class TierMove(models.Model):
    """Moving one instance to another tier (and maybe location), as a resumable state machine.

    planned -> copying -> verifying -> done, or failed with a reason. A worker claims a move
    with a conditional UPDATE and holds it for ARCHIVE_MOVE_LEASE_SECONDS; a move whose lease ran
    out is taken over and repeated from its state, which every step tolerates.
    """

    class State(models.TextChoices):
        PLANNED = "planned", "Planned"
        COPYING = "copying", "Copying"
        VERIFYING = "verifying", "Verifying"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Origin(models.TextChoices):
        POLICY = "policy", "Archive policy"
        MANUAL = "manual", "Manual"
        LOCATION = "location", "Location change"

    OPEN_STATES = (State.PLANNED, State.COPYING, State.VERIFYING)

    # Planning writes up to a million rows in one statement: the foreign keys are enforced by the
    # ORM (on_delete) rather than by deferred database checks that lock every referenced row at
    # commit, and only the columns the engine filters on are indexed.
    organization = models.ForeignKey(
        Organization,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="moves", db_constraint=False
    )
    study = models.ForeignKey(
        Study, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False
    )
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.POLICY)
    policy_version = models.ForeignKey(
        PolicyVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    rule_index = models.PositiveIntegerField(null=True, blank=True)
    from_tier = models.CharField(max_length=16, choices=TIER_CHOICES)
    to_tier = models.CharField(max_length=16, choices=TIER_CHOICES)
    from_location = models.ForeignKey(
        StorageLocation,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    to_location = models.ForeignKey(
        StorageLocation,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    size_bytes = models.BigIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PLANNED)
    attempts = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=1000, blank=True)
    planned_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-planned_at", "-id"]
        constraints = [
            # At most one open move per instance: planning twice plans nothing new.
            models.UniqueConstraint(
                fields=["instance"],
                condition=models.Q(state__in=["planned", "copying", "verifying"]),
                name="tiermove_one_open_per_instance",
            )
        ]
        indexes = [models.Index(fields=["organization", "state"], name="tiermove_org_state")]

    def __str__(self) -> str:
        return f"move {self.pk}: {self.from_tier} -> {self.to_tier} ({self.state})"


class RestoreRequest(models.Model):
    """A restore of archive-tier instances (one read, a study, or a patient's studies)."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        TIMED_OUT = "timed_out", "Timed out"

    class Scope(models.TextChoices):
        INSTANCES = "instances", "Instances read"
        STUDY = "study", "Study"
        PATIENT = "patient", "Patient"

    class Origin(models.TextChoices):
        ASKED = "asked", "Asked for"
        PREFETCH = "prefetch", "Prefetch"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    scope = models.CharField(max_length=16, choices=Scope.choices)
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.CASCADE, related_name="restores"
    )
    patient_id = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS)
    days = models.PositiveIntegerField()
    instances_total = models.PositiveIntegerField(default=0)
    instances_ready = models.PositiveIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=255, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)
    timeout_at = models.DateTimeField()
    checked_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    # Asked for (a read, a bulk restore) or a prefetch of a patient's priors by the policy's
    # prefetch rule; ``reason`` says what triggered a prefetch ("prefetch: new study <uid>",
    # "prefetch: order <id>").
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.ASKED)
    reason = models.CharField(max_length=200, blank=True)
    # A prefetch's cost as estimated when it was opened (``restore.bytes`` priced marginally on
    # the plan in force); the prefetch rule's monthly cap adds these up. None: not a prefetch.
    estimated_cost = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "state"], name="restore_org_state"),
            models.Index(
                fields=["organization", "origin", "requested_at"], name="restore_org_origin_at"
            ),
        ]

    def __str__(self) -> str:
        return f"restore {self.pk} ({self.state})"


class RestoreItem(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    restore = models.ForeignKey(RestoreRequest, on_delete=models.CASCADE, related_name="items")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="+")
    ready_at = models.DateTimeField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["restore", "instance"], name="restore_item_unique")
        ]

    def __str__(self) -> str:
        return f"restore {self.restore_id} item {self.instance_id}"


class LegalHold(models.Model):
    """A study kept whatever the policy says, until an owner or admin lifts the hold."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="holds")
    reason = models.CharField(max_length=500)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_by_label = models.CharField(max_length=255, blank=True)
    set_at = models.DateTimeField(default=timezone.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lifted_by_label = models.CharField(max_length=255, blank=True)
    lift_reason = models.CharField(max_length=500, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-set_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study"],
                condition=models.Q(lifted_at__isnull=True),
                name="legal_hold_one_active",
            )
        ]

    def __str__(self) -> str:
        return f"hold on {self.study_id}"


class InstanceReplica(models.Model):
    """An instance's copy in the organization's disaster-recovery location, verified."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Replicated"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="replicas")
    location = models.ForeignKey(StorageLocation, on_delete=models.PROTECT, related_name="+")
    tier = models.CharField(max_length=16, choices=TIER_CHOICES)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=1000, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    replicated_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["instance", "location"], name="replica_unique")
        ]
        indexes = [
            models.Index(fields=["organization", "location", "state"], name="replica_org_state")
        ]

    def __str__(self) -> str:
        return f"replica of {self.instance_id} in {self.location_id} ({self.state})"


class ReplicaCheck(models.Model):
    """A disaster-recovery drill: a random sample read back from the replica and verified."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    location = models.ForeignKey(StorageLocation, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    sampled = models.PositiveIntegerField(default=0)
    verified = models.PositiveIntegerField(default=0)
    missing = models.PositiveIntegerField(default=0)
    mismatched = models.PositiveIntegerField(default=0)
    bytes_read = models.BigIntegerField(default=0)
    # Per failed sample: {"sop_instance_uid", "problem"}.
    problems = models.JSONField(default=list, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"DR drill {self.pk}: {self.verified}/{self.sampled} verified"


class StorageCommitment(models.Model):
    """A Storage Commitment Push Model request (N-ACTION) of a modality, kept until its
    N-EVENT-REPORT has been delivered (``archive.dimse.commitment``).

    Written before the N-ACTION is answered with success, so that a listener that stops before
    reporting reports it when it starts again. ``items`` are the requested ``[SOP Class UID, SOP
    Instance UID]`` pairs; ``result`` is the last decision and delivery: committed and failed
    pairs (with their PS3.4 J.3.2.1.1 failure reason), the event type, how it was delivered.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        REPORTED = "reported", "Reported"
        FAILED = "failed", "Failed"  # every delivery attempt failed; never reported

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    transaction_uid = models.CharField(max_length=64)
    calling_ae = models.CharField(max_length=16)
    called_ae = models.CharField(max_length=16)
    address = models.CharField(max_length=45, blank=True)
    items = models.JSONField(default=list)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # The next delivery attempt is due then; a listener claims a row until ``claimed_until``.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    reported_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="commitment_due"),
            models.Index(
                fields=["organization", "transaction_uid"], name="commitment_org_transaction"
            ),
            models.Index(fields=["organization", "created_at"], name="commitment_org_created"),
        ]

    def __str__(self) -> str:
        return f"storage commitment {self.transaction_uid} of {self.calling_ae}"


class DicomAssociation(models.Model):
    """One association a DICOM peer opened to the listener and the listener admitted, and what
    it did (``archive.dimse.activity``): shown on the portal's DICOM connections page.

    Written by the listener's activity recorder, off the DIMSE path: the row when the association
    is admitted, its counters as operations finish, its end when it is released or aborted. A row
    whose listener stopped without closing it keeps ``ended_at`` empty. ``counts`` per operation
    kind and outcome (C-STORE and C-ECHO count instances and echoes; the others requests):
    ``{"find": {"success": 3, "failure": 1}, "store": {"success": 120}}``. Deleted after
    ``DIMSE_ACTIVITY_RETENTION_DAYS`` with its operations.
    """

    class Direction(models.TextChoices):
        INBOUND = "inbound", "Inbound"

    class End(models.TextChoices):
        OPEN = "open", "Open"
        RELEASED = "released", "Released"
        ABORTED = "aborted", "Aborted"
        ENDED = "ended", "Connection closed"  # neither released nor aborted (broken, timed out)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # The called AE title's configuration while it exists; the title itself is kept.
    dicom_ae = models.ForeignKey(
        DicomAE, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    called_ae = models.CharField(max_length=16)
    calling_ae = models.CharField(max_length=16)
    address = models.CharField(max_length=45, blank=True)
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.INBOUND)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end = models.CharField(max_length=10, choices=End.choices, default=End.OPEN)
    # The worst outcome of its operations ("" while it has none): failure, warning, cancelled,
    # success.
    outcome = models.CharField(max_length=10, blank=True)
    counts = models.JSONField(default=dict, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "DICOM association"
        verbose_name_plural = "DICOM associations"
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-started_at", "-id"], name="dimse_assoc_org_at"),
            models.Index(fields=["organization", "calling_ae"], name="dimse_assoc_org_calling"),
            models.Index(fields=["organization", "called_ae"], name="dimse_assoc_org_called"),
            models.Index(fields=["started_at"], name="dimse_assoc_started"),
        ]

    def __str__(self) -> str:
        return (
            f"association {self.calling_ae} -> {self.called_ae} at {self.started_at:%Y-%m-%d %H:%M}"
        )


class DicomOperation(models.Model):
    """One DIMSE operation of a ``DicomAssociation`` and its outcome: a C-FIND, C-MOVE, C-GET or
    storage commitment request each; the C-STOREs and C-ECHOs of an association as one row each
    (counted, not one row per instance).

    No patient data: a query keeps its information model, level and the names of the keys that
    carried a value, never the values; a retrieve how many UIDs it named per level and whether a
    PatientID was given. ``status`` is the final DIMSE status sent (for C-STORE the last failure,
    else 0x0000). Counts: ``matches`` (C-FIND matches sent; C-MOVE/C-GET sub-operations;
    instances a commitment names), ``completed`` / ``failed`` / ``warning`` (sub-operations; the
    C-STOREs answered with success / failure; C-ECHOs completed).
    """

    class Kind(models.TextChoices):
        ECHO = "echo", "C-ECHO"
        STORE = "store", "C-STORE"
        FIND = "find", "C-FIND"
        MOVE = "move", "C-MOVE"
        GET = "get", "C-GET"
        COMMIT = "commit", "Storage commitment"

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        WARNING = "warning", "Warning"
        FAILURE = "failure", "Failure"
        CANCELLED = "cancelled", "Cancelled"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    association = models.ForeignKey(
        DicomAssociation, on_delete=models.CASCADE, related_name="operations"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    # "Patient Root" / "Study Root"; PATIENT, STUDY, SERIES or IMAGE.
    model = models.CharField(max_length=16, blank=True)
    level = models.CharField(max_length=8, blank=True)
    # A query's matching keys (keywords that carried a value) and how many keys were asked to
    # be returned; a retrieve's UID counts per level and whether a PatientID was given.
    keys = models.JSONField(default=list, blank=True)
    details = models.JSONField(default=dict, blank=True)
    matches = models.PositiveIntegerField(null=True, blank=True)
    completed = models.PositiveIntegerField(null=True, blank=True)
    failed = models.PositiveIntegerField(null=True, blank=True)
    warning = models.PositiveIntegerField(null=True, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)
    destination_ae = models.CharField(max_length=16, blank=True)
    comment = models.CharField(max_length=500, blank=True)
    commitment = models.ForeignKey(
        StorageCommitment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    ingest_job = models.ForeignKey(
        IngestJob, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = OrgQuerySet.as_manager()

    class Meta:
        verbose_name = "DICOM operation"
        verbose_name_plural = "DICOM operations"
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["association", "-started_at"], name="dimse_op_assoc_at"),
            models.Index(fields=["organization", "kind", "outcome"], name="dimse_op_org_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.outcome}"

    @property
    def status_hex(self) -> str:
        return "" if self.status is None else f"0x{self.status:04X}"


class Reconciliation(models.Model):
    """One run of the consistency check (``archive.reconcile``): for each meter and tier, the bytes
    the index names, the ledger's balance and what the object stores list, and every difference.

    ``totals``: one row per (meter, tier) with ``index_bytes``, ``index_objects``,
    ``ledger_bytes``, ``store_bytes``, ``store_objects`` and ``in_flight_bytes`` (copies that work
    in progress explains). ``differences``: the first ``DIFFERENCES_KEPT`` differences, each
    ``{"kind", "meter", "tier", "location", "key", "index_bytes", "other_bytes", "detail"}``;
    ``difference_count`` counts them all.
    """

    DIFFERENCES_KEPT = 500

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        OK = "ok", "No differences"
        DIFFERENCES = "differences", "Differences found"
        FAILED = "failed", "Could not check"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    difference_count = models.PositiveIntegerField(default=0)
    totals = models.JSONField(default=list, blank=True)
    differences = models.JSONField(default=list, blank=True)
    # Why the check could not finish (a store that cannot be listed), for the operator.
    error = models.CharField(max_length=1000, blank=True)

    objects = OrgQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-started_at"], name="reconcile_org_started"),
        ]

    def __str__(self) -> str:
        return f"reconciliation {self.pk} ({self.state})"
