//! Runs the [`Sfu`] on tokio: one task owns it and the UDP socket; WebSocket tasks talk to it
//! through an [`SfuHandle`]. Nothing on the media path takes a lock.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use livekit_protocol::{SignalRequest, SignalResponse};
use prost::Message as _;
use tokio::{
    io::Interest,
    net::UdpSocket,
    sync::{mpsc, oneshot},
};

use crate::{ConnId, JoinParams, Output, SendJob, Sfu, SfuConfig, latency::Latency};

/// Longest we sleep without looking at the clock (str0m timers are usually sooner).
const MAX_IDLE: Duration = Duration::from_millis(500);
/// Datagrams already waiting that are handled together before sending (receivers' output
/// is produced once per batch).
const BATCH: usize = 32;

/// What a new session gets back: its participant, the WebSocket's generation of that
/// participant, and its outgoing messages.
type Attached = (ConnId, u64, mpsc::UnboundedReceiver<Vec<u8>>);

enum Command {
    Join {
        params: JoinParams,
        reply: oneshot::Sender<Attached>,
    },
    Resume {
        params: JoinParams,
        sid: String,
        reply: oneshot::Sender<Option<Attached>>,
    },
    Signal(ConnId, SignalRequest),
    /// A WebSocket ended (its generation: a resumed session's old socket ending is no news),
    /// with the messages it was given but did not write.
    Closed(ConnId, u64, Vec<Vec<u8>>),
    RemoveMatrixMember {
        room_id: String,
        user_id: String,
    },
}

/// How the homeserver talks to the running SFU.
#[derive(Clone)]
pub struct SfuHandle {
    commands: mpsc::UnboundedSender<Command>,
    local: SocketAddr,
}

/// A participant's session: signalling messages for its WebSocket (encoded `SignalResponse`s)
/// arrive on `messages`; it ends when that channel closes.
pub struct Session {
    pub conn: ConnId,
    /// Which WebSocket of the participant this is (it changes when a session is resumed).
    pub generation: u64,
    pub messages: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl SfuHandle {
    /// The UDP address media flows through.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub async fn join(&self, params: JoinParams) -> Option<Session> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Join { params, reply }).ok()?;
        let (conn, generation, messages) = answer.await.ok()?;
        Some(Session {
            conn,
            generation,
            messages,
        })
    }

    /// Resumes the session of participant `sid` on a new WebSocket; `None` when there is no
    /// such session to resume.
    pub async fn resume(&self, params: JoinParams, sid: &str) -> Option<Session> {
        let (reply, answer) = oneshot::channel();
        let sid = sid.to_owned();
        self.commands
            .send(Command::Resume { params, sid, reply })
            .ok()?;
        let (conn, generation, messages) = answer.await.ok()??;
        Some(Session {
            conn,
            generation,
            messages,
        })
    }

    /// A message from the participant's WebSocket (undecodable ones are ignored).
    pub fn signal(&self, conn: ConnId, bytes: &[u8]) {
        match SignalRequest::decode(bytes) {
            Ok(request) => {
                let _ = self.commands.send(Command::Signal(conn, request));
            }
            Err(error) => tracing::debug!(conn, %error, "undecodable signal request"),
        }
    }

    /// The session's WebSocket ended; `undelivered`: the messages it was given (the one
    /// whose write failed, and any still queued) that did not go out, kept for a resume.
    pub fn closed(&self, session: &Session, undelivered: Vec<Vec<u8>>) {
        let _ = self.commands.send(Command::Closed(
            session.conn,
            session.generation,
            undelivered,
        ));
    }

    /// Removes, at once, every participant whose token was issued to `user_id` for the Matrix
    /// room `room_id`.
    pub fn remove_matrix_member(&self, room_id: &str, user_id: &str) {
        let _ = self.commands.send(Command::RemoveMatrixMember {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
        });
    }
}

/// A participant joined (`joined`) or left a meeting.
#[derive(Debug)]
pub struct Presence {
    pub identity: String,
    /// The Matrix user and room its token was issued for (by this homeserver).
    pub matrix: Option<crate::token::MatrixClaim>,
    pub joined: bool,
}

/// Binds the UDP socket and starts the SFU task. `advertise` are the addresses clients are
/// told to send media to (the bound address when it is a concrete one); `events` gets
/// participants' comings and goings.
/// How the SFU behaves (from `[rtc]`).
pub struct Tuning {
    pub resume_window: Duration,
    pub estimate_bandwidth: bool,
    pub allow_pause: bool,
    /// Sending threads besides the SFU task's own (`None`: one per further core, at most 7).
    pub send_threads: Option<usize>,
}

