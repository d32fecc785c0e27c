//! What one receiver gets of one track: which simulcast layer, and sequence numbers and
//! timestamps rewritten so that switching layers looks like one clean stream.
//!
//! A simulcast publisher sends the same video in up to three layers (rids `q`, `h`, `f`),
//! each its own RTP stream with its own sequence numbers and timestamp base. A receiver gets
//! one: the layer it asked for, switched to only where that layer starts a keyframe (the
//! decoder needs nothing before it). Sequence numbers continue from the last one sent (a gap
//! inside a layer stays a gap, so NACKs still work); timestamps continue by the time that
//! passed. VP8's picture ids (and TL0PICIDX) in the payload descriptor continue the same way,
//! since each layer numbers its frames on its own. Nothing else of a payload is touched:
//! encrypted frames stay as they are (the descriptor is outside the encrypted frame).

use std::time::Instant;

use str0m::media::Rid;

/// The first sequence number a receiver sees (low, so the SRTP rollover counter starts at 0).
const FIRST_SEQ: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Sent {
    seq: u64,
    ts: u32,
    at: Instant,
    /// The last VP8 picture id and TL0PICIDX sent, if the stream has them.
    picture_id: Option<u16>,
    tl0: Option<u8>,
}

/// The numbering fields of a VP8 payload descriptor (RFC 7741).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Ids {
    pub picture_id: Option<u16>,
    /// Whether the picture id has 15 bits (else 7).
    pub long: bool,
    pub tl0: Option<u8>,
}

impl Vp8Ids {
    /// Reads them from the start of a VP8 RTP payload.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        if first & 0x80 == 0 {
            return Some(Self {
                picture_id: None,
                long: false,
                tl0: None,
            });
        }
        let ext = *payload.get(1)?;
        let mut at = 2;
        let (mut picture_id, mut long, mut tl0) = (None, false, None);
        if ext & 0x80 != 0 {
            let byte = *payload.get(at)?;
            if byte & 0x80 != 0 {
                long = true;
                picture_id = Some(u16::from(byte & 0x7f) << 8 | u16::from(*payload.get(at + 1)?));
                at += 2;
            } else {
                picture_id = Some(u16::from(byte));
                at += 1;
            }
        }
        if ext & 0x40 != 0 {
            tl0 = Some(*payload.get(at)?);
        }
        Some(Self {
            picture_id,
            long,
            tl0,
        })
    }

    fn modulus(&self) -> u32 {
        if self.long { 1 << 15 } else { 1 << 7 }
    }
}

/// One receiver's view of one track.
#[derive(Clone, Debug, Default)]
pub struct Forwarding {
    /// The layer being forwarded (`Some(None)`: a track without simulcast).
    current: Option<Option<Rid>>,
    /// The layer the receiver should get (simulcast only).
    pub target: Option<Rid>,
    /// Nothing is forwarded (the receiver disabled the track, or its link is congested).
    pub paused: bool,
    seq_offset: i64,
    ts_offset: u32,
    /// Added (modulo the field's size) to VP8 picture ids and TL0PICIDX.
    picture_offset: u32,
    tl0_offset: u8,
    last: Option<Sent>,
}

/// What a packet is to a decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// It starts a keyframe: a receiver can start (or switch layers) here.
    Key,
    /// Video that needs the frames before it.
    Delta,
    /// Audio, or video of a codec whose keyframes are not recognised here.
    Unknown,
}

/// Where a packet goes out, if it does.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Forward {
        seq: u64,
        ts: u32,
        /// This packet started (or switched to) its layer.
        switched: bool,
        /// Rewritten VP8 picture id and TL0PICIDX, when they change.
        vp8: Option<(Option<u16>, Option<u8>)>,
    },
}

impl Forwarding {
    pub fn new(target: Option<Rid>) -> Self {
        Self {
            target,
            ..Default::default()
        }
    }

    /// Stops or resumes forwarding. Resumed video starts again at a keyframe, continuing the
    /// sequence numbers where they stopped.
    pub fn set_paused(&mut self, paused: bool) {
        if paused && !self.paused {
            self.current = None;
        }
        self.paused = paused;
    }

    /// The layer now forwarded, if any.
    pub fn current(&self) -> Option<Option<Rid>> {
        self.current
    }

