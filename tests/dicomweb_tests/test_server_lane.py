"""The production gunicorn worker (webapp.server): requests kept on one thread, and the frame
lane answering plain frame GETs with the fast path's bytes while everything else still goes
through gunicorn's parser and the application.

Requests are written into one end of a socket pair before the worker's ``handle`` runs in the
test's thread, so the whole exchange is deterministic and uses the test's database.
"""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import TConn
from rest_framework.authtoken.models import Token

from studies.dicomweb import fastpath
from studies.dicomweb.authentication import CachedTokenAuthentication
from studies.services import storage
from tests.dicomweb_tests.conftest import expected_pixels, path_of
from tests.dicomweb_tests.test_fastpath import OCTET_ANY, Spy, parts_of, token_for
from webapp import server

pytestmark = pytest.mark.django_db


class Worker:
    """A ScrollingThreadWorker around FrameFastPath(Spy()), counting lane answers."""

    def __init__(self, monkeypatch, *, accesslog: str | None = None) -> None:
        cfg = Config()
        cfg.set("keepalive", 30)
        if accesslog:
            cfg.set("accesslog", accesslog)
        self.worker = server.ScrollingThreadWorker(
            0, os.getppid(), [], SimpleNamespace(), 30, cfg, Logger(cfg)
        )
        self.spy = Spy()
        self.worker.wsgi = fastpath.FrameFastPath(self.spy)
        self.worker.alive = True
        self.cfg = cfg
        self.lane_answers = 0
        answer = server.FrameLane._answer

        def counting(lane, head, conn):
            result = answer(lane, head, conn)
            self.lane_answers += result is not None
            return result

        monkeypatch.setattr(server.FrameLane, "_answer", counting)

    def exchange(self, *requests: bytes) -> tuple[object, list[http.client.HTTPResponse]]:
        """Send ``requests`` back to back, let the worker handle them, read the responses."""
        ours, theirs = socket.socketpair()
        try:
            theirs.sendall(b"".join(requests))
            conn = TConn(self.cfg, ours, ("127.0.0.1", 40000), ("127.0.0.1", 8000))
            result = self.worker.handle(conn)
            theirs.settimeout(5)
            reader = Unclosable(theirs.makefile("rb"))  # one buffer for every response
            stream = SimpleNamespace(makefile=lambda *_: reader)
            responses = []
            for _ in requests:
                response = http.client.HTTPResponse(stream)  # type: ignore[arg-type]
                response.begin()
                response.body = response.read()  # type: ignore[attr-defined]
                responses.append(response)
            return result, responses
        finally:
            ours.close()
            theirs.close()


class Unclosable:
    """A file whose ``close`` leaves it open: HTTPResponse closes its file after each body."""

    def __init__(self, file: object) -> None:
        self.file = file

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)

    def close(self) -> None:
        pass


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8000", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(autouse=True)
def fresh_caches():
    fastpath.clear_caches()
    yield
    fastpath.clear_caches()


def frame_paths(series) -> list[str]:
    sops = list(
        series.instances.order_by("instance_number").values_list("sop_instance_uid", flat=True)
    )
    return [path_of(series, "instances", sop, "frames", "1") for sop in sops]


def test_frames_after_the_first_request_take_the_lane_with_the_same_bytes(
    monkeypatch, series, reader_a
):
    worker = Worker(monkeypatch)
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    paths = frame_paths(series)

    result, responses = worker.exchange(*(get(p, auth, accept) for p in paths))

    assert result is True  # kept alive after the last one
    assert worker.lane_answers == len(paths) - 1  # the first request is gunicorn's
    assert worker.spy.calls == 0
    for index, response in enumerate(responses):
        assert response.status == 200
        assert response.getheader("Connection", "keep-alive").lower() == "keep-alive"
        assert response.getheader("Vary") == "Accept, Authorization, Cookie"
        assert response.getheader("X-Frame-Options") == "DENY"
        [(part_type, content)] = parts_of(response.getheader("Content-Type"), response.body)
        assert "transfer-syntax=1.2.840.10008.1.2.1" in part_type
        assert content == expected_pixels(index)
        assert int(response.getheader("Content-Length")) == len(response.body)
    lane = responses[1]
    assert lane.getheader("Server") == "gunicorn" and lane.getheader("Date")


