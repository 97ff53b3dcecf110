"""Token authentication for DICOMweb with a short in-process cache.

A viewer sends hundreds of frame requests a second with the same token; DRF's
TokenAuthentication reads the token and its user from the database for each. Here a token is
trusted for ``TTL_S`` seconds after it was last checked, so a deleted token or a deactivated
user stops working within that time rather than at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rest_framework.authentication import TokenAuthentication

TTL_S = 30.0
MAX_ENTRIES = 1024


class CachedTokenAuthentication(TokenAuthentication):
    _cache: dict[str, tuple[float, Any, Any]] = {}
    _lock = threading.Lock()

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        user, token = super().authenticate_credentials(key)
        with self._lock:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = (now + TTL_S, user, token)
        return user, token
