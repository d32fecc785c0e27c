//! Accounts: registration, availability, whoami, password, deactivation, OpenID tokens.

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedUserId,
    api::client::{
        account::{
            change_password, check_registration_token_validity, deactivate,
            get_username_availability,
            register::{self, RegistrationKind},
            request_openid_token, whoami,
        },
        uiaa::AuthData,
    },
};
use serde_json::Map;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    ratelimit::Limit,
    rooms,
    server::{Server, rand_alnum},
    users::uiaa::Flows,
};

fn registration_flows(server: &Server) -> Flows {
    if server.config.registration.token.is_some() {
        vec![vec!["m.login.registration_token"]]
    } else {
        vec![vec!["m.login.dummy"]]
    }
}

/// A valid, available localpart on this server, or the spec's error.
fn check_username(server: &Server, username: &str) -> Result<OwnedUserId> {
    let localpart = username.trim();
    if localpart.is_empty() || localpart.len() > 200 {
        return Err(Error::invalid_username(
            "Username must be 1 to 200 characters",
        ));
    }
    let valid = localpart
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'));
    if !valid {
        return Err(Error::invalid_username(
            "Username may only contain a-z, 0-9, ., _, =, -, / and +",
        ));
    }
    let user = OwnedUserId::try_from(format!("@{localpart}:{}", server.server_name()))
        .map_err(|_| Error::invalid_username("Invalid username"))?;
    if user.as_str().len() > 255 {
        return Err(Error::invalid_username("User ID is too long"));
    }
    if server.users.exists(&server.maps, &user)? {
        return Err(Error::user_in_use("User ID already taken"));
    }
    Ok(user)
}

pub async fn register(
    server: Arc<Server>,
    request: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    let body = &request.body;
    if !server.config.registration.enabled {
        return Err(Error::forbidden("Registration is disabled"));
    }
    if body.kind == RegistrationKind::Guest {
        return Err(Error::forbidden("Guest access is disabled"));
    }
    server
        .ratelimit
        .check(Limit::Registration, &request.client.ip().to_string())?;
    // Validate the username before UIA so clients learn about a taken name first.
    let user = match &body.username {
        Some(username) => check_username(&server, &username.to_lowercase())?,
        None => loop {
            let candidate = rand_alnum(12).to_lowercase();
            if let Ok(user) = check_username(&server, &candidate) {
                break user;
            }
        },
    };
    let auth = match &body.auth {
        // `{"type": "m.login.dummy"}` without a session is accepted in one round, as Synapse does.
        Some(AuthData::Dummy(dummy))
            if dummy.session.is_none() && server.config.registration.token.is_none() =>
        {
            None
        }
        other => Some(other),
    };
    if let Some(auth) = auth {
        server
            .uiaa
            .check(
                &server,
                "register",
                auth.as_ref(),
                &registration_flows(&server),
                None,
                Map::new(),
            )
            .await?;
    }
    server
        .ratelimit
        .hit(Limit::Registration, &request.client.ip().to_string());
    if body.password.as_deref().is_some_and(|p| p.len() > 512) {
        return Err(Error::weak_password("Password is too long"));
    }
    server
        .users
        .create(&server, &user, body.password.as_deref())
        .await?;
    tracing::info!(%user, "registered");
    server.push.init_user(&server, &user)?;

    let mut response = register::v3::Response::new(user.clone());
    if !body.inhibit_login {
        let tokens = server.users.login(
            &server,
            &user,
            body.device_id.clone(),
            body.initial_device_display_name.clone(),
            body.refresh_token,
            &request.client.ip().to_string(),
        )?;
        response.access_token = Some(tokens.access_token);
        response.device_id = Some(tokens.device_id);
        response.refresh_token = tokens.refresh_token;
        response.expires_in = tokens.expires_in_ms.map(Duration::from_millis);
    }
    Ok(response)
}

pub async fn available(
    server: Arc<Server>,
    request: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    if !server.config.registration.enabled {
        return Err(Error::forbidden("Registration is disabled"));
    }
    check_username(&server, &request.body.username)?;
    Ok(get_username_availability::v3::Response::new(true))
}

pub async fn token_validity(
    server: Arc<Server>,
    request: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    if !server.config.registration.enabled {
        return Err(Error::forbidden("Registration is disabled"));
    }
    server
        .ratelimit
        .take(Limit::Registration, &request.client.ip().to_string())?;
    let valid = server.config.registration.token.as_deref() == Some(request.body.token.as_str());
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

pub async fn whoami(
    _server: Arc<Server>,
    request: Ruma<whoami::v3::Request>,
) -> Result<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(request.owned_user()?, false);
    response.device_id = Some(request.owned_device()?);
    Ok(response)
}

pub async fn change_password(
    server: Arc<Server>,
    request: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let user = request.owned_user()?;
    let device = request.owned_device()?;
    let flows = vec![vec!["m.login.password"]];
    server
        .uiaa
        .check(
            &server,
            "password",
            request.body.auth.as_ref(),
            &flows,
            Some(&user),
            Map::new(),
        )
        .await?;
    if request.body.new_password.is_empty() || request.body.new_password.len() > 512 {
        return Err(Error::weak_password("Password must be 1 to 512 characters"));
    }
    server
        .users
        .set_password(&server, &user, &request.body.new_password)
        .await?;
    if request.body.logout_devices {
        for other in server.users.devices(&server.maps, &user)? {
            if other.device_id != device {
                server
                    .users
                    .remove_device(&server, &user, &other.device_id)?;
            }
        }
    }
    Ok(change_password::v3::Response::new())
}

pub async fn deactivate(
    server: Arc<Server>,
    request: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let user = request.owned_user()?;
    let flows = vec![vec!["m.login.password"]];
    server
        .uiaa
        .check(
            &server,
            "deactivate",
            request.body.auth.as_ref(),
            &flows,
            Some(&user),
            Map::new(),
        )
        .await?;
    for (room_id, membership) in server.rooms.rooms_of(&server.maps, &user)? {
        if matches!(membership.membership.as_str(), "join" | "invite" | "knock")
            && let Err(error) = rooms::membership::leave(&server, &room_id, &user, None).await
        {
            tracing::warn!(%room_id, %error, "could not leave room while deactivating");
        }
    }
    server.users.deactivate(&server, &user)?;
    Ok(deactivate::v3::Response::new(
        ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport,
    ))
}

pub async fn openid_token(
    server: Arc<Server>,
    request: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden(
            "You may only request OpenID tokens for yourself",
        ));
    }
    let lifetime = Duration::from_secs(3600);
    let token = server
        .users
        .openid_token(&server, &user, lifetime.as_millis() as u64)?;
    Ok(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        server.server_name().clone(),
        lifetime,
    ))
}

/// Third-party identifiers (email, phone) are not supported: every account has none.
pub async fn threepids(
    _server: Arc<Server>,
    _request: Ruma<ruma::api::client::account::get_3pids::v3::Request>,
) -> Result<ruma::api::client::account::get_3pids::v3::Response> {
    Ok(ruma::api::client::account::get_3pids::v3::Response::new(
        Vec::new(),
    ))
}

/// No application services bridge third-party networks here: no protocols.
pub async fn thirdparty_protocols(
    _server: Arc<Server>,
    _request: Ruma<ruma::api::client::thirdparty::get_protocols::v3::Request>,
) -> Result<ruma::api::client::thirdparty::get_protocols::v3::Response> {
    Ok(ruma::api::client::thirdparty::get_protocols::v3::Response::new(Default::default()))
}
