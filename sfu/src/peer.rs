//! One peer connection: a str0m [`Rtc`] in ICE-lite and RTP mode, with the bookkeeping its
//! negotiation needs (one offer outstanding at a time, candidates that arrive early).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Where a receiver's bandwidth estimate starts (it probes upwards from there).
const INITIAL_ESTIMATE_KBPS: u64 = 1_500;

use str0m::{
    Candidate, Event, Input, Output, Rtc, RtcConfig,
    bwe::Bitrate,
    change::{SdpOffer, SdpPendingOffer},
    config::DtlsCert,
    net::{Protocol, Receive},
};

/// Which of a participant's two connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The participant sends on it (it offers, we answer).
    Publisher,
    /// The participant receives on it (we offer, it answers).
    Subscriber,
}

pub struct Pc {
    pub rtc: Rtc,
    /// Our offer waiting for its answer (subscriber side only).
    pub pending: Option<SdpPendingOffer>,
    /// Id of the last offer we sent (answers echo it).
    pub offer_id: u32,
    /// The last offer we sent (sent again if a resumed client may have missed it).
    pub offer_sdp: String,
    /// Whether the remote description is known; trickled candidates wait until it is.
    pub has_remote: bool,
    pub early_candidates: Vec<Candidate>,
    /// When str0m next wants time to pass.
    pub next_timeout: Instant,
}

impl Pc {
    /// `estimate_bandwidth`: TWCC bandwidth estimation (for connections we send on, so
    /// receivers get the simulcast layer their bandwidth carries).
    pub fn new(
        now: Instant,
        cert: &DtlsCert,
        candidates: &[SocketAddr],
        estimate_bandwidth: bool,
    ) -> Self {
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_vp9(true);
        if estimate_bandwidth {
            config = config.enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)));
        }
        let mut rtc = config.build(now);
        for addr in candidates {
            match Candidate::host(*addr, "udp") {
                Ok(candidate) => {
                    rtc.add_local_candidate(candidate);
                }
                Err(error) => tracing::warn!(%addr, %error, "unusable local candidate"),
            }
        }
        Self {
            rtc,
            pending: None,
            offer_id: 0,
            offer_sdp: String::new(),
            has_remote: false,
            early_candidates: Vec::new(),
            next_timeout: now,
        }
    }

    /// Our offer goes out: it waits for its answer under the next id. Returns (SDP, id).
    pub fn offer_sent(&mut self, offer: SdpOffer, pending: SdpPendingOffer) -> (String, u32) {
        self.pending = Some(pending);
        self.offer_id += 1;
        self.offer_sdp = offer.to_sdp_string();
        (self.offer_sdp.clone(), self.offer_id)
    }

    /// A candidate the client trickled (`candidate:...` line), used once the remote
    /// description is known. ICE-lite does not need them (checks come from the client), but
    /// they help str0m pair addresses.
    pub fn add_remote_candidate(&mut self, sdp: &str) {
        let Ok(candidate) = Candidate::from_sdp_string(sdp) else {
            tracing::debug!(sdp, "unparsable trickled candidate");
            return;
        };
        if self.has_remote {
            self.rtc.add_remote_candidate(candidate);
        } else {
            self.early_candidates.push(candidate);
        }
    }

    /// The remote description is now known: apply candidates that came before it.
    pub fn remote_known(&mut self) {
        self.has_remote = true;
        for candidate in std::mem::take(&mut self.early_candidates) {
            self.rtc.add_remote_candidate(candidate);
        }
    }

    /// Whether this datagram is for this connection (the demultiplexing fallback).
    pub fn accepts(&self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) -> bool {
        match Receive::new(Protocol::Udp, from, to, data) {
            Ok(receive) => self.rtc.accepts(&Input::Receive(now, receive)),
            Err(_) => false,
        }
    }

    pub fn receive(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let Ok(receive) = Receive::new(Protocol::Udp, from, to, data) else {
            return;
        };
        if let Err(error) = self.rtc.handle_input(Input::Receive(now, receive)) {
            tracing::info!(%error, "peer connection input failed");
            self.rtc.disconnect();
        }
    }

    pub fn timeout(&mut self, now: Instant) {
        if let Err(error) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::info!(%error, "peer connection timer failed");
            self.rtc.disconnect();
        }
    }

    /// Drains str0m's output: datagrams to send go to `transmit`, events are returned.
    pub fn drain(
        &mut self,
        now: Instant,
        mut transmit: impl FnMut(SocketAddr, SocketAddr, Vec<u8>),
    ) -> Vec<Event> {
        let mut events = Vec::new();
        // Timers already due are run at once: str0m sends newly written media only after its
        // next timeout, and waiting for the driver's timer (1 ms granularity) would add that
        // to every forwarded packet.
        let mut due_runs = 0;
        loop {
            if !self.rtc.is_alive() {
                // Nothing more to do; the owner removes it.
                self.next_timeout = now + Duration::from_secs(3600);
                return events;
            }
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => transmit(t.source, t.destination, t.contents.into()),
                Ok(Output::Event(event)) => events.push(event),
                Ok(Output::Timeout(at)) if at <= now && due_runs < 4 => {
                    due_runs += 1;
                    self.timeout(now);
                }
                Ok(Output::Timeout(at)) => {
                    self.next_timeout = at;
                    return events;
                }
                Err(error) => {
                    tracing::info!(%error, "peer connection failed");
                    self.rtc.disconnect();
                }
            }
        }
    }
}
