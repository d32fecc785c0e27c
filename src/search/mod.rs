//! Full-text search over room events (issue 3), backed by a tantivy index under
//! `[search] path` (default `<database_path>-search`).
//!
//! The event path only queues: [`Search::index_event`] (after every committed event) and
//! [`Search::remove_event`] (after a redaction) push a small job and return. One background
//! thread applies the jobs to the tantivy writer and to the user directory, and commits every
//! `[search] commit_interval_ms` (1 s) or [`COMMIT_DOCS`] documents, so sends stay fast (a
//! search commits what is pending first, so nothing sent is missed).
//! A search first asks for a flush and waits until every job queued before it is committed,
//! so an event sent just before a search is found.
//!
//! Durability: each commit stores the stream position `P` it covers (every event `<= P` is
//! in the index) as its payload. On start, events after `P` are indexed again from RocksDB
//! (idempotently: a document is deleted by event id before it is added), so documents lost
//! to a `kill -9` between two commits come back; a missing index or one of another schema
//! version is rebuilt the same way from position 0. This catch-up runs on the background
//! thread, so start stays fast; searches during a long rebuild see partial results.

pub mod index;
pub mod query;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, events::TimelineEventType};
use tantivy::{IndexReader, IndexWriter, ReloadPolicy, TantivyDocument};

use self::index::{Fields, Payload, SCHEMA_VERSION, Text};
use crate::{config::Config, directory::Directory, error::Result, rooms::pdu::Pdu, server::Server};

/// Uncommitted documents that force a commit.
pub const COMMIT_DOCS: usize = 5_000;
/// Events indexed per catch-up step before live jobs get a turn.
const CATCH_UP_STEP: usize = 1_000;
/// Idle stream positions after which the position alone is committed (bounds the catch-up
/// after a restart when only non-text events were written).
const POSITION_COMMIT_GAP: u64 = 10_000;
/// How long a search waits for its flush (then it searches what is committed).
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// How long a search waits for the start-up catch-up (a long rebuild is searched partially).
const READY_WAIT: Duration = Duration::from_secs(3);

/// A queued change.
enum Job {
    Index(Box<Doc>),
    Remove(OwnedEventId),
    Member {
        user: OwnedUserId,
        displayname: Option<String>,
        avatar_url: Option<String>,
    },
}

/// What is indexed about an event, captured when it is committed.
pub struct Doc {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub kind: String,
    pub ts: u64,
    pub text: Text,
}

impl Doc {
    pub fn from_pdu(pdu: &Pdu) -> Option<Self> {
        let text = index::extract(pdu)?;
        Some(Self {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            sender: pdu.sender.clone(),
            kind: pdu.kind.to_string(),
            ts: u64::from(pdu.origin_server_ts.0),
            text,
        })
    }

    fn document(&self, fields: &Fields, count: u64) -> TantivyDocument {
        let mut doc = TantivyDocument::default();
        doc.add_text(fields.event_id, self.event_id.as_str());
        doc.add_text(fields.room_id, self.room_id.as_str());
        doc.add_text(fields.sender, self.sender.as_str());
        doc.add_text(fields.kind, &self.kind);
        if let Some(body) = &self.text.body {
            doc.add_text(fields.body, body);
        }
        if let Some(name) = &self.text.name {
            doc.add_text(fields.name, name);
        }
        if let Some(topic) = &self.text.topic {
            doc.add_text(fields.topic, topic);
        }
        doc.add_u64(fields.ts, self.ts);
        doc.add_u64(fields.count, count);
        doc
    }
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Sequence number of the last job queued.
    enqueued: u64,
    /// A search is waiting: commit now.
    flush: bool,
}

#[derive(Default)]
struct Progress {
    /// Jobs up to this sequence number are applied (the user directory is current).
    applied: u64,
    /// Jobs up to this sequence number are committed and visible to searches.
    committed: u64,
    /// The start-up catch-up is done.
    ready: bool,
}

struct Shared {
    fields: Fields,
    reader: IndexReader,
    /// The position the index was opened at (its last commit's payload).
    opened_position: u64,
    /// Longest time a document waits before it is committed without a search asking.
    commit_delay: Duration,
    queue: Mutex<Queue>,
    wake: Condvar,
    progress: Mutex<Progress>,
    progressed: Condvar,
    /// The indexing thread has ended (the server is gone, or it panicked): stop queueing and
    /// do not wait for it.
    stopped: AtomicBool,
}

/// Marks the indexing thread stopped when it ends, however it ends.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.queue.lock().jobs.clear();
        let _progress = self.0.progress.lock();
        self.0.progressed.notify_all();
    }
}

