"""Shared fixtures for Meridian's end-to-end tests.

Every test here drives the real `meridian` binary with real peers (DCMTK,
dicomweb-client, Chromium). A missing peer is a hard failure, never a skip:
CI must run them all.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MERIDIAN_BIN = Path(os.environ.get("MERIDIAN_BIN", REPO / "target" / "release" / "meridian"))

# DCMTK tools leave Nagle on without this; it costs ~45 ms per message on loopback.
os.environ.setdefault("TCP_NODELAY", "1")

# Calling AE titles the suite uses, registered to the test site of every server
# (unknown AE titles are rejected; tests of that use titles not in this list).
E2E_SITE = "e2e"
E2E_AES = ["ECHOSCU", "STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "DCMSEND", "PYNETDICOM",
           "E2E-SCU", "E2E", "CRASHSCU", "STORESCP", "MERIDIAN", "CT_SCANNER_01", "X", "RURAL_CLINIC_016"]
E2E_PASSWORD = "e2e-password-0123456789"

# The suite's HTTP clients (requests, dicomweb-client) act as the e2e service
# token of the server they talk to, as a configured gateway would. A test that
# wants to be anonymous or someone else passes its own Authorization header
# (or `X-E2E-Anonymous: 1`, removed before sending).
_TOKENS: dict[str, str] = {}


def _install_auth():
    import requests
    orig = requests.Session.request
    if getattr(orig, "_meridian_e2e", False):
        return

    def request(self, method, url, *args, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        anonymous = headers.pop("X-E2E-Anonymous", None)
        has_auth = any(k.lower() == "authorization" for k in headers) or "Authorization" in self.headers
        if not anonymous and not has_auth and not getattr(self, "meridian_no_token", False):
            for base, tok in _TOKENS.items():
                if str(url).startswith(base):
                    headers["Authorization"] = f"Bearer {tok}"
                    break
        return orig(self, method, url, *args, headers=headers, **kwargs)

    request._meridian_e2e = True
    requests.Session.request = request


_install_auth()


def meridian_cli(*args, data_dir, stdin=None, env=None, check=True) -> subprocess.CompletedProcess:
    """Runs a `meridian` admin subcommand against a data directory."""
    full_env = dict(os.environ)
    full_env.pop("MERIDIAN_DATABASE_URL", None)
    full_env.update(env or {})
    cp = subprocess.run([str(MERIDIAN_BIN), *args, "--data-dir", str(data_dir)], input=stdin,
                        capture_output=True, text=True, timeout=60, env=full_env)
    if check and cp.returncode != 0:
        raise RuntimeError(f"meridian {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def require_tool(name: str) -> str:
    # DCMTK's tools live in /usr/bin; pynetdicom installs Python scripts of the
    # same names (storescu, findscu...) that come first on a pyenv PATH.
    if Path(f"/usr/bin/{name}").exists():
        return f"/usr/bin/{name}"
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"REQUIRED PEER MISSING: `{name}` is not on PATH (install it with scripts/install-peers)", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `meridian serve` on free loopback ports and a temporary data dir."""

    def __init__(self, extra_args=None, env=None, data_dir=None, http_port=None):
        if not MERIDIAN_BIN.exists():
            pytest.fail(f"meridian binary not found at {MERIDIAN_BIN}; run `cargo build --release` first", pytrace=False)
        self.tmp = tempfile.mkdtemp(prefix="meridian-e2e-")
        self.data_dir = Path(data_dir) if data_dir else Path(self.tmp) / "data"
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        # A C-MOVE destination that tests may start (storescp) on this port.
        self.move_dest_aet = "STORESCP"
        self.move_dest_port = free_port()
        self.ae_title = "MERIDIAN"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.http_url}/dicom-web"
        self.log_path = Path(self.tmp) / "meridian.log"
        self.provision()
        args = [
            str(MERIDIAN_BIN), "serve",
            "--data-dir", str(self.data_dir),
            "--http", f"127.0.0.1:{self.http_port}",
            "--dicom", f"127.0.0.1:{self.dicom_port}",
            "--ae-title", self.ae_title,
            "--peer", f"{self.move_dest_aet}@127.0.0.1:{self.move_dest_port}",
            "--stable-after", "2",
        ] + list(extra_args or [])
        full_env = dict(os.environ)
        # End-to-end servers use embedded SQLite unless a test asks otherwise.
        full_env.pop("MERIDIAN_DATABASE_URL", None)
        full_env.setdefault("RUST_LOG", "info")
        full_env.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.wait_ready()

    def provision(self):
        """The test site with the suite's AE titles, a service token scoped to it, and users."""
        aes = [a for ae in E2E_AES for a in ("--ae", ae)]
        meridian_cli("site", "add", E2E_SITE, "--name", "E2E site", *aes, data_dir=self.data_dir)
        cp = meridian_cli("token", "create", "--name", "e2e", "--role", "service", "--site", E2E_SITE,
                          data_dir=self.data_dir)
        self.token = cp.stdout.strip().splitlines()[-1]
        self.auth = {"Authorization": f"Bearer {self.token}"}
        _TOKENS[self.http_url] = self.token
        for user, role, site in [("e2e-admin", "admin", None), ("e2e-tech", "site", E2E_SITE)]:
            extra = ["--site", site] if site else []
            cp = meridian_cli("user", "add", user, "--role", role, *extra, data_dir=self.data_dir,
                              stdin=E2E_PASSWORD + "\n", check=False)
            if cp.returncode != 0 and "taken" not in cp.stderr:
                raise RuntimeError(f"creating {user} failed:\n{cp.stderr}")

    def login(self, user: str, password: str = E2E_PASSWORD):
        """A requests.Session signed in as `user` (cookie session, CSRF header set)."""
        import requests
        s = requests.Session()
        # Cookie sessions must not pick up the suite's bearer token.
        s.meridian_no_token = True
        r = s.post(f"{self.http_url}/auth/login", json={"username": user, "password": password}, timeout=30)
        assert r.status_code == 200, r.text
        s.headers["X-CSRF-Token"] = r.json()["csrf"]
        return s

    def wait_ready(self, timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meridian exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"meridian did not become healthy:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.alive(), f"meridian died during the tests:\n{s.log_text()}"
    s.cleanup()


@pytest.fixture
def fresh_server():
    s = Server()
    yield s
    s.cleanup()


def pydicom_test_files() -> Path:
    from pydicom.data import get_testdata_file  # noqa: F401
    import pydicom
    return Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_data_store() -> Path:
    import data_store  # from the pydicom-data wheel
    return Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="session")
def testfiles() -> Path:
    return pydicom_test_files()


@pytest.fixture(scope="session")
def datastore() -> Path:
    return pydicom_data_store()
