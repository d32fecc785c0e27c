//! `X-Matrix` request authentication: every federation request carries the origin's signature
//! over `{method, uri, origin, destination, content}`. Signing and verifying are ruma's; this
//! adds the rules around them (who may sign, which key, destination must be us).

use http::HeaderMap;
use ruma::{
    OwnedServerName, ServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::{Ed25519KeyPair, PublicKeyMap},
};

use crate::{Error, Result, keys::ServerKeys};

/// Signs an outgoing request: sets its `Authorization: X-Matrix ...` header.
pub fn sign_request(
    request: &mut http::Request<Vec<u8>>,
    origin: &ServerName,
    destination: &ServerName,
    key_pair: &Ed25519KeyPair,
) -> Result<()> {
    let input = XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key_pair);
    let header = XMatrix::sign_http_request(request, input)
        .map_err(|e| Error::Malformed(format!("signing request: {e}")))?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, (&header).into());
    Ok(())
}

/// The `X-Matrix` credentials of an incoming request (not yet verified).
pub fn credentials(headers: &HeaderMap) -> Result<XMatrix> {
    XMatrix::extract_from_http_headers(headers)
        .map_err(|e| Error::Signature(format!("Authorization header: {e}")))
}

/// Verifies an incoming request's signature with the origin's keys. `destination` is our
/// name: a request addressed to another server is refused.
pub fn verify_request(
    credentials: &XMatrix,
    request: &http::Request<Vec<u8>>,
    destination: &ServerName,
    origin_keys: &ServerKeys,
) -> Result<()> {
    if origin_keys.server_name != credentials.origin {
        return Err(Error::Forbidden("keys of the wrong server".into()));
    }
    let key_id = credentials.key.as_str();
    let key = origin_keys
        .key_for(key_id, crate::keys::now_ms())
        .ok_or_else(|| Error::UnknownKey {
            server: credentials.origin.to_string(),
            key_id: key_id.to_owned(),
        })?;
    let key = ruma::serde::Base64::parse(key)
        .map_err(|e| Error::Malformed(format!("stored key {key_id}: {e}")))?;
    let map: PublicKeyMap = [(
        credentials.origin.to_string(),
        [(key_id.to_owned(), key)].into(),
    )]
    .into();
    credentials
        .verify_http_request(request, destination, &map)
        .map_err(|e| Error::Signature(e.to_string()))
}

/// The origin a request claims (for fetching its keys before verifying).
pub fn origin(credentials: &XMatrix) -> OwnedServerName {
    credentials.origin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{server_keys_document, verify_server_keys};

    #[test]
    fn signed_requests_verify_and_changes_are_caught() {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, "k1".into()).expect("parse");
        let origin = ruma::server_name!("origin.example");
        let us = ruma::server_name!("us.example");
        let keys = verify_server_keys(
            &server_keys_document(origin, &pair, &[], u64::MAX / 2).expect("doc"),
            Some(origin),
        )
        .expect("keys");

        let mut request = http::Request::builder()
            .method("PUT")
            .uri("/_matrix/federation/v1/send/1")
            .body(br#"{"pdus":[]}"#.to_vec())
            .expect("request");
        sign_request(&mut request, origin, us, &pair).expect("sign");
        let creds = credentials(request.headers()).expect("header");
        verify_request(&creds, &request, us, &keys).expect("verifies");

        // Addressed to someone else.
        assert!(verify_request(&creds, &request, ruma::server_name!("x.example"), &keys).is_err());
        // Body changed after signing.
        let (parts, _) = request.into_parts();
        let changed = http::Request::from_parts(parts, br#"{"pdus":[{}]}"#.to_vec());
        assert!(matches!(
            verify_request(&creds, &changed, us, &keys),
            Err(Error::Signature(_))
        ));
    }
}
