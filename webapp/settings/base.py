"""Every setting, read from the environment through ``webapp.settings.env``.

``.env.example`` documents each variable. Defaults give the embedded configuration that
``make run`` uses: SQLite, a filesystem Celery broker and a local worker; no services to install.
"""

from __future__ import annotations

import os
from pathlib import Path

from webapp.settings.env import (
    env_bool,
    env_int,
    env_list,
    env_path,
    env_str,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = env_path("ILD_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-embedded-default-change-me")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "core",
    "studies",
    "annotation",
    "jobs",
    "reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": parse_database_url(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'ild-review.sqlite3'}"),
        base_dir=BASE_DIR,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # SQLite creates the file but not its folder.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "core.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_path("DJANGO_STATIC_ROOT", VAR_DIR / "static")
STATICFILES_DIRS = [p for p in [BASE_DIR / "frontend" / "dist"] if p.exists()]

# Where DICOM instances and job outputs live; each file is stored once, keyed by UIDs.
STORAGE_ROOT = env_path("ILD_STORAGE_ROOT", VAR_DIR / "storage")
# The worsening classifier run after each registration job: "default" (the weight-free model,
# trained in-project on synthetic phantoms on first use and cached under ILD_MODELS_DIR or
# var/models/worsening), "off", or the folder of a user-supplied model (model.pt + metadata.json).
WORSENING_CLASSIFIER = env_str("ILD_WORSENING_CLASSIFIER", "default")
# Uploads larger than this are refused before they are read (bytes).
MAX_UPLOAD_BYTES = env_int("ILD_MAX_UPLOAD_BYTES", 4 * 1024**3)
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024**2
FILE_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024**2
FILE_UPLOAD_TEMP_DIR = None
# De-identification is the default for every import; a key derived from this secret makes the
# pseudonyms, date shifts and UID maps stable across imports.
DEIDENTIFY_BY_DEFAULT = env_bool("ILD_DEIDENTIFY_BY_DEFAULT", True)
DEIDENTIFICATION_SECRET = env_str("ILD_DEIDENTIFICATION_SECRET", SECRET_KEY)
# Helper processes that each ingest call (a STOW-RS request, an upload, an import) prepares
# files on besides its own (parsing, de-identifying, encoding are per-file Python): one per
# spare core by default, at most 2; 0 prepares every file in the calling process.
_USABLE_CORES = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)  # the cores this process may run on (Linux); every core elsewhere (macOS)
INGEST_HELPER_PROCESSES = env_int("ILD_INGEST_HELPER_PROCESSES", max(0, min(2, _USABLE_CORES - 1)))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "core.exceptions.exception_handler",
}

# Celery: the embedded default is a filesystem broker under var/, served by a local worker.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = ("core.tasks.route_task",)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Periodic upkeep, sent by Celery beat (``celery worker --beat`` in `make run` and the docker
# cpu-worker): abandoned upload files are swept every hour while the server runs.
CELERY_BEAT_SCHEDULE = {
    "sweep-incoming": {"task": "studies.tasks.sweep_incoming", "schedule": 3600.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Segmentation and registration run on the gpu queue when a GPU worker exists; everything
# else, and every job on a CPU-only site, runs on the cpu queue.
ILD_GPU_QUEUE_ENABLED = env_bool("ILD_GPU_QUEUE_ENABLED", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
