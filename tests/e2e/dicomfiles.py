"""Helpers for Meridian's DIMSE end-to-end tests: real files, real peers.

* picking real test files (pydicom's test_files and charset_files, pydicom-data)
  and copying them with fresh UIDs so every test owns its own study;
* the DCMTK command-line tools (the pynetdicom apps install `storescu`,
  `findscu`, ... shims under the same names, so we resolve the DCMTK binaries
  explicitly) and a `storescp` move/send destination;
* pynetdicom SCU calls that DCMTK cannot make: raw (undecodable) C-STORE data
  sets, C-FIND with decoded identifiers, C-GET in transfer syntaxes DCMTK 3.6.7
  does not know (HTJ2K);
* comparing a retrieved instance with the one that was sent.
"""
from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, generate_uid

from pynetdicom import AE, _config as pynetdicom_config, build_context, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
CHARSET_FILES = PYDICOM_DATA / "charset_files"


def data_store_dir() -> Path:
    import data_store  # the pydicom-data wheel

    return Path(data_store.__file__).parent / "data"


# ---------------------------------------------------------------------------
# External tools
# ---------------------------------------------------------------------------

_DCMTK_CACHE: dict[str, str] = {}


def dcmtk(name: str) -> str:
    """Absolute path of the DCMTK tool `name`.

    pynetdicom's console scripts (storescu, findscu, getscu, movescu,
    storescp, echoscu) shadow DCMTK's on PATH in many Python installs; pick the
    one that reports itself as DCMTK. A missing tool is a hard failure.
    """
    if name in _DCMTK_CACHE:
        return _DCMTK_CACHE[name]
    candidates = []
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK) and str(p) not in candidates:
            candidates.append(str(p))
    for c in candidates:
        try:
            out = subprocess.run([c, "--version"], capture_output=True, timeout=10, env=tool_env())
        except (OSError, subprocess.TimeoutExpired):
            continue
        if b"dcmtk" in (out.stdout + out.stderr).lower():
            _DCMTK_CACHE[name] = c
            return c
    pytest.fail(
        f"REQUIRED PEER MISSING: DCMTK `{name}` not found (apt-get install -y dcmtk); "
        f"candidates on PATH: {candidates}",
        pytrace=False,
    )


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"REQUIRED PEER MISSING: `{name}` (apt-get install -y {package})", pytrace=False)
    return path


def tool_env() -> dict:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # DCMTK leaves Nagle on otherwise (~45 ms per message)
    return env


def run(args: list, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command with TCP_NODELAY=1, capture text output, enforce a timeout."""
    args = [str(a) for a in args]
    try:
        cp = subprocess.run(args, capture_output=True, text=True, errors="replace",
                            timeout=timeout, env=kw.pop("env", tool_env()), **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout}s: {' '.join(args)}\nstdout: {e.stdout}\nstderr: {e.stderr}")
    if check:
        assert cp.returncode == 0, (
            f"`{' '.join(args)}` exited {cp.returncode}\n--- stdout\n{cp.stdout[-4000:]}\n--- stderr\n{cp.stderr[-4000:]}"
        )
    return cp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def storescp(port: int, out_dir: Path, aet: str = "STORESCP") -> Iterator[subprocess.Popen]:
    """A DCMTK storescp accepting every transfer syntax it knows, writing the
    data sets bit-preserved into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir.parent / f"storescp-{port}.log", "wb")
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", aet, "+xa", "+B", "-od", str(out_dir), str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=tool_env(),
    )
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


# ---------------------------------------------------------------------------
# Test files
# ---------------------------------------------------------------------------

def token() -> str:
    return secrets.token_hex(4).upper()


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_class: str
    sop_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    transfer_syntax: str


def read_instance(path: Path) -> Instance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Instance(
        path=Path(path),
        sop_class=str(ds.SOPClassUID),
        sop_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        patient_id=str(ds.get("PatientID", "")),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
    )


