//! `sfu-bench`: N publishers × M subscribers of synthetic audio RTP through the SFU of a real
//! `sparks` process, over its real paths: LiveKit signalling on the WebSocket, ICE, DTLS-SRTP
//! and RTP over UDP on loopback. The clients are str0m peers in this process (two peer
//! connections each, as LiveKit's v0 protocol has it).
//!
//! Every publisher sends 50 packets/s (one 20 ms Opus-sized packet each) carrying its send
//! time; every subscriber gets every other participant's track. Reported: egress packets/s
//! the SFU delivered, the SFU process's CPU (so packets/s per core), one-way latency
//! publisher → subscriber (p50/p99: an upper bound of what the SFU adds, since it includes
//! both clients' SRTP and this process's scheduling), and the SFU's memory per participant.
//!
//! Publishers start sending when their track is up, so their packets arrive spread over the
//! 20 ms; with `--aligned` they all send on one shared 20 ms grid instead (every publisher's
//! packet in the same millisecond: the SFU gets them as one batch).
//!
//! Usage: `sfu-bench --sparks target/release/sparks [--publishers 10] [--subscribers 40]
//! [--seconds 10] [--aligned] [--json out.json]`

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{SinkExt, StreamExt};
use livekit_protocol::{
    self as proto, SignalRequest, SignalResponse, signal_request, signal_response,
};
use prost::Message as _;
use sparks_sfu::token::{self, Claims, VideoGrant};
use str0m::{
    Event, Input, Output, Rtc, RtcConfig,
    change::{SdpAnswer, SdpOffer, SdpPendingOffer},
    media::{Direction, MediaKind, Mid},
    net::{Protocol, Receive},
    rtp::{RtpWrite, SeqNo},
};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "bench";
const API_SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
const PAYLOAD_BYTES: usize = 100;

struct Args {
    sparks: PathBuf,
    publishers: usize,
    subscribers: usize,
    seconds: u64,
    json: Option<PathBuf>,
    /// Publishers send on one shared 20 ms grid (all at once) rather than each from when it
    /// joined.
    aligned: bool,
}

