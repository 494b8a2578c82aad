"""The `meridian` command line, end to end: import (recursive) then serve,
send (C-STORE SCU into DCMTK's storescp), fsck (consistent, then a stored
file deleted)."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import dicomfiles as df
from conftest import E2E_SITE, MERIDIAN_BIN, Server

TESTFILES = df.TEST_FILES


def meridian(*args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    if not MERIDIAN_BIN.exists():
        pytest.fail(f"meridian binary not found at {MERIDIAN_BIN}; run `cargo build --release` first", pytrace=False)
    return df.run([MERIDIAN_BIN, *args], timeout=timeout, check=check)


def _tree(root: Path, pid: str) -> dict:
    """A realistic import source: one study spread over nested folders, files
    with and without the .dcm extension, compressed and uncompressed, plus a
    second study in a file given on the command line directly."""
    study = generate_uid()
    deep = root / "site-a" / "2024" / "06" / "study1"
    ct = df.make_series(TESTFILES / "CT_small.dcm", deep / "ct", 3, patient_id=pid, study_uid=study)
    jls = df.make_instance(TESTFILES / "MR_small_jpeg_ls_lossless.dcm", deep / "mr" / "IM000001", patient_id=pid,
                           study_uid=study)
    j2k = df.make_instance(df.data_store_dir() / "693_J2KR.dcm", root / "site-a" / "IMG0002", patient_id=pid,
                           study_uid=study)
    rle = df.make_instance(TESTFILES / "MR_small_RLE.dcm", root / "rle.dcm", patient_id=pid, study_uid=study)
    single = df.make_instance(TESTFILES / "MR_small_bigendian.dcm", root.parent / "loose" / "single.dcm",
                              patient_id=pid)
    return {"study": study, "in_tree": ct + [jls, j2k, rle], "single": single}


def test_cli_help_lists_subcommands():
    cp = meridian("--help", timeout=20)
    for sub in ("serve", "import", "send", "fsck"):
        assert sub in cp.stdout, f"`meridian --help` does not mention {sub}:\n{cp.stdout}"


def test_cli_import_recursive_then_serve(tmp_path):
    pid = f"E2E-IMP-{df.token()}"
    src = tmp_path / "src"
    t = _tree(src, pid)
    data = tmp_path / "data"
    meridian("import", src, t["single"].path, "--site", E2E_SITE, "--data-dir", data)

    srv = Server(data_dir=data)
    try:
        assert df.count_study_instances(srv, StudyInstanceUID=t["study"]) == len(t["in_tree"])
        assert df.count_study_instances(srv, StudyInstanceUID=t["single"].study_uid) == 1
        rows = df.c_find(srv, "STUDY", {"PatientID": pid, "StudyInstanceUID": ""})
        assert {r.StudyInstanceUID for r in rows} == {t["study"], t["single"].study_uid}
        # Imported files are kept as they were: a compressed one comes back identical.
        j2k = t["in_tree"][4]
        final, files = df.c_get(srv, "IMAGE", {"StudyInstanceUID": j2k.study_uid, "SeriesInstanceUID": j2k.series_uid,
                                               "SOPInstanceUID": j2k.sop_uid}, tmp_path / "get",
                                storage=[(j2k.sop_class, j2k.transfer_syntax)])
        assert final.get("Status") == 0x0000
        assert len(files) == 1
        df.assert_same_instance(j2k.path, files[0])
    finally:
        srv.cleanup()

    # Importing the same files again adds nothing.
    meridian("import", src, "--site", E2E_SITE, "--data-dir", data)
    srv = Server(data_dir=data)
    try:
        assert df.count_study_instances(srv, StudyInstanceUID=t["study"]) == len(t["in_tree"])
    finally:
        srv.cleanup()


def test_cli_import_skips_non_dicom_files(tmp_path):
    pid = f"E2E-IMPJ-{df.token()}"
    src = tmp_path / "src"
    study = generate_uid()
    good = df.make_series(TESTFILES / "CT_small.dcm", src / "a", 2, patient_id=pid, study_uid=study)
    (src / "README.TXT").write_text("Burned by the imaging centre's CD writer\n")
    (src / "a" / "thumbs.db").write_bytes(b"\x00\x01garbage" * 100)
    data = tmp_path / "data"
    cp = meridian("import", src, "--site", E2E_SITE, "--data-dir", data, check=False)
    srv = Server(data_dir=data)
    try:
        assert df.count_study_instances(srv, StudyInstanceUID=study) == len(good), cp.stdout + cp.stderr
    finally:
        srv.cleanup()


def test_cli_import_missing_path_fails(tmp_path):
    cp = meridian("import", tmp_path / "does-not-exist", "--site", E2E_SITE, "--data-dir", tmp_path / "data", check=False, timeout=30)
    assert cp.returncode != 0


def test_cli_send_into_storescp(tmp_path):
    pid = f"E2E-SEND-{df.token()}"
    src = tmp_path / "src"
    t = _tree(src, pid)
    port = df.free_port()
    out = tmp_path / "received"
    with df.storescp(port, out, aet="SITEPACS"):
        cp = meridian("send", "--to", f"SITEPACS@127.0.0.1:{port}", src, t["single"].path, timeout=120)
    expected = t["in_tree"] + [t["single"]]
    got = df.index_by_sop(p for p in out.rglob("*") if p.is_file())
    assert sorted(got) == sorted(i.sop_uid for i in expected), cp.stdout + cp.stderr
    for inst in expected:
        # Compressed instances travel as they are; uncompressed ones may be
        # sent in any uncompressed syntax the peer accepted.
        df.assert_same_instance(inst.path, got[inst.sop_uid], same_ts=False)


def test_cli_send_to_unreachable_peer_fails(tmp_path):
    inst = df.make_instance(TESTFILES / "CT_small.dcm", tmp_path / "ct.dcm", patient_id="E2E-UNREACH")
    port = df.free_port()  # nothing listens there
    t0 = time.monotonic()
    cp = meridian("send", "--to", f"NOBODY@127.0.0.1:{port}", inst.path, check=False, timeout=90)
    assert cp.returncode != 0, f"send to a closed port exited 0:\n{cp.stdout}{cp.stderr}"
    assert time.monotonic() - t0 < 60


def _fsck_cycle(data: Path):
    cp = meridian("fsck", "--data-dir", data, timeout=60)
    assert cp.returncode == 0
    stored = df.stored_dcm_files(data)
    assert stored, f"no *.dcm under {data}"
    victim = stored[len(stored) // 2]
    uid = str(pydicom.dcmread(victim, stop_before_pixels=True).SOPInstanceUID)
    victim.unlink()
    cp = meridian("fsck", "--data-dir", data, check=False, timeout=60)
    assert cp.returncode != 0, f"fsck exited 0 with {victim} deleted:\n{cp.stdout}{cp.stderr}"
    assert uid in cp.stdout + cp.stderr, f"fsck did not name the missing instance {uid}:\n{cp.stdout}{cp.stderr}"


def test_cli_fsck_after_import(tmp_path):
    src = tmp_path / "src"
    _tree(src, f"E2E-FSCK-{df.token()}")
    data = tmp_path / "data"
    meridian("import", src, "--site", E2E_SITE, "--data-dir", data)
    _fsck_cycle(data)


def test_cli_fsck_after_dimse_store(tmp_path):
    pid = f"E2E-FSCK2-{df.token()}"
    data = tmp_path / "data"
    srv = Server(data_dir=data)
    try:
        study = generate_uid()
        insts = df.make_series(TESTFILES / "CT_small.dcm", tmp_path / "in", 4, patient_id=pid, study_uid=study)
        df.storescu(srv, [i.path for i in insts])
        assert df.count_study_instances(srv, StudyInstanceUID=study) == 4
    finally:
        srv.stop()
        shutil.rmtree(srv.tmp, ignore_errors=True)
    _fsck_cycle(data)
