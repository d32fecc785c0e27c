//! Sync filters uploaded by clients.

use ruma::UserId;
use serde_json::Value;

use crate::{
    error::Result,
    server::{Server, rand_alnum},
    storage::keys::Key,
};

pub fn create(server: &Server, user: &UserId, filter: &Value) -> Result<String> {
    let id = rand_alnum(12);
    server.maps.userfilterid_filter.put(
        &server.db,
        Key::new().s(user.as_str()).s(&id).build(),
        serde_json::to_vec(filter)?,
    )?;
    Ok(id)
}

pub fn get(server: &Server, user: &UserId, id: &str) -> Result<Option<Value>> {
    match server
        .maps
        .userfilterid_filter
        .get(Key::new().s(user.as_str()).s(id).build())?
    {
        Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
        None => Ok(None),
    }
}
