"""The replica's REST API (roles, scopes, other tenants), the replica rules of storage locations,
and the storage page's replica panel with its "Run drill" button."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from archive.locations import services as location_services
from archive.models import InstanceReplica, ReplicaCheck, StorageLocation
from archive.replicas import selectors, services
from archive.replicas.drill import replica_drill
from billing.models import StorageDelta
from tenants.context import Actor
from tenants.errors import Conflict, ValidationFailed
from tenants.models import ApiToken, AuditEvent, Membership, Organization
from tenants.roles import Role, Scope
from tests.archive.test_replicas import ingest_instances, sync_and_copy

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
ALL_SCOPES = [s.value for s in Scope]


@pytest.fixture(autouse=True)
def _private_endpoints(settings: Any) -> None:
    settings.ARCHIVE_ALLOW_PRIVATE_ENDPOINTS = True


def bucket_input(**overrides: Any) -> location_services.LocationInput:
    values: dict[str, Any] = {
        "name": "DR bucket",
        "bucket": "stmary-dr",
        "access_key_id": "AKIA0",
        "secret_access_key": "secret",
        "endpoint_url": "http://127.0.0.1:9",
        "role": "replica",
    }
    values.update(overrides)
    return location_services.LocationInput(**values)


def add_replica(org: Organization, **overrides: Any) -> StorageLocation:
    return location_services.location_create(org=org, data=bucket_input(**overrides), actor=ACTOR)


@pytest.fixture
def fs_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Replica locations are stored under a second filesystem root."""
    from archive.storage.filesystem import FilesystemStore

    root = tmp_path / "replica"
    original = services._store
    monkeypatch.setattr(
        services,
        "_store",
        lambda loc: FilesystemStore(root) if loc.role == "replica" else original(loc),
    )
    return root


def create_objects(org: Organization) -> dict[str, int]:
    location = add_replica(org, bucket=f"{org.slug}-dr")
    check = replica_drill(org=org, sample=5, actor=ACTOR)
    return {"location": location.pk, "drill": check.pk}


# --- locations: one replica, never the primary itself -----------------------------------------


def test_a_replica_is_added_with_its_tier(org: Organization) -> None:
    location = add_replica(org, replica_tier="archive")
    assert (location.role, location.replica_tier) == ("replica", "archive")
    event = AuditEvent.objects.for_org(org).get(action="storage_location.created")
    assert event.details["replica_tier"] == "archive"


def test_a_second_replica_is_refused(org: Organization) -> None:
    add_replica(org)
    with pytest.raises(Conflict) as exc:
        add_replica(org, bucket="stmary-dr-2")
    assert "role" in exc.value.fields
    assert StorageLocation.objects.for_org(org).filter(role="replica").count() == 1


def test_a_replica_in_the_primarys_own_bucket_and_prefix_is_refused(org: Organization) -> None:
    primary = location_services.location_create(
        org=org, data=bucket_input(role="primary", prefix="images/"), actor=ACTOR
    )
    with pytest.raises(ValidationFailed) as exc:
        add_replica(org, bucket=primary.bucket, prefix="images", endpoint_url="http://127.0.0.1:9/")
    assert "bucket" in exc.value.fields
    # Another prefix of the same bucket is a different place (a weak replica, but not the same).
    assert add_replica(org, bucket=primary.bucket, prefix="dr/").role == "replica"


def test_platform_and_platform_are_the_same_storage() -> None:
    a = StorageLocation(kind="platform")
    b = StorageLocation(kind="platform")
    assert selectors.same_storage(a, b)
    assert not selectors.same_storage(a, StorageLocation(kind="s3", bucket="x"))


def test_the_platform_on_s3_is_compared_by_its_bucket(settings: Any) -> None:
    settings.ARCHIVE_BACKEND = "s3"
    settings.ARCHIVE_S3_BUCKET = "strata-archive"
    settings.ARCHIVE_S3_ENDPOINT_URL = "https://s3.example"
    settings.ARCHIVE_S3_PREFIX = ""
    platform = StorageLocation(kind="platform")
    same = {"endpoint_url": "https://S3.example/", "bucket": "strata-archive", "prefix": "/"}
    assert selectors.same_storage(same, platform)
    assert not selectors.same_storage({**same, "bucket": "other"}, platform)


