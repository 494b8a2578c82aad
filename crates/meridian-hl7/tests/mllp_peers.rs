//! The MLLP listener driven by real peers: `mllp_send` from the PyPI `hl7` package sends the
//! messages, and `hl7apy` (python) parses the acknowledgements we return.
//!
//! Both peers are required: when one is missing the tests fail and say so
//! (`scripts/install-peers` installs them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_hl7::mllp::{self, MllpConfig, Sink};
use meridian_hl7::{Header, Hl7Error, Inbound, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

// ------------------------------------------------------------------ peers

fn mllp_send_cmd() -> String {
    std::env::var("MLLP_SEND").unwrap_or_else(|_| "mllp_send".to_owned())
}

async fn require_peers() {
    let ok = Command::new(mllp_send_cmd())
        .arg("--version")
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "PEER MISSING: `mllp_send` (PyPI package `hl7`) is not on PATH (or $MLLP_SEND). \
         Run scripts/install-peers to install it."
    );
    let ok = Command::new("python3")
        .args(["-c", "import hl7apy.parser"])
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "PEER MISSING: python3 with `hl7apy` cannot be run. Run scripts/install-peers to \
         install it."
    );
}

static FILE_NO: AtomicUsize = AtomicUsize::new(0);

/// Writes the messages as `mllp_send --file` reads them (each followed by an end block).
fn message_file(messages: &[&[u8]]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "meridian-hl7-{}-{}.hl7",
        std::process::id(),
        FILE_NO.fetch_add(1, Ordering::Relaxed)
    ));
    let mut data = Vec::new();
    for m in messages {
        data.extend_from_slice(m);
        data.extend_from_slice(b"\x1c\r");
    }
    std::fs::write(&path, data).expect("write message file");
    path
}

/// Sends the messages over one connection with the real `mllp_send`; returns its stdout (the
/// acknowledgements as received, each followed by a newline).
async fn mllp_send(port: u16, messages: &[&[u8]]) -> Vec<u8> {
    let file = message_file(messages);
    let out = Command::new(mllp_send_cmd())
        .args(["-p", &port.to_string(), "-f"])
        .arg(&file)
        .arg("127.0.0.1")
        .output()
        .await
        .expect("run mllp_send");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "mllp_send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Splits mllp_send's output into the acknowledgements (MLLP framing removed).
fn acks(stdout: &[u8]) -> Vec<Vec<u8>> {
    stdout
        .split(|&b| b == 0x0b)
        .skip(1)
        .map(|a| {
            let end = a.iter().position(|&b| b == 0x1c).unwrap_or(a.len());
            a[..end].to_vec()
        })
        .collect()
}

const HL7APY: &str = r#"
import json, sys
from hl7apy.parser import parse_message
raw = sys.stdin.buffer.read()
msg = parse_message(raw.decode(sys.argv[1]), find_groups=False)
out = {
    "version": msg.msh.msh_12.to_er7(),
    "msh_9": msg.msh.msh_9.to_er7(),
    "msh_10": msg.msh.msh_10.to_er7(),
    "msh_5": msg.msh.msh_5.to_er7(),
    "msh_6": msg.msh.msh_6.to_er7(),
    "msa_1": msg.msa.msa_1.to_er7(),
    "msa_2": msg.msa.msa_2.to_er7(),
}
errs = [c for c in msg.children if c.name == "ERR"]
if errs:
    fields = {c.name: c for c in errs[0].children if c.name}
    if "ERR_3" in fields:
        out["err_3_1"] = fields["ERR_3"].children[0].to_er7()
        out["err_2"] = fields["ERR_2"].to_er7() if "ERR_2" in fields else ""
        out["err_8"] = fields["ERR_8"].to_er7() if "ERR_8" in fields else ""
    if "ERR_1" in fields:
        out["err_1"] = fields["ERR_1"].to_er7()
print(json.dumps(out))
"#;

/// Parses an acknowledgement with hl7apy; returns selected values as `(name, value)` pairs.
async fn hl7apy(ack: &[u8], encoding: &str) -> Vec<(String, String)> {
    let mut child = Command::new("python3")
        .args(["-c", HL7APY, encoding])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(ack).await.expect("write to python");
    drop(stdin);
    let out = child.wait_with_output().await.expect("python output");
    assert!(
        out.status.success(),
        "hl7apy could not parse the ACK {:?}: {}",
        String::from_utf8_lossy(ack),
        String::from_utf8_lossy(&out.stderr)
    );
    // {"k": "v", ...} from json.dumps: flat strings only.
    let text = String::from_utf8(out.stdout).expect("utf-8 json");
    parse_flat_json(text.trim())
}

fn parse_flat_json(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut strings = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => v.push('\n'),
                        Some('r') => v.push('\r'),
                        Some('u') => {
                            let hex: String = chars.by_ref().take(4).collect();
                            let code = u32::from_str_radix(&hex, 16).expect("hex");
                            v.push(char::from_u32(code).unwrap_or('?'));
                        }
                        Some(other) => v.push(other),
                        None => {}
                    },
                    c => v.push(c),
                }
            }
            strings.push(v);
        }
    }
    let mut it = strings.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn field<'a>(v: &'a [(String, String)], k: &str) -> &'a str {
    v.iter()
        .find(|(key, _)| key == k)
        .map_or("", |(_, val)| val.as_str())
}