pub struct Search {
    shared: Arc<Shared>,
    writer: Mutex<Option<IndexWriter>>,
    started: OnceLock<()>,
    /// Room summaries for the room directory, `/hierarchy` and `/room_summary`.
    pub directory: Directory,
}

impl Search {
    /// Opens (or creates) the index; nothing is indexed until [`Search::start`].
    pub fn open(config: &Config) -> Result<Self, String> {
        let path = index_path(config);
        let opened = index::open(&path)?;
        let writer: IndexWriter = opened
            .index
            .writer_with_options(
                // One indexing thread and one merge thread: indexing is light next to the
                // rest of the server, and the machine may have two cores.
                tantivy::indexer::IndexWriterOptions::builder()
                    .memory_budget_per_thread(config.search.writer_memory_mb.max(15) * 1_000_000)
                    .num_worker_threads(1)
                    .num_merge_threads(1)
                    .build(),
            )
            .map_err(|e| {
                format!(
                    "cannot open the search index writer in {}: {e}",
                    path.display()
                )
            })?;
        // Fewer, larger merges: each commit makes a segment, and eager merging of small
        // segments competes with the request path for the CPU under heavy sending.
        let mut merge_policy = tantivy::merge_policy::LogMergePolicy::default();
        merge_policy.set_min_num_segments(12);
        merge_policy.set_min_layer_size(20_000);
        writer.set_merge_policy(Box::new(merge_policy));
        let reader = opened
            .index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| format!("cannot open the search index reader: {e}"))?;
        Ok(Self {
            shared: Arc::new(Shared {
                fields: opened.fields,
                reader,
                opened_position: opened.position,
                commit_delay: Duration::from_millis(config.search.commit_interval_ms),
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                progress: Mutex::new(Progress::default()),
                progressed: Condvar::new(),
                stopped: AtomicBool::new(false),
            }),
            writer: Mutex::new(Some(writer)),
            started: OnceLock::new(),
            directory: Directory::new(),
        })
    }

    /// Starts the background thread: catches up from the index's last position, then applies
    /// queued jobs. Call once, after the server is built.
    pub fn start(server: &Arc<Server>) {
        let search = &server.search;
        if search.started.set(()).is_err() {
            return;
        }
        let Some(writer) = search.writer.lock().take() else {
            return;
        };
        let shared = search.shared.clone();
        let weak = Arc::downgrade(server);
        let spawned = std::thread::Builder::new()
            .name("sparks-search".into())
            .spawn(move || worker(shared, weak, writer));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the search indexer; search will find nothing new");
        }
    }

    /// Called after an event is committed (not for rejected events).
    pub fn index_event(&self, pdu: &Pdu) {
        let job = if let Some(doc) = Doc::from_pdu(pdu) {
            Job::Index(Box::new(doc))
        } else if pdu.kind == TimelineEventType::RoomMember {
            let Some(user) = pdu.state_user() else {
                return;
            };
            Job::Member {
                user: user.to_owned(),
                displayname: pdu.content_str("displayname"),
                avatar_url: pdu.content_str("avatar_url"),
            }
        } else if pdu.kind == TimelineEventType::RoomRedaction
            && let Some(target) = &pdu.redacts
        {
            Job::Remove(target.clone())
        } else {
            return;
        };
        self.push(job);
    }

    /// Called after an event is redacted.
    pub fn remove_event(&self, event_id: &EventId) {
        self.push(Job::Remove(event_id.to_owned()));
    }

    fn push(&self, job: Job) {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut queue = self.shared.queue.lock();
        queue.jobs.push(job);
        queue.enqueued += 1;
        if queue.jobs.len() == 1 || queue.jobs.len() >= COMMIT_DOCS {
            self.shared.wake.notify_one();
        }
    }

    /// Blocks until everything queued so far is searchable (or a timeout passes). Call from
    /// a blocking thread.
    pub fn flush_for_search(&self) {
        self.wait(true);
    }

    /// Blocks until everything queued so far is applied to the user directory.
    pub fn wait_applied(&self) {
        self.wait(false);
    }

    fn wait(&self, commit: bool) {
        if self.started.get().is_none() {
            return;
        }
        let target = {
            let mut queue = self.shared.queue.lock();
            if commit {
                queue.flush = true;
            }
            self.shared.wake.notify_one();
            queue.enqueued
        };
        let start = Instant::now();
        let mut progress = self.shared.progress.lock();
        loop {
            if self.shared.stopped.load(Ordering::SeqCst) {
                return;
            }
            let done = if commit {
                progress.committed >= target
            } else {
                progress.applied >= target
            };
            let elapsed = start.elapsed();
            if (done && (progress.ready || elapsed >= READY_WAIT)) || elapsed >= FLUSH_WAIT {
                if !done {
                    tracing::warn!("search index is behind; searching what is committed");
                }
                return;
            }
            let wait = if done {
                READY_WAIT.saturating_sub(elapsed)
            } else {
                FLUSH_WAIT.saturating_sub(elapsed)
            };
            self.shared.progressed.wait_for(&mut progress, wait);
        }
    }

    pub(crate) fn searcher(&self) -> tantivy::Searcher {
        self.shared.reader.searcher()
    }

    pub(crate) fn fields(&self) -> &Fields {
        &self.shared.fields
    }
}

