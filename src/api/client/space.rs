//! Spaces and room summaries (issue 3): `GET /rooms/{roomId}/hierarchy` and
//! `GET /room_summary/{roomIdOrAlias}` (with MSC3266's unstable paths).

use std::sync::Arc;

use ruma::{
    OwnedRoomId, RoomAliasId, RoomId,
    api::client::{room::get_summary, space::get_hierarchy},
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    directory::{self, hierarchy},
    error::{Error, Result},
    rooms::alias,
    server::Server,
};

pub async fn hierarchy(
    server: Arc<Server>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<Value> {
    let user = request.owned_user()?;
    let body = request.body;
    // A space this server is not in: its servers answer (the space and its children).
    if !server.rooms.exists(&server.maps, &body.room_id)?
        && crate::federation::enabled(&server)
        && body.from.is_none()
    {
        return remote_hierarchy(&server, &user, &body.room_id, body.suggested_only).await;
    }
    tokio::task::spawn_blocking(move || {
        hierarchy::walk(
            &server,
            &user,
            &hierarchy::Query {
                root: &body.room_id,
                suggested_only: body.suggested_only,
                max_depth: body.max_depth.map(u64::from),
                limit: body.limit.map(u64::from),
                from: body.from.as_deref(),
            },
        )
    })
    .await
    .map_err(Error::internal)?
}

/// Asks the space's servers (the one in its id, the inviter's) for its hierarchy over
/// federation. Only the space and its direct children come back that way.
async fn remote_hierarchy(
    server: &Arc<Server>,
    user: &ruma::UserId,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<Value> {
    let mut servers = crate::federation::join::servers_from_stored_state(server, room_id, user);
    if let Some(name) = room_id.server_name()
        && !server.is_local(name)
        && !servers.iter().any(|s| s == name)
    {
        servers.insert(0, name.to_owned());
    }
    let path = format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
        crate::federation::encode(room_id.as_str())
    );
    let mut last_error = Error::forbidden("You are not allowed to view this room");
    for origin in servers {
        match server
            .federation
            .client
            .send(server, &origin, http::Method::GET, &path, None)
            .await
        {
            Ok(answer) => {
                let mut rooms = vec![answer["room"].clone()];
                rooms.extend(answer["children"].as_array().into_iter().flatten().cloned());
                rooms.retain(|r| r.is_object());
                return Ok(serde_json::json!({ "rooms": rooms }));
            }
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

pub async fn summary(
    server: Arc<Server>,
    request: Ruma<get_summary::v1::Request>,
) -> Result<Value> {
    let not_found = || Error::not_found("Room not found or not accessible");
    let requested = &request.body.room_id_or_alias;
    let room_id: OwnedRoomId = match <&RoomId>::try_from(requested.as_str()) {
        Ok(room_id) => room_id.to_owned(),
        Err(_) => {
            let alias = <&RoomAliasId>::try_from(requested.as_str()).map_err(|_| not_found())?;
            if server.is_local(alias.server_name()) {
                alias::resolve_local(&server, alias)?
                    .ok_or_else(not_found)?
                    .room_id
            } else {
                // The summary itself comes from what this server knows of the room.
                crate::federation::join::resolve_alias(&server, alias)
                    .await?
                    .0
            }
        }
    };
    let user = request.session.as_ref().map(|s| s.user_id.clone());
    let summary = server
        .search
        .directory
        .summary(&server, &room_id)?
        .ok_or_else(not_found)?;
    if !directory::accessible(&server, user.as_deref(), &room_id, &summary)? {
        return Err(not_found());
    }
    let mut out = summary.to_json(&room_id, true);
    // MSC3266's unstable names, for clients that predate the stable fields.
    out.insert(
        "im.nheko.summary.room_version".into(),
        json!(summary.room_version),
    );
    if let Some(encryption) = &summary.encryption {
        out.insert("im.nheko.summary.encryption".into(), json!(encryption));
    }
    if let Some(user) = &user {
        out.insert(
            "membership".into(),
            json!(directory::membership_of(&server, &room_id, user)?),
        );
    }
    Ok(Value::Object(out))
}
