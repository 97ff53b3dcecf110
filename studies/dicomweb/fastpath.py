"""WADO-RS frames served in front of Django, for the request a viewer sends hundreds of a second.

``FrameFastPath`` wraps the WSGI application. A ``GET .../instances/{sop}/frames/{n}`` for a
native (uncompressed) instance, by a user it can authenticate from its caches, is answered here:
one ``pread`` per frame at the offset recorded at ingest and a multipart body, without the
middleware, URL resolution and DRF dispatch that cost several times the read itself. Anything
else (compressed or decoded frames, a bad Accept, an unknown UID, another project's instance,
an anonymous or unknown caller, a database error) goes to Django unchanged, so every error
response, and every rule about who sees what, is the one the DICOMweb views give.

What is cached, per process, and for how long (``TTL_S``):

* who a credential is: a token through ``CachedTokenAuthentication`` (the views' own cache), a
  session cookie and an HTTP Basic header by the user they authenticated. A deleted token, a
  logout, a changed password or a deactivated user therefore stops working here within
  ``TTL_S`` seconds, as the token cache already does for every DICOMweb view;
* where a visible instance's pixels are: on a miss, the rows of its whole series that
  ``selectors.instances_under`` (so ``visible_instances``, with any blinding filter) returns for
  this user and project are loaded in one query. A revoked membership stops serving frames
  within ``TTL_S`` seconds; a deleted file is a miss and goes to Django.

A caller may also hand ``respond`` a ``memo``: a dict it keeps for requests that repeat the
same header lines (the server's frame lane keeps one per connection). The Host check and the
credential's user are then remembered there for ``MEMO_S`` seconds, so a viewer's stream of
frame requests on one connection pays for them once a second; a revoked credential stops
working within ``TTL_S + MEMO_S`` seconds. Frame plans depend only on the Accept header and
the stored transfer syntax, and are kept without a time limit.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from importlib import import_module
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from django.conf import settings
from django.contrib.auth import authenticate, get_user
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from rest_framework.exceptions import AuthenticationFailed

from core.access import is_site_admin
from core.exceptions import ApplicationError
from studies.dicomweb import wado
from studies.dicomweb.authentication import CachedTokenAuthentication
from studies.dicomweb.multipart import parse_accept, part_header
from studies.dicomweb.selectors import Scope, instances_under

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

TTL_S = 30.0
MEMO_S = 1.0
MAX_ENTRIES = 200_000
# The frames route of studies/dicomweb/urls.py under /dicomweb/ and /dicomweb/projects/<slug>/,
# narrowed to well-formed UIDs and frame lists: anything else is Django's to answer.
FRAMES_PATH = re.compile(
    r"^/dicomweb/(?:projects/(?P<project>[-a-zA-Z0-9_]+)/)?"
    r"studies/(?P<study>[0-9.]{1,64})/series/(?P<series>[0-9.]{1,64})/"
    r"instances/(?P<sop>[0-9.]{1,64})/frames/(?P<frames>[0-9,]{1,200})/?$"
)
CRLF = b"\r\n"


class _TtlCache:
    """A dict whose entries expire; cleared whole when full (entries are cheap to rebuild)."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.limit = limit
        self.entries: dict[Any, tuple[float, Any]] = {}
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        hit = self.entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put_many(self, items: Iterable[tuple[Any, Any]]) -> None:
        expires = time.monotonic() + TTL_S
        with self.lock:
            for key, value in items:
                if len(self.entries) >= self.limit:
                    self.entries.clear()
                self.entries[key] = (expires, value)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_users = _TtlCache(4096)  # session key or Basic header digest -> user
_frames = _TtlCache()  # (user, project, study, series, sop) -> Location | False
_hosts: set[str] = set()


def clear_caches() -> None:
    """Forget every cached credential, location and plan (tests; a project's access change)."""
    _users.clear()
    _frames.clear()
    frame_plan.cache_clear()
    _hosts.clear()