fn args() -> Args {
    let mut args = Args {
        sparks: PathBuf::from("target/release/sparks"),
        publishers: 10,
        subscribers: 40,
        seconds: 10,
        json: None,
        aligned: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--aligned" {
            args.aligned = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--sparks" => args.sparks = PathBuf::from(value),
            "--publishers" => args.publishers = value.parse().unwrap_or(args.publishers),
            "--subscribers" => args.subscribers = value.parse().unwrap_or(args.subscribers),
            "--seconds" => args.seconds = value.parse().unwrap_or(args.seconds),
            "--json" => args.json = Some(PathBuf::from(value)),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

/// What the subscribers saw.
#[derive(Default)]
struct Stats {
    received: AtomicU64,
    measuring: AtomicBool,
    /// One-way latencies in microseconds (every 4th packet, to bound memory).
    latencies: Mutex<Vec<u32>>,
    /// Participants receiving every track they should.
    complete: AtomicUsize,
}

/// The sparks process under test.
struct Server {
    child: Child,
    http: SocketAddr,
    dir: PathBuf,
}

/// Time forwarded packets spent inside the SFU, in microseconds.
#[derive(Default)]
struct Inside {
    p50_median: u64,
    p99_median: u64,
    p99_worst: u64,
    max: u64,
}

impl Server {
    fn start(binary: &PathBuf) -> Server {
        let dir = std::env::temp_dir().join(format!("sfu-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let http = free_tcp();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free UDP port")
            .port();
        let config = format!(
            "server_name = \"localhost\"\ndatabase_path = \"{}\"\n[listen]\nclient = \"{http}\"\n\
             [ratelimit]\nenabled = false\n[rtc]\nudp_port = {udp}\napi_key = \"{API_KEY}\"\n\
             api_secret = \"{API_SECRET}\"\n",
            dir.join("db").display()
        );
        std::fs::write(dir.join("sparks.toml"), config).expect("config");
        let log = std::fs::File::create(dir.join("sparks.log")).expect("log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(dir.join("sparks.toml"))
            // The SFU's own forwarding time is summarised every second at debug level.
            .env("RUST_LOG", "warn,sparks_sfu::latency=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sparks");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(http).is_err() {
            assert!(Instant::now() < deadline, "sparks did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, http, dir }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.dir.join("sparks.log")).map_or(0, |m| m.len())
    }

    /// The SFU's per-second summaries of how long forwarded packets spent inside it (from
    /// reading a datagram to handing its copies to the kernel), logged after byte `from` of
    /// its log: the median of the seconds' p50 and of their p99, the worst second's p99, the
    /// maximum.
    fn forwarding_time(&self, from: u64) -> Inside {
        let log = std::fs::read(self.dir.join("sparks.log")).unwrap_or_default();
        let text = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
        let field = |line: &str, name: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut inside = Inside::default();
        for line in text.lines().filter(|l| l.contains("spent in the SFU")) {
            if let (Some(p50), Some(p99), Some(max)) = (
                field(line, "p50_us"),
                field(line, "p99_us"),
                field(line, "max_us"),
            ) {
                p50s.push(p50);
                p99s.push(p99);
                inside.p99_worst = inside.p99_worst.max(p99);
                inside.max = inside.max.max(max);
            }
        }
        p50s.sort_unstable();
        inside.p50_median = p50s.get(p50s.len() / 2).copied().unwrap_or(0);
        p99s.sort_unstable();
        inside.p99_median = p99s.get(p99s.len() / 2).copied().unwrap_or(0);
        inside
    }

    /// CPU seconds the process used so far (user + system).
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free TCP port")
}

fn token_for(identity: &str, room: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = Claims {
        iss: API_KEY.into(),
        sub: identity.into(),
        exp: now + 3600,
        video: VideoGrant {
            room_join: true,
            room: room.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    token::sign(&claims, API_SECRET)
}

/// One client peer connection and its socket.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    next: Instant,
}

impl Peer {
    async fn new() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let local = socket.local_addr().expect("addr");
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(str0m::Candidate::host(local, "udp").expect("candidate"));
        Peer {
            rtc,
            socket,
            local,
            next: Instant::now(),
        }
    }

    fn input(&mut self, from: SocketAddr, data: &[u8]) {
        if let Ok(receive) = Receive::new(Protocol::Udp, from, self.local, data) {
            let _ = self
                .rtc
                .handle_input(Input::Receive(Instant::now(), receive));
        }
    }

    /// Sends what str0m wants sent; returns its events.
    fn drain(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut due_runs = 0;
        while let Ok(output) = self.rtc.poll_output() {
            match output {
                Output::Transmit(t) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => events.push(e),
                // Due already (str0m sends new media after a timeout): run it now rather
                // than after the 1 ms timer granularity.
                Output::Timeout(at) if at <= Instant::now() && due_runs < 4 => {
                    due_runs += 1;
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
                Output::Timeout(at) => {
                    self.next = at;
                    break;
                }
            }
        }
        events
    }
}

fn request(message: signal_request::Message) -> Message {
    Message::Binary(
        SignalRequest {
            message: Some(message),
        }
        .encode_to_vec()
        .into(),
    )
}

/// One participant: joins, answers the subscriber offer, publishes (when `publish`) and
/// counts what arrives, until `stop`.
async fn participant(
    url: String,
    identity: String,
    publish: bool,
    expected_tracks: usize,
    (epoch, aligned): (Instant, bool),
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let (ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(ws) => ws,
        Err(error) => {
            eprintln!("{identity}: cannot connect: {error}");
            return;
        }
    };
    let (mut sink, mut signals) = ws.split();
    let mut sub = Peer::new().await;
    let mut publisher = Peer::new().await;
    let mut pending: Option<SdpPendingOffer> = None;
    let mut mid: Option<Mid> = None;
    let mut seq: u64 = 1;
    let mut next_packet = if aligned {
        // The next tick of the grid every publisher shares.
        let ticks = epoch.elapsed().as_micros() / PACKET_INTERVAL.as_micros() + 1;
        epoch + PACKET_INTERVAL * ticks as u32
    } else {
        Instant::now()
    };
    let mut seen: std::collections::HashSet<u32> = Default::default();
    let mut complete = false;
    if publish {
        let add = proto::AddTrackRequest {
            cid: "mic".into(),
            name: "mic".into(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            ..Default::default()
        };
        let _ = sink
            .send(request(signal_request::Message::AddTrack(add)))
            .await;
    }
    let mut sub_buf = vec![0u8; 2048];
    let mut pub_buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let wake = sub
            .next
            .min(publisher.next)
            .min(if mid.is_some() { next_packet } else { sub.next })
            .max(Instant::now());
        tokio::select! {
            message = signals.next() => {
                let Some(Ok(Message::Binary(bytes))) = message else { break };
                let Ok(response) = SignalResponse::decode(bytes.as_ref()) else { continue };
                match response.message {
                    Some(signal_response::Message::Offer(offer)) => {
                        let Ok(parsed) = SdpOffer::from_sdp_string(&offer.sdp) else { continue };
                        if let Ok(answer) = sub.rtc.sdp_api().accept_offer(parsed) {
                            let description = proto::SessionDescription {
                                r#type: "answer".into(),
                                sdp: answer.to_sdp_string(),
                                id: offer.id,
                                ..Default::default()
                            };
                            let _ = sink.send(request(signal_request::Message::Answer(description))).await;
                        }
                    }
                    Some(signal_response::Message::TrackPublished(_)) => {
                        let mut api = publisher.rtc.sdp_api();
                        let new_mid = api.add_media(MediaKind::Audio, Direction::SendOnly,
                                                    Some(identity.clone()), Some("mic".into()), None);
                        if let Some((offer, waiting)) = api.apply() {
                            pending = Some(waiting);
                            mid = Some(new_mid);
                            let description = proto::SessionDescription {
                                r#type: "offer".into(),
                                sdp: offer.to_sdp_string(),
                                id: 1,
                                ..Default::default()
                            };
                            let _ = sink.send(request(signal_request::Message::Offer(description))).await;
                        }
                    }
                    Some(signal_response::Message::Answer(answer)) => {
                        if let (Some(waiting), Ok(parsed)) =
                            (pending.take(), SdpAnswer::from_sdp_string(&answer.sdp))
                        {
                            let _ = publisher.rtc.sdp_api().accept_answer(waiting, parsed);
                        }
                    }
                    Some(signal_response::Message::Leave(_)) => break,
                    _ => {}
                }
            }
            received = sub.socket.recv_from(&mut sub_buf) => {
                if let Ok((n, from)) = received {
                    let data = sub_buf[..n].to_vec();
                    sub.input(from, &data);
                }
            }
            received = publisher.socket.recv_from(&mut pub_buf) => {
                if let Ok((n, from)) = received {
                    let data = pub_buf[..n].to_vec();
                    publisher.input(from, &data);
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                let _ = sub.rtc.handle_input(Input::Timeout(now));
                let _ = publisher.rtc.handle_input(Input::Timeout(now));
                if let Some(mid) = mid && now >= next_packet {
                    send_packet(&mut publisher.rtc, mid, seq, epoch);
                    seq += 1;
                    next_packet += PACKET_INTERVAL;
                }
            }
        }
        publisher.drain();
        for event in sub.drain() {
            if let Event::RtpPacket(packet) = event {
                let measuring = stats.measuring.load(Ordering::Relaxed);
                if measuring {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                }
                if !complete && seen.insert(*packet.header.ssrc) && seen.len() >= expected_tracks {
                    complete = true;
                    stats.complete.fetch_add(1, Ordering::Relaxed);
                }
                if measuring && *packet.seq_no % 4 == 0 && packet.payload.len() >= 8 {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&packet.payload[..8]);
                    let sent = u64::from_be_bytes(sent);
                    let now = epoch.elapsed().as_micros() as u64;
                    if let Ok(mut latencies) = stats.latencies.lock() {
                        latencies.push(now.saturating_sub(sent) as u32);
                    }
                }
            }
        }
    }
    let _ = sink
        .send(request(signal_request::Message::Leave(Default::default())))
        .await;
}

/// One synthetic 20 ms audio packet whose payload starts with its send time.
fn send_packet(rtc: &mut Rtc, mid: Mid, seq: u64, epoch: Instant) {
    let Some(pt) = rtc.codec_config().params().first().map(|p| p.pt()) else {
        return;
    };
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
    let mut api = rtc.direct_api();
    if let Some(stream) = api.stream_tx_by_mid(mid, None) {
        stream.write_rtp(RtpWrite::new(
            pt,
            SeqNo::from(seq),
            (seq * 960) as u32,
            Instant::now(),
            payload,
        ));
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    str0m::crypto::from_feature_flags().install_process_default();
    let server = Server::start(&args.sparks);
    let idle_rss = server.rss_mib();
    let url_base = format!("ws://{}/livekit/sfu/rtc", server.http);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let total = args.publishers + args.subscribers;
    let mut tasks = Vec::new();
    for i in 0..total {
        let publish = i < args.publishers;
        let identity = format!("{}{i}", if publish { "pub" } else { "sub" });
        let expected = if publish {
            args.publishers - 1
        } else {
            args.publishers
        };
        let url = format!("{url_base}?access_token={}", token_for(&identity, "bench"));
        tasks.push(tokio::spawn(participant(
            url,
            identity,
            publish,
            expected,
            (epoch, args.aligned),
            stats.clone(),
            stop.clone(),
        )));
        // Joins spread out a little, as in a real meeting.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.complete.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let complete = stats.complete.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cpu_before = server.cpu_seconds();
    let log_before = server.log_len();
    stats.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stats.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds() - cpu_before;
    let inside = server.forwarding_time(log_before);
    let rss = server.rss_mib();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }

    let received = stats.received.load(Ordering::Relaxed) as f64;
    let egress_pps = received / elapsed;
    let cores = cpu / elapsed;
    let mut latencies = stats
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let expected_pps =
        (args.publishers * (total - 1)) as f64 * (1.0 / PACKET_INTERVAL.as_secs_f64());
    let result = serde_json::json!({
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "participants_receiving_everything": complete,
        "seconds": elapsed,
        "egress_packets_per_second": egress_pps.round(),
        "expected_packets_per_second": expected_pps.round(),
        "sfu_cpu_cores": (cores * 1000.0).round() / 1000.0,
        "egress_packets_per_second_per_core": if cores > 0.0 { (egress_pps / cores).round() } else { 0.0 },
        "latency_ms_p50": percentile(&latencies, 0.50),
        "latency_ms_p99": percentile(&latencies, 0.99),
        "sfu_forwarding_us_p50_median": inside.p50_median,
        "sfu_forwarding_us_p99_median": inside.p99_median,
        "sfu_forwarding_us_p99_worst": inside.p99_worst,
        "sfu_forwarding_us_max": inside.max,
        "sfu_rss_mib_idle": (idle_rss * 10.0).round() / 10.0,
        "sfu_rss_mib_loaded": (rss * 10.0).round() / 10.0,
        "sfu_rss_kib_per_participant": (((rss - idle_rss) * 1024.0 / total as f64) * 10.0).round() / 10.0,
        "sfu_cpu_percent_per_participant": ((cores * 100.0 / total as f64) * 1000.0).round() / 1000.0,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&result).unwrap_or_default()
    );
    if let Some(path) = args.json {
        let _ = std::fs::write(
            path,
            serde_json::to_string_pretty(&result).unwrap_or_default(),
        );
    }
}
