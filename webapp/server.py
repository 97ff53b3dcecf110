"""The gunicorn worker the production server runs: ``gthread`` with a lane for viewer frames.

A viewer scrolling a stack sends one frame request after another on each of its keep-alive
connections. Two costs of gunicorn's stock ``gthread`` worker exceed the frame fast path
(``studies.dicomweb.fastpath``) itself: after every response the connection goes back to the
main thread's poller, which must wake, dispatch it to the pool and switch threads before the
next request is read; and each request is parsed into gunicorn's request object and a full
WSGI environ. :class:`ScrollingThreadWorker` removes both for that traffic:

* **lingering**: while the client's next request arrives within ``LINGER_S`` seconds, the
  thread that served the connection serves it again, for at most ``MAX_TURN`` requests in a
  row and only while no other connection waits for a thread; otherwise the connection goes
  back to the poller exactly as in ``gthread``;
* **the frame lane**: a request on such a kept connection that is a plain ``GET`` of
  WADO-RS frames (HTTP/1.1, no body, no query, no proxy headers, complete in what was read)
  is handed to ``FrameFastPath.respond`` with a minimal environ and its answer written
  straight to the socket. Anything else, and anything the fast path declines, goes through
  gunicorn's parser and the WSGI application unchanged, so every other response, error and
  access rule is the application's.

The first request of a new connection always takes gunicorn's path; a kept-alive connection
the poller hands back (several viewer connections sharing a worker's threads) tries the lane
first. The lane is off when an
access log is configured (``--access-logfile``), so that every request is logged.

Use it with ``gunicorn -c python:webapp.gunicorn_conf webapp.wsgi`` (docker, ``make run``,
``benchmarks/bench_dicomweb.py``).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from email.utils import formatdate
from typing import Any, NamedTuple

from gunicorn import SERVER
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import ThreadWorker

#: How long a thread waits on a kept-alive connection for its next request.
LINGER_S = 0.05
#: Requests served in a row on one connection before it goes back to the poller.
MAX_TURN = 256
#: How long a busy worker leaves a new connection for the other workers to accept.
ACCEPT_DEFER_S = 0.005
#: Largest request head the lane reads; longer ones are gunicorn's.
MAX_HEAD = 16384
# Headers that make a request the parser's business: a body, a protocol switch, a proxy's view
# of the client (scheme and host rules). ``Connection`` is the lane's only as ``keep-alive``.
_NOT_FOR_LANE = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-ssl",
        b"x-forwarded-protocol",
        b"x-real-ip",
        b"proxy-connection",
    }
)
# Response headers whose value differs from one response to the next.
_PER_RESPONSE = frozenset({"Content-Type", "Content-Length", "Date", "Last-Modified", "ETag"})


class ScrollingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread``, serving back-to-back requests of a connection on the same thread, and
    leaving new connections to less busy workers.

    Every worker polls the one listening socket and the first to call ``accept`` takes the
    connection, so eight viewer connections on four two-thread workers land as 4-2-1-1 as
    often as 2-2-2-2: one worker's threads and interpreter lock serve four while another's
    idle. A worker serving at least as many connections as it has threads (idle kept-alive
    ones not counted) lets a new one wait ``ACCEPT_DEFER_S`` for another worker to take
    (nginx's ``accept_disabled`` idea) and takes it itself only if none has by then.
    """

    _accept_paused = False  # till the timer's callback turns listening back on
    _accept_anyway_until = 0.0  # monotonic time: till then take a connection even when busy

    def accept(self, listener: Any) -> None:
        if self._serving() >= self.cfg.threads and time.monotonic() >= self._accept_anyway_until:
            self._pause_accepting()
            return
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self._accept_paused:
            return  # the run loop asks on every turn; the timer resumes listening
        super().set_accept_enabled(enabled)

    def _serving(self) -> int:
        """Connections of this worker but those kept alive idle in its poller (a connection
        accepted a moment ago counts: its first request is on the way)."""
        return int(self.nr_conns) - len(self.keepalived_conns)

    def _pause_accepting(self) -> None:
        self._accept_paused = True
        super().set_accept_enabled(False)
        timer = threading.Timer(ACCEPT_DEFER_S, self.method_queue.defer, (self._resume_accepting,))
        timer.daemon = True
        timer.start()

    def _resume_accepting(self) -> None:
        """On the main thread once the pause is over: listen again, and take a connection
        still waiting even though this worker is busy."""
        self._accept_paused = False
        self._accept_anyway_until = time.monotonic() + ACCEPT_DEFER_S
        if self.alive and self.nr_conns < self.worker_connections:
            super().set_accept_enabled(True)

    def handle(self, conn: Any) -> Any:
        lane = self._lane()
        if _kept_alive(conn):  # back from the poller with its next request
            conn.sock.setblocking(True)  # the poller left it non-blocking
            result = self._serve_next(lane, conn)
        else:
            result = super().handle(conn)
        served = 1
        readable = None
        while result is True and served < MAX_TURN and self._keeps_going():
            if not _buffered(conn):
                if readable is None:
                    readable = select.poll()
                    readable.register(conn.sock, select.POLLIN)
                if not readable.poll(LINGER_S * 1000):
                    break  # idle: the poller watches it, as gthread does
            served += 1
            result = self._serve_next(lane, conn)
        return result

    def handle_request(self, req: Any, conn: Any) -> Any:
        """gunicorn's, with a body of declared length read by :class:`SocketBody`."""
        body = getattr(req, "body", None)
        reader = getattr(body, "reader", None)
        if (
            type(body) is Body
            and isinstance(reader, LengthReader)
            and isinstance(reader.unreader, SocketUnreader)
        ):
            req.body = SocketBody(reader)
        return super().handle_request(req, conn)

    def _serve_next(self, lane: FrameLane | None, conn: Any) -> Any:
        """The connection's next request: through the lane when it is the lane's, else through
        gunicorn's parser and the application. True: keep the connection."""
        answered = self._serve_lane(lane, conn) if lane is not None and self.alive else None
        return super().handle(conn) if answered is None else answered

    def _serve_lane(self, lane: FrameLane, conn: Any) -> bool | None:
        """The connection's next request through the lane: True when answered (keep the
        connection), False when the connection must close, None when it is not the lane's."""
        try:
            answered = lane.serve(conn)
        except OSError as error:  # the client went away mid-answer, or the file did
            self.log.debug("frame lane: %s", error)
            return False  # gunicorn closes the connection
        except Exception:
            self.log.exception("Error handling request in the frame lane")
            return False
        if not answered:
            return None
        self.nr += 1
        if self.nr >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            return False
        return True

    def _lane(self) -> FrameLane | None:
        """The lane for this worker's application, built on first use (None: no lane)."""
        if not hasattr(self, "_frame_lane"):
            respond = getattr(getattr(self, "wsgi", None), "respond", None)
            lane = FrameLane(respond, self.cfg) if respond and not self.cfg.accesslog else None
            self._frame_lane: FrameLane | None = lane
        return self._frame_lane

    def _keeps_going(self) -> bool:
        """Whether the worker runs on and no request of another connection waits for a thread."""
        queue = getattr(getattr(self, "tpool", None), "_work_queue", None)
        return bool(self.alive) and (queue is None or queue.empty())