pub async fn start(
    bind: SocketAddr,
    advertise: Vec<SocketAddr>,
    tuning: Tuning,
    events: Option<mpsc::UnboundedSender<Presence>>,
) -> io::Result<SfuHandle> {
    let socket = UdpSocket::bind(bind).await?;
    let local = socket.local_addr()?;
    let provider = str0m::crypto::from_feature_flags();
    let cert = provider
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| io::Error::other("cannot generate the DTLS certificate"))?;
    provider.install_process_default();
    let candidates = if advertise.is_empty() {
        vec![local]
    } else {
        advertise
            .into_iter()
            .map(|a| {
                SocketAddr::new(
                    a.ip(),
                    if a.port() == 0 {
                        local.port()
                    } else {
                        a.port()
                    },
                )
            })
            .collect()
    };
    // Datagrams count as arriving at the advertised address: behind 1:1 NAT they reach the
    // bound one, and ICE only answers checks sent to one of its own candidates.
    let arrival = candidates.first().copied().unwrap_or(local);
    let sfu = Sfu::new(SfuConfig {
        candidates,
        cert,
        resume_window: tuning.resume_window,
        estimate_bandwidth: tuning.estimate_bandwidth,
        allow_pause: tuning.allow_pause,
    });
    let (commands, receiver) = mpsc::unbounded_channel();
    let senders = Senders::new(tuning.send_threads.unwrap_or_else(sending_threads));
    tokio::spawn(run(sfu, socket, senders, arrival, receiver, events));
    Ok(SfuHandle { commands, local })
}

/// Sending threads besides the SFU task's own, by default: one per further core (at most 7).
fn sending_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).min(7))
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn run(
    mut sfu: Sfu,
    socket: UdpSocket,
    senders: Senders,
    local: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: Option<mpsc::UnboundedSender<Presence>>,
) {
    let mut sessions = Sessions::default();
    let mut outbox = Outbox::new(&socket, senders);
    let mut buf = vec![0u8; 2048];
    loop {
        flush(
            &mut sfu,
            &socket,
            &mut outbox,
            &mut sessions,
            events.as_ref(),
        )
        .await;
        outbox.since = None;
        outbox.report();
        let now = Instant::now();
        let deadline = sfu
            .next_timeout()
            .unwrap_or(now + MAX_IDLE)
            .min(now + MAX_IDLE)
            .max(now);
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let now = Instant::now();
                    outbox.since = Some(now);
                    datagram(&mut sfu, now, from, local, &buf[..n]);
                    // Whatever else is already waiting joins the batch.
                    for _ in 0..BATCH {
                        let Ok((n, from)) = socket.try_recv_from(&mut buf) else { break };
                        datagram(&mut sfu, now, from, local, &buf[..n]);
                    }
                }
                Err(error) => tracing::debug!(%error, "UDP receive failed"),
            },
            command = commands.recv() => match command {
                Some(command) => handle(&mut sfu, &mut sessions, command),
                None => return,
            },
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if !guarded(|| sfu.handle_timeout(now))
                    && let Some(conn) = sfu.interrupted_timer()
                {
                    guarded(|| sfu.drop_faulty(now, conn));
                }
            }
        }
    }
}

/// The WebSocket each participant is attached to, and how many it has had.
#[derive(Default)]
struct Sessions {
    open: HashMap<ConnId, (u64, mpsc::UnboundedSender<Vec<u8>>)>,
    next_generation: u64,
}

impl Sessions {
    /// A new WebSocket for `conn` (a resumed session's replaces the old one, which ends).
    fn attach(&mut self, conn: ConnId) -> Attached {
        let (tx, rx) = mpsc::unbounded_channel();
        self.next_generation += 1;
        self.open.insert(conn, (self.next_generation, tx));
        (conn, self.next_generation, rx)
    }

    /// Hands a message to the participant's WebSocket; `false` when that has just closed.
    fn send(&self, conn: ConnId, bytes: Vec<u8>) -> bool {
        match self.open.get(&conn) {
            Some((_, tx)) => tx.send(bytes).is_ok(),
            None => false,
        }
    }

    /// Whether `generation` is `conn`'s current WebSocket (then it is detached).
    fn detach(&mut self, conn: ConnId, generation: u64) -> bool {
        match self.open.get(&conn) {
            Some((current, _)) if *current == generation => {
                self.open.remove(&conn);
                true
            }
            _ => false,
        }
    }
}

