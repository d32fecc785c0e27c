//! Outbound transactions: every server in a room gets each event sent there by our users.
//!
//! An event is queued per destination in the database (`destination_pdus`) right after it is
//! persisted, so the queue survives restarts. One task per destination drains its queue in
//! transactions of up to 50 PDUs (`PUT /_matrix/federation/v1/send/{txnId}`), deleting what
//! the destination acknowledged and backing off exponentially (up to an hour) while it is
//! unreachable. EDUs that must not be lost (to-device messages, device list and signing key
//! updates) wait in the database too (`destination_edus`); typing, receipts and presence are
//! only worth sending while fresh and wait in memory.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::{
    error::Result,
    rooms::pdu::Pdu,
    server::Server,
    storage::keys::{self, Key},
};

const MAX_PDUS_PER_TXN: usize = 50;
const MAX_EDUS_PER_TXN: usize = 100;
const MAX_QUEUED_EDUS: usize = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(60 * 60);

#[derive(Default)]
pub struct Sender {
    /// Wakes a destination's task (created on first use).
    workers: Mutex<HashMap<OwnedServerName, Arc<Notify>>>,
    /// Destinations that got new work, for the dispatcher to start tasks for.
    new_work: Mutex<Option<mpsc::UnboundedSender<OwnedServerName>>>,
    /// Other servers with joined members, per room (cleared when membership changes).
    room_servers: Mutex<HashMap<OwnedRoomId, Arc<Vec<OwnedServerName>>>>,
    /// EDUs waiting per destination. Ephemeral (typing, receipts): kept in memory only.
    edus: Mutex<HashMap<OwnedServerName, Vec<Value>>>,
    /// The last sequence number of `destination_edus` (from the database on first use).
    durable_seq: OnceLock<AtomicU64>,
}

impl Sender {
    /// Forgets the cached server list of a room (its membership changed).
    pub fn members_changed(&self, room: &RoomId) {
        self.room_servers.lock().remove(room);
    }

