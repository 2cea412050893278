from django.db import models


class Build(models.Model):
    job = models.CharField(max_length=50)
    status = models.CharField(max_length=20)
    duration = models.IntegerField(null=True)


class Credential(models.Model):
    name = models.CharField(max_length=50)
    # Matched by the default policy's credential-columns mask (*_token).
    api_token = models.CharField(max_length=100)