fn handle(sfu: &mut Sfu, sessions: &mut Sessions, command: Command) {
    let now = Instant::now();
    match command {
        Command::Join { params, reply } => {
            let conn = sfu.join(now, now_ms(), params);
            let _ = reply.send(sessions.attach(conn));
        }
        Command::Resume { params, sid, reply } => {
            let mut resumed = None;
            guarded(|| resumed = sfu.resume(now, params, &sid));
            let _ = reply.send(resumed.map(|conn| sessions.attach(conn)));
        }
        Command::Signal(conn, request) => {
            if !guarded(|| sfu.handle_signal(now, conn, request)) {
                // Its state may be half-updated: it leaves (and may rejoin); the room goes on.
                guarded(|| sfu.drop_faulty(now, conn));
            }
        }
        Command::Closed(conn, generation, undelivered) => {
            let undelivered = undelivered
                .iter()
                .filter_map(|bytes| SignalResponse::decode(bytes.as_slice()).ok())
                .collect();
            if sessions.detach(conn, generation) {
                guarded(|| sfu.handle_ws_closed(now, conn, undelivered));
            } else {
                // The old WebSocket of a resumed session: what it did not write goes to the
                // new one.
                guarded(|| sfu.redeliver(conn, undelivered));
            }
        }
        Command::RemoveMatrixMember { room_id, user_id } => {
            guarded(|| {
                let removed = sfu.remove_matrix_member(now, &room_id, &user_id);
                if removed > 0 {
                    tracing::info!(
                        room_id,
                        user_id,
                        removed,
                        "removed from the call: left the room"
                    );
                }
            });
        }
    }
}

/// Sends what the core produced: datagrams on the socket, signalling to the sessions,
/// participants' comings and goings to the homeserver.
async fn flush(
    sfu: &mut Sfu,
    socket: &UdpSocket,
    outbox: &mut Outbox,
    sessions: &mut Sessions,
    events: Option<&mpsc::UnboundedSender<Presence>>,
) {
    loop {
        // What handling input and timers produced (replies, feedback, signalling) first.
        send_output(sfu, socket, outbox, sessions, events).await;
        outbox.send(socket).await;
        if !sfu.has_unsent() {
            return;
        }
        // Then every receiver media was written to: each one's packets are sent as soon as
        // they are made, receivers spread over the sending threads when there are many.
        let now = Instant::now();
        let mut done = Sent::default();
        let senders = &outbox.senders;
        let sending = Sending {
            now,
            socket,
            gso: outbox.gso.as_ref(),
            since: outbox.since,
        };
        // (A panic outside one receiver's job leaves that batch's reports unread; the
        // receivers' timers catch up on their next run.)
        guarded(|| {
            sfu.flush_jobs(now, |jobs| {
                done = senders.run(jobs, sending);
            })
        });
        for (packets, time) in done.times {
            outbox.latency.record(time, packets as u64);
        }
        for (to, data) in done.deferred {
            outbox.push(socket, to, &data).await;
        }
    }
}

/// Hands out what the core produced so far.
async fn send_output(
    sfu: &mut Sfu,
    socket: &UdpSocket,
    outbox: &mut Outbox,
    sessions: &mut Sessions,
    events: Option<&mpsc::UnboundedSender<Presence>>,
) {
    while let Some(output) = sfu.poll_output() {
        match output {
            Output::Transmit { to, data } => outbox.push(socket, to, &data).await,
            Output::Signal(conn, response) => {
                if !sessions.send(conn, response.encode_to_vec()) {
                    guarded(|| sfu.undelivered(conn, *response));
                }
            }
            Output::Close(conn) => {
                sessions.open.remove(&conn);
            }
            Output::Presence {
                identity,
                matrix,
                joined,
            } => {
                if let Some(events) = events {
                    let _ = events.send(Presence {
                        identity,
                        matrix,
                        joined,
                    });
                }
            }
        }
    }
}

/// Most datagrams in one segmented send (the kernel's limit is 64) and most bytes.
const MAX_SEGMENTS: usize = 64;
const MAX_SEGMENTED_BYTES: usize = 60_000;

/// Datagrams on their way out. A receiver's output comes as a run of datagrams to one address,
/// mostly of one size (video packets fill the MTU; one codec's audio packets are alike): such a
/// run goes out in one system call with UDP segmentation offload (GSO) where the kernel offers
/// it, instead of one `sendto` each.
struct Outbox {
    gso: Option<quinn_udp::UdpSocketState>,
    senders: Senders,
    /// The run being gathered: its address, datagram size, datagrams back to back.
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    buf: Vec<u8>,
    /// When the datagrams whose copies are going out now were read off the socket (`None`
    /// while sending what timers produced).
    since: Option<Instant>,
    latency: Latency,
}

