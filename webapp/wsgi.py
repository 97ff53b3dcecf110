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
    """Import every view and build the URL maps now rather than on each worker's first request
    (about 60 ms for the reverse map alone), with the modules views import when first used."""
    from django.urls import get_resolver

    import inference.dicom.series  # noqa: F401  (series geometry, after every ingest)

    resolver = get_resolver()
    resolver.url_patterns  # noqa: B018
    resolver.reverse_dict  # noqa: B018


_warm()
