//! Pushers: where to deliver a user's notifications (push gateways, per the push gateway API),
//! and the delivery itself, with retries and exponential backoff.

use std::{collections::HashSet, sync::Arc, time::Duration};

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Notification;
use crate::{
    error::{Error, Result},
    server::Server,
    storage::{Maps, keys::Key},
    users::now_ms,
};

/// A pusher as clients set it (`/pushers/set`), plus when it was set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pusher {
    pub kind: String,
    pub app_id: String,
    pub pushkey: String,
    pub app_display_name: String,
    pub device_display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: Value,
    #[serde(default)]
    pub pushkey_ts: u64,
}

/// Delivery attempts before a notification is dropped.
const MAX_ATTEMPTS: u32 = 6;

pub struct Pushers {
    client: reqwest::Client,
    /// Users with at least one pusher, so that notifying a room's members does not look up
    /// every member's pushers per event. Rebuilt from storage after any change.
    users: parking_lot::Mutex<Option<Arc<HashSet<OwnedUserId>>>>,
}

impl Pushers {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            client,
            users: parking_lot::Mutex::new(None),
        }
    }

    /// Whether the user has any pusher (from a cached set of such users).
    pub fn has_pushers(&self, maps: &Maps, user: &UserId) -> bool {
        let users = {
            let mut cached = self.users.lock();
            cached
                .get_or_insert_with(|| {
                    Arc::new(
                        maps.userpusher
                            .scan_prefix(Vec::new())
                            .filter_map(|(key, _)| {
                                let end =
                                    key.iter().position(|b| *b == crate::storage::keys::SEP)?;
                                let user = std::str::from_utf8(&key[..end]).ok()?;
                                OwnedUserId::try_from(user).ok()
                            })
                            .collect(),
                    )
                })
                .clone()
        };
        users.contains(user)
    }

    fn invalidate(&self) {
        *self.users.lock() = None;
    }
}

impl Default for Pushers {
    fn default() -> Self {
        Self::new()
    }
}

fn key(user: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    Key::new().s(user.as_str()).s(app_id).s(pushkey).build()
}

pub fn list(maps: &Maps, user: &UserId) -> Result<Vec<Pusher>> {
    maps.userpusher
        .scan_prefix(Key::new().s(user.as_str()).prefix())
        .map(|(_, value)| Ok(serde_json::from_slice(&value)?))
        .collect()
}

/// Adds or replaces a pusher. Without `append`, other users' pushers with the same app id and
/// pushkey are removed (a device moves to another account).
pub fn set(server: &Server, user: &UserId, mut pusher: Pusher, append: bool) -> Result<()> {
    if pusher.kind == "http" {
        let url = pusher
            .data
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| Error::invalid_param("data.url must be a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || !parsed.path().ends_with("/_matrix/push/v1/notify")
        {
            return Err(Error::invalid_param(
                "data.url must be an http(s) URL ending in /_matrix/push/v1/notify",
            ));
        }
    }
    pusher.pushkey_ts = now_ms();
    let maps = &server.maps;
    let mut batch = server.db.batch();
    if !append {
        for (key, value) in maps.userpusher.scan_prefix(Vec::new()) {
            if let Ok(other) = serde_json::from_slice::<Pusher>(&value)
                && other.app_id == pusher.app_id
                && other.pushkey == pusher.pushkey
            {
                batch.delete(&maps.userpusher, &key);
            }
        }
    }
    batch.put(
        &maps.userpusher,
        key(user, &pusher.app_id, &pusher.pushkey),
        serde_json::to_vec(&pusher)?,
    );
    server.db.commit(batch)?;
    server.push.pushers.invalidate();
    Ok(())
}

pub fn remove(server: &Server, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
    server
        .maps
        .userpusher
        .delete(&server.db, key(user, app_id, pushkey))?;
    server.push.pushers.invalidate();
    Ok(())
}

/// Sends a notification to each of the user's HTTP pushers, in the background.
pub fn deliver(server: &std::sync::Arc<Server>, user: OwnedUserId, notification: Notification) {
    let Ok(pushers) = list(&server.maps, &user) else {
        return;
    };
    for pusher in pushers.into_iter().filter(|p| p.kind == "http") {
        let server = server.clone();
        let user = user.clone();
        let notification = notification.clone();
        tokio::spawn(async move {
            if let Err(error) = deliver_one(&server, &user, &pusher, &notification).await {
                tracing::warn!(%user, app_id = %pusher.app_id, %error, "push not delivered");
            }
        });
    }
}

async fn deliver_one(
    server: &Server,
    user: &UserId,
    pusher: &Pusher,
    notification: &Notification,
) -> Result<()> {
    let url = pusher
        .data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::internal("pusher without url"))?;
    let body = request_body(server, user, pusher, notification)?;
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=MAX_ATTEMPTS {
        match server
            .push
            .pushers
            .client
            .post(url)
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                let answer: Value = response.json().await.unwrap_or_default();
                // The gateway tells us which pushkeys it no longer knows: drop those pushers.
                let rejected = answer
                    .get("rejected")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if rejected
                    .iter()
                    .any(|key| key.as_str() == Some(pusher.pushkey.as_str()))
                {
                    remove(server, user, &pusher.app_id, &pusher.pushkey)?;
                }
                return Ok(());
            }
            // A 4xx will not get better by retrying.
            Ok(response) if response.status().is_client_error() => {
                return Err(Error::internal(format_args!(
                    "gateway answered {}",
                    response.status()
                )));
            }
            Ok(response) => {
                tracing::debug!(attempt, status = %response.status(), "push gateway error; retrying")
            }
            Err(error) => tracing::debug!(attempt, %error, "push gateway unreachable; retrying"),
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    Err(Error::internal(format_args!(
        "gave up after {MAX_ATTEMPTS} attempts"
    )))
}

