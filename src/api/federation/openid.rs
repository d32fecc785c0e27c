//! `GET /_matrix/federation/v1/openid/userinfo`: who an OpenID token belongs to.

use std::sync::Arc;

use ruma::api::federation::openid::get_openid_userinfo;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    server::Server,
};

pub async fn userinfo(
    server: Arc<Server>,
    request: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    let user = server
        .users
        .openid_user(&server.maps, &request.body.access_token)?
        .ok_or_else(|| Error::unknown_token(false))?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
