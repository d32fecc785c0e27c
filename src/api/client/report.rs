//! Reporting events and rooms to the server's administrators.

use std::sync::Arc;

use ruma::api::client::room::{report_content, report_room};
use serde_json::json;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::visibility,
    server::Server,
    users::now_ms,
};

fn store(server: &Server, report: serde_json::Value) -> Result<()> {
    let mut batch = server.db.batch();
    let pending = server.stream.next(&server.maps, &mut batch);
    batch.put(
        &server.maps.reports,
        pending.count().to_be_bytes(),
        serde_json::to_vec(&report)?,
    );
    server.db.commit(batch)?;
    pending.finish(Vec::new());
    tracing::info!(%report, "content reported");
    Ok(())
}

pub async fn event(
    server: Arc<Server>,
    request: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    let maps = &server.maps;
    // Reporting an event one cannot see is indistinguishable from an unknown event.
    let not_found = || Error::not_found("Event not found");
    let pdu = server
        .rooms
        .pdu(maps, &body.event_id)?
        .filter(|p| p.room_id == body.room_id)
        .ok_or_else(not_found)?;
    let meta = server
        .rooms
        .event_meta(maps, &pdu.event_id)?
        .ok_or_else(not_found)?;
    // Only members report, and only what they can see.
    let membership = server.rooms.membership(maps, &body.room_id, &user)?;
    if membership.as_ref().is_none_or(|m| m.membership != "join") {
        return Err(not_found());
    }
    if !visibility::can_see(&server, &user, &pdu, &meta, membership.as_ref())? {
        return Err(not_found());
    }
    if body.reason.as_deref().is_some_and(|r| r.len() > 10_000) {
        return Err(Error::invalid_param("Reason is too long"));
    }
    store(
        &server,
        json!({
            "kind": "event",
            "reporter": user,
            "room_id": body.room_id,
            "event_id": body.event_id,
            "reason": body.reason,
            "score": serde_json::from_slice::<serde_json::Value>(&request.json).ok().and_then(|b| b.get("score").cloned()),
            "ts": now_ms(),
        }),
    )?;
    Ok(report_content::v3::Response::new())
}

pub async fn room(
    server: Arc<Server>,
    request: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    if !server.rooms.exists(&server.maps, &body.room_id)? {
        return Err(Error::not_found("Room not found"));
    }
    store(
        &server,
        json!({
            "kind": "room",
            "reporter": user,
            "room_id": body.room_id,
            "reason": body.reason,
            "ts": now_ms(),
        }),
    )?;
    Ok(report_room::v3::Response::new())
}
