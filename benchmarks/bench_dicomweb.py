"""Our DICOMweb server against Orthanc, on loopback, the same series loaded into both.

One command (needs PostgreSQL on 127.0.0.1:5432 and the Debian packages orthanc and
orthanc-dicomweb)::

    .venv/bin/python benchmarks/bench_dicomweb.py                     # POPI CT + 400x512x512
    .venv/bin/python benchmarks/bench_dicomweb.py --slices 60 --quick # a smoke run

It creates a scratch PostgreSQL database, migrates it, starts gunicorn with the production
settings (``webapp/gunicorn_conf.py``: the ``webapp.server`` thread worker) and Orthanc 1.x with its DICOMweb plugin, each with its own storage in
a temporary folder, then for each series (the POPI CT from ../shared/data/real/popi-00-ct and
a synthetic 400-slice 512x512 chest CT) measures, for both servers, in one run, each server
once it has settled after start-up (its processes near idle):

* STOW-RS throughput (instances/s; ours de-identifies every instance, as in production), in
  requests of 20 instances, the two servers taking turns request by request, each series
  stored ``--stow-copies`` times (3; the copies under new UIDs) so that the figure spans more
  than a handful of requests;
* QIDO-RS study search latency p50/p95 (the study-list query OHIF 3.13 sends), and the
  series search OHIF sends when it opens the study (p50/p95);
* series metadata latency (WADO-RS .../series/{uid}/metadata, median of repeats);
* WADO-RS frame throughput, one client and eight concurrent clients (separate processes,
  keep-alive connections, each fetching frame 1 of every instance ``--frame-rounds`` times
  (the one client ``--clients`` times as often, so that both figures time as many frames)
  with OHIF's Accept header; by default through a lean socket client that reads each body
  into one reused buffer, as a browser's network stack does, so that the client's own Python
  does not set the figure: ``--frame-client http.client`` measures through Python's
  ``http.client`` instead);
* rendered PNG latency (middle slice, median);
* (each latency series is timed after 5 untimed requests on the same connection, for both
  servers alike; the servers take turns within every figure: request by request for the
  latencies, pass by pass through the series for the frames, so that a fast or slow spell of
  a shared machine falls on both rather than on whichever was being measured then);
* peak resident memory of each server (VmHWM; ours summed over gunicorn's master, workers and
  their ingest helpers);
* the HTTP ceiling: frames/s from gunicorn with the same settings serving a constant frame
  from a do-nothing WSGI app, i.e. what the server and this client cost without us.

Every figure is printed with the ratio ours/Orthanc, followed by one JSON line.
Everything started is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dicom_builders import ct_slice, to_bytes  # noqa: E402
from tests.dicomweb_tests import orthanc_harness  # noqa: E402

PYTHON = REPO / ".venv" / "bin" / "python"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
OHIF_FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_STUDY_QUERY = (
    "/studies?limit=101&offset=0&fuzzymatching=false"
    "&includefield=00081030%2C00080060%2C00080090%2C00100030"
)
# Opening a study: its series, with two attributes that live only in the stored instances.
OHIF_SERIES_QUERY = "/studies/{study}/series?includefield=00080021%2C00080031%2C0008103E%2C00200011"
STOW_BATCH = 20
WARM_UP = 5  # untimed requests before each latency series


# ---- data --------------------------------------------------------------------------------


def popi_files(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]


def phantom_files(slices: int, size: int, kind: str) -> tuple[list[bytes], str]:
    """A chest CT series of ``slices`` x ``size`` x ``size`` int16 HU, as explicit VR LE."""
    hu: np.ndarray | None = None
    source = "simple"
    if kind in ("auto", "inference"):
        try:
            from inference.phantoms import make_phantom

            started = time.perf_counter()
            hu = make_phantom(seed=7, shape_kji=(slices, size, size)).ct.array.astype(np.int16)
            source = f"inference.phantoms.make_phantom ({time.perf_counter() - started:.0f} s)"
        except Exception as exc:
            if kind == "inference":
                raise
            print(f"  (inference phantom unavailable: {exc}; using the simple one)")
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    j, i = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (i / 0.45) ** 2 + (j / 0.33) ** 2 < 1
    lungs = ((np.abs(i) - 0.2) / 0.15) ** 2 + (j / 0.25) ** 2 < 1
    files = []
    for k in range(slices):
        if hu is not None:
            pixels = hu[k]
        else:
            noise = rng.normal(0, 20, (size, size)).astype(np.float32)
            image = np.where(body, 40.0, -1000.0) + noise
            image = np.where(lungs & body, -850.0 + noise, image)
            pixels = image.astype(np.int16)
        ds = ct_slice(
            study_uid=study,
            series_uid=series,
            index=k,
            size=size,
            patient_id="BENCH-PHANTOM",
            patient_name="PHANTOM^CHEST",
            spacing_mm=1.0,
        )
        ds.PixelSpacing = [0.7, 0.7]
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
        files.append(to_bytes(ds))
    return files, source


# ---- HTTP --------------------------------------------------------------------------------


class Http:
    """A keep-alive HTTP/1.1 connection (what a viewer's browser keeps per origin)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.host, self.port, self.prefix = parts.hostname or "", parts.port or 80, parts.path
        self.headers = headers or {}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        merged = {**self.headers, **(headers or {})}
        for attempt in range(2):
            try:
                self.conn.request(method, self.prefix + path, body=body, headers=merged)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, dict(response.getheaders()), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, accept: str) -> bytes:
        status, _, data = self.request("GET", path, {"Accept": accept})
        if status != 200:
            raise RuntimeError(f"GET {self.prefix}{path}: {status} {data[:300]!r}")
        return data

    def get_size(self, path: str, accept: str) -> int:
        """GET ``path``; the body's length (as :meth:`LeanHttp.get_size`)."""
        return len(self.get(path, accept))


