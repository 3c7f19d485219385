"""The default price plan. Storage per tier follows AWS S3 list prices (us-east-1): Standard,
Standard-IA, Glacier Instant Retrieval and Glacier Deep Archive; see the README for the figures."""

from decimal import Decimal as D

from django.db import migrations

GIB_50TB = "51200"
GIB_500TB = "512000"

PRICES = [
    # storage, GiB-month
    {"meter": "storage", "tier": "hot", "model": "graduated", "tiers": [
        {"up_to": GIB_50TB, "unit_price": "0.023"},
        {"up_to": GIB_500TB, "unit_price": "0.022"},
        {"up_to": None, "unit_price": "0.021"},
    ]},
    {"meter": "storage", "tier": "warm", "model": "per_unit", "unit_price": "0.0125"},
    {"meter": "storage", "tier": "cold", "model": "per_unit", "unit_price": "0.004"},
    {"meter": "storage", "tier": "archive", "model": "per_unit", "unit_price": "0.00099"},
    # egress, GiB: first 100 GiB free, then internet data transfer out tiers
    {"meter": "egress.bytes", "tier": "", "model": "graduated", "included_quantity": "100", "tiers": [
        {"up_to": "10240", "unit_price": "0.09"},
        {"up_to": "51200", "unit_price": "0.085"},
        {"up_to": None, "unit_price": "0.07"},
    ]},
    # restores from archive, GiB (Deep Archive standard retrieval)
    {"meter": "restore.bytes", "tier": "", "model": "per_unit", "unit_price": "0.02"},
    # ingest is free (as inbound transfer is); PUT requests per 1,000 instances
    {"meter": "ingest.bytes", "tier": "", "model": "per_unit", "unit_price": "0"},
    {"meter": "ingest.instances", "tier": "", "model": "per_unit", "unit_price": "0.005"},
    # lifecycle transitions per 1,000 objects, by target tier
    {"meter": "tier.transitions", "tier": "warm", "model": "per_unit", "unit_price": "0.01"},
    {"meter": "tier.transitions", "tier": "cold", "model": "per_unit", "unit_price": "0.02"},
    {"meter": "tier.transitions", "tier": "archive", "model": "per_unit", "unit_price": "0.05"},
    {"meter": "tier.transitions", "tier": "hot", "model": "per_unit", "unit_price": "0.005"},
    # early deletion, GiB-day: the tier's monthly storage price / 30
    {"meter": "early_deletion", "tier": "warm", "model": "per_unit", "unit_price": "0.00041667"},
    {"meter": "early_deletion", "tier": "cold", "model": "per_unit", "unit_price": "0.00013333"},
    {"meter": "early_deletion", "tier": "archive", "model": "per_unit", "unit_price": "0.000033"},
    # worker compute, hour (about one vCPU-hour of a container service)
    {"meter": "compute.seconds", "tier": "", "model": "per_unit", "unit_price": "0.04"},
    # API requests, per 1,000 requests, billed in packages of 1,000
    {"meter": "api.requests", "tier": "", "model": "package", "package_size": "1", "package_price": "0.0004"},
]


def create(apps, schema_editor):
    PricePlan = apps.get_model("billing", "PricePlan")
    PlanPrice = apps.get_model("billing", "PlanPrice")
    if PricePlan.objects.filter(code="standard").exists():
        return
    plan = PricePlan.objects.create(
        code="standard",
        name="Standard",
        currency="USD",
        description="Pay as you go; storage at public cloud list prices per tier.",
        is_default=True,
    )
    for p in PRICES:
        PlanPrice.objects.create(
            plan=plan,
            meter=p["meter"],
            tier=p.get("tier", ""),
            model=p["model"],
            unit_price=D(p.get("unit_price", "0")),
            tiers=p.get("tiers", []),
            package_size=D(p.get("package_size", "1")),
            package_price=D(p.get("package_price", "0")),
            included_quantity=D(p.get("included_quantity", "0")),
        )


def remove(apps, schema_editor):
    apps.get_model("billing", "PricePlan").objects.filter(code="standard").delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(create, remove)]
