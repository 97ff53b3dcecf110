import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0004_series_geometry_stale'),
    ]

    operations = [
        migrations.AlterField(
            model_name='instance',
            name='series',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='instances', to='studies.series'),
        ),
        migrations.AddIndex(
            model_name='instance',
            index=models.Index(fields=['series', 'instance_number', 'id'], name='instance_in_series_order'),
        ),
    ]
