"""Teleradiology workflow end to end through the running binary.

Peers: `mllp_send` (PyPI `hl7`) delivers ORM^O01 / OMI^O23 orders over MLLP; `hl7apy`
parses the acknowledgements; DCMTK `dcmsend` delivers the images (real CT slices from
pydicom's test files, with rewritten UIDs, accession and patient); `fhir.resources`
validates the FHIR ServiceRequest. Sites and readers are onboarded with
`meridian admin import FILE`.

What it shows: an order + images for site A (US-TX) appear on the worklist of the reader
licensed in US-TX and credentialed at A, not on readers lacking either; a STAT order
("code stroke") overtakes routine ones; claiming locks a study for others; push mode
assigns with an explanation naming who was not eligible and why; malformed HL7 gets
AE/AR with ERR and stores nothing; every transition is timestamped and audited.
"""
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

import dicomfiles as df
from conftest import E2E_PASSWORD, E2E_SITE, Server, free_port, meridian_cli

MLLP_SEND = shutil.which("mllp_send")
if not MLLP_SEND:
    pytest.fail("PEER MISSING: mllp_send (PyPI package `hl7`); scripts/install-peers installs it",
                pytrace=False)

ONBOARDING = """
[[sites]]
id = "e2e"
name = "Site A (synthetic)"
time_zone = "America/Chicago"
jurisdiction = "US-TX"
data_region = "us"
hl7_facilities = ["RIS_A"]
ae_titles = ["DCMSEND"]

[sites.contract]
mode = "pull"
unordered = "hold"
unopened_minutes = 15
sla_minutes = { stat = 30, urgent = 120, routine = 1440 }
protocol_sla_minutes = { stroke = 20 }

[[sites.triage]]
name = "code-stroke"
keywords = ["code stroke"]
modality = ["CT"]
priority = "stat"
protocol = "stroke"
subspecialty = "neuro"

[sites.rvu]
CT = 1.5

{readers}
"""

ALWAYS = '[[readers.shifts]]\ndays = [0, 1, 2, 3, 4, 5, 6]\nstart = "00:00"\nend = "00:00"\n'


def reader_toml(rid, licence, credential):
    out = f'[[readers]]\nid = "{rid}"\ntime_zone = "America/Chicago"\nregion = "us"\nmodalities = ["CT"]\n'
    out += 'subspecialties = ["neuro"]\nmax_concurrent = 50\n'
    if licence:
        out += f'[[readers.licences]]\njurisdiction = "{licence}"\nnumber = "L-{rid}"\nexpires = "2031-01-31"\n'
    if credential:
        out += f'[[readers.credentials]]\nsite = "{credential}"\nscope = "final"\nexpires = "2031-01-31"\n'
    return out + ALWAYS


READERS = {
    "dr.tx": ("US-TX", "e2e"),        # licensed in Texas, credentialed at site A
    "dr.tx2": ("US-TX", "e2e"),       # the same, to contend for locks
    "dr.ca": ("US-CA", "e2e"),        # credentialed, but licensed in California only
    "dr.nocred": ("US-TX", None),     # licensed in Texas, not credentialed at A
}


@pytest.fixture(scope="module")
def wf():
    hl7_port = free_port()
    s = Server(extra_args=["--hl7", f"127.0.0.1:{hl7_port}"])
    s.hl7_port = hl7_port
    for rid in READERS:
        meridian_cli("user", "add", rid, "--role", "radiologist", data_dir=s.data_dir,
                     stdin=E2E_PASSWORD + "\n")
    readers = "\n".join(reader_toml(r, *READERS[r]) for r in READERS)
    f = Path(s.tmp) / "onboarding.toml"
    f.write_text(ONBOARDING.replace("{readers}", readers))
    cp = meridian_cli("admin", "import", str(f), data_dir=s.data_dir)
    assert "site e2e (US-TX, America/Chicago)" in cp.stdout, cp.stdout
    s.sessions = {r: s.login(r) for r in READERS}
    s.admin = s.login("e2e-admin")
    yield s
    assert s.alive(), f"meridian died during the tests:\n{s.log_text()}"
    s.cleanup()


