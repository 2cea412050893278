from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("confapp", "0001_initial")]
    operations = [
        migrations.AddField("build", "duration", models.IntegerField(null=True)),
    ]
