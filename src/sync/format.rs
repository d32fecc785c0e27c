//! Events as clients receive them: the client format plus `unsigned` data.

use ruma::{CanonicalJsonValue, DeviceId};
use serde_json::{Map, Value, json};

use crate::{
    error::Result,
    rooms::{EventMeta, pdu::Pdu},
    server::Server,
    users::now_ms,
};

/// The client-format event with `unsigned` (`age`, `transaction_id` for the sending device,
/// `prev_content`/`replaces_state` for state, `redacted_because`).
pub fn client_event(
    server: &Server,
    pdu: &Pdu,
    meta: Option<&EventMeta>,
    device: Option<&DeviceId>,
    with_room_id: bool,
) -> Result<Value> {
    let mut event = pdu.to_client_event(with_room_id);
    let mut unsigned = Map::new();
    unsigned.insert(
        "age".into(),
        json!(now_ms().saturating_sub(u64::from(pdu.origin_server_ts.0))),
    );
    if let Some(meta) = meta {
        if let (Some((txn_device, txn_id)), Some(device)) = (&meta.txn, device)
            && **txn_device == *device
        {
            unsigned.insert("transaction_id".into(), json!(txn_id));
        }
        if let Some(previous) = &meta.replaces_state {
            unsigned.insert("replaces_state".into(), json!(previous));
            if let Some(prev) = server.rooms.pdu(&server.maps, previous)? {
                unsigned.insert("prev_content".into(), prev.content_value());
                unsigned.insert("prev_sender".into(), json!(prev.sender));
            }
        }
    }
    if let Some(CanonicalJsonValue::Object(stored)) = pdu.json.get("unsigned")
        && let Some(because) = stored.get("redacted_because")
    {
        let mut because = serde_json::to_value(because)?;
        strip_federation_fields(&mut because);
        unsigned.insert("redacted_because".into(), because);
    }
    event.insert("unsigned".into(), Value::Object(unsigned));
    Ok(Value::Object(event))
}

/// Removes the PDU-only fields from an event embedded in `unsigned`.
fn strip_federation_fields(event: &mut Value) {
    if let Some(object) = event.as_object_mut() {
        for key in [
            "auth_events",
            "prev_events",
            "hashes",
            "signatures",
            "depth",
            "origin",
        ] {
            object.remove(key);
        }
    }
}

/// A stripped state event (for invite/knock state): type, state_key, content, sender.
pub fn stripped(pdu: &Pdu) -> Value {
    json!({
        "type": pdu.kind.to_string(),
        "state_key": pdu.state_key.clone().unwrap_or_default(),
        "content": pdu.content_value(),
        "sender": pdu.sender,
    })
}

/// As [`client_event`], with the server-side aggregations of its relations
/// (`unsigned.m.relations`: latest edit, thread summary, references) as `viewer` sees them.
pub fn client_event_for(
    server: &Server,
    pdu: &Pdu,
    meta: Option<&EventMeta>,
    viewer: Option<&ruma::UserId>,
    device: Option<&DeviceId>,
    with_room_id: bool,
) -> Result<Value> {
    let mut event = client_event(server, pdu, meta, device, with_room_id)?;
    if meta.is_none_or(|m| m.redacted_by.is_none())
        && let Some(bundle) = crate::rooms::relations::bundle(server, pdu, viewer, device)?
    {
        event["unsigned"]["m.relations"] = bundle;
    }
    Ok(event)
}
