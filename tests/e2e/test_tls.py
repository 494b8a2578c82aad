"""Transport security with real peers: HTTPS (requests, Python ssl), DICOM TLS
(DCMTK echoscu/storescu with TLS, pynetdicom) and mutual TLS for gateways.

A CA, a server certificate (SAN localhost / 127.0.0.1), a client certificate
signed by that CA and one signed by a stranger CA are made at test time with
the `cryptography` package.
"""
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import E2E_PASSWORD, E2E_SITE, MERIDIAN_BIN, Server, free_port
import dicomfiles as df

TIMEOUT = 30


# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from a CA the server does not trust
    stranger_key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key):
    from cryptography.hazmat.primitives import serialization
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(path: Path, cert):
    from cryptography.hazmat.primitives import serialization
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, name: str, server: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                      crl_sign=False, content_commitment=False, data_encipherment=False,
                                      key_agreement=False, encipher_only=False, decipher_only=False),
                        critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                        critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("Meridian e2e CA")
    s_key, s_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    c_key, c_cert = _leaf(ca_key, ca_cert, "GATEWAY-01", server=False)
    x_ca_key, x_ca_cert = _ca("Stranger CA")
    x_key, x_cert = _leaf(x_ca_key, x_ca_cert, "STRANGER", server=False)
    p = Pki(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
            client_cert=d / "client.pem", client_key=d / "client.key",
            stranger_cert=d / "stranger.pem", stranger_key=d / "stranger.key")
    _write_cert(p.ca, ca_cert)
    _write_cert(p.server_cert, s_cert)
    _write_key(p.server_key, s_key)
    _write_cert(p.client_cert, c_cert)
    _write_key(p.client_key, c_key)
    _write_cert(p.stranger_cert, x_cert)
    _write_key(p.stranger_key, x_key)
    return p


# ---------------------------------------------------------------------------
# A server with TLS on
# ---------------------------------------------------------------------------

class TlsServer(Server):
    """`meridian serve` with HTTPS on --http and DICOM TLS on a second port."""

    def __init__(self, pki: Pki, client_ca: bool = False, env=None):
        self.pki = pki
        self.dicom_tls_port = free_port()
        args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                "--dicom-tls", f"127.0.0.1:{self.dicom_tls_port}"]
        if client_ca:
            args += ["--tls-client-ca", str(pki.ca)]
        super().__init__(extra_args=args, env=env)

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout=30.0):
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meridian exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.http_port}/healthz", timeout=1,
                                            context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"meridian did not become healthy over HTTPS:\n{self.log_text()}")


@pytest.fixture(scope="module")
def tls_server(pki):
    s = TlsServer(pki)
    yield s
    assert s.alive(), f"meridian died during the tests:\n{s.log_text()}"
    s.cleanup()


@pytest.fixture(scope="module")
def mtls_server(pki):
    s = TlsServer(pki, client_ca=True)
    yield s
    assert s.alive(), f"meridian died during the tests:\n{s.log_text()}"
    s.cleanup()


def tls_handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A completed TLS handshake to 127.0.0.1:port (the caller closes it)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        # TLS 1.3 reports a refused client certificate after the handshake:
        # make the server speak once so that the verdict arrives.
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        if not s.recv(1):
            raise ConnectionError("the server closed the connection")
        return s
    except BaseException:
        raw.close()
        raise


def client_ctx(pki: Pki, *, cert: tuple[Path, Path] | None = None, max_version=None, ciphers=None):
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version is not None:
        # Let OpenSSL offer what it would otherwise refuse locally, so that the
        # server is the one saying no.
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.set_ciphers((ciphers or "DEFAULT") + ":@SECLEVEL=0")
        ctx.maximum_version = max_version
    elif ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


# ---------------------------------------------------------------------------
# HTTPS
# ---------------------------------------------------------------------------

