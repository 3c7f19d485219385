"""Who may open which portal page: tenant isolation, the role matrix, inactive organizations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tenants import services
from tenants.context import Actor
from tenants.models import AuditEvent, Membership, Organization
from tenants.roles import Perm, Role

ROLES = [Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR, Role.MEMBER]

# Written out rather than derived from ROLE_PERMISSIONS, so a change to the matrix shows up here.
ALLOWED_ROLES: dict[str, set[str]] = {
    Perm.ORG_VIEW: {Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR, Role.MEMBER},
    Perm.MEMBERS_VIEW: {Role.OWNER, Role.ADMIN, Role.BILLING, Role.AUDITOR, Role.MEMBER},
    Perm.MEMBERS_MANAGE: {Role.OWNER, Role.ADMIN},
    Perm.TOKENS_MANAGE: {Role.OWNER, Role.ADMIN},
    Perm.WEBHOOKS_MANAGE: {Role.OWNER, Role.ADMIN},
    Perm.AUDIT_READ: {Role.OWNER, Role.ADMIN, Role.AUDITOR},
}


@dataclass
class Page:
    name: str
    perm: str
    ids: dict[str, str] = field(default_factory=dict)  # URL kwarg -> key in the seeded objects
    data: dict[str, Any] = field(default_factory=dict)  # POST body

    def url(self, org: Organization, objects: dict[str, int]) -> str:
        kwargs: dict[str, Any] = {"org_slug": org.slug}
        kwargs.update({kwarg: objects[key] for kwarg, key in self.ids.items()})
        return reverse(self.name, kwargs=kwargs)

    def __str__(self) -> str:
        return self.name


GET_PAGES = [
    Page("portal-dashboard", Perm.ORG_VIEW),
    Page("portal-members", Perm.MEMBERS_VIEW),
    Page("portal-member-remove", Perm.MEMBERS_MANAGE, {"membership_id": "member"}),
    Page("portal-tokens", Perm.TOKENS_MANAGE),
    Page("portal-webhooks", Perm.WEBHOOKS_MANAGE),
    Page("portal-webhook-create", Perm.WEBHOOKS_MANAGE),
    Page("portal-webhook-detail", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}),
    Page("portal-webhook-edit", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}),
    Page("portal-webhook-delete", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}),
    Page("portal-audit", Perm.AUDIT_READ),
    Page("portal-audit-detail", Perm.AUDIT_READ, {"event_id": "event"}),
    Page("portal-audit-export", Perm.AUDIT_READ),
]

POST_ACTIONS = [
    Page(
        "portal-invitation-create",
        Perm.MEMBERS_MANAGE,
        data={"email": "new.person@stmary.example", "role": Role.MEMBER},
    ),
    Page(
        "portal-member-role", Perm.MEMBERS_MANAGE, {"membership_id": "member"}, {"role": "auditor"}
    ),
    Page("portal-member-remove", Perm.MEMBERS_MANAGE, {"membership_id": "member"}),
    Page("portal-invitation-revoke", Perm.MEMBERS_MANAGE, {"invitation_id": "invitation"}),
    Page("portal-tokens", Perm.TOKENS_MANAGE, data={"name": "pacs", "scopes": ["dicom:read"]}),
    Page("portal-token-revoke", Perm.TOKENS_MANAGE, {"token_id": "token"}),
    Page(
        "portal-webhook-create",
        Perm.WEBHOOKS_MANAGE,
        data={"url": "https://hooks.example.com/new", "event_types": ["webhook.test"]},
    ),
    Page(
        "portal-webhook-edit",
        Perm.WEBHOOKS_MANAGE,
        {"endpoint_id": "webhook"},
        {"url": "https://hooks.example.com/edited", "description": "edited"},
    ),
    Page(
        "portal-webhook-toggle", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}, {"enabled": "0"}
    ),
    Page("portal-webhook-rotate", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}),
    Page("portal-webhook-test", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}),
    Page("portal-webhook-delete", Perm.WEBHOOKS_MANAGE, {"endpoint_id": "webhook"}),
]

PAGES_WITH_IDS = [p for p in GET_PAGES + POST_ACTIONS if p.ids]


def seed(org: Organization, make_member: Callable[..., Membership]) -> dict[str, int]:
    """One object of every kind the portal addresses by id, made through the services."""
    actor = Actor.system("tests")
    member = make_member(org, Role.MEMBER)
    invitation, _ = services.invitation_create(
        org=org, email=f"invitee@{org.slug}.example", role=Role.MEMBER, actor=actor
    )
    token, _ = services.token_create(org=org, name="pacs", scopes=["dicom:read"], actor=actor)
    webhook = services.webhook_endpoint_create(
        org=org, url=f"https://hooks.example.com/{org.slug}", actor=actor
    )
    event = services.audit_record(org=org, actor=actor, action="test.seeded")
    return {
        "member": member.pk,
        "invitation": invitation.pk,
        "token": token.pk,
        "webhook": webhook.pk,
        "event": event.pk,
    }


@pytest.fixture
def objects(
    org: Organization, owner: Membership, make_member: Callable[..., Membership]
) -> dict[str, int]:
    return seed(org, make_member)


@pytest.fixture
def other_objects(
    other_org: Organization, make_member: Callable[..., Membership]
) -> dict[str, int]:
    make_member(other_org, Role.OWNER)
    return seed(other_org, make_member)


def client_for(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_role_matrix_for_pages(
    page: Page,
    role: str,
    org: Organization,
    objects: dict[str, int],
    make_member: Callable[..., Membership],
) -> None:
    client = client_for(make_member(org, role))
    response = client.get(page.url(org, objects))
    if role in ALLOWED_ROLES[page.perm]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        content = response.content.decode()
        assert page.perm in content
        assert "You don&#x27;t have access" in content or "You don't have access" in content


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", POST_ACTIONS, ids=str)
def test_role_matrix_for_actions(
    action: Page,
    role: str,
    org: Organization,
    objects: dict[str, int],
    make_member: Callable[..., Membership],
) -> None:
    client = client_for(make_member(org, role))
    events_before = AuditEvent.objects.for_org(org).count()
    response = client.post(action.url(org, objects), action.data)
    if role in ALLOWED_ROLES[action.perm]:
        assert response.status_code == 302, response.content.decode()[:2000]
        assert AuditEvent.objects.for_org(org).count() > events_before
    else:
        assert response.status_code == 403
        assert action.perm in response.content.decode()
        assert AuditEvent.objects.for_org(org).count() == events_before


@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_non_member_gets_404_on_every_page(
    page: Page,
    org: Organization,
    objects: dict[str, int],
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    outsider = make_member(other_org, Role.OWNER)
    response = client_for(outsider).get(page.url(org, objects))
    assert response.status_code == 404
    assert "St. Mary" not in response.content.decode()


@pytest.mark.parametrize("action", POST_ACTIONS, ids=str)
def test_non_member_gets_404_on_every_action(
    action: Page,
    org: Organization,
    objects: dict[str, int],
    other_org: Organization,
    make_member: Callable[..., Membership],
) -> None:
    client = client_for(make_member(other_org, Role.OWNER))
    events_before = AuditEvent.objects.count()
    response = client.post(action.url(org, objects), action.data)
    assert response.status_code == 404
    assert AuditEvent.objects.count() == events_before


@pytest.mark.parametrize("page", PAGES_WITH_IDS, ids=lambda p: f"{p.name}-{p.ids}")
def test_other_tenants_object_id_gets_404(
    page: Page,
    org: Organization,
    owner: Membership,
    objects: dict[str, int],
    other_objects: dict[str, int],
) -> None:
    client = client_for(owner)
    url = page.url(org, other_objects)
    events_before = AuditEvent.objects.count()
    response = client.post(url, page.data) if page in POST_ACTIONS else client.get(url)
    assert response.status_code == 404
    assert AuditEvent.objects.count() == events_before


def test_unknown_object_id_gets_404(org: Organization, owner: Membership) -> None:
    client = client_for(owner)
    assert client.get(f"/o/{org.slug}/webhooks/999999/").status_code == 404
    assert client.get(f"/o/{org.slug}/audit/999999/").status_code == 404
    assert client.post(f"/o/{org.slug}/tokens/999999/revoke/").status_code == 404


def test_unknown_organization_gets_404(owner: Membership) -> None:
    response = client_for(owner).get("/o/no-such-hospital/members/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_anonymous_is_sent_to_login(page: Page, org: Organization, objects: dict[str, int]) -> None:
    url = page.url(org, objects)
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert "next=" in response["Location"]


@pytest.mark.parametrize("status", [Organization.Status.SUSPENDED, Organization.Status.CLOSED])
@pytest.mark.parametrize("page", GET_PAGES, ids=str)
def test_inactive_organization_is_refused(
    page: Page, status: str, org: Organization, owner: Membership, objects: dict[str, int]
) -> None:
    Organization.objects.filter(pk=org.pk).update(status=status)
    response = client_for(owner).get(page.url(org, objects))
    assert response.status_code == 403
    content = response.content.decode()
    assert f"St. Mary Hospital is {status}" in content


def test_suspended_organization_refuses_changes(
    org: Organization, owner: Membership, objects: dict[str, int]
) -> None:
    Organization.objects.filter(pk=org.pk).update(status=Organization.Status.SUSPENDED)
    response = client_for(owner).post(
        reverse("portal-token-revoke", args=[org.slug, objects["token"]])
    )
    assert response.status_code == 403
    assert "suspended" in response.content.decode()
    assert not AuditEvent.objects.for_org(org).filter(action="token.revoked").exists()


@pytest.mark.parametrize(
    "name,ids",
    [
        ("portal-invitation-create", {}),
        ("portal-member-role", {"membership_id": "member"}),
        ("portal-invitation-revoke", {"invitation_id": "invitation"}),
        ("portal-token-revoke", {"token_id": "token"}),
        ("portal-webhook-toggle", {"endpoint_id": "webhook"}),
        ("portal-webhook-rotate", {"endpoint_id": "webhook"}),
        ("portal-webhook-test", {"endpoint_id": "webhook"}),
    ],
)
def test_state_changing_urls_refuse_get(
    name: str, ids: dict[str, str], org: Organization, owner: Membership, objects: dict[str, int]
) -> None:
    client = client_for(owner)
    events_before = AuditEvent.objects.count()
    response = client.get(Page(name, "", ids).url(org, objects))
    assert response.status_code == 405
    assert AuditEvent.objects.count() == events_before


def test_posts_need_a_csrf_token(
    org: Organization, owner: Membership, objects: dict[str, int]
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner.user)
    response = client.post(reverse("portal-token-revoke", args=[org.slug, objects["token"]]))
    assert response.status_code == 403
    assert not AuditEvent.objects.for_org(org).filter(action="token.revoked").exists()


def test_navigation_lists_permitted_sections_and_disables_unavailable_ones(
    org: Organization, make_member: Callable[..., Membership]
) -> None:
    member = make_member(org, Role.MEMBER)
    content = client_for(member).get(reverse("portal-dashboard", args=[org.slug])).content.decode()
    assert f'href="/o/{org.slug}/members/"' in content
    assert f'href="/o/{org.slug}/archive/studies/"' in content
    # An admin may manage archive policies; a member does not see that section.
    admin = make_member(org, Role.ADMIN)
    admin_content = (
        client_for(admin).get(reverse("portal-dashboard", args=[org.slug])).content.decode()
    )
    assert f'href="/o/{org.slug}/archive/policies/"' in admin_content
    assert f'href="/o/{org.slug}/archive/policies/"' not in content
    # Sections the role lacks are not listed at all.
    assert f'href="/o/{org.slug}/tokens/"' not in content
    assert f'href="/o/{org.slug}/audit/"' not in content


def test_navigation_marks_the_current_section(org: Organization, owner: Membership) -> None:
    content = client_for(owner).get(reverse("portal-tokens", args=[org.slug])).content.decode()
    assert f'href="/o/{org.slug}/tokens/" aria-current="page"' in content
