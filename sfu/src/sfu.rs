//! The sans-IO core: rooms of participants, their peer connections, and the routing of media
//! and signalling between them. Every entry point takes the current time; what the outside
//! world must do comes out of [`Sfu::poll_output`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

use livekit_protocol::{
    self as proto, AddTrackRequest, JoinResponse, ParticipantInfo, ParticipantPermission,
    SignalRequest, TrackInfo, signal_request, signal_response,
};
use str0m::{
    Event, IceConnectionState,
    change::{SdpAnswer, SdpOffer},
    channel::{ChannelConfig, ChannelId, Reliability},
    config::DtlsCert,
    format::Codec,
    format::PayloadParams,
    media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid},
    rtp::{RtpPacket, RtpWrite, SeqNo},
};

use crate::{
    forward::{Forwarding, Frame, Verdict, Vp8Ids, fit},
    ids,
    peer::{Pc, Side},
    signal,
    token::Claims,
};

/// One WebSocket connection (one participant session).
pub type ConnId = u64;

/// Keyframe requests to a publisher, at most one per track in this time.
const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// What an audio track is assumed to need when sharing bandwidth out (Opus with headers).
const AUDIO_BITRATE: u64 = 64_000;
/// Least bandwidth kept for video while the estimator probes for more.
const MIN_VIDEO_BITRATE: u64 = 300_000;

pub struct SfuConfig {
    /// Where the UDP socket is reachable (host candidates).
    pub candidates: Vec<SocketAddr>,
    /// The DTLS certificate every peer connection presents.
    pub cert: DtlsCert,
    /// How long a participant whose WebSocket went away stays in the meeting, waiting for
    /// its client to resume the session (zero: it leaves at once).
    pub resume_window: Duration,
    /// Whether each receiver's bandwidth is estimated (TWCC, with str0m's pacer) to cap the
    /// simulcast layer it gets. It costs CPU per forwarded packet (see benches/sfu).
    pub estimate_bandwidth: bool,
    /// Whether receivers' video may be paused when not even its lowest layer fits their
    /// bandwidth, for clients that do not say (LiveKit's `congestion_control.allow_pause`).
    pub allow_pause: bool,
}

/// Signalling messages kept for a participant whose WebSocket is gone; a client that missed
/// more than this rejoins instead of resuming.
const MAX_MISSED: usize = 4096;

/// Whether a receiver's video is to be paused: its `budget` (bits/s) does not carry even the
/// `lowest` layer (bits/s; 0 when not known, which never pauses). A paused one resumes only with a quarter to spare, so that it does not flap
/// while the estimate hovers around the layer's bitrate.
fn congested(lowest: u64, budget: u64, paused: bool) -> bool {
    if paused {
        budget < lowest + lowest / 4
    } else {
        budget < lowest
    }
}

/// What a participant joins with (from their verified token and the `/rtc` query).
pub struct JoinParams {
    pub claims: Claims,
    pub auto_subscribe: bool,
    /// Whether its video may be paused when its link is congested (`subscriber_allow_pause`;
    /// `None`: the server's default).
    pub allow_pause: Option<bool>,
    /// TURN servers (with credentials) for this participant.
    pub ice_servers: Vec<proto::IceServer>,
}

/// `audio/opus`, `video/VP8` ...: the codec negotiated for a publisher's media.
fn mime_type(rtc: &str0m::Rtc, mid: Mid, kind: MediaKind) -> String {
    let codec = rtc
        .media(mid)
        .and_then(|m| m.remote_pts().first().copied())
        .and_then(|pt| rtc.codec_config().params().iter().find(|p| p.pt() == pt))
        .map(|p| p.spec().codec);
    let (prefix, default) = match kind {
        MediaKind::Audio => ("audio", "opus"),
        MediaKind::Video => ("video", "VP8"),
    };
    let name = match codec {
        Some(Codec::Opus) => "opus",
        Some(Codec::Vp8) => "VP8",
        Some(Codec::Vp9) => "VP9",
        Some(Codec::H264) => "H264",
        Some(Codec::Av1) => "AV1",
        _ => default,
    };
    format!("{prefix}/{name}")
}

/// Whether an RTP payload starts a keyframe, judged only from bytes LiveKit's E2EE leaves in
/// the clear (payload descriptor and codec header), never from encrypted frame data; for a
/// codec not recognised here, `Unknown`.
fn frame_of(kind: MediaKind, codec: Codec, payload: &[u8]) -> Frame {
    let key = match (kind, codec) {
        (MediaKind::Audio, _) => return Frame::Unknown,
        (_, Codec::Vp8) => str0m::format::detect_vp8_keyframe(payload),
        (_, Codec::Vp9) => str0m::format::detect_vp9_keyframe(payload),
        // IDR, or SPS (which precedes it).
        (_, Codec::H264) => {
            str0m::format::detect_h264_keyframe(payload)
                || str0m::format::detect_h264_nalu(payload, 7)
        }
        _ => return Frame::Unknown,
    };
    if key { Frame::Key } else { Frame::Delta }
}

/// The descriptor rewrite that gives a VP8 packet the picture id / TL0PICIDX the receiver
/// expects (none when the descriptor has no such fields or the values do not fit).
fn vp8_patch(
    payload: &[u8],
    (picture_id, tl0): (Option<u16>, Option<u8>),
) -> Option<str0m::rtp::Vp8Patch> {
    let descriptor = str0m::rtp::Vp8Descriptor::parse(payload).ok()?;
    let mut patch = descriptor.patch();
    if let Some(picture_id) = picture_id {
        patch = patch.picture_id(picture_id);
    }
    if let Some(tl0) = tl0 {
        patch = patch.tl0_pic_idx(tl0);
    }
    patch.build().ok()
}

/// A publisher's packet on its way to the receivers of its track.
struct Incoming<'a> {
    publisher: ConnId,
    track_sid: &'a str,
    kind: MediaKind,
    /// Its simulcast layer.
    rid: Option<Rid>,
    frame: Frame,
    params: &'a PayloadParams,
    packet: &'a RtpPacket,
}

/// Work for the driver.
#[derive(Debug)]
pub enum Output {
    /// A signalling message for a connection's WebSocket.
    Signal(ConnId, Box<proto::SignalResponse>),
    /// The connection is over: close its WebSocket.
    Close(ConnId),
    /// A datagram to send from our socket.
    Transmit { to: SocketAddr, data: Vec<u8> },
    /// A participant is in a room now (`true`) or left it (`false`), for the homeserver.
    Presence {
        identity: String,
        matrix: Option<crate::token::MatrixClaim>,
        joined: bool,
    },
}

struct Room {
    sid: String,
    created_ms: i64,
    members: Vec<ConnId>,
    /// Participant sids last announced as speaking.
    speakers: Vec<String>,
    /// Who left lately (within the resume window), as last announced: a resumed client is
    /// told again, in case the announcement went down with its old WebSocket.
    departed: Vec<(Instant, ParticipantInfo)>,
}

/// A published track.
struct UpTrack {
    info: TrackInfo,
    /// Audio levels since the last speaker update.
    meter: crate::speaker::LevelMeter,
    mid: Option<Mid>,
    kind: MediaKind,
    /// Simulcast layers, lowest quality first (empty: no simulcast).
    rids: Vec<Rid>,
    /// When a keyframe was last asked for, per layer.
    last_pli: HashMap<Option<Rid>, Instant>,
    /// Layers (of `rids`) last announced to the publisher as wanted (dynacast).
    announced: Option<Vec<bool>>,
    /// What each layer measures arriving (bits/s over the last second).
    rates: HashMap<Option<Rid>, LayerRate>,
}

/// Bits per second of one layer as it arrives, over whole seconds.
#[derive(Default)]
struct LayerRate {
    since: Option<Instant>,
    bytes: u64,
    bps: u64,
}

impl LayerRate {
    fn add(&mut self, now: Instant, bytes: usize) {
        let since = *self.since.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= Duration::from_secs(1) {
            self.bps = self.bytes * 8 * 1000 / (elapsed.as_millis() as u64).max(1);
            self.bytes = 0;
            self.since = Some(now);
        }
        self.bytes += bytes as u64;
    }
}

impl UpTrack {
    /// The layer for a requested quality (`VideoQuality`), or for a wanted size.
    fn rid_for(&self, quality: i32, width: u32, height: u32) -> Option<Rid> {
        if self.rids.is_empty() {
            return None;
        }
        let quality = if width > 0 || height > 0 {
            #[allow(deprecated)]
            let layers = &self.info.layers;
            let mut fitting: Vec<_> = layers
                .iter()
                .filter(|l| l.width >= width || l.height >= height)
                .collect();
            fitting.sort_by_key(|l| l.width);
            fitting
                .first()
                .map_or(proto::VideoQuality::High as i32, |l| l.quality)
        } else {
            quality
        };
        let name = match quality {
            q if q == proto::VideoQuality::Low as i32 => "q",
            q if q == proto::VideoQuality::Medium as i32 => "h",
            _ => "f",
        };
        let by_name = self
            .rids
            .iter()
            .find(|r| r.as_ref() as &str == name)
            .copied();
        let index = (quality.max(0) as usize).min(self.rids.len() - 1);
        by_name.or_else(|| self.rids.get(index).copied())
    }

