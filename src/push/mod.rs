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
use serde_json::{Value, json};

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

/// A stored notification, kept small: `flags | thread root | [0x00 actions-json]`. Flags: bit 0
/// highlight, bit 1 the default sound tweak, bit 2 actions that are not the standard shapes
/// (then stored as JSON after a 0x00), bit 3 "suppressed": this user is not notified although
/// the room's shared notification says members are.
///
/// Most members of a room are on the default rules and not named by an event, so they all get
/// the same actions: those are stored once per event for the room (`roomcount_notification`,
/// with the sender, who is never notified). Only members whose outcome can differ (custom rules,
/// or named in the event) get a row of their own (`userroomcount_notification`), which takes
/// precedence. A shared row applies to a member only after their latest join.
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    highlight: bool,
    sound: bool,
    suppressed: bool,
    thread: Option<String>,
    custom_actions: Option<Value>,
}

impl Stored {
    fn from_actions(actions: &[Action], thread: Option<String>) -> Self {
        let highlight = actions.iter().any(Action::is_highlight);
        let sound = actions.iter().any(|a| matches!(a, Action::SetTweak(ruma::push::Tweak::Sound(s)) if s.as_str() == "default"));
        let stored = Self {
            highlight,
            sound,
            suppressed: false,
            thread,
            custom_actions: None,
        };
        let standard = serde_json::to_value(actions).ok() == Some(stored.actions());
        if standard {
            stored
        } else {
            Self {
                custom_actions: serde_json::to_value(actions).ok(),
                ..stored
            }
        }
    }

    /// The actions, rebuilt from the flags for the standard shapes.
    fn actions(&self) -> Value {
        if let Some(actions) = &self.custom_actions {
            return actions.clone();
        }
        let mut actions = vec![json!("notify")];
        if self.sound {
            actions.push(json!({ "set_tweak": "sound", "value": "default" }));
        }
        if self.highlight {
            actions.push(json!({ "set_tweak": "highlight" }));
        }
        Value::Array(actions)
    }

    fn encode(&self) -> Vec<u8> {
        let flags = u8::from(self.highlight)
            | (u8::from(self.sound) << 1)
            | (u8::from(self.custom_actions.is_some()) << 2)
            | (u8::from(self.suppressed) << 3);
        let mut out = vec![flags];
        if let Some(thread) = &self.thread {
            out.extend_from_slice(thread.as_bytes());
        }
        if let Some(actions) = &self.custom_actions {
            out.push(0);
            out.extend_from_slice(actions.to_string().as_bytes());
        }
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let (&flags, rest) = raw.split_first()?;
        let (thread, actions) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        Some(Self {
            highlight: flags & 1 != 0,
            sound: flags & 2 != 0,
            suppressed: flags & 8 != 0,
            thread: (!thread.is_empty()).then(|| String::from_utf8_lossy(thread).into_owned()),
            custom_actions: actions.and_then(|a| serde_json::from_slice(a).ok()),
        })
    }

    /// A row saying "not notified" for a user the room's shared notification would cover.
    fn suppressed() -> Self {
        Self {
            highlight: false,
            sound: false,
            suppressed: true,
            thread: None,
            custom_actions: None,
        }
    }
}

/// The room-wide notification of an event: its sender (never notified), then the actions.
fn encode_shared(sender: &UserId, stored: &Stored) -> Vec<u8> {
    let mut out = sender.as_str().as_bytes().to_vec();
    out.push(0);
    out.extend(stored.encode());
    out
}

fn decode_shared(raw: &[u8]) -> Option<(&[u8], Stored)> {
    let split = raw.iter().position(|b| *b == 0)?;
    Some((&raw[..split], Stored::decode(&raw[split + 1..])?))
}

/// A user's rules, and whether they are exactly the server defaults for that user.
#[derive(Clone)]
pub struct UserRules {
    pub ruleset: Arc<Ruleset>,
    pub is_default: bool,
}