class SocketBody(Body):  # type: ignore[misc]
    """A request body of declared length whose ``read(n)`` receives into one buffer
    (``recv_into``, after whatever the parser had read ahead) and returns it as bytes: one
    copy on the way to the caller.

    gunicorn's reader passes each received chunk through two buffers and slices it twice on
    the way to the caller: for a STOW-RS upload of tens of megabytes, read in megabyte
    chunks, that is a few milliseconds of the request's one thread. ``readline`` and
    ``read()`` of the whole rest stay gunicorn's; so does any ``read`` after a ``readline``
    left bytes behind. The reader's count of what is left of the body is kept, so gunicorn
    finds the next request where it begins.
    """

    def read(self, size: int | None = None) -> bytes:
        reader = self.reader
        if size is None or size < 0 or self.buf.tell():
            return super().read(size)  # type: ignore[no-any-return]
        size = min(size, reader.length)
        if size == 0:
            return b""
        held = reader.unreader.take_buffered()
        if len(held) >= size:
            reader.unreader.unread(held[size:])
            reader.length -= size
            return held[:size]  # type: ignore[no-any-return]
        out = bytearray(size)
        out[: len(held)] = held
        got = len(held)
        try:
            with memoryview(out) as view:
                while got < size:
                    received = reader.unreader.sock.recv_into(view[got:], size - got)
                    if not received:  # the client closed the connection: a short body
                        break
                    got += received
        except Exception:
            self.failed = True
            raise
        finally:
            reader.length -= got
        return bytes(out) if got == size else bytes(out[:got])