/// The push gateway API request body (`POST /_matrix/push/v1/notify`).
fn request_body(
    server: &Server,
    user: &UserId,
    pusher: &Pusher,
    notification: &Notification,
) -> Result<Value> {
    let maps = &server.maps;
    let pdu = server
        .rooms
        .pdu(maps, &notification.event_id)?
        .ok_or_else(|| Error::internal("notified event vanished"))?;
    let event_id_only = pusher.data.get("format").and_then(Value::as_str) == Some("event_id_only");
    let mut data = pusher.data.clone();
    if let Some(object) = data.as_object_mut() {
        object.remove("url");
    }
    let tweaks = tweaks_of(&notification.actions);
    let unread = unread_rooms(server, user)?;
    let device = json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts / 1000,
        "data": data,
        "tweaks": tweaks,
    });
    let mut body = json!({
        "event_id": notification.event_id,
        "room_id": notification.room_id,
        "counts": { "unread": unread },
        "devices": [device],
        "prio": if notification.highlight { "high" } else { "low" },
    });
    if !event_id_only {
        let sender_name = server
            .rooms
            .current_state_event(
                maps,
                &notification.room_id,
                &ruma::events::StateEventType::RoomMember,
                pdu.sender.as_str(),
            )?
            .and_then(|m| m.content_str("displayname"));
        let room_name = server
            .rooms
            .current_state_event(
                maps,
                &notification.room_id,
                &ruma::events::StateEventType::RoomName,
                "",
            )?
            .and_then(|n| n.content_str("name"));
        body["type"] = json!(pdu.kind.to_string());
        body["sender"] = json!(pdu.sender);
        body["content"] = pdu.content_value();
        if let Some(name) = sender_name {
            body["sender_display_name"] = json!(name);
        }
        if let Some(name) = room_name {
            body["room_name"] = json!(name);
        }
        if pdu.state_user() == Some(user) {
            body["user_is_target"] = json!(true);
        }
    }
    Ok(json!({ "notification": body }))
}

/// `set_tweak` actions as the gateway's `tweaks` object.
fn tweaks_of(actions: &Value) -> Value {
    let mut tweaks = serde_json::Map::new();
    for action in actions.as_array().into_iter().flatten() {
        if let Some(name) = action.get("set_tweak").and_then(Value::as_str) {
            tweaks.insert(
                name.to_owned(),
                action.get("value").cloned().unwrap_or(Value::Bool(true)),
            );
        }
    }
    Value::Object(tweaks)
}

/// The badge count: unread notifications across the user's rooms (the push gateway API's
/// "number of unread messages"; Synapse counts rooms by default, the spec says messages).
fn unread_rooms(server: &Server, user: &UserId) -> Result<u64> {
    let mut unread = 0;
    for (room, membership) in server.rooms.rooms_of(&server.maps, user)? {
        if membership.membership != "join" {
            continue;
        }
        let read = crate::rooms::receipts::read_up_to(&server.maps, &room, user);
        let counts = super::unread_counts(&server.maps, user, &room, &read, false);
        unread += counts.notifications;
    }
    Ok(unread)
}