// ------------------------------------------------------------------ listener

#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<(SocketAddr, Header, Vec<Inbound>)>>,
}

impl Sink for Recorder {
    async fn accept(
        &self,
        peer: SocketAddr,
        header: &Header,
        msg: Vec<Inbound>,
    ) -> Result<(), Hl7Error> {
        let fail = msg.iter().any(|m| match m {
            Inbound::NewOrder(o) => o.accession.as_deref() == Some("FAIL"),
            _ => false,
        });
        if fail {
            return Err(Hl7Error::internal("database unavailable"));
        }
        self.got
            .lock()
            .expect("recorder lock")
            .push((peer, header.clone(), msg));
        Ok(())
    }
}

impl Recorder {
    fn items(&self) -> Vec<Inbound> {
        self.got
            .lock()
            .expect("recorder lock")
            .iter()
            .flat_map(|(_, _, m)| m.clone())
            .collect()
    }
}

async fn start(cfg: MllpConfig) -> (u16, Arc<Recorder>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let rec = Arc::new(Recorder::default());
    let sink = Arc::clone(&rec);
    let task = tokio::spawn(async move {
        mllp::serve(listener, sink, cfg).await.expect("serve");
    });
    (port, rec, task)
}

// ------------------------------------------------------------------ messages

fn seg(name: &str, fields: &[(usize, &str)]) -> String {
    let first = if name == "MSH" { 3 } else { 1 };
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut out = if name == "MSH" {
        "MSH|^~\\&".to_owned()
    } else {
        name.to_owned()
    };
    for i in first..=last {
        out.push('|');
        if let Some((_, v)) = fields.iter().find(|(n, _)| *n == i) {
            out.push_str(v);
        }
    }
    out.push('\r');
    out
}

fn orm_v23(control: &str) -> String {
    [
        seg(
            "MSH",
            &[
                (3, "RIS"),
                (4, "GENERAL HOSP"),
                (5, "MERIDIAN"),
                (6, "TELE"),
                (7, "20240105083000"),
                (9, "ORM^O01"),
                (10, control),
                (11, "P"),
                (12, "2.3"),
            ],
        ),
        seg(
            "PID",
            &[
                (1, "1"),
                (3, "123456^^^GH^MR"),
                (5, "O'Brien^Mary"),
                (7, "19800214"),
                (8, "F"),
            ],
        ),
        seg("PV1", &[(1, "1"), (2, "E"), (3, "ED^BAY3")]),
        seg(
            "ORC",
            &[
                (1, "NW"),
                (2, "PL1001"),
                (3, "FL2002"),
                (7, "^^^20240105083000^^S"),
                (9, "20240105082900"),
                (12, "7777^House^Gregory"),
            ],
        ),
        seg(
            "OBR",
            &[
                (1, "1"),
                (2, "PL1001"),
                (3, "FL2002"),
                (4, "CTHEAD^CT Head w/o contrast \\T\\ angio^L"),
                (18, "ACC5005"),
                (24, "CT"),
                (31, "^Fall, rule out bleed"),
            ],
        ),
    ]
    .concat()
}

