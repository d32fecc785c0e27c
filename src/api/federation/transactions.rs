//! `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs pushed by another server.

use std::sync::Arc;

use ruma::{api::federation::transactions::send_transaction_message, events::StateEventType};
use serde_json::{Map, Value, json};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    federation::inbound,
    server::Server,
};

/// The spec's limits per transaction.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

pub async fn send(
    server: Arc<Server>,
    request: Ruma<send_transaction_message::v1::Request>,
) -> Result<Value> {
    let origin = request.origin()?.to_owned();
    let body = &request.body;
    if body.origin != origin {
        return Err(Error::forbidden(
            "Transaction origin differs from the signing server",
        ));
    }
    if body.pdus.len() > MAX_PDUS || body.edus.len() > MAX_EDUS {
        return Err(Error::bad_json(
            "At most 50 PDUs and 100 EDUs per transaction",
        ));
    }
    let mut results = Map::new();
    for raw in &body.pdus {
        let (event_id, outcome) = inbound::handle_pdu(&server, &origin, raw).await;
        if let Err(error) = &outcome {
            tracing::info!(%origin, ?event_id, %error, "PDU not accepted");
        }
        if let Some(event_id) = event_id {
            results.insert(event_id.to_string(), inbound::result_entry(&outcome));
        }
    }
    for edu in &body.edus {
        let Ok(edu) = serde_json::from_str::<Value>(edu.json().get()) else {
            continue;
        };
        if let Err(error) = handle_edu(&server, &origin, &edu) {
            tracing::debug!(%origin, %error, edu_type = %edu["edu_type"], "EDU ignored");
        }
    }
    Ok(json!({ "pdus": results }))
}

/// EDUs we act on so far: typing notifications. Others are ignored (and say so in the log).
fn handle_edu(server: &Server, origin: &ruma::ServerName, edu: &Value) -> Result<()> {
    match edu["edu_type"].as_str() {
        Some("m.typing") => {
            let content = &edu["content"];
            let room = ruma::OwnedRoomId::try_from(content["room_id"].as_str().unwrap_or_default())
                .map_err(|e| Error::bad_json(e.to_string()))?;
            let user = ruma::OwnedUserId::try_from(content["user_id"].as_str().unwrap_or_default())
                .map_err(|e| Error::bad_json(e.to_string()))?;
            if user.server_name() != origin {
                return Err(Error::forbidden("typing for a user of another server"));
            }
            if crate::federation::acl::denies(server, &room, origin)?.is_some() {
                return Err(Error::forbidden("denied by the room's ACL"));
            }
            let joined = server
                .rooms
                .current_state_event(
                    &server.maps,
                    &room,
                    &StateEventType::RoomMember,
                    user.as_str(),
                )?
                .and_then(|m| m.membership())
                .is_some_and(|m| m == "join");
            if !joined {
                return Err(Error::forbidden("typing user is not in the room"));
            }
            let timeout = content["typing"]
                .as_bool()
                .unwrap_or(false)
                .then(|| std::time::Duration::from_secs(30));
            server.typing.set(server, &room, &user, timeout)
        }
        Some("m.receipt") => {
            let Some(rooms) = edu["content"].as_object() else {
                return Err(Error::bad_json("receipt content must be an object"));
            };
            for (room, types) in rooms {
                let room = ruma::OwnedRoomId::try_from(room.as_str())
                    .map_err(|e| Error::bad_json(e.to_string()))?;
                if crate::federation::acl::denies(server, &room, origin)?.is_some() {
                    continue;
                }
                let Some(users) = types[crate::rooms::receipts::READ].as_object() else {
                    continue;
                };
                for (user, receipt) in users {
                    let Ok(user) = ruma::OwnedUserId::try_from(user.as_str()) else {
                        continue;
                    };
                    if user.server_name() != origin
                        || !server.rooms.is_joined(&server.maps, &room, &user)?
                    {
                        continue;
                    }
                    let thread = receipt["data"]["thread_id"].as_str().unwrap_or_default();
                    for event_id in receipt["event_ids"].as_array().into_iter().flatten() {
                        let Some(event_id) = event_id
                            .as_str()
                            .and_then(|e| ruma::OwnedEventId::try_from(e).ok())
                        else {
                            continue;
                        };
                        // An event we do not have (yet) cannot carry a receipt here.
                        let _ = crate::rooms::receipts::set(
                            server,
                            &room,
                            &user,
                            crate::rooms::receipts::READ,
                            thread,
                            &event_id,
                        );
                    }
                }
            }
            Ok(())
        }
        Some("m.presence") => {
            for entry in edu["content"]["push"].as_array().into_iter().flatten() {
                let Some(user) = entry["user_id"]
                    .as_str()
                    .and_then(|u| ruma::OwnedUserId::try_from(u).ok())
                else {
                    continue;
                };
                let presence = entry["presence"].as_str().unwrap_or_default();
                // Only the origin's own users, with a state the spec knows.
                if user.server_name() != origin
                    || !matches!(presence, "online" | "unavailable" | "offline")
                {
                    continue;
                }
                let status = entry["status_msg"].as_str().map(str::to_owned);
                crate::users::presence::set(server, &user, presence, Some(status))?;
            }
            Ok(())
        }
        Some("m.device_list_update" | "m.signing_key_update") => {
            crate::federation::e2ee::device_list_edu(server, origin, &edu["content"])
        }
        Some("m.direct_to_device") => {
            crate::federation::e2ee::direct_to_device_edu(server, origin, &edu["content"])
        }
        _ => Err(Error::unrecognized("EDU type not handled")),
    }
}
