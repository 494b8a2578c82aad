//! SLA deadlines and their state.

use serde::{Deserialize, Serialize};

use crate::model::{Case, Contract, MINUTE, Millis, Priority};

/// Deadline = base (order time, else arrival) + the contract's turnaround for the
/// priority, or for the protocol when that is tighter.
pub fn deadline(
    contract: &Contract,
    priority: Priority,
    protocol: Option<&str>,
    base: Millis,
) -> Millis {
    let by_priority = contract
        .sla_minutes
        .get(&priority)
        .copied()
        .unwrap_or(match priority {
            Priority::Stat => 60,
            Priority::Urgent => 240,
            Priority::Routine => 1440,
        });
    let by_protocol = protocol.and_then(|p| contract.protocol_sla_minutes.get(p).copied());
    let minutes = by_protocol.map_or(by_priority, |p| p.min(by_priority));
    base.saturating_add(i64::from(minutes) * MINUTE)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlaState {
    OnTrack,
    /// Less time left than the expected reading time.
    AtRisk,
    Breached,
}

pub fn state(case: &Case, now: Millis) -> SlaState {
    let left = case.deadline - now;
    if left <= 0 {
        SlaState::Breached
    } else if left < case.reading_ms {
        SlaState::AtRisk
    } else {
        SlaState::OnTrack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_tightens_never_loosens() {
        let mut c = Contract::default();
        c.protocol_sla_minutes.insert("stroke".into(), 20);
        c.protocol_sla_minutes.insert("slow".into(), 99_999);
        assert_eq!(deadline(&c, Priority::Stat, None, 0), 60 * MINUTE);
        assert_eq!(deadline(&c, Priority::Stat, Some("stroke"), 0), 20 * MINUTE);
        assert_eq!(deadline(&c, Priority::Stat, Some("slow"), 0), 60 * MINUTE);
        assert_eq!(
            deadline(&c, Priority::Routine, Some("other"), 5),
            5 + 1440 * MINUTE
        );
    }
}