fn omi_v251(control: &str, pid3: &str, accession: &str) -> String {
    [
        seg(
            "MSH",
            &[
                (3, "RIS"),
                (4, "CLINIC"),
                (5, "MERIDIAN"),
                (6, "TELE"),
                (7, "20240105090000"),
                (9, "OMI^O23^OMI_O23"),
                (10, control),
                (11, "P"),
                (12, "2.5.1"),
                (18, "UNICODE UTF-8"),
            ],
        ),
        seg(
            "PID",
            &[
                (1, "1"),
                (3, pid3),
                (5, "Müller^Jürgen"),
                (7, "19651231"),
                (8, "M"),
            ],
        ),
        seg(
            "ORC",
            &[
                (1, "NW"),
                (2, "PO-9"),
                (3, "FO-9"),
                (12, "555^Grey^Meredith"),
            ],
        ),
        seg("TQ1", &[(1, "1"), (9, "A")]),
        seg(
            "OBR",
            &[(1, "1"), (2, "PO-9"), (3, "FO-9"), (4, "MRKNEE^MR Knee")],
        ),
        seg(
            "IPC",
            &[
                (1, accession),
                (2, "PO-9"),
                (3, "1.2.826.0.1.3680043.2.1125.1.1"),
                (4, "1.2.826.0.1.3680043.2.1125.1.1.1"),
                (5, "MR"),
            ],
        ),
    ]
    .concat()
}

