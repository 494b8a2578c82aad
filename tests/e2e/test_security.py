"""Accounts, roles, tenancy and the audit of the security layer, through the
running binary: the route x role x tenant matrix built from the server's own
route list, brute-force lockout, token expiry and revocation, TOTP, CSRF,
unregistered AE titles, another tenant's UIDs answering 404 everywhere, and
the FHIR AuditEvent export validated with fhir.resources (R4B)."""
import io
import re
import subprocess
import time

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from conftest import E2E_PASSWORD, E2E_SITE, Server, meridian_cli
import dicomfiles as df

TIMEOUT = 30
ROLES = ["admin", "radiologist", "site", "referrer", "auditor", "service"]

# What each role holds: written here independently of the server's policy table.
HOLDS = {
    "admin": {"images-read", "images-store", "audit-read", "admin", "orders", "coordinate", "operations"},
    "radiologist": {"images-read", "worklist"},
    "site": {"images-read", "images-store", "orders", "coordinate"},
    "referrer": set(),
    "auditor": {"audit-read"},
    "service": {"images-read", "images-store", "orders"},
}

# Every route the server has, with the permission this test expects. A new
# route fails the matrix test until it is listed here with its policy.
EXPECTED = {
    ("GET", "/healthz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/app-config.js"): "public",
    ("GET", "/login"): "public",
    ("GET", "/login.js"): "public",
    ("GET", "/login.css"): "public",
    ("GET", "/"): "public",
    ("POST", "/auth/login"): "public",
    ("POST", "/auth/logout"): "authenticated",
    ("GET", "/auth/oidc/login"): "public",
    ("GET", "/auth/oidc/callback"): "public",
    ("GET", "/api/me"): "authenticated",
    ("POST", "/api/me/totp/begin"): "authenticated",
    ("POST", "/api/me/totp"): "authenticated",
    ("POST", "/api/me/totp/disable"): "authenticated",
    ("GET", "/api/routes"): "authenticated",
    ("GET", "/dicom-web/studies"): "images-read",
    ("POST", "/dicom-web/studies"): "images-store",
    ("GET", "/dicom-web/series"): "images-read",
    ("GET", "/dicom-web/instances"): "images-read",
    ("GET", "/dicom-web/studies/{study}"): "images-read",
    ("POST", "/dicom-web/studies/{study}"): "images-store",
    ("GET", "/dicom-web/studies/{study}/metadata"): "images-read",
    ("GET", "/dicom-web/studies/{study}/rendered"): "images-read",
    ("GET", "/dicom-web/studies/{study}/thumbnail"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series"): "images-read",
    ("GET", "/dicom-web/studies/{study}/instances"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/metadata"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/rendered"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/thumbnail"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/thumbnail"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail"): "images-read",
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}"): "images-read",
    ("GET", "/api/admin/users"): "admin",
    ("POST", "/api/admin/users"): "admin",
    ("POST", "/api/admin/users/{username}/disable"): "admin",
    ("POST", "/api/admin/users/{username}/enable"): "admin",
    ("POST", "/api/admin/users/{username}/password"): "admin",
    ("GET", "/api/admin/tokens"): "admin",
    ("POST", "/api/admin/tokens"): "admin",
    ("DELETE", "/api/admin/tokens/{token_id}"): "admin",
    ("GET", "/api/admin/sites"): "admin",
    ("POST", "/api/admin/sites"): "admin",
    ("PUT", "/api/admin/sites/{site}/aes/{ae}"): "admin",
    ("DELETE", "/api/admin/aes/{ae}"): "admin",
    ("POST", "/api/admin/grants"): "admin",
    ("DELETE", "/api/admin/grants/{username}/{study}"): "admin",
    ("GET", "/api/audit"): "audit-read",
    ("GET", "/api/admin/sites/{site}/profile"): "admin",
    ("PUT", "/api/admin/sites/{site}/profile"): "admin",
    ("GET", "/api/admin/readers"): "admin",
    ("PUT", "/api/admin/readers/{username}"): "admin",
    ("GET", "/api/admin/expiring"): "admin",
    ("POST", "/api/orders"): "orders",
    ("GET", "/api/orders/{order}"): "orders",
    ("POST", "/api/orders/{order}/attachments"): "orders",
    ("GET", "/api/orders/{order}/attachments"): "orders",
    ("GET", "/api/orders/{order}/attachments/{attachment}"): "orders",
    ("POST", "/fhir/ServiceRequest"): "orders",
    ("GET", "/fhir/ServiceRequest/{order}"): "orders",
    ("GET", "/api/reconcile"): "coordinate",
    ("POST", "/api/studies/{study}/match"): "coordinate",
    ("POST", "/api/studies/{study}/unmatch"): "coordinate",
    ("GET", "/api/studies/{study}/orders"): "coordinate",
    ("GET", "/api/worklist"): "worklist",
    ("GET", "/api/worklist/events"): "worklist",
    ("POST", "/api/worklist/heartbeat"): "worklist",
    ("POST", "/api/studies/{study}/claim"): "worklist",
    ("POST", "/api/studies/{study}/release"): "worklist",
    ("GET", "/api/studies/{study}/case"): "images-read",
    ("GET", "/api/operations"): "operations",
}


def anon():
    s = requests.Session()
    s.meridian_no_token = True
    return s


def bearer(token):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def make_ct(tmp, patient_id):
    ds = pydicom.dcmread(df.TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def stow(session, url, blob):
    boundary = "meridian-sec-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + blob
            + f"\r\n--{boundary}--\r\n".encode())
    return session.post(f"{url}/dicom-web/studies", data=body, timeout=TIMEOUT,
                        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                                 "Accept": "application/dicom+json"})