def test_https_health_and_qido_with_token(tls_server, pki):
    r = requests.get(f"{tls_server.https_url}/healthz", verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 200
    r = requests.get(f"{tls_server.https_url}/dicom-web/studies", headers=tls_server.auth,
                     verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code in (200, 204), r.text
    # Without the token: authenticated over TLS or not, still refused.
    r = requests.get(f"{tls_server.https_url}/dicom-web/studies", verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 401


def test_startup_line_names_https_and_dicom_tls(tls_server):
    log = tls_server.log_text()
    assert f"DICOMweb https://127.0.0.1:{tls_server.http_port}/dicom-web" in log, log
    assert f"DICOM TLS MERIDIAN@127.0.0.1:{tls_server.dicom_tls_port}" in log, log


def test_plain_http_to_the_tls_port_fails(tls_server, pki):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_server.http_port}/healthz", timeout=TIMEOUT)
    # ... and the server shrugs it off.
    assert requests.get(f"{tls_server.https_url}/healthz", verify=str(pki.ca), timeout=TIMEOUT).status_code == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_versions_and_cipher_suites_follow_bcp195(tls_server, pki):
    port = tls_server.http_port
    # The client is willing (SECLEVEL=0): the refusal is the server's alert.
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError, match="alert"):
            tls_handshake(port, client_ctx(pki, max_version=old)).close()
    # TLS 1.2 with the same permissive client: ECDHE key exchange, AEAD cipher.
    with tls_handshake(port, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2)) as s:
        name, version, _ = s.cipher()
        assert version == "TLSv1.2" and name.startswith("ECDHE-"), s.cipher()
        assert "GCM" in name or "CHACHA20" in name, s.cipher()
    # A TLS 1.2 client offering only CBC (non-AEAD) or static-RSA suites is refused.
    for weak in ("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA", "AES128-GCM-SHA256:AES256-SHA256"):
        with pytest.raises(ssl.SSLError, match="alert"):
            tls_handshake(port, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers=weak)).close()
    with tls_handshake(port, client_ctx(pki)) as s:
        assert s.version() == "TLSv1.3", s.version()
        assert s.selected_alpn_protocol() is None  # the client offered none
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with tls_handshake(port, ctx) as s:
        assert s.selected_alpn_protocol() == "http/1.1"