fn index_path(config: &Config) -> PathBuf {
    if config.search.path.as_os_str().is_empty() {
        let mut path = config.database_path.clone().into_os_string();
        path.push("-search");
        PathBuf::from(path)
    } else {
        config.search.path.clone()
    }
}

/// The start-up catch-up: every room's events in `(from, to]`, one room after another.
struct CatchUp {
    rooms: Vec<OwnedRoomId>,
    room: usize,
    /// Next position to read in the current room.
    next: u64,
    from: u64,
    to: u64,
    /// Local users already re-indexed in the user directory (their profile is current).
    users: HashSet<OwnedUserId>,
    indexed: u64,
    started: Instant,
}

impl CatchUp {
    fn new(server: &Server, from: u64, to: u64) -> Self {
        let rooms = server
            .maps
            .roomid_meta
            .scan_prefix(Vec::new())
            .filter_map(|(key, _)| {
                std::str::from_utf8(&key)
                    .ok()
                    .and_then(|s| OwnedRoomId::try_from(s).ok())
            })
            .collect();
        Self {
            rooms,
            room: 0,
            next: from + 1,
            from,
            to,
            users: HashSet::new(),
            indexed: 0,
            started: Instant::now(),
        }
    }

    fn done(&self) -> bool {
        self.room >= self.rooms.len()
    }

