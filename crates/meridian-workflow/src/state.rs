//! The study's workflow state machine. Every transition is timestamped and audited by
//! the caller; this module only says which transitions exist.

use serde::{Deserialize, Serialize};

use crate::model::State;

/// What happens to a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// No new instance for the quiet period.
    Stable,
    /// Reconciled with an order (or read without one, by site policy).
    Matched,
    /// No order found: to the coordinators' queue.
    NoOrder,
    /// Its only order was taken off it by a coordinator: back to the queue.
    Unmatch,
    Assign,
    Claim,
    Open,
    /// Taken away from its reader (escalation, shift end, by hand).
    Release,
    SignPreliminary,
    SignFinal,
    Deliver,
    Addend,
    Cancel,
    /// New images after stability: back to received until stable again.
    NewImages,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a study in state {from} cannot take event {event:?}")]
pub struct Invalid {
    pub from: State,
    pub event: Event,
}

/// The state after `event`, or why not.
pub fn next(from: State, event: Event) -> Result<State, Invalid> {
    use Event as E;
    use State as S;
    let to = match (from, event) {
        (S::Received, E::Stable) => S::Stable,
        (S::Stable | S::Unmatched, E::Matched) => S::Ready,
        (S::Stable, E::NoOrder) => S::Unmatched,
        (S::Ready, E::Unmatch) => S::Unmatched,
        (S::Ready, E::Assign) => S::Assigned,
        (S::Ready | S::Assigned, E::Claim) => S::Opened,
        (S::Assigned, E::Open) => S::Opened,
        (S::Opened, E::Open) => S::Opened,
        (S::Preliminary, E::Claim | E::Open) => S::Preliminary,
        (S::Assigned | S::Opened, E::Release) => S::Ready,
        (S::Opened, E::SignPreliminary) => S::Preliminary,
        (S::Opened | S::Preliminary, E::SignFinal) => S::Final,
        (S::Final | S::Addended, E::Deliver) => S::Delivered,
        (S::Final | S::Delivered | S::Addended, E::Addend) => S::Addended,
        (
            S::Received | S::Stable | S::Unmatched | S::Ready | S::Assigned | S::Opened,
            E::Cancel,
        ) => S::Cancelled,
        (S::Received | S::Stable | S::Unmatched, E::NewImages) => S::Received,
        (s @ (S::Ready | S::Assigned | S::Opened | S::Preliminary), E::NewImages) => s,
        _ => return Err(Invalid { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_of_a_study() {
        let mut s = State::Received;
        for e in [
            Event::Stable,
            Event::Matched,
            Event::Assign,
            Event::Open,
            Event::SignPreliminary,
            Event::SignFinal,
            Event::Deliver,
            Event::Addend,
        ] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, State::Addended);
    }

    #[test]
    fn a_final_report_is_not_reopened_or_cancelled() {
        for e in [
            Event::Release,
            Event::Cancel,
            Event::Assign,
            Event::SignPreliminary,
        ] {
            assert!(next(State::Final, e).is_err());
        }
        assert!(next(State::Unmatched, Event::Assign).is_err());
    }
}