def test_a_kept_alive_connection_back_from_the_poller_takes_the_lane_at_once(
    monkeypatch, series, reader_a
):
    # Several viewer connections share a worker's threads: a connection idle past the linger
    # goes back to the poller, which hands it to ``handle`` again with its next request.
    worker = Worker(monkeypatch)
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    paths = frame_paths(series)
    ours, theirs = socket.socketpair()
    try:
        conn = TConn(worker.cfg, ours, ("127.0.0.1", 40000), ("127.0.0.1", 8000))
        reader = Unclosable(theirs.makefile("rb"))
        stream = SimpleNamespace(makefile=lambda *_: reader)
        theirs.settimeout(5)
        results, bodies = [], []
        for path in paths:
            theirs.sendall(get(path, auth, accept))
            results.append(worker.worker.handle(conn))  # idle after one request: returns
            ours.setblocking(False)  # as the poller leaves it
            response = http.client.HTTPResponse(stream)  # type: ignore[arg-type]
            response.begin()
            assert response.status == 200
            [(_, content)] = parts_of(response.getheader("Content-Type"), response.read())
            bodies.append(content)
    finally:
        ours.close()
        theirs.close()

    assert results == [True] * len(paths)
    assert worker.lane_answers == len(paths) - 1  # only the connection's first is gunicorn's
    assert worker.spy.calls == 0
    assert bodies == [expected_pixels(index) for index in range(len(paths))]


def test_requests_that_are_not_plain_frame_gets_reach_the_application_in_order(
    monkeypatch, series, other_series, reader_a
):
    worker = Worker(monkeypatch)
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    own, foreign = frame_paths(series)[0], frame_paths(other_series)[0]
    requests = [
        get(own, auth, accept),  # gunicorn's (first request)
        get(own, auth, accept),  # lane
        get(foreign, auth, accept),  # another project's instance: the fast path declines
        get(own + "?x=1", auth, accept),  # a query string: gunicorn parses it
        get(own, auth, accept, "X-Forwarded-For: 10.0.0.1"),  # a proxy's request
        get(own, accept),  # anonymous: the views answer 401
        get(own, auth, "Accept: image/png"),  # an Accept frames cannot satisfy: 406
        get(own, auth, accept),  # lane again
        get(own, auth, accept, "Connection: keep-alive"),  # what requests sends: lane
    ]

    result, responses = worker.exchange(*requests)

    assert result is True
    assert [r.status for r in responses] == [200, 200, 404, 200, 200, 401, 406, 200, 200]
    assert worker.lane_answers == 3
    assert worker.spy.calls == 3  # 404, 401, 406 came from Django
    for response in (*responses[:2], *responses[3:5], *responses[7:]):
        [(_, content)] = parts_of(response.getheader("Content-Type"), response.body)
        assert content == expected_pixels(0)


def test_a_frame_whose_file_is_short_or_gone_is_left_to_the_application(
    monkeypatch, series, reader_a
):
    worker = Worker(monkeypatch)
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    paths = frame_paths(series)
    instances = list(series.instances.order_by("instance_number"))
    short, gone = (storage.absolute(instance.file) for instance in instances[1:3])
    short.write_bytes(short.read_bytes()[:-100])
    gone.unlink()
    application = []
    answered = fastpath.FrameFastPath.__call__

    def spying(app, environ, start_response):
        application.append(environ["PATH_INFO"])
        return answered(app, environ, start_response)

    monkeypatch.setattr(fastpath.FrameFastPath, "__call__", spying)

    requests = [get(p, auth, accept) for p in (*paths[:3], paths[0])]
    worker.exchange(requests[0], requests[0])  # the caches filled: what stays open is open
    open_files, application[:] = len(os.listdir("/proc/self/fd")), []
    result, responses = worker.exchange(*requests)
    assert len(os.listdir("/proc/self/fd")) == open_files  # every frame file closed again

    # The lane opens a frame's file before a byte goes out: a short or missing one goes to
    # the application, which answers it whole, and the connection serves on.
    assert result is True
    assert application == [paths[0], paths[1], paths[2]]  # the first request, then the two
    assert worker.spy.calls == 2  # the fast path declined both: Django answered them
    assert [r.status for r in responses] == [200, 500, 500, 200]
    for response in responses[1:3]:
        assert b"missing or shorter than its recorded Pixel Data" in response.body
    for response in (responses[0], responses[3]):
        [(_, content)] = parts_of(response.getheader("Content-Type"), response.body)
        assert content == expected_pixels(0)


