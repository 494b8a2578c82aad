//! The teleradiology workflow as pure functions: no I/O, deterministic for a given
//! state, input and clock (instants are explicit [`model::Millis`] arguments).
//!
//! - [`model`]: sites and contracts, readers (licences, credentials, shifts), cases;
//! - [`triage`]: priority from the order, raised by per-site rules (and later AI);
//! - [`sla`]: deadlines and SLA state;
//! - [`shift`]: rota windows in a time zone;
//! - [`eligibility`]: may this reader read this case now, and why not;
//! - [`routing`]: the engine: escalation, earliest-deadline-first assignment with
//!   explanations, claims and locks;
//! - [`reconcile`]: study ↔ order matching;
//! - [`state`]: the workflow state machine.
//!
//! The same inputs will drive the turnaround simulator.

pub mod eligibility;
pub mod model;
pub mod reconcile;
pub mod routing;
pub mod shift;
pub mod sla;
pub mod state;
pub mod triage;

pub use model::{Case, Contract, Millis, Priority, ReadScope, Reader, Site, State};
