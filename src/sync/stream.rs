//! The stream: one global, monotonically increasing position shared by everything a client can
//! sync (events, account data, typing, ...), and the wake-ups of long-polling `/sync` requests.
//!
//! Writers take a [`Pending`] position before they commit and finish it after. The *current*
//! position only advances past positions whose writes are committed, so a `/sync` that returns
//! `next_batch = N` has seen every write `<= N` even when writers commit out of order. A write's
//! users are woken when the current position passes it, not before: a woken sync always finds
//! the write.
//!
//! Live positions start at [`LIVE_BASE`]. History fetched later from other servers (backfill)
//! is older than everything a room already shows, so it takes positions *below* that base,
//! handed out downwards ([`Stream::backfill_positions`]): the timeline stays ordered by one
//! number, and no sync token ever covers backfilled events as new.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

use crate::storage::{Batch, Maps, keys};

/// The first live position; everything below is for backfilled history.
pub const LIVE_BASE: u64 = 1 << 40;

pub struct Stream {
    state: Mutex<State>,
    /// The lowest position handed out to backfilled events so far.
    backfill_floor: Mutex<u64>,
    watchers: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
    /// Woken on every advance, for in-process observers that watch all users (SFU membership).
    global: watch::Sender<u64>,
}

struct State {
    last_allocated: u64,
    pending: BTreeSet<u64>,
    /// Finished positions above the current one, with the users to wake once it passes them.
    deferred: Vec<(u64, Vec<OwnedUserId>)>,
}

impl State {
    fn current(&self) -> u64 {
        self.pending
            .first()
            .map_or(self.last_allocated, |first| first - 1)
    }
}

/// A position taken by a writer; finish it after the commit (dropping it finishes it with no
/// users to wake, e.g. on an error path).
pub struct Pending {
    stream: Arc<Stream>,
    count: u64,
    done: bool,
}

impl Pending {
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Marks the write committed and wakes `users` once the current position includes it.
    pub fn finish(mut self, users: Vec<OwnedUserId>) {
        self.done = true;
        self.stream.finish(self.count, users);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.stream.finish(self.count, Vec::new());
        }
    }
}

impl Stream {
    pub fn new(maps: &Maps) -> crate::error::Result<Arc<Self>> {
        let last = maps
            .global
            .get(b"counter")?
            .as_deref()
            .and_then(keys::u64_from)
            .unwrap_or(0)
            .max(LIVE_BASE);
        let floor = maps
            .global
            .get(b"backfill_floor")?
            .as_deref()
            .and_then(keys::u64_from)
            .unwrap_or(LIVE_BASE);
        Ok(Arc::new(Self {
            backfill_floor: Mutex::new(floor),
            state: Mutex::new(State {
                last_allocated: last,
                pending: BTreeSet::new(),
                deferred: Vec::new(),
            }),
            watchers: Mutex::new(HashMap::new()),
            global: watch::Sender::new(last),
        }))
    }

    /// Takes the next position and records it in `batch` so it survives a restart.
    pub fn next(self: &Arc<Self>, maps: &Maps, batch: &mut Batch) -> Pending {
        let count = {
            let mut state = self.state.lock();
            state.last_allocated += 1;
            let count = state.last_allocated;
            state.pending.insert(count);
            count
        };
        batch.raise(&maps.global, b"counter", count);
        Pending {
            stream: self.clone(),
            count,
            done: false,
        }
    }

    /// `n` positions for backfilled events, below every position handed out before, highest
    /// first. The new floor is written before they are used, so a crash can only waste some.
    pub fn backfill_positions(
        &self,
        db: &crate::storage::Db,
        maps: &Maps,
        n: u64,
    ) -> crate::error::Result<Vec<u64>> {
        let mut floor = self.backfill_floor.lock();
        let new_floor = floor
            .checked_sub(n)
            .filter(|f| *f > 0)
            .ok_or_else(|| crate::error::Error::internal("backfill positions exhausted"))?;
        maps.global
            .put(db, b"backfill_floor", new_floor.to_be_bytes())?;
        let positions = (new_floor..*floor).rev().collect();
        *floor = new_floor;
        Ok(positions)
    }

    /// Takes a position for an in-memory change (typing); nothing to persist.
    pub fn next_ephemeral(self: &Arc<Self>) -> Pending {
        let mut state = self.state.lock();
        state.last_allocated += 1;
        let count = state.last_allocated;
        state.pending.insert(count);
        Pending {
            stream: self.clone(),
            count,
            done: false,
        }
    }

    /// Every write at or below this position is committed and visible.
    pub fn current(&self) -> u64 {
        self.state.lock().current()
    }

    /// A receiver that changes whenever something for `user` is written. Subscribe *before*
    /// computing a response, so a write racing the computation still wakes the waiter.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut watchers = self.watchers.lock();
        match watchers.get(user) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                watchers.insert(user.to_owned(), sender);
                receiver
            }
        }
    }

    pub fn subscribe_all(&self) -> watch::Receiver<u64> {
        self.global.subscribe()
    }

    /// Wakes `users` now (for changes that do not take a stream position of their own).
    pub fn wake(&self, users: &[OwnedUserId], count: u64) {
        let mut watchers = self.watchers.lock();
        for user in users {
            if let Some(sender) = watchers.get(user) {
                if sender.receiver_count() == 0 {
                    watchers.remove(user);
                } else {
                    sender.send_replace(count);
                }
            }
        }
    }

    fn finish(&self, count: u64, users: Vec<OwnedUserId>) {
        let (current, ready) = {
            let mut state = self.state.lock();
            state.pending.remove(&count);
            if !users.is_empty() {
                state.deferred.push((count, users));
            }
            let current = state.current();
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.deferred)
                .into_iter()
                .partition(|(c, _)| *c <= current);
            state.deferred = waiting;
            (current, ready)
        };
        for (_, users) in ready {
            self.wake(&users, current);
        }
        self.global.send_replace(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Arc<Stream> {
        Arc::new(Stream {
            backfill_floor: Mutex::new(LIVE_BASE),
            state: Mutex::new(State {
                last_allocated: 0,
                pending: BTreeSet::new(),
                deferred: Vec::new(),
            }),
            watchers: Mutex::new(HashMap::new()),
            global: watch::Sender::new(0),
        })
    }

    #[test]
    fn current_waits_for_earlier_writers() {
        let stream = stream();
        let a = stream.next_ephemeral();
        let b = stream.next_ephemeral();
        let user: OwnedUserId = "@u:x".try_into().expect("valid");
        let mut rx = stream.subscribe(&user);
        rx.borrow_and_update();
        b.finish(vec![user.clone()]);
        // b is committed but a is not: the position must not pass a, and nobody is woken yet.
        assert_eq!(stream.current(), 0);
        assert!(!rx.has_changed().expect("open"));
        a.finish(vec![]);
        assert_eq!(stream.current(), 2);
        assert!(rx.has_changed().expect("open"));
    }
}