def make_instance(src: Path, dst: Path, *, patient_id: str | None = None, study_uid: str | None = None,
                  series_uid: str | None = None, sop_uid: str | None = None, **attrs) -> Instance:
    """Copy real file `src` to `dst` with new Study/Series/SOP Instance UIDs
    (or the given ones) and other attributes set by keyword. The transfer
    syntax, pixel data and every untouched element stay as they were (raw
    values, e.g. ISO 2022 encoded names, are written back byte for byte)."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if patient_id is not None:
        ds.PatientID = patient_id
    for k, v in attrs.items():
        setattr(ds, k, v)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return read_instance(dst)


def make_series(src: Path, dst_dir: Path, n: int, *, patient_id: str, study_uid: str,
                series_uid: str | None = None, **attrs) -> list[Instance]:
    series_uid = series_uid or generate_uid()
    out = []
    for i in range(n):
        out.append(make_instance(src, Path(dst_dir) / f"{series_uid[-12:]}-{i + 1}.dcm", patient_id=patient_id,
                                 study_uid=study_uid, series_uid=series_uid, InstanceNumber=i + 1, **attrs))
    return out


# Every transfer syntax of the contract, each carried by a real file:
# (case id, directory key, file name, transfer syntax UID, sender, getscu option)
#
# The sender must put exactly the file's transfer syntax on the wire, or the
# server cannot be asked to give that syntax back:
#   dcmsend --decompress-never proposes only the file's syntax for compressed
#   and deflated files; storescu -xi proposes only Implicit VR LE; for Explicit
#   VR LE/BE every DCMTK sender proposes all three uncompressed syntaxes (the
#   acceptor picks one, and DCMTK converts), so those go via pynetdicom with a
#   single transfer syntax.
# getscu proposes (preferred syntax, then the uncompressed ones) per SOP class;
# None means "retrieve with pynetdicom offering exactly the stored syntax"
# (getscu's +xi is broken in DCMTK 3.6.7: it proposes Explicit VR LE only).
TS_CASES = [
    ("implicit-le", "tf", "MR_small_implicit.dcm", "1.2.840.10008.1.2", "storescu-xi", None),
    ("explicit-le", "tf", "CT_small.dcm", "1.2.840.10008.1.2.1", "pynetdicom", None),
    ("explicit-be", "tf", "MR_small_bigendian.dcm", "1.2.840.10008.1.2.2", "pynetdicom", None),
    ("deflate", "tf", "image_dfl.dcm", "1.2.840.10008.1.2.1.99", "dcmsend", "+xd"),
    ("jpeg-baseline", "tf", "SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "dcmsend", "+xy"),
    ("jpeg-extended", "tf", "JPGExtended.dcm", "1.2.840.10008.1.2.4.51", "dcmsend", "+xx"),
    ("jpeg-lossless-sv1", "ds", "JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", "dcmsend", "+xs"),
    ("jpeg-ls-lossless", "tf", "MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "dcmsend", "+xt"),
    ("jpeg-ls-near-lossless", "tf", "JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", "dcmsend", "+xu"),
    ("j2k-lossless", "tf", "MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "dcmsend", "+xv"),
    ("j2k", "tf", "JPEG2000.dcm", "1.2.840.10008.1.2.4.91", "dcmsend", "+xw"),
    ("rle", "tf", "MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "dcmsend", "+xr"),
    # Larger and multi-frame real images.
    ("us-multiframe-jpeg-baseline", "tf", "examples_ybr_color.dcm", "1.2.840.10008.1.2.4.50", "dcmsend", "+xy"),
    ("enhanced-mr-rle", "ds", "emri_small_RLE.dcm", "1.2.840.10008.1.2.5", "dcmsend", "+xr"),
    ("cr-j2k-lossless-830k", "ds", "RG3_J2KR.dcm", "1.2.840.10008.1.2.4.90", "dcmsend", "+xv"),
    ("ct-512-j2k-lossless", "ds", "693_J2KR.dcm", "1.2.840.10008.1.2.4.90", "dcmsend", "+xv"),
    ("mr-1024-explicit-le-2M", "ds", "MR2_UNCR.dcm", "1.2.840.10008.1.2.1", "pynetdicom", None),
    ("us-implicit-870k", "ds", "gdcm-US-ALOKA-16.dcm", "1.2.840.10008.1.2", "storescu-xi", None),
]

UNCOMPRESSED_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def ts_case_path(dir_key: str, name: str) -> Path:
    return (TEST_FILES if dir_key == "tf" else data_store_dir()) / name


def make_htj2k_instance(dst: Path, patient_id: str) -> Instance:
    """A real HTJ2K (lossless) instance: MR_small's pixels encoded with
    OpenJPH's ojph_compress (Debian package openjph-tools)."""
    ojph = require_binary("ojph_compress", "openjph-tools")
    src = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    with tempfile.TemporaryDirectory() as td:
        raw = Path(td) / "in.rawl"
        j2c = Path(td) / "out.j2c"
        raw.write_bytes(src.pixel_array.astype("<i2").tobytes())
        run([ojph, "-i", raw, "-o", j2c, "-reversible", "true", "-num_comps", "1", "-signed", "true",
             "-bit_depth", "16", "-dims", f"{{{src.Columns},{src.Rows}}}", "-downsamp", "{1,1}"], timeout=30)
        codestream = j2c.read_bytes()
    assert codestream[:4] == b"\xff\x4f\xff\x51", "ojph_compress did not write a J2K codestream"
    src.PixelData = encapsulate([codestream])
    src["PixelData"].VR = "OB"
    src.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
    src.StudyInstanceUID = generate_uid()
    src.SeriesInstanceUID = generate_uid()
    src.SOPInstanceUID = generate_uid()
    src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
    src.PatientID = patient_id
    src.SeriesDescription = "HTJ2K encoded by ojph_compress from MR_small"
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.save_as(dst, enforce_file_format=True)
    return read_instance(dst)