class LeanHttp:
    """A keep-alive HTTP/1.1 GET client over a plain socket that reads each body into one
    reused buffer. Its cost per frame is about what a browser's network stack pays (the copy
    out of the kernel), so frame throughput measures the server; ``http.client`` spends as
    much Python per 0.5 MB answer as the fastest server does."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.address = (parts.hostname or "", parts.port or 80)
        self.prefix = parts.path
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.head = f"Host: {self.address[0]}:{self.address[1]}\r\n{extra}"
        self.buffer = bytearray(4 << 20)
        self.view = memoryview(self.buffer)
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=300)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        return sock

    def get_size(self, path: str, accept: str) -> int:
        """GET ``path``; the body's length (status 200 and Content-Length required)."""
        request = f"GET {self.prefix}{path} HTTP/1.1\r\n{self.head}Accept: {accept}\r\n\r\n"
        sock = self.sock or self._connect()
        sock.sendall(request.encode("latin-1"))
        received = b""
        while (end := received.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                self.sock = None
                raise ConnectionError(f"GET {path}: connection closed before the headers")
            received += chunk
        head = received[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in head[1:])
        }
        if "content-length" not in fields:
            raise RuntimeError(f"GET {path}: {status} without Content-Length ({fields})")
        length = int(fields["content-length"])
        if length > len(self.buffer):
            self.buffer = bytearray(length)
            self.view = memoryview(self.buffer)
        body = received[end + 4 :]
        have = len(body)
        if have > length:
            raise RuntimeError(f"GET {path}: more bytes than Content-Length")
        self.view[:have] = body
        while have < length:
            got = sock.recv_into(self.view[have:length])
            if not got:
                self.sock = None
                raise ConnectionError(f"GET {path}: connection closed mid-body")
            have += got
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {bytes(self.view[: min(length, 300)])!r}")
        if fields.get("connection", "").lower() == "close":
            sock.close()
            self.sock = None
        return length


@dataclass
class Server:
    name: str
    root: str  # DICOMweb root URL
    headers: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    def http(self) -> Http:
        return Http(self.root, self.headers)

    def frame_client(self, kind: str) -> Http | LeanHttp:
        return (
            LeanHttp(self.root, self.headers) if kind == "socket" else Http(self.root, self.headers)
        )


