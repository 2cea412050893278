import os

SECRET_KEY = "conformance-suite-not-a-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["confapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Host, port, user, password and sslmode come from libpq's environment
# (PGHOST, ...), the same direct and intercepted.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["PGDATABASE"],
        "TEST": {"NAME": "test_" + os.environ["PGDATABASE"]},
    }
}
