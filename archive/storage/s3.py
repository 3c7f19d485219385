"""Any S3 API (AWS S3, MinIO, Ceph) through boto3. Tiers are storage classes."""

from __future__ import annotations

import base64
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

from archive.storage.base import (
    CHUNK,
    ListedObject,
    ObjectExists,
    RestoreStatus,
    StorageRefused,
    StorageUnavailable,
    StoredObject,
    VerificationFailed,
    range_check,
)
from tenants.netguard import AddressRefused, GuardedConnectionMixin

# Multipart above 64 MiB keeps memory flat for 3 GB objects (a few parts in flight at a time).
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4
)

# CopyObject takes objects up to 5 GB; above that the copy is multipart (UploadPartCopy), still
# done by the server: the managed copy's parts are ranges of the source object, not bytes here.
COPY_MULTIPART_THRESHOLD = 5 * 1024**3
COPY_PART_SIZE = 256 * 1024**2
# Error codes that retrying cannot fix: the move fails at once with the store's reason.
_REFUSED_CODES = {
    "404",
    "NoSuchKey",
    "NotFound",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidObjectState",
    "ObjectNotInActiveTierError",
    "InvalidStorageClass",
    "KMS.NotFoundException",
}


def _if_none_match(params: dict[str, Any], **kwargs: Any) -> None:
    params.setdefault("headers", {})["If-None-Match"] = "*"


def _never_overwrite(client: Any) -> None:
    """Every single-part object this client writes is written only if its key is free
    (``If-None-Match: *`` on PutObject): the server, not a HEAD before, refuses to replace an
    object, so two writers can never swap one's bytes for the other's. Multipart uploads are
    checked by a HEAD in ``put_file`` instead: their completion is also how a tier change above
    5 GB rewrites an object onto itself. Registered once per client (by its unique id)."""
    client.meta.events.register(
        "before-call.s3.PutObject", _if_none_match, unique_id="strata-never-overwrite"
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# --- connections to a tenant's endpoint -----------------------------------------------------------


class EndpointRefused(BotoCoreError):
    """A connection to a tenant's endpoint was refused by the address rules (tenants.netguard)."""

    fmt = "{reason}"


class _GuardedHTTPConnection(GuardedConnectionMixin, AWSHTTPConnection):
    allow_private_setting = "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS"


class _GuardedHTTPSConnection(GuardedConnectionMixin, AWSHTTPSConnection):
    allow_private_setting = "ARCHIVE_ALLOW_PRIVATE_ENDPOINTS"


class _GuardedHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _refusal_is_final(caught_exception: Exception | None = None, **kwargs: Any) -> None:
    # botocore wraps what the connection raised in HTTPClientError and would retry it as a
    # network failure; a refused address stays refused, so it ends the call at once.
    error = (
        caught_exception.kwargs.get("error")
        if isinstance(caught_exception, HTTPClientError)
        else None
    )
    if isinstance(error, AddressRefused):
        raise EndpointRefused(reason=str(error)) from error


def guard_client(client: Any) -> Any:
    """Make every connection of a boto3 client follow ``tenants.netguard``; returns the client.

    Each new connection resolves the host (whichever host botocore builds: the endpoint, or
    ``<bucket>.<endpoint>`` for virtual-hosted addressing) once, refuses it unless every address is
    globally routable (or ARCHIVE_ALLOW_PRIVATE_ENDPOINTS is on), and connects to exactly the
    checked address; TLS is still verified against the host name. A connection through a proxy is
    refused: build the client with ``Config(proxies={})`` so that environment proxies are not used.
    A refusal raises ``EndpointRefused`` (a BotoCoreError) without retries.
    """
    pools = client._endpoint.http_session._pool_classes_by_scheme
    if set(pools) != {"http", "https"}:  # botocore changed: fail loudly, never connect unguarded
        raise RuntimeError("botocore's connection pools cannot be guarded")
    # The dict is shared with the session's pool managers, which create pools lazily.
    pools["http"] = _GuardedHTTPConnectionPool
    pools["https"] = _GuardedHTTPSConnectionPool
    client.meta.events.register_first("needs-retry.s3", _refusal_is_final)
    return client


def _client(
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    *,
    guarded: bool = True,
) -> Any:
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
                # A tenant's endpoint is connected to directly: {} (not None) ignores HTTP(S)_PROXY.
                proxies={} if guarded else None,
            ),
        )
    except (BotoCoreError, ValueError) as exc:
        # Settings boto3 refuses before any request (an access key without its secret, a
        # malformed endpoint): the store cannot be reached, as when it is down, and every
        # caller already handles that (a failed reconciliation, a 503, a retried move).
        raise StorageUnavailable(f"The bucket's client cannot be made: {exc}") from exc
    return guard_client(client) if guarded else client