class World:
    """One server with two tenants (e2e and other), a study in each, and a principal per role."""

    def __init__(self, tmp):
        self.srv = Server()
        url = self.url = self.srv.http_url
        self.admin = self.srv.login("e2e-admin")
        r = self.admin.post(f"{url}/api/admin/sites", json={"site_id": "other", "name": "Other hospital"}, timeout=TIMEOUT)
        assert r.status_code == 201, r.text
        r = self.admin.put(f"{url}/api/admin/sites/other/aes/OTHER-SCU", json={}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        tok = self.admin.post(f"{url}/api/admin/tokens", json={"name": "other gw", "role": "service", "site": "other"},
                              timeout=TIMEOUT)
        assert tok.status_code == 201, tok.text
        self.other_service = bearer(tok.json()["token"])
        self.own_service = bearer(self.srv.token)
        self.own, own_blob = make_ct(tmp, "SEC-OWN")
        self.other, other_blob = make_ct(tmp, "SEC-OTHER")
        assert stow(self.own_service, url, own_blob).status_code == 200
        assert stow(self.other_service, url, other_blob).status_code == 200
        self.sessions = {"admin": self.admin, "service": self.own_service}
        for role in ["radiologist", "site", "referrer", "auditor"]:
            body = {"username": f"sec-{role}", "role": role, "password": E2E_PASSWORD}
            if role in ("site", "referrer"):
                body["site"] = E2E_SITE
            r = self.admin.post(f"{url}/api/admin/users", json=body, timeout=TIMEOUT)
            assert r.status_code == 201, r.text
            self.sessions[role] = self.srv.login(f"sec-{role}")
        # The radiologist is granted the own-site study only.
        r = self.admin.post(f"{url}/api/admin/grants", json={"username": "sec-radiologist",
                                                               "study_uid": self.own.StudyInstanceUID}, timeout=TIMEOUT)
        assert r.status_code == 201, r.text

    def fill(self, path, ds):
        vals = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "instance": ds.SOPInstanceUID,
                "frames": "1", "*path": "7FE00010", "username": "nobody-here", "token_id": "000000000000",
                "site": "no-such-site", "ae": "NO-SUCH-AE", "order": "no-such-order",
                "attachment": "no-such-attachment"}
        return re.sub(r"\{([^}]+)\}", lambda m: vals[m.group(1)], path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("sec"))
    yield w
    alive = w.srv.alive()
    log = w.srv.log_text()
    w.srv.cleanup()
    assert alive, f"meridian died:\n{log}"


def call(session, method, url):
    # Bodies are deliberately empty: the policy decides before any handler reads them.
    return session.request(method, url, timeout=TIMEOUT, allow_redirects=False,
                           headers={"Accept": "application/dicom+json, application/json;q=0.9, */*;q=0.1"})


