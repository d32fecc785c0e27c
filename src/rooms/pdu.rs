//! A persistent data unit: a room event as stored and as exchanged between servers.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UserId, events::TimelineEventType,
};
use serde_json::{Map, Value, value::RawValue};

use crate::error::{Error, Result};

/// The parsed fields of a PDU plus its canonical JSON (without `event_id`, as over federation).
#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub rejected: bool,
    /// Whether the room id is implied (v12 `m.room.create` has no `room_id` field).
    pub room_id_implied: bool,
    pub json: CanonicalJsonObject,
}

impl Pdu {
    /// Parses a stored or received PDU. `event_id` is known from the reference hash or the key.
    pub fn from_json(event_id: OwnedEventId, json: CanonicalJsonObject) -> Result<Self> {
        let str_field = |name: &str| json.get(name).and_then(CanonicalJsonValue::as_str);
        let ids = |name: &str| -> Result<Vec<OwnedEventId>> {
            match json.get(name) {
                None => Ok(vec![]),
                Some(CanonicalJsonValue::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        CanonicalJsonValue::String(s) => {
                            OwnedEventId::try_from(s.as_str()).map_err(bad)
                        }
                        // Room versions 1 and 2 reference events as [id, hashes].
                        CanonicalJsonValue::Array(pair) => pair
                            .first()
                            .and_then(CanonicalJsonValue::as_str)
                            .ok_or_else(|| Error::bad_json("bad event reference"))
                            .and_then(|s| OwnedEventId::try_from(s).map_err(bad)),
                        _ => Err(Error::bad_json(format!("bad {name}"))),
                    })
                    .collect(),
                Some(_) => Err(Error::bad_json(format!("{name} must be an array"))),
            }
        };
        let kind: TimelineEventType = str_field("type")
            .ok_or_else(|| Error::bad_json("PDU without type"))?
            .into();
        let (room_id, room_id_implied) = match str_field("room_id") {
            Some(room_id) => (OwnedRoomId::try_from(room_id).map_err(bad)?, false),
            None if kind == TimelineEventType::RoomCreate => {
                // Room version 12: the room id is the create event's id with `!` for `$`.
                (
                    OwnedRoomId::try_from(format!("!{}", event_id.localpart())).map_err(bad)?,
                    true,
                )
            }
            None => return Err(Error::bad_json("PDU without room_id")),
        };
        let sender = OwnedUserId::try_from(
            str_field("sender").ok_or_else(|| Error::bad_json("PDU without sender"))?,
        )
        .map_err(bad)?;
        let origin_server_ts = match json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => {
                MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(i64::from(*ts)).unwrap_or_default())
            }
            _ => return Err(Error::bad_json("PDU without origin_server_ts")),
        };
        let depth = match json.get("depth") {
            Some(CanonicalJsonValue::Integer(d)) => u64::try_from(i64::from(*d)).unwrap_or(0),
            _ => 0,
        };
        let content_value = json
            .get("content")
            .cloned()
            .unwrap_or(CanonicalJsonValue::Object(Default::default()));
        let content = serde_json::value::to_raw_value(&content_value)?;
        let state_key = str_field("state_key").map(str::to_owned);
        let redacts = match str_field("redacts") {
            Some(id) => Some(OwnedEventId::try_from(id).map_err(bad)?),
            None => content_value
                .as_object()
                .and_then(|c| c.get("redacts"))
                .and_then(CanonicalJsonValue::as_str)
                .filter(|_| kind == TimelineEventType::RoomRedaction)
                .and_then(|id| OwnedEventId::try_from(id).ok()),
        };
        Ok(Self {
            event_id,
            room_id,
            sender,
            origin_server_ts,
            kind,
            content,
            state_key,
            prev_events: ids("prev_events")?,
            auth_events: ids("auth_events")?,
            redacts,
            depth,
            rejected: false,
            room_id_implied,
            json,
        })
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Map::new()))
    }

    /// A string field of the content (e.g. `membership`).
    pub fn content_str(&self, field: &str) -> Option<String> {
        match self.json.get("content")? {
            CanonicalJsonValue::Object(content) => content.get(field)?.as_str().map(str::to_owned),
            _ => None,
        }
    }

    pub fn membership(&self) -> Option<String> {
        (self.kind == TimelineEventType::RoomMember)
            .then(|| self.content_str("membership"))
            .flatten()
    }

    pub fn state_user(&self) -> Option<&UserId> {
        self.state_key
            .as_deref()
            .and_then(|key| <&UserId>::try_from(key).ok())
    }

    /// The event as a client sees it (the spec's ClientEvent), without `unsigned`.
    pub fn to_client_event(&self, with_room_id: bool) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("type".into(), Value::String(self.kind.to_string()));
        out.insert("content".into(), self.content_value());
        out.insert("sender".into(), Value::String(self.sender.to_string()));
        out.insert(
            "origin_server_ts".into(),
            Value::from(u64::from(self.origin_server_ts.0)),
        );
        out.insert("event_id".into(), Value::String(self.event_id.to_string()));
        if with_room_id {
            out.insert("room_id".into(), Value::String(self.room_id.to_string()));
        }
        if let Some(state_key) = &self.state_key {
            out.insert("state_key".into(), Value::String(state_key.clone()));
        }
        if let Some(redacts) = &self.redacts {
            // Top-level `redacts` is kept for clients that predate room version 11.
            out.insert("redacts".into(), Value::String(redacts.to_string()));
        }
        out
    }

    /// The PDU as sent over federation (canonical JSON object as JSON value).
    pub fn to_federation_value(&self) -> Value {
        serde_json::to_value(&self.json).unwrap_or(Value::Null)
    }

    pub fn unsigned(&self) -> Option<&CanonicalJsonObject> {
        self.json
            .get("unsigned")
            .and_then(CanonicalJsonValue::as_object)
    }
}

fn bad(error: impl std::fmt::Display) -> Error {
    Error::bad_json(format!("invalid PDU: {error}"))
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        (!self.room_id_implied).then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

pub type PduRef = Arc<Pdu>;