def test_session_cookie_is_secure_and_client_ip_is_seen(tls_server, pki):
    s = requests.Session()
    s.meridian_no_token = True
    r = s.post(f"{tls_server.https_url}/auth/login", json={"username": "e2e-admin", "password": E2E_PASSWORD},
               verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    cookie = r.headers.get("Set-Cookie", "")
    assert "Secure" in [p.strip() for p in cookie.split(";")], cookie
    assert "HttpOnly" in cookie, cookie
    # The client address reaches the handlers through TLS (audit source).
    r = requests.get(f"{tls_server.https_url}/dicom-web/studies", params={"PatientID": "TLS-AUDIT-PROBE"},
                     headers=tls_server.auth, verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code in (200, 204)
    recs = _audit_list(tls_server)
    qido = [x["event"] for x in recs
            if x["event"]["action"].startswith("QIDO-RS") and "TLS-AUDIT-PROBE" in x["event"]["detail"]]
    assert qido and qido[-1]["source"].startswith("127.0.0.1:"), qido


def test_https_client_certificate_is_optional_but_verified(mtls_server, pki):
    port = mtls_server.http_port
    # Browsers and token-carrying clients without a certificate still connect.
    assert requests.get(f"{mtls_server.https_url}/healthz", verify=str(pki.ca), timeout=TIMEOUT).status_code == 200
    # A gateway with a certificate from the trusted CA too.
    r = requests.get(f"{mtls_server.https_url}/healthz", verify=str(pki.ca),
                     cert=(str(pki.client_cert), str(pki.client_key)), timeout=TIMEOUT)
    assert r.status_code == 200
    # A certificate from an untrusted CA is refused, not ignored.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_handshake(port, client_ctx(pki, cert=(pki.stranger_cert, pki.stranger_key))).close()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{mtls_server.https_url}/healthz", verify=str(pki.ca),
                     cert=(str(pki.stranger_cert), str(pki.stranger_key)), timeout=TIMEOUT)


def test_bad_tls_files_are_named_at_start(tmp_path, pki):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    for cert, key, needle in [(tmp_path / "missing.pem", pki.server_key, "missing.pem"),
                              (bogus, pki.server_key, "bogus.pem"),
                              (pki.server_cert, bogus, "bogus.pem"),
                              (pki.server_cert, pki.client_key, "do not form a usable certificate and key")]:
        cp = subprocess.run([str(MERIDIAN_BIN), "serve", "--data-dir", str(tmp_path / "data"),
                             "--http", "127.0.0.1:0", "--dicom", "127.0.0.1:0",
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode != 0 and needle in cp.stderr, cp.stderr


# ---------------------------------------------------------------------------
# DICOM TLS
# ---------------------------------------------------------------------------

def dcmtk_tls(name: str) -> str:
    tool = df.dcmtk(name)
    out = subprocess.run([tool, "--help"], capture_output=True, text=True, timeout=10)
    if "--enable-tls" not in out.stdout + out.stderr:
        pytest.fail(f"REQUIRED PEER CAPABILITY MISSING: DCMTK `{name}` was built without TLS "
                    f"(no --enable-tls); install Debian's dcmtk", pytrace=False)
    return tool


def tls_args(pki: Pki, cert: tuple[Path, Path] | None) -> list[str]:
    """DCMTK's TLS options: with a client certificate (+tls KEY CERT) or without (+tla);
    the server certificate is always verified against the test CA (+cf; -rc is the default)."""
    ident = ["+tls", str(cert[1]), str(cert[0]), "-pw"] if cert else ["+tla"]
    return [*ident, "+cf", str(pki.ca), "--require-peer-cert"]


def echoscu_tls(server: TlsServer, *, cert=None, aet="ECHOSCU", port=None, tls=True, check=True, extra=()):
    tool = dcmtk_tls("echoscu")
    args = [tool, "-to", "10", "-aet", aet, "-aec", server.ae_title]
    if tls:
        args += tls_args(server.pki, cert) + list(extra)
    return df.run([*args, "127.0.0.1", port or server.dicom_tls_port], timeout=60, check=check)


def _audit_list(server, *args):
    cp = subprocess.run([str(MERIDIAN_BIN), "audit", "list", *args, "--data-dir", str(server.data_dir)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return [json.loads(line) for line in cp.stdout.splitlines()]


def test_dcmtk_echo_over_tls(tls_server, pki):
    cp = echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key))
    assert cp.returncode == 0
    # DCMTK without a client certificate too: the server asks for none without --tls-client-ca.
    echoscu_tls(tls_server, cert=None)


def test_dcmtk_security_profiles(tls_server, pki):
    """DCMTK's BCP 195 profiles connect; the retired AES profile (TLS_RSA_WITH_AES_128_CBC_SHA,
    no forward secrecy) does not."""
    for profile in ("+py", "+px", "+pz"):
        echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key), extra=[profile])
    cp = echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key), extra=["+pa"], check=False)
    assert cp.returncode != 0, cp.stdout + cp.stderr


