//! HL7 v2 for Meridian: a protocol adapter with no dependency on the rest of Meridian. It turns
//! bytes from a RIS into plain data ([`Inbound`]) and answers with acknowledgements; the binary
//! maps that data to the domain.
//!
//! # API
//!
//! - [`er7`]: `parse(raw: &[u8], limits: &Limits) -> Result<Message, ParseError>`;
//!   `Message::{header, get(seg, occurrence, field, component, subcomponent), get_rep,
//!   segment(name, occurrence), segments(name), all_segments}`, `Segment::{get, get_rep,
//!   repetitions, raw_field}`; [`Header`] (MSH-3..7, 9..12, 18); `escape`/`unescape`.
//! - [`inbound`]: `interpret(msg: &Message) -> Result<Vec<Inbound>, Hl7Error>`, one
//!   [`Inbound`] per order group (`NewOrder`, `UpdateOrder`, `CancelOrder`) or one
//!   `PatientUpdate`; [`OrderFields`], [`PatientFields`].
//! - [`ack`]: `ack(header: &Header, outcome: Result<(), &Hl7Error>) -> Vec<u8>` and
//!   `nak_unparsed(raw: &[u8], err: &ParseError) -> Vec<u8>`.
//! - [`mllp`]: `serve<S: Sink>(listener: TcpListener, sink: Arc<S>, cfg: MllpConfig) ->
//!   io::Result<()>`, the [`Sink`] trait (`accept(peer, &Header, Vec<Inbound>)`), and the
//!   client helper `send(stream, msg, max_reply) -> io::Result<Vec<u8>>`.
//! - [`Hl7Error`] `{ code, location, text, reject }` with HL7 table 0357 [`codes`];
//!   `reject` answers AR, otherwise AE.
//!
//! # Design choices
//!
//! - **Character sets** ([`charset`]): MSH-18 is read from the raw bytes, then the whole message
//!   is decoded. No MSH-18 (or `ASCII`): UTF-8 if the bytes are valid UTF-8, else ISO 8859-1 —
//!   real senders without MSH-18 send either, and Latin-1 never fails. A declared set is strict.
//!   Unknown MSH-18: AR, 103 (table value not found) at MSH-18; bytes invalid in the declared
//!   set: AR, 102.
//! - **Order groups**: every ORC group is returned (a `Vec`), never only the first, so a
//!   two-procedure order is not half-read; the sink receives them together in one call.
//! - **Accession**: OMI: IPC-1.1; else (and for ORM) OBR-18.1, else ORC-3.1, else OBR-3.1. An
//!   order needs an accession or a placer order number (ORC-2.1 else OBR-2.1), else AE 101.
//! - **Priority**: a raw code; v2.5+ TQ1-9.1 when present, else ORC-7.6, else OBR-27.6.
//! - **Body part**: OBR-15.4.1 (SPS body site), else OBR-46.1. **Modality**: OMI IPC-5.1, else
//!   OBR-24.1 (diagnostic service section, raw).
//! - **Size limits**: message bytes (1 MiB), segments (1000), field bytes (64 KiB); over a limit
//!   the message is rejected AR (207 for size and segment count, 102 for a field). On MLLP an
//!   oversized frame is not buffered: it is discarded up to its end block, answered AR 207
//!   "message exceeds N bytes", and the connection kept.
//! - **Errors**: unsupported type 200, event 201, processing ID 202, version 203, unparseable
//!   message: AR. Content errors (no PID, PID-3.1 empty, no ORC, unknown ORC-1, no accession and
//!   no placer number): AE. The sink's own errors: AE (or AR if it says `reject`).
//! - **Logs** never carry patient data: per message only peer, MSH-9, MSH-10 and the outcome.

pub mod ack;
pub mod charset;
pub mod er7;
mod error;
pub mod inbound;
pub mod mllp;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testmsg;

pub use er7::{Header, Limits, Message, ParseError};
pub use error::{Hl7Error, Location, codes};
pub use inbound::{Inbound, OrderFields, PatientFields, interpret};
pub use mllp::{MllpConfig, Sink};
