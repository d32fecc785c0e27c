//! Push: each user's push rules, evaluated for every event and recipient; the notifications
//! they produce (unread counts in `/sync`, `/notifications`); delivery to push gateways.

pub mod pushers;

use std::{collections::BTreeMap, num::NonZeroUsize, sync::Arc};

use lru::LruCache;
use parking_lot::Mutex;
use ruma::{
    Int, OwnedUserId, RoomId, UInt, UserId,
    events::StateEventType,
    power_levels::NotificationPowerLevels,
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Result,
    rooms::{pdu::Pdu, receipts::ReadUpTo, state::StateMap},
    server::Server,
    storage::{Batch, Maps, keys::Key},
    users::{account_data, now_ms},
};

/// The account data type the rules live in (global account data, managed by the server).
pub const PUSH_RULES: &str = "m.push_rules";

/// A notification for a user: an event their rules said to notify about.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Notification {
    pub room_id: ruma::OwnedRoomId,
    pub event_id: ruma::OwnedEventId,
    pub highlight: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub actions: Value,
    pub ts: u64,
}

/// Per-room record used for unread counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Unread {
    highlight: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread: Option<String>,
}

pub struct Push {
    rulesets: Mutex<LruCache<OwnedUserId, Arc<Ruleset>>>,
    pub pushers: pushers::Pushers,
    /// Notifications waiting for delivery to push gateways (drained by a background task).
    queue: tokio::sync::mpsc::UnboundedSender<(OwnedUserId, Notification)>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(OwnedUserId, Notification)>>>,
}