def test_dcmtk_store_over_tls_then_retrieve_over_https(tls_server, pki, tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "TLS-STORE-1"
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    tool = dcmtk_tls("storescu")
    df.run([tool, "-v", "-aet", "STORESCU", "-aec", tls_server.ae_title,
            *tls_args(pki, (pki.client_cert, pki.client_key)),
            "127.0.0.1", tls_server.dicom_tls_port, path], timeout=120)
    study = ds.StudyInstanceUID
    base = f"{tls_server.https_url}/dicom-web"
    r = requests.get(f"{base}/studies", params={"PatientID": "TLS-STORE-1"}, headers=tls_server.auth,
                     verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert [x["0020000D"]["Value"][0] for x in r.json()] == [study]
    r = requests.get(f"{base}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                     headers={**tls_server.auth, "Accept": 'multipart/related; type="application/dicom"'},
                     verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 200 and ds.SOPInstanceUID.encode() in r.content
    # The TLS association is audited as a plain one is: one C-STORE record for the study.
    recs = [x["event"] for x in _audit_list(tls_server, "--study", study)]
    stores = [e for e in recs if e["action"].startswith("C-STORE")]
    assert len(stores) == 1 and stores[0]["actor"] == "ae:STORESCU", recs
    assert stores[0]["source"].startswith("127.0.0.1:")


def test_unregistered_calling_ae_over_tls_is_rejected(tls_server, pki):
    cp = echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key), aet="NOT-REGISTERED", check=False)
    assert cp.returncode != 0
    assert "reject" in (cp.stdout + cp.stderr).lower(), cp.stdout + cp.stderr


def test_bound_calling_ae_over_tls_from_another_address_is_rejected(tls_server, pki):
    s = requests.Session()
    s.meridian_no_token = True
    r = s.post(f"{tls_server.https_url}/auth/login", json={"username": "e2e-admin", "password": E2E_PASSWORD},
               verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    r = s.put(f"{tls_server.https_url}/api/admin/sites/{E2E_SITE}/aes/BOUND-TLS", json={"host": "10.9.9.9"},
              headers={"X-CSRF-Token": r.json()["csrf"]}, verify=str(pki.ca), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    # Same decision as over plain TCP: A-ASSOCIATE-RJ during negotiation, audited as a denial.
    cp = echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key), aet="BOUND-TLS", check=False)
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0 and "Association Rejected" in out and "abort" not in out.lower(), out
    deadline = time.time() + 10  # the record is written right after the A-ASSOCIATE-RJ is sent
    while not (denied := [x["event"] for x in _audit_list(tls_server) if x["event"]["actor"] == "ae:BOUND-TLS"]) \
            and time.time() < deadline:
        time.sleep(0.2)
    assert denied and all(e["action"] == "DENIED association" and "another address" in e["detail"]
                          for e in denied), denied


def test_plain_dicom_to_the_tls_port_fails_and_tls_to_the_plain_port_too(tls_server, pki):
    cp = echoscu_tls(tls_server, tls=False, check=False)
    assert cp.returncode != 0, cp.stdout + cp.stderr
    t0 = time.monotonic()
    cp = echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key), port=tls_server.dicom_port, check=False)
    assert cp.returncode != 0, cp.stdout + cp.stderr
    # Refused at once, not after the idle timeout, and said so in the log.
    assert time.monotonic() - t0 < 5
    assert "a TLS handshake on the plain DICOM port" in tls_server.log_text()
    # Both listeners keep serving.
    echoscu_tls(tls_server, cert=(pki.client_cert, pki.client_key))
    df.dcmtk_echo(tls_server)


def test_dicom_tls_requires_a_client_certificate_with_client_ca(mtls_server, pki):
    echoscu_tls(mtls_server, cert=(pki.client_cert, pki.client_key))
    cp = echoscu_tls(mtls_server, cert=None, check=False)
    assert cp.returncode != 0, cp.stdout + cp.stderr
    cp = echoscu_tls(mtls_server, cert=(pki.stranger_cert, pki.stranger_key), check=False)
    assert cp.returncode != 0, cp.stdout + cp.stderr
    log = mtls_server.log_text()
    assert "association ended with an error" in log and "tls=true" in log, log
    # Still serving.
    echoscu_tls(mtls_server, cert=(pki.client_cert, pki.client_key))


def _pynetdicom_echo(server: TlsServer, ctx: ssl.SSLContext):
    from pynetdicom import AE
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", server.dicom_tls_port, ae_title=server.ae_title,
                         tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return None
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


def test_pynetdicom_echo_over_tls(tls_server, mtls_server, pki):
    assert _pynetdicom_echo(tls_server, client_ctx(pki)) == 0x0000
    assert _pynetdicom_echo(mtls_server, client_ctx(pki, cert=(pki.client_cert, pki.client_key))) == 0x0000
    assert _pynetdicom_echo(mtls_server, client_ctx(pki)) is None


def test_https_server_stops_gracefully_on_sigterm(pki):
    srv = TlsServer(pki)
    try:
        s = requests.Session()  # an idle keep-alive connection stays open
        assert s.get(f"{srv.https_url}/healthz", verify=str(pki.ca), timeout=TIMEOUT).status_code == 200
        srv.proc.terminate()
        assert srv.proc.wait(10) == 0, srv.log_text()
        assert "meridian stopped" in srv.log_text()
    finally:
        srv.cleanup()
