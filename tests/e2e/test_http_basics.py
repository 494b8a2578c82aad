"""End-to-end HTTP basics: health, Prometheus metrics, limits, hostile paths, robustness.

Drives the real `meridian serve` with `requests`, raw sockets and DCMTK.
"""
import concurrent.futures
import http.client
import io
import re
import socket
import struct
import subprocess
import time
import uuid

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from conftest import MERIDIAN_BIN, Server, require_tool

pytestmark = pytest.mark.filterwarnings("ignore")

DICOM_JSON = "application/dicom+json"
PROBLEM_JSON = "application/problem+json"
TIMEOUT = 60


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def renew(path) -> pydicom.Dataset:
    ds = pydicom.dcmread(str(path), force=True)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def encode(ds) -> bytes:
    with io.BytesIO() as buf:
        pydicom.dcmwrite(buf, ds)
        return buf.getvalue()


def stow_body(parts, boundary):
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def stow(server, parts, **kw):
    boundary = uuid.uuid4().hex
    return requests.post(
        f"{server.dicomweb_url}/studies",
        data=stow_body(parts, boundary),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": DICOM_JSON},
        timeout=TIMEOUT,
        **kw,
    )


def media_type(resp) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()


def assert_problem(status, ctype, body, statuses):
    assert status in statuses, f"expected {statuses}, got {status}: {body[:300]!r}"
    assert (ctype or "").split(";")[0].strip().lower() == PROBLEM_JSON, f"content type {ctype!r}"
    import json
    doc = json.loads(body)
    assert isinstance(doc, dict)
    if "status" in doc:
        assert int(doc["status"]) == status


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$")


def scrape(server):
    resp = requests.get(f"{server.http_url}/metrics", timeout=TIMEOUT)
    assert resp.status_code == 200
    samples, types = {}, {}
    for line in resp.text.splitlines():
        line = line.strip()
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return resp, samples, types


def total(samples, name, label_filter=None):
    return sum(v for (n, labels), v in samples.items()
               if n == name and (label_filter is None or re.search(label_filter, labels)))


def type_of(types, name):
    return types.get(name) or types.get(name[:-len("_total")] if name.endswith("_total") else name)