    /// Whether the target layer is not being forwarded yet (it needs a keyframe).
    pub fn waiting(&self) -> bool {
        self.target.is_some() && self.current != Some(self.target)
    }

    /// Whether packets of layer `rid` are wanted but wait for a keyframe: the publisher is
    /// to be asked for one.
    pub fn wants_keyframe(&self, rid: Option<Rid>) -> bool {
        !self.paused && self.current != Some(rid) && (rid.is_none() || rid == self.target)
    }

    /// Decides for one packet of layer `rid`: `seq`/`ts` as the publisher sent them, `at`
    /// its arrival, `frame` what it is to a decoder, `clock` the RTP clock rate.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        rid: Option<Rid>,
        seq: u64,
        ts: u32,
        at: Instant,
        frame: Frame,
        clock: u32,
        vp8: Option<Vp8Ids>,
    ) -> Verdict {
        if self.paused {
            return Verdict::Drop;
        }
        let switched = self.current != Some(rid);
        if switched {
            // Only the wanted layer takes over, and only where a keyframe starts: a decoder
            // given a delta frame after a gap the sequence numbers no longer show would
            // decode it against the wrong picture. What cannot be told (audio, or a codec
            // not recognised here) starts at once, unless it is a simulcast layer.
            let wanted = rid.is_none() || rid == self.target;
            let starts = match frame {
                Frame::Key => true,
                Frame::Delta => false,
                Frame::Unknown => rid.is_none(),
            };
            if !wanted || !starts {
                return Verdict::Drop;
            }
            self.start(rid, seq, ts, at, clock, vp8);
        }
        let out_seq = seq as i64 + self.seq_offset;
        if out_seq <= 0 {
            return Verdict::Drop;
        }
        let out_seq = out_seq as u64;
        let out_ts = ts.wrapping_add(self.ts_offset);
        let ids = vp8.map(|ids| {
            let picture_id = ids
                .picture_id
                .map(|p| ((u32::from(p) + self.picture_offset) % ids.modulus()) as u16);
            (picture_id, ids.tl0.map(|t| t.wrapping_add(self.tl0_offset)))
        });
        if self.last.is_none_or(|l| out_seq > l.seq) {
            self.last = Some(Sent {
                seq: out_seq,
                ts: out_ts,
                at,
                picture_id: ids.and_then(|i| i.0),
                tl0: ids.and_then(|i| i.1),
            });
        }
        let changed = self.picture_offset != 0 || self.tl0_offset != 0;
        Verdict::Forward {
            seq: out_seq,
            ts: out_ts,
            switched,
            vp8: ids.filter(|_| changed),
        }
    }

    /// Continues the output from what was sent last with the packets of layer `rid`.
    fn start(
        &mut self,
        rid: Option<Rid>,
        seq: u64,
        ts: u32,
        at: Instant,
        clock: u32,
        vp8: Option<Vp8Ids>,
    ) {
        self.current = Some(rid);
        match self.last {
            None => {
                self.seq_offset = FIRST_SEQ as i64 - seq as i64;
                self.ts_offset = 0;
            }
            Some(last) => {
                self.seq_offset = (last.seq + 1) as i64 - seq as i64;
                let elapsed = at.saturating_duration_since(last.at);
                let ticks = (elapsed.as_micros() * u128::from(clock) / 1_000_000).max(1);
                let next_ts = last.ts.wrapping_add(ticks as u32);
                self.ts_offset = next_ts.wrapping_sub(ts);
                // The new layer's frames continue the numbering of the frames sent so far.
                if let Some(ids) = vp8 {
                    if let (Some(sent), Some(incoming)) = (last.picture_id, ids.picture_id) {
                        let m = ids.modulus();
                        self.picture_offset =
                            (u32::from(sent) + 1 + m - u32::from(incoming) % m) % m;
                    }
                    if let (Some(sent), Some(incoming)) = (last.tl0, ids.tl0) {
                        self.tl0_offset = sent.wrapping_add(1).wrapping_sub(incoming);
                    }
                }
            }
        }
    }
}

