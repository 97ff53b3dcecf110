"""Start a throwaway Orthanc (Debian packages orthanc + orthanc-dicomweb) on loopback.

Used by the interoperability test and by benchmarks/bench_dicomweb.py. Nothing is installed
here: ``available()`` says whether the binary and the DICOMweb plugin are present, so callers
can skip cleanly; CI installs both.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> bool:
    return shutil.which(ORTHANC) is not None and DICOMWEB_PLUGIN.exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc process with its own storage in a temporary folder; stop() removes both."""

    def __init__(self, peers: dict[str, dict[str, Any]] | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ild-orthanc-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "ild-review-peer",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port,
            "HttpBindAddress": "127.0.0.1",  # newer Orthanc only; 1.10 ignores it
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "StorageCompression": False,
            "HttpTimeout": 120,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
                "Servers": peers or {},
            },
        }
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(config_path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = requests.Session()
        self._wait()

    def _wait(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log_text()[-2000:]}")
            try:
                if self.http.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def log_text(self) -> str:
        self.log.flush()
        return (self.folder / "orthanc.log").read_text(errors="replace")

    def upload(self, data: bytes) -> dict[str, Any]:
        response = self.http.post(f"{self.url}/instances", data=data, timeout=60)
        response.raise_for_status()
        return dict(response.json())

    def get(self, path: str) -> Any:
        response = self.http.get(f"{self.url}{path}", timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any, timeout: float = 300) -> Any:
        response = self.http.post(f"{self.url}{path}", json=body, timeout=timeout)
        if not response.ok:
            raise RuntimeError(f"Orthanc {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def peak_rss_kb(self) -> int:
        return peak_rss_kb(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def peak_rss_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in KiB; 0 when it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
