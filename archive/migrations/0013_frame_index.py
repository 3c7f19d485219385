import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0012_dimse_activity"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="FrameIndex",
            fields=[
                (
                    "instance",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="frame_index",
                        serialize=False,
                        to="archive.instance",
                    ),
                ),
                ("vr", models.CharField(max_length=2)),
                ("little_endian", models.BooleanField(default=True)),
                ("offset", models.BigIntegerField()),
                ("length", models.BigIntegerField(blank=True, null=True)),
                ("frames", models.PositiveIntegerField()),
                ("boundaries", models.BinaryField(blank=True, default=b"")),
                ("problem", models.CharField(blank=True, max_length=500)),
                (
                    "organization",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.organization",
                    ),
                ),
            ],
        ),
    ]
