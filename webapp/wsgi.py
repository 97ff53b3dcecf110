from __future__ import annotations

import contextlib
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.base")
django_application = get_wsgi_application()

# Imported once Django is set up: WADO-RS frames are answered in front of Django when they can
# be, everything else goes to it unchanged (studies/dicomweb/fastpath.py).
from studies.dicomweb.fastpath import FrameFastPath  # noqa: E402

application = FrameFastPath(django_application)


def _warm() -> None:
    """Build the URL maps now rather than on each worker's first request (about 75 ms in all),
    with the modules the DICOMweb and study views import when first used. The report views stay
    unimported until a report is asked for (``core.lazy_views``)."""
    from django.urls import NoReverseMatch, get_resolver, reverse

    import inference.dicom.series  # noqa: F401  (series geometry, remade when read)

    resolver = get_resolver()
    resolver.reverse_dict  # noqa: B018
    # A reverse() into a namespace ("dicomweb:root") goes through a resolver of its own, whose
    # map is built the first time: reverse one name of each namespace.
    for namespace, (_, included) in resolver.namespace_dict.items():
        names = [name for name in included.reverse_dict if isinstance(name, str)]
        if names:
            with contextlib.suppress(NoReverseMatch):  # a name with arguments: built all the same
                reverse(f"{namespace}:{names[0]}")


_warm()