# ---- HL7 ----

def hl7_ts(offset_s=0):
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + offset_s)) + "+0000"


def orm(accession, patient, priority="R", reason="Cough", facility="RIS_A", pid3=None, control=None):
    pid3 = pid3 if pid3 is not None else f"{patient}^^^HOSP_A"
    control = control or generate_uid()[-12:]
    segs = [
        f"MSH|^~\\&|RIS|{facility}|MERIDIAN|TELERAD|{hl7_ts()}||ORM^O01|{control}|P|2.3",
        f"PID|1||{pid3}||Doe^Jane^^^||19700101|F",
        "PV1|1|E|ED^^^HOSP_A",
        f"ORC|NW|PL-{accession}|{accession}||||^^^^^{priority}||{hl7_ts(-60)}|||1234^Ordering^Olivia",
        f"OBR|1|PL-{accession}|{accession}|CTHEAD^CT Head without contrast^L|||{hl7_ts(-60)}||||||{reason}"
        f"|||1234^Ordering^Olivia||{accession}||||||CT|||^^^^^{priority}||||{reason}",
    ]
    return "\r".join(segs) + "\r"


def omi(accession, patient, priority="R", reason="Routine follow-up"):
    control = generate_uid()[-12:]
    segs = [
        f"MSH|^~\\&|RIS|RIS_A|MERIDIAN|TELERAD|{hl7_ts()}||OMI^O23^OMI_O23|{control}|P|2.5.1",
        f"PID|1||{patient}^^^HOSP_A||Roe^Richard||19600202|M",
        "PV1|1|O|CLINIC^^^HOSP_A",
        f"ORC|NW|PL-{accession}|{accession}|||||||||1234^Ordering^Olivia",
        f"TQ1|1||||||||{priority}",
        f"OBR|1|PL-{accession}|{accession}|CTCHEST^CT Chest^L|||{hl7_ts(-60)}||||||||||||||||||CT|||||||{reason}",
        f"IPC|{accession}|PL-{accession}|{generate_uid()}|SPS-1|CT",
    ]
    return "\r".join(segs) + "\r"


def mllp_send(port, *messages):
    """Sends messages with the real mllp_send; returns the acknowledgements parsed by hl7apy."""
    from hl7apy.parser import parse_message
    with tempfile.NamedTemporaryFile("wb", suffix=".hl7", delete=False) as f:
        for m in messages:
            f.write(m.encode("latin-1") + b"\x1c\r")
        path = f.name
    cp = subprocess.run([MLLP_SEND, "-p", str(port), "-f", path, "127.0.0.1"], capture_output=True, timeout=60)
    Path(path).unlink()
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    # mllp_send prints each acknowledgement as received, MLLP frame included.
    out = cp.stdout.decode("latin-1")
    acks = [a.strip("\x1c\r\n") + "\r" for a in out.split("\x0b") if a.startswith("MSH")]
    assert len(acks) == len(messages), cp.stdout
    return [parse_message(a, find_groups=False) for a in acks]


def ack_code(ack):
    return ack.msa.msa_1.value


def err_code(ack):
    text = ack.to_er7()
    for seg in text.split("\r"):
        if seg.startswith("ERR"):
            return seg
    return ""


# ---- images ----

