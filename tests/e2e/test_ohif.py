"""End-to-end: the unchanged OHIF viewer 3 served by Meridian (`serve --viewer-dir`).

Real peers only: the prebuilt OHIF dist from npm (scripts/fetch-ohif), DCMTK storescu to
store real CT and MR images (and a JPEG 2000 CR) from pydicom-data over DIMSE, and headless Debian Chromium
driven by playwright-core (tests/browser/ohif-check.mjs) that opens the study list and the
viewer and checks that an image is really drawn. See docs/viewer.md for what Meridian must
serve. A missing peer (node, chromium, npm, the OHIF dist, DCMTK) is a failure, not a skip.

Screenshots go to $MERIDIAN_E2E_ARTIFACTS/ohif (if set) or to pytest's tmp dir; their
paths are printed.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import _TOKENS, E2E_PASSWORD, REPO, Server, pydicom_data_store, require_tool

OHIF_DIST = Path(os.environ.get("MERIDIAN_OHIF_DIST", REPO / ".cache" / "ohif" / "dist"))
BROWSER_DIR = REPO / "tests" / "browser"
CHECK_SCRIPT = BROWSER_DIR / "ohif-check.mjs"
CHROMIUM = "/usr/bin/chromium"

# Real images from the pydicom-data wheel, and what OHIF's study list shows for them.
CT_FILE = "693_UNCI.dcm"   # 512x512 CT head, PatientName CQ500-CT-310
CT_NAME = "CQ500-CT-310"
MR_FILE = "MR2_UNCI.dcm"   # 1024x1024 MR shoulder, PatientName CompressedSamples^MR2
MR_NAME = "CompressedSamples^MR2"
J2K_FILE = "RG3_J2KR.dcm"  # 1760x1760 CR leg, MONOCHROME1, JPEG 2000 lossless; decoded by OHIF's wasm codec
J2K_NAME = "CompressedSamples^RG3"


# --------------------------------------------------------------------------- helpers

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_get(url: str, accept: str | None = None, timeout: float = 30, headers: dict | None = None):
    """GET url -> (status, headers, body); HTTP errors are returned, not raised.
    DICOMweb requests carry the server's e2e service token."""
    h = {"Accept": accept} if accept else {}
    if "/dicom-web" in url:
        h.update(next(({"Authorization": f"Bearer {t}"} for b, t in _TOKENS.items() if url.startswith(b)), {}))
    h.update(headers or {})
    req = urllib.request.Request(url, headers=h)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def content_type(headers) -> str:
    return (headers.get("Content-Type") or "").split(";")[0].strip().lower()


def dcmtk_storescu() -> str:
    """DCMTK's storescu: pynetdicom installs a `storescu` of its own that can shadow it on PATH."""
    require_tool("storescu")
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for d in dirs:
        p = Path(d) / "storescu"
        if p.is_file() and os.access(p, os.X_OK):
            try:
                out = subprocess.run([str(p), "--version"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return str(p)
    pytest.fail("REQUIRED PEER MISSING: DCMTK `storescu` (apt-get install -y dcmtk); "
                "only a non-DCMTK storescu is on PATH", pytrace=False)


def ensure_browser_deps() -> str:
    node = require_tool("node")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"REQUIRED PEER MISSING: Chromium at {CHROMIUM} (apt-get install -y chromium)", pytrace=False)
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        npm = require_tool("npm")
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BROWSER_DIR,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"`npm ci` in {BROWSER_DIR} failed:\n{r.stdout}\n{r.stderr}", pytrace=False)
    return node