# ---------------------------------------------------------------------------
# Raw data sets (for malformed input)
# ---------------------------------------------------------------------------

def split_file(path: Path) -> tuple[FileMetaDataset, bytes]:
    """(file meta, the encoded data set bytes exactly as in the file)."""
    from pynetdicom.dsutils import split_dataset

    meta, offset = split_dataset(Path(path))
    return meta, Path(path).read_bytes()[offset:]


def write_raw_file(path: Path, sop_class: str, sop_uid: str, transfer_syntax: str, dataset_bytes: bytes) -> Path:
    """A DICOM file whose meta names `sop_class`/`sop_uid`/`transfer_syntax`
    and whose data set is `dataset_bytes`, verbatim (may be garbage)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    fp = pydicom.filebase.DicomFileLike(buf)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    buf.write(dataset_bytes)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def encode_dataset(ds: Dataset, transfer_syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """The data set (no meta) encoded in an uncompressed transfer syntax."""
    ts = UID(transfer_syntax)
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian = ts.is_little_endian
    buf.is_implicit_VR = ts.is_implicit_VR
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def explicit_le_element(group: int, elem: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; `length` may lie about the value."""
    length = len(value) if length is None else length
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), length) + value


# ---------------------------------------------------------------------------
# pynetdicom SCU helpers
# ---------------------------------------------------------------------------

SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)


def _ae(timeout: float = 30, calling_aet: str = "E2E-SCU") -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


@contextmanager
def association(server, contexts: Iterable, timeout: float = 30, ext_neg=None, evt_handlers=None,
                max_pdu: int = 16382, ae_title: str | None = None, calling_aet: str = "E2E-SCU"):
    ae = _ae(timeout, calling_aet)
    ae.maximum_pdu_size = max_pdu
    ae.requested_contexts = list(contexts)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=ae_title or server.ae_title,
                         ext_neg=ext_neg, evt_handlers=evt_handlers)
    try:
        assert assoc.is_established, f"association with meridian {'rejected' if assoc.is_rejected else 'failed'}"
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def c_echo(server, timeout: float = 10) -> int:
    with association(server, [build_context(Verification)], timeout=timeout) as assoc:
        status = assoc.send_c_echo()
        assert "Status" in status, "no C-ECHO response"
        return status.Status


def dcmtk_echo(server, timeout: float = 10) -> subprocess.CompletedProcess:
    return run([dcmtk("echoscu"), "-aec", server.ae_title, "-to", "5", "127.0.0.1", server.dicom_port],
               timeout=timeout)


FIND_MODELS = {
    "study": StudyRootQueryRetrieveInformationModelFind,
    "patient": PatientRootQueryRetrieveInformationModelFind,
}
GET_MODELS = {
    "study": StudyRootQueryRetrieveInformationModelGet,
    "patient": PatientRootQueryRetrieveInformationModelGet,
}


def c_find(server, level: str, keys: dict, model: str = "study", charset: str | None = None,
           expect_status: int = SUCCESS, timeout: float = 30) -> list[Dataset]:
    """C-FIND with `keys` (keyword -> value; "" asks for the attribute as a
    return key). Returns the pending identifiers; asserts the final status."""
    ident = Dataset()
    if charset:
        ident.SpecificCharacterSet = charset
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    results = []
    final = None
    with association(server, [build_context(FIND_MODELS[model])], timeout=timeout) as assoc:
        for status, identifier in assoc.send_c_find(ident, FIND_MODELS[model]):
            assert "Status" in status, "C-FIND: no response (association aborted or timed out)"
            if status.Status in PENDING:
                assert identifier is not None, "C-FIND pending response without identifier"
                results.append(identifier)
            else:
                final = status
    assert final is not None, "C-FIND: no final response"
    assert final.Status == expect_status, (
        f"C-FIND {level} {keys}: final status 0x{final.Status:04X}, wanted 0x{expect_status:04X} "
        f"({final.get('ErrorComment', '')})")
    return results