def with_new_uids(files: list[bytes], copy: int) -> list[bytes]:
    """``files`` as another study: new study, series and instance UIDs, derived from ``copy``."""
    import pydicom
    from pydicom.uid import generate_uid

    out = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=[str(copy), getattr(ds, keyword)]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def stow_alternating(
    servers: list[Server], files: list[bytes], copies: int = 1
) -> list[tuple[float, dict[str, Any]]]:
    """Each server's STOW-RS throughput (instances/s) storing ``files`` in requests of
    ``STOW_BATCH``, ``copies`` times (the copies after the first under new UIDs: a longer
    figure than one series gives), and its last response body.

    The servers take turns request by request (request k goes first to server k mod n), so
    that a slow spell of a shared machine falls on all of them rather than on whichever was
    being measured then; each server's clock runs only during its own requests.
    """
    boundary = "benchboundary7d3f"
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    series = [files, *(with_new_uids(files, copy) for copy in range(1, copies))]
    bodies = [
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for data in one[start : start + STOW_BATCH]
        )
        + f"--{boundary}--\r\n".encode()
        for one in series
        for start in range(0, len(one), STOW_BATCH)
    ]
    clients = [server.http() for server in servers]
    elapsed = [0.0] * len(servers)
    last: list[dict[str, Any]] = [{} for _ in servers]
    for k, body in enumerate(bodies):
        for turn in range(len(servers)):
            i = (k + turn) % len(servers)
            started = time.perf_counter()
            status, _, data = clients[i].request("POST", "/studies", headers, body)
            elapsed[i] += time.perf_counter() - started
            if status not in (200, 202):
                raise RuntimeError(f"{servers[i].name} STOW: {status} {data[:500]!r}")
            last[i] = json.loads(data) if data else {}
    stored = len(files) * copies
    return [(stored / seconds, response) for seconds, response in zip(elapsed, last, strict=True)]


def series_instances(server: Server, study: str, series: str) -> list[str]:
    items = json.loads(
        server.http().get(f"/studies/{study}/series/{series}/instances", "application/dicom+json")
    )
    items.sort(key=lambda item: int(item.get("00200013", {}).get("Value", [0])[0]))
    return [item["00080018"]["Value"][0] for item in items]


def timed_in_turn(calls: list[Any], repeats: int, *, warm_up: int = WARM_UP) -> list[list[float]]:
    """Milliseconds of ``repeats`` calls of each of ``calls`` (one per server), the servers
    taking turns call by call (call k goes first to server k mod n), after ``warm_up`` untimed
    calls each (a server's first requests on a connection fill its caches: the same for every
    server, as the frame clients do before their clock starts)."""
    for fn in calls:
        for _ in range(warm_up):
            fn()
    times: list[list[float]] = [[] for _ in calls]
    for k in range(repeats):
        for turn in range(len(calls)):
            i = (k + turn) % len(calls)
            started = time.perf_counter()
            calls[i]()
            times[i].append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: list[float], pct: float) -> float:
    return float(np.percentile(np.asarray(values), pct))


def _frame_worker(args: tuple[Server, list[str], Any, str]) -> tuple[int, int, float, float]:
    server, paths, barrier, kind = args
    client = server.frame_client(kind)
    try:
        size = client.get_size(paths[0], OHIF_FRAME_ACCEPT)  # connect, warm up before the clock
    except BaseException:
        barrier.abort()  # the other clients must not wait for this one forever
        raise
    barrier.wait(timeout=120)
    started = time.perf_counter()
    total = 0
    for path in paths:
        length = client.get_size(path, OHIF_FRAME_ACCEPT)
        if abs(length - size) > 64:  # frames of a series differ only in their boundary
            raise RuntimeError(f"{server.name} {path}: {length} bytes, the first had {size}")
        total += length
    return len(paths), total, started, time.perf_counter()