class FrameFastPath:
    """WSGI middleware: native frames from the caches, every other request to ``app``."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.security_headers = _security_headers()
        self.hsts = _hsts_header()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = self.respond(environ)
        if answer is None:
            return self.app(environ, start_response)
        headers, pieces = answer
        start_response("200 OK", headers)
        return cast(list[bytes], pieces)  # without file_ranges, every piece is bytes

    def respond(
        self,
        environ: dict[str, Any],
        *,
        file_ranges: bool = False,
        memo: dict[Any, Any] | None = None,
    ) -> tuple[list[tuple[str, str]], list[Piece]] | None:
        """The 200 response's headers and body pieces for a request answered here, else None.

        Also what the server's frame lane (``webapp.server``) sends without a WSGI round trip;
        with ``file_ranges`` the frames are :class:`FileRange` pieces it can ``sendfile`` (the
        sender checks each file's length as it opens it). ``memo``: a dict kept by the caller
        for requests with the same header lines as this one (see the module's docstring).
        """
        if environ.get("REQUEST_METHOD") != "GET":
            return None
        match = FRAMES_PATH.match(environ.get("PATH_INFO", ""))
        if match is None:
            return None
        served = serve_frames(environ, match, file_ranges=file_ranges, memo=memo)
        if served is None:
            return None
        content_type, pieces = served
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(sum(map(len, pieces)))),
            ("Vary", "Accept, Authorization, Cookie"),
            *self.security_headers,
        ]
        if self.hsts and _is_secure(environ):
            headers.append(("Strict-Transport-Security", self.hsts))
        return headers, pieces


def _security_headers() -> list[tuple[str, str]]:
    """What SecurityMiddleware and XFrameOptionsMiddleware add to every Django response."""
    headers = []
    if getattr(settings, "SECURE_CONTENT_TYPE_NOSNIFF", True):
        headers.append(("X-Content-Type-Options", "nosniff"))
    referrer = getattr(settings, "SECURE_REFERRER_POLICY", "same-origin")
    if referrer:
        value = referrer if isinstance(referrer, str) else ",".join(referrer)
        headers.append(("Referrer-Policy", value))
    opener = getattr(settings, "SECURE_CROSS_ORIGIN_OPENER_POLICY", "same-origin")
    if opener:
        headers.append(("Cross-Origin-Opener-Policy", opener))
    headers.append(("X-Frame-Options", getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()))
    return headers


def _hsts_header() -> str:
    seconds = getattr(settings, "SECURE_HSTS_SECONDS", 0)
    if not seconds:
        return ""
    value = f"max-age={seconds}"
    if getattr(settings, "SECURE_HSTS_INCLUDE_SUBDOMAINS", False):
        value += "; includeSubDomains"
    if getattr(settings, "SECURE_HSTS_PRELOAD", False):
        value += "; preload"
    return value


def _is_secure(environ: dict[str, Any]) -> bool:
    """``HttpRequest.is_secure``: the proxy's header when one is configured, else the scheme."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        header, secure_value = proxy
        value = environ.get(header)
        if value is not None:
            return bool(value.split(",", 1)[0].strip() == secure_value)
    return bool(environ.get("wsgi.url_scheme") == "https")


def serve_frames(
    environ: dict[str, Any],
    match: re.Match[str],
    *,
    file_ranges: bool = False,
    memo: dict[Any, Any] | None = None,
) -> tuple[str, list[Piece]] | None:
    """(Content-Type, body pieces) for a request the fast path can answer, else None."""
    try:
        who = _caller(environ, memo)
        if who is None:
            return None
        project = match["project"]
        found = frame_location(who, project, match["study"], match["series"], match["sop"])
        if found is None:
            return None
        path, offset, size, number_of_frames, stored = found
        plan = frame_plan(environ.get("HTTP_ACCEPT"), stored)
        if plan is None or plan.decode:
            return None
        numbers = wado.parse_frame_numbers(match["frames"], number_of_frames)
        return frames_body(path, offset, size, numbers, plan, file_ranges=file_ranges)
    except (ApplicationError, AuthenticationFailed, OSError):
        return None  # Django answers it: 404, 406, 401 with the views' messages
    except Exception:
        # A database or other failure: Django's handler reports it as it does for any view.
        logger.debug("frame fast path fell back to Django", exc_info=True)
        return None


# (user, (user's key, site admin, role)): who asks, and what decides what they may see.
Caller = tuple[Any, tuple[Any, bool, Any]]


def _caller(environ: dict[str, Any], memo: dict[Any, Any] | None) -> Caller | None:
    """The authenticated caller of a request to an allowed Host, else None: from ``memo``
    within ``MEMO_S`` seconds of the last check with these header lines.

    Raises:
        AuthenticationFailed: a token that is not (or no longer) valid.
    """
    if memo is not None:
        hit = memo.get("caller")
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]  # type: ignore[no-any-return]
    if getattr(settings, "SECURE_SSL_REDIRECT", False) or not _host_allowed(environ):
        return None
    user = authenticated_user(environ)
    if user is None:
        return None
    who = (user, (getattr(user, "pk", None), is_site_admin(user), getattr(user, "role", None)))
    if memo is not None:
        memo["caller"] = (time.monotonic() + MEMO_S, who)
    return who


def _host_allowed(environ: dict[str, Any]) -> bool:
    """Django's Host check (ALLOWED_HOSTS, X-Forwarded-Host), remembered per Host value."""
    host = "|".join(
        environ.get(name, "")
        for name in ("HTTP_HOST", "HTTP_X_FORWARDED_HOST", "SERVER_NAME", "SERVER_PORT")
    )
    if host in _hosts:
        return True
    try:
        # The server's frame lane hands over no body stream; a GET has none to read.
        WSGIRequest({"wsgi.input": io.BytesIO(), **environ}).get_host()
    except DisallowedHost:
        return False
    if len(_hosts) < 256:
        _hosts.add(host)
    return True


def authenticated_user(environ: dict[str, Any]) -> User | AnonymousUser | None:
    """The user the DICOMweb views would authenticate (token, Basic, then session), from the
    caches where possible; None where the views would refuse or must decide."""
    parts = environ.get("HTTP_AUTHORIZATION", "").split()
    scheme = parts[0].lower() if parts else ""
    if scheme in ("token", "basic"):
        if len(parts) != 2:
            return None  # the views answer 401 with the reason
        if scheme == "basic":
            return _basic_user(parts[1])
        user, _ = CachedTokenAuthentication().authenticate_credentials(parts[1])
        return user  # type: ignore[no-any-return]
    cookie_name = settings.SESSION_COOKIE_NAME
    cookies = environ.get("HTTP_COOKIE", "")
    if cookie_name not in cookies:
        return None
    session_key = _cookie(cookies, cookie_name)
    if not session_key:
        return None
    return _session_user(session_key)


def _cookie(header: str, name: str) -> str | None:
    for item in header.split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value.strip('"')
    return None


def _session_user(session_key: str) -> User | AnonymousUser | None:
    cached = _users.get(("session", session_key))
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)

    class _Request:
        session = store

    user = get_user(_Request())  # type: ignore[arg-type]
    if not user.is_authenticated or not user.is_active:
        return None
    _users.put_many([(("session", session_key), user)])
    return user


