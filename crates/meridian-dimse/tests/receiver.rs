//! `msg::Receiver` against a real dicom-ul association on loopback: the
//! client side writes hand-made P-DATA-TF PDUs to its socket, the server side
//! reassembles them. Each test states a shape of PDU stream that a peer may
//! send (PS3.8 9.3.5, Annex E).

use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::association::server::{AsyncServerAssociation, ServerAssociationOptions};
use meridian_dimse::msg::{
    self, DimseError, IMPLICIT_LE, Incoming, NO_DATASET, Receiver, cmd, el_u16, el_ui,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const VERIFICATION: &str = "1.2.840.10008.1.1";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// A PDV item: length, context, message control header, payload.
fn pdv(pc: u8, command: bool, last: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((payload.len() + 2) as u32).to_be_bytes());
    v.push(pc);
    v.push(u8::from(command) | (u8::from(last) << 1));
    v.extend_from_slice(payload);
    v
}

/// A P-DATA-TF PDU holding the given PDV items.
fn pdata(items: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = items.concat();
    let mut v = vec![0x04, 0];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

fn echo_rq(id: u16) -> Vec<u8> {
    msg::encode_command(vec![
        el_ui(tags::AFFECTED_SOP_CLASS_UID, VERIFICATION),
        el_u16(tags::COMMAND_FIELD, cmd::C_ECHO_RQ),
        el_u16(tags::MESSAGE_ID, id),
        el_u16(tags::COMMAND_DATA_SET_TYPE, NO_DATASET),
    ])
    .expect("command")
}

fn store_rq(id: u16) -> Vec<u8> {
    msg::encode_command(vec![
        el_ui(tags::AFFECTED_SOP_CLASS_UID, CT),
        el_u16(tags::COMMAND_FIELD, cmd::C_STORE_RQ),
        el_u16(tags::MESSAGE_ID, id),
        el_u16(tags::PRIORITY, 0),
        el_u16(tags::COMMAND_DATA_SET_TYPE, 0),
        el_ui(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.3.4"),
    ])
    .expect("command")
}

/// Runs `serve` on the server side of a fresh association while the client
/// writes `wire` to its socket; returns what `serve` returned.
async fn exchange<T>(
    wire: Vec<u8>,
    idle: Duration,
    serve: impl AsyncFnOnce(&mut Receiver, &mut AsyncServerAssociation<TcpStream>) -> T,
) -> T {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = async {
        let (sock, _) = listener.accept().await.expect("accept");
        let mut assoc = ServerAssociationOptions::new()
            .accept_any()
            .ae_title("TEST")
            .with_abstract_syntax(VERIFICATION)
            .with_abstract_syntax(CT)
            .with_transfer_syntax(IMPLICIT_LE)
            .establish_async(sock)
            .await
            .expect("establish");
        let mut rx = Receiver::new(idle);
        serve(&mut rx, &mut assoc).await
    };
    let client = async {
        let mut client = ClientAssociationOptions::new()
            .calling_ae_title("SCU")
            .called_ae_title("TEST")
            .with_presentation_context(VERIFICATION, vec![IMPLICIT_LE])
            .with_presentation_context(CT, vec![IMPLICIT_LE])
            .establish_with_async(&addr.to_string())
            .await
            .expect("client");
        let ids: Vec<u8> = client
            .presentation_contexts()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(
            ids,
            [1, 3],
            "the tests write context 1 (verification) and 3 (CT)"
        );
        // A server that refuses the stream may close the connection before
        // all of it is written: what it returned is what the test checks.
        client.inner_stream().write_all(&wire).await.ok();
        client
    };
    let (out, _client) = tokio::join!(server, client);
    out
}

fn message(i: Incoming) -> msg::Message {
    match i {
        Incoming::Message(m) => m,
        Incoming::Released => panic!("released"),
        Incoming::Aborted => panic!("aborted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_in_one_pdu_are_both_delivered() {
    // One PDU carries a whole C-ECHO-RQ and the first half of the next one;
    // the second PDU carries the rest.
    let a = echo_rq(7);
    let b = echo_rq(8);
    let (b1, b2) = b.split_at(10);
    let mut wire = pdata(&[pdv(1, true, true, &a), pdv(1, true, false, b1)]);
    wire.extend(pdata(&[pdv(1, true, true, b2)]));
    let ids = exchange(wire, Duration::from_secs(5), async |rx, assoc| {
        let first = message(rx.receive(assoc, 1 << 20).await.expect("first"));
        let second = message(rx.receive(assoc, 1 << 20).await.expect("second"));
        (
            first.message_id(),
            second.message_id(),
            second.data.is_none(),
        )
    })
    .await;
    assert_eq!(ids, (7, 8, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_in_many_fragments_and_pdus_is_reassembled_in_order() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = pdata(&[pdv(3, true, true, &store_rq(1))]);
    // Fragments of varied sizes, two or three per PDU, the first in the
    // command's PDU's neighbour.
    let sizes = [1usize, 7, 4096, 65_536, 30_000, 3, 50_000];
    let mut pos = 0;
    let mut items = Vec::new();
    let mut k = 0;
    while pos < data.len() {
        let n = sizes[k % sizes.len()].min(data.len() - pos);
        let last = pos + n == data.len();
        items.push(pdv(3, false, last, &data[pos..pos + n]));
        pos += n;
        k += 1;
        if items.len() == 1 + k % 3 || last {
            wire.extend(pdata(&items));
            items.clear();
        }
    }
    let expected = data.clone();
    let got = exchange(wire, Duration::from_secs(5), async |rx, assoc| {
        let m = message(rx.receive(assoc, 1 << 20).await.expect("store"));
        (m.field(), m.pc_id, m.overflow, m.data)
    })
    .await;
    assert_eq!(got.0, cmd::C_STORE_RQ);
    assert_eq!(got.1, 3);
    assert!(!got.2);
    assert_eq!(got.3.as_deref(), Some(expected.as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_over_the_limit_is_read_and_dropped_and_the_next_message_still_arrives() {
    let mut wire = pdata(&[pdv(3, true, true, &store_rq(1))]);
    wire.extend(pdata(&[pdv(3, false, false, &[1u8; 40_000])]));
    wire.extend(pdata(&[pdv(3, false, true, &[2u8; 40_000])]));
    wire.extend(pdata(&[pdv(1, true, true, &echo_rq(2))]));
    let got = exchange(wire, Duration::from_secs(5), async |rx, assoc| {
        let big = message(rx.receive(assoc, 50_000).await.expect("store"));
        let echo = message(rx.receive(assoc, 50_000).await.expect("echo"));
        (big.overflow, big.data.is_none(), echo.field())
    })
    .await;
    assert_eq!(got, (true, true, cmd::C_ECHO_RQ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_buffer_is_reused_for_the_next_data_set() {
    let mut wire = Vec::new();
    for id in 1..=2u16 {
        wire.extend(pdata(&[pdv(3, true, true, &store_rq(id))]));
        wire.extend(pdata(&[pdv(3, false, true, &vec![id as u8; 100_000])]));
    }
    let got = exchange(wire, Duration::from_secs(5), async |rx, assoc| {
        let first = message(rx.receive(assoc, 1 << 20).await.expect("first"));
        let data = first.data.expect("data");
        let ptr = data.as_ptr();
        rx.recycle(data);
        let second = message(rx.receive(assoc, 1 << 20).await.expect("second"));
        let d = second.data.expect("data");
        (d.as_ptr() == ptr, d.len(), d.iter().all(|&b| b == 2))
    })
    .await;
    assert_eq!(got, (true, 100_000, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_end_with_an_error() {
    // Each case: what the peer writes, and a word the error must contain.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // A PDV item longer than its PDU.
        (
            {
                let mut p = pdata(&[pdv(1, true, true, &echo_rq(1))]);
                p[6..10].copy_from_slice(&10_000u32.to_be_bytes());
                p
            },
            "PDV item",
        ),
        // Data before any command.
        (
            pdata(&[pdv(3, false, true, &[0u8; 16])]),
            "data before command",
        ),
        // A command set above 64 KiB.
        (
            pdata(&[pdv(1, true, false, &vec![0u8; 70_000])]),
            "larger than 64 KiB",
        ),
        // An A-ASSOCIATE-RQ announcing 4 GiB: refused, never buffered.
        (vec![0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1], "PDU type 0x01"),
        // Command and data on different presentation contexts.
        (
            {
                let mut p = pdata(&[pdv(3, true, true, &store_rq(1))]);
                p.extend(pdata(&[pdv(1, false, true, &[0u8; 16])]));
                p
            },
            "presentation contexts",
        ),
        // More than 1 MiB packed after the end of a message: not buffered.
        (
            pdata(&[
                pdv(1, true, true, &echo_rq(1)),
                pdv(3, false, true, &vec![0u8; (1 << 20) + 1]),
            ]),
            "after the end of a message",
        ),
        // Silence after half a PDU: the idle timeout.
        (vec![0x04, 0, 0, 0, 1, 0], "no data from the peer"),
    ];
    for (wire, word) in cases {
        let err = exchange(wire, Duration::from_millis(300), async |rx, assoc| match rx
            .receive(assoc, 1 << 20)
            .await
        {
            Ok(_) => "no error".to_owned(),
            Err(e @ (DimseError::Unexpected(_) | DimseError::BadCommand(_))) => e.to_string(),
            Err(e) => format!("other error: {e}"),
        })
        .await;
        assert!(err.contains(word), "expected {word:?}, got {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_answered_and_reported() {
    let wire = vec![0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    let released = exchange(wire, Duration::from_secs(5), async |rx, assoc| {
        matches!(rx.receive(assoc, 1 << 20).await, Ok(Incoming::Released))
    })
    .await;
    assert!(released);
}

/// Records what a data sink is fed (the length of each feed; `COMPLETE`
/// when told the data set is complete), and whether it was dropped.
struct Recorder {
    fed: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl msg::DataSink for Recorder {
    fn feed(&mut self, all: &[u8]) {
        self.fed.lock().expect("lock").push(all.len());
    }
    fn complete(&mut self) {
        self.fed.lock().expect("lock").push(COMPLETE);
    }
}

const COMPLETE: usize = usize::MAX;

impl Drop for Recorder {
    fn drop(&mut self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_sink_is_fed_each_fragment_and_comes_back_with_its_message() {
    let mut wire = pdata(&[pdv(1, true, true, &echo_rq(1))]);
    wire.extend(pdata(&[pdv(3, true, true, &store_rq(2))]));
    wire.extend(pdata(&[
        pdv(3, false, false, &[1u8; 30_000]),
        pdv(3, false, false, &[2u8; 5]),
    ]));
    wire.extend(pdata(&[pdv(3, false, true, &[3u8; 20_000])]));
    // Over the limit: its sink is dropped with the data.
    wire.extend(pdata(&[pdv(3, true, true, &store_rq(3))]));
    wire.extend(pdata(&[pdv(3, false, true, &[4u8; 90_000])]));
    let fed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let dropped: Vec<_> = (0..2)
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)))
        .collect();
    let (f, d) = (fed.clone(), dropped.clone());
    let got = exchange(wire, Duration::from_secs(5), async move |rx, assoc| {
        let mut opened = Vec::new();
        let mut open = |c: &dicom_object::InMemDicomObject, pc: u8| {
            opened.push((msg::get_u16(c, tags::MESSAGE_ID), pc));
            let n = opened.len() - 1;
            Some(Box::new(Recorder {
                fed: f.clone(),
                dropped: d[n].clone(),
            }) as Box<dyn msg::DataSink>)
        };
        let echo = message(
            rx.receive_with(assoc, 60_000, &mut open)
                .await
                .expect("echo"),
        );
        let store = message(
            rx.receive_with(assoc, 60_000, &mut open)
                .await
                .expect("store"),
        );
        let store_dropped_early = d[0].load(std::sync::atomic::Ordering::SeqCst);
        let big = message(
            rx.receive_with(assoc, 60_000, &mut open)
                .await
                .expect("big"),
        );
        (
            echo.sink.is_none(),
            store.sink.is_some(),
            store_dropped_early,
            big.sink.is_none() && big.overflow,
            opened,
        )
    })
    .await;
    assert!(got.0, "no sink for a message without data");
    assert!(got.1 && !got.2, "the store's sink comes back with it");
    assert!(got.3, "an over-limit data set keeps no sink");
    assert_eq!(got.4, vec![(Some(2), 3), (Some(3), 3)]);
    // Told once, after the last fragment; the over-limit one never is.
    assert_eq!(
        *fed.lock().expect("lock"),
        vec![30_000, 30_005, 50_005, COMPLETE]
    );
    assert!(dropped[1].load(std::sync::atomic::Ordering::SeqCst));
}
