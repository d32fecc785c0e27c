//! Federation, the server's side: our signing keys and the key cache of other servers, signed
//! outbound requests, verification of inbound ones, and the TLS listener's certificate. The
//! protocol rules themselves are in the `sparks-federation` crate.

pub mod acl;
pub mod backfill;
pub mod client;
pub mod dns;
pub mod e2ee;
pub mod inbound;
pub mod invite;
pub mod join;
pub mod keys;
pub mod media;
pub mod outlier;
pub mod sender;
pub mod tls;

use std::sync::Arc;

use http::HeaderMap;
use ruma::{OwnedServerName, ServerName};

use crate::{
    error::{Error, Result},
    server::Server,
};

pub use sparks_federation as protocol;

/// The federation services of a server.
pub struct Federation {
    pub client: client::Client,
    pub keys: keys::KeyCache,
    pub sender: sender::Sender,
}

impl Federation {
    pub fn new(config: &crate::config::Config) -> Result<Self, String> {
        Ok(Self {
            client: client::Client::new(&config.federation)?,
            keys: keys::KeyCache::default(),
            sender: sender::Sender::default(),
        })
    }
}

/// Whether this server federates (has a federation listener).
pub fn enabled(server: &Server) -> bool {
    server.config.listen.federation.is_some()
}

/// Authenticates an incoming federation request: its `X-Matrix` signature, made with a key of
/// the origin it claims, over this exact method, URI and body, addressed to us.
/// Returns the origin.
pub async fn authenticate(
    server: &Arc<Server>,
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<OwnedServerName> {
    let credentials = protocol::auth::credentials(headers).map_err(unauthorized)?;
    let origin = credentials.origin.clone();
    if server.is_local(&origin) {
        return Err(Error::new(
            http::StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "Requests from this server's own name are not accepted over federation",
        ));
    }
    let keys = server
        .federation
        .keys
        .get_with_key(server, &origin, credentials.key.as_str())
        .await
        .map_err(|e| {
            Error::new(
                http::StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                format!("Cannot verify the signature of {origin}: {}", e.message),
            )
        })?;
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let request = http::Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .body(body.to_vec())
        .map_err(|e| Error::bad_json(format!("request: {e}")))?;
    protocol::auth::verify_request(&credentials, &request, server.server_name(), &keys)
        .map_err(unauthorized)?;
    Ok(origin)
}

fn unauthorized(error: protocol::Error) -> Error {
    Error::new(
        http::StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
        error.to_string(),
    )
}

/// An error from another server (or from reaching it), as we report it to our client.
pub fn remote_error(destination: &ServerName, what: impl std::fmt::Display) -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("Federation request to {destination} failed: {what}"),
    )
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved bytes).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