    /// (layer, bitrate) lowest first: what the client announced for it or what it measures
    /// arriving, whichever is more; 0 when neither is known yet.
    fn layer_bitrates(&self) -> Vec<(Rid, u64)> {
        #[allow(deprecated)]
        let layers = &self.info.layers;
        self.rids
            .iter()
            .map(|rid| {
                let announced = layers
                    .iter()
                    .find(|l| self.rid_for(l.quality, 0, 0) == Some(*rid))
                    .map_or(0, |l| u64::from(l.bitrate));
                let measured = self.rates.get(&Some(*rid)).map_or(0, |r| r.bps);
                (*rid, announced.max(measured))
            })
            .collect()
    }

    /// LiveKit's quality of one of the layers.
    fn quality_of(&self, rid: Rid) -> proto::VideoQuality {
        match rid.as_ref() as &str {
            "q" => proto::VideoQuality::Low,
            "h" => proto::VideoQuality::Medium,
            "f" => proto::VideoQuality::High,
            _ => match self.rids.iter().position(|r| *r == rid) {
                Some(0) => proto::VideoQuality::Low,
                Some(1) => proto::VideoQuality::Medium,
                _ => proto::VideoQuality::High,
            },
        }
    }

    /// The best layer (what a receiver gets unless it asks for less).
    fn top_rid(&self) -> Option<Rid> {
        self.rid_for(proto::VideoQuality::High as i32, 0, 0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DownState {
    /// Waiting for the next subscriber offer.
    ToOpen,
    /// In an offer not yet answered.
    Negotiating(Mid),
    /// Flowing.
    Open(Mid),
    /// Its publisher or track is gone: the m-line is to be stopped in the next offer.
    ToStop(Mid),
    /// Stopped in an offer not yet answered (dropped with the answer).
    Stopping(Mid),
}

/// A track a participant receives from another.
#[derive(Clone)]
struct DownTrack {
    publisher: ConnId,
    /// The publisher's participant sid: clients find who a track is from by the stream id
    /// `PA_x|TR_y` of its m-line.
    publisher_sid: String,
    track_sid: String,
    kind: MediaKind,
    state: DownState,
    /// The layer the receiver asked for (its bandwidth may get it a lower one).
    requested: Option<Rid>,
    /// Layer choice and sequence/timestamp rewriting for this receiver.
    forwarding: Forwarding,
    /// The receiver disabled it (`UpdateTrackSettings.disabled`).
    disabled: bool,
    /// Paused because not even its lowest layer fits the receiver's bandwidth (only for
    /// receivers that allow it; they get `StreamStateUpdate`s).
    congested: bool,
}

impl DownTrack {
    /// A new subscription of a receiver to `track` of `publisher`, to be offered.
    fn new(publisher: ConnId, publisher_sid: &str, track: &UpTrack) -> Self {
        let top = track.top_rid();
        Self {
            publisher,
            publisher_sid: publisher_sid.to_owned(),
            track_sid: track.info.sid.clone(),
            kind: track.kind,
            state: DownState::ToOpen,
            requested: top,
            forwarding: Forwarding::new(top),
            disabled: false,
            congested: false,
        }
    }

    /// Whether it is (or is about to be) received, rather than on its way out.
    fn live(&self) -> bool {
        !matches!(self.state, DownState::ToStop(_) | DownState::Stopping(_))
    }

    /// Ends the subscription: `false` when it can simply be dropped (never offered), else it
    /// is kept until its m-line is stopped in the next offer. For `retain_mut`.
    fn end(&mut self) -> bool {
        match self.state {
            DownState::ToOpen => false,
            DownState::Negotiating(mid) | DownState::Open(mid) => {
                self.state = DownState::ToStop(mid);
                true
            }
            DownState::ToStop(_) | DownState::Stopping(_) => true,
        }
    }

    fn update_paused(&mut self) {
        self.forwarding.set_paused(self.disabled || self.congested);
    }
}

struct Participant {
    room: String,
    info: ParticipantInfo,
    /// The Matrix user and room the token was issued for, if the homeserver issued it.
    matrix: Option<crate::token::MatrixClaim>,
    publisher: Pc,
    subscriber: Pc,
    /// `AddTrack`s whose media has not appeared in the publisher connection yet.
    pending: Vec<(String, TrackInfo)>,
    tracks: Vec<UpTrack>,
    downs: Vec<DownTrack>,
    /// Data channels on the subscriber connection, by label.
    channels: HashMap<String, ChannelId>,
    /// Labels of the data channels the participant opened on its publisher connection.
    publisher_channels: HashMap<ChannelId, String>,
    /// Whether the first subscriber offer was sent (it carries the data channels).
    offered: bool,
    /// Bandwidth towards the participant (TWCC estimate of the subscriber connection).
    estimate: Option<u64>,
    /// Whether its video may be paused when its link is congested.
    allow_pause: bool,
    /// Whether it gets every track published (else the ones it asks for).
    auto_subscribe: bool,
    /// While its WebSocket is gone: until when its client may resume the session.
    signal_lost: Option<Instant>,
    /// Signalling for it while the WebSocket is gone, sent when it resumes.
    missed: Vec<proto::SignalResponse>,
}

impl Participant {
    fn pc(&mut self, side: Side) -> &mut Pc {
        match side {
            Side::Publisher => &mut self.publisher,
            Side::Subscriber => &mut self.subscriber,
        }
    }

    fn may_subscribe(&self) -> bool {
        self.info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_subscribe)
    }

    /// Its info after a change others are told of: a higher version, so that clients can
    /// tell it from an older update that arrives later (as after a resume).
    fn changed_info(&mut self) -> ParticipantInfo {
        self.info.version += 1;
        self.public_info()
    }

    /// The participant as others see it: with its published tracks.
    fn public_info(&self) -> ParticipantInfo {
        let mut info = self.info.clone();
        info.tracks = self.tracks.iter().map(|t| t.info.clone()).collect();
        info.is_publisher = !info.tracks.is_empty();
        info
    }
}

/// Making one receiving connection's packets: media was written to it, str0m is to run its
/// timer and hand out the datagrams. Touches nothing but that connection, so jobs may run on
/// different threads.
pub struct SendJob<'a> {
    conn: ConnId,
    pc: &'a mut Pc,
    /// The connection's timer before (the core's timer set is keyed by it).
    before: Instant,
    events: Vec<Event>,
    failed: bool,
}

impl SendJob<'_> {
    /// Makes the datagrams and gives them to `transmit` (destination, bytes), one run to the
    /// connection's one address.
    pub fn run(&mut self, now: Instant, mut transmit: impl FnMut(SocketAddr, Vec<u8>)) {
        // str0m queues written media for sending on its next timeout. Running that timeout
        // now saves asking for it first (`poll_output` would work out every timer of the
        // connection only to answer "now").
        self.pc.timeout(now);
        self.events = self.pc.drain(now, |_, to, data| transmit(to, data));
    }

    /// Running it panicked: the connection is dropped when the jobs are done.
    pub fn failed(&mut self) {
        self.failed = true;
    }
}

pub struct Sfu {
    config: SfuConfig,
    rooms: HashMap<String, Room>,
    participants: BTreeMap<ConnId, Participant>,
    /// Which connection a remote address talks to (learnt from the first packet).
    by_source: HashMap<SocketAddr, (ConnId, Side)>,
    next_conn: ConnId,
    out: VecDeque<Output>,
    /// When speakers are next worked out.
    speaker_tick: Option<Instant>,
    /// Subscriber connections with media written since the last [`Sfu::flush`].
    dirty: Vec<ConnId>,
    /// Publishers whose receivers switched layers (dynacast to update at the next flush).
    switched: Vec<ConnId>,
    /// Every connection's next timer, soonest first: a wake-up finds what is due without
    /// looking at every participant (with bandwidth estimation, timers fire every few ms).
    timers: BTreeSet<(Instant, ConnId, Side)>,
    /// Participants whose WebSocket is gone, by the end of their resume window.
    lost: BTreeSet<(Instant, ConnId)>,
    /// The connection `handle_timeout` is handling (to drop it should that panic).
    timing: Option<ConnId>,
}

