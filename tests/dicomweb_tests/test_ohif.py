"""Interoperability with the OHIF Viewer 3.13 (prebuilt npm @ohif/app dist/) in headless
Debian chromium: it lists our studies and renders a CT served by our DICOMweb endpoints.

OHIF is served at the root of a small same-origin server (as the viewer expects) that proxies
``/dicomweb/`` to the live test server and adds the user's token: in production the viewer
is same-origin with Django and authenticates with the session cookie instead.
"""

from __future__ import annotations

import http.client
import http.server
import json
import mimetypes
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rest_framework.authtoken.models import Token

HERE = Path(__file__).resolve().parent / "ohif"
DIST = HERE / "node_modules" / ".ohif-app" / "dist"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed"),
    pytest.mark.skipif(shutil.which("node") is None, reason="node not installed"),
]

APP_CONFIG = """
try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}
window.config = {
  routerBasename: null, extensions: [], modes: [], customizationService: {},
  showStudyList: true, maxNumberOfWebWorkers: 2, showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false, showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' }, defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'ILD Review', name: 'ild',
      wadoUriRoot: window.location.origin + '/dicomweb',
      qidoRoot: window.location.origin + '/dicomweb',
      wadoRoot: window.location.origin + '/dicomweb',
      qidoSupportsIncludeField: true, supportsReject: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, staticWado: false, singlepart: false,
      omitQuotationForMultipartRequest: true, bulkDataURI: { enabled: true },
    },
  }],
};
"""


def fetch_ohif() -> None:
    if (DIST / "index.html").exists():
        return
    try:
        subprocess.run([str(HERE / "fetch-ohif.sh")], check=True, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"could not fetch @ohif/app and playwright-core from npm: {exc}")


def make_handler(upstream: str, token: str, log: list[str]) -> type:
    target = urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/dicomweb/"):
                return self.proxy()
            path = self.path.split("?")[0]
            if path == "/app-config.js":
                return self.send(200, APP_CONFIG.encode(), "text/javascript")
            file = (DIST / path.lstrip("/")).resolve()
            if not file.is_file() or DIST not in file.parents:
                file = DIST / "index.html"  # single-page app routes
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if file.suffix == ".wasm":
                kind = "application/wasm"
            self.send(200, file.read_bytes(), kind)

        def proxy(self) -> None:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "connection", "accept-encoding")
            }
            headers["Authorization"] = f"Token {token}"
            conn = http.client.HTTPConnection(
                target.hostname or "127.0.0.1", target.port, timeout=120
            )
            conn.request("GET", self.path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            log.append(f"{response.status} {self.path}")
            self.send(response.status, body, response.getheader("Content-Type") or "")
            conn.close()

        def send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def test_ohif_lists_and_renders_our_ct(live_server, reader_a, project, real_data, tmp_path):
    fetch_ohif()
    from studies.models import Series
    from studies.services.ingest import ingest_paths

    popi = real_data("popi-00-ct")
    report = ingest_paths([popi], project=project, deidentify=True)
    assert report.stored > 100, report.to_dict()["files"][:3]
    series = Series.objects.get()
    token = Token.objects.create(user=reader_a).key
    requests_seen: list[str] = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), make_handler(live_server.url, token, requests_seen)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        run = subprocess.run(
            [
                "node",
                str(HERE / "drive.mjs"),
                origin,
                series.study.study_instance_uid,
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=HERE,
        )
    finally:
        server.shutdown()
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(lines[-1])
    assert result["listed"], result
    assert result["rendered"], (result, requests_seen[-20:])
    assert any("/frames/1" in r and r.startswith("200") for r in requests_seen)
    assert not [r for r in requests_seen if not r.startswith("200")], requests_seen
    assert not result["offOrigin"], result["offOrigin"]
