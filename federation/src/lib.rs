//! The Matrix server-server protocol, without storage or sockets: what a homeserver needs to
//! speak federation correctly, as plain functions the server crate drives.
//!
//! - [`keys`]: our `/_matrix/key/v2/server` document, and checking other servers' documents.
//! - [`auth`]: `X-Matrix` request signing and verification (on top of ruma's).
//! - [`discovery`]: turning a server name into where to connect (the spec's resolution steps).
//! - [`pdu`]: the checks a received PDU goes through before it may be stored.
//!
//! Crypto, canonical JSON and the types are ruma's; this crate holds the rules around them.

pub mod auth;
pub mod discovery;
pub mod keys;
pub mod pdu;

/// Everything that can be wrong with what another server sent us.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed JSON, a missing or wrongly typed field.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A signature that does not verify, or one that is missing.
    #[error("bad signature: {0}")]
    Signature(String),
    /// A key we do not have (yet) for the server that signed.
    #[error("unknown key {key_id} of {server}")]
    UnknownKey { server: String, key_id: String },
    /// Something the rules forbid (too large, wrong origin, expired ...).
    #[error("{0}")]
    Forbidden(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
