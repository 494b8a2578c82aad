#!/usr/bin/env python3
"""A real syslog-over-TLS audit repository for tests: rsyslogd (Debian's
`rsyslog` + `rsyslog-gnutls`) listening with imtcp and the gtls stream driver
(RFC 5425), on a loopback port, with certificates made here at start-up.

    python3 tests/e2e/syslog_receiver.py --dir DIR [--port N] [--require-client-cert]

Makes DIR/ca.pem (the CA that signs everything), DIR/server.pem|key (CN and
SAN localhost, 127.0.0.1, ::1) and DIR/client.pem|key (for mutual TLS), starts
`rsyslogd -n -f DIR/rsyslog.conf -i DIR/rsyslogd.pid`, waits until it listens,
and prints one JSON line: {"port", "ca", "client_cert", "client_key",
"received", "pid"}. Each message received is one JSON line in `received`
({"pri", "hostname", "app", "procid", "msgid", "msg", "raw"}).

Runs until its standard input closes (so a test that holds the pipe ends it
by dropping it, even when it panics), or until SIGTERM/SIGINT; then stops
rsyslogd. With --require-client-cert the server asks for a client
certificate signed by the CA and refuses connections without one.

Certificates come from the `openssl` command line tool (Debian's openssl,
present wherever ca-certificates is).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def find_rsyslogd() -> str:
    for p in (shutil.which("rsyslogd"), "/usr/sbin/rsyslogd", "/sbin/rsyslogd"):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("syslog_receiver: rsyslogd not found (apt-get install rsyslog rsyslog-gnutls)")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_certs(d: Path) -> None:
    """An EC P-256 CA, a server certificate and a client certificate, valid for two days."""
    (d / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n")
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
        "authorityKeyIdentifier=keyid\n")
    (d / "client.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
        "subjectAltName=DNS:meridian-test-client\n"
        "authorityKeyIdentifier=keyid\n")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", *curve, "-keyout", "ca.key", "-out", "ca.csr",
            "-subj", "/CN=Meridian test audit CA", cwd=d)
    openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem",
            "-days", "2", "-extfile", "ca.ext", cwd=d)
    for name, cn in (("server", "localhost"), ("client", "meridian-test-client")):
        openssl("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext", cwd=d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(d: Path, port: int, require_client_cert: bool) -> Path:
    work = d / "work"
    work.mkdir(exist_ok=True)
    auth = "x509/certvalid" if require_client_cert else "anon"
    conf = d / "rsyslog.conf"
    conf.write_text(f"""
global(
  workDirectory="{work}"
  maxMessageSize="64k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{d / 'ca.pem'}"
  defaultNetstreamDriverCertFile="{d / 'server.pem'}"
  defaultNetstreamDriverKeyFile="{d / 'server.key'}"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}")
template(name="audit_json" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}}
ruleset(name="audit") {{
  action(type="omfile" file="{d / 'received.jsonl'}" template="audit_json" flushOnTXEnd="on")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="audit")
""")
    return conf


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"syslog_receiver: rsyslogd exited with {proc.returncode}")
        # `ss` would avoid the probe connection; rsyslog just logs an aborted handshake.
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"syslog_receiver: rsyslogd did not listen on {port} within {timeout}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--require-client-cert", action="store_true")
    a = ap.parse_args()
    d = a.dir.resolve()
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.pem").exists():
        make_certs(d)
    port = a.port or free_port()
    conf = write_conf(d, port, a.require_client_cert)
    received = d / "received.jsonl"
    received.touch()
    pidfile = d / "rsyslogd.pid"
    pidfile.unlink(missing_ok=True)
    log = open(d / "rsyslogd.log", "ab")
    proc = subprocess.Popen([find_rsyslogd(), "-n", "-f", str(conf), "-i", str(pidfile)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    stopping = threading.Event()

    def stop(*_):
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_listening(port, proc)
        print(json.dumps({
            "port": port,
            "ca": str(d / "ca.pem"),
            "client_cert": str(d / "client.pem"),
            "client_key": str(d / "client.key"),
            "received": str(received),
            "pid": proc.pid,
        }), flush=True)

        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            finally:
                stopping.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        while not stopping.wait(0.2):
            if proc.poll() is not None:
                sys.exit(f"syslog_receiver: rsyslogd exited with {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


if __name__ == "__main__":
    main()
