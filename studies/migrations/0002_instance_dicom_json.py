from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="instance",
            name="dicom_json",
            field=models.TextField(blank=True, default=""),
        ),
    ]
