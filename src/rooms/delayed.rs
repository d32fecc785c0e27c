//! Delayed events (MSC4140): an event a user schedules now and the server sends later, unless
//! the user restarts its timer, cancels it or sends it earlier. MatrixRTC clients schedule
//! their "left the call" membership this way and keep restarting it while connected, so a
//! client that crashes leaves the call by itself.
//!
//! Scheduled events live in `delayid_delayed` (they survive restarts; overdue ones go out at
//! start), finished ones in `delayid_finalised`. One task sleeps until the next is due.
//! A state event at the same room, type and state key from someone else cancels pending
//! delayed state events there (they would overwrite it), as Synapse does.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::timeline::{self, NewEvent};
use crate::{
    error::{Error, Result},
    server::Server,
};

/// Longest the finished events are listed (they are pruned after this).
const KEEP_FINALISED_MS: u64 = 7 * 24 * 60 * 60 * 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delayed {
    pub delay_id: String,
    pub user_id: OwnedUserId,
    pub room_id: OwnedRoomId,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    pub content: Value,
    /// Milliseconds from `running_since` until it is sent.
    pub delay: u64,
    pub running_since: u64,
}

impl Delayed {
    fn due_at(&self) -> u64 {
        self.running_since.saturating_add(self.delay)
    }
}

/// How a delayed event ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finalised {
    pub delayed_event: Delayed,
    /// `send` or `cancel`.
    pub outcome: String,
    /// `action` (asked for), `delay` (timer ran out) or `error` (sending failed).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub origin_server_ts: u64,
}

#[derive(Default)]
pub struct DelayedEvents {
    wake: Notify,
}

/// What a client asks for a delayed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Restart,
    Cancel,
    Send,
}

impl Action {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "restart" => Ok(Self::Restart),
            "cancel" => Ok(Self::Cancel),
            "send" => Ok(Self::Send),
            _ => Err(Error::invalid_param(
                "action must be one of 'restart', 'cancel', 'send'",
            )),
        }
    }
}

