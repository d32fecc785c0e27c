//! Server-side key backups, `/room_keys/...` (issue 4). The logic is in `crate::e2ee::backup`.

use std::sync::Arc;

use ruma::api::client::backup::{
    add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
    delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session,
    delete_backup_version, get_backup_info, get_backup_keys, get_backup_keys_for_room,
    get_backup_keys_for_session, get_latest_backup_info, update_backup_version,
};
use serde_json::{Value, json};

use crate::{
    api::ruma::Ruma,
    e2ee::backup,
    error::{Error, Result},
    server::Server,
};

fn counts((etag, count): (String, u64)) -> Value {
    json!({ "etag": etag, "count": count })
}

pub async fn create_version(
    server: Arc<Server>,
    request: Ruma<create_backup_version::v3::Request>,
) -> Result<Value> {
    let version = backup::create(
        &server,
        request.user()?,
        request.body.algorithm.json().get(),
    )?;
    Ok(json!({ "version": version }))
}

pub async fn latest_version(
    server: Arc<Server>,
    request: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<Value> {
    let (version, info) = backup::latest(&server, request.user()?)?
        .ok_or_else(|| Error::not_found("No current backup version"))?;
    Ok(info.info(version))
}

pub async fn get_version(
    server: Arc<Server>,
    request: Ruma<get_backup_info::v3::Request>,
) -> Result<Value> {
    let (version, info) = backup::get(&server, request.user()?, &request.body.version)?;
    Ok(info.info(version))
}

pub async fn update_version(
    server: Arc<Server>,
    request: Ruma<update_backup_version::v3::Request>,
) -> Result<Value> {
    backup::update(
        &server,
        request.user()?,
        &request.body.version,
        request.body.algorithm.json().get(),
    )?;
    Ok(json!({}))
}

pub async fn delete_version(
    server: Arc<Server>,
    request: Ruma<delete_backup_version::v3::Request>,
) -> Result<Value> {
    backup::delete_version(&server, request.user()?, &request.body.version)?;
    Ok(json!({}))
}

pub async fn put_keys(
    server: Arc<Server>,
    request: Ruma<add_backup_keys::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    let keys = body
        .rooms
        .iter()
        .flat_map(|(room, backup)| {
            backup
                .sessions
                .iter()
                .map(move |(session, data)| (&**room, session.as_str(), data.json().get()))
        })
        .collect();
    Ok(counts(backup::put_keys(
        &server,
        request.user()?,
        &body.version,
        keys,
    )?))
}

pub async fn put_room_keys(
    server: Arc<Server>,
    request: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    let keys = body
        .sessions
        .iter()
        .map(|(session, data)| (&*body.room_id, session.as_str(), data.json().get()))
        .collect();
    Ok(counts(backup::put_keys(
        &server,
        request.user()?,
        &body.version,
        keys,
    )?))
}

pub async fn put_session_key(
    server: Arc<Server>,
    request: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    let keys = vec![(
        &*body.room_id,
        body.session_id.as_str(),
        body.session_data.json().get(),
    )];
    Ok(counts(backup::put_keys(
        &server,
        request.user()?,
        &body.version,
        keys,
    )?))
}

pub async fn get_keys(
    server: Arc<Server>,
    request: Ruma<get_backup_keys::v3::Request>,
) -> Result<Value> {
    backup::get_all(&server, request.user()?, &request.body.version)
}

pub async fn get_room_keys(
    server: Arc<Server>,
    request: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    backup::get_room(&server, request.user()?, &body.version, &body.room_id)
}

pub async fn get_session_key(
    server: Arc<Server>,
    request: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    backup::get_session(
        &server,
        request.user()?,
        &body.version,
        &body.room_id,
        &body.session_id,
    )
}

pub async fn delete_keys(
    server: Arc<Server>,
    request: Ruma<delete_backup_keys::v3::Request>,
) -> Result<Value> {
    Ok(counts(backup::delete_keys(
        &server,
        request.user()?,
        &request.body.version,
        None,
        None,
    )?))
}

pub async fn delete_room_keys(
    server: Arc<Server>,
    request: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    Ok(counts(backup::delete_keys(
        &server,
        request.user()?,
        &body.version,
        Some(&body.room_id),
        None,
    )?))
}

pub async fn delete_session_key(
    server: Arc<Server>,
    request: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<Value> {
    let body = &request.body;
    Ok(counts(backup::delete_keys(
        &server,
        request.user()?,
        &body.version,
        Some(&body.room_id),
        Some(&body.session_id),
    )?))
}
