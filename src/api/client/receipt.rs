//! Read receipts and read markers.

use std::sync::Arc;

use ruma::{
    EventId, RoomId, UserId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
    events::receipt::ReceiptThread,
};
use serde_json::json;

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{membership::require_joined, receipts},
    server::Server,
    users::account_data,
};

fn thread_key(thread: &ReceiptThread) -> Result<String> {
    Ok(match thread {
        ReceiptThread::Unthreaded => String::new(),
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(root) => root.to_string(),
        other => {
            return Err(Error::invalid_param(format!(
                "Unsupported thread_id {other:?}"
            )));
        }
    })
}

/// A threaded receipt must point at an event of that thread (`main`: an event in no thread).
fn check_thread(server: &Server, room: &RoomId, event_id: &EventId, thread: &str) -> Result<()> {
    if thread.is_empty() {
        return Ok(());
    }
    let Some(pdu) = server
        .rooms
        .pdu(&server.maps, event_id)?
        .filter(|p| *p.room_id == *room)
    else {
        return Err(Error::not_found("Event not found in this room"));
    };
    let event_thread = crate::rooms::relations::thread_root(&server.maps, &server.rooms, &pdu);
    let matches = match (thread, event_thread) {
        ("main", None) => true,
        ("main", Some(_)) => false,
        // The root itself belongs to its own thread too.
        (root, Some(event_thread)) => event_thread.as_str() == root,
        (root, None) => pdu.event_id.as_str() == root,
    };
    if matches {
        Ok(())
    } else {
        Err(Error::invalid_param(
            "The event is not in the thread named by thread_id",
        ))
    }
}

/// `m.fully_read`: the read marker, kept as room account data.
fn set_fully_read(server: &Server, room: &RoomId, user: &UserId, event_id: &EventId) -> Result<()> {
    let known = server
        .rooms
        .event_meta(&server.maps, event_id)?
        .is_some_and(|m| *m.room_id == *room);
    if !known {
        return Err(Error::not_found("Event not found in this room"));
    }
    account_data::set(
        server,
        user,
        Some(room),
        "m.fully_read",
        json!({ "event_id": event_id }),
    )
}

pub async fn create(
    server: Arc<Server>,
    request: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    require_joined(&server, &body.room_id, &user)?;
    check_thread(
        &server,
        &body.room_id,
        &body.event_id,
        &thread_key(&body.thread)?,
    )?;
    match &body.receipt_type {
        ReceiptType::Read => {
            receipts::set(
                &server,
                &body.room_id,
                &user,
                receipts::READ,
                &thread_key(&body.thread)?,
                &body.event_id,
            )?;
        }
        ReceiptType::ReadPrivate => {
            receipts::set(
                &server,
                &body.room_id,
                &user,
                receipts::READ_PRIVATE,
                &thread_key(&body.thread)?,
                &body.event_id,
            )?;
        }
        ReceiptType::FullyRead => {
            if body.thread != ReceiptThread::Unthreaded {
                return Err(Error::invalid_param("m.fully_read cannot be threaded"));
            }
            set_fully_read(&server, &body.room_id, &user, &body.event_id)?;
        }
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown receipt type {other}"
            )));
        }
    }
    Ok(create_receipt::v3::Response::new())
}

pub async fn read_markers(
    server: Arc<Server>,
    request: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let user = request.owned_user()?;
    let body = &request.body;
    require_joined(&server, &body.room_id, &user)?;
    if let Some(event_id) = &body.fully_read {
        set_fully_read(&server, &body.room_id, &user, event_id)?;
    }
    if let Some(event_id) = &body.read_receipt {
        receipts::set(&server, &body.room_id, &user, receipts::READ, "", event_id)?;
    }
    if let Some(event_id) = &body.private_read_receipt {
        receipts::set(
            &server,
            &body.room_id,
            &user,
            receipts::READ_PRIVATE,
            "",
            event_id,
        )?;
    }
    Ok(set_read_marker::v3::Response::new())
}