def ensure_ohif_dist() -> Path:
    if not (OHIF_DIST / "index.html").exists():
        require_tool("npm")
        r = subprocess.run([str(REPO / "scripts" / "fetch-ohif"), str(OHIF_DIST.parent)],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail(f"scripts/fetch-ohif failed:\n{r.stdout}\n{r.stderr}", pytrace=False)
    if not (OHIF_DIST / "index.html").exists():
        pytest.fail(f"REQUIRED PEER MISSING: OHIF dist at {OHIF_DIST} (run scripts/fetch-ohif)", pytrace=False)
    return OHIF_DIST


def study_uid(path: Path) -> str:
    import pydicom
    return str(pydicom.dcmread(str(path), stop_before_pixels=True).StudyInstanceUID)


def wait_for_studies(server: Server, uids: list[str], timeout: float = 30.0) -> None:
    """Wait until QIDO-RS finds every study (the store may index asynchronously)."""
    deadline = time.time() + timeout
    missing = list(uids)
    last = None
    while time.time() < deadline:
        missing = []
        for uid in uids:
            q = urllib.parse.urlencode({"StudyInstanceUID": uid})
            status, _, body = http_get(f"{server.dicomweb_url}/studies?{q}", accept="application/dicom+json")
            last = (status, body[:300])
            if status != 200 or not body.strip() or not json.loads(body):
                missing.append(uid)
        if not missing:
            return
        time.sleep(0.25)
    pytest.fail(f"QIDO-RS never found studies {missing} (last answer {last})\n{server.log_text()[-4000:]}",
                pytrace=False)


def artifacts_dir(tmp_path_factory) -> Path:
    base = os.environ.get("MERIDIAN_E2E_ARTIFACTS")
    d = Path(base) / "ohif" if base else tmp_path_factory.mktemp("ohif-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    return ensure_ohif_dist()


@pytest.fixture(scope="module")
def viewer_server(ohif_dist):
    s = Server(extra_args=["--viewer-dir", str(ohif_dist)])
    yield s
    alive = s.alive()
    log = s.log_text()
    s.cleanup()
    assert alive, f"meridian died during the OHIF tests:\n{log}"


def store(server: Server, files: list[Path], extra: list[str] = ()) -> None:
    storescu = dcmtk_storescu()
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [storescu, *extra, "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port), *map(str, files)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, (f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                               f"{server.log_text()[-4000:]}")


@pytest.fixture(scope="module")
def stored_studies(viewer_server):
    """CT and MR from pydicom-data (explicit VR little endian), stored with DCMTK storescu."""
    data = pydicom_data_store()
    files = [data / CT_FILE, data / MR_FILE]
    store(viewer_server, files)
    uids = {"ct": study_uid(files[0]), "mr": study_uid(files[1])}
    wait_for_studies(viewer_server, list(uids.values()))
    return uids


@pytest.fixture(scope="module")
def stored_j2k(viewer_server):
    """A JPEG 2000 lossless CR, sent and stored compressed (storescu -xv proposes JPEG 2000 lossless)."""
    path = pydicom_data_store() / J2K_FILE
    store(viewer_server, [path], extra=["-xv"])
    uid = study_uid(path)
    wait_for_studies(viewer_server, [uid])
    return uid


# --------------------------------------------------------------------------- serving

def test_app_config_is_generated(viewer_server, ohif_dist):
    status, headers, body = http_get(f"{viewer_server.http_url}/app-config.js")
    assert status == 200, f"/app-config.js answered {status}"
    assert content_type(headers) in ("text/javascript", "application/javascript"), headers.get("Content-Type")
    text = body.decode()
    assert text != (ohif_dist / "app-config.js").read_text(), "served the dist's own app-config.js, not Meridian's"

    # Evaluate it the way the browser does and check the resulting window.config.
    node = require_tool("node")
    origin = "http://meridian.example:8042"
    probe = (
        "const vm = require('vm'); const src = require('fs').readFileSync(0, 'utf8');"
        f"const window = {{ location: {{ origin: '{origin}', protocol: 'http:', host: 'meridian.example:8042' }} }};"
        "vm.runInNewContext(src, { window, console });"
        "const c = window.config; const ds = c.dataSources.find(d => d.sourceName === c.defaultDataSourceName);"
        "process.stdout.write(JSON.stringify({ c: { ...c, dataSources: undefined }, ds }));"
    )
    r = subprocess.run([node, "-e", probe], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"/app-config.js does not evaluate:\n{r.stderr}\n--- app-config.js ---\n{text}"
    got = json.loads(r.stdout)
    c, ds = got["c"], got["ds"]
    assert ds is not None, "defaultDataSourceName names no data source"
    assert ds["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    cfg = ds["configuration"]
    assert cfg["qidoRoot"] == f"{origin}/dicom-web", cfg
    assert cfg["wadoRoot"] == f"{origin}/dicom-web", cfg
    assert cfg["imageRendering"] == "wadors"
    assert cfg["thumbnailRendering"] == "wadors"
    assert cfg.get("bulkDataURI", {}).get("enabled") is True
    assert c.get("investigationalUseDialog", {}).get("option") == "never"
    assert c.get("showStudyList") is True
    assert c.get("routerBasename") in ("/", None)


@pytest.mark.parametrize("path", ["/", "/viewer", "/viewer/dicomweb",
                                  "/viewer?StudyInstanceUIDs=1.2.3", "/segmentation?StudyInstanceUIDs=1.2.3"])
def test_spa_routes_serve_index_html(viewer_server, ohif_dist, path):
    # Signed out, the viewer's pages send the browser to the login page.
    status, headers, _ = http_get(f"{viewer_server.http_url}{path}", accept="text/html")
    assert status == 303 or status == 302 or status == 307, f"{path} answered {status} to an anonymous browser"
    assert headers.get("Location", "").startswith("/login?next=")
    session = viewer_server.login("e2e-tech")
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    status, headers, body = http_get(f"{viewer_server.http_url}{path}", accept="text/html", headers={"Cookie": cookie})
    assert status == 200, f"{path} answered {status}"
    assert content_type(headers) == "text/html", headers.get("Content-Type")
    assert body == (ohif_dist / "index.html").read_bytes(), f"{path} did not serve the dist's index.html"


def test_viewer_static_files_and_mime_types(viewer_server, ohif_dist):
    app_bundle = next(ohif_dist.glob("app.bundle.*.js")).name
    wasm = next(ohif_dist.glob("*.wasm")).name
    expected = {
        f"/{app_bundle}": ("text/javascript", "application/javascript"),
        "/app.bundle.css": ("text/css",),
        f"/{wasm}": ("application/wasm",),
        "/manifest.json": ("application/json", "application/manifest+json"),
        "/assets/favicon.ico": ("image/x-icon", "image/vnd.microsoft.icon"),
    }
    for path, types in expected.items():
        status, headers, body = http_get(f"{viewer_server.http_url}{path}")
        assert status == 200, f"{path} answered {status}"
        assert content_type(headers) in types, f"{path}: Content-Type {headers.get('Content-Type')!r}, want {types}"
        assert body == (ohif_dist / path.lstrip("/")).read_bytes(), f"{path}: body differs from the dist file"
    # A missing asset must be a 404, not index.html (else a stale chunk fails with a JS syntax error).
    status, _, _ = http_get(f"{viewer_server.http_url}/no-such-chunk.bundle.0123456789abcdef.js")
    assert status == 404, f"missing .js answered {status}, want 404"
    # Path traversal out of the viewer dir is refused.
    status, _, body = http_get(f"{viewer_server.http_url}/..%2f..%2f..%2fetc%2fpasswd")
    assert status in (400, 403, 404) or body == (ohif_dist / "index.html").read_bytes(), status
    assert b"root:" not in body


def test_dicomweb_wins_over_spa_fallback(viewer_server):
    status, headers, _ = http_get(f"{viewer_server.dicomweb_url}/studies", accept="application/dicom+json")
    assert status in (200, 204), status
    if status == 200:
        assert content_type(headers) == "application/dicom+json", headers.get("Content-Type")


# --------------------------------------------------------------------------- the browser

def run_check(viewer_server, study: str, expect: str, label: str, out: Path) -> None:
    node = ensure_browser_deps()
    cmd = [node, str(CHECK_SCRIPT), "--base", viewer_server.http_url, "--study", study,
           "--user", "e2e-tech", "--password", E2E_PASSWORD,
           "--expect", expect, "--out", str(out), "--label", label, "--timeout", "60"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=BROWSER_DIR)
    print(r.stdout)
    print(r.stderr)
    reqlog = out / f"{label}-requests.json"
    if r.returncode != 0:
        pytest.fail(
            f"OHIF check for {label} failed (exit {r.returncode}); screenshots in {out}\n"
            f"{r.stdout}\n{r.stderr}\n"
            f"--- DICOMweb requests made by OHIF ({reqlog}) ---\n"
            f"{reqlog.read_text()[:6000] if reqlog.exists() else '(none)'}\n"
            f"--- meridian log ---\n{viewer_server.log_text()[-6000:]}",
            pytrace=False)
    for name in ("studylist", "viewer", "viewport"):
        assert (out / f"{label}-{name}.png").stat().st_size > 10_000, f"{label}-{name}.png is missing or empty"


def test_ohif_shows_ct(viewer_server, stored_studies, tmp_path_factory):
    run_check(viewer_server, stored_studies["ct"], CT_NAME, "ct", artifacts_dir(tmp_path_factory))


def test_ohif_shows_mr(viewer_server, stored_studies, tmp_path_factory):
    run_check(viewer_server, stored_studies["mr"], MR_NAME, "mr", artifacts_dir(tmp_path_factory))


def test_ohif_shows_jpeg2000_cr(viewer_server, stored_j2k, tmp_path_factory):
    """Frames in their stored JPEG 2000 syntax: the multipart part must say so (docs/viewer.md)."""
    run_check(viewer_server, stored_j2k, J2K_NAME, "cr-j2k", artifacts_dir(tmp_path_factory))