def test_route_list_is_exactly_the_expected_policy(world):
    routes = world.admin.get(f"{world.url}/api/routes", timeout=TIMEOUT).json()
    got = {(r["method"], r["path"]): r["permission"] for r in routes}
    missing = set(got) - set(EXPECTED)
    assert not missing, f"routes without an expected policy in this test (add them): {sorted(missing)}"
    assert got == EXPECTED


def test_matrix_every_route_every_role_own_and_other_tenant(world):
    routes = world.admin.get(f"{world.url}/api/routes", timeout=TIMEOUT).json()
    failures = []
    for r in routes:
        method, path, perm = r["method"], r["path"], r["permission"]
        if path in ("/auth/logout", "/auth/login", "/auth/oidc/callback"):
            continue  # would end the test's sessions / needs a body; covered below
        for tenant, ds in (("own", world.own), ("other", world.other)):
            url = world.url + world.fill(path, ds)
            resp = call(anon(), method, url)
            if perm == "public":
                if resp.status_code in (401, 403):
                    failures.append((method, path, "anonymous", tenant, resp.status_code))
                continue
            if resp.status_code != 401:
                failures.append((method, path, "anonymous", tenant, resp.status_code, "expected 401"))
            for role in ROLES:
                resp = call(world.sessions[role], method, url)
                code = resp.status_code
                held = perm == "authenticated" or perm in HOLDS[role]
                if not held:
                    if code != 403:
                        failures.append((method, path, role, tenant, code, "expected 403"))
                    continue
                if code in (401, 403):
                    failures.append((method, path, role, tenant, code, "expected allowed"))
                    continue
                if "{study}" in path and method == "GET":
                    sees = role == "admin" or (tenant == "own")
                    if path.endswith("/case") or path.endswith("/orders"):
                        # This world's sites have no workflow profile, so no study has a
                        # case: seen or not, the answer is 404 (test_workflow.py covers cases).
                        sees = False
                    if sees and code == 404 and "bulkdata" not in path and "frames" not in path:
                        failures.append((method, path, role, tenant, code, "own data should be found"))
                    qido = path.endswith("/series") or path.endswith("/instances")
                    if not sees and qido and not (code == 204 or (code == 200 and resp.json() == [])):
                        failures.append((method, path, role, tenant, code, "another tenant's study must look empty"))
                    if not sees and not qido and code != 404:
                        failures.append((method, path, role, tenant, code, "another tenant's UID must answer 404"))
    assert not failures, "\n".join(map(str, failures))


def test_search_scopes(world):
    def studies(session):
        r = session.get(f"{world.url}/dicom-web/studies", timeout=TIMEOUT, headers={"Accept": "application/dicom+json"})
        assert r.status_code in (200, 204), r.text
        return {x["0020000D"]["Value"][0] for x in (r.json() if r.status_code == 200 else [])}
    own, other = world.own.StudyInstanceUID, world.other.StudyInstanceUID
    assert own in studies(world.sessions["site"]) and other not in studies(world.sessions["site"])
    assert studies(world.sessions["radiologist"]) == {own}
    assert {own, other} <= studies(world.admin)
    assert other in studies(world.other_service) and own not in studies(world.other_service)


def test_other_tenants_uid_is_404_on_qido_wado_rendered_and_cmove(world, tmp_path):
    other = world.other
    site = world.sessions["site"]
    base = f"{world.url}/dicom-web/studies/{other.StudyInstanceUID}"
    nonexistent = f"{world.url}/dicom-web/studies/{generate_uid()}"
    for suffix in ["", "/metadata", "/rendered", f"/series/{other.SeriesInstanceUID}/instances/{other.SOPInstanceUID}"]:
        a = site.get(base + suffix, timeout=TIMEOUT)
        b = site.get(nonexistent + suffix, timeout=TIMEOUT)
        assert a.status_code == b.status_code == 404, (suffix, a.status_code, b.status_code)
        assert a.json()["detail"] == b.json()["detail"]
    r = site.get(f"{world.url}/dicom-web/studies", params={"StudyInstanceUID": other.StudyInstanceUID}, timeout=TIMEOUT)
    assert r.status_code in (200, 204) and (r.status_code == 204 or r.json() == [])
    # C-FIND and C-MOVE from an AE of site e2e see nothing of site other.
    assert df.c_find(world.srv, "STUDY", {"StudyInstanceUID": other.StudyInstanceUID}) == []
    out = tmp_path / "moved"
    with df.storescp(world.srv.move_dest_port, out, aet=world.srv.move_dest_aet):
        cp = df.movescu(world.srv, world.srv.move_dest_aet, {"QueryRetrieveLevel": "STUDY",
                                                            "StudyInstanceUID": other.StudyInstanceUID}, check=False)
    assert not list(out.glob("**/*")) or not any(p.is_file() for p in out.glob("**/*")), cp.stdout + cp.stderr
    # A site user cannot write into another site's study either.
    ds, blob = make_ct(tmp_path, "SEC-INJECT")
    ds.StudyInstanceUID = other.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = stow(world.own_service, world.url, buf.getvalue())
    assert r.status_code == 409, r.text
    assert "00081198" in r.json()


