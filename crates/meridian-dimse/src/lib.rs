//! Meridian's DICOM network services (DIMSE over dicom-ul): the SCP
//! (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) and a storage SCU. Thin: all
//! parsing, matching and storage live in meridian-dicom and meridian-store.

pub mod msg;
pub mod scp;
pub mod scu;

pub use scp::{AeRegistry, Peer, QUARANTINE_SITE, Scp, ScpConfig};
pub use scu::StoreScu;