_CLIENTS: dict[tuple[bool, tuple[str | None, ...]], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _shared_client(*settings_key: str | None, guarded: bool = True) -> Any:
    """One client per endpoint and credentials (and guard) per process.

    Building a boto3 client costs milliseconds of CPU (it loads the service model) and a fresh
    connection pool; a store is made per request, so without this every STOW-RS request and every
    tier-move batch paid for both. boto3 clients are thread-safe.
    """
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((guarded, settings_key))
        if client is None:
            client = _CLIENTS[guarded, settings_key] = _client(*settings_key, guarded=guarded)
        return client


def shared_clients_clear() -> None:
    with _CLIENTS_LOCK:
        _CLIENTS.clear()


class S3Store:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        storage_classes: dict[str, str],
        encryption: str = "",
        kms_key_id: str = "",
        spool_root: str | None = None,
        shared_client: bool = False,
        guarded: bool = True,
    ):
        """``guarded``: the endpoint is the tenant's, every connection follows tenants.netguard;
        only the platform's own store (an operator's endpoint, maybe private) passes False."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.storage_classes = storage_classes
        self.encryption = encryption
        self.kms_key_id = kms_key_id
        self._spool_root = spool_root
        self.endpoint_url = endpoint_url or ""
        self.copy_multipart_threshold = COPY_MULTIPART_THRESHOLD
        self.copy_part_size = COPY_PART_SIZE
        settings_key = (endpoint_url or None, region or None, access_key_id, secret_access_key)
        self.client: Any = (
            _shared_client(*settings_key, guarded=guarded)
            if shared_client
            else _client(*settings_key, guarded=guarded)
        )
        _never_overwrite(self.client)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _class_for(self, tier: str) -> str:
        storage_class = self.storage_classes.get(tier, "")
        if not storage_class:
            raise StorageRefused(
                f"This location has no storage class for the {tier} tier, so it cannot hold "
                f"objects there."
            )
        return storage_class

    def _extra(self, tier: str) -> dict[str, str]:
        extra = {"StorageClass": self._class_for(tier)}
        if self.encryption:
            extra["ServerSideEncryption"] = self.encryption
            if self.encryption == "aws:kms" and self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        return extra

    def spool_dir(self) -> Path:
        path = Path(self._spool_root or tempfile.gettempdir()) / "strata-incoming"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(
        self, *, key: str, path: Path, tier: str, sha256: str, replace: bool = False
    ) -> StoredObject:
        extra = self._extra(tier)
        size = path.stat().st_size
        server_verified = False
        if sha256:
            # S3 verifies the SHA-256 itself for a single-part upload and refuses a mismatch, so
            # a successful PUT is a verified one; multipart uploads are checked by a HEAD below.
            if size < TRANSFER.multipart_threshold:
                extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
                server_verified = True
            extra["Metadata"] = {"sha256": sha256}  # type: ignore[assignment]
        try:
            if replace:
                self._delete_unless_same(key=key, tier=tier, size=size, sha256=sha256)
            elif size >= TRANSFER.multipart_threshold:
                existing = self.head(key=key, tier=tier)
                if existing is not None:
                    return self._same_or_refuse(existing, key=key, size=size, sha256=sha256)
            self.client.upload_file(
                str(path), self.bucket, self._key(key), ExtraArgs=extra, Config=TRANSFER
            )
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            # Refused because the key is taken (412), or failed after the server stored it:
            # what is there tells which.
            existing = self._head_quietly(key=key, tier=tier)
            if existing is None:
                raise StorageUnavailable(f"Could not store {key}: {exc}") from exc
            return self._same_or_refuse(existing, key=key, size=size, sha256=sha256)
        finally:
            path.unlink(missing_ok=True)
        if server_verified:
            return StoredObject(
                key=key, size=size, storage_class=self.storage_classes[tier], sha256=sha256
            )
        stored = self.head(key=key, tier=tier)
        if stored is None:
            raise StorageUnavailable(f"{key} is missing right after it was stored.")
        return stored

    @staticmethod
    def _same_or_refuse(
        existing: StoredObject, *, key: str, size: int, sha256: str
    ) -> StoredObject:
        """An object found under the key: kept as the stored one when it has these bytes."""
        if existing.size != size or (sha256 and existing.sha256 != sha256):
            raise ObjectExists(f"{key} already holds another object; it was not overwritten.")
        return existing

    def _head_quietly(self, *, key: str, tier: str) -> StoredObject | None:
        try:
            return self.head(key=key, tier=tier)
        except StorageUnavailable:
            return None

    def _delete_unless_same(self, *, key: str, tier: str, size: int, sha256: str) -> None:
        existing = self.head(key=key, tier=tier)
        if existing is not None and (existing.size != size or existing.sha256 != sha256):
            self.delete(key=key, tier=tier)

    def head(self, *, key: str, tier: str) -> StoredObject | None:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise StorageUnavailable(str(exc)) from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(str(exc)) from exc
        return StoredObject(
            key=key,
            size=int(meta["ContentLength"]),
            storage_class=meta.get("StorageClass", "STANDARD"),
            sha256=(meta.get("Metadata") or {}).get("sha256", ""),
        )

    def open_local(self, *, key: str, tier: str) -> None:
        return None  # objects are read over the network

    def iter_bytes(
        self,
        *,
        key: str,
        tier: str,
        chunk_size: int = CHUNK,
        offset: int = 0,
        length: int | None = None,
    ) -> Iterator[bytes]:
        range_check(offset, length)
        if length == 0:
            return
        extra: dict[str, str] = {}
        if offset or length is not None:
            # RFC 9110 byte range; the last position is inclusive, an open end reads to the end.
            last = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{last}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)["Body"]
        except ClientError as exc:
            if _error_code(exc) == "InvalidRange":
                return  # the offset is at or past the end: no bytes there
            raise StorageUnavailable(f"Could not read {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"Could not read {key}: {exc}") from exc
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def delete(self, *, key: str, tier: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(str(exc)) from exc

    def iter_objects(self, *, prefix: str) -> Iterator[ListedObject]:
        # ListObjectsV2 answers in UTF-8 byte order, 1,000 keys a page: one page is held at a time.
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield ListedObject(
                        key=item["Key"][strip:],
                        size=int(item["Size"]),
                        storage_class=item.get("StorageClass") or "STANDARD",
                    )
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"Could not list the bucket {self.bucket}: {exc}") from exc

    def storage_class_for(self, tier: str) -> str:
        return self.storage_classes.get(tier, "")

    def probe(self) -> str:
        key = f"_probe/{uuid.uuid4().hex}"
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=b"strata-probe", **self._extra("hot")
            )
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if body != b"strata-probe":
            raise StorageUnavailable("The probe object read back different bytes.")
        return f"Wrote, read and deleted a probe object in s3://{self.bucket}/{self.prefix}."

    # --- tier changes -------------------------------------------------------------------------

    def place(self) -> str:
        return f"s3://{self.endpoint_url or 'aws'}/{self.bucket}/{self.prefix}"

    def change_tier(
        self, *, key: str, from_tier: str, to_tier: str, size: int | None = None
    ) -> None:
        """CopyObject of the key onto itself with the target storage class: the server rewrites
        the object, the metadata (the SHA-256) is kept (MetadataDirective COPY) and the
        encryption is that of a new object of this location."""
        extra: dict[str, Any] = {**self._extra(to_tier), "MetadataDirective": "COPY"}
        if size is None:
            stored = self.head(key=key, tier=from_tier)
            if stored is None:
                raise StorageRefused(f"{key} is not in this bucket.")
            size = stored.size
        source = {"Bucket": self.bucket, "Key": self._key(key)}
        try:
            if size < self.copy_multipart_threshold:
                self.client.copy_object(
                    Bucket=self.bucket, Key=self._key(key), CopySource=source, **extra
                )
            else:
                config = TransferConfig(
                    multipart_threshold=self.copy_multipart_threshold,
                    multipart_chunksize=self.copy_part_size,
                    max_concurrency=8,
                )
                self.client.copy(
                    source, self.bucket, self._key(key), ExtraArgs=extra, Config=config
                )
        except ClientError as exc:
            code = _error_code(exc)
            message = str(exc.response.get("Error", {}).get("Message", ""))
            # A copy onto itself that changes nothing: the object is in the target class already
            # (a rerun after the copy succeeded).
            if code == "InvalidRequest" and "without changing" in message:
                return
            if code in _REFUSED_CODES:
                raise StorageRefused(
                    f"Could not move {key} to {to_tier}: {code} {message}"
                ) from exc
            raise StorageUnavailable(f"Could not move {key} to {to_tier}: {exc}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageUnavailable(f"Could not move {key} to {to_tier}: {exc}") from exc

    def change_tier_finish(self, *, key: str, from_tier: str, to_tier: str) -> None:
        return  # the copy replaced the object in place: nothing is left behind

    def verify(self, *, key: str, tier: str, size: int, sha256: str) -> StoredObject:
        expected_class = self._class_for(tier)
        stored = self.head(key=key, tier=tier)
        if stored is None:
            raise VerificationFailed(f"{key} is missing from the bucket.")
        problems = []
        if stored.storage_class != expected_class:
            problems.append(f"storage class {stored.storage_class}, expected {expected_class}")
        if stored.size != size:
            problems.append(f"{stored.size} bytes, expected {size}")
        if sha256 and stored.sha256 != sha256:
            problems.append(
                "SHA-256 metadata "
                + (
                    f"{stored.sha256[:12]}..., expected {sha256[:12]}..."
                    if stored.sha256
                    else "missing"
                )
            )
        if problems:
            raise VerificationFailed(f"{key} in the {tier} tier: " + "; ".join(problems) + ".")
        return stored

    def restore_start(self, *, key: str, tier: str, days: int) -> None:
        try:
            self.client.restore_object(
                Bucket=self.bucket,
                Key=self._key(key),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": "Standard"}},
            )
        except ClientError as exc:
            # Asked twice: S3 answers 409 while the first restore runs; that is the state we want.
            if exc.response.get("Error", {}).get("Code") == "RestoreAlreadyInProgress":
                return
            raise StorageUnavailable(f"Could not restore {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"Could not restore {key}: {exc}") from exc

    def restore_status(self, *, key: str, tier: str) -> RestoreStatus:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"Could not read the restore state of {key}: {exc}") from exc
        return restore_status_parse(meta.get("Restore"))


_ONGOING = re.compile(r'ongoing-request="(true|false)"')
_EXPIRY = re.compile(r'expiry-date="([^"]+)"')


def restore_status_parse(header: str | None) -> RestoreStatus:
    """The ``x-amz-restore`` header: ``ongoing-request="false", expiry-date="Fri, 21 Dec ..."``."""
    if not header:
        return RestoreStatus(requested=False, ready=False)
    ongoing = _ONGOING.search(header)
    if ongoing is None or ongoing.group(1) == "true":
        return RestoreStatus(requested=True, ready=False)
    expiry = _EXPIRY.search(header)
    expires_at = parsedate_to_datetime(expiry.group(1)) if expiry else None
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at is not None and expires_at <= datetime.now(UTC):
        return RestoreStatus(requested=False, ready=False)
    return RestoreStatus(requested=True, ready=True, expires_at=expires_at)