pub struct Push {
    rulesets: Mutex<LruCache<OwnedUserId, UserRules>>,
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
        Ok(self.rules(maps, user)?.ruleset)
    }

    /// The user's rules with whether they are the defaults (cached).
    pub fn rules(&self, maps: &Maps, user: &UserId) -> Result<UserRules> {
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
        let rules = user_rules(user, ruleset);
        self.rulesets.lock().put(user.to_owned(), rules.clone());
        Ok(rules)
    }

    /// Stores changed rules as the `m.push_rules` account data (so clients sync them).
    pub fn save(&self, server: &Server, user: &UserId, ruleset: Ruleset) -> Result<()> {
        let content = serde_json::json!({ "global": ruleset });
        account_data::set(server, user, None, PUSH_RULES, content)?;
        self.rulesets
            .lock()
            .put(user.to_owned(), user_rules(user, ruleset));
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

fn user_rules(user: &UserId, ruleset: Ruleset) -> UserRules {
    let is_default = serde_json::to_value(&ruleset).ok()
        == serde_json::to_value(Ruleset::server_default(user)).ok();
    UserRules {
        ruleset: Arc::new(ruleset),
        is_default,
    }
}

/// A user id that stands for "any member on the default rules who is not mentioned".
const PROBE_LOCALPART: &str = "sparks-push-probe";

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

    // Members on the default rules whom the event does not name (by user id, localpart or
    // display name) all get the same actions: evaluate those once, for a probe user, and store
    // them once for the room.
    let event_text = serde_json::to_string(&event)?.to_lowercase();
    let context_for = |user: &ruma::OwnedUserId, display_name: String| {
        let ctx = PushConditionRoomCtx::new(room.clone(), member_count, user.clone(), display_name);
        match &power_levels {
            Some(levels) => ctx.with_power_levels(levels.clone()),
            None => ctx,
        }
    };
    let probe = ruma::OwnedUserId::try_from(format!("@{PROBE_LOCALPART}:{}", server.server_name()))
        .map_err(|e| crate::error::Error::internal(format!("push probe user id: {e}")))?;
    let shared = matching_actions(
        &Ruleset::server_default(&probe),
        &flat,
        &context_for(&probe, PROBE_LOCALPART.to_owned()),
    )
    .filter(|actions| actions.iter().any(Action::should_notify));
    if let Some(actions) = &shared {
        let stored = Stored::from_actions(actions, thread.clone());
        batch.put(
            &maps.roomcount_notification,
            Key::new().s(room.as_str()).n(count).build(),
            encode_shared(&pdu.sender, &stored),
        );
    }

    let mut outcomes = Vec::new();
    for user in members.iter().filter(|m| **m != pdu.sender) {
        let display_name = server
            .rooms
            .state_event(maps, state, &StateEventType::RoomMember, user.as_str())?
            .and_then(|member| member.content_str("displayname"))
            .unwrap_or_else(|| user.localpart().to_owned());
        let rules = server.push.rules(maps, user)?;
        let named = event_text.contains(&user.localpart().to_lowercase())
            || event_text.contains(&display_name.to_lowercase())
            || event_text.contains(PROBE_LOCALPART);
        let actions = if rules.is_default && !named {
            shared.clone()
        } else {
            let own = matching_actions(&rules.ruleset, &flat, &context_for(user, display_name))
                .filter(|actions| actions.iter().any(Action::should_notify));
            let row = match &own {
                Some(actions) => Some(Stored::from_actions(actions, thread.clone())),
                None => shared.is_some().then(Stored::suppressed),
            };
            if let Some(row) = row {
                batch.put(
                    &maps.userroomcount_notification,
                    Key::new()
                        .s(user.as_str())
                        .s(room.as_str())
                        .n(count)
                        .build(),
                    row.encode(),
                );
            }
            own
        };
        // Push gateways only hear about users who have pushers.
        let Some(actions) = actions.filter(|_| server.push.pushers.has_pushers(maps, user)) else {
            continue;
        };
        outcomes.push(Outcome {
            user: user.clone(),
            notification: Notification {
                room_id: room.clone(),
                event_id: pdu.event_id.clone(),
                highlight: actions.iter().any(Action::is_highlight),
                thread: thread.clone(),
                actions: serde_json::to_value(&actions)?,
                ts: now_ms(),
            },
            notify: true,
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
    // Everything up to the unthreaded receipt is read whatever thread it is in, and nothing
    // from before the user's latest join counts.
    let floor = read.unthreaded.max(joined_at(maps, room, user));
    for (count, unread) in room_notifications(maps, user, room, floor, Direction::Forward) {
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

/// The stream position of the user's latest join of the room (0 if unknown).
fn joined_at(maps: &Maps, room: &RoomId, user: &UserId) -> u64 {
    maps.roomuserid_membership
        .get(Key::new().s(room.as_str()).s(user.as_str()).build())
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice::<crate::rooms::Membership>(&raw).ok())
        .and_then(|m| m.last_join_count)
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// Ascending, from just after `bound`.
    Forward,
    /// Descending, from just before `bound`.
    Backward,
}

/// The user's notifications in a room in stream order, merging the room's shared rows with the
/// user's own (which take precedence; suppressed ones and the user's own events are skipped).
/// Forward: positions after `bound`; backward: positions before `bound`.
fn room_notifications<'a>(
    maps: &'a Maps,
    user: &'a UserId,
    room: &RoomId,
    bound: u64,
    direction: Direction,
) -> impl Iterator<Item = (u64, Stored)> + 'a {
    let forward = direction == Direction::Forward;
    let start = if forward {
        bound.saturating_add(1)
    } else {
        bound.saturating_sub(1)
    };
    let own_prefix = Key::new().s(user.as_str()).s(room.as_str()).prefix();
    let own_from = Key::new()
        .s(user.as_str())
        .s(room.as_str())
        .n(start)
        .build();
    let mut own = maps
        .userroomcount_notification
        .scan_from(own_prefix, own_from, forward)
        .filter_map(|(key, value)| {
            Some((
                crate::storage::keys::tail_u64(&key)?,
                Stored::decode(&value)?,
            ))
        })
        .peekable();
    let shared_prefix = Key::new().s(room.as_str()).prefix();
    let shared_from = Key::new().s(room.as_str()).n(start).build();
    let mut shared = maps
        .roomcount_notification
        .scan_from(shared_prefix, shared_from, forward)
        .filter_map(move |(key, value)| {
            let count = crate::storage::keys::tail_u64(&key)?;
            let (sender, stored) = decode_shared(&value)?;
            (sender != user.as_str().as_bytes()).then_some((count, stored))
        })
        .peekable();
    // `a` comes before `b` in the walk's order.
    let before = move |a: u64, b: u64| if forward { a < b } else { a > b };
    std::iter::from_fn(move || {
        loop {
            let next = match (own.peek(), shared.peek()) {
                (None, None) => return None,
                (Some(_), None) => own.next(),
                (None, Some(_)) => shared.next(),
                (Some((o, _)), Some((r, _))) => {
                    if *o == *r {
                        shared.next();
                        own.next()
                    } else if before(*o, *r) {
                        own.next()
                    } else {
                        shared.next()
                    }
                }
            };
            match next {
                Some((_, stored)) if stored.suppressed => continue,
                Some((count, _)) if !forward && count >= bound => continue,
                other => return other,
            }
        }
    })
}

/// A user's notifications, newest first, before stream position `before`: the newest of each
/// joined room's, merged.
pub fn notifications(
    server: &Server,
    user: &UserId,
    before: u64,
    limit: usize,
) -> Result<Vec<(u64, Notification)>> {
    let maps = &server.maps;
    let mut found: Vec<(u64, ruma::OwnedRoomId, Stored)> = Vec::new();
    for (room, membership) in server.rooms.rooms_of(maps, user)? {
        if membership.membership != "join" {
            continue;
        }
        let joined = membership.last_join_count.unwrap_or(0);
        for (count, stored) in room_notifications(maps, user, &room, before, Direction::Backward)
            .take_while(|(count, _)| *count > joined)
            .take(limit)
        {
            found.push((count, room.clone(), stored));
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse(b.0));
    found.truncate(limit);
    let mut out = Vec::with_capacity(found.len());
    for (count, room_id, stored) in found {
        let Some(event_id) = maps
            .roomcount_eventid
            .get(Key::new().s(room_id.as_str()).n(count).build())?
            .map(|raw| crate::rooms::parse_event_id(&raw))
            .transpose()?
        else {
            continue;
        };
        let ts = server
            .rooms
            .pdu(maps, &event_id)?
            .map_or(0, |p| u64::from(p.origin_server_ts.0));
        out.push((
            count,
            Notification {
                room_id,
                event_id,
                highlight: stored.highlight,
                thread: stored.thread.clone(),
                actions: stored.actions(),
                ts,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_notifications_round_trip() {
        let standard = Stored {
            highlight: true,
            sound: true,
            suppressed: false,
            thread: Some("$root".into()),
            custom_actions: None,
        };
        assert_eq!(Stored::decode(&standard.encode()), Some(standard.clone()));
        assert_eq!(
            standard.actions(),
            json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }])
        );
        let custom = Stored {
            highlight: false,
            sound: false,
            suppressed: false,
            thread: None,
            custom_actions: Some(json!(["notify", { "set_tweak": "x", "value": 1 }])),
        };
        assert_eq!(Stored::decode(&custom.encode()), Some(custom));
    }
}