def _kept_alive(conn: Any) -> bool:
    """Whether ``conn`` has served a request and is back from the poller with its next one."""
    return bool(
        getattr(conn, "initialized", False)
        and getattr(conn, "parser", None) is not None
        and not getattr(conn, "is_http2", False)
    )


def _buffered(conn: Any) -> bool:
    """Whether the parser already holds bytes of the next request (pipelining, body drain)."""
    parser = getattr(conn, "parser", None)
    unreader = getattr(parser, "unreader", None)
    buf = getattr(unreader, "buf", None)
    if buf is not None and buf.getvalue():
        return True
    sock = getattr(conn, "sock", None)
    return bool(isinstance(sock, ssl.SSLSocket) and sock.pending())  # decrypted, not yet read


class FrameLane:
    """Answers plain frame ``GET`` requests of a kept-alive connection without WSGI.

    Args:
        respond: ``FrameFastPath.respond``: ``environ -> (headers, body pieces) | None``.
        cfg: the gunicorn configuration (TLS).
    """

    def __init__(self, respond: Any, cfg: Any) -> None:
        self.respond = respond
        self.tls = bool(cfg.is_ssl)
        self.scheme = "https" if self.tls else "http"
        self.server_header = f"Server: {SERVER}\r\n".encode()
        self._date = (0, b"")
        self._lines: dict[tuple[str, str], bytes] = {}

    def serve(self, conn: Any) -> bool:
        """Answer the connection's next request if it is the lane's; True when answered.

        When it is not, every byte read is handed back to the connection's parser, which then
        reads the request as if the lane had not looked.
        """
        unreader = conn.parser.unreader
        data = unreader.take_buffered()
        try:
            if b"\r\n\r\n" not in data:
                chunk = conn.sock.recv(MAX_HEAD)
                data += chunk
                if not chunk or b"\r\n\r\n" not in data:
                    unreader.unread(data)
                    return False
            head, _, rest = data.partition(b"\r\n\r\n")
            answer = self._answer(head, conn)
            if answer is not None:
                answer = _open_ranges(answer)
        except OSError:
            unreader.unread(data)  # a frame's file is gone or short: the application says so
            return False
        except Exception:
            unreader.unread(data)
            raise
        if answer is None:
            unreader.unread(data)
            return False
        unreader.unread(rest)  # a pipelined next request
        try:
            _send(conn.sock, answer)
        finally:
            _close_ranges(answer)
        return True

    def _answer(self, head: bytes, conn: Any) -> list[Any] | None:
        found = self._environ(head, conn)
        if found is None:
            return None
        environ, memo = found
        answer = self.respond(environ, file_ranges=not self.tls, memo=memo)
        if answer is None:
            return None
        headers, pieces = answer
        lines = [b"HTTP/1.1 200 OK\r\n", self.server_header, self._date_header()]
        lines.append(b"Connection: keep-alive\r\n")
        lines += map(self._header_line, headers)
        lines.append(b"\r\n")
        return [b"".join(lines), *pieces]

    def _header_line(self, header: tuple[str, str]) -> bytes:
        """``Name: value`` and CRLF; those that do not change between responses are kept."""
        line = self._lines.get(header)
        if line is None:
            line = f"{header[0]}: {header[1]}\r\n".encode("latin-1")
            if header[0] not in _PER_RESPONSE and len(self._lines) < 64:
                self._lines[header] = line
        return line

    def _environ(self, head: bytes, conn: Any) -> tuple[dict[str, Any], dict[Any, Any]] | None:
        """The WSGI variables the fast path reads and the fast path's memo for these header
        lines, or None for a request that is not the lane's.

        A viewer repeats the same header lines on every request of a connection: they are
        parsed once per connection and reused, with the memo, while they stay byte-for-byte
        the same.
        """
        request_line, _, block = head.partition(b"\r\n")
        method, _, rest = request_line.partition(b" ")
        target, _, version = rest.partition(b" ")
        if method != b"GET" or version != b"HTTP/1.1" or not target.startswith(b"/"):
            return None
        if b"?" in target or b"%" in target or b"#" in target or b" " in target:
            return None
        cached = getattr(conn, "_lane_headers", None)
        if cached is None or cached[0] != block:
            parsed = self._headers(block, conn)
            if parsed is None:
                return None
            cached = conn._lane_headers = (block, parsed, {})
        environ = dict(cached[1])
        environ["PATH_INFO"] = target.decode("ascii", "replace")
        return environ, cached[2]

    def _headers(self, block: bytes, conn: Any) -> dict[str, Any] | None:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": self.scheme,
        }
        for line in block.split(b"\r\n") if block else ():
            name, colon, value = line.partition(b":")
            name = name.lower()
            if not colon or not name or name != name.strip() or name in _NOT_FOR_LANE:
                return None  # folded or malformed lines, bodies, proxies: the parser decides
            if name == b"connection" and value.strip().lower() != b"keep-alive":
                return None  # close, upgrade: the parser decides
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            if key in environ or "_" in name.decode("latin-1"):
                return None  # repeated, or underscores (gunicorn's header-spoofing rules)
            environ[key] = value.strip().decode("latin-1")
        host = environ.get("HTTP_HOST")
        if not host:
            return None
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        environ["SERVER_NAME"] = name or host
        environ["SERVER_PORT"] = port or ("443" if self.scheme == "https" else "80")
        peer = conn.client
        if isinstance(peer, tuple) and peer:
            environ["REMOTE_ADDR"] = str(peer[0])
        return environ

    def _date_header(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode())
        return self._date[1]