impl Default for Push {
    fn default() -> Self {
        let (queue, receiver) = tokio::sync::mpsc::unbounded_channel();
        Self {
            rulesets: Mutex::new(LruCache::new(
                NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            )),
            pushers: pushers::Pushers::new(),
            queue,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Push {
    /// Queues notifications for the user's push gateways (after the event is committed).
    pub fn enqueue(&self, outcomes: Vec<Outcome>) {
        for outcome in outcomes.into_iter().filter(|o| o.notify) {
            let _ = self.queue.send((outcome.user, outcome.notification));
        }
    }

    /// Runs the delivery loop; called once at start with the server.
    pub async fn run_delivery(server: Arc<Server>) {
        let Some(mut receiver) = server.push.receiver.lock().take() else {
            return;
        };
        while let Some((user, notification)) = receiver.recv().await {
            pushers::deliver(&server, user, notification);
        }
    }

    /// The user's rules: stored ones, or the spec's defaults.
    pub fn ruleset(&self, maps: &Maps, user: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(found) = self.rulesets.lock().get(user) {
            return Ok(found.clone());
        }
        let ruleset = match account_data::get(maps, user, None, PUSH_RULES)? {
            Some(content) => content
                .get("global")
                .cloned()
                .and_then(|global| serde_json::from_value::<Ruleset>(global).ok())
                .unwrap_or_else(|| Ruleset::server_default(user)),
            None => Ruleset::server_default(user),
        };
        let ruleset = Arc::new(ruleset);
        self.rulesets.lock().put(user.to_owned(), ruleset.clone());
        Ok(ruleset)
    }

    /// Stores changed rules as the `m.push_rules` account data (so clients sync them).
    pub fn save(&self, server: &Server, user: &UserId, ruleset: Ruleset) -> Result<()> {
        let content = serde_json::json!({ "global": ruleset });
        account_data::set(server, user, None, PUSH_RULES, content)?;
        self.rulesets.lock().put(user.to_owned(), Arc::new(ruleset));
        Ok(())
    }

    /// Makes sure the user's rules exist as account data (at registration).
    pub fn init_user(&self, server: &Server, user: &UserId) -> Result<()> {
        if account_data::get(&server.maps, user, None, PUSH_RULES)?.is_none() {
            self.save(server, user, Ruleset::server_default(user))?;
        }
        Ok(())
    }
}

/// What an event means for one recipient.
pub struct Outcome {
    pub user: OwnedUserId,
    pub notification: Notification,
    pub notify: bool,
}

/// Evaluates every local joined member's rules for a new event (not the sender's) and records
/// the notifications in `batch`. Returns who was notified, for push gateways.
pub fn evaluate(
    server: &Server,
    batch: &mut Batch,
    pdu: &Pdu,
    count: u64,
    state: &StateMap,
) -> Result<Vec<Outcome>> {
    let maps = &server.maps;
    let room = &pdu.room_id;
    let mut members = (*server.rooms.local_joined(server, room)?).clone();
    // An invited local user is not joined yet but is notified of their invite.
    if pdu.membership().as_deref() == Some("invite")
        && let Some(target) = pdu
            .state_user()
            .filter(|t| server.is_local(t.server_name()))
        && !members.iter().any(|m| m == target)
    {
        members.push(target.to_owned());
    }
    if members.iter().all(|m| *m == pdu.sender) {
        return Ok(Vec::new());
    }
    let mut event = pdu.to_client_event(true);
    event.insert("room_id".into(), Value::String(room.to_string()));
    let raw: Raw<Value> = Raw::from_json(serde_json::value::to_raw_value(&event)?);
    let flat = FlattenedJson::from_raw(&raw);
    let member_count = UInt::try_from(server.rooms.joined_count(server, room)?).unwrap_or_default();
    let power_levels = power_levels_ctx(server, room, state)?;
    let thread =
        crate::rooms::relations::thread_root(maps, &server.rooms, pdu).map(|root| root.to_string());

    let mut outcomes = Vec::new();
    for user in members.iter().filter(|m| **m != pdu.sender) {
        let display_name = server
            .rooms
            .state_event(maps, state, &StateEventType::RoomMember, user.as_str())?
            .and_then(|member| member.content_str("displayname"))
            .unwrap_or_else(|| user.localpart().to_owned());
        let mut ctx =
            PushConditionRoomCtx::new(room.clone(), member_count, user.clone(), display_name);
        if let Some(levels) = &power_levels {
            ctx = ctx.with_power_levels(levels.clone());
        }
        let ruleset = server.push.ruleset(maps, user)?;
        let Some(actions) = matching_actions(&ruleset, &flat, &ctx) else {
            continue;
        };
        let notify = actions.iter().any(Action::should_notify);
        if !notify {
            continue;
        }
        let highlight = actions.iter().any(Action::is_highlight);
        let notification = Notification {
            room_id: room.clone(),
            event_id: pdu.event_id.clone(),
            highlight,
            thread: thread.clone(),
            actions: serde_json::to_value(&actions)?,
            ts: now_ms(),
        };
        batch.put(
            &maps.usercount_notification,
            Key::new().s(user.as_str()).n(count).build(),
            serde_json::to_vec(&notification)?,
        );
        batch.put(
            &maps.userroomcount_notification,
            Key::new()
                .s(user.as_str())
                .s(room.as_str())
                .n(count)
                .build(),
            serde_json::to_vec(&Unread {
                highlight,
                thread: thread.clone(),
            })?,
        );
        outcomes.push(Outcome {
            user: user.clone(),
            notification,
            notify,
        });
    }
    Ok(outcomes)
}

/// The actions of the first rule that applies. The rules' conditions never wait on anything
/// here (no thread-subscription callback is set), so their futures complete on first poll.
fn matching_actions(
    ruleset: &Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<Vec<Action>> {
    for rule in ruleset.iter() {
        if futures::executor::block_on(rule.applies(event, ctx)) {
            return Some(rule.actions().to_vec());
        }
    }
    None
}

fn power_levels_ctx(
    server: &Server,
    room: &RoomId,
    state: &StateMap,
) -> Result<Option<PushConditionPowerLevelsCtx>> {
    let maps = &server.maps;
    let Some(levels) =
        server
            .rooms
            .state_event(maps, state, &StateEventType::RoomPowerLevels, "")?
    else {
        return Ok(None);
    };
    let content = levels.content_value();
    let int = |v: &Value| v.as_i64().and_then(|i| Int::try_from(i).ok());
    let users: BTreeMap<OwnedUserId, Int> = content
        .get("users")
        .and_then(Value::as_object)
        .map(|users| {
            users
                .iter()
                .filter_map(|(user, level)| {
                    Some((OwnedUserId::try_from(user.as_str()).ok()?, int(level)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let users_default = content
        .get("users_default")
        .and_then(int)
        .unwrap_or_default();
    let mut notifications = NotificationPowerLevels::new();
    if let Some(room_level) = content
        .get("notifications")
        .and_then(|n| n.get("room"))
        .and_then(int)
    {
        notifications.room = room_level;
    }
    let version = server.rooms.version(maps, room)?;
    let rules = crate::rooms::version::rules(&version)?;
    let creators = match server
        .rooms
        .state_event(maps, state, &StateEventType::RoomCreate, "")?
    {
        Some(create) => ruma::state_res::events::RoomCreateEvent::new(create)
            .creators(&rules.authorization)
            .unwrap_or_default(),
        None => Default::default(),
    };
    let power_rules = RoomPowerLevelsRules::new(&rules.authorization, creators);
    Ok(Some(PushConditionPowerLevelsCtx::new(
        users,
        users_default,
        notifications,
        power_rules,
    )))
}

/// Unread counts for a room: (notifications, highlights) in the main timeline (or everything
/// when `per_thread` is false), and per thread when `per_thread` is true.
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
    pub threads: BTreeMap<String, (u64, u64)>,
}

pub fn unread_counts(
    maps: &Maps,
    user: &UserId,
    room: &RoomId,
    read: &ReadUpTo,
    per_thread: bool,
) -> Counts {
    let mut counts = Counts {
        notifications: 0,
        highlights: 0,
        threads: BTreeMap::new(),
    };
    // Everything up to the unthreaded receipt is read whatever thread it is in.
    let floor = read.unthreaded;
    let prefix = Key::new().s(user.as_str()).s(room.as_str()).prefix();
    let from = Key::new()
        .s(user.as_str())
        .s(room.as_str())
        .n(floor.saturating_add(1))
        .build();
    for (key, value) in maps
        .userroomcount_notification
        .scan_from(prefix, from, true)
    {
        let Some(count) = crate::storage::keys::tail_u64(&key) else {
            continue;
        };
        let Ok(unread) = serde_json::from_slice::<Unread>(&value) else {
            continue;
        };
        if count <= read.for_thread(unread.thread.as_deref()) {
            continue;
        }
        match (&unread.thread, per_thread) {
            (Some(thread), true) => {
                let slot = counts.threads.entry(thread.clone()).or_default();
                slot.0 += 1;
                slot.1 += u64::from(unread.highlight);
            }
            _ => {
                counts.notifications += 1;
                counts.highlights += u64::from(unread.highlight);
            }
        }
    }
    counts
}

/// A user's notifications, newest first, before stream position `before`.
pub fn notifications(
    maps: &Maps,
    user: &UserId,
    before: u64,
    limit: usize,
) -> Result<Vec<(u64, Notification)>> {
    let prefix = Key::new().s(user.as_str()).prefix();
    let from = Key::new()
        .s(user.as_str())
        .n(before.saturating_sub(1))
        .build();
    let mut out = Vec::new();
    for (key, value) in maps.usercount_notification.scan_from(prefix, from, false) {
        let Some(count) = crate::storage::keys::tail_u64(&key) else {
            continue;
        };
        if count >= before {
            continue;
        }
        out.push((count, serde_json::from_slice(&value)?));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