def frame_pass(server: Server, paths: list[str], clients: int, kind: str) -> tuple[int, float]:
    """Frames fetched and seconds taken by ``clients`` processes each fetching every path in
    ``paths`` in turn, through the ``kind`` client (``socket``: :class:`LeanHttp`;
    ``http.client``)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(clients)
    with ctx.Pool(clients) as pool:
        results = pool.map(_frame_worker, [(server, paths, barrier, kind)] * clients)
    frames = sum(r[0] for r in results)
    return frames, max(r[3] for r in results) - min(r[2] for r in results)


def frame_throughput(
    servers: list[Server], paths: list[list[str]], clients: int, kind: str, rounds: int
) -> list[float]:
    """Each server's frames/s over ``rounds`` passes of ``clients`` clients through its
    ``paths``, the servers taking turns pass by pass (as :func:`stow_alternating`), so that a
    fast or slow spell of the shared machine falls on every server rather than on one."""
    frames = [0] * len(servers)
    seconds = [0.0] * len(servers)
    for k in range(rounds):
        for turn in range(len(servers)):
            i = (k + turn) % len(servers)
            got, took = frame_pass(servers[i], paths[i], clients, kind)
            frames[i] += got
            seconds[i] += took
    return [f / s for f, s in zip(frames, seconds, strict=True)]


def peak_rss_mb(pids: list[int]) -> float:
    return sum(orthanc_harness.peak_rss_kb(pid) for pid in pids) / 1024


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None once the
    process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants_of(pid: int) -> list[int]:
    """Every process below ``pid``: gunicorn's workers and the ingest helpers they start."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(entry.name)) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def measure(
    servers: list[Server],
    files: list[bytes],
    stowed: list[tuple[float, dict[str, Any]]],
    args: argparse.Namespace,
) -> list[dict[str, float]]:
    """Every figure but STOW's (``stowed``: :func:`stow_alternating`'s) for each server on the
    series it stored, the servers taking turns within each figure."""
    clients, metadata, frames, middles, series_searches = [], [], [], [], []
    for server, (_, response) in zip(servers, stowed, strict=True):
        referenced = response["00081199"]["Value"][0]["00081190"]["Value"][0]
        study = referenced.split("/studies/")[1].split("/")[0]
        series = referenced.split("/series/")[1].split("/")[0]
        sops = series_instances(server, study, series)
        assert len(sops) == len(files), (server.name, len(sops))
        clients.append(server.http())
        metadata.append(f"/studies/{study}/series/{series}/metadata")
        series_searches.append(OHIF_SERIES_QUERY.format(study=study))
        frames.append(
            [f"/studies/{study}/series/{series}/instances/{sop}/frames/1" for sop in sops]
        )
        middles.append(
            f"/studies/{study}/series/{series}/instances/{sops[len(sops) // 2]}/rendered"
        )

    def each(paths: list[str], accept: str) -> list[Any]:
        return [partial(c.get, p, accept) for c, p in zip(clients, paths, strict=True)]

    json_type = "application/dicom+json"
    qido = timed_in_turn(each([OHIF_STUDY_QUERY] * len(servers), json_type), args.qido_repeats)
    qido_series = timed_in_turn(each(series_searches, json_type), args.qido_repeats)
    meta = timed_in_turn(each(metadata, json_type), args.metadata_repeats)
    # Each pass goes through the series once per client, a viewer scrolling the stack back and
    # forth; the servers take turns pass by pass. The one client makes as many trips as the
    # clients together: a pass of ours through POPI alone lasts about 40 ms, which a single
    # stall of the shared machine would otherwise decide.
    one = frame_throughput(servers, frames, 1, args.frame_client, args.frame_rounds * args.clients)
    many = frame_throughput(servers, frames, args.clients, args.frame_client, args.frame_rounds)
    rendered = timed_in_turn(each(middles, "image/png"), args.render_repeats)
    return [
        {
            "stow_instances_per_s": stowed[n][0],
            "qido_p50_ms": percentile(qido[n], 50),
            "qido_p95_ms": percentile(qido[n], 95),
            "qido_series_p50_ms": percentile(qido_series[n], 50),
            "qido_series_p95_ms": percentile(qido_series[n], 95),
            "series_metadata_ms": statistics.median(meta[n]),
            "frames_per_s_1_client": one[n],
            f"frames_per_s_{args.clients}_clients": many[n],
            "rendered_png_ms": statistics.median(rendered[n]),
        }
        for n in range(len(servers))
    ]


# ---- servers -----------------------------------------------------------------------------