def denied_associations(world, ae_title, at_least=0):
    """The audited association denials of a calling AE title; waits (briefly) for `at_least`
    of them: the record is written right after the A-ASSOCIATE-RJ has been sent."""
    deadline = time.time() + 10
    while True:
        audit = world.sessions["auditor"].get(f"{world.url}/api/audit", params={"user": f"ae:{ae_title}"},
                                              timeout=TIMEOUT).json()
        denied = [x["event"] for x in audit if x["event"]["action"] == "DENIED association"]
        if len(denied) >= at_least or time.time() > deadline:
            return denied
        time.sleep(0.1)


def test_unregistered_calling_ae_is_rejected(world):
    echoscu = df.dcmtk("echoscu")
    cp = subprocess.run([echoscu, "-aet", "NOT-REGISTERED", "-aec", world.srv.ae_title, "127.0.0.1",
                         str(world.srv.dicom_port)], capture_output=True, text=True, timeout=TIMEOUT)
    assert cp.returncode != 0
    assert "Rejected" in cp.stdout + cp.stderr or "rejected" in cp.stdout + cp.stderr, cp.stdout + cp.stderr
    denied = denied_associations(world, "NOT-REGISTERED", at_least=1)
    assert denied and "not registered" in denied[-1]["detail"], denied
    cp = subprocess.run([echoscu, "-aet", "ECHOSCU", "-aec", world.srv.ae_title, "127.0.0.1",
                         str(world.srv.dicom_port)], capture_output=True, text=True, timeout=TIMEOUT)
    assert cp.returncode == 0, cp.stderr


def test_ae_bound_to_an_address_is_rejected_from_another(world):
    for ae, host in (("BOUND-SCU", "10.9.9.9"), ("BOUND-HERE", "127.0.0.1")):
        r = world.admin.put(f"{world.url}/api/admin/sites/{E2E_SITE}/aes/{ae}", json={"host": host},
                            timeout=TIMEOUT)
        assert r.status_code == 200, r.text
    echoscu = df.dcmtk("echoscu")

    def echo(aet):
        cp = subprocess.run([echoscu, "-aet", aet, "-aec", world.srv.ae_title, "127.0.0.1",
                             str(world.srv.dicom_port)], capture_output=True, text=True, timeout=TIMEOUT)
        return cp, cp.stdout + cp.stderr

    # From its own address, a bound title is served.
    cp, out = echo("BOUND-HERE")
    assert cp.returncode == 0, out
    # From another address: A-ASSOCIATE-RJ during negotiation (never an A-ASSOCIATE-AC
    # followed by an abort), permanent, "calling AE title not recognized".
    cp, out = echo("BOUND-SCU")
    assert cp.returncode != 0, out
    assert "Association Rejected" in out, out
    assert "calling ae title not recognized" in out.lower(), out
    assert "abort" not in out.lower(), out
    # pynetdicom: the PDUs it received (its `is_rejected` flag races with its own socket close
    # after a rejection and sometimes reads `is_aborted` instead, against DCMTK's SCP too).
    received = []
    ae = df.AE(ae_title="BOUND-SCU")
    ae.add_requested_context(df.Verification)
    assoc = ae.associate("127.0.0.1", world.srv.dicom_port, ae_title=world.srv.ae_title,
                         evt_handlers=[(df.evt.EVT_PDU_RECV, lambda event: received.append(event.pdu))])
    try:
        assert not assoc.is_established
        assert [type(p).__name__ for p in received] == ["A_ASSOCIATE_RJ"], received
        rj = received[0]
        assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 3), rj  # permanent, service user,
        # calling AE title not recognized
    finally:
        if assoc.is_established:
            assoc.abort()
    # Each refusal is audited as a denial, with its reason.
    denied = denied_associations(world, "BOUND-SCU", at_least=2)
    assert len(denied) >= 2, denied
    assert all(d["outcome"] == "denied" and "another address" in d["detail"] for d in denied), denied
    assert not denied_associations(world, "BOUND-HERE")


