//! Login, logout, refresh.

use std::{sync::Arc, time::Duration};

use ruma::api::client::session::{
    login::{self, v3::LoginInfo},
    logout, logout_all, refresh_token,
};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    ratelimit::Limit,
    server::Server,
    users::uiaa,
};

pub async fn login(
    server: Arc<Server>,
    request: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    let ip = request.client.ip().to_string();
    let LoginInfo::Password(password) = &request.body.login_info else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unsupported login type",
        ));
    };
    // `user` is deprecated since r0.4 but old clients still send it.
    #[allow(deprecated)]
    let legacy_user = &password.user;
    let user = match (&password.identifier, legacy_user) {
        (Some(identifier), _) => uiaa::identifier_user(&server, identifier),
        // The deprecated top-level `user` field.
        (None, Some(user)) => uiaa::parse_user(&server, user),
        (None, None) => None,
    }
    .ok_or_else(|| Error::forbidden("Invalid username or password"))?;
    server.ratelimit.check(Limit::FailedLogin, &ip)?;
    server.ratelimit.check(Limit::FailedLogin, user.as_str())?;
    if !server.is_local(user.server_name()) {
        return Err(Error::forbidden("Invalid username or password"));
    }
    if server.users.is_deactivated(&server.maps, &user)? {
        return Err(Error::user_deactivated("This account has been deactivated"));
    }
    if !server
        .users
        .check_password(&server.maps, &user, &password.password)
        .await?
    {
        server.ratelimit.hit(Limit::FailedLogin, &ip);
        server.ratelimit.hit(Limit::FailedLogin, user.as_str());
        return Err(Error::forbidden("Invalid username or password"));
    }
    let tokens = server.users.login(
        &server,
        &user,
        request.body.device_id.clone(),
        request.body.initial_device_display_name.clone(),
        request.body.refresh_token,
        &ip,
    )?;
    let mut response = login::v3::Response::new(user, tokens.access_token, tokens.device_id);
    response.refresh_token = tokens.refresh_token;
    response.expires_in = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(response)
}

pub async fn logout(
    server: Arc<Server>,
    request: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    server
        .users
        .remove_device(&server, request.user()?, request.device()?)?;
    Ok(logout::v3::Response::new())
}

pub async fn logout_all(
    server: Arc<Server>,
    request: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    let user = request.owned_user()?;
    for device in server.users.devices(&server.maps, &user)? {
        server
            .users
            .remove_device(&server, &user, &device.device_id)?;
    }
    Ok(logout_all::v3::Response::new())
}

pub async fn refresh(
    server: Arc<Server>,
    request: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let tokens = server.users.refresh(&server, &request.body.refresh_token)?;
    let mut response = refresh_token::v3::Response::new(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in_ms = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(response)
}
