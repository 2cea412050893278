"""A small Django project for the conformance suite: `manage.py migrate`,
the ORM and the test runner, run direct and through the interceptor."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "confsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