def test_brute_force_locks_the_account(world):
    url = world.url
    r = world.admin.post(f"{url}/api/admin/users", json={"username": "sec-victim", "role": "auditor",
                                                          "password": E2E_PASSWORD}, timeout=TIMEOUT)
    assert r.status_code == 201
    for _ in range(5):
        r = anon().post(f"{url}/auth/login", json={"username": "sec-victim", "password": "wrong-password-xx"},
                        timeout=TIMEOUT)
        assert r.status_code == 401
    # Now even the right password is refused until the lock expires.
    r = anon().post(f"{url}/auth/login", json={"username": "sec-victim", "password": E2E_PASSWORD}, timeout=TIMEOUT)
    assert r.status_code == 429, r.text
    assert "locked" in r.json()["detail"]
    audit = world.sessions["auditor"].get(f"{url}/api/audit", params={"user": "sec-victim"}, timeout=TIMEOUT).json()
    assert sum(1 for x in audit if x["event"]["action"] == "LOGIN-FAILED") >= 6


def test_token_expiry_and_revocation(world):
    url = world.url
    r = world.admin.post(f"{url}/api/admin/tokens", json={"name": "short", "role": "service", "site": E2E_SITE,
                                                           "seconds": 1}, timeout=TIMEOUT)
    assert r.status_code == 201
    short = bearer(r.json()["token"])
    assert short.get(f"{url}/api/me", timeout=TIMEOUT).status_code == 200
    time.sleep(1.5)
    r = short.get(f"{url}/api/me", timeout=TIMEOUT)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    r = world.admin.post(f"{url}/api/admin/tokens", json={"name": "revoked", "role": "service", "site": E2E_SITE},
                         timeout=TIMEOUT)
    tok = r.json()
    s = bearer(tok["token"])
    assert s.get(f"{url}/dicom-web/studies", timeout=TIMEOUT).status_code in (200, 204)
    assert world.admin.delete(f"{url}/api/admin/tokens/{tok['token_id']}", timeout=TIMEOUT).status_code == 200
    r = s.get(f"{url}/dicom-web/studies", timeout=TIMEOUT)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # Only the hash is stored: the listing never shows a secret.
    listing = world.admin.get(f"{url}/api/admin/tokens", timeout=TIMEOUT).text
    assert tok["token"] not in listing and tok["token"].split("_")[-1] not in listing