def _send(sock: Any, pieces: list[Any]) -> None:
    """Write ``pieces`` in order: bytes gathered into few system calls, and file ranges
    (:func:`_open_ranges`) copied by the kernel from the file (``sendfile``)."""
    if isinstance(sock, ssl.SSLSocket) or not hasattr(sock, "sendmsg"):
        for piece in pieces:
            sock.sendall(piece if isinstance(piece, bytes) else piece.read())
        return
    pending: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, bytes):
            pending.append(piece)
            continue
        _send_bytes(sock, pending, more=True)
        pending = []
        _send_file(sock, piece)
    _send_bytes(sock, pending, more=False)


def _send_bytes(sock: Any, pieces: list[bytes], *, more: bool) -> None:
    """``sendmsg`` until every byte is out; ``more``: the next bytes follow at once (MSG_MORE
    lets the kernel fill segments across the calls)."""
    flags = getattr(socket, "MSG_MORE", 0) if more else 0
    views = [memoryview(p) for p in pieces if p]
    while views:
        sent = sock.sendmsg(views, [], flags)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


class _OpenRange(NamedTuple):
    """A ``FileRange`` (``part``) whose file is open (``fd``) and long enough."""

    fd: int
    part: Any

    def read(self) -> bytes:
        return os.pread(self.fd, self.part.size, self.part.offset)


def _open_ranges(pieces: list[Any]) -> list[Any]:
    """``pieces`` with each ``FileRange`` opened (each file once, however many frames of it
    the answer has), before a byte of the answer goes out.

    Raises:
        OSError: a file is missing, unreadable or shorter than its ranges (none is left open).
    """
    if all(isinstance(piece, bytes) for piece in pieces):
        return pieces
    files: dict[str, tuple[int, int]] = {}  # path -> (descriptor, length)
    try:
        opened: list[Any] = []
        for piece in pieces:
            if isinstance(piece, bytes):
                opened.append(piece)
                continue
            if piece.path not in files:
                fd = os.open(piece.path, os.O_RDONLY)
                files[piece.path] = (fd, os.fstat(fd).st_size)
            fd, length = files[piece.path]
            if length < piece.offset + piece.size:
                raise OSError(f"{piece.path} is shorter than its recorded Pixel Data")
            opened.append(_OpenRange(fd, piece))
    except BaseException:
        for fd, _ in files.values():
            os.close(fd)
        raise
    return opened


def _close_ranges(pieces: list[Any]) -> None:
    for fd in {piece.fd for piece in pieces if isinstance(piece, _OpenRange)}:
        os.close(fd)


def _send_file(sock: Any, piece: _OpenRange) -> None:
    """Copy an opened file range to ``sock`` in the kernel (``sendfile``)."""
    fd, part = piece
    offset, left = part.offset, part.size
    while left > 0:
        sent = os.sendfile(sock.fileno(), fd, offset, left)
        if sent == 0:
            raise OSError(f"{part.path} ended before its recorded Pixel Data")
        offset += sent
        left -= sent
