# Image reads (frames, rendered images, thumbnails) gathered per reader, series and minute.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0014_derived_objects"),
    ]

    operations = [
        migrations.AddField(
            model_name="accessevent",
            name="reads",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="accessevent",
            name="window_key",
            field=models.CharField(blank=True, editable=False, max_length=120, null=True),
        ),
        migrations.AlterField(
            model_name="accessevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("retrieve", "WADO-RS retrieve"),
                    ("metadata", "WADO-RS metadata"),
                    ("download", "Portal download"),
                    ("thumbnail", "Thumbnail"),
                ],
                max_length=16,
            ),
        ),
        migrations.AddConstraint(
            model_name="accessevent",
            constraint=models.UniqueConstraint(
                fields=("organization", "window_key"), name="access_org_window_unique"
            ),
        ),
    ]