def test_a_connection_checks_its_caller_once_a_second_not_per_frame(monkeypatch, series, reader_a):
    worker = Worker(monkeypatch)
    token = token_for(reader_a)
    auth, accept = f"Authorization: {token}", f"Accept: {OCTET_ANY}"
    paths = frame_paths(series)
    checks = []
    authenticate = fastpath.authenticated_user

    def counting(environ):
        checks.append(environ["PATH_INFO"])
        return authenticate(environ)

    monkeypatch.setattr(fastpath, "authenticated_user", counting)

    _, responses = worker.exchange(*(get(p, auth, accept) for p in paths))

    assert [r.status for r in responses] == [200] * len(paths)
    assert worker.lane_answers == len(paths) - 1
    assert checks == paths[:2]  # gunicorn's first request, then the lane's memo for the rest

    # Past MEMO_S the caller is checked again: a deleted token stops serving frames.
    monkeypatch.setattr(fastpath, "MEMO_S", 0.0)
    checks.clear()
    Token.objects.filter(key=token.split()[1]).delete()
    first = get(paths[0], auth, accept)
    _, responses = worker.exchange(first, first, first)
    assert [r.status for r in responses] == [200, 200, 200]  # the token cache still knows it
    assert len(checks) == 3  # but every request asked it
    fastpath.clear_caches()
    CachedTokenAuthentication._cache.clear()
    _, responses = worker.exchange(first, first, first)
    assert [r.status for r in responses] == [401, 401, 401]


def test_a_host_the_fast_path_has_not_checked_yet_takes_the_lane(monkeypatch, series, reader_a):
    worker = Worker(monkeypatch)
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    own = frame_paths(series)[0]
    other_host = get(own, auth, accept).replace(b"Host: 127.0.0.1:8000", b"Host: localhost:8000")

    _, responses = worker.exchange(get(own, auth, accept), other_host, other_host)

    assert [r.status for r in responses] == [200, 200, 200]
    assert worker.lane_answers == 2  # the new Host value is checked in the lane itself
    assert worker.spy.calls == 0


def test_connection_close_is_honoured_and_the_worker_lets_go(monkeypatch, series, reader_a):
    worker = Worker(monkeypatch)
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    own = frame_paths(series)[0]

    result, responses = worker.exchange(
        get(own, auth, accept), get(own, auth, accept, "Connection: close")
    )

    assert result is False
    assert [r.status for r in responses] == [200, 200]
    assert responses[1].getheader("Connection").lower() == "close"
    assert worker.lane_answers == 0


def test_no_lane_when_requests_are_access_logged(monkeypatch, series, reader_a, tmp_path):
    worker = Worker(monkeypatch, accesslog=str(tmp_path / "access.log"))
    auth, accept = f"Authorization: {token_for(reader_a)}", f"Accept: {OCTET_ANY}"
    paths = frame_paths(series)

    _, responses = worker.exchange(*(get(p, auth, accept) for p in paths))

    assert [r.status for r in responses] == [200] * len(paths)
    assert worker.lane_answers == 0
    assert (tmp_path / "access.log").read_text().count(" 200 ") == len(paths)


def test_send_finishes_pieces_across_partial_writes():
    class Trickle:
        def __init__(self) -> None:
            self.received = b""

        def sendmsg(self, buffers, ancillary=(), flags=0):
            data = b"".join(bytes(b) for b in buffers)[:7]
            self.received += data
            return len(data)

    sock = Trickle()
    pieces = [b"HTTP/1.1 200 OK\r\n\r\n", b"", os.urandom(100), b"\r\n--end--\r\n"]
    server._send(sock, pieces)
    assert sock.received == b"".join(pieces)


def test_send_copies_file_ranges_from_the_file(tmp_path):
    data = os.urandom(3_000_000)  # more than a socket buffer: several sendfile calls
    (tmp_path / "f.dcm").write_bytes(data)
    piece = fastpath.FileRange(str(tmp_path / "f.dcm"), 1234, 2_500_000)
    ours, theirs = socket.socketpair()
    received = bytearray()
    reader = threading.Thread(target=lambda: _read_all(theirs, received))
    reader.start()
    try:
        pieces = server._open_ranges([b"head", piece, b"tail"])
        server._send(ours, pieces)
        server._close_ranges(pieces)
    finally:
        ours.close()
        reader.join(10)
        theirs.close()
    assert bytes(received) == b"head" + data[1234 : 1234 + 2_500_000] + b"tail"


def _read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(1 << 20):
        into += chunk


class Accepting:
    """A ScrollingThreadWorker polling ``listener``, recording the connections it accepts
    instead of handing them to its thread pool."""

    def __init__(self, listener: socket.socket, *, serving: int = 0, idle: int = 0) -> None:
        cfg = Config()
        cfg.set("threads", 2)
        self.worker = server.ScrollingThreadWorker(
            0, os.getppid(), [listener], SimpleNamespace(), 30, cfg, Logger(cfg)
        )
        self.worker.alive = True
        self.worker.poller = selectors.DefaultSelector()
        self.worker.method_queue.init()
        queue = self.worker.method_queue  # as the worker's run loop registers it
        self.worker.poller.register(queue.fileno(), selectors.EVENT_READ, queue.run_callbacks)
        self.worker.nr_conns = serving + idle
        self.worker.keepalived_conns.extend(object() for _ in range(idle))
        self.accepted: list[object] = []
        self.worker.enqueue_req = self.accepted.append
        self.worker.set_accept_enabled(True)

    def poll(self, timeout: float = 0.0) -> None:
        """One turn of the worker's loop: its events (a new connection, a timer's callback)."""
        self.worker.set_accept_enabled(self.worker.nr_conns < self.worker.worker_connections)
        self.worker.wait_for_and_dispatch_events(timeout)