impl Outbox {
    fn new(socket: &UdpSocket, senders: Senders) -> Self {
        let gso = quinn_udp::UdpSocketState::new(socket.into())
            .ok()
            .filter(|state| state.max_gso_segments() > 1);
        tracing::debug!(gso = gso.is_some(), "UDP send path");
        Self {
            gso,
            senders,
            to: None,
            segment: 0,
            count: 0,
            buf: Vec::with_capacity(MAX_SEGMENTED_BYTES),
            since: None,
            latency: Latency::new(Instant::now()),
        }
    }

    /// `packets` datagrams were handed to the kernel.
    fn sent(&mut self, packets: usize) {
        if let Some(since) = self.since {
            self.latency.record(since.elapsed(), packets as u64);
        }
    }

    /// Logs the time forwarded packets spent inside the SFU, once a window is over.
    fn report(&mut self) {
        if let Some(summary) = self.latency.take_summary(Instant::now()) {
            tracing::debug!(
                target: "sparks_sfu::latency",
                packets = summary.packets,
                p50_us = summary.p50_us,
                p99_us = summary.p99_us,
                max_us = summary.max_us,
                "time forwarded packets spent in the SFU"
            );
        }
    }

    /// Adds a datagram: it joins the run when it goes to the same address with the same size
    /// (or a smaller one, which ends the run); otherwise the run goes out and a new one starts.
    async fn push(&mut self, socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
        let Some(gso) = &self.gso else {
            send_one(socket, to, data).await;
            self.sent(1);
            return;
        };
        let limit = gso.max_gso_segments().min(MAX_SEGMENTS);
        let joins = self.to == Some(to)
            && data.len() <= self.segment
            && self.count < limit
            && self.buf.len() + data.len() <= MAX_SEGMENTED_BYTES;
        if !joins {
            self.send(socket).await;
            self.to = Some(to);
            self.segment = data.len();
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
        if data.len() < self.segment {
            self.send(socket).await;
        }
    }

    /// Sends the run gathered so far.
    async fn send(&mut self, socket: &UdpSocket) {
        let (Some(to), Some(gso)) = (self.to.take(), &self.gso) else {
            return;
        };
        if self.count > 1 {
            let sent = loop {
                match segmented(socket, gso, to, self.segment, &self.buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_err() {
                            break false;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "segmented send failed: sent one at a time");
                        break false;
                    }
                    Ok(()) => break true,
                }
            };
            if !sent {
                // quinn-udp gives up segmenting after EIO or EINVAL (a device that cannot
                // segment); other errors (an unreachable peer, a full buffer) are passing.
                if gso.max_gso_segments() <= 1 {
                    tracing::info!("this socket cannot segment: one datagram at a time from now");
                    self.gso = None;
                }
                for datagram in self.buf.chunks(self.segment) {
                    send_one(socket, to, datagram).await;
                }
            }
        } else {
            send_one(socket, to, &self.buf).await;
        }
        self.sent(self.count);
        self.buf.clear();
        self.count = 0;
    }
}

async fn send_one(socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
    if socket.try_send_to(data, to).is_err() {
        let _ = socket.send_to(data, to).await;
    }
}

/// Sends `buf`, datagrams of `segment` bytes back to back (the last may be shorter), to `to`
/// in one system call.
fn segmented(
    socket: &UdpSocket,
    gso: &quinn_udp::UdpSocketState,
    to: SocketAddr,
    segment: usize,
    buf: &[u8],
) -> io::Result<()> {
    let transmit = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: buf,
        segment_size: Some(segment),
        src_ip: None,
    };
    socket.try_io(Interest::WRITABLE, || {
        gso.try_send(socket.into(), &transmit)
    })
}

/// Receivers of one batch below this many are all made on the SFU task's thread: handing
/// work to another thread costs a wake-up, worth it only for a large fan-out.
const SPREAD_FROM: usize = 16;

/// The threads that make receivers' packets, besides the SFU task's own.
struct Senders {
    pool: Option<rayon::ThreadPool>,
}

/// What every receiver's packets of one batch are made and sent with.
#[derive(Clone, Copy)]
struct Sending<'a> {
    now: Instant,
    socket: &'a UdpSocket,
    gso: Option<&'a quinn_udp::UdpSocketState>,
    /// When the batch's input was read off the socket (for the latency figures).
    since: Option<Instant>,
}

/// What the sending threads did with one batch.
#[derive(Default)]
struct Sent {
    /// (packets, time since their input was read) for each receiver's run.
    times: Vec<(usize, Duration)>,
    /// Datagrams the kernel would not take at once (its buffer was full), to be sent by the
    /// task when the socket is writable again.
    deferred: Vec<(SocketAddr, Vec<u8>)>,
}