def send_study(s, testfiles, tmp, accession, patient, n=2):
    study = generate_uid()
    files = df.make_series(testfiles / "CT_small.dcm", tmp / accession, n, patient_id=patient, study_uid=study,
                           AccessionNumber=accession, IssuerOfPatientID="HOSP_A", Modality="CT")
    df.dcmsend(s, [f.path for f in files])
    return study


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def worklist(s, reader, **params):
    r = s.sessions[reader].get(f"{s.http_url}/api/worklist", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def claimable(s, reader):
    return [i["study_uid"] for i in worklist(s, reader)["claimable"]]


# ---- the tests ----

def test_order_and_images_reach_only_eligible_readers_stat_first(wf, testfiles, tmp_path):
    routine_acc, stat_acc = f"R{generate_uid()[-8:]}", f"S{generate_uid()[-8:]}"
    acks = mllp_send(wf.hl7_port, orm(routine_acc, "P-ROUTINE", "R", "Chronic headache"),
                     orm(stat_acc, "P-STROKE", "R", "CODE STROKE left sided weakness"))
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    # The routine study arrives first; the stroke study a little later.
    routine = send_study(wf, testfiles, tmp_path, routine_acc, "P-ROUTINE")
    stat = send_study(wf, testfiles, tmp_path, stat_acc, "P-STROKE")

    got = wait_for(lambda: (lambda c: c if {routine, stat} <= set(c) else None)(claimable(wf, "dr.tx")),
                   what="both studies on dr.tx's worklist")
    # Earliest deadline first: the STAT stroke study overtakes the routine one.
    assert got.index(stat) < got.index(routine)
    items = {i["study_uid"]: i for i in worklist(wf, "dr.tx")["claimable"]}
    assert items[stat]["priority"] == "stat" and items[stat]["protocol"] == "stroke"
    assert items[routine]["priority"] == "routine"
    assert items[stat]["deadline"] < items[routine]["deadline"]
    # Not on the worklist of a reader lacking the licence or the credential.
    assert not {routine, stat} & set(claimable(wf, "dr.ca"))
    assert not {routine, stat} & set(claimable(wf, "dr.nocred"))
    # Filters and counts.
    w = worklist(wf, "dr.tx", priority="stat")
    assert stat in [i["study_uid"] for i in w["claimable"]] and routine not in [i["study_uid"] for i in w["claimable"]]
    assert w["counts"]["stat"] >= 1

    # The priority change records its source; every transition has a timestamp.
    case = wf.admin.get(f"{wf.http_url}/api/studies/{stat}/case", timeout=30).json()
    kinds = [e["kind"] for e in case["events"]]
    assert kinds[:2] == ["received", "stable"] and "matched" in kinds, kinds
    pr = [e for e in case["events"] if e["kind"] == "priority"]
    assert any("rule:code-stroke" in e["actor"] and e["detail"].startswith("stat") for e in pr), pr
    assert all(isinstance(e["at"], int) and e["at"] > 0 for e in case["events"])

    # Claiming locks it for others.
    r = wf.sessions["dr.tx"].post(f"{wf.http_url}/api/studies/{stat}/claim", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "opened" and r.json()["lock"]["reader"] == "dr.tx"
    r = wf.sessions["dr.tx2"].post(f"{wf.http_url}/api/studies/{stat}/claim", timeout=30)
    assert r.status_code == 409, r.text
    assert stat not in claimable(wf, "dr.tx2")
    assert stat in [i["study_uid"] for i in worklist(wf, "dr.tx")["assigned"]]
    # An ineligible reader cannot claim even an unclaimed study.
    r = wf.sessions["dr.ca"].post(f"{wf.http_url}/api/studies/{routine}/claim", timeout=30)
    assert r.status_code == 403 and "no licence in US-TX" in r.text, r.text

    # Access to images follows the claim: dr.tx sees the study, dr.tx2 does not.
    q = {"StudyInstanceUID": stat}
    assert len(wf.sessions["dr.tx"].get(f"{wf.dicomweb_url}/studies", params=q, timeout=30).json()) == 1
    r = wf.sessions["dr.tx2"].get(f"{wf.dicomweb_url}/studies", params=q, timeout=30)
    assert r.status_code in (200, 204) and (r.status_code == 204 or r.json() == [])

    # Releasing puts it back for the others (not for the one who released it).
    r = wf.sessions["dr.tx"].post(f"{wf.http_url}/api/studies/{stat}/release", timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    assert stat in claimable(wf, "dr.tx2")

    # Transitions are audited in the hash-chained log.
    audit = wf.admin.get(f"{wf.http_url}/api/audit", params={"study": stat}, timeout=30).json()
    actions = " ".join(a["event"]["action"] if "event" in a else a.get("action", "") for a in audit)
    for k in ("workflow matched", "workflow claimed", "workflow released"):
        assert k in actions, actions[:2000]


YAML_ONBOARDING = """
sites:
  - id: e2e-yaml
    name: Site B (synthetic)
    time_zone: Europe/London
    jurisdiction: GB
    hl7_facilities: [RIS_B]
    ae_titles: [YAML_CT01]
    contract:
      mode: push
      sla_minutes: {stat: 45, urgent: 180, routine: 2880}
    triage:
      - name: trauma
        keywords: [trauma]
        priority: stat
readers:
  - id: dr.gb
    time_zone: Europe/London
    region: gb
    modalities: [CT, MR]
    licences: [{jurisdiction: GB, number: GMC-1, expires: "2031-01-31"}]
    credentials: [{site: e2e-yaml, scope: final, expires: "2031-01-31"}]
    shifts: [{days: [0, 1, 2, 3, 4], start: "08:00", end: "18:00"}]
"""


def test_onboarding_from_yaml(wf, tmp_path):
    f = tmp_path / "onboarding.yaml"
    f.write_text(YAML_ONBOARDING)
    cp = meridian_cli("admin", "import", str(f), data_dir=wf.data_dir)
    assert "site e2e-yaml (GB, Europe/London)" in cp.stdout and "reader dr.gb" in cp.stdout, cp.stdout
    site = wf.admin.get(f"{wf.http_url}/api/admin/sites/e2e-yaml/profile", timeout=30).json()
    assert site["contract"]["mode"] == "push" and site["contract"]["sla_minutes"]["stat"] == 45
    assert site["triage"][0]["priority"] == "stat"
    readers = {r["reader"]["id"]: r["reader"] for r in wf.admin.get(f"{wf.http_url}/api/admin/readers", timeout=30).json()}
    assert readers["dr.gb"]["licences"][0]["jurisdiction"] == "GB"
    assert readers["dr.gb"]["shifts"][0]["start"].startswith("08:00")
    aes = {a for s in wf.admin.get(f"{wf.http_url}/api/admin/sites", timeout=30).json() for a in s["ae_titles"]}
    assert "YAML_CT01" in aes
    # A broken file changes nothing and says where.
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites:\n  - id: e2e-bad\n    time_zone: Mars/Olympus\n    jurisdiction: XX\n")
    cp = meridian_cli("admin", "import", str(bad), data_dir=wf.data_dir, check=False)
    assert cp.returncode != 0 and "Mars/Olympus" in cp.stderr, cp.stderr
    assert wf.admin.get(f"{wf.http_url}/api/admin/sites/e2e-bad/profile", timeout=30).status_code == 404


def test_the_documented_example_order_is_accepted(wf, tmp_path):
    """docs/examples/orm-stroke.hl7, sent as the README says (mllp_send --loose -f)."""
    from conftest import REPO
    text = (REPO / "docs" / "examples" / "orm-stroke.hl7").read_text().replace("DEMO_RIS", "RIS_A")
    f = tmp_path / "orm.hl7"
    f.write_text(text)
    cp = subprocess.run([MLLP_SEND, "--loose", "-f", str(f), "-p", str(wf.hl7_port), "127.0.0.1"],
                        capture_output=True, timeout=60)
    assert cp.returncode == 0 and b"MSA|AA|DEMO0001" in cp.stdout, cp.stdout + cp.stderr
    q = wf.admin.get(f"{wf.http_url}/api/reconcile", timeout=30).json()
    o = next(o for o in q["orders"] if o["accession"] == "ACC-DEMO-7")
    assert o["source"] == "hl7" and o["patient_id"] == "DEMO-PAT-7" and o["issuer"] == "DEMO_HOSP"


def test_omi_order_and_operations_view(wf, testfiles, tmp_path):
    acc = f"O{generate_uid()[-8:]}"
    (a,) = mllp_send(wf.hl7_port, omi(acc, "P-OMI", "S", "Trauma, fall from height"))
    assert ack_code(a) == "AA"
    study = send_study(wf, testfiles, tmp_path, acc, "P-OMI", n=1)
    wait_for(lambda: study in claimable(wf, "dr.tx"), what="OMI study claimable")
    ops = wf.admin.get(f"{wf.http_url}/api/operations", timeout=30).json()
    item = next(i for i in ops["studies"] if i["study_uid"] == study)
    assert item["priority"] == "stat" and item["sla"] == "on-track" and item["state"] == "ready"
    assert sum(ops["counts"].values()) == len(ops["studies"])
    # Operations is for the group's operations staff, not readers or sites.
    assert wf.sessions["dr.tx"].get(f"{wf.http_url}/api/operations", timeout=30).status_code == 403


def test_malformed_hl7_is_refused_and_nothing_is_stored(wf):
    before = wf.admin.get(f"{wf.http_url}/api/reconcile", timeout=30).json()["orders"]
    acc = f"X{generate_uid()[-8:]}"
    no_pid = orm(acc, "P-X", pid3="")
    unknown_facility = orm(acc, "P-X", facility="NOT_A_SITE")
    oru = orm(acc, "P-X").replace("ORM^O01", "ORU^R01")
    bad_priority = orm(acc, "P-X", priority="Q")
    acks = mllp_send(wf.hl7_port, no_pid, unknown_facility, oru, bad_priority)
    codes = [ack_code(a) for a in acks]
    assert codes == ["AE", "AR", "AR", "AE"], codes
    assert "101" in err_code(acks[0]) and "PID" in err_code(acks[0])
    assert "103" in err_code(acks[1]) and "NOT_A_SITE" in acks[1].to_er7()
    assert "200" in err_code(acks[2])
    assert "103" in err_code(acks[3])
    after = wf.admin.get(f"{wf.http_url}/api/reconcile", timeout=30).json()["orders"]
    assert [o["order_id"] for o in after] == [o["order_id"] for o in before]
    assert not any(o["accession"] == acc for o in after)
    assert wf.alive()


def test_unmatched_study_waits_for_a_coordinator(wf, testfiles, tmp_path):
    tech = wf.login("e2e-tech")
    acc = f"U{generate_uid()[-8:]}"
    # Images whose accession no order carries: held in the coordinators' queue.
    study = send_study(wf, testfiles, tmp_path, f"{acc}-IMG", "P-UNMATCHED", n=1)

    def queued():
        q = tech.get(f"{wf.http_url}/api/reconcile", timeout=30).json()
        return any(c["study_uid"] == study for c in q["studies"])
    wait_for(queued, what="unmatched study in the queue")
    assert study not in claimable(wf, "dr.tx")
    # The site's coordinator places a web requisition and matches it by hand.
    r = tech.post(f"{wf.http_url}/api/orders", json={
        "accession": acc, "patient_id": "P-OTHER-ID", "issuer": "HOSP_A", "modality": "CT",
        "procedure_text": "CT Head", "priority": "urgent", "reason": "Headache",
        "clinical_history": "Fall yesterday"}, timeout=30)
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["site_id"] == E2E_SITE and order["source"] == "web"
    r = tech.post(f"{wf.http_url}/api/studies/{study}/match", json={"order_id": order["order_id"]}, timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    assert r.json()["priority"] == "urgent"
    wait_for(lambda: study in claimable(wf, "dr.tx"), what="matched study claimable")
    # A second order fulfilled by the same acquisition: linked, read once; the case takes
    # the more urgent priority.
    r = tech.post(f"{wf.http_url}/api/orders", json={
        "accession": f"{acc}-2", "patient_id": "P-OTHER-ID", "issuer": "HOSP_A", "modality": "CT",
        "procedure_text": "CT Cervical spine", "priority": "stat", "reason": "Neck pain"}, timeout=30)
    assert r.status_code == 201, r.text
    second = r.json()
    r = tech.post(f"{wf.http_url}/api/studies/{study}/match", json={"order_id": second["order_id"]}, timeout=30)
    assert r.status_code == 200 and r.json()["priority"] == "stat", r.text
    linked = tech.get(f"{wf.http_url}/api/studies/{study}/orders", timeout=30).json()
    assert sorted(o["order_id"] for o in linked) == sorted([order["order_id"], second["order_id"]])
    # Split: the second order comes off again and waits for its own study.
    r = tech.post(f"{wf.http_url}/api/studies/{study}/unmatch", json={"order_id": second["order_id"]}, timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    q = tech.get(f"{wf.http_url}/api/reconcile", timeout=30).json()
    assert second["order_id"] in [o["order_id"] for o in q["orders"]]
    assert [o["order_id"] for o in tech.get(f"{wf.http_url}/api/studies/{study}/orders", timeout=30).json()] \
        == [order["order_id"]]
    kinds = [e["kind"] for e in tech.get(f"{wf.http_url}/api/studies/{study}/case", timeout=30).json()["events"]]
    assert "linked" in kinds and "unlinked" in kinds
    # Attachments: a scanned requisition rides with the order.
    pdf = b"%PDF-1.4\n% synthetic requisition\n" + bytes(range(256)) * 64
    r = tech.post(f"{wf.http_url}/api/orders/{order['order_id']}/attachments", params={"name": "req.pdf"},
                  data=pdf, headers={"Content-Type": "application/pdf"}, timeout=30)
    assert r.status_code == 201, r.text
    att = r.json()
    assert att["size"] == len(pdf) and att["content_type"] == "application/pdf"
    listed = tech.get(f"{wf.http_url}/api/orders/{order['order_id']}/attachments", timeout=30).json()
    assert [a["attachment_id"] for a in listed] == [att["attachment_id"]]
    got = tech.get(f"{wf.http_url}/api/orders/{order['order_id']}/attachments/{att['attachment_id']}", timeout=30)
    assert got.status_code == 200 and got.content == pdf and got.headers["Content-Type"] == "application/pdf"
    r = tech.post(f"{wf.http_url}/api/orders/{order['order_id']}/attachments", data=b"<script>",
                  headers={"Content-Type": "text/html"}, timeout=30)
    assert r.status_code == 415
    r = tech.post(f"{wf.http_url}/api/orders/{order['order_id']}/attachments", data=b"x" * (20 * 1024 * 1024 + 1),
                  headers={"Content-Type": "application/pdf"}, timeout=60)
    assert r.status_code == 413
    assert len(tech.get(f"{wf.http_url}/api/orders/{order['order_id']}/attachments", timeout=30).json()) == 1
    # The group's administrators see every site's orders.
    r = wf.admin.get(f"{wf.http_url}/api/orders/{order['order_id']}/attachments", timeout=30)
    assert r.status_code == 200
    # A site user cannot place an order for another site.
    r = tech.post(f"{wf.http_url}/api/orders", json={"site": "elsewhere", "accession": "A1", "patient_id": "P"},
                  timeout=30)
    assert r.status_code == 404


def test_fhir_service_request(wf, testfiles, tmp_path):
    from fhir.resources.R4B.servicerequest import ServiceRequest
    acc = f"F{generate_uid()[-8:]}"
    body = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "stat",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "ACSN"}]}, "value": acc}],
        "subject": {"identifier": {"system": "HOSP_A", "value": "P-FHIR"}, "display": "Fhir^Patient"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "24725-4", "display": "CT Head"},
                            {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]},
        "reasonCode": [{"text": "Suspected bleed"}],
        "authoredOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ServiceRequest.model_validate(body)
    r = requests.post(f"{wf.http_url}/fhir/ServiceRequest", json=body, timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    sr = r.json()
    ServiceRequest.model_validate(sr)
    assert sr["priority"] == "stat" and sr["subject"]["identifier"]["value"] == "P-FHIR"
    got = requests.get(f"{wf.http_url}{r.headers['Location']}", timeout=30)
    assert got.status_code == 200
    ServiceRequest.model_validate(got.json())
    assert got.json()["identifier"][0]["value"] == acc
    study = send_study(wf, testfiles, tmp_path, acc, "P-FHIR", n=1)
    wait_for(lambda: study in claimable(wf, "dr.tx"), what="FHIR-ordered study claimable")
    bad = requests.post(f"{wf.http_url}/fhir/ServiceRequest", json={"resourceType": "Patient"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_live_updates_and_push_assignment_with_explanation(wf, testfiles, tmp_path):
    events = []
    stop = threading.Event()

    def listen():
        with wf.sessions["dr.tx2"].get(f"{wf.http_url}/api/worklist/events", stream=True, timeout=60) as r:
            events.append({"status": r.status_code, "type": r.headers["Content-Type"]})
            try:
                for line in r.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        events.append(json.loads(line[5:]))
                    if stop.is_set():
                        return
            except requests.exceptions.ChunkedEncodingError:
                return  # the server stopped at the end of the module
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    wait_for(lambda: events, what="SSE stream open")
    assert events[0] == {"status": 200, "type": "text/event-stream"}, events[0]

    # Switch the site to push mode: Meridian assigns to an online eligible reader.
    site = wf.admin.get(f"{wf.http_url}/api/admin/sites/e2e/profile", timeout=30).json()
    site["contract"]["mode"] = "push"
    r = wf.admin.put(f"{wf.http_url}/api/admin/sites/e2e/profile", json=site, timeout=30)
    assert r.status_code == 200, r.text
    # dr.tx, dr.tx2 and dr.ca are online (heartbeat); dr.nocred is not.
    for rid in ("dr.tx", "dr.tx2", "dr.ca"):
        assert wf.sessions[rid].post(f"{wf.http_url}/api/worklist/heartbeat", timeout=30).status_code == 200
    acc = f"P{generate_uid()[-8:]}"
    (a,) = mllp_send(wf.hl7_port, orm(acc, "P-PUSH", "S", "Chest pain"))
    assert ack_code(a) == "AA"
    study = send_study(wf, testfiles, tmp_path, acc, "P-PUSH", n=1)

    def assigned():
        c = wf.admin.get(f"{wf.http_url}/api/studies/{study}/case", timeout=30).json()
        return c if c.get("case", {}).get("state") == "assigned" else None
    c = wait_for(assigned, what="push assignment")["case"]
    e = c["explanation"]
    # Only the Texas readers credentialed at A were eligible; the lighter-loaded one got it.
    assert c["assigned_to"] in ("dr.tx", "dr.tx2") and e["chosen"] == c["assigned_to"]
    assert [x["reader"] for x in e["eligible"]][0] == c["assigned_to"]
    assert {x["reader"] for x in e["eligible"]} == {"dr.tx", "dr.tx2"}
    loads = [x["load_rvu"] for x in e["eligible"]]
    assert loads == sorted(loads)
    assert c["assigned_to"] in e["summary"]
    why = {r: g["reasons"] for g in e["ineligible"] for r in g["readers"]}
    assert {"reason": "no-licence", "jurisdiction": "US-TX"} in why["dr.ca"]
    assert {"reason": "no-credential", "site": "e2e"} in why["dr.nocred"]
    assert study in [i["study_uid"] for i in worklist(wf, c["assigned_to"])["assigned"]]

    # The live feed told dr.tx2 about it.
    wait_for(lambda: any(ev.get("study_uid") == study and ev.get("kind") == "assigned" for ev in events),
             what="SSE assigned event")
    stop.set()
    site["contract"]["mode"] = "pull"
    wf.admin.put(f"{wf.http_url}/api/admin/sites/e2e/profile", json=site, timeout=30)


def test_route_table_knows_the_workflow_routes(wf):
    routes = {(r["method"], r["path"]): r["permission"]
              for r in wf.admin.get(f"{wf.http_url}/api/routes", timeout=30).json()}
    assert routes[("GET", "/api/worklist")] == "worklist"
    assert routes[("POST", "/api/studies/{study}/claim")] == "worklist"
    assert routes[("GET", "/api/operations")] == "operations"
    assert routes[("POST", "/fhir/ServiceRequest")] == "orders"
