"""Crash safety: kill -9 during concurrent ingest, then every acknowledged
instance is present and no index row lacks its file (`meridian fsck`)."""
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

from conftest import MERIDIAN_BIN, Server
import dicomfiles as df

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ct_series(dst: Path, n: int) -> list[Path]:
    """n synthetic slices (real CT_small with new UIDs), one study."""
    src = pydicom.dcmread(df.TEST_FILES / "CT_small.dcm")
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = src.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.SeriesDescription = "SYNTHETIC crash test"
        p = dst / f"{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def _sender(server: Server, files: list[Path], acked: list, stop: threading.Event):
    ae = AE(ae_title="CRASHSCU")
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.1"])
    try:
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="MERIDIAN")
    except Exception:
        return
    if not assoc.is_established:
        return
    for f in files:
        if stop.is_set():
            break
        try:
            st = assoc.send_c_store(pydicom.dcmread(f))
        except Exception:
            break
        if st is not None and getattr(st, "Status", None) == 0:
            acked.append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        elif st is None or not hasattr(st, "Status"):
            break
    try:
        assoc.abort()
    except Exception:
        pass


def test_kill_during_ingest_loses_no_acknowledged_instance(tmp_path):
    files = _ct_series(tmp_path, 240)
    srv = Server()
    data_dir = srv.data_dir
    acked: list[str] = []
    stop = threading.Event()
    chunks = [files[i::4] for i in range(4)]
    threads = [threading.Thread(target=_sender, args=(srv, c, acked, stop)) for c in chunks]
    for t in threads:
        t.start()
    # Let some instances land, then kill the server without warning.
    deadline = time.time() + 30
    while len(acked) < 40 and time.time() < deadline:
        time.sleep(0.01)
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 40, f"only {len(acked)} acknowledged before the kill"
    assert len(acked) < len(files), "the kill came too late to test anything"

    # The index and the files agree after the crash.
    r = subprocess.run([str(MERIDIAN_BIN), "fsck", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "consistent" in r.stdout

    # Every acknowledged instance is there after a restart.
    srv2 = Server(data_dir=data_dir)
    try:
        found = set()
        for uid_chunk in [acked[i:i + 50] for i in range(0, len(acked), 50)]:
            for ds in df.c_find(srv2, "IMAGE", {"SOPInstanceUID": "\\".join(uid_chunk), "StudyInstanceUID": ""}):
                found.add(str(ds.SOPInstanceUID))
        missing = set(acked) - found
        assert not missing, f"{len(missing)} acknowledged instances lost: {sorted(missing)[:3]}"
    finally:
        srv2.cleanup()
    srv.cleanup()
