from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.base")
django_application = get_wsgi_application()

# Imported once Django is set up: WADO-RS frames are answered in front of Django when they can
# be, everything else goes to it unchanged (studies/dicomweb/fastpath.py).
from studies.dicomweb.fastpath import FrameFastPath  # noqa: E402

application = FrameFastPath(django_application)