def count_study_instances(server, **keys) -> int:
    """Sum of NumberOfStudyRelatedInstances over the studies matching `keys`."""
    rows = c_find(server, "STUDY", {"StudyInstanceUID": "", "NumberOfStudyRelatedInstances": "", **keys})
    return sum(int(r.NumberOfStudyRelatedInstances) for r in rows)


def c_store_raw(server, path: Path, timeout: float = 10) -> Dataset:
    """Send the data set of file `path` byte for byte (never decoded or
    re-encoded by pynetdicom), in the transfer syntax its meta names, with the
    SOP class/instance of its meta. Returns the response status data set (empty
    if the association was aborted or the response timed out)."""
    meta, _ = split_file(path)
    ctx = build_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    old = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(server, [ctx], timeout=timeout) as assoc:
            return assoc.send_c_store(Path(path))
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = old


def c_store_raw_many(server, paths: list[Path], timeout: float = 10) -> list[Dataset]:
    """Like c_store_raw, for several files on one association (in order)."""
    metas = [split_file(p)[0] for p in paths]
    contexts = []
    for m in metas:
        pair = (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
        if pair not in contexts:
            contexts.append(pair)
    old = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(server, [build_context(c, [t]) for c, t in contexts], timeout=timeout) as assoc:
            return [assoc.send_c_store(Path(p)) for p in paths]
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = old


def c_get(server, level: str, keys: dict, out_dir: Path, storage: list[tuple[str, str]],
          model: str = "study", timeout: float = 60) -> tuple[Dataset, list[Path]]:
    """pynetdicom C-GET proposing exactly the (SOP class, transfer syntax)
    pairs in `storage` for the sub-operations; received data sets are written
    as received. Returns (final status, files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    received = []

    def on_store(event):
        p = out_dir / f"{event.request.AffectedSOPInstanceUID}.dcm"
        p.write_bytes(event.encoded_dataset())
        received.append(p)
        return 0x0000

    contexts = [build_context(GET_MODELS[model])]
    roles = []
    for sop_class, ts in storage:
        contexts.append(build_context(sop_class, [ts]))
        if sop_class not in [r.sop_class_uid for r in roles]:
            roles.append(build_role(sop_class, scp_role=True))
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    final = Dataset()
    with association(server, contexts, timeout=timeout, ext_neg=roles,
                     evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for status, _ in assoc.send_c_get(ident, GET_MODELS[model]):
            if "Status" in status and status.Status not in PENDING:
                final = status
    return final, received


# ---------------------------------------------------------------------------
# DCMTK retrieval helpers
# ---------------------------------------------------------------------------

def getscu(server, out_dir: Path, keys: dict, ts_option: str = "+xe", model: str = "-S",
           timeout: float = 60) -> list[Path]:
    """DCMTK getscu; files arrive bit-preserved in `out_dir`. getscu exits 0
    whatever the DIMSE status, so the final response is read from its log."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [dcmtk("getscu"), "-v", model, "-aec", server.ae_title, ts_option, "+B", "-od", out_dir]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    args += ["127.0.0.1", server.dicom_port]
    cp = run(args, timeout=timeout)
    log = cp.stdout + cp.stderr
    assert "Received C-GET Response (Success)" in log, f"getscu: no successful final C-GET response\n{log[-3000:]}"
    failed = re.findall(r"Number of Failed Suboperations\s*:\s*(\d+)", log)
    assert all(int(n) == 0 for n in failed), f"getscu: failed sub-operations\n{log[-3000:]}"
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def movescu(server, dest_aet: str, keys: dict, model: str = "-S", timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
    """DCMTK movescu; exits 0 whatever the DIMSE status, so with check=True
    the final response must read Success."""
    args = [dcmtk("movescu"), "-v", model, "-aec", server.ae_title, "-aem", dest_aet]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    args += ["127.0.0.1", server.dicom_port]
    cp = run(args, timeout=timeout, check=check)
    if check:
        log = cp.stdout + cp.stderr
        assert "Received Final Move Response (Success)" in log, f"movescu: final response not Success\n{log[-3000:]}"
    return cp


def dcmsend(server, files: Iterable[Path], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """dcmsend without decompression: each file goes in its own transfer
    syntax. dcmsend exits 0 even when the SCP answers with a failure, so with
    check=True its status summary must count every file as SUCCESS."""
    files = list(files)
    cp = run([dcmtk("dcmsend"), "-v", "--decompress-never", "-aec", server.ae_title,
              "127.0.0.1", server.dicom_port, *files], timeout=timeout, check=check)
    if check:
        log = cp.stdout + cp.stderr
        m = re.search(r"with status SUCCESS\s*:\s*(\d+)", log)
        assert m and int(m.group(1)) == len(files) and "with status ERROR" not in log, (
            f"dcmsend: not every instance stored with SUCCESS\n{log[-3000:]}")
    return cp


def storescu(server, files: Iterable[Path], extra: Iterable[str] = (), timeout: float = 120,
             check: bool = True) -> subprocess.CompletedProcess:
    """DCMTK storescu (exits non-zero when a C-STORE fails)."""
    return run([dcmtk("storescu"), "-v", "-aec", server.ae_title, *extra, "127.0.0.1", server.dicom_port, *files],
               timeout=timeout, check=check)


# ---------------------------------------------------------------------------
# Comparing instances
# ---------------------------------------------------------------------------

def index_by_sop(files: Iterable[Path]) -> dict[str, Path]:
    out = {}
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # noqa: BLE001 - storescp logs etc. are not DICOM
            continue
        if "SOPInstanceUID" in ds:
            out[str(ds.SOPInstanceUID)] = Path(p)
    return out


def _elements(ds: Dataset) -> dict:
    # (FFFC,FFFC) Data Set Trailing Padding: DCMTK senders drop it (allowed by
    # PS3.10 7.2), so it is not part of what a server can be asked to keep.
    return {tag: ds[tag] for tag in ds.keys() if tag.group != 0x0002 and tag != 0xFFFCFFFC}


def assert_same_instance(original: Path, received: Path, same_ts: bool = True) -> None:
    """Same transfer syntax, every data set element equal (group 0002 may
    differ), and Pixel Data bytes exactly equal.

    same_ts=False is for uncompressed originals sent by a DCMTK tool that
    proposed all three uncompressed transfer syntaxes (the negotiation, not the
    server, picked the one on the wire): then any uncompressed syntax may come
    back, and public elements and decoded pixels must be equal."""
    a = pydicom.dcmread(original)
    b = pydicom.dcmread(received)
    ts_a, ts_b = str(a.file_meta.TransferSyntaxUID), str(b.file_meta.TransferSyntaxUID)
    relaxed = not same_ts and ts_a in UNCOMPRESSED_TS and ts_b in UNCOMPRESSED_TS
    if not relaxed:
        assert ts_b == ts_a, f"{received.name}: transfer syntax {UID(ts_b).name}, sent as {UID(ts_a).name}"
    ea, eb = _elements(a), _elements(b)
    if relaxed:
        ea = {t: e for t, e in ea.items() if not t.is_private}
        eb = {t: e for t, e in eb.items() if not t.is_private}
    missing = sorted(set(ea) - set(eb))
    extra = sorted(set(eb) - set(ea))
    assert not missing and not extra, f"elements missing {missing} / added {extra} in {received.name}"
    diffs = []
    for tag in ea:
        if tag == 0x7FE00010:
            continue
        same = ea[tag].value == eb[tag].value if relaxed else ea[tag] == eb[tag]
        if not same:
            diffs.append(f"{tag} sent {ea[tag]!r:.200} got {eb[tag]!r:.200}")
    assert not diffs, f"{received.name}: {len(diffs)} elements differ:\n" + "\n".join(diffs[:20])
    if "PixelData" in a:
        if relaxed and ts_a != ts_b:
            import numpy as np

            assert np.array_equal(a.pixel_array, b.pixel_array), f"{received.name}: pixels differ"
        else:
            pa, pb = a["PixelData"].value, b["PixelData"].value
            assert len(pa) == len(pb) and pa == pb, (
                f"{received.name}: Pixel Data differs ({len(pa)} bytes sent, {len(pb)} received)")


def send(server, inst: Instance, sender: str) -> None:
    """Send `inst` so that exactly its transfer syntax is on the wire."""
    if sender == "dcmsend":
        dcmsend(server, [inst.path])
    elif sender == "storescu-xi":
        storescu(server, [inst.path], extra=["-xi"])
    elif sender == "pynetdicom":
        status = c_store_raw(server, inst.path, timeout=60)
        assert status.get("Status") == SUCCESS, f"C-STORE {inst.path.name}: {status}"
    else:
        raise ValueError(sender)


def data_set_bytes(path: Path) -> bytes:
    return split_file(path)[1]


def stored_dcm_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in Path(data_dir).rglob("*.dcm") if p.is_file())