def wait_for(predicate, timeout=5.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# --------------------------------------------------------------------------
# health and metrics
# --------------------------------------------------------------------------

def test_healthz(server):
    resp = requests.get(f"{server.http_url}/healthz", timeout=TIMEOUT)
    assert resp.status_code == 200


def test_unknown_route_is_404(server):
    for path in ("/no-such-thing", "/dicom-web/no-such-resource"):
        resp = requests.get(server.http_url + path, timeout=TIMEOUT)
        assert resp.status_code == 404, path


def test_metrics_exposition_format(server):
    resp, samples, types = scrape(server)
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert type_of(types, "meridian_instances_received_total") == "counter"
    assert type_of(types, "meridian_bytes_received_total") == "counter"
    assert types.get("meridian_store_seconds") == "histogram"
    assert types.get("meridian_open_associations") == "gauge"
    for name in ("meridian_instances_received_total", "meridian_bytes_received_total", "meridian_open_associations"):
        assert any(n == name for n, _ in samples), f"no sample for {name}"
    assert total(samples, "meridian_open_associations") == 0


def test_metrics_count_stored_instances(server, testfiles):
    _, before, _ = scrape(server)
    items = [encode(renew(testfiles / "CT_small.dcm")), encode(renew(testfiles / "MR_small.dcm"))]
    resp = stow(server, items)
    assert resp.status_code == 200
    _, after, _ = scrape(server)
    assert total(after, "meridian_instances_received_total") - total(before, "meridian_instances_received_total") == 2
    grown = total(after, "meridian_bytes_received_total") - total(before, "meridian_bytes_received_total")
    pixel_bytes = 128 * 128 * 2 + 64 * 64 * 2
    assert grown >= pixel_bytes, f"bytes_received grew by {grown}, less than the pixel data alone"
    assert total(after, "meridian_store_seconds_count") - total(before, "meridian_store_seconds_count") >= 2
    assert total(after, "meridian_store_seconds_sum") >= total(before, "meridian_store_seconds_sum")
    inf = [v for (n, labels), v in after.items() if n == "meridian_store_seconds_bucket" and '+Inf' in labels]
    assert inf and sum(inf) == total(after, "meridian_store_seconds_count")


def test_metrics_count_store_failures(server, testfiles):
    _, before, _ = scrape(server)
    resp = stow(server, [b"definitely not DICOM" * 20])
    assert resp.status_code == 409
    _, after, types = scrape(server)
    assert type_of(types, "meridian_store_failures_total") == "counter"
    labelled = [labels for (n, labels) in after if n == "meridian_store_failures_total"]
    assert labelled and all('reason="' in labels for labels in labelled), labelled
    assert total(after, "meridian_store_failures_total") - total(before, "meridian_store_failures_total") >= 1
    assert total(after, "meridian_instances_received_total") == total(before, "meridian_instances_received_total")


def _associate_rq(called: str, calling: str) -> bytes:
    def item(kind, payload):
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    app_ctx = item(0x10, b"1.2.840.10008.3.1.1.1")
    pres_ctx = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7433.1.1"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + app_ctx + pres_ctx + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _read_pdu(sock):
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        assert chunk, "association closed by server"
        head += chunk
    kind, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "association closed by server"
        body += chunk
    return kind, body


def test_open_associations_gauge_follows_a_real_association(server):
    gauge = lambda: total(scrape(server)[1], "meridian_open_associations")  # noqa: E731
    assert gauge() == 0
    with socket.create_connection(("127.0.0.1", server.dicom_port), timeout=10) as sock:
        sock.sendall(_associate_rq(server.ae_title, server.move_dest_aet))
        kind, _ = _read_pdu(sock)
        assert kind == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {kind:#x}"
        assert wait_for(lambda: gauge() == 1), "open association not counted"
        sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))  # A-RELEASE-RQ
        kind, _ = _read_pdu(sock)
        assert kind == 0x06, f"expected A-RELEASE-RP, got PDU type {kind:#x}"
    assert wait_for(lambda: gauge() == 0), "released association still counted"
    echoscu = require_tool("echoscu")
    run = subprocess.run([echoscu, "-aet", "E2E", "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert wait_for(lambda: gauge() == 0)


# --------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------

def _body_limit_flag() -> str:
    if not MERIDIAN_BIN.exists():
        pytest.fail(f"meridian binary not found at {MERIDIAN_BIN}", pytrace=False)
    out = subprocess.run([str(MERIDIAN_BIN), "serve", "--help"], capture_output=True, text=True, timeout=30)
    flags = sorted(set(re.findall(r"--[a-z0-9][a-z0-9-]*", out.stdout + out.stderr)))
    hits = [f for f in flags
            if any(w in f for w in ("body", "upload", "request", "payload", "stow"))
            and any(w in f for w in ("max", "limit", "size", "bytes"))]
    if not hits:
        pytest.fail("`meridian serve --help` names no request-body limit option (looked for e.g. --max-body-bytes); "
                    f"flags seen: {flags}", pytrace=False)
    return hits[0]


@pytest.fixture(scope="module")
def limited_server():
    limit = 1024 * 1024
    srv = Server(extra_args=[_body_limit_flag(), str(limit)])
    srv.limit = limit
    yield srv
    assert srv.alive(), srv.log_text()
    srv.cleanup()


def test_body_over_limit_is_413(limited_server, testfiles, datastore):
    big = encode(renew(datastore / "MR2_UNCR.dcm"))  # ~2 MB
    assert len(big) > limited_server.limit
    resp = stow(limited_server, [big])
    assert resp.status_code == 413, f"{resp.status_code}: {resp.text[:300]}"
    assert media_type(resp) == PROBLEM_JSON
    # the same server still stores a small instance
    small = encode(renew(testfiles / "CT_small.dcm"))
    assert stow(limited_server, [small]).status_code == 200


def test_many_small_parts_over_limit_is_413(limited_server, datastore):
    """Each part is under the limit; the request as a whole is not."""
    parts = [encode(renew(datastore / "693_UNCR.dcm")) for _ in range(3)]  # 3 x ~0.5 MB
    assert all(len(p) < limited_server.limit for p in parts) and sum(map(len, parts)) > limited_server.limit
    resp = stow(limited_server, parts)
    assert resp.status_code == 413, f"{resp.status_code}: {resp.text[:300]}"
    assert media_type(resp) == PROBLEM_JSON


def test_chunked_body_over_limit_is_413(limited_server, datastore):
    """No Content-Length to check up front: the limit must hold on the streamed body too."""
    ds = renew(datastore / "MR2_UNCR.dcm")
    client = DICOMwebClient(url=limited_server.dicomweb_url)  # > 1 MB: sent with chunked transfer encoding
    try:
        client.store_instances([ds])
    except requests.HTTPError as exc:
        assert exc.response.status_code == 413
    except requests.ConnectionError as exc:
        pytest.fail(f"server dropped the connection instead of answering 413: {exc}")
    else:
        pytest.fail("an over-limit chunked upload was accepted")
    assert limited_server.alive()
    resp = requests.get(f"{limited_server.dicomweb_url}/studies",
                        params={"StudyInstanceUID": ds.StudyInstanceUID},
                        headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert resp.status_code == 204 or resp.json() == []


# --------------------------------------------------------------------------
# hostile paths
# --------------------------------------------------------------------------

def raw_get(server, path, accept="*/*"):
    """GET exactly `path` (no client-side normalisation of dot segments or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
        conn.putheader("Accept", accept)
        conn.putheader("Authorization", f"Bearer {server.token}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/dicom-web/studies/..%2F..%2Fetc/series",
    "/dicom-web/studies/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/dicom-web/studies/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd/metadata",
    "/dicom-web/studies/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd/series",
    "/dicom-web/studies/%2Fetc%2Fpasswd",
    "/dicom-web/studies/..%5C..%5C..%5Cetc%5Cpasswd",
    "/dicom-web/studies/1.2.3/series/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/..%2F..%2F..%2F..%2Fetc%2Fpasswd/frames/1",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/..%2F..%2Fetc%2Fpasswd",
    "/dicom-web/studies/..%2F..%2F..%2F..%2F..%2F..%2F..%2Fproc%2Fself%2Fenviron/series",
    "/dicom-web/studies/..%2Fdata/metadata",
    "/dicom-web/studies/..",
    "/dicom-web/studies/.",
    "/dicom-web/studies/../../../../../../etc/passwd",
    "/dicom-web/studies/1.2.3/series/../../../../../../etc/passwd",
    "/dicom-web/studies/%00/metadata",
    "/dicom-web/studies/1.2.3%00.4/metadata",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_never_serves_a_file(server, path):
    status, ctype, body = raw_get(server, path)
    assert b"root:" not in body and b"PATH=" not in body and b"DICM" not in body[:200]
    assert_problem(status, ctype, body, {400, 404})


@pytest.mark.parametrize("uid", ["not-a-uid", "1.2.abc", "1..2", "1.2.", "a" * 65, "1." + "2" * 70])
def test_invalid_uid_is_rejected(server, uid):
    status, ctype, body = raw_get(server, f"/dicom-web/studies/{uid}/metadata", DICOM_JSON)
    assert_problem(status, ctype, body, {400, 404})


def test_huge_uid_path(server):
    status, ctype, body = raw_get(server, "/dicom-web/studies/" + "1." * 8000 + "1")
    assert status in (400, 404, 414, 431), status
    assert server.alive()


def test_wrong_method(server):
    resp = requests.put(f"{server.dicomweb_url}/studies", data=b"x", timeout=TIMEOUT)
    assert resp.status_code in (404, 405)
    resp = requests.delete(f"{server.http_url}/healthz", timeout=TIMEOUT)
    assert resp.status_code in (404, 405)


def test_malformed_multipart_is_4xx(server, testfiles):
    data = (testfiles / "CT_small.dcm").read_bytes()
    cases = [
        # no boundary parameter
        ('multipart/related; type="application/dicom"', stow_body([data], "b1")),
        # boundary never appears in the body
        ('multipart/related; type="application/dicom"; boundary=nothere', b"garbage" * 100),
        # truncated: closing delimiter missing, part cut in half
        ('multipart/related; type="application/dicom"; boundary=b2', stow_body([data], "b2")[: len(data) // 2]),
    ]
    for ctype, body in cases:
        resp = requests.post(f"{server.dicomweb_url}/studies", data=body, headers={"Content-Type": ctype},
                             timeout=TIMEOUT)
        assert 400 <= resp.status_code < 500, f"{ctype}: {resp.status_code}"
    assert server.alive()


def test_slow_partial_request_does_not_block_others(server):
    """A client that sends half a request and stalls must not stop the server answering others."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as stalled:
        stalled.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                        b"Content-Type: multipart/related; type=\"application/dicom\"; boundary=z\r\n\r\n--z\r\n")
        t0 = time.time()
        assert requests.get(f"{server.http_url}/healthz", timeout=10).status_code == 200
        assert time.time() - t0 < 5


# --------------------------------------------------------------------------
# concurrency and survival
# --------------------------------------------------------------------------

def test_concurrent_stow_and_qido(server, testfiles):
    datasets = [renew(testfiles / name) for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm",
                                                      "MR_small_jpeg_ls_lossless.dcm") for _ in range(3)]
    payloads = [encode(ds) for ds in datasets]

    def store(data):
        return stow(server, [data]).status_code

    def query(ds):
        r = requests.get(f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID},
                         headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(store, payloads))
        assert stored == [200] * len(payloads)
        queried = list(pool.map(query, datasets))
    assert all(s == 200 for s in queried)
    for ds in datasets:
        r = requests.get(f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}/instances",
                         headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
        assert [i["00080018"]["Value"][0] for i in r.json()] == [ds.SOPInstanceUID]


def test_server_survives_everything(server):
    assert server.alive()
    assert requests.get(f"{server.http_url}/healthz", timeout=TIMEOUT).status_code == 200
    _, samples, _ = scrape(server)
    assert total(samples, "meridian_open_associations") == 0


def test_a_request_that_stalls_gets_408_and_the_server_carries_on():
    """A client that announces a body and then stalls is answered 408 after
    --request-timeout, without waiting for it, and the server keeps serving."""
    s = Server(extra_args=["--request-timeout", "2"])
    try:
        sock = socket.create_connection(("127.0.0.1", s.http_port), timeout=10)
        head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {s.token}\r\n"
                "Content-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n"
                "Content-Length: 100000\r\n\r\n--b\r\n")
        t0 = time.time()
        sock.sendall(head.encode())
        reply = sock.recv(4096).decode(errors="replace")
        waited = time.time() - t0
        sock.close()
        assert reply.startswith("HTTP/1.1 408"), reply[:200]
        assert 1.5 < waited < 8, waited
        assert requests.get(f"{s.http_url}/healthz", timeout=10).status_code == 200
        assert s.alive()
    finally:
        s.cleanup()