impl Sfu {
    pub fn new(config: SfuConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
            participants: BTreeMap::new(),
            by_source: HashMap::new(),
            next_conn: 1,
            out: VecDeque::new(),
            speaker_tick: None,
            dirty: Vec::new(),
            switched: Vec::new(),
            timers: BTreeSet::new(),
            lost: BTreeSet::new(),
            timing: None,
        }
    }

    /// Whether media was written that is not sent yet.
    pub fn has_unsent(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Sends what was forwarded since the last call (call after a batch of input, several
    /// datagrams): the work of making each receiver's packets is handed to `run` as
    /// independent jobs (each owns one receiving connection), which it may spread over
    /// threads; each job's datagrams are given to the `transmit` of [`SendJob::run`], not to
    /// [`Sfu::poll_output`]. Acting on what they report happens here, after `run`. Handling
    /// those reports may write media again: call while [`Sfu::has_unsent`].
    pub fn flush_jobs(&mut self, now: Instant, run: impl FnOnce(&mut [SendJob<'_>])) {
        self.update_switched();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        let mut jobs: Vec<SendJob<'_>> = self
            .participants
            .iter_mut()
            .filter(|(conn, _)| dirty.binary_search(conn).is_ok())
            .map(|(conn, participant)| SendJob {
                conn: *conn,
                before: participant.subscriber.next_timeout,
                pc: &mut participant.subscriber,
                events: Vec::new(),
                failed: false,
            })
            .collect();
        run(&mut jobs);
        let reports: Vec<_> = jobs
            .into_iter()
            .map(|job| (job.conn, job.before, job.events, job.failed))
            .collect();
        for (conn, before, events, failed) in reports {
            if failed {
                // Its state may be half-updated: it leaves (and may rejoin); the room goes on.
                self.drop_faulty(now, conn);
            } else {
                self.drained(now, conn, Side::Subscriber, before, events);
            }
        }
    }

    /// A finished layer switch may leave a publisher's old layer unwanted (dynacast).
    fn update_switched(&mut self) {
        if !self.switched.is_empty() {
            let publishers = std::mem::take(&mut self.switched);
            self.update_dynacast(publishers);
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Sfu::handle_timeout`] should next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(at, _, _)| *at),
            self.lost.first().map(|(at, _)| *at),
            self.speaker_tick,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// A participant joins: answer with `JoinResponse`, offer the subscriber connection, and
    /// tell the room. `now_ms` is wall-clock time for the timestamps clients display.
    pub fn join(&mut self, now: Instant, now_ms: i64, params: JoinParams) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let claims = params.claims;
        let room_name = claims.video.room.clone();
        let room = self.rooms.entry(room_name.clone()).or_insert_with(|| Room {
            sid: ids::new("RM_"),
            created_ms: now_ms,
            members: Vec::new(),
            speakers: Vec::new(),
            departed: Vec::new(),
        });
        // A second connection with the same identity replaces the first.
        let duplicate = room.members.iter().copied().find(|c| {
            self.participants
                .get(c)
                .is_some_and(|p| p.info.identity == claims.sub)
        });
        if let Some(old) = duplicate {
            self.remove(now, old, proto::DisconnectReason::DuplicateIdentity);
        }
        let grant = &claims.video;
        let info = ParticipantInfo {
            sid: ids::new("PA_"),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            metadata: claims.metadata.clone(),
            state: proto::participant_info::State::Joined as i32,
            joined_at: now_ms / 1000,
            joined_at_ms: now_ms,
            kind: proto::participant_info::Kind::Standard as i32,
            permission: Some(ParticipantPermission {
                can_subscribe: grant.can_subscribe.unwrap_or(true),
                can_publish: grant.can_publish.unwrap_or(true),
                can_publish_data: grant.can_publish_data.unwrap_or(true),
                can_update_metadata: grant.can_update_own_metadata.unwrap_or(false),
                hidden: grant.hidden,
                ..Default::default()
            }),
            ..Default::default()
        };
        let room = self
            .rooms
            .get_mut(&room_name)
            .unwrap_or_else(|| unreachable!("inserted above"));
        let others: Vec<ParticipantInfo> = room
            .members
            .iter()
            .filter_map(|c| self.participants.get(c))
            .map(|p| {
                let mut info = p.public_info();
                info.state = proto::participant_info::State::Active as i32;
                info
            })
            .collect();
        room.members.push(conn);
        let join = JoinResponse {
            room: Some(proto::Room {
                sid: room.sid.clone(),
                name: room_name.clone(),
                creation_time: room.created_ms / 1000,
                creation_time_ms: room.created_ms,
                num_participants: room.members.len() as u32,
                ..Default::default()
            }),
            participant: Some(info.clone()),
            other_participants: others,
            server_version: signal::SERVER_VERSION.to_owned(),
            server_info: Some(signal::server_info()),
            subscriber_primary: true,
            ice_servers: params.ice_servers,
            ping_interval: signal::PING_INTERVAL_S,
            ping_timeout: signal::PING_TIMEOUT_S,
            ..Default::default()
        };
        self.signal(conn, signal_response::Message::Join(join));

        let mut participant = Participant {
            room: room_name.clone(),
            info,
            matrix: claims.sparks.clone(),
            publisher: Pc::new(now, &self.config.cert, &self.config.candidates, false),
            subscriber: Pc::new(
                now,
                &self.config.cert,
                &self.config.candidates,
                self.config.estimate_bandwidth,
            ),
            pending: Vec::new(),
            tracks: Vec::new(),
            downs: Vec::new(),
            channels: HashMap::new(),
            publisher_channels: HashMap::new(),
            offered: false,
            estimate: None,
            allow_pause: params.allow_pause.unwrap_or(self.config.allow_pause),
            auto_subscribe: params.auto_subscribe,
            signal_lost: None,
            missed: Vec::new(),
        };
        if params.auto_subscribe && participant.may_subscribe() {
            participant.downs = self.existing_tracks(&room_name, conn);
        }
        self.out.push_back(Output::Presence {
            identity: participant.info.identity.clone(),
            matrix: participant.matrix.clone(),
            joined: true,
        });
        self.timers
            .insert((participant.publisher.next_timeout, conn, Side::Publisher));
        self.timers
            .insert((participant.subscriber.next_timeout, conn, Side::Subscriber));
        self.participants.insert(conn, participant);
        self.negotiate(now, conn);
        let newcomer = self.participants[&conn].public_info();
        self.broadcast_update(&room_name, Some(conn), vec![newcomer]);
        conn
    }

    /// Tracks already published in a room, as new subscriptions for `conn`.
    fn existing_tracks(&self, room: &str, conn: ConnId) -> Vec<DownTrack> {
        let Some(room) = self.rooms.get(room) else {
            return Vec::new();
        };
        room.members
            .iter()
            .filter(|c| **c != conn)
            .filter_map(|c| self.participants.get(c).map(|p| (*c, p)))
            .flat_map(|(c, p)| {
                p.tracks
                    .iter()
                    .filter(|t| t.mid.is_some())
                    .map(move |t| DownTrack::new(c, &p.info.sid, t))
            })
            .collect()
    }

    /// A signalling message from a participant.
    pub fn handle_signal(&mut self, now: Instant, conn: ConnId, request: SignalRequest) {
        let Some(message) = request.message else {
            return;
        };
        if !self.participants.contains_key(&conn) {
            return;
        }
        use signal_request::Message as M;
        tracing::trace!(conn, ?message, "signal");
        match message {
            M::Offer(offer) => self.publisher_offer(now, conn, &offer),
            M::Answer(answer) => self.subscriber_answer(now, conn, &answer),
            M::Trickle(trickle) => self.trickle(conn, &trickle),
            M::AddTrack(add) => self.add_track(conn, add),
            M::Mute(mute) => self.mute(conn, &mute),
            M::TrackSetting(settings) => self.track_settings(now, conn, &settings),
            M::Subscription(update) => self.update_subscription(now, conn, &update),
            M::Leave(_) => self.remove(now, conn, proto::DisconnectReason::ClientInitiated),
            // After a resume the server still holds everything SyncState describes (it
            // matters when a session moves between servers, which one process never does).
            M::SyncState(_) => {}
            M::Ping(ts) => self.signal(conn, signal_response::Message::Pong(ts)),
            M::PingReq(ping) => self.signal(
                conn,
                signal_response::Message::PongResp(proto::Pong {
                    last_ping_timestamp: ping.timestamp,
                    timestamp: ping.timestamp,
                }),
            ),
            other => {
                tracing::debug!(conn, message = ?std::mem::discriminant(&other), "signal not handled")
            }
        }
    }

    /// The WebSocket went away without a `Leave`: the participant stays (its media flows on)
    /// for the resume window, so its client can resume the session on a new WebSocket; what
    /// it would have been sent meanwhile is kept for then. After the window it leaves.
    /// `undelivered`: what the WebSocket had been given but had not written; it goes first.
    pub fn handle_ws_closed(
        &mut self,
        now: Instant,
        conn: ConnId,
        mut undelivered: Vec<proto::SignalResponse>,
    ) {
        let window = self.config.resume_window;
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        if window.is_zero() {
            self.remove(now, conn, proto::DisconnectReason::ClientInitiated);
        } else {
            tracing::debug!(conn, "signalling lost: waiting for a resume");
            participant.signal_lost = Some(now + window);
            self.lost.insert((now + window, conn));
            undelivered.append(&mut participant.missed);
            participant.missed = undelivered;
        }
    }

    /// A client resumes its session (`/rtc?reconnect=1&sid=PA_...`, with a valid token for the
    /// same identity and room) on a new WebSocket: `ReconnectResponse`, then what it missed,
    /// then its subscriber connection is renegotiated (the offer it may not have answered, or
    /// an ICE restart, as LiveKit does, in case its network changed). `None`: no such session
    /// (the client then joins afresh).
    pub fn resume(&mut self, now: Instant, params: JoinParams, sid: &str) -> Option<ConnId> {
        let claims = &params.claims;
        let conn = self.participants.iter().find_map(|(conn, p)| {
            (p.info.sid == sid && p.info.identity == claims.sub && p.room == claims.video.room)
                .then_some(*conn)
        })?;
        let participant = self.participants.get_mut(&conn)?;
        let missed = std::mem::take(&mut participant.missed);
        if let Some(until) = participant.signal_lost.take() {
            self.lost.remove(&(until, conn));
        }
        if missed.len() >= MAX_MISSED {
            self.remove(now, conn, proto::DisconnectReason::StateMismatch);
            return None;
        }
        self.signal(
            conn,
            signal_response::Message::Reconnect(proto::ReconnectResponse {
                ice_servers: params.ice_servers,
                server_info: Some(signal::server_info()),
                ..Default::default()
            }),
        );
        let replayed: Vec<String> = missed
            .iter()
            .filter_map(|r| match &r.message {
                Some(signal_response::Message::TrackPublished(t)) => Some(t.cid.clone()),
                _ => None,
            })
            .collect();
        self.redeliver(conn, missed);
        self.resync_after_resume(now, conn, &replayed);
        self.renegotiate_after_resume(now, conn);
        Some(conn)
    }

    /// Messages a participant's WebSocket may not have delivered, sent (or kept) again. A
    /// subscriber offer among them is left out: the one still outstanding is sent again when
    /// the session resumes.
    pub fn redeliver(&mut self, conn: ConnId, responses: Vec<proto::SignalResponse>) {
        for response in responses {
            if !matches!(response.message, Some(signal_response::Message::Offer(_))) {
                self.send(conn, response);
            }
        }
    }

    /// A message the driver could not hand to the participant's WebSocket (it had just
    /// closed; its `Closed` is on the way): kept for a resume.
    pub fn undelivered(&mut self, conn: ConnId, response: proto::SignalResponse) {
        if let Some(participant) = self.participants.get_mut(&conn)
            && participant.missed.len() < MAX_MISSED
        {
            participant.missed.push(response);
        }
    }

    /// What a resumed client may have missed without anyone knowing (written to a
    /// connection that was already dead): everyone in the room as they are now, and who left
    /// lately, and the `TrackPublished` of tracks whose media has not come yet (but those
    /// `replayed` already).
    fn resync_after_resume(&mut self, now: Instant, conn: ConnId, replayed: &[String]) {
        let Some(participant) = self.participants.get(&conn) else {
            return;
        };
        let window = self.config.resume_window;
        let mut infos: Vec<ParticipantInfo> = self
            .members(&participant.room)
            .iter()
            .filter(|c| **c != conn)
            .filter_map(|c| self.participants.get(c))
            .map(|p| {
                let mut info = p.public_info();
                info.state = proto::participant_info::State::Active as i32;
                info
            })
            .collect();
        if let Some(room) = self.rooms.get(&participant.room) {
            infos.extend(
                room.departed
                    .iter()
                    .filter(|(at, _)| now.saturating_duration_since(*at) < window)
                    .map(|(_, info)| info.clone()),
            );
        }
        let published: Vec<proto::TrackPublishedResponse> = participant
            .pending
            .iter()
            .filter(|(cid, _)| !replayed.contains(cid))
            .map(|(cid, info)| proto::TrackPublishedResponse {
                cid: cid.clone(),
                track: Some(info.clone()),
            })
            .collect();
        if !infos.is_empty() {
            self.send(conn, signal::update(infos));
        }
        for response in published {
            self.signal(conn, signal_response::Message::TrackPublished(response));
        }
    }

    /// After a resume: the outstanding subscriber offer again (its answer, or the offer itself,
    /// may have been lost with the old WebSocket), or else an ICE restart of the subscriber
    /// connection.
    fn renegotiate_after_resume(&mut self, now: Instant, conn: ConnId) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let subscriber = &mut participant.subscriber;
        let offer = if subscriber.pending.is_some() {
            Some((subscriber.offer_sdp.clone(), subscriber.offer_id))
        } else if participant.offered {
            let mut api = subscriber.rtc.sdp_api();
            api.ice_restart(true);
            api.apply()
                .map(|(offer, pending)| subscriber.offer_sent(offer, pending))
        } else {
            None
        };
        if let Some((sdp, id)) = offer {
            self.send(conn, signal::offer(sdp, id));
            self.drive(now, conn, Side::Subscriber);
        }
    }

    /// Participants whose resume window ran out leave.
    fn expire_lost_signalling(&mut self, now: Instant) {
        while let Some(&(until, conn)) = self.lost.first() {
            if until > now {
                break;
            }
            self.lost.pop_first();
            tracing::debug!(conn, "not resumed in time: leaves");
            self.remove(now, conn, proto::DisconnectReason::SignalClose);
        }
    }

    /// Removes every participant whose token was issued to `user_id` for the Matrix room
    /// `room_id` (they left it, or were kicked or banned). Returns how many.
    pub fn remove_matrix_member(&mut self, now: Instant, room_id: &str, user_id: &str) -> usize {
        let conns: Vec<ConnId> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                p.matrix
                    .as_ref()
                    .is_some_and(|m| m.room_id == room_id && m.user_id == user_id)
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in &conns {
            self.remove(now, *conn, proto::DisconnectReason::ParticipantRemoved);
        }
        conns.len()
    }

    fn remove(&mut self, now: Instant, conn: ConnId, reason: proto::DisconnectReason) {
        let Some(mut participant) = self.participants.remove(&conn) else {
            return;
        };
        if reason != proto::DisconnectReason::ClientInitiated {
            self.signal(
                conn,
                signal_response::Message::Leave(match signal::leave(reason).message {
                    Some(signal_response::Message::Leave(leave)) => leave,
                    _ => proto::LeaveRequest::default(),
                }),
            );
        }
        self.out.push_back(Output::Close(conn));
        self.out.push_back(Output::Presence {
            identity: participant.info.identity.clone(),
            matrix: participant.matrix.clone(),
            joined: false,
        });
        participant.publisher.rtc.disconnect();
        participant.subscriber.rtc.disconnect();
        self.timers
            .remove(&(participant.publisher.next_timeout, conn, Side::Publisher));
        self.timers
            .remove(&(participant.subscriber.next_timeout, conn, Side::Subscriber));
        if let Some(until) = participant.signal_lost {
            self.lost.remove(&(until, conn));
        }
        self.by_source.retain(|_, (c, _)| *c != conn);
        let room_name = participant.room.clone();
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.members.retain(|c| *c != conn);
            if room.members.is_empty() {
                self.rooms.remove(&room_name);
            }
        }
        // Its tracks go away for everyone else.
        self.end_subscriptions(now, conn, None);
        // What the one who left received is no longer needed.
        let publishers: Vec<ConnId> = participant.downs.iter().map(|d| d.publisher).collect();
        self.update_dynacast(publishers);
        let mut info = participant.changed_info();
        info.state = proto::participant_info::State::Disconnected as i32;
        info.tracks.clear();
        let window = self.config.resume_window;
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.departed
                .retain(|(at, _)| now.saturating_duration_since(*at) < window);
            room.departed.push((now, info.clone()));
        }
        self.broadcast_update(&room_name, None, vec![info]);
    }

    /// Ends every subscription to `publisher`'s tracks (or to one of them): receivers' m-lines
    /// for them are stopped in their next offer, so their connections do not keep dead ones.
    fn end_subscriptions(&mut self, now: Instant, publisher: ConnId, track_sid: Option<&str>) {
        let receivers: Vec<ConnId> = self.participants.keys().copied().collect();
        for receiver in receivers {
            let Some(p) = self.participants.get_mut(&receiver) else {
                continue;
            };
            let ends = |d: &DownTrack| {
                d.publisher == publisher && track_sid.is_none_or(|sid| d.track_sid == sid)
            };
            let mut changed = false;
            p.downs.retain_mut(|d| {
                if !ends(d) {
                    return true;
                }
                changed = true;
                d.end()
            });
            if changed {
                self.negotiate(now, receiver);
            }
        }
    }

    /// The publisher stopped sending a track (it unpublished it: its m-line went inactive).
    fn unpublished(&mut self, now: Instant, conn: ConnId, mid: Mid) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let Some(index) = participant.tracks.iter().position(|t| t.mid == Some(mid)) else {
            return;
        };
        let track = participant.tracks.remove(index);
        let room = participant.room.clone();
        let info = participant.changed_info();
        tracing::debug!(conn, track_sid = track.info.sid, "track unpublished");
        self.broadcast_update(&room, None, vec![info]);
        self.end_subscriptions(now, conn, Some(&track.info.sid));
    }

    fn members(&self, room: &str) -> Vec<ConnId> {
        self.rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default()
    }

    fn signal(&mut self, conn: ConnId, message: signal_response::Message) {
        self.send(conn, signal::response(message));
    }

    /// A message for a participant's WebSocket, or kept for when it resumes if that is gone.
    fn send(&mut self, conn: ConnId, response: proto::SignalResponse) {
        if let Some(participant) = self.participants.get_mut(&conn)
            && participant.signal_lost.is_some()
        {
            if participant.missed.len() < MAX_MISSED {
                participant.missed.push(response);
            }
            return;
        }
        self.out.push_back(Output::Signal(conn, Box::new(response)));
    }

    /// Sends a `ParticipantUpdate` to everyone in the room (but `except`).
    fn broadcast_update(
        &mut self,
        room: &str,
        except: Option<ConnId>,
        infos: Vec<ParticipantInfo>,
    ) {
        for member in self.members(room) {
            if Some(member) != except {
                self.send(member, signal::update(infos.clone()));
            }
        }
    }

    fn publisher_offer(&mut self, now: Instant, conn: ConnId, offer: &proto::SessionDescription) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let parsed = match SdpOffer::from_sdp_string(&offer.sdp) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::info!(conn, %error, "unparsable publisher offer");
                return;
            }
        };
        match participant.publisher.rtc.sdp_api().accept_offer(parsed) {
            Ok(answer) => {
                participant.publisher.remote_known();
                let sdp = answer.to_sdp_string();
                tracing::trace!(
                    conn,
                    offer = offer.sdp,
                    answer = sdp,
                    "publisher negotiation"
                );
                self.send(conn, signal::answer(sdp, offer.id));
                self.drive(now, conn, Side::Publisher);
            }
            Err(error) => tracing::info!(conn, %error, "publisher offer refused"),
        }
    }

    fn subscriber_answer(
        &mut self,
        now: Instant,
        conn: ConnId,
        answer: &proto::SessionDescription,
    ) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        if answer.id != 0 && answer.id != participant.subscriber.offer_id {
            tracing::debug!(conn, id = answer.id, "stale subscriber answer");
            return;
        }
        let Some(pending) = participant.subscriber.pending.take() else {
            return;
        };
        let parsed = match SdpAnswer::from_sdp_string(&answer.sdp) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::info!(conn, %error, "unparsable subscriber answer");
                return;
            }
        };
        if let Err(error) = participant
            .subscriber
            .rtc
            .sdp_api()
            .accept_answer(pending, parsed)
        {
            tracing::info!(conn, %error, "subscriber answer refused");
            return;
        }
        participant.subscriber.remote_known();
        // Stopped m-lines are done with.
        participant
            .downs
            .retain(|d| !matches!(d.state, DownState::Stopping(_)));
        let mut opened = Vec::new();
        for down in &mut participant.downs {
            if let DownState::Negotiating(mid) = down.state {
                down.state = DownState::Open(mid);
                opened.push((
                    down.publisher,
                    down.track_sid.clone(),
                    down.kind,
                    down.forwarding.target,
                ));
            }
        }
        // A new video subscriber needs a keyframe to start from.
        for (publisher, track_sid, kind, rid) in opened {
            if kind == MediaKind::Video {
                self.request_keyframe(now, publisher, &track_sid, rid);
            }
        }
        self.retarget(now, conn);
        self.drive(now, conn, Side::Subscriber);
        self.negotiate(now, conn);
    }

    fn trickle(&mut self, conn: ConnId, trickle: &proto::TrickleRequest) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let side = if trickle.target == proto::SignalTarget::Subscriber as i32 {
            Side::Subscriber
        } else {
            Side::Publisher
        };
        // `candidate_init` is the browser's RTCIceCandidateInit as JSON.
        let init: serde_json::Value =
            serde_json::from_str(&trickle.candidate_init).unwrap_or_default();
        if let Some(candidate) = init["candidate"].as_str()
            && !candidate.is_empty()
        {
            participant.pc(side).add_remote_candidate(candidate);
        }
    }

    // The deprecated fields are still what older clients send and read.
    #[allow(deprecated)]
    fn add_track(&mut self, conn: ConnId, add: AddTrackRequest) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let allowed = participant
            .info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_publish);
        if !allowed {
            tracing::info!(conn, cid = add.cid, "publishing refused: no permission");
            self.signal(
                conn,
                signal_response::Message::RequestResponse(proto::RequestResponse {
                    reason: proto::request_response::Reason::NotAllowed as i32,
                    message: "no permission to publish".to_owned(),
                    ..Default::default()
                }),
            );
            return;
        }
        let info = TrackInfo {
            sid: ids::new("TR_"),
            r#type: add.r#type,
            name: add.name.clone(),
            muted: add.muted,
            width: add.width,
            height: add.height,
            simulcast: add.layers.len() > 1,
            disable_dtx: add.disable_dtx,
            source: add.source,
            layers: add.layers.clone(),
            stereo: add.stereo,
            disable_red: add.disable_red,
            encryption: add.encryption,
            stream: add.stream.clone(),
            audio_features: add.audio_features.clone(),
            ..Default::default()
        };
        participant.pending.push((add.cid.clone(), info.clone()));
        self.signal(
            conn,
            signal_response::Message::TrackPublished(proto::TrackPublishedResponse {
                cid: add.cid,
                track: Some(info),
            }),
        );
    }

    /// The participant subscribes to tracks or unsubscribes from them (by track sid).
    fn update_subscription(
        &mut self,
        now: Instant,
        conn: ConnId,
        update: &proto::UpdateSubscription,
    ) {
        let Some(participant) = self.participants.get(&conn) else {
            return;
        };
        let sids: Vec<&String> = update
            .track_sids
            .iter()
            .chain(update.participant_tracks.iter().flat_map(|p| &p.track_sids))
            .collect();
        let mut publishers = Vec::new();
        if update.subscribe && participant.may_subscribe() {
            let new: Vec<DownTrack> = self
                .existing_tracks(&participant.room, conn)
                .into_iter()
                .filter(|d| sids.contains(&&d.track_sid))
                .filter(|d| {
                    !participant
                        .downs
                        .iter()
                        .any(|o| o.live() && o.track_sid == d.track_sid)
                })
                .collect();
            publishers.extend(new.iter().map(|d| d.publisher));
            if let Some(participant) = self.participants.get_mut(&conn) {
                participant.downs.extend(new);
            }
        } else if !update.subscribe
            && let Some(participant) = self.participants.get_mut(&conn)
        {
            participant.downs.retain_mut(|d| {
                if !sids.contains(&&d.track_sid) {
                    return true;
                }
                publishers.push(d.publisher);
                d.end()
            });
        }
        self.negotiate(now, conn);
        self.update_dynacast(publishers);
    }

    fn mute(&mut self, conn: ConnId, mute: &proto::MuteTrackRequest) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let Some(track) = participant
            .tracks
            .iter_mut()
            .find(|t| t.info.sid == mute.sid)
        else {
            return;
        };
        track.info.muted = mute.muted;
        let room = participant.room.clone();
        let info = participant.changed_info();
        self.broadcast_update(&room, None, vec![info]);
    }

    /// Sends the next subscriber offer when something changed and no offer is outstanding.
    fn negotiate(&mut self, now: Instant, conn: ConnId) {
        let (offer, id) = {
            let Some(participant) = self.participants.get_mut(&conn) else {
                return;
            };
            if participant.subscriber.pending.is_some() {
                return;
            }
            let first = !participant.offered;
            let wanted: Vec<(usize, String, String, MediaKind)> = participant
                .downs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.state == DownState::ToOpen)
                .map(|(i, d)| (i, d.publisher_sid.clone(), d.track_sid.clone(), d.kind))
                .collect();
            let stopping: Vec<(usize, Mid)> = participant
                .downs
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match d.state {
                    DownState::ToStop(mid) => Some((i, mid)),
                    _ => None,
                })
                .collect();
            if !first && wanted.is_empty() && stopping.is_empty() {
                return;
            }
            let mut api = participant.subscriber.rtc.sdp_api();
            if first {
                api.add_channel_with_config(ChannelConfig {
                    label: "_reliable".to_owned(),
                    ordered: true,
                    reliability: Reliability::Reliable,
                    ..Default::default()
                });
                api.add_channel_with_config(ChannelConfig {
                    label: "_lossy".to_owned(),
                    ordered: false,
                    reliability: Reliability::MaxRetransmits { retransmits: 0 },
                    ..Default::default()
                });
            }
            for (index, mid) in &stopping {
                api.stop_media(*mid);
                participant.downs[*index].state = DownState::Stopping(*mid);
            }
            let mut mids = Vec::new();
            for (index, publisher_sid, track_sid, kind) in wanted {
                let stream = format!("{publisher_sid}|{track_sid}");
                let mid = api.add_media(
                    kind,
                    Direction::SendOnly,
                    Some(stream),
                    Some(track_sid),
                    None,
                );
                mids.push((index, mid));
            }
            let Some((offer, pending)) = api.apply() else {
                return;
            };
            for (index, mid) in mids {
                participant.downs[index].state = DownState::Negotiating(mid);
            }
            participant.offered = true;
            participant.subscriber.offer_sent(offer, pending)
        };
        self.send(conn, signal::offer(offer, id));
        self.drive(now, conn, Side::Subscriber);
    }

    /// The participant a remote address belongs to, if known (to drop it after a fault).
    pub fn conn_of_source(&self, from: SocketAddr) -> Option<ConnId> {
        self.by_source.get(&from).map(|(conn, _)| *conn)
    }

    /// Removes a participant whose handling failed (a panic), telling it and the room.
    pub fn drop_faulty(&mut self, now: Instant, conn: ConnId) {
        self.remove(now, conn, proto::DisconnectReason::UnknownReason);
    }

    /// A datagram arrived on our socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let target = match self.by_source.get(&from) {
            Some(found) => Some(*found),
            None => self.find_accepting(now, from, to, data),
        };
        let Some((conn, side)) = target else {
            tracing::trace!(%from, "datagram for no connection");
            return;
        };
        let Some(participant) = self.participants.get_mut(&conn) else {
            self.by_source.remove(&from);
            return;
        };
        participant.pc(side).receive(now, from, to, data);
        self.drive(now, conn, side);
    }

    /// The connection that accepts a datagram from a new address (STUN with its ufrag).
    fn find_accepting(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> Option<(ConnId, Side)> {
        for (conn, participant) in &self.participants {
            for side in [Side::Publisher, Side::Subscriber] {
                let pc = match side {
                    Side::Publisher => &participant.publisher,
                    Side::Subscriber => &participant.subscriber,
                };
                if pc.accepts(now, from, to, data) {
                    self.by_source.insert(from, (*conn, side));
                    return Some((*conn, side));
                }
            }
        }
        None
    }

    /// Time passed: run every connection whose timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.speaker_tick {
            Some(at) if at <= now => {
                self.update_speakers();
                self.speaker_tick = Some(now + crate::speaker::INTERVAL);
            }
            None if !self.participants.is_empty() => {
                self.speaker_tick = Some(now + crate::speaker::INTERVAL);
            }
            _ => {}
        }
        self.expire_lost_signalling(now);
        // One connection at a time, each timer popped just before it is handled: should
        // handling one panic, the others' timers are still in the set (and the driver knows
        // which connection to drop, from `timing`).
        let mut handled = Vec::new();
        while let Some(&(at, conn, side)) = self.timers.first() {
            // A connection due again at once waits for the next call (no spinning here).
            if at > now || handled.contains(&(conn, side)) {
                break;
            }
            self.timers.pop_first();
            handled.push((conn, side));
            self.timing = Some(conn);
            if let Some(participant) = self.participants.get_mut(&conn) {
                participant.pc(side).timeout(now);
                self.drive(now, conn, side);
            }
        }
        self.timing = None;
    }

    /// The connection whose timer was being handled when `handle_timeout` panicked.
    pub fn interrupted_timer(&self) -> Option<ConnId> {
        self.timing
    }

    /// Drains one connection's output and acts on its events.
    fn drive(&mut self, now: Instant, conn: ConnId, side: Side) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let out = &mut self.out;
        let before = participant.pc(side).next_timeout;
        let events = participant.pc(side).drain(now, |_, to, data| {
            out.push_back(Output::Transmit { to, data })
        });
        self.drained(now, conn, side, before, events);
    }

    /// After a connection's output was drained (`before`: its timer until then): its timer
    /// moves, its events are acted on, and a connection str0m has closed leaves.
    fn drained(
        &mut self,
        now: Instant,
        conn: ConnId,
        side: Side,
        before: Instant,
        events: Vec<Event>,
    ) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let after = participant.pc(side).next_timeout;
        self.timers.remove(&(before, conn, side));
        self.timers.insert((after, conn, side));
        let alive = participant.pc(side).rtc.is_alive();
        for event in events {
            self.on_event(now, conn, side, event);
        }
        if !alive && self.participants.contains_key(&conn) {
            tracing::info!(
                conn,
                ?side,
                "peer connection closed: the participant leaves"
            );
            self.remove(now, conn, proto::DisconnectReason::UnknownReason);
        }
    }

    fn on_event(&mut self, now: Instant, conn: ConnId, side: Side, event: Event) {
        match (side, event) {
            (Side::Publisher, Event::MediaAdded(added)) => {
                // The layers the client sends (its offer's `a=simulcast:send`).
                let rids: Vec<Rid> = added
                    .simulcast
                    .iter()
                    .flat_map(|s| s.send.iter().chain(s.recv.iter()))
                    .map(|l| l.rid)
                    .collect();
                self.media_added(now, conn, added.mid, added.kind, rids)
            }
            (Side::Publisher, Event::RtpPacket(packet)) => self.forward(now, conn, packet),
            (Side::Publisher, Event::MediaChanged(changed))
                if matches!(changed.direction, Direction::Inactive | Direction::RecvOnly) =>
            {
                self.unpublished(now, conn, changed.mid)
            }
            (Side::Subscriber, Event::KeyframeRequest(request)) => {
                let publisher = self.participants.get(&conn).and_then(|p| {
                    p.downs
                        .iter()
                        .find(|d| d.state == DownState::Open(request.mid))
                        .map(|d| {
                            let layer = d.forwarding.current().flatten().or(d.forwarding.target);
                            (d.publisher, d.track_sid.clone(), layer)
                        })
                });
                if let Some((publisher, track_sid, rid)) = publisher {
                    self.request_keyframe(now, publisher, &track_sid, rid);
                }
            }
            (Side::Subscriber, Event::ChannelOpen(id, label)) => {
                if let Some(p) = self.participants.get_mut(&conn) {
                    p.channels.insert(label, id);
                }
            }
            (
                Side::Subscriber,
                Event::EgressBitrateEstimate(str0m::bwe::BweKind::Twcc { estimate, .. }),
            ) => {
                tracing::trace!(conn, %estimate, "receiver bandwidth");
                if let Some(p) = self.participants.get_mut(&conn) {
                    p.estimate = Some(estimate.as_u64());
                }
                self.retarget(now, conn);
            }
            (Side::Publisher, Event::ChannelOpen(id, label)) => {
                if let Some(p) = self.participants.get_mut(&conn) {
                    p.publisher_channels.insert(id, label);
                }
            }
            (Side::Publisher, Event::ChannelData(data)) => {
                self.relay_data(now, conn, data.id, &data.data)
            }
            (_, Event::IceConnectionStateChange(IceConnectionState::Disconnected)) => {
                tracing::debug!(conn, ?side, "ICE disconnected");
            }
            _ => {}
        }
    }

    /// A track's media appeared in the publisher connection: bind it to its `AddTrack` and
    /// offer it to everyone else in the room.
    fn media_added(
        &mut self,
        now: Instant,
        conn: ConnId,
        mid: Mid,
        kind: MediaKind,
        mut rids: Vec<Rid>,
    ) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        // The offer's msid track id is the client's cid for the track.
        let track_id = participant
            .publisher
            .rtc
            .media(mid)
            .map(|m| m.track_id().to_owned())
            .unwrap_or_default();
        let want_type = match kind {
            MediaKind::Audio => proto::TrackType::Audio as i32,
            MediaKind::Video => proto::TrackType::Video as i32,
        };
        let index = participant
            .pending
            .iter()
            .position(|(cid, _)| *cid == track_id)
            .or_else(|| {
                participant
                    .pending
                    .iter()
                    .position(|(_, i)| i.r#type == want_type)
            });
        let Some(index) = index else {
            tracing::info!(conn, %mid, "media without an AddTrack");
            return;
        };
        let (_, mut info) = participant.pending.remove(index);
        info.mid = mid.to_string();
        // E2EE clients need the codec to know which bytes of a frame stay in the clear.
        info.mime_type = mime_type(&participant.publisher.rtc, mid, kind);
        rids.dedup();
        // Lowest quality first, by LiveKit's names when the client uses them.
        rids.sort_by_key(|r| match r.as_ref() as &str {
            "q" => 0,
            "h" => 1,
            "f" => 2,
            _ => 3,
        });
        let track = UpTrack {
            info,
            meter: Default::default(),
            mid: Some(mid),
            kind,
            rids,
            last_pli: HashMap::new(),
            announced: None,
            rates: HashMap::new(),
        };
        // What each receiver's subscription starts as.
        let template = DownTrack::new(conn, &participant.info.sid, &track);
        tracing::debug!(conn, %mid, rids = ?track.rids, "track media bound");
        participant.tracks.push(track);
        let room = participant.room.clone();
        let public = participant.changed_info();
        // Everyone learns of the track before any offer carries it (else clients drop it).
        self.broadcast_update(&room, None, vec![public]);
        for member in self.members(&room) {
            if member == conn {
                continue;
            }
            let Some(other) = self.participants.get_mut(&member) else {
                continue;
            };
            // Without auto-subscription the client asks for tracks (UpdateSubscription).
            if !other.may_subscribe() || !other.auto_subscribe {
                continue;
            }
            other.downs.push(template.clone());
            self.negotiate(now, member);
        }
    }

    /// An RTP packet from a publisher: to every subscriber of its track, each getting its
    /// layer with sequence numbers and timestamps of its own; payload untouched.
    fn forward(&mut self, now: Instant, conn: ConnId, packet: RtpPacket) {
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        let Some((mid, rid)) = participant
            .publisher
            .rtc
            .direct_api()
            .stream_rx(&packet.header.ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let Some(track) = participant.tracks.iter_mut().find(|t| t.mid == Some(mid)) else {
            return;
        };
        if let Some(level) = packet.header.ext_vals.audio_level {
            track.meter.add(level);
        }
        // RTP header and UDP/IP overhead included: it all takes the receiver's bandwidth.
        const OVERHEAD: usize = 12 + 28;
        track
            .rates
            .entry(rid)
            .or_default()
            .add(now, packet.payload.len() + OVERHEAD);
        let track_sid = track.info.sid.clone();
        let kind = track.kind;
        let Some(params) = participant
            .publisher
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == packet.header.payload_type)
            .copied()
        else {
            return;
        };
        let incoming = Incoming {
            publisher: conn,
            track_sid: &track_sid,
            kind,
            rid,
            frame: frame_of(kind, params.spec().codec, &packet.payload),
            params: &params,
            packet: &packet,
        };
        let room = participant.room.clone();
        for member in self.members(&room) {
            if member != conn {
                self.write_to(now, member, &incoming);
            }
        }
    }

    fn write_to(&mut self, now: Instant, member: ConnId, incoming: &Incoming<'_>) {
        let Some(subscriber) = self.participants.get_mut(&member) else {
            return;
        };
        // (A track unsubscribed from and subscribed to again has an old entry on its way out.)
        let Some((down, mid)) = subscriber.downs.iter_mut().find_map(|d| match d.state {
            DownState::Open(mid)
                if d.publisher == incoming.publisher && d.track_sid == incoming.track_sid =>
            {
                Some((d, mid))
            }
            _ => None,
        }) else {
            return;
        };
        let packet = incoming.packet;
        let clock = incoming.params.spec().clock_rate.get();
        // Simulcast VP8: its frame numbering continues across layer switches too.
        let vp8 = (incoming.rid.is_some() && incoming.params.spec().codec == Codec::Vp8)
            .then(|| Vp8Ids::parse(&packet.payload))
            .flatten();
        let verdict = down.forwarding.decide(
            incoming.rid,
            *packet.seq_no,
            packet.header.timestamp,
            packet.timestamp,
            incoming.frame,
            clock,
            vp8,
        );
        let Verdict::Forward {
            seq,
            ts,
            switched,
            vp8: renumbered,
        } = verdict
        else {
            // Waiting to start or switch to this layer: keep asking for its keyframe
            // (throttled).
            if down.forwarding.wants_keyframe(incoming.rid) {
                let (publisher, track_sid) = (incoming.publisher, incoming.track_sid.to_owned());
                self.request_keyframe(now, publisher, &track_sid, incoming.rid);
            }
            return;
        };
        let Some(pt) = subscriber
            .subscriber
            .rtc
            .codec_config()
            .match_params(*incoming.params)
            .map(|p| p.pt())
        else {
            return;
        };
        let mut api = subscriber.subscriber.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let mut write = RtpWrite::new(
            pt,
            SeqNo::from(seq),
            ts,
            packet.timestamp,
            packet.payload.clone(),
        )
        .marker(packet.header.marker)
        .ext_vals(packet.header.ext_vals.clone())
        .nackable(incoming.kind == MediaKind::Video);
        if let Some(patch) = renumbered.and_then(|ids| vp8_patch(&packet.payload, ids)) {
            write = write.vp8_patch(patch);
        }
        stream.write_rtp(write);
        // Sent when the batch of input is done (see `flush`): one drive per receiver per
        // batch, not per packet.
        if !self.dirty.contains(&member) {
            self.dirty.push(member);
        }
        // A finished layer switch may leave the old layer unwanted.
        if switched && incoming.rid.is_some() && !self.switched.contains(&incoming.publisher) {
            self.switched.push(incoming.publisher);
        }
    }

    /// A receiver's settings for a track it gets: paused, or which quality (or size).
    fn track_settings(
        &mut self,
        now: Instant,
        conn: ConnId,
        settings: &proto::UpdateTrackSettings,
    ) {
        let Some(participant) = self.participants.get(&conn) else {
            return;
        };
        let wanted: Vec<(ConnId, String, Option<Rid>)> = participant
            .downs
            .iter()
            .filter(|d| settings.track_sids.contains(&d.track_sid))
            .map(|d| {
                let rid = self
                    .participants
                    .get(&d.publisher)
                    .and_then(|p| p.tracks.iter().find(|t| t.info.sid == d.track_sid))
                    .and_then(|t| t.rid_for(settings.quality, settings.width, settings.height));
                (d.publisher, d.track_sid.clone(), rid)
            })
            .collect();
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        for (publisher, track_sid, rid) in wanted {
            tracing::debug!(
                conn,
                track_sid,
                ?rid,
                disabled = settings.disabled,
                "track settings"
            );
            let Some(down) = participant
                .downs
                .iter_mut()
                .find(|d| d.live() && d.publisher == publisher && d.track_sid == track_sid)
            else {
                continue;
            };
            down.disabled = settings.disabled;
            down.update_paused();
            if rid.is_some() {
                down.requested = rid;
            }
        }
        self.retarget(now, conn);
    }

    /// Works out the layer each of a receiver's video tracks gets (what it asked for, within
    /// its bandwidth), tells its bandwidth estimator what to aim for, and asks publishers for
    /// keyframes where the layer changes.
    fn retarget(&mut self, now: Instant, conn: ConnId) {
        let Some(participant) = self.participants.get(&conn) else {
            return;
        };
        let videos = participant
            .downs
            .iter()
            .filter(|d| d.kind == MediaKind::Video && !d.disabled)
            .count()
            .max(1) as u64;
        let audios = participant.downs.len() as u64 - videos.min(participant.downs.len() as u64);
        // Audio first; video shares the rest.
        let budget = participant
            .estimate
            .map(|e| e.saturating_sub(audios * AUDIO_BITRATE) / videos);
        let mut plan = Vec::new();
        let mut desired_video = 0;
        for (index, down) in participant.downs.iter().enumerate() {
            if down.kind != MediaKind::Video {
                continue;
            }
            let Some(track) = self
                .participants
                .get(&down.publisher)
                .and_then(|p| p.tracks.iter().find(|t| t.info.sid == down.track_sid))
            else {
                continue;
            };
            // Simulcast: the layer that fits. One layer: all or (when congested) nothing.
            let (target, wanted, lowest) = match down.requested {
                Some(requested) => {
                    let layers = track.layer_bitrates();
                    tracing::trace!(conn, ?layers, ?budget, "fitting layers");
                    let wanted = layers
                        .iter()
                        .find(|(rid, _)| *rid == requested)
                        .map_or(0, |(_, bitrate)| *bitrate);
                    let lowest = layers.first().map_or(0, |(_, bitrate)| *bitrate);
                    (Some(fit(&layers, requested, budget)), wanted, lowest)
                }
                None => {
                    let bitrate = track.rates.get(&None).map_or(0, |r| r.bps);
                    (None, bitrate, bitrate)
                }
            };
            desired_video += wanted;
            let congested = participant.allow_pause
                && budget.is_some_and(|budget| congested(lowest, budget, down.congested));
            plan.push((index, target, congested));
        }
        let Some(participant) = self.participants.get_mut(&conn) else {
            return;
        };
        // str0m pads up to the minimum and probes towards the desired rate. Only video needs
        // the estimate: a receiver of audio alone is not padded (that would multiply its
        // packets for nothing).
        let audio = audios * AUDIO_BITRATE;
        let (minimum, desired) = if desired_video == 0 {
            (0, 0)
        } else {
            (
                desired_video.min(MIN_VIDEO_BITRATE) + audio,
                desired_video + audio,
            )
        };
        participant.subscriber.rtc.bwe().set_bitrate(
            str0m::bwe::Bitrate::from(minimum),
            str0m::bwe::Bitrate::from(desired),
        );
        let mut keyframes = Vec::new();
        let mut states = Vec::new();
        for (index, target, congested) in plan {
            let down = &mut participant.downs[index];
            if down.congested != congested {
                tracing::debug!(conn, track_sid = down.track_sid, congested, "stream state");
                down.congested = congested;
                down.update_paused();
                if !congested && target.is_none() && !down.forwarding.paused {
                    // One layer resumes at once: from a keyframe, if the decoder is to use it.
                    keyframes.push((down.publisher, down.track_sid.clone(), None));
                }
                states.push(proto::StreamStateInfo {
                    participant_sid: down.publisher_sid.clone(),
                    track_sid: down.track_sid.clone(),
                    state: if congested {
                        proto::StreamState::Paused
                    } else {
                        proto::StreamState::Active
                    } as i32,
                });
            }
            let Some(target) = target else {
                continue;
            };
            if down.forwarding.target != Some(target) {
                tracing::debug!(conn, track_sid = down.track_sid, %target, "layer for receiver");
                down.forwarding.target = Some(target);
            }
            if !down.forwarding.paused && down.forwarding.waiting() {
                keyframes.push((
                    down.publisher,
                    down.track_sid.clone(),
                    down.forwarding.target,
                ));
            }
        }
        if !states.is_empty() {
            self.signal(
                conn,
                signal_response::Message::StreamStateUpdate(proto::StreamStateUpdate {
                    stream_states: states,
                }),
            );
        }
        // A new layer starts at its next keyframe: ask for one now.
        for (publisher, track_sid, rid) in keyframes {
            self.request_keyframe(now, publisher, &track_sid, rid);
        }
        let publishers = self
            .participants
            .get(&conn)
            .map(|p| p.downs.iter().map(|d| d.publisher).collect())
            .unwrap_or_default();
        self.update_dynacast(publishers);
    }

    /// Dynacast: tells publishers which layers of their simulcast tracks someone receives
    /// (or is about to), so clients that honour it stop encoding the others.
    // `subscribed_qualities` is deprecated but still what older clients read.
    #[allow(deprecated)]
    fn update_dynacast(&mut self, publishers: Vec<ConnId>) {
        for publisher in publishers {
            let Some(p) = self.participants.get(&publisher) else {
                continue;
            };
            let mut updates = Vec::new();
            for (index, track) in p.tracks.iter().enumerate() {
                if track.rids.is_empty() {
                    continue;
                }
                let wanted: Vec<bool> = track
                    .rids
                    .iter()
                    .map(|rid| {
                        self.participants.values().any(|other| {
                            other.downs.iter().any(|d| {
                                d.publisher == publisher
                                    && d.track_sid == track.info.sid
                                    && d.live()
                                    && !d.forwarding.paused
                                    && (d.forwarding.target == Some(*rid)
                                        || d.forwarding.current() == Some(Some(*rid)))
                            })
                        })
                    })
                    .collect();
                if track.announced.as_ref() == Some(&wanted) {
                    continue;
                }
                let qualities: Vec<proto::SubscribedQuality> = track
                    .rids
                    .iter()
                    .zip(&wanted)
                    .map(|(rid, enabled)| proto::SubscribedQuality {
                        quality: track.quality_of(*rid) as i32,
                        enabled: *enabled,
                    })
                    .collect();
                let codec = track
                    .info
                    .mime_type
                    .split_once('/')
                    .map_or("vp8", |(_, c)| c)
                    .to_lowercase();
                updates.push((
                    index,
                    wanted,
                    proto::SubscribedQualityUpdate {
                        track_sid: track.info.sid.clone(),
                        subscribed_qualities: qualities.clone(),
                        subscribed_codecs: vec![proto::SubscribedCodec { codec, qualities }],
                    },
                ));
            }
            let Some(p) = self.participants.get_mut(&publisher) else {
                continue;
            };
            let mut messages = Vec::new();
            for (index, wanted, update) in updates {
                tracing::debug!(publisher, track_sid = update.track_sid, ?wanted, "dynacast");
                p.tracks[index].announced = Some(wanted);
                messages.push(signal_response::Message::SubscribedQualityUpdate(update));
            }
            for message in messages {
                self.signal(publisher, message);
            }
        }
    }

    /// Works out who spoke over the last interval in each room and tells the room when that
    /// changed (the loudest first; those who stopped, as inactive).
    fn update_speakers(&mut self) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let mut speaking: Vec<(String, f32)> = Vec::new();
            for member in self.members(&room) {
                let Some(p) = self.participants.get_mut(&member) else {
                    continue;
                };
                let loudest = p
                    .tracks
                    .iter_mut()
                    .filter_map(|t| t.meter.take())
                    .fold(None, |best: Option<f32>, l| {
                        Some(best.map_or(l, |b| b.max(l)))
                    });
                if let Some(level) = loudest {
                    speaking.push((p.info.sid.clone(), level));
                }
            }
            speaking.sort_by(|a, b| b.1.total_cmp(&a.1));
            let sids: Vec<String> = speaking.iter().map(|(s, _)| s.clone()).collect();
            let Some(state) = self.rooms.get_mut(&room) else {
                continue;
            };
            if state.speakers == sids {
                continue;
            }
            let stopped: Vec<String> = state
                .speakers
                .iter()
                .filter(|s| !sids.contains(s))
                .cloned()
                .collect();
            state.speakers = sids;
            let mut speakers: Vec<proto::SpeakerInfo> = speaking
                .into_iter()
                .map(|(sid, level)| proto::SpeakerInfo {
                    sid,
                    level,
                    active: true,
                })
                .collect();
            speakers.extend(stopped.into_iter().map(|sid| proto::SpeakerInfo {
                sid,
                level: 0.0,
                active: false,
            }));
            for member in self.members(&room) {
                self.signal(
                    member,
                    signal_response::Message::SpeakersChanged(proto::SpeakersChanged {
                        speakers: speakers.clone(),
                    }),
                );
            }
        }
    }

    /// Asks a publisher for a keyframe of a track's layer (throttled).
    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ConnId,
        track_sid: &str,
        rid: Option<Rid>,
    ) {
        let Some(participant) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some(track) = participant
            .tracks
            .iter_mut()
            .find(|t| t.info.sid == track_sid)
        else {
            return;
        };
        if track
            .last_pli
            .get(&rid)
            .is_some_and(|at| now < *at + PLI_INTERVAL)
        {
            return;
        }
        let Some(mid) = track.mid else {
            return;
        };
        track.last_pli.insert(rid, now);
        let mut api = participant.publisher.rtc.direct_api();
        if let Some(stream) = api.stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
        }
        self.drive(now, publisher, Side::Publisher);
    }

    /// Data a participant published (`DataPacket` on `_reliable`/`_lossy`): to the others,
    /// stamped with the sender's identity.
    fn relay_data(&mut self, now: Instant, conn: ConnId, channel: ChannelId, data: &[u8]) {
        use prost::Message as _;
        let Some(participant) = self.participants.get(&conn) else {
            return;
        };
        if !participant
            .info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_publish_data)
        {
            return;
        }
        let Ok(mut packet) = proto::DataPacket::decode(data) else {
            return;
        };
        packet.participant_identity = participant.info.identity.clone();
        packet.participant_sid = participant.info.sid.clone();
        // Sent on the same kind of channel it came on.
        let label = participant
            .publisher_channels
            .get(&channel)
            .cloned()
            .unwrap_or_else(|| "_reliable".to_owned());
        let targets = packet.destination_identities.clone();
        let bytes = packet.encode_to_vec();
        let room = participant.room.clone();
        for member in self.members(&room) {
            if member == conn {
                continue;
            }
            let Some(other) = self.participants.get_mut(&member) else {
                continue;
            };
            if !targets.is_empty() && !targets.contains(&other.info.identity) {
                continue;
            }
            let Some(id) = other.channels.get(&label).copied() else {
                continue;
            };
            if let Some(mut channel) = other.subscriber.rtc.channel(id) {
                let _ = channel.write(true, &bytes);
            }
            self.drive(now, member, Side::Subscriber);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_pauses_below_the_lowest_layer_and_resumes_with_room_to_spare() {
        let lowest = 150_000;
        assert!(!congested(lowest, 200_000, false));
        assert!(congested(lowest, 100_000, false));
        // Paused: 160 kbit/s would fit the layer, but not with a quarter to spare.
        assert!(congested(lowest, 160_000, true));
        assert!(!congested(lowest, 190_000, true));
        assert!(!congested(0, 0, false));
    }

    #[test]
    fn a_layer_rate_is_measured_over_whole_seconds() {
        let start = Instant::now();
        let mut rate = LayerRate::default();
        for i in 0..50 {
            rate.add(start + Duration::from_millis(i * 20), 1_000);
        }
        assert_eq!(rate.bps, 0, "no whole second yet");
        rate.add(start + Duration::from_millis(1_000), 1_000);
        assert_eq!(rate.bps, 400_000);
    }
}
