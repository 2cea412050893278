from django.db import IntegrityError, transaction
from django.test import TestCase, TransactionTestCase

from confapp.models import Build, Credential


class BuildTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        Build.objects.create(job="fixture", status="passed")

    def test_create_and_count(self):
        Build.objects.create(job="unit", status="running")
        self.assertEqual(Build.objects.count(), 2)

    def test_savepoint_rollback(self):
        try:
            with transaction.atomic():
                Build.objects.create(job="gone", status="x")
                raise IntegrityError("roll back to the savepoint")
        except IntegrityError:
            pass
        self.assertFalse(Build.objects.filter(job="gone").exists())

    def test_credentials_from_the_data_migration(self):
        self.assertEqual(Credential.objects.count(), 2)


class FlushTests(TransactionTestCase):
    available_apps = ["confapp"]
    serialized_rollback = False

    def test_commit(self):
        Build.objects.create(job="committed", status="passed")
        self.assertEqual(Build.objects.filter(job="committed").count(), 1)