@pytest.fixture
def listener():
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_a_busy_worker_leaves_a_new_connection_to_a_less_busy_one(listener):
    busy, free = Accepting(listener, serving=2), Accepting(listener, serving=1)
    with socket.create_connection(listener.getsockname()):
        busy.poll(timeout=1)  # first to wake: it steps aside
        free.poll(timeout=1)
        assert (len(busy.accepted), len(free.accepted)) == (0, 1)
        assert free.worker.nr_conns == 2


def test_a_busy_worker_takes_a_connection_no_other_worker_took(listener):
    busy = Accepting(listener, serving=2)
    with socket.create_connection(listener.getsockname()):
        busy.poll(timeout=1)
        busy.poll()  # still paused: the run loop cannot turn listening back on
        assert busy.accepted == [] and not busy.worker._accepting
        deadline = time.monotonic() + 5
        while not busy.accepted and time.monotonic() < deadline:
            busy.poll(timeout=0.05)  # the timer's callback, then the connection
        assert len(busy.accepted) == 1
        assert busy.worker.nr_conns == 3


def test_idle_kept_alive_connections_do_not_make_a_worker_busy(listener):
    worker = Accepting(listener, serving=1, idle=5)
    with socket.create_connection(listener.getsockname()):
        worker.poll(timeout=1)
        assert len(worker.accepted) == 1


def test_open_ranges_opens_each_file_once_and_refuses_a_short_one(tmp_path):
    (tmp_path / "f.dcm").write_bytes(os.urandom(1000))
    path = str(tmp_path / "f.dcm")
    frames = [fastpath.FileRange(path, 100, 400), fastpath.FileRange(path, 500, 400)]
    open_files = len(os.listdir("/proc/self/fd"))

    pieces = server._open_ranges([b"head", *frames, b"tail"])
    assert len(os.listdir("/proc/self/fd")) == open_files + 1  # one descriptor for both
    assert [p.read() for p in pieces[1:3]] == [f.read() for f in frames]
    server._close_ranges(pieces)
    assert len(os.listdir("/proc/self/fd")) == open_files

    with pytest.raises(OSError, match="shorter than its recorded Pixel Data"):
        server._open_ranges([*frames, fastpath.FileRange(path, 900, 400)])
    assert len(os.listdir("/proc/self/fd")) == open_files


def test_a_socket_body_reads_what_the_parser_held_then_the_socket_and_no_further():
    from gunicorn.http.body import LengthReader
    from gunicorn.http.unreader import SocketUnreader

    body, next_request = os.urandom(300_000), get("/next")
    ours, theirs = socket.socketpair()
    ours.settimeout(5)  # a read past the body's end would wait for bytes that never come
    try:
        unreader = SocketUnreader(ours)
        unreader.unread(body[:1000])  # what the parser read past the request head
        sender = threading.Thread(target=theirs.sendall, args=(body[1000:] + next_request,))
        sender.start()
        reader = server.SocketBody(LengthReader(unreader, len(body)))
        pieces = [reader.read(n) for n in (10, 5000, 65_536, 1 << 20, 100)]
        sender.join()
        assert all(isinstance(piece, bytes) for piece in pieces)
        assert b"".join(pieces) == body
        assert pieces[-1] == b""  # the body's end, not the next request
        assert unreader.read(len(next_request)) == next_request
    finally:
        ours.close()
        theirs.close()


def test_a_stow_upload_on_a_kept_connection_is_read_whole_and_the_next_request_follows(
    monkeypatch, series, coordinator
):
    from studies.models import Instance
    from tests.dicom_builders import ct_series_bytes

    worker = Worker(monkeypatch)
    boundary = "f00dcafe"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for data in ct_series_bytes(3)
        )
        + f"--{boundary}--\r\n".encode()
    )
    auth = f"Authorization: {token_for(coordinator)}"
    post = (
        "\r\n".join(
            [
                "POST /dicomweb/studies HTTP/1.1",
                "Host: 127.0.0.1:8000",
                auth,
                "Accept: application/dicom+json",
                f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
                f"Content-Length: {len(body)}",
            ]
        )
        + "\r\n\r\n"
    ).encode() + body
    before = Instance.objects.count()

    result, responses = worker.exchange(
        post, get(frame_paths(series)[0], auth, f"Accept: {OCTET_ANY}")
    )

    assert result is True
    assert [r.status for r in responses] == [200, 200]
    assert Instance.objects.count() == before + 3
