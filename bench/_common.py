"""Shared helpers for Meridian's benchmarks (bench/ingest, bench/qido, bench/authz, bench/retrieve).

Everything here runs on 127.0.0.1 only. Servers are started as child processes in
their own session and stopped (SIGTERM, then SIGKILL) when the bench is done with
them, including on Ctrl-C.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MERIDIAN_BIN = Path(os.environ.get("MERIDIAN_BIN", REPO / "target" / "release" / "meridian"))
WORK = Path(os.environ.get("BENCH_WORKDIR", "/tmp/meridian-bench"))

# Always DCMTK's tools, never pynetdicom's same-named console scripts that pip puts
# earlier on PATH (pyenv shims, /usr/local/bin).
DCMSEND = "/usr/bin/dcmsend"
STORESCP = "/usr/bin/storescp"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"

# DCMTK (and Orthanc, built on it) leave Nagle on without this: ~45 ms per C-STORE on loopback.
os.environ["TCP_NODELAY"] = "1"

# Largest PDU every receiver accepts: Meridian's default; Orthanc and storescp are set to match.
MAX_PDU = 65536

_children: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, log_path: Path, env=None, cwd=None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab")
    p = subprocess.Popen([str(a) for a in args], stdout=fh, stderr=subprocess.STDOUT,
                         env=full_env, cwd=cwd, start_new_session=True)
    fh.close()
    _children.append(p)
    return p


def stop(p: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """Stop one process we started (and its process group: storescp --fork children)."""
    if p is None:
        return
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    else:
        # the leader exited; forked children may still be in its group
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    if p in _children:
        _children.remove(p)


def _stop_all() -> None:
    for p in list(_children):
        stop(p, timeout=5)


atexit.register(_stop_all)


def _sigterm(signum, frame):  # turn SIGTERM into a clean exit so atexit runs
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _sigterm)


def http_get(url: str, timeout: float = 2.0, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}:\n"
                               + tail(log_path))
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n" + tail(log_path))


def wait_tcp(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n" + tail(log_path))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s:\n" + tail(log_path))


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def kib(v: str | None) -> int:
    return int(v.split()[0]) if v else 0


def machine_note() -> str:
    """Cores and load average: on a shared 2-core machine, concurrent work skews every figure."""
    l1, l5, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {l1:.2f} (1 min) {l5:.2f} (5 min)"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def percentile(xs, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ------------------------------------------------------------------ servers

class Meridian:
    name = "meridian"

    def __init__(self, data_dir: Path, log_dir: Path, extra_args=(), rust_log=None, binary: Path | None = None,
                 log_name: str = "meridian.log", calling_aes=()):
        binary = binary or MERIDIAN_BIN
        if not binary.exists():
            raise RuntimeError(f"{binary} not found: run `cargo build --release` "
                               "(or set MERIDIAN_BIN, or leave meridian out of BENCH_TARGETS)")
        if calling_aes:
            # Unknown calling AE titles are rejected: register the senders to a bench site.
            aes = [a for ae in calling_aes for a in ("--ae", ae)]
            cp = subprocess.run([str(binary), "site", "add", "bench", "--name", "Bench (synthetic)", *aes,
                                 "--data-dir", str(data_dir)], capture_output=True, text=True)
            if cp.returncode != 0:
                raise RuntimeError(f"registering {calling_aes} failed: {cp.stderr}")
        # Every DICOMweb call needs a credential: an admin API token for the bench client.
        cp = subprocess.run([str(binary), "token", "create", "--name", "bench", "--role", "admin", "--days", "1",
                             "--data-dir", str(data_dir)], capture_output=True, text=True)
        if cp.returncode != 0 or not cp.stdout.strip():
            raise RuntimeError(f"creating a bench API token failed: {cp.stderr}")
        self.headers = {"Authorization": f"Bearer {cp.stdout.strip().splitlines()[-1]}"}
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "MERIDIAN"
        self.data_dir = data_dir
        self.log_path = log_dir / log_name
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.base}/dicom-web"
        env = {"RUST_LOG": rust_log or os.environ.get("BENCH_RUST_LOG", "warn")}
        self.proc = spawn([binary, "serve", "--data-dir", data_dir,
                           "--http", f"127.0.0.1:{self.http_port}",
                           "--dicom", f"127.0.0.1:{self.dicom_port}",
                           "--ae-title", self.aet, *extra_args], self.log_path, env=env)
        try:
            wait_http(f"{self.base}/healthz", self.proc, self.log_path, timeout=120)
            wait_tcp(self.dicom_port, self.proc, self.log_path)
        except Exception:
            self.stop()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        stop(self.proc)


class Orthanc:
    name = "orthanc"

    def __init__(self, root: Path, dicom_threads: int = 8, plugins: bool = True, extra_config: dict | None = None):
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "ORTHANC"
        root.mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        self.log_path = root / "orthanc.stdout.log"
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.base}/dicom-web"
        cfg = {
            "Name": "bench",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),   # default SQLite index, same disk
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # Orthanc's default is 4 DICOM server threads; give it one per bench association.
            "DicomThreadsCount": dicom_threads,
            # Same largest PDU as Meridian's default (Orthanc's own default is 16384).
            "MaximumPduLength": MAX_PDU,
            "Plugins": ["/usr/share/orthanc/plugins"] if plugins else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        cfg.update(extra_config or {})
        self.config = cfg
        cfg_path = root / "orthanc.json"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        self.proc = spawn([ORTHANC, f"--logdir={root / 'logs'}", cfg_path], self.log_path)
        try:
            wait_http(f"{self.base}/system", self.proc, self.log_path, timeout=60)
            wait_tcp(self.dicom_port, self.proc, self.log_path)
        except Exception:
            self.stop()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def count_instances(self) -> int:
        _, body = http_get(f"{self.base}/statistics", timeout=30)
        return int(json.loads(body)["CountInstances"])

    def stop(self):
        stop(self.proc, timeout=60)


def durable_storescp_lib() -> Path:
    """Builds bench/durable-storescp.c into the work directory (when the source is newer)."""
    src = Path(__file__).resolve().parent / "durable-storescp.c"
    lib = WORK / "durable-storescp.so"
    if not lib.exists() or lib.stat().st_mtime < src.stat().st_mtime:
        WORK.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            sys.exit("storescp-durable needs a C compiler (cc) to build bench/durable-storescp.c")
        subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"],
                       check=True)
    return lib


class StoreSCP:
    name = "storescp"

    def __init__(self, out_dir: Path | None, log_dir: Path, aet: str = "STORESCP",
                 durable: bool = False):
        """Writes every file to `out_dir`; with `out_dir=None` it runs with --ignore
        (receives everything, stores nothing) and logs each store (-v). `durable`
        preloads bench/durable-storescp.c: each file is fsynced, then its directory,
        then a 4 KiB journal record is appended and fdatasynced, before the response."""
        self.dicom_port = free_port()
        self.aet = aet
        self.out_dir = out_dir
        self.log_path = log_dir / f"{aet.lower()}.log"
        if out_dir is None:
            store = ["-v", "--ignore"]
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            store = ["-od", str(out_dir)]
        env = None
        if durable:
            if out_dir is None:
                raise ValueError("a durable storescp needs an output directory")
            env = {"LD_PRELOAD": str(durable_storescp_lib()), "DURABLE_DIR": str(out_dir)}
        # --fork: one child per association, so 8 concurrent associations are served at once.
        self.proc = spawn([STORESCP, "--fork", "-dhl", "-pdu", str(MAX_PDU), "-aet", self.aet, *store,
                           str(self.dicom_port)], self.log_path, env=env)
        wait_tcp(self.dicom_port, self.proc, self.log_path)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        stop(self.proc)


# ------------------------------------------------------------------ data: the SYNTHETIC CT series

CT_SOURCE = "693_UNCI.dcm"  # pydicom-data: a real 512x512 16-bit CT slice
CT_GEN_VERSION = "1"


def ct_source_slice() -> Path:
    import data_store  # pydicom-data wheel
    p = Path(data_store.__file__).parent / "data" / CT_SOURCE
    if not p.exists():
        sys.exit(f"{p} missing: pip install pydicom-data (scripts/install-peers)")
    return p


def ct_series(slices: int) -> list[Path]:
    """bench/ingest's SYNTHETIC CT series of `slices` slices: the same files, UIDs and cache
    (WORK/ingest-ct-N/all, marker .complete), so bench/ingest and bench/retrieve share it.
    Regenerated when missing or incomplete. (bench/ingest also adds split<N>/ directories of
    hard links; it creates them on demand when they are missing.)"""
    cache = WORK / f"ingest-ct-{slices}"
    marker = cache / ".complete"
    stamp = f"v{CT_GEN_VERSION} {CT_SOURCE} {slices}"
    files_dir = cache / "all"
    if marker.exists() and marker.read_text() == stamp:
        files = sorted(files_dir.glob("*.dcm"))
        if len(files) == slices:
            return files
    import pydicom
    from pydicom.uid import generate_uid

    log(f"generating {slices} SYNTHETIC CT slices from pydicom-data {CT_SOURCE} into {cache} ...")
    t0 = time.time()
    shutil.rmtree(cache, ignore_errors=True)
    files_dir.mkdir(parents=True)
    ds = pydicom.dcmread(ct_source_slice())
    study = generate_uid(entropy_srcs=["meridian-bench-ingest", "study", str(slices)])
    series = generate_uid(entropy_srcs=["meridian-bench-ingest", "series", str(slices)])
    spacing = 0.625
    x, y, z0 = (float(v) for v in ds.ImagePositionPatient)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SeriesDescription = "SYNTHETIC bench volume"
    ds.StudyDescription = "SYNTHETIC bench study"
    ds.StudyID = "BENCH"
    ds.AccessionNumber = "BENCHINGEST"
    ds.SeriesNumber = 900
    ds.SliceThickness = spacing
    ds.SpacingBetweenSlices = spacing
    if "SourceImageSequence" in ds:
        del ds.SourceImageSequence
    files = []
    for i in range(slices):
        sop = generate_uid(entropy_srcs=["meridian-bench-ingest", "sop", str(slices), str(i)])
        z = z0 - i * spacing
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [x, y, round(z, 4)]
        ds.SliceLocation = round(z, 4)
        f = files_dir / f"slice{i:05d}.dcm"
        ds.save_as(f, enforce_file_format=True)
        files.append(f)
    marker.write_text(stamp)
    log(f"  generated in {time.time() - t0:.1f}s")
    return files
