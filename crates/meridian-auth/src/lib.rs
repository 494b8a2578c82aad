//! Accounts, roles and permissions as pure functions: the policy table that
//! decides what each role may do, the data scope of a principal, password
//! hashing (argon2id), API token format, TOTP (RFC 6238) and login lockout.
//! No I/O: storage of users, sessions and tokens lives in meridian-store;
//! enforcement lives in one middleware of meridian-web and in the DIMSE SCP.

pub mod password;
pub mod policy;
pub mod token;
pub mod totp;

pub use policy::{Permission, Principal, PrincipalKind, Role, Scope, allows};