def gunicorn_command(app: str, port: int, args: argparse.Namespace) -> list[str]:
    """The production server settings (webapp/gunicorn_conf.py, as docker runs them), on
    loopback; ``--worker-class gthread`` measures gunicorn's stock worker instead."""
    command = [str(GUNICORN), "-c", "python:webapp.gunicorn_conf", app]
    command += ["--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    command += ["--workers", str(args.workers), "--threads", str(args.threads)]
    if args.worker_class:
        command += ["--worker-class", args.worker_class]
    return command


def wait_for_http(port: int, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, _, _ = Http(f"http://127.0.0.1:{port}").request("GET", path)
            if status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not start")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        if (fields := proc_stat(pid)) is not None:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wait_until_settled(pids: Any, timeout_s: float = 60.0) -> None:
    """Wait until a started server is idle: its processes (``pids()``, asked again each time,
    so that processes it starts are counted) use under 5% of a core over half a second. A
    server measured while its workers still load (gunicorn's workers their helpers, Orthanc
    its plugins) would be measured on its start-up, not on its requests."""
    deadline = time.monotonic() + timeout_s
    before = cpu_seconds(pids())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        after = cpu_seconds(pids())
        if after - before < 0.025:
            return
        before = after


class Ours:
    """gunicorn + PostgreSQL, configured from the environment as in production."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        import psycopg

        self.db = f"ild_bench_{os.getpid()}"
        self.admin_url = args.postgres.rstrip("/") + "/postgres"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        self.env = {
            **os.environ,
            "DATABASE_URL": f"{args.postgres.rstrip('/')}/{self.db}",
            "DJANGO_SETTINGS_MODULE": "webapp.settings.base",
            "DJANGO_SECRET_KEY": "benchmark-only-secret",
            "ILD_VAR_DIR": str(folder / "var"),
            "ILD_STORAGE_ROOT": str(folder / "storage"),
            "LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [str(PYTHON), "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO,
            env=self.env,
            check=True,
        )
        token = (
            subprocess.run(
                [str(PYTHON), "manage.py", "shell", "-c", SEED_SCRIPT],
                cwd=REPO,
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        port = orthanc_harness.free_port()
        self.log = (folder / "gunicorn.log").open("wb")
        self.process = subprocess.Popen(
            gunicorn_command("webapp.wsgi", port, args),
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.server = Server(
            "ours", f"http://127.0.0.1:{port}/dicomweb", {"Authorization": f"Token {token}"}
        )
        wait_for_http(port, "/healthz")
        wait_until_settled(self.pids)

    def pids(self) -> list[int]:
        return [self.process.pid, *descendants_of(self.process.pid)]

    def stop(self) -> None:
        import psycopg

        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


SEED_SCRIPT = """
from core.models import Membership, Project, User
from rest_framework.authtoken.models import Token
project = Project.objects.create(slug="bench", name="Benchmark")
user = User.objects.create_user(username="bench", password="bench", role="coordinator")
Membership.objects.create(user=user, project=project)
print(Token.objects.create(user=user).key)
"""


# ---- the HTTP ceiling --------------------------------------------------------------------

_CEILING_BODY = bytes(512 * 512 * 2)


def constant_frame_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Every request answered with one 512x512 16-bit frame and no work at all."""
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(_CEILING_BODY)))],
    )
    return [_CEILING_BODY]