fn oru_r01() -> String {
    [
        seg(
            "MSH",
            &[
                (3, "LAB"),
                (4, "GH"),
                (5, "MERIDIAN"),
                (6, "TELE"),
                (7, "20240105090000"),
                (9, "ORU^R01^ORU_R01"),
                (10, "ORU1"),
                (11, "P"),
                (12, "2.5"),
            ],
        ),
        seg("PID", &[(1, "1"), (3, "123456^^^GH^MR")]),
        seg("OBR", &[(1, "1"), (4, "GLU^Glucose")]),
        seg("OBX", &[(1, "1"), (2, "NM"), (3, "GLU"), (5, "5.5")]),
    ]
    .concat()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orm_v23_is_accepted() {
    require_peers().await;
    let (port, rec, task) = start(MllpConfig::default()).await;
    let out = mllp_send(port, &[orm_v23("ORM-1").as_bytes()]).await;
    let a = acks(&out);
    assert_eq!(a.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AA", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "ORM-1");
    assert_eq!(field(&v, "msh_9"), "ACK^O01");
    assert_eq!(field(&v, "version"), "2.3");
    assert_eq!(field(&v, "msh_5"), "RIS");
    assert_eq!(field(&v, "msh_6"), "GENERAL HOSP");
    let items = rec.items();
    assert_eq!(items.len(), 1);
    let Inbound::NewOrder(o) = &items[0] else {
        panic!("expected a new order, got {items:?}")
    };
    assert_eq!(o.accession.as_deref(), Some("ACC5005"));
    assert_eq!(o.priority.as_deref(), Some("S"));
    assert_eq!(
        o.procedure_text.as_deref(),
        Some("CT Head w/o contrast & angio")
    );
    assert_eq!(o.patient_location.as_deref(), Some("ED"));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omi_v251_is_accepted() {
    require_peers().await;
    let (port, rec, task) = start(MllpConfig::default()).await;
    let msg = omi_v251("OMI-1", "P-42^^^CLINIC^MR", "ACC-OMI-1");
    let a = acks(&mllp_send(port, &[msg.as_bytes()]).await);
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AA", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "OMI-1");
    assert_eq!(field(&v, "msh_9"), "ACK^O23^ACK");
    let items = rec.items();
    let Inbound::NewOrder(o) = &items[0] else {
        panic!("expected a new order, got {items:?}")
    };
    assert_eq!(o.accession.as_deref(), Some("ACC-OMI-1"));
    assert_eq!(o.patient_name.as_deref(), Some("Müller^Jürgen"));
    assert_eq!(o.priority.as_deref(), Some("A"));
    assert_eq!(o.modality.as_deref(), Some("MR"));
    assert_eq!(
        o.study_instance_uid.as_deref(),
        Some("1.2.826.0.1.3680043.2.1125.1.1")
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pid3_is_ae_with_err() {
    require_peers().await;
    let (port, rec, task) = start(MllpConfig::default()).await;
    let msg = omi_v251("OMI-2", "^^^CLINIC^MR", "ACC-OMI-2");
    let a = acks(&mllp_send(port, &[msg.as_bytes()]).await);
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AE", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "OMI-2");
    assert_eq!(field(&v, "err_3_1"), "101");
    assert_eq!(field(&v, "err_2"), "PID^1^3^1^1");
    assert!(field(&v, "err_8").contains("PID-3.1"), "{v:?}");
    assert!(rec.items().is_empty(), "the sink must not be called");

    // the same in v2.3: ERR-1 (ELD) carries the code for old receivers
    let old = orm_v23("ORM-2").replace("123456^^^GH^MR", "");
    let a = acks(&mllp_send(port, &[old.as_bytes()]).await);
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AE", "{v:?}");
    assert_eq!(
        field(&v, "err_1"),
        "PID^1^3^101&Required field missing&HL70357"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_type_and_event_are_ar() {
    require_peers().await;
    let (port, rec, task) = start(MllpConfig::default()).await;
    let adt_a99 = orm_v23("ADT-99")
        .replace("ORM^O01", "ADT^A99")
        .replace("|2.3\r", "|2.5\r");
    // two messages on one connection: answered in order
    let out = mllp_send(port, &[oru_r01().as_bytes(), adt_a99.as_bytes()]).await;
    let a = acks(&out);
    assert_eq!(a.len(), 2, "{:?}", String::from_utf8_lossy(&out));
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AR", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "ORU1");
    assert_eq!(field(&v, "err_3_1"), "200");
    assert_eq!(field(&v, "err_2"), "MSH^1^9^1^1");
    let v = hl7apy(&a[1], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AR", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "ADT-99");
    assert_eq!(field(&v, "err_3_1"), "201");
    assert!(rec.items().is_empty());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_message_and_latin1_ack() {
    require_peers().await;
    let (port, rec, task) = start(MllpConfig::default()).await;
    let mut msg = orm_v23("L1")
        .replace("|2.3\r", "|2.3|||||DE|8859/1\r")
        .replace("GENERAL HOSP", "KLINIK M\u{fc}NCHEN")
        .replace("O'Brien^Mary", "M\u{fc}ller^J\u{fc}rgen")
        .into_bytes();
    // re-encode as Latin-1
    let text = String::from_utf8(msg).expect("utf-8");
    msg = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
        .collect();
    let a = acks(&mllp_send(port, &[&msg]).await);
    assert!(contains(&a[0], b"KLINIK M\xfcNCHEN"), "ACK not in Latin-1");
    let v = hl7apy(&a[0], "latin-1").await;
    assert_eq!(field(&v, "msa_1"), "AA", "{v:?}");
    assert_eq!(field(&v, "msh_6"), "KLINIK MüNCHEN");
    let Inbound::NewOrder(o) = &rec.items()[0] else {
        panic!("expected a new order")
    };
    assert_eq!(o.patient_name.as_deref(), Some("Müller^Jürgen"));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_error_is_ae() {
    require_peers().await;
    let (port, _rec, task) = start(MllpConfig::default()).await;
    let msg = omi_v251("OMI-F", "P-42^^^CLINIC^MR", "FAIL");
    let a = acks(&mllp_send(port, &[msg.as_bytes()]).await);
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AE", "{v:?}");
    assert_eq!(field(&v, "err_3_1"), "207");
    assert_eq!(field(&v, "err_8"), "database unavailable");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_ar_and_connection_continues() {
    require_peers().await;
    let cfg = MllpConfig {
        max_message: 8 * 1024,
        ..MllpConfig::default()
    };
    let (port, rec, task) = start(cfg).await;
    let mut big = omi_v251("BIG-1", "P-42^^^CLINIC^MR", "ACC-BIG");
    for i in 0..400 {
        big.push_str(&format!("NTE|{i}||{}\r", "x".repeat(60)));
    }
    let small = orm_v23("AFTER-BIG");
    let out = mllp_send(port, &[big.as_bytes(), small.as_bytes()]).await;
    let a = acks(&out);
    assert_eq!(a.len(), 2, "{:?}", String::from_utf8_lossy(&out));
    let v = hl7apy(&a[0], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AR", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "BIG-1");
    assert_eq!(field(&v, "err_3_1"), "207");
    assert!(
        field(&v, "err_8").starts_with("message exceeds 8192 bytes"),
        "{v:?}"
    );
    let v = hl7apy(&a[1], "utf-8").await;
    assert_eq!(field(&v, "msa_1"), "AA", "{v:?}");
    assert_eq!(field(&v, "msa_2"), "AFTER-BIG");
    assert_eq!(rec.items().len(), 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_senders() {
    require_peers().await;
    let (port, rec, task) = start(MllpConfig::default()).await;
    let mut runs = Vec::new();
    for i in 0..8 {
        let msgs: Vec<String> = (0..3).map(|j| orm_v23(&format!("C{i}-{j}"))).collect();
        runs.push(tokio::spawn(async move {
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_bytes()).collect();
            mllp_send(port, &refs).await
        }));
    }
    for r in runs {
        let out = r.await.expect("sender task");
        let a = acks(&out);
        assert_eq!(a.len(), 3);
        for ack in a {
            assert!(
                contains(&ack, b"MSA|AA|"),
                "{:?}",
                String::from_utf8_lossy(&ack)
            );
        }
    }
    assert_eq!(rec.items().len(), 24);
    task.abort();
}

/// Not a peer test: a non-MLLP client (here, HTTP) is disconnected, a garbage frame gets AR,
/// and the crate's own client helper works against the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_mllp_client_and_client_helper() {
    let (port, _rec, task) = start(MllpConfig {
        idle_timeout: Duration::from_secs(5),
        max_connections: 4,
        ..MllpConfig::default()
    })
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer to a non-MLLP client");

    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let reply = mllp::send(&mut s, b"not hl7 at all", 64 * 1024)
        .await
        .expect("reply");
    let reply = String::from_utf8(reply).expect("ascii");
    assert!(reply.contains("\rMSA|AR|"), "{reply}");
    assert!(reply.contains("\rERR|"), "{reply}");
    let reply = mllp::send(&mut s, orm_v23("H1").as_bytes(), 64 * 1024)
        .await
        .expect("reply");
    let reply = String::from_utf8(reply).expect("ascii");
    assert!(reply.contains("\rMSA|AA|H1\r"), "{reply}");
    let limits = Limits::default();
    let parsed = meridian_hl7::er7::parse(reply.as_bytes(), &limits).expect("ack parses");
    assert_eq!(parsed.header().message_type, "ACK");
    task.abort();
}

/// Not a peer test: the connection cap and the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_idle_timeout() {
    let (port, _rec, task) = start(MllpConfig {
        idle_timeout: Duration::from_secs(1),
        max_connections: 2,
        ..MllpConfig::default()
    })
    .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let reply = mllp::send(&mut s, orm_v23(&format!("K{i}")).as_bytes(), 64 * 1024)
            .await
            .expect("reply");
        assert!(contains(&reply, b"MSA|AA|"));
        held.push(s);
    }
    // a third connection is closed at once
    let mut third = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_millis(900), third.read_to_end(&mut buf))
        .await
        .expect("third connection closed before the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // the held ones go idle and are closed; then there is room again
    for mut s in held {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("idle connection closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let reply = mllp::send(&mut s, orm_v23("K9").as_bytes(), 64 * 1024)
        .await
        .expect("reply after the idle connections closed");
    assert!(contains(&reply, b"MSA|AA|K9"));
    task.abort();
}