/// The layer a receiver gets: the one it asked for, or the best lower one that fits its
/// bandwidth `budget` (bits/s, when known). `layers`: (rid, bitrate; 0 = unknown) lowest first.
pub fn fit(layers: &[(Rid, u64)], requested: Rid, budget: Option<u64>) -> Rid {
    let Some(budget) = budget else {
        return requested;
    };
    let Some(upto) = layers.iter().position(|(rid, _)| *rid == requested) else {
        return requested;
    };
    layers[..=upto]
        .iter()
        .rev()
        .find(|(_, bitrate)| *bitrate <= budget)
        .or(layers.first())
        .map_or(requested, |(rid, _)| *rid)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn forward(v: Verdict) -> (u64, u32, bool) {
        match v {
            Verdict::Forward {
                seq, ts, switched, ..
            } => (seq, ts, switched),
            Verdict::Drop => panic!("dropped"),
        }
    }

    /// A VP8 descriptor with a 15-bit picture id and TL0PICIDX, then a payload byte.
    fn vp8(picture_id: u16, tl0: u8, key: bool) -> Vec<u8> {
        vec![
            0x90,
            0xC0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            if key { 0x00 } else { 0x01 },
        ]
    }

    #[test]
    fn vp8_descriptors_are_read() {
        let ids = Vp8Ids::parse(&vp8(0x1234, 7, true)).expect("parses");
        assert_eq!(
            ids,
            Vp8Ids {
                picture_id: Some(0x1234),
                long: true,
                tl0: Some(7)
            }
        );
        assert_eq!(
            Vp8Ids::parse(&[0x10, 0x00])
                .expect("no extension")
                .picture_id,
            None
        );
        assert_eq!(Vp8Ids::parse(&[0x90]), None, "truncated");
    }

    #[test]
    fn picture_ids_continue_across_a_layer_switch() {
        let t0 = Instant::now();
        let (q, f) = (Rid::from("q"), Rid::from("f"));
        let mut fw = Forwarding::new(Some(q));
        let ids = |p: u16, t: u8| Vp8Ids::parse(&vp8(p, t, true));
        let first = fw.decide(Some(q), 10, 0, t0, Frame::Key, 90_000, ids(100, 5));
        // The first layer keeps its own numbering.
        assert!(
            matches!(first, Verdict::Forward { vp8: None, .. }),
            "{first:?}"
        );
        fw.decide(Some(q), 11, 3000, t0, Frame::Delta, 90_000, ids(101, 5));
        fw.target = Some(f);
        // f numbers its frames from 32760 (and wraps): the receiver sees 102, 103 ...
        let switched = fw.decide(Some(f), 900, 50, t0, Frame::Key, 90_000, ids(32_760, 200));
        let Verdict::Forward {
            vp8: Some((picture_id, tl0)),
            ..
        } = switched
        else {
            panic!("{switched:?}");
        };
        assert_eq!((picture_id, tl0), (Some(102), Some(6)));
        let next = fw.decide(Some(f), 901, 3050, t0, Frame::Delta, 90_000, ids(8, 201));
        let Verdict::Forward {
            vp8: Some((picture_id, tl0)),
            ..
        } = next
        else {
            panic!("{next:?}");
        };
        // 32760 -> 8 is 16 frames on (mod 2^15): 102 + 16.
        assert_eq!((picture_id, tl0), (Some(118), Some(7)));
    }

    #[test]
    fn a_plain_track_is_rebased_and_keeps_its_gaps() {
        let t0 = Instant::now();
        let mut f = Forwarding::new(None);
        assert_eq!(
            forward(f.decide(None, 50_000, 7, t0, Frame::Unknown, 48_000, None)),
            (FIRST_SEQ, 7, true)
        );
        assert_eq!(
            forward(f.decide(None, 50_001, 967, t0, Frame::Unknown, 48_000, None)).0,
            FIRST_SEQ + 1
        );
        // A lost packet stays a gap (the receiver NACKs it).
        assert_eq!(
            forward(f.decide(None, 50_003, 2887, t0, Frame::Unknown, 48_000, None)).0,
            FIRST_SEQ + 3
        );
    }

    #[test]
    fn layers_switch_only_at_a_keyframe_and_continue_seamlessly() {
        let t0 = Instant::now();
        let q = Rid::from("q");
        let f_ = Rid::from("f");
        let mut fw = Forwarding::new(Some(q));
        // The target layer starts only with a keyframe.
        assert_eq!(
            fw.decide(Some(q), 10, 1000, t0, Frame::Delta, 90_000, None),
            Verdict::Drop
        );
        assert_eq!(
            fw.decide(Some(f_), 500, 9000, t0, Frame::Key, 90_000, None),
            Verdict::Drop
        );
        let (seq, ts, switched) =
            forward(fw.decide(Some(q), 11, 4000, t0, Frame::Key, 90_000, None));
        assert_eq!((seq, switched), (FIRST_SEQ, true));
        let (seq, last_ts, _) =
            forward(fw.decide(Some(q), 12, 7000, t0, Frame::Delta, 90_000, None));
        assert_eq!((seq, last_ts), (FIRST_SEQ + 1, ts + 3000));

        // Asked for the high layer: q keeps flowing until f starts a keyframe.
        fw.target = Some(f_);
        assert!(fw.waiting());
        assert_eq!(
            fw.decide(Some(f_), 501, 9000, t0, Frame::Delta, 90_000, None),
            Verdict::Drop
        );
        assert_eq!(
            forward(fw.decide(Some(q), 13, 10_000, t0, Frame::Delta, 90_000, None)).0,
            FIRST_SEQ + 2
        );
        let later = t0 + Duration::from_millis(40);
        let (seq, ts, switched) =
            forward(fw.decide(Some(f_), 502, 123, later, Frame::Key, 90_000, None));
        assert!(switched);
        assert_eq!(seq, FIRST_SEQ + 3, "no gap, no jump");
        // 40 ms after the last packet sent: 3600 ticks of 90 kHz later.
        assert_eq!(ts, last_ts.wrapping_add(3000).wrapping_add(3600));
        assert!(!fw.waiting());
        // The old layer is dropped from now on.
        assert_eq!(
            fw.decide(Some(q), 14, 13_000, later, Frame::Key, 90_000, None),
            Verdict::Drop
        );
    }

    #[test]
    fn the_layer_fits_the_bandwidth() {
        let (q, h, f) = (Rid::from("q"), Rid::from("h"), Rid::from("f"));
        let layers = [(q, 150_000), (h, 500_000), (f, 2_500_000)];
        assert_eq!(fit(&layers, f, None), f, "unknown bandwidth: as asked");
        assert_eq!(fit(&layers, f, Some(3_000_000)), f);
        assert_eq!(fit(&layers, f, Some(1_000_000)), h);
        assert_eq!(
            fit(&layers, h, Some(10_000_000)),
            h,
            "never above what was asked"
        );
        assert_eq!(
            fit(&layers, f, Some(50_000)),
            q,
            "the lowest when nothing fits"
        );
    }

    #[test]
    fn paused_drops_everything() {
        let mut f = Forwarding::new(None);
        f.paused = true;
        assert_eq!(
            f.decide(None, 1, 1, Instant::now(), Frame::Unknown, 48_000, None),
            Verdict::Drop
        );
    }

    #[test]
    fn plain_video_waits_for_a_keyframe_to_start_and_after_a_pause() {
        let t0 = Instant::now();
        let mut f = Forwarding::new(None);
        assert!(f.wants_keyframe(None));
        assert_eq!(
            f.decide(None, 10, 0, t0, Frame::Delta, 90_000, None),
            Verdict::Drop
        );
        assert_eq!(
            forward(f.decide(None, 11, 3000, t0, Frame::Key, 90_000, None)),
            (FIRST_SEQ, 3000, true)
        );
        forward(f.decide(None, 12, 6000, t0, Frame::Delta, 90_000, None));
        assert!(!f.wants_keyframe(None));

        f.set_paused(true);
        assert!(!f.wants_keyframe(None), "paused: nothing to ask for");
        assert_eq!(
            f.decide(None, 13, 9000, t0, Frame::Delta, 90_000, None),
            Verdict::Drop
        );
        f.set_paused(false);
        assert!(f.wants_keyframe(None));
        // Frames 13 and 14 never reach the receiver: without the keyframe rule 14 would
        // follow 12 seamlessly and be decoded against the wrong picture.
        assert_eq!(
            f.decide(None, 14, 12_000, t0, Frame::Delta, 90_000, None),
            Verdict::Drop
        );
        let (seq, _, switched) = forward(f.decide(None, 15, 15_000, t0, Frame::Key, 90_000, None));
        assert_eq!((seq, switched), (FIRST_SEQ + 2, true));
    }
}
