//! The forwarder against a real audit repository: rsyslogd with imtcp and
//! the gtls stream driver (RFC 5425), started by `tests/e2e/syslog_receiver.py`
//! with certificates made at test time.
//!
//! Without rsyslogd (or python3, openssl) these tests say so and pass, except
//! under CI (`CI` set), where a missing peer fails them: install it with
//! `scripts/install-peers` (`apt-get install rsyslog rsyslog-gnutls`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use meridian_audit::{AuditEvent, GENESIS, Record, seal};
use meridian_auditsink::{SinkConfig, SinkHandle, SyslogTls, spawn};

/// A running rsyslogd (through its Python wrapper, which stops it when its
/// standard input closes).
struct Receiver {
    child: Child,
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    received: PathBuf,
}

impl Receiver {
    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The messages received so far, one JSON object each.
    fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn on_path(tool: &str, also: &[&str]) -> bool {
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    in_path || also.iter().any(|p| Path::new(p).is_file())
}

/// Whether the peers are here; under CI their absence is a failure.
fn peers_present() -> bool {
    let missing: Vec<&str> = [
        (
            "rsyslogd",
            on_path("rsyslogd", &["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]),
        ),
        ("python3", on_path("python3", &[])),
        ("openssl", on_path("openssl", &["/usr/bin/openssl"])),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(t, _)| t)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let gnutls = Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists();
    let msg = format!(
        "REQUIRED PEER MISSING: {} (rsyslog-gnutls installed: {gnutls}); install with scripts/install-peers \
         (apt-get install rsyslog rsyslog-gnutls)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("WARNING: skipping the syslog TLS test: {msg}");
    false
}

static DIRS: AtomicU32 = AtomicU32::new(0);

fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "meridian-syslog-{name}-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_receiver(dir: &Path, port: Option<u16>, require_client_cert: bool) -> Receiver {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/syslog_receiver.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg("--dir").arg(dir);
    if let Some(p) = port {
        cmd.arg("--port").arg(p.to_string());
    }
    if require_client_cert {
        cmd.arg("--require-client-cert");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 tests/e2e/syslog_receiver.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!(
            "syslog_receiver.py did not start rsyslogd ({e}): {line:?}; its log:\n{}",
            std::fs::read_to_string(dir.join("rsyslogd.log")).unwrap_or_default()
        )
    });
    let path = |k: &str| PathBuf::from(info[k].as_str().unwrap());
    Receiver {
        dir: dir.to_owned(),
        port: info["port"].as_u64().unwrap() as u16,
        ca: path("ca"),
        client_cert: path("client_cert"),
        client_key: path("client_key"),
        received: path("received"),
        child,
    }
}

fn records(n: i64) -> Vec<Record> {
    let kinds = [
        (
            "QIDO-RS GET /dicom-web/studies",
            None,
            "200",
            "StudyDate=20240101&PatientName=O'Brien<&>",
        ),
        (
            "WADO-RS retrieve GET /dicom-web/studies/{study}",
            Some("1.2.826.0.1.3680043.8.498.7"),
            "200",
            "",
        ),
        ("LOGIN-FAILED", None, "401", ""),
    ];
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let (action, study, outcome, detail) = kinds[(seq as usize - 1) % kinds.len()];
            let e = AuditEvent {
                at_ms: 1_714_564_800_000 + seq,
                actor: "alice".into(),
                role: "radiologist".into(),
                action: action.into(),
                patient_id: study.map(|_| "PAT-7".to_owned()),
                issuer: study.map(|_| "HOSP".to_owned()),
                study_uid: study.map(str::to_owned),
                accession: study.map(|_| "A-1".to_owned()),
                source: "192.0.2.10:50000".into(),
                outcome: outcome.into(),
                detail: detail.into(),
            };
            let r = seal(&prev, seq, e);
            prev = r.hash.clone();
            r
        })
        .collect()
}

const EXPECTED_EVENT_IDS: [&str; 3] = ["110112", "110103", "110114"];