def test_an_unknown_replica_tier_is_a_field_error(org: Organization) -> None:
    with pytest.raises(ValidationFailed) as exc:
        add_replica(org, replica_tier="lukewarm")
    assert "replica_tier" in exc.value.fields


def test_a_primary_cannot_become_a_second_replica(org: Organization) -> None:
    primary = location_services.location_create(
        org=org, data=bucket_input(role="primary"), actor=ACTOR
    )
    add_replica(org, bucket="stmary-dr-2")
    # A new primary would turn the old bucket primary into a second replica.
    with pytest.raises(Conflict):
        location_services.location_create(
            org=org, data=bucket_input(role="primary", bucket="stmary-new"), actor=ACTOR
        )
    primary.refresh_from_db()
    assert primary.role == "primary"


def test_a_replica_holding_copies_keeps_its_bucket(org: Organization, fs_store: Path) -> None:
    replica = add_replica(org)
    ingest_instances(org, 1)
    sync_and_copy(org)
    with pytest.raises(Conflict):
        location_services.location_update(
            org=org, location=replica, data=bucket_input(bucket="elsewhere"), actor=ACTOR
        )
    renamed = location_services.location_update(
        org=org, location=replica, data=bucket_input(name="Frankfurt copy"), actor=ACTOR
    )
    assert renamed.name == "Frankfurt copy"


def test_removing_the_replica_stops_billing_its_bytes(org: Organization, fs_store: Path) -> None:
    replica = add_replica(org)
    instances = ingest_instances(org, 2)
    sync_and_copy(org)
    replica_drill(org=org, sample=2, actor=ACTOR)
    location_services.location_delete(org=org, location=replica, actor=ACTOR)
    assert not InstanceReplica.objects.for_org(org).exists()
    assert not ReplicaCheck.objects.for_org(org).exists()
    cold = StorageDelta.objects.for_org(org).filter(tier="cold")
    assert sum(d.delta_bytes for d in cold) == 0
    assert sum(i.size_bytes for i in instances) == sum(
        d.delta_bytes for d in cold if d.delta_bytes > 0
    )
    assert AuditEvent.objects.for_org(org).filter(action="replica.released").exists()