    /// The other servers with joined members in the room.
    pub fn servers_in_room(
        &self,
        server: &Server,
        room: &RoomId,
    ) -> Result<Arc<Vec<OwnedServerName>>> {
        if let Some(found) = self.room_servers.lock().get(room) {
            return Ok(found.clone());
        }
        let mut servers: Vec<OwnedServerName> = server
            .rooms
            .members(&server.maps, room)?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(user, _)| user.server_name().to_owned())
            .filter(|name| !server.is_local(name))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        servers.sort();
        let servers = Arc::new(servers);
        self.room_servers
            .lock()
            .insert(room.to_owned(), servers.clone());
        Ok(servers)
    }

    /// Queues an event for `destinations` and wakes their tasks.
    pub fn queue_pdu(
        &self,
        server: &Server,
        pdu: &Pdu,
        count: u64,
        destinations: &[OwnedServerName],
    ) -> Result<()> {
        if destinations.is_empty() {
            return Ok(());
        }
        let mut batch = server.db.batch();
        for destination in destinations {
            batch.put(
                &server.maps.destination_pdus,
                Key::new().s(destination.as_str()).n(count).build(),
                pdu.event_id.as_bytes(),
            );
        }
        server.db.commit(batch)?;
        for destination in destinations {
            self.wake(destination);
        }
        Ok(())
    }

    /// Queues an EDU for every other server in the room.
    pub fn queue_room_edu(&self, server: &Server, room: &RoomId, edu: Value) -> Result<()> {
        if !crate::federation::enabled(server) {
            return Ok(());
        }
        let destinations = self.servers_in_room(server, room)?;
        for destination in destinations.iter() {
            self.queue_edu(server, destination, edu.clone());
        }
        Ok(())
    }

    /// Queues an EDU for every other server that shares a room with `user`.
    pub fn queue_user_edu(&self, server: &Server, user: &ruma::UserId, edu: Value) {
        for destination in servers_sharing_rooms(server, user) {
            self.queue_edu(server, &destination, edu.clone());
        }
    }

    /// Queues an EDU for one server.
    pub fn queue_edu(&self, server: &Server, destination: &ServerName, edu: Value) {
        if !crate::federation::enabled(server) || server.is_local(destination) {
            return;
        }
        {
            let mut edus = self.edus.lock();
            let queue = edus.entry(destination.to_owned()).or_default();
            // A destination that has been unreachable for long gets only the newest ones.
            if queue.len() >= MAX_QUEUED_EDUS {
                queue.remove(0);
            }
            queue.push(edu);
        }
        self.wake(destination);
    }

    /// Queues an EDU that must reach `destination` even across our restarts; stored before
    /// this returns.
    pub fn queue_durable_edu(
        &self,
        server: &Server,
        destination: &ServerName,
        edu: &Value,
    ) -> Result<()> {
        if !crate::federation::enabled(server) || server.is_local(destination) {
            return Ok(());
        }
        let seq = self
            .durable_seq
            .get_or_init(|| AtomicU64::new(last_durable_seq(server)))
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        server.maps.destination_edus.put(
            &server.db,
            Key::new().s(destination.as_str()).n(seq).build(),
            serde_json::to_vec(edu)?,
        )?;
        self.wake(destination);
        Ok(())
    }

    fn take_edus(&self, destination: &ServerName) -> Vec<Value> {
        let mut edus = self.edus.lock();
        let Some(queue) = edus.get_mut(destination) else {
            return Vec::new();
        };
        let n = queue.len().min(MAX_EDUS_PER_TXN);
        queue.drain(..n).collect()
    }

    fn return_edus(&self, destination: &ServerName, mut taken: Vec<Value>) {
        let mut edus = self.edus.lock();
        let queue = edus.entry(destination.to_owned()).or_default();
        taken.append(queue);
        taken.truncate(MAX_QUEUED_EDUS);
        *queue = taken;
    }

    fn wake(&self, destination: &ServerName) {
        if let Some(notify) = self.workers.lock().get(destination) {
            notify.notify_one();
            return;
        }
        if let Some(tx) = self.new_work.lock().as_ref() {
            let _ = tx.send(destination.to_owned());
        }
    }

    /// Runs the dispatcher: starts a task per destination with queued PDUs (those left from
    /// before a restart first). Called once at start.
    pub async fn run(server: Arc<Server>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        *server.federation.sender.new_work.lock() = Some(tx.clone());
        let maps = &server.maps;
        for map in [&maps.destination_pdus, &maps.destination_edus] {
            for destination in pending_destinations(map) {
                let _ = tx.send(destination);
            }
        }
        while let Some(destination) = rx.recv().await {
            let notify = {
                let mut workers = server.federation.sender.workers.lock();
                if let Some(existing) = workers.get(&destination) {
                    existing.notify_one();
                    continue;
                }
                let notify = Arc::new(Notify::new());
                workers.insert(destination.clone(), notify.clone());
                notify
            };
            tokio::spawn(drain(server.clone(), destination, notify));
        }
    }
}

/// Queues a newly persisted local event for every other server in its room (and, for a
/// membership event about a user of another server, that server too).
pub fn queue_local_event(server: &Server, pdu: &Pdu, count: u64) -> Result<()> {
    if !crate::federation::enabled(server) || !server.is_local(pdu.sender.server_name()) {
        return Ok(());
    }
    let sender = &server.federation.sender;
    let mut destinations = (*sender.servers_in_room(server, &pdu.room_id)?).clone();
    if let Some(target) = pdu.state_user().filter(|_| pdu.membership().is_some())
        && !server.is_local(target.server_name())
        && !destinations.iter().any(|d| d == target.server_name())
    {
        destinations.push(target.server_name().to_owned());
    }
    sender.queue_pdu(server, pdu, count, &destinations)
}

/// The highest sequence number in `destination_edus` (0 when empty).
fn last_durable_seq(server: &Server) -> u64 {
    server
        .maps
        .destination_edus
        .scan_prefix(Vec::new())
        .filter_map(|(key, _)| keys::tail_u64(&key))
        .max()
        .unwrap_or(0)
}

/// Destinations with something queued in `map` (keyed `destination, ...`).
fn pending_destinations(map: &crate::storage::Map) -> Vec<OwnedServerName> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    for (key, _) in map.scan_prefix(Vec::new()) {
        let Some(end) = key.iter().position(|b| *b == keys::SEP) else {
            continue;
        };
        if let Ok(name) = std::str::from_utf8(&key[..end])
            && let Ok(name) = OwnedServerName::try_from(name)
            && out.last() != Some(&name)
        {
            out.push(name);
        }
    }
    out
}