def _basic_user(credentials: str) -> User | AnonymousUser | None:
    key = ("basic", hashlib.sha256(credentials.encode("latin-1", "replace")).hexdigest())
    cached = _users.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = text.partition(":")
    if not sep:
        return None
    user = authenticate(None, username=username, password=password)
    if user is None or not user.is_active:
        return None
    _users.put_many([(key, user)])
    return user


# (absolute path, Pixel Data offset, bytes per frame, number of frames, transfer syntax)
Location = tuple[str, int, int, int, str]


def frame_location(
    who: Caller, project: str | None, study: str, series: str, sop: str
) -> Location | None:
    """Where a visible native instance's frames are; a miss loads the series' visible rows.
    None for an invisible instance and for one whose frames are not whole native bytes."""
    user, sees = who
    owner = (sees, project, study, series)
    found = _frames.get((*owner, sop))
    if found is not None:
        return found or None  # False: visible, but not served here
    scope = Scope(user, project, "")
    rows = instances_under(scope, study, series).values_list("sop_instance_uid", *wado.FRAME_FIELDS)
    located = {row[0]: _location(wado.FrameRef(*row[1:])) for row in rows}
    _frames.put_many(((*owner, uid), value or False) for uid, value in located.items())
    return located.get(sop)


def _location(ref: wado.FrameRef) -> Location | None:
    size = ref.native_frame_size()
    if ref.transfer_syntax_uid not in wado.NATIVE_LE or size is None:
        return None
    assert ref.pixel_data_offset is not None
    return (
        str(ref.path),
        ref.pixel_data_offset,
        size,
        ref.number_of_frames,
        ref.transfer_syntax_uid,
    )


@functools.lru_cache(maxsize=1024)
def frame_plan(accept: str | None, stored: str) -> wado.FramePlan | None:
    """The plan for an Accept header and a stored transfer syntax (None: Django answers 406);
    it depends on nothing else, so it is kept as long as there is room."""
    try:
        return wado.plan_frames(parse_accept(accept), stored)
    except ApplicationError:
        return None


class FileRange(NamedTuple):
    """``size`` bytes of the file at ``path`` from ``offset``: a frame, sent without reading it."""

    path: str
    offset: int
    size: int

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        """The bytes, with one ``pread``.

        Raises:
            OSError: the file is shorter than the range.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, self.size, self.offset)
        finally:
            os.close(fd)
        if len(data) != self.size:
            raise OSError(f"{self.path} is shorter than its recorded Pixel Data")
        return data


Piece = bytes | FileRange


@functools.lru_cache(maxsize=64)
def _part_type(plan: wado.FramePlan) -> tuple[str, bytes]:
    """A frame part's Content-Type and header block under ``plan``."""
    part_type = f"{plan.part_type}; transfer-syntax={plan.transfer_syntax}"
    return part_type, part_header(part_type)


def frames_body(
    path: str,
    offset: int,
    size: int,
    numbers: list[int],
    plan: wado.FramePlan,
    *,
    file_ranges: bool = False,
) -> tuple[str, list[Piece]]:
    """The frames laid out as ``wado.frames_body`` does, as the pieces of the body: read with
    one ``pread`` each, or (``file_ranges``) as :class:`FileRange` pieces, which the sender
    checks against the file's length when it opens it. The server writes the pieces one after
    another, without joining a copy."""
    ranges = [FileRange(path, offset + (n - 1) * size, size) for n in numbers]
    frames: list[Piece] = list(ranges) if file_ranges else [r.read() for r in ranges]
    part_type, part_head = _part_type(plan)
    if not plan.multipart and len(frames) == 1:
        return part_type, frames
    boundary = os.urandom(16).hex()
    marker = b"--" + boundary.encode()
    header = marker + CRLF + part_head
    pieces: list[Piece] = []
    for frame in frames:
        pieces += (header, frame, CRLF)
    pieces.append(marker + b"--" + CRLF)
    content_type = (
        f'multipart/related; type="{plan.part_type}"; '
        f"transfer-syntax={plan.transfer_syntax}; boundary={boundary}"
    )
    return content_type, pieces