impl Senders {
    /// `threads` sending threads besides the SFU task's own (none: all on the task).
    fn new(threads: usize) -> Self {
        let pool = (threads > 0)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("sfu-send-{i}"))
                    .build()
                    .map_err(|error| tracing::warn!(%error, "no SFU sending threads"))
                    .ok()
            })
            .flatten();
        Self { pool }
    }

    /// Runs the receivers' jobs, this thread taking the first share, and sends each one's
    /// datagrams as soon as they are made.
    fn run(&self, jobs: &mut [SendJob<'_>], sending: Sending<'_>) -> Sent {
        let pool = self.pool.as_ref().filter(|_| jobs.len() >= SPREAD_FROM);
        let Some(pool) = pool else {
            return sending.share(jobs);
        };
        let shares = pool.current_num_threads() + 1;
        let per_share = jobs.len().div_ceil(shares);
        let mut chunks = jobs.chunks_mut(per_share);
        let mine = chunks.next().unwrap_or_default();
        let mut results: Vec<Sent> = Vec::new();
        results.resize_with(shares, Sent::default);
        let (first, others) = results.split_at_mut(1);
        pool.in_place_scope(|scope| {
            for (chunk, result) in chunks.zip(others.iter_mut()) {
                scope.spawn(move |_| *result = sending.share(chunk));
            }
            first[0] = sending.share(mine);
        });
        let mut all = Sent::default();
        for result in results {
            all.times.extend(result.times);
            all.deferred.extend(result.deferred);
        }
        all
    }
}

impl Sending<'_> {
    /// Makes and sends the packets of a share of the receivers, one receiver at a time.
    fn share(self, jobs: &mut [SendJob<'_>]) -> Sent {
        let mut sent = Sent::default();
        let mut datagrams: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut buf = Vec::new();
        for job in jobs {
            if !guarded(|| job.run(self.now, |to, data| datagrams.push((to, data)))) {
                job.failed();
            }
            let waiting = sent.deferred.len();
            let count = datagrams.len();
            send_run(
                self.socket,
                self.gso,
                &mut datagrams,
                &mut buf,
                &mut sent.deferred,
            );
            // (Deferred ones count when they are sent.)
            let count = count - (sent.deferred.len() - waiting);
            if let Some(since) = self.since
                && count > 0
            {
                sent.times.push((count, since.elapsed()));
            }
        }
        sent
    }
}

/// Sends one receiver's datagrams without waiting: in one segmented system call when they
/// allow it (one address, equal sizes but the last), else one at a time. What the kernel
/// would not take now goes to `deferred`.
fn send_run(
    socket: &UdpSocket,
    gso: Option<&quinn_udp::UdpSocketState>,
    datagrams: &mut Vec<(SocketAddr, Vec<u8>)>,
    buf: &mut Vec<u8>,
    deferred: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    if let (Some(gso), [(to, first), rest @ ..]) = (gso, datagrams.as_slice())
        && !rest.is_empty()
        && datagrams.len() <= gso.max_gso_segments().min(MAX_SEGMENTS)
        && rest.iter().all(|(other, _)| other == to)
        && rest[..rest.len() - 1]
            .iter()
            .all(|(_, d)| d.len() == first.len())
        && rest.last().is_some_and(|(_, d)| d.len() <= first.len())
    {
        buf.clear();
        for (_, data) in datagrams.iter() {
            buf.extend_from_slice(data);
        }
        if buf.len() <= MAX_SEGMENTED_BYTES && segmented(socket, gso, *to, first.len(), buf).is_ok()
        {
            datagrams.clear();
            return;
        }
    }
    for (to, data) in datagrams.drain(..) {
        if socket.try_send_to(&data, to).is_err() {
            deferred.push((to, data));
        }
    }
}

/// One datagram; if handling it panics, the participant it came from is dropped.
fn datagram(sfu: &mut Sfu, now: Instant, from: SocketAddr, local: SocketAddr, data: &[u8]) {
    if !guarded(|| sfu.handle_datagram(now, from, local, data))
        && let Some(conn) = sfu.conn_of_source(from)
    {
        guarded(|| sfu.drop_faulty(now, conn));
    }
}

/// Runs one input; a panic in it (a bug in handling one peer) is logged instead of taking
/// the SFU task, and with it every meeting, down. Returns whether it ran through.
fn guarded(f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(what, "SFU input handling panicked");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_contained_and_reported() {
        assert!(guarded(|| {}));
        assert!(!guarded(|| panic!("a bug in one peer's handling")));
        // And the caller carries on.
        assert!(guarded(|| {}));
    }
}