def test_the_api_adds_a_replica_with_its_tier_and_refuses_a_second(
    org: Organization, token_client: Callable[..., APIClient]
) -> None:
    client = token_client(org)
    body = {
        "name": "DR",
        "role": "replica",
        "replica_tier": "warm",
        "bucket": "stmary-dr",
        "access_key_id": "AKIA0",
        "secret_access_key": "secret",
    }
    response = client.post("/api/v1/storage-locations/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["replica_tier"] == "warm"
    again = client.post(
        "/api/v1/storage-locations/", {**body, "bucket": "stmary-dr-2"}, format="json"
    )
    assert again.status_code == 409
    bad = client.post(
        "/api/v1/storage-locations/", {**body, "replica_tier": "tepid"}, format="json"
    )
    assert bad.status_code == 400 and "replica_tier" in bad.json()["error"]["fields"]


# --- replication API ---------------------------------------------------------------------------


def test_status_api_reports_counts_lag_and_the_last_drill(
    org: Organization, token_client: Callable[..., APIClient], fs_store: Path
) -> None:
    add_replica(org)
    instances = ingest_instances(org, 3)
    services.replicas_sync(org=org, limit=1)
    sync_ids = list(InstanceReplica.objects.for_org(org).values_list("pk", flat=True))
    services.replica_copy(org=org, replica_ids=sync_ids)
    check = replica_drill(org=org, sample=3, actor=ACTOR)
    body = token_client(org).get("/api/v1/replication/").json()
    assert body["enabled"] is True and body["location"]["role"] == "replica"
    assert (body["instances"], body["replicated"], body["pending"], body["failed"]) == (3, 1, 2, 0)
    assert body["pending_bytes"] == instances[1].size_bytes + instances[2].size_bytes
    assert body["lag_seconds"] >= 0 and body["oldest_unreplicated_at"] is not None
    assert body["last_drill"]["id"] == check.pk and body["last_drill"]["ok"] is True


def test_status_api_without_a_replica(
    org: Organization, token_client: Callable[..., APIClient]
) -> None:
    body = token_client(org).get("/api/v1/replication/").json()
    assert body["enabled"] is False and body["location"] is None and body["last_drill"] is None


def test_failures_api_lists_the_reason_and_retry_requeues(
    org: Organization, token_client: Callable[..., APIClient], fs_store: Path
) -> None:
    add_replica(org)
    (instance,) = ingest_instances(org, 1)
    services.replicas_sync(org=org)
    InstanceReplica.objects.for_org(org).update(state="failed", attempts=3, error="HTTP 500")
    client = token_client(org)
    results = client.get("/api/v1/replication/failures/").json()["results"]
    assert [(r["sop_instance_uid"], r["error"], r["attempts"]) for r in results] == [
        (instance.sop_instance_uid, "HTTP 500", 3)
    ]
    response = client.post("/api/v1/replication/failures/retry/")
    assert response.status_code == 200 and response.json() == {"retried": 1}
    assert client.get("/api/v1/replication/failures/").json()["results"] == []


def test_drill_api_runs_lists_and_shows_a_drill(
    org: Organization, token_client: Callable[..., APIClient], fs_store: Path
) -> None:
    add_replica(org)
    ingest_instances(org, 2)
    sync_and_copy(org)
    client = token_client(org)
    response = client.post("/api/v1/replication/drills/", {"sample": 5}, format="json")
    assert response.status_code == 201, response.content
    drill = response.json()
    assert (drill["sampled"], drill["verified"], drill["ok"]) == (2, 2, True)
    listed = client.get("/api/v1/replication/drills/").json()["results"]
    assert [d["id"] for d in listed] == [drill["id"]]
    assert client.get(f"/api/v1/replication/drills/{drill['id']}/").json() == drill


@pytest.mark.parametrize("sample", [0, 1001, "many", None])
def test_drill_api_refuses_a_bad_sample(
    org: Organization, token_client: Callable[..., APIClient], sample: Any
) -> None:
    add_replica(org)
    response = token_client(org).post(
        "/api/v1/replication/drills/", {"sample": sample}, format="json"
    )
    assert response.status_code == 400
    assert "sample" in response.json()["error"]["fields"]
    assert not ReplicaCheck.objects.exists()


def test_drill_api_without_a_replica_is_409(
    org: Organization, token_client: Callable[..., APIClient]
) -> None:
    response = token_client(org).post("/api/v1/replication/drills/", {}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    ok: int = 200
    body: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ENDPOINTS = [
    Endpoint("GET", "replication/"),
    Endpoint("GET", "replication/failures/"),
    Endpoint("POST", "replication/failures/retry/", body={}),
    Endpoint("GET", "replication/drills/"),
    Endpoint("POST", "replication/drills/", 201, {"sample": 3}),
    Endpoint("GET", "replication/drills/{drill}/"),
]


def call(client: APIClient, endpoint: Endpoint, url: str) -> Any:
    method = getattr(client, endpoint.method.lower())
    return method(url) if endpoint.body is None else method(url, endpoint.body, format="json")


@pytest.mark.parametrize("role", [r.value for r in Role])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_role_matrix(
    endpoint: Endpoint, role: str, org: Organization, make_member: Callable[..., Membership]
) -> None:
    objects = create_objects(org)
    client = APIClient()
    client.force_login(make_member(org, role).user)
    response = call(client, endpoint, f"/api/v1/o/{org.slug}/" + endpoint.path.format(**objects))
    if role in {"owner", "admin"}:
        assert response.status_code == endpoint.ok, response.content
    else:
        assert response.status_code == 403
        assert response.json()["error"]["fields"]["permission"] == ["storage.manage"]


@pytest.mark.parametrize("scope", ALL_SCOPES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_token_scope_matrix(
    endpoint: Endpoint,
    scope: str,
    org: Organization,
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    objects = create_objects(org)
    _, secret = make_token(org, [scope])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    response = call(client, endpoint, "/api/v1/" + endpoint.path.format(**objects))
    assert response.status_code == (endpoint.ok if scope == "admin" else 403), response.content


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_other_tenant_gets_404(
    endpoint: Endpoint,
    org: Organization,
    other_org: Organization,
    owner: Membership,
    make_member: Callable[..., Membership],
    make_token: Callable[..., tuple[ApiToken, str]],
) -> None:
    mine = create_objects(org)
    theirs = create_objects(other_org)
    drills_before = ReplicaCheck.objects.for_org(other_org).count()
    # A session of another organization on this organization's URL prefix.
    stranger = APIClient()
    stranger.force_login(make_member(other_org, Role.OWNER).user)
    response = call(stranger, endpoint, f"/api/v1/o/{org.slug}/" + endpoint.path.format(**mine))
    assert response.status_code == 404
    # This organization's token and session on the other organization's ids.
    if "{" in endpoint.path:
        _, secret = make_token(org, ALL_SCOPES)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        session = APIClient()
        session.force_login(owner.user)
        for c, prefix in ((client, "/api/v1/"), (session, f"/api/v1/o/{org.slug}/")):
            response = call(c, endpoint, prefix + endpoint.path.format(**theirs))
            assert response.status_code == 404, response.content
            assert response.json()["error"]["code"] == "not_found"
    assert ReplicaCheck.objects.for_org(other_org).count() == drills_before


def test_anonymous_gets_401() -> None:
    for endpoint in ENDPOINTS:
        response = call(APIClient(), endpoint, "/api/v1/" + endpoint.path.format(drill=1))
        assert response.status_code == 401


def test_schema_documents_every_replication_endpoint() -> None:
    paths = APIClient().get("/api/schema/?format=json").json()["paths"]
    for endpoint in ENDPOINTS:
        relative = endpoint.path.format(drill="{drill_id}")
        # Documented once, as a token calls it (saas.schema): not again under /o/{org_slug}/.
        assert endpoint.method.lower() in paths.get("/api/v1/" + relative, {}), endpoint
        assert "/api/v1/o/{org_slug}/" + relative not in paths


# --- portal ---------------------------------------------------------------------------------------


def test_storage_page_shows_the_replica_panel(
    org: Organization, owner: Membership, fs_store: Path, client: Any
) -> None:
    add_replica(org, name="Frankfurt copy")
    ingest_instances(org, 2)
    sync_and_copy(org)
    replica_drill(org=org, sample=2, actor=ACTOR)
    client.force_login(owner.user)
    page = client.get(f"/o/{org.slug}/archive/storage/").content.decode()
    assert "Disaster-recovery replica" in page and "Frankfurt copy" in page
    assert 'id="replica-replicated"' in page and 'id="replica-lag"' in page
    assert 'id="drill-table"' in page and "Passed" in page
    assert "Run drill" in page


def test_storage_page_without_a_replica_explains_how_to_add_one(
    org: Organization, owner: Membership, client: Any
) -> None:
    client.force_login(owner.user)
    page = client.get(f"/o/{org.slug}/archive/storage/").content.decode()
    assert 'id="replica-none"' in page and "Run drill" not in page


def test_run_drill_button(
    org: Organization, owner: Membership, fs_store: Path, client: Any
) -> None:
    add_replica(org)
    ingest_instances(org, 2)
    sync_and_copy(org)
    client.force_login(owner.user)
    response = client.post(f"/o/{org.slug}/archive/storage/replica/drill/", {"sample": "10"})
    assert response.status_code == 302 and response["Location"].endswith("#replica")
    check = ReplicaCheck.objects.for_org(org).get()
    assert (check.sampled, check.verified) == (2, 2)
    page = client.get(response["Location"]).content.decode()
    assert "all 2 sampled replicas verified" in page


@pytest.mark.parametrize("sample", ["0", "5000", "x"])
def test_run_drill_button_refuses_a_bad_sample(
    org: Organization, owner: Membership, client: Any, sample: str
) -> None:
    add_replica(org)
    client.force_login(owner.user)
    response = client.post(f"/o/{org.slug}/archive/storage/replica/drill/", {"sample": sample})
    assert response.status_code == 302
    assert not ReplicaCheck.objects.exists()


def test_run_drill_needs_storage_manage(
    org: Organization, make_member: Callable[..., Membership], client: Any
) -> None:
    add_replica(org)
    client.force_login(make_member(org, Role.MEMBER).user)
    response = client.post(f"/o/{org.slug}/archive/storage/replica/drill/", {"sample": "5"})
    assert response.status_code == 403
    assert not ReplicaCheck.objects.exists()


def test_run_drill_of_another_organization_is_404(
    org: Organization, other_org: Organization, owner: Membership, client: Any
) -> None:
    add_replica(other_org)
    client.force_login(owner.user)
    response = client.post(f"/o/{other_org.slug}/archive/storage/replica/drill/", {"sample": "5"})
    assert response.status_code == 404
    assert not ReplicaCheck.objects.exists()
