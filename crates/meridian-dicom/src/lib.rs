//! DICOM handling for Meridian on top of dicom-rs: bounded parsing of
//! untrusted input, extraction of indexed attributes, DICOM JSON, and pixel
//! access (frames, rendered images). No network or storage I/O lives here.

pub mod charset;
pub mod json;
pub mod parse;
pub mod render;
pub mod scan;
pub mod sop;
mod storage_classes;

pub use parse::{InstanceInfo, Limits, ParseError};