    /// Indexes up to [`CATCH_UP_STEP`] events; returns how many documents changed.
    fn step(&mut self, server: &Server, shared: &Shared, writer: &IndexWriter) -> Result<usize> {
        let mut budget = CATCH_UP_STEP;
        let mut changed = 0;
        while budget > 0 && !self.done() {
            let room = &self.rooms[self.room];
            let events = server.rooms.timeline_asc(
                &server.maps,
                room,
                self.next,
                self.to.saturating_add(1),
                budget,
            )?;
            if events.is_empty() {
                self.room += 1;
                self.next = self.from + 1;
                continue;
            }
            budget = budget.saturating_sub(events.len());
            for (count, pdu) in events {
                self.next = count + 1;
                if let Some(doc) = Doc::from_pdu(&pdu) {
                    changed += apply_index(server, shared, writer, &doc)?;
                    self.indexed += 1;
                } else if pdu.kind == TimelineEventType::RoomMember
                    && let Some(user) = pdu.state_user()
                {
                    if server.is_local(user.server_name()) && !self.users.insert(user.to_owned()) {
                        continue;
                    }
                    crate::directory::users::update_user(
                        server,
                        user,
                        pdu.content_str("displayname"),
                        pdu.content_str("avatar_url"),
                    )?;
                } else if pdu.kind == TimelineEventType::RoomRedaction
                    && let Some(target) = &pdu.redacts
                {
                    writer.delete_term(index::event_term(&shared.fields, target.as_str()));
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
}

/// Adds (or replaces) an event's document; 0 if the event is gone or redacted.
fn apply_index(server: &Server, shared: &Shared, writer: &IndexWriter, doc: &Doc) -> Result<usize> {
    let term = index::event_term(&shared.fields, doc.event_id.as_str());
    let Some(meta) = server.rooms.event_meta(&server.maps, &doc.event_id)? else {
        return Ok(0);
    };
    writer.delete_term(term);
    if meta.redacted_by.is_none() {
        writer
            .add_document(doc.document(&shared.fields, meta.count))
            .map_err(|e| crate::error::Error::internal(format_args!("search index: {e}")))?;
    }
    Ok(1)
}

fn apply(server: &Server, shared: &Shared, writer: &IndexWriter, job: &Job) -> Result<usize> {
    match job {
        Job::Index(doc) => apply_index(server, shared, writer, doc),
        Job::Remove(event_id) => {
            writer.delete_term(index::event_term(&shared.fields, event_id.as_str()));
            Ok(1)
        }
        Job::Member {
            user,
            displayname,
            avatar_url,
        } => {
            crate::directory::users::update_user(
                server,
                user,
                displayname.clone(),
                avatar_url.clone(),
            )?;
            Ok(0)
        }
    }
}

fn commit(shared: &Shared, writer: &mut IndexWriter, position: u64) -> tantivy::Result<()> {
    let payload = serde_json::to_string(&Payload {
        version: SCHEMA_VERSION,
        position,
    })
    .unwrap_or_default();
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&payload);
    prepared.commit()?;
    shared.reader.reload()
}

/// The indexing thread. Ends when the server is dropped.
fn worker(shared: Arc<Shared>, server: Weak<Server>, mut writer: IndexWriter) {
    let _guard = StopGuard(shared.clone());
    let mut position = shared.opened_position;
    let mut catch_up = None;
    if let Some(server) = server.upgrade() {
        let current = server.stream.current();
        if position > current {
            // The index is ahead of the database (restored or replaced): start over.
            tracing::warn!(
                position,
                current,
                "search index is ahead of the database; rebuilding it"
            );
            if let Err(error) = writer.delete_all_documents() {
                tracing::error!(%error, "cannot clear the search index");
            }
            position = 0;
        }
        if position < current {
            tracing::info!(from = position, to = current, "search index catching up");
            catch_up = Some(CatchUp::new(&server, position, current));
        }
    }
    if catch_up.is_none() {
        shared.progress.lock().ready = true;
    }
    let mut uncommitted = 0usize;
    let mut first_uncommitted: Option<Instant> = None;
    let mut applied_seq = 0u64;
    loop {
        let Some(server) = server.upgrade() else {
            break;
        };
        let shutting_down = *server.shutdown.borrow();
        let (jobs, seq, flush, current) = {
            let mut queue = shared.queue.lock();
            if queue.jobs.is_empty() && !queue.flush && catch_up.is_none() {
                let timeout = first_uncommitted.map_or(Duration::from_secs(1), |t| {
                    shared.commit_delay.saturating_sub(t.elapsed())
                });
                if !timeout.is_zero() {
                    shared.wake.wait_for(&mut queue, timeout);
                }
            }
            // Read before taking the jobs: every event at or below `current` has queued its
            // job already (`index_event` runs before its stream position is finished).
            let current = server.stream.current();
            let jobs = std::mem::take(&mut queue.jobs);
            let flush = std::mem::take(&mut queue.flush);
            (jobs, queue.enqueued, flush, current)
        };
        for job in &jobs {
            match apply(&server, &shared, &writer, job) {
                Ok(changed) => uncommitted += changed,
                Err(error) => tracing::error!(%error, "search indexing failed"),
            }
        }
        if uncommitted > 0 && first_uncommitted.is_none() {
            first_uncommitted = Some(Instant::now());
        }
        if seq != applied_seq {
            applied_seq = seq;
            shared.progress.lock().applied = seq;
            shared.progressed.notify_all();
        }

        let mut caught_up = false;
        if let Some(job) = catch_up.as_mut() {
            match job.step(&server, &shared, &writer) {
                Ok(changed) => uncommitted += changed,
                Err(error) => {
                    tracing::error!(%error, "search catch-up failed; the index may be incomplete");
                    job.room = job.rooms.len();
                }
            }
            if uncommitted > 0 && first_uncommitted.is_none() {
                first_uncommitted = Some(Instant::now());
            }
            if job.done() {
                tracing::info!(
                    events = job.indexed,
                    ms = job.started.elapsed().as_millis() as u64,
                    "search index caught up"
                );
                catch_up = None;
                caught_up = true;
            }
        }

        let due = flush
            || caught_up
            || shutting_down
            || uncommitted >= COMMIT_DOCS
            || first_uncommitted.is_some_and(|t| t.elapsed() >= shared.commit_delay);
        let position_stale =
            catch_up.is_none() && current > position.saturating_add(POSITION_COMMIT_GAP);
        if (due && (uncommitted > 0 || caught_up)) || (position_stale && jobs.is_empty()) {
            // While catching up, events between the old position and the start are not all
            // indexed yet: keep the old position.
            let new_position = if catch_up.is_none() {
                current.max(position)
            } else {
                position
            };
            match commit(&shared, &mut writer, new_position) {
                Ok(()) => {
                    position = new_position;
                    uncommitted = 0;
                    first_uncommitted = None;
                }
                Err(error) => tracing::error!(%error, "search index commit failed"),
            }
        }
        if flush || caught_up || uncommitted == 0 {
            let mut progress = shared.progress.lock();
            if uncommitted == 0 {
                progress.committed = seq;
            }
            if caught_up {
                progress.ready = true;
            }
            drop(progress);
            shared.progressed.notify_all();
        }
    }
    // The server is gone: commit what is pending (the position stays where it was, so a
    // restart re-indexes anything after it).
    if uncommitted > 0
        && let Err(error) = commit(&shared, &mut writer, position)
    {
        tracing::warn!(%error, "final search index commit failed");
    }
}
