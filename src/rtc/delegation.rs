//! Delayed leave, delegated (lk-jwt-service's `delegate_delayed_leave`): a call member's client
//! hands over the id of its delayed "left the call" event (MSC4140). While the member is in
//! the meeting the server restarts that event's timer itself, and when the SFU sees the member
//! go — however the client ended — it sends the event at once: no ghost in the call's state,
//! and no waiting for the delay.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use sparks_sfu::driver::Presence;
use tokio::sync::mpsc;

use crate::{
    error::{Error, Result},
    rooms::delayed::Action,
    server::Server,
};

#[derive(Clone, Debug)]
struct Delegation {
    delay_id: String,
    user: OwnedUserId,
    timeout: Duration,
}

#[derive(Default)]
pub struct Delegations {
    /// By LiveKit identity.
    pending: Mutex<HashMap<String, Vec<Delegation>>>,
    /// Identities in a meeting now.
    present: Mutex<HashSet<String>>,
}

impl Delegations {
    /// Takes over restarting and sending `delay_id` (a delayed event of `user`) for the
    /// participant `identity`.
    pub fn delegate(
        self: &Arc<Self>,
        server: &Arc<Server>,
        user: &UserId,
        identity: String,
        delay_id: String,
        timeout_ms: u64,
    ) -> Result<()> {
        let (scheduled, _) = server.delayed.list(server, user)?;
        if !scheduled.iter().any(|d| d.delay_id == delay_id) {
            return Err(Error::not_found("No such scheduled delayed event of yours"));
        }
        let delegation = Delegation {
            delay_id,
            user: user.to_owned(),
            timeout: Duration::from_millis(timeout_ms.clamp(1_000, 24 * 60 * 60 * 1000)),
        };
        self.pending
            .lock()
            .entry(identity.clone())
            .or_default()
            .push(delegation.clone());
        tokio::spawn(keep_alive(
            self.clone(),
            server.clone(),
            identity,
            delegation,
        ));
        Ok(())
    }

    /// Follows the SFU's participants: a member who leaves gets their delegated events sent.
    pub async fn run(
        self: Arc<Self>,
        server: Arc<Server>,
        mut events: mpsc::UnboundedReceiver<Presence>,
    ) {
        while let Some(event) = events.recv().await {
            if event.joined {
                self.present.lock().insert(event.identity);
                continue;
            }
            self.present.lock().remove(&event.identity);
            let gone = self
                .pending
                .lock()
                .remove(&event.identity)
                .unwrap_or_default();
            for delegation in gone {
                let outcome = server
                    .delayed
                    .update(
                        &server,
                        &delegation.delay_id,
                        Some(&delegation.user),
                        Action::Send,
                    )
                    .await;
                match outcome {
                    Ok(()) => tracing::info!(
                        identity = event.identity,
                        delay_id = delegation.delay_id,
                        "left the meeting: delayed leave sent"
                    ),
                    Err(error) => tracing::debug!(%error, "delegated delayed event already gone"),
                }
            }
        }
    }

    fn still_pending(&self, identity: &str, delay_id: &str) -> bool {
        self.pending
            .lock()
            .get(identity)
            .is_some_and(|list| list.iter().any(|d| d.delay_id == delay_id))
    }
}

/// Restarts the delayed event at half its timeout while the member is (or is about to be) in
/// the meeting. Gives up once the member has been absent for a whole timeout, so the event
/// then fires by itself.
async fn keep_alive(
    delegations: Arc<Delegations>,
    server: Arc<Server>,
    identity: String,
    delegation: Delegation,
) {
    let period = delegation.timeout / 2;
    let mut absent_for = Duration::ZERO;
    loop {
        tokio::time::sleep(period).await;
        if !delegations.still_pending(&identity, &delegation.delay_id) {
            return;
        }
        if delegations.present.lock().contains(&identity) {
            absent_for = Duration::ZERO;
        } else {
            absent_for += period;
            if absent_for >= delegation.timeout {
                return;
            }
        }
        let restarted = server
            .delayed
            .update(
                &server,
                &delegation.delay_id,
                Some(&delegation.user),
                Action::Restart,
            )
            .await;
        if restarted.is_err() {
            // Sent, cancelled or expired meanwhile.
            return;
        }
    }
}
