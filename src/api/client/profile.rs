//! Profiles: the whole profile and single fields. A change of display name or avatar is
//! propagated to the user's member events in every joined room.

use std::sync::Arc;

use ruma::{
    UserId,
    api::client::profile::{
        delete_profile_field, get_profile, get_profile_field, set_profile_field,
    },
    events::TimelineEventType,
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::timeline::{self, NewEvent},
    server::Server,
    users::Profile,
};

/// Largest profile (all fields) accepted, in bytes of JSON.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

fn profile_of(server: &Server, user: &UserId) -> Result<Profile> {
    if !server.is_local(user.server_name()) {
        return Err(Error::not_found("User is not on this server"));
    }
    if !server.users.exists(&server.maps, user)? {
        return Err(Error::not_found("User not found"));
    }
    server.users.profile(&server.maps, user)
}

fn profile_json(profile: &Profile) -> Value {
    serde_json::to_value(profile).unwrap_or_else(|_| json!({}))
}

/// A profile as JSON: ours from storage, another server's over federation.
async fn profile_value(server: &Arc<Server>, user: &UserId) -> Result<Value> {
    if server.is_local(user.server_name()) {
        return Ok(profile_json(&profile_of(server, user)?));
    }
    if !crate::federation::enabled(server) {
        return Err(Error::not_found(
            "User is on another server and this server does not federate",
        ));
    }
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::federation::encode(user.as_str())
    );
    let profile = server
        .federation
        .client
        .send(server, user.server_name(), http::Method::GET, &path, None)
        .await?;
    // Only the fields a profile has, whatever else the other server sent.
    match profile {
        Value::Object(fields) => Ok(Value::Object(fields)),
        _ => Err(crate::federation::remote_error(
            user.server_name(),
            "profile is not an object",
        )),
    }
}

pub async fn get(server: Arc<Server>, request: Ruma<get_profile::v3::Request>) -> Result<Value> {
    profile_value(&server, &request.body.user_id).await
}

pub async fn get_field(
    server: Arc<Server>,
    request: Ruma<get_profile_field::v3::Request>,
) -> Result<Value> {
    let profile = profile_value(&server, &request.body.user_id).await?;
    let field = request.body.field.as_str();
    match profile.get(field) {
        Some(value) => Ok(json!({ field: value })),
        None => Err(Error::not_found("Profile field not set")),
    }
}

pub async fn set_field(
    server: Arc<Server>,
    request: Ruma<set_profile_field::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden("You may only change your own profile"));
    }
    let field = request.body.value.field_name().as_str().to_owned();
    let value = request.body.value.value().into_owned();
    update(&server, &user, &field, Some(value)).await?;
    Ok(json!({}))
}

pub async fn delete_field(
    server: Arc<Server>,
    request: Ruma<delete_profile_field::v3::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    if request.body.user_id != user {
        return Err(Error::forbidden("You may only change your own profile"));
    }
    update(&server, &user, request.body.field.as_str(), None).await?;
    Ok(json!({}))
}

async fn update(server: &Server, user: &UserId, field: &str, value: Option<Value>) -> Result<()> {
    let mut profile = server.users.profile(&server.maps, user)?;
    let as_string = |v: &Option<Value>| -> Result<Option<String>> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::bad_json(format!("{field} must be a string"))),
        }
    };
    match field {
        "displayname" => profile.displayname = as_string(&value)?.filter(|s| !s.is_empty()),
        "avatar_url" => profile.avatar_url = as_string(&value)?.filter(|s| !s.is_empty()),
        _ => match value {
            Some(value) => {
                profile.extra.insert(field.to_owned(), value);
            }
            None => {
                profile.extra.remove(field);
            }
        },
    }
    if serde_json::to_vec(&profile)?.len() > MAX_PROFILE_BYTES {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_PROFILE_TOO_LARGE",
            "Profile is too large",
        ));
    }
    server.users.set_profile(server, user, &profile)?;
    if field == "displayname" || field == "avatar_url" {
        propagate(server, user, &profile).await;
    }
    Ok(())
}

/// Sends an updated join event into every joined room (best effort: a room whose rules refuse
/// it keeps the old profile).
async fn propagate(server: &Server, user: &UserId, profile: &Profile) {
    let Ok(rooms) = server.rooms.rooms_of(&server.maps, user) else {
        return;
    };
    for (room_id, membership) in rooms.into_iter().filter(|(_, m)| m.membership == "join") {
        let Ok(Some(current)) = server.rooms.pdu(&server.maps, &membership.event_id) else {
            continue;
        };
        let mut content = current.content_value();
        let Some(object) = content.as_object_mut() else {
            continue;
        };
        object.remove("displayname");
        object.remove("avatar_url");
        object.remove("join_authorised_via_users_server");
        if let Some(name) = &profile.displayname {
            object.insert("displayname".into(), json!(name));
        }
        if let Some(avatar) = &profile.avatar_url {
            object.insert("avatar_url".into(), json!(avatar));
        }
        let event = NewEvent::state(TimelineEventType::RoomMember, user.as_str(), content);
        if let Err(error) = timeline::send(server, &room_id, user, event, None).await {
            tracing::warn!(%room_id, %error, "profile change not propagated");
        }
    }
}
