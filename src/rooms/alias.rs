//! Room aliases on this server (`#name:server -> !room`).

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    server::Server,
    storage::keys::Key,
};

#[derive(Serialize, Deserialize)]
pub struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

pub fn resolve_local(server: &Server, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
    match server.maps.alias_roomid.get(alias.as_bytes())? {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
        None => Ok(None),
    }
}

/// Creates an alias; `409` if it is taken.
pub fn create(
    server: &Server,
    alias: &RoomAliasId,
    room_id: &RoomId,
    creator: &UserId,
) -> Result<()> {
    if !server.is_local(alias.server_name()) {
        return Err(Error::invalid_param("Alias must be on this server"));
    }
    if resolve_local(server, alias)?.is_some() {
        return Err(Error::conflict("Room alias already exists"));
    }
    let record = AliasRecord {
        room_id: room_id.to_owned(),
        creator: creator.to_owned(),
    };
    let mut batch = server.db.batch();
    batch.put(
        &server.maps.alias_roomid,
        alias.as_bytes(),
        serde_json::to_vec(&record)?,
    );
    batch.put(
        &server.maps.roomid_alias,
        Key::new().s(room_id.as_str()).s(alias.as_str()).build(),
        b"",
    );
    server.db.commit(batch)
}

pub fn delete(server: &Server, alias: &RoomAliasId) -> Result<()> {
    let Some(record) = resolve_local(server, alias)? else {
        return Err(Error::not_found("Unknown alias"));
    };
    let mut batch = server.db.batch();
    batch.delete(&server.maps.alias_roomid, alias.as_bytes());
    batch.delete(
        &server.maps.roomid_alias,
        Key::new()
            .s(record.room_id.as_str())
            .s(alias.as_str())
            .build(),
    );
    server.db.commit(batch)
}

pub fn local_aliases(server: &Server, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let prefix = Key::new().s(room_id.as_str()).prefix();
    let plen = prefix.len();
    Ok(server
        .maps
        .roomid_alias
        .scan_prefix(prefix)
        .filter_map(|(key, _)| {
            std::str::from_utf8(&key[plen..])
                .ok()
                .and_then(|s| OwnedRoomAliasId::try_from(s).ok())
        })
        .collect())
}