def test_totp_second_factor(world):
    import pyotp
    url = world.url
    r = world.admin.post(f"{url}/api/admin/users", json={"username": "sec-totp", "role": "auditor",
                                                          "password": E2E_PASSWORD}, timeout=TIMEOUT)
    assert r.status_code == 201
    s = world.srv.login("sec-totp")
    secret = s.post(f"{url}/api/me/totp/begin", timeout=TIMEOUT).json()["secret"]
    totp = pyotp.TOTP(secret)
    assert s.post(f"{url}/api/me/totp", json={"secret": secret, "code": "000000" if totp.now() != "000000" else "111111"},
                  timeout=TIMEOUT).status_code == 400
    assert s.post(f"{url}/api/me/totp", json={"secret": secret, "code": totp.now()}, timeout=TIMEOUT).status_code == 200
    r = anon().post(f"{url}/auth/login", json={"username": "sec-totp", "password": E2E_PASSWORD}, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json().get("totp_required")
    code = totp.now()
    r = anon().post(f"{url}/auth/login", json={"username": "sec-totp", "password": E2E_PASSWORD, "totp": code},
                    timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    r = anon().post(f"{url}/auth/login", json={"username": "sec-totp", "password": E2E_PASSWORD, "totp": code},
                    timeout=TIMEOUT)
    assert r.status_code == 401, "a one-time code is refused the second time"


def test_cookie_session_needs_csrf_header_and_is_hardened(world):
    url = world.url
    s = anon()
    r = s.post(f"{url}/auth/login", json={"username": "e2e-admin", "password": E2E_PASSWORD}, timeout=TIMEOUT)
    cookies = r.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookies and "SameSite=Strict" in cookies
    r = s.post(f"{url}/api/admin/sites", json={"site_id": "csrf-site", "name": "x"}, timeout=TIMEOUT)
    assert r.status_code == 403 and "csrf" in r.json()["detail"].lower()
    r = anon().post(f"{url}/auth/login", json={"username": "e2e-admin", "password": E2E_PASSWORD},
                    headers={"Origin": "https://evil.example"}, timeout=TIMEOUT)
    assert r.status_code == 403
    h = requests.get(f"{url}/login", timeout=TIMEOUT).headers
    assert "default-src 'self'" in h["Content-Security-Policy"] and "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert h["X-Content-Type-Options"] == "nosniff" and h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "no-referrer"
    # Logout ends the session.
    sess = world.srv.login("e2e-tech")
    assert sess.post(f"{url}/auth/logout", timeout=TIMEOUT).status_code == 200
    assert sess.get(f"{url}/api/me", timeout=TIMEOUT).status_code == 401


def test_disabled_user_cannot_sign_in_and_loses_sessions(world):
    url = world.url
    world.admin.post(f"{url}/api/admin/users", json={"username": "sec-leaver", "role": "site", "site": E2E_SITE,
                                                      "password": E2E_PASSWORD}, timeout=TIMEOUT)
    s = world.srv.login("sec-leaver")
    assert world.admin.post(f"{url}/api/admin/users/sec-leaver/disable", timeout=TIMEOUT).status_code == 200
    assert s.get(f"{url}/api/me", timeout=TIMEOUT).status_code == 401
    r = anon().post(f"{url}/auth/login", json={"username": "sec-leaver", "password": E2E_PASSWORD}, timeout=TIMEOUT)
    assert r.status_code == 401


def test_each_patient_data_access_writes_exactly_one_record(world):
    url = world.url
    auditor = world.sessions["auditor"]
    routes = world.admin.get(f"{url}/api/routes", timeout=TIMEOUT).json()

    def head():
        recs = auditor.get(f"{url}/api/audit", params={"after": 0, "limit": 10000}, timeout=TIMEOUT).json()
        return recs[-1]["seq"] if recs else 0

    for r in routes:
        if r["audit"] != "patient-data" or r["method"] != "GET" or "{study}" not in r["path"]:
            continue
        before = head()
        path = world.fill(r["path"], world.own)
        world.admin.get(url + path, timeout=TIMEOUT)
        new = auditor.get(f"{url}/api/audit", params={"after": before}, timeout=TIMEOUT).json()
        mine = [x for x in new if x["event"]["actor"] == "e2e-admin"]
        assert len(mine) == 1, (r["path"], [x["event"]["action"] for x in new])
        ev = mine[0]["event"]
        assert ev["action"].endswith(r["path"]) and ev["role"] == "admin"
        assert ev["study_uid"] == world.own.StudyInstanceUID and ev["patient_id"] == "SEC-OWN"


def test_fhir_and_dicom_audit_exports(world):
    from fhir.resources.R4B.bundle import Bundle
    url = world.url
    auditor = world.sessions["auditor"]
    r = auditor.get(f"{url}/api/audit", params={"format": "fhir", "limit": 200}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(r.text) if hasattr(Bundle, "model_validate_json") else Bundle.parse_raw(r.text)
    assert bundle.entry and all(type(e.resource).__name__ == "AuditEvent" for e in bundle.entry)
    r = auditor.get(f"{url}/api/audit", params={"format": "dicom", "study": world.own.StudyInstanceUID},
                    timeout=TIMEOUT)
    assert r.status_code == 200 and "<AuditMessage" in r.text and world.own.StudyInstanceUID in r.text
    r = auditor.get(f"{url}/api/audit", params={"from": "2020-01-01", "to": "2999-01-01T00:00:00Z",
                                                "patient_id": "SEC-OWN"}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() and all(x["event"]["patient_id"] == "SEC-OWN" for x in r.json())
    # Searching the trail is itself audited.
    last = auditor.get(f"{url}/api/audit", params={"user": "sec-auditor"}, timeout=TIMEOUT).json()
    assert any(x["event"]["action"].startswith("AUDIT-SEARCH") for x in last)