/// A received message is a well-formed RFC 5424 message from Meridian carrying
/// a DICOM audit message of the given record.
fn check_message(m: &serde_json::Value, r: &Record) {
    assert_eq!(m["pri"], "85", "{m}");
    assert_eq!(m["app"], "meridian", "{m}");
    assert_eq!(m["msgid"], "IHE+RFC-3881", "{m}");
    assert_eq!(m["hostname"], "test-host", "{m}");
    let raw = m["raw"].as_str().unwrap();
    assert!(
        raw.starts_with("<85>1 2024-05-01T12:00:00.00"),
        "RFC 5424 header with the event's time: {raw}"
    );
    let xml = m["msg"].as_str().unwrap();
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "AuditMessage");
    let event_id = root
        .descendants()
        .find(|n| n.has_tag_name("EventID"))
        .and_then(|n| n.attribute("csd-code"))
        .unwrap();
    let expected = EXPECTED_EVENT_IDS[(r.seq as usize - 1) % 3];
    assert_eq!(event_id, expected, "record {}", r.seq);
    assert_eq!(xml, meridian_audit::dicom::to_dicom_audit_message(r));
}

fn config(tls: SyslogTls) -> SinkConfig {
    SinkConfig {
        hostname: "test-host".into(),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..SinkConfig::new(tls)
    }
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn send_all(sink: &SinkHandle, rs: &[Record]) {
    for r in rs {
        assert!(sink.send(r), "queue has room");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_records_arrive_as_dicom_audit_messages() {
    if !peers_present() {
        return;
    }
    let dir = test_dir("basic");
    let rx = start_receiver(&dir, None, false);
    let tls = SyslogTls::new(&format!("localhost:{}", rx.port), &rx.ca).unwrap();
    let sink = spawn(config(tls));
    let rs = records(3);
    send_all(&sink, &rs);
    let got = rx.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        3,
        "rsyslogd received {got:?}; its log:\n{}",
        rx.log()
    );
    for (m, r) in got.iter().zip(&rs) {
        check_message(m, r);
    }
    wait_until("3 sent", Duration::from_secs(5), || sink.stats().sent == 3).await;
    assert_eq!(sink.stats().dropped, 0);
    let metrics = prometheus::gather();
    let sent = metrics
        .iter()
        .find(|f| f.name() == "meridian_audit_syslog_sent_total")
        .expect("sent counter registered");
    assert!(sent.get_metric()[0].get_counter().get_value() >= 3.0);
    drop(rx);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_verified() {
    if !peers_present() {
        return;
    }
    let dir = test_dir("verify");
    let rx = start_receiver(&dir, None, false);
    // Another receiver's CA does not vouch for this one.
    let other = test_dir("verify-other");
    let rx2 = start_receiver(&other, None, false);
    let wrong_ca = SyslogTls::new(&format!("localhost:{}", rx.port), &rx2.ca).unwrap();
    let e = wrong_ca
        .connect()
        .await
        .err()
        .expect("an unknown issuer is refused");
    assert!(e.to_string().contains("certificate"), "{e}");
    // A name the certificate does not carry is refused.
    let wrong_name = SyslogTls::new(&format!("127.0.0.1:{}", rx.port), &rx.ca)
        .unwrap()
        .with_server_name("audit.example.org")
        .unwrap();
    let e = wrong_name
        .connect()
        .await
        .err()
        .expect("a wrong name is refused");
    assert!(e.to_string().contains("certificate"), "{e}");
    // By IP address, which the certificate names too.
    let by_ip = SyslogTls::new(&format!("127.0.0.1:{}", rx.port), &rx.ca).unwrap();
    let mut conn = by_ip.connect().await.unwrap();
    let r = &records(1)[0];
    let msg = meridian_audit::syslog::rfc5424(
        &meridian_audit::dicom::to_dicom_audit_message(r),
        "test-host",
        r.event.at_ms,
        meridian_audit::syslog::MSGID_IHE,
    );
    conn.send(&msg).await.unwrap();
    conn.close().await;
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", rx.log());
    check_message(&got[0], r);
    drop((rx, rx2));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&other).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    if !peers_present() {
        return;
    }
    let dir = test_dir("mtls");
    let rx = start_receiver(&dir, None, true);
    let addr = format!("localhost:{}", rx.port);
    // Without a client certificate nothing is accepted.
    let anonymous = spawn(config(SyslogTls::new(&addr, &rx.ca).unwrap()));
    send_all(&anonymous, &records(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.messages().len(),
        0,
        "accepted without a client certificate"
    );
    drop(anonymous);
    let rs = records(3);
    let tls = SyslogTls::with_client_auth(&addr, &rx.ca, &rx.client_cert, &rx.client_key).unwrap();
    let sink = spawn(config(tls));
    send_all(&sink, &rs);
    let got = rx.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        3,
        "rsyslogd received {got:?}; its log:\n{}",
        rx.log()
    );
    for (m, r) in got.iter().zip(&rs) {
        check_message(m, r);
    }
    drop(rx);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_for_a_repository_that_is_away() {
    if !peers_present() {
        return;
    }
    let dir = test_dir("reconnect");
    let mut rx = start_receiver(&dir, None, false);
    let port = rx.port;
    let sink = spawn(config(
        SyslogTls::new(&format!("localhost:{port}"), &rx.ca).unwrap(),
    ));
    let rs = records(6);
    send_all(&sink, &rs[..1]);
    assert_eq!(rx.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    wait_until("connected", Duration::from_secs(5), || {
        sink.stats().connected
    })
    .await;

    // The repository goes away; the forwarder notices the closed connection.
    rx.stop();
    wait_until("disconnected", Duration::from_secs(10), || {
        !sink.stats().connected
    })
    .await;
    send_all(&sink, &rs[1..4]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.stats().queued, 3, "held while the repository is away");

    // It comes back on the same port (same certificates, same output file).
    let rx = start_receiver(&dir, Some(port), false);
    send_all(&sink, &rs[4..]);
    let got = rx.wait_for(6, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        6,
        "rsyslogd received {got:?}; its log:\n{}",
        rx.log()
    );
    for (m, r) in got.iter().zip(&rs) {
        check_message(m, r);
    }
    assert_eq!(sink.stats().dropped, 0);
    drop(rx);
    std::fs::remove_dir_all(&dir).ok();
}

/// A self-signed certificate that vouches for nothing reachable: enough to
/// configure a forwarder whose repository never answers.
const UNUSED_CA: &str = "-----BEGIN CERTIFICATE-----
MIIB2jCCAX+gAwIBAgIUL4jzsv+JKvZzZuCLjy4w2/pW0EswCgYIKoZIzj0EAwIw
QTE/MD0GA1UEAww2TWVyaWRpYW4gYXVkaXRzaW5rIHRlc3QgZml4dHVyZSAobm90
IHRydXN0ZWQgYW55d2hlcmUpMCAXDTI2MTEyNDAwMDEyN1oYDzIxMjYxMDMxMDAw
MTI3WjBBMT8wPQYDVQQDDDZNZXJpZGlhbiBhdWRpdHNpbmsgdGVzdCBmaXh0dXJl
IChub3QgdHJ1c3RlZCBhbnl3aGVyZSkwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAT89Uo2gZFu7oPS6/n3Das4E4cTHPjWL6C5qTq4A9X2nfb5mzqnVdd+ATz8wzd6
cWxWcQnFX8ZQhvtWLmwGd8LJo1MwUTAdBgNVHQ4EFgQU4d+z29rkDv8PbpnYa62O
C+e4bEswHwYDVR0jBBgwFoAU4d+z29rkDv8PbpnYa62OC+e4bEswDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAgFpbVb9TyCsYhCfpaqpTp2QexGTQ
5chpO2NCJNBtntECIQCTCyJ4hMfg4rrqPfOq83+Wo47RGUO+CXGfsKS0q5vGZQ==
-----END CERTIFICATE-----
";

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = test_dir("drops");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, UNUSED_CA).unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sink = spawn(SinkConfig {
        queue_capacity: 2,
        ..config(SyslogTls::new(&format!("127.0.0.1:{port}"), &ca).unwrap())
    });
    let rs = records(5);
    let started = Instant::now();
    let accepted: Vec<bool> = rs.iter().map(|r| sink.send(r)).collect();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "send never waits"
    );
    assert_eq!(accepted, [true, true, false, false, false]);
    let s = sink.stats();
    assert_eq!((s.queued, s.dropped, s.sent, s.connected), (2, 3, 0, false));
    let dropped = prometheus::gather()
        .into_iter()
        .find(|f| f.name() == "meridian_audit_syslog_dropped_total")
        .expect("dropped counter registered");
    assert!(dropped.get_metric()[0].get_counter().get_value() >= 3.0);
    std::fs::remove_dir_all(&dir).ok();
}
