//! `GET /_matrix/federation/v1/version`: what server software this is.

use std::sync::Arc;

use ruma::api::federation::discovery::get_server_version;

use crate::{api::ruma::Ruma, error::Result, server::Server};

pub async fn version(
    _server: Arc<Server>,
    _request: Ruma<get_server_version::v1::Request>,
) -> Result<get_server_version::v1::Response> {
    let mut response = get_server_version::v1::Response::new();
    let mut info = get_server_version::v1::Server::new();
    info.name = Some("Sparks".to_owned());
    info.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    response.server = Some(info);
    Ok(response)
}