impl DelayedEvents {
    /// Schedules an event; returns its delay id.
    #[allow(clippy::too_many_arguments)]
    pub fn schedule(
        &self,
        server: &Server,
        user: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: Option<String>,
        content: Value,
        delay: u64,
    ) -> Result<String> {
        let max = server.config.limits.max_event_delay_ms;
        if delay > max {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "The requested delay exceeds the allowed maximum",
            )
            .with_field("org.matrix.msc4140.errcode", json!("M_MAX_DELAY_EXCEEDED"))
            .with_field("org.matrix.msc4140.max_delay", json!(max)));
        }
        if !server.rooms.is_joined(&server.maps, room_id, user)? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let delayed = Delayed {
            delay_id: format!("syd_{}", crate::server::rand_alnum(20)),
            user_id: user.to_owned(),
            room_id: room_id.to_owned(),
            kind: kind.to_owned(),
            state_key,
            content,
            delay,
            running_since: crate::users::now_ms(),
        };
        store(server, &delayed)?;
        self.wake.notify_one();
        Ok(delayed.delay_id)
    }

    /// Restarts, cancels or sends a scheduled event. `owner`: the authenticated user, if the
    /// request was authenticated (the delay id alone also suffices: it is unguessable).
    pub async fn update(
        &self,
        server: &Arc<Server>,
        delay_id: &str,
        owner: Option<&UserId>,
        action: Action,
    ) -> Result<()> {
        let not_found = || Error::not_found("No such scheduled delayed event");
        let mut delayed = load(server, delay_id)?.ok_or_else(not_found)?;
        if owner.is_some_and(|o| o != delayed.user_id) {
            return Err(not_found());
        }
        match action {
            Action::Restart => {
                delayed.running_since = crate::users::now_ms();
                store(server, &delayed)?;
                self.wake.notify_one();
            }
            Action::Cancel => finalise(server, delayed, "cancel", "action", None)?,
            Action::Send => fire(server, delayed, "action").await?,
        }
        Ok(())
    }

    /// The user's scheduled and finished delayed events (optionally only those of `ids`).
    pub fn list(&self, server: &Server, user: &UserId) -> Result<(Vec<Delayed>, Vec<Finalised>)> {
        let scheduled = server
            .maps
            .delayid_delayed
            .scan_prefix(Vec::new())
            .filter_map(|(_, v)| serde_json::from_slice::<Delayed>(&v).ok())
            .filter(|d| d.user_id == user)
            .collect();
        let finalised = server
            .maps
            .delayid_finalised
            .scan_prefix(Vec::new())
            .filter_map(|(_, v)| serde_json::from_slice::<Finalised>(&v).ok())
            .filter(|f| f.delayed_event.user_id == user)
            .collect();
        Ok((scheduled, finalised))
    }

    /// A state event was persisted: delayed state events of *other* users at the same place
    /// are cancelled (they would overwrite a newer state).
    pub fn state_changed(
        &self,
        server: &Server,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
        sender: &UserId,
    ) {
        let affected: Vec<Delayed> = server
            .maps
            .delayid_delayed
            .scan_prefix(Vec::new())
            .filter_map(|(_, v)| serde_json::from_slice::<Delayed>(&v).ok())
            .filter(|d| {
                d.room_id == room_id
                    && d.kind == kind
                    && d.state_key.as_deref() == Some(state_key)
                    && d.user_id != sender
            })
            .collect();
        for delayed in affected {
            if let Err(error) = finalise(server, delayed, "cancel", "action", None) {
                tracing::warn!(%error, "cannot cancel a delayed event overtaken by state");
            }
        }
    }

    /// Sends delayed events as they fall due. Runs for the server's lifetime.
    pub async fn run(server: Arc<Server>) {
        let mut shutdown = server.shutdown.subscribe();
        loop {
            let now = crate::users::now_ms();
            let mut next: Option<u64> = None;
            let scheduled: Vec<Delayed> = server
                .maps
                .delayid_delayed
                .scan_prefix(Vec::new())
                .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                .collect();
            for delayed in scheduled {
                if delayed.due_at() <= now {
                    let id = delayed.delay_id.clone();
                    if let Err(error) = fire(&server, delayed, "delay").await {
                        tracing::warn!(delay_id = id, %error, "delayed event not sent");
                    }
                } else {
                    next = Some(next.map_or(delayed.due_at(), |n| n.min(delayed.due_at())));
                }
            }
            prune_finalised(&server, now);
            let wait = next.map_or(60_000, |at| at.saturating_sub(now)).min(60_000);
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                () = server.delayed.wake.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

fn load(server: &Server, delay_id: &str) -> Result<Option<Delayed>> {
    Ok(server
        .maps
        .delayid_delayed
        .get(delay_id.as_bytes())?
        .and_then(|raw| serde_json::from_slice(&raw).ok()))
}

fn store(server: &Server, delayed: &Delayed) -> Result<()> {
    server.maps.delayid_delayed.put(
        &server.db,
        delayed.delay_id.as_bytes(),
        serde_json::to_vec(delayed)?,
    )
}

/// Moves a delayed event from scheduled to finalised, in one write.
fn finalise(
    server: &Server,
    delayed: Delayed,
    outcome: &str,
    reason: &str,
    event_id: Option<String>,
) -> Result<()> {
    let id = delayed.delay_id.clone();
    let record = Finalised {
        delayed_event: delayed,
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
        event_id,
        origin_server_ts: crate::users::now_ms(),
    };
    let mut batch = server.db.batch();
    batch.delete(&server.maps.delayid_delayed, id.as_bytes());
    batch.put(
        &server.maps.delayid_finalised,
        id.as_bytes(),
        serde_json::to_vec(&record)?,
    );
    server.db.commit(batch)
}

/// Sends the event now, as its owner.
async fn fire(server: &Arc<Server>, delayed: Delayed, reason: &str) -> Result<()> {
    let kind = TimelineEventType::from(delayed.kind.clone());
    let event = match &delayed.state_key {
        Some(key) => NewEvent::state(kind, key.clone(), delayed.content.clone()),
        None => NewEvent::message(kind, delayed.content.clone()),
    };
    match timeline::send(server, &delayed.room_id, &delayed.user_id, event, None).await {
        Ok(pdu) => finalise(
            server,
            delayed,
            "send",
            reason,
            Some(pdu.event_id.to_string()),
        ),
        Err(error) => {
            tracing::info!(delay_id = delayed.delay_id, %error, "delayed event could not be sent");
            finalise(server, delayed, "send", "error", None)?;
            Err(error)
        }
    }
}

fn prune_finalised(server: &Server, now: u64) {
    let old: Vec<Box<[u8]>> = server
        .maps
        .delayid_finalised
        .scan_prefix(Vec::new())
        .filter(|(_, v)| {
            serde_json::from_slice::<Finalised>(v)
                .map(|f| f.origin_server_ts + KEEP_FINALISED_MS < now)
                .unwrap_or(true)
        })
        .map(|(k, _)| k)
        .collect();
    for key in old {
        let _ = server.maps.delayid_finalised.delete(&server.db, key);
    }
}