/// One destination's task: send what is queued, wait for more, back off on failure.
async fn drain(server: Arc<Server>, destination: OwnedServerName, notify: Arc<Notify>) {
    let sender = &server.federation.sender;
    let mut backoff = Duration::from_secs(2);
    loop {
        let queued = queued(&server, &destination);
        let durable = durable_edus(&server, &destination);
        let edus = sender.take_edus(&destination);
        if queued.is_empty() && durable.is_empty() && edus.is_empty() {
            let mut shutdown = server.shutdown.subscribe();
            tokio::select! {
                () = notify.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            continue;
        }
        let all_edus: Vec<Value> = durable
            .iter()
            .map(|(_, edu)| edu.clone())
            .chain(edus.iter().cloned())
            .collect();
        match send_transaction(&server, &destination, &queued, &all_edus).await {
            Ok(()) => {
                backoff = Duration::from_secs(2);
                let mut batch = server.db.batch();
                for (key, _) in &queued {
                    batch.delete(&server.maps.destination_pdus, key);
                }
                for (key, _) in &durable {
                    batch.delete(&server.maps.destination_edus, key);
                }
                if let Err(error) = server.db.commit(batch) {
                    tracing::error!(%destination, %error, "cannot dequeue sent PDUs");
                }
            }
            Err(error) => {
                sender.return_edus(&destination, edus);
                tracing::warn!(%destination, %error, retry_in_s = backoff.as_secs(), "transaction failed");
                let mut shutdown = server.shutdown.subscribe();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The oldest durable EDUs of a destination: (queue key, EDU).
fn durable_edus(server: &Server, destination: &ServerName) -> Vec<(Vec<u8>, Value)> {
    server
        .maps
        .destination_edus
        .scan_prefix(Key::new().s(destination.as_str()).prefix())
        .take(MAX_EDUS_PER_TXN / 2)
        .filter_map(|(key, value)| Some((key.to_vec(), serde_json::from_slice(&value).ok()?)))
        .collect()
}

/// The oldest queued PDUs of a destination: (queue key, event id).
fn queued(server: &Server, destination: &ServerName) -> Vec<(Vec<u8>, String)> {
    server
        .maps
        .destination_pdus
        .scan_prefix(Key::new().s(destination.as_str()).prefix())
        .take(MAX_PDUS_PER_TXN)
        .map(|(key, value)| (key.to_vec(), String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

async fn send_transaction(
    server: &Arc<Server>,
    destination: &ServerName,
    queued: &[(Vec<u8>, String)],
    edus: &[Value],
) -> Result<()> {
    let mut pdus: Vec<Value> = Vec::with_capacity(queued.len());
    for (_, event_id) in queued {
        let Ok(event_id) = ruma::OwnedEventId::try_from(event_id.as_str()) else {
            continue;
        };
        if let Some(pdu) = server.rooms.pdu(&server.maps, &event_id)? {
            pdus.push(pdu.to_federation_value());
        }
    }
    // The transaction id only has to be unique per origin and destination: the position of the
    // first PDU is, and a retry of the same batch reuses it (so the destination can dedupe).
    let txn_id = match queued.first().and_then(|(key, _)| keys::tail_u64(key)) {
        Some(count) => count.to_string(),
        // EDUs only: any id not used before.
        None => format!("e{}", crate::server::rand_alnum(12)),
    };
    let body = json!({
        "origin": server.server_name(),
        "origin_server_ts": crate::users::now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let answer = server
        .federation
        .client
        .send(
            server,
            destination,
            http::Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn_id}"),
            Some(&body),
        )
        .await?;
    // Per-PDU errors are the destination's judgement of our events; nothing to retry.
    if let Some(results) = answer["pdus"].as_object() {
        for (event_id, result) in results {
            if let Some(error) = result.get("error") {
                tracing::info!(%destination, %event_id, %error, "destination refused a PDU");
            }
        }
    }
    Ok(())
}

/// The other servers with members in a room `user` is joined to.
pub fn servers_sharing_rooms(server: &Server, user: &ruma::UserId) -> Vec<OwnedServerName> {
    if !crate::federation::enabled(server) {
        return Vec::new();
    }
    let mut out = HashSet::new();
    if let Ok(rooms) = server.rooms.rooms_of(&server.maps, user) {
        for (room, membership) in rooms {
            if membership.membership != "join" {
                continue;
            }
            if let Ok(servers) = server.federation.sender.servers_in_room(server, &room) {
                out.extend(servers.iter().cloned());
            }
        }
    }
    let mut out: Vec<_> = out.into_iter().collect();
    out.sort();
    out
}
