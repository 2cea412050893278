from django.db import migrations, models


def credentials(apps, schema_editor):
    Credential = apps.get_model("confapp", "Credential")
    Credential.objects.create(name="deploy", api_token="tok-deploy-7f3a9c")
    Credential.objects.create(name="report", api_token="tok-report-1b2d4e")


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Build",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("job", models.CharField(max_length=50)),
                ("status", models.CharField(max_length=20)),
            ],
        ),
        migrations.CreateModel(
            name="Credential",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=50)),
                ("api_token", models.CharField(max_length=100)),
            ],
        ),
        migrations.RunPython(credentials, migrations.RunPython.noop),
    ]
