from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.base")
django_application = get_wsgi_application()

# Imported once Django is set up: WADO-RS frames are answered in front of Django when they can
# be, everything else goes to it unchanged (studies/dicomweb/fastpath.py).
from studies.dicomweb.fastpath import FrameFastPath  # noqa: E402

application = FrameFastPath(django_application)


def _warm() -> None:
    """Import every view (the URL configuration) now rather than on the first request."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018


_warm()