def http_ceiling(args: argparse.Namespace) -> dict[str, float]:
    """Frames/s that gunicorn, with the same settings, and this client reach when the
    application costs nothing: the most any Python WSGI frame path can give here."""
    port = orthanc_harness.free_port()
    process = subprocess.Popen(
        [*gunicorn_command("bench_dicomweb:constant_frame_app", port, args)],
        cwd=REPO / "benchmarks",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for_http(port, "/")
        server = Server("ceiling", f"http://127.0.0.1:{port}")
        paths = [[f"/frame/{n}" for n in range(400)]]
        return {
            "frames_per_s_1_client": frame_throughput([server], paths, 1, args.frame_client, 1)[0],
            f"frames_per_s_{args.clients}_clients": frame_throughput(
                [server], paths, args.clients, args.frame_client, 1
            )[0],
        }
    finally:
        process.terminate()
        process.wait(timeout=20)


# ---- report ------------------------------------------------------------------------------

LOWER_IS_BETTER = ("_ms", "memory")


def report(dataset: str, ours: dict[str, float], theirs: dict[str, float] | None) -> None:
    print(f"\n{dataset}")
    print(f"  {'metric':34s} {'ours':>11s} {'Orthanc':>11s} {'ours/Orthanc':>13s}")
    for key, value in ours.items():
        other = theirs.get(key) if theirs else None
        ratio = f"{value / other:13.2f}" if other else f"{'-':>13s}"
        better = "lower is better" if any(t in key for t in LOWER_IS_BETTER) else "higher is better"
        other_text = f"{other:11.1f}" if other is not None else f"{'-':>11s}"
        print(f"  {key:34s} {value:11.1f} {other_text} {ratio}   ({better})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--popi", type=Path, default=REPO.parent / "shared" / "data" / "real" / "popi-00-ct"
    )
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--phantom", choices=["auto", "inference", "simple"], default="auto")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--worker-class", default="", help="gunicorn worker class (default: the production one)"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--frame-rounds",
        type=int,
        default=10,
        help="times each of --clients clients fetches every frame (the one client: that many"
        " times --clients)",
    )
    parser.add_argument(
        "--frame-client",
        choices=("socket", "http.client"),
        default="socket",
        help="frame clients: a lean socket reader (default) or Python's http.client",
    )
    parser.add_argument(
        "--stow-copies",
        type=int,
        default=3,
        help="times each series is stored for the STOW figure (the copies under new UIDs)",
    )
    parser.add_argument("--qido-repeats", type=int, default=100)
    parser.add_argument("--metadata-repeats", type=int, default=10)
    parser.add_argument("--render-repeats", type=int, default=20)
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the constant-answer gunicorn run"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.qido_repeats, args.metadata_repeats, args.render_repeats = 20, 3, 5
    if not args.no_orthanc and not orthanc_harness.available():
        print(
            "Orthanc + DICOMweb plugin not installed: apt-get install -y orthanc orthanc-dicomweb"
        )
        return 2

    datasets: list[tuple[str, list[bytes]]] = []
    if args.popi.exists():
        datasets.append((f"POPI CT ({args.popi.name})", popi_files(args.popi)))
    else:
        print(f"  ({args.popi} not found: POPI skipped)")
    print(f"generating the {args.slices}x{args.size}x{args.size} phantom ...", flush=True)
    files, source = phantom_files(args.slices, args.size, args.phantom)
    datasets.append((f"phantom {args.slices}x{args.size}x{args.size} ({source})", files))

    folder = Path(tempfile.mkdtemp(prefix="ild-bench-dicomweb-"))
    ours = orthanc = None
    results: dict[str, Any] = {"workers": args.workers, "threads": args.threads, "datasets": {}}
    try:
        ours = Ours(folder, args)
        if not args.no_orthanc:
            orthanc = orthanc_harness.Orthanc()
            wait_until_settled(lambda: [orthanc.process.pid])
            orthanc_server = Server("Orthanc", orthanc.dicomweb, {}, [orthanc.process.pid])
        for name, files in datasets:
            print(
                f"\n{name}: {len(files)} instances, {sum(map(len, files)) / 1e6:.0f} MB", flush=True
            )
            servers = [ours.server, orthanc_server] if orthanc else [ours.server]
            print(
                f"  STOW {len(files)} instances x {args.stow_copies},"
                f" {' and '.join(s.name for s in servers)} in turn ..."
            )
            stowed = stow_alternating(servers, files, args.stow_copies)
            figures = measure(servers, files, stowed, args)
            mine, theirs = figures[0], (figures[1] if orthanc else None)
            report(name, mine, theirs)
            results["datasets"][name] = {"ours": mine, "orthanc": theirs}
        ours_mb = peak_rss_mb(ours.pids())
        orthanc_mb = orthanc.peak_rss_kb() / 1024 if orthanc else None
        line = f"\npeak memory (MB, VmHWM): ours {ours_mb:.0f} (gunicorn master, workers, ingest helpers)"
        if orthanc_mb:
            line += f", Orthanc {orthanc_mb:.0f}, ratio {ours_mb / orthanc_mb:.2f}"
        print(line)
        memory = {"ours": ours_mb, "orthanc": orthanc_mb}
        results["peak_memory_mb"] = memory
        if not args.no_ceiling:
            results["http_ceiling"] = ceiling = http_ceiling(args)
            first = next(iter(results["datasets"].values()))["orthanc"]
            print("\ngunicorn + this client, constant 512 KB answer (no application):")
            for key, value in ceiling.items():
                versus = f", {value / first[key]:.2f} x Orthanc's first series" if first else ""
                print(f"  {key:34s} {value:11.1f}{versus}")
        print(json.dumps(results))
    finally:
        if orthanc is not None:
            orthanc.stop()
        if ours is not None:
            ours.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
