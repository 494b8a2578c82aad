"""Sign in with SSO end to end: headless Chromium, Meridian's login page, a real
OpenID provider (the certified `oidc-provider` npm package, run locally), the
authorization code + PKCE flow, and the mapping of IdP groups to roles."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Server, free_port, meridian_cli, require_tool

BROWSER_DIR = REPO / "tests" / "browser"
PROVIDER = REPO / "tests" / "oidc" / "provider.mjs"
LOGIN_SCRIPT = BROWSER_DIR / "oidc-login.mjs"
SECRET = "e2e-oidc-client-secret"


@pytest.fixture(scope="module")
def sso(tmp_path_factory):
    node = require_tool("node")
    if not (BROWSER_DIR / "node_modules" / "oidc-provider").exists():
        pytest.fail("REQUIRED PEER MISSING: npm package oidc-provider (run scripts/install-peers)", pytrace=False)
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("REQUIRED PEER MISSING: /usr/bin/chromium (run scripts/install-peers)", pytrace=False)
    http_port = free_port()
    redirect = f"http://127.0.0.1:{http_port}/auth/oidc/callback"
    prov = subprocess.Popen([node, str(PROVIDER), "--port", "0", "--client-id", "meridian", "--client-secret", SECRET,
                             "--redirect-uri", redirect], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = prov.stdout.readline().strip()
    assert line.startswith("READY "), f"provider did not start: {line!r}"
    issuer = line.split(" ", 1)[1]
    data = tmp_path_factory.mktemp("oidc") / "data"
    meridian_cli("site", "add", "site-a", "--name", "Site A", data_dir=data)
    srv = Server(data_dir=data, extra_args=[
        "--oidc-issuer", issuer, "--oidc-client-id", "meridian",
        "--oidc-role", "radiologists=radiologist", "--oidc-role", "site-a-techs=site",
    ], env={"MERIDIAN_OIDC_CLIENT_SECRET": SECRET}, http_port=http_port)
    yield srv
    srv.cleanup()
    prov.terminate()
    prov.wait(10)


def browser_login(srv, user, password):
    node = require_tool("node")
    return subprocess.run([node, str(LOGIN_SCRIPT), "--meridian", srv.http_url, "--user", user, "--password", password,
                           "--timeout", "60"], capture_output=True, text=True, timeout=180, cwd=BROWSER_DIR)


def test_login_page_offers_sso(sso):
    import requests
    r = requests.get(f"{sso.http_url}/login", timeout=30)
    assert 'id="sso"' in r.text and "/auth/oidc/login" in r.text


def test_radiologist_signs_in_through_the_provider(sso):
    r = browser_login(sso, "alice", "alice-password")
    assert r.returncode == 0, r.stdout + r.stderr
    me = json.loads(r.stdout.strip().splitlines()[-1])
    assert me["user"] == "alice" and me["role"] == "radiologist" and me["kind"] == "user"
    users = meridian_cli("user", "list", data_dir=sso.data_dir).stdout
    assert "alice" in users and "radiologist" in users


def test_site_user_gets_site_from_claim(sso):
    r = browser_login(sso, "bob", "bob-password")
    assert r.returncode == 0, r.stdout + r.stderr
    me = json.loads(r.stdout.strip().splitlines()[-1])
    assert me["role"] == "site" and me["site"] == "site-a"


def test_unmapped_group_is_refused_and_audited(sso):
    r = browser_login(sso, "carol", "carol-password")
    assert r.returncode != 0
    recs = [json.loads(x) for x in meridian_cli("audit", "list", data_dir=sso.data_dir).stdout.splitlines()]
    assert any(x["event"]["action"] == "LOGIN-FAILED" and x["event"]["actor"] == "carol" for x in recs)
    assert any(x["event"]["action"] == "LOGIN" and x["event"]["detail"] == "oidc" for x in recs)
