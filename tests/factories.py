from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from tenants.models import Membership, Organization
from tenants.roles import Role

PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    email = factory.Sequence(lambda n: f"user{n}@hospital.example")
    username = factory.LazyAttribute(lambda o: o.email)
    password = factory.django.Password(PASSWORD)


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"General Hospital {n}")
    slug = factory.Sequence(lambda n: f"hospital-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.MEMBER


class ScimGroupFactory(factory.django.DjangoModelFactory):
    """A group as the identity provider pushes it over SCIM."""

    class Meta:
        model = "tenants.ScimGroup"

    organization = factory.SubFactory(OrganizationFactory)
    display_name = factory.Sequence(lambda n: f"Radiology group {n}")
