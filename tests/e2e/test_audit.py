"""Every DICOMweb and DIMSE access writes a hash-chained audit record;
`meridian audit verify` finds a changed or deleted record."""
import json
import sqlite3
import subprocess

import pydicom
import requests
from pydicom.uid import generate_uid

from conftest import MERIDIAN_BIN, Server
import dicomfiles as df


def _audit(server, *args):
    return subprocess.run([str(MERIDIAN_BIN), "audit", *args, "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=60)


def test_accesses_are_audited_and_tampering_is_found(tmp_path):
    srv = Server()
    try:
        ds = pydicom.dcmread(df.TEST_FILES / "CT_small.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.IssuerOfPatientID = "AUDIT-1", "HOSP-A"
        path = tmp_path / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        df.storescu(srv, [path])
        study = ds.StudyInstanceUID
        base = srv.dicomweb_url
        assert requests.get(f"{base}/studies", params={"PatientID": "AUDIT-1"}, timeout=30).status_code == 200
        assert requests.get(f"{base}/studies/{study}/metadata", timeout=30).status_code == 200
        assert requests.get(f"{base}/studies/1.2.3.4.5.6/metadata", timeout=30).status_code == 404
        df.c_find(srv, "STUDY", {"StudyInstanceUID": study, "PatientName": ""})

        r = _audit(srv, "list", "--study", study)
        assert r.returncode == 0, r.stderr
        recs = [json.loads(line) for line in r.stdout.splitlines()]
        actions = [x["event"]["action"] for x in recs]
        assert any(a.startswith("C-STORE") for a in actions), actions
        assert any(a.startswith("WADO-RS metadata GET") for a in actions), actions
        assert any(a.startswith("C-FIND") for a in actions), actions
        meta = next(x["event"] for x in recs if x["event"]["action"].startswith("WADO-RS metadata"))
        assert meta["patient_id"] == "AUDIT-1" and meta["issuer"] == "HOSP-A"
        assert meta["outcome"] == "200" and meta["source"].startswith("127.0.0.1:")
        all_recs = [json.loads(line) for line in _audit(srv, "list").stdout.splitlines()]
        assert any(x["event"]["action"].startswith("QIDO-RS GET") and "AUDIT-1" in x["event"]["detail"] for x in all_recs)
        assert any(x["event"]["outcome"] == "404" for x in all_recs), "denied/failed accesses are audited too"

        r = _audit(srv, "verify")
        assert r.returncode == 0 and "intact" in r.stdout, r.stdout + r.stderr
    finally:
        srv.stop()

    # Tamper with the stored trail (as someone with file access would).
    db = sqlite3.connect(srv.data_dir / "index.db")
    n = db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
    assert n >= 5
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    db.commit()
    r = _audit(srv, "verify")
    assert r.returncode != 0 and "record 2 was altered" in (r.stdout + r.stderr), r.stdout + r.stderr
    db.execute("DELETE FROM audit_log WHERE seq = 3")
    db.commit()
    db.close()
    r = _audit(srv, "verify")
    assert r.returncode != 0, r.stdout
    srv.cleanup()
