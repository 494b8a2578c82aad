//! Pure domain types shared by every Meridian crate: UID validation, the
//! catalogue of indexed DICOM attributes, and the query/matching model used
//! by C-FIND and QIDO-RS alike. No I/O lives here.

pub mod attrs;
pub mod query;
pub mod uid;

pub use attrs::{Attr, AttrKind, Level};
pub use query::{Matcher, Query, QueryError};
pub use uid::{UidError, validate_uid};
