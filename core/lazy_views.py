"""Views imported on their first request.

The report pages and their API compute statistics and write DICOM SEG: their modules import
scipy, SimpleITK and highdicom, about 190 MB of a web worker's 300. A URL module that names its
views through :class:`LazyView` loads them only when one of its URLs is first requested, so
a worker that serves the viewer and DICOMweb never does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

View = Callable[..., HttpResponseBase]


class LazyView:
    """A URL pattern's view, imported from ``dotted_path`` on first use: a function view, or
    a class-based view (Django's ``View`` or DRF's ``APIView``), whose ``as_view()`` is taken
    then.

    What Django asks of a view before calling it (``csrf_exempt`` for the CSRF middleware) is
    the imported view's own answer.
    """

    def __init__(self, dotted_path: str) -> None:
        self.dotted_path = dotted_path
        self._view: View | None = None
        self._lock = threading.Lock()

    @property
    def view(self) -> View:
        if self._view is None:
            with self._lock:
                if self._view is None:
                    target = import_string(self.dotted_path)
                    as_view = getattr(target, "as_view", None)  # a class-based view
                    self._view = as_view() if as_view is not None else target
        return self._view

    @property
    def csrf_exempt(self) -> bool:
        return bool(getattr(self.view, "csrf_exempt", False))

    def __call__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return self.view(request, *args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyView({self.dotted_path!r})"
