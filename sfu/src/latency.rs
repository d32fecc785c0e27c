//! How long forwarded packets spend inside the SFU: from the moment the driver reads a batch of
//! datagrams off the socket to the moment the copies they produced are handed to the kernel.
//! (Time a datagram waited in the socket's receive queue before that is not seen here.)
//! Summarised at debug level, target `sparks_sfu::latency`, every [`WINDOW`].

use std::time::{Duration, Instant};

/// How often a summary is logged (when anything was forwarded).
pub const WINDOW: Duration = Duration::from_secs(1);
/// Histogram resolution and range: 10 µs buckets up to 20 ms, then one overflow bucket.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 2_000;

/// A latency histogram over one window.
pub struct Latency {
    counts: Vec<u64>,
    overflow: u64,
    total: u64,
    max: Duration,
    window_start: Instant,
}

/// Percentiles of one window.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub packets: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn new(now: Instant) -> Self {
        Self {
            counts: vec![0; BUCKETS],
            overflow: 0,
            total: 0,
            max: Duration::ZERO,
            window_start: now,
        }
    }

    /// `packets` datagrams that spent `time` inside the SFU.
    pub fn record(&mut self, time: Duration, packets: u64) {
        let bucket = (time.as_micros() as u64 / BUCKET_US) as usize;
        match self.counts.get_mut(bucket) {
            Some(count) => *count += packets,
            None => self.overflow += packets,
        }
        self.total += packets;
        self.max = self.max.max(time);
    }

    /// The window's summary once it is over (then a new window starts); `None` before, or
    /// when nothing was forwarded.
    pub fn take_summary(&mut self, now: Instant) -> Option<Summary> {
        if now.duration_since(self.window_start) < WINDOW {
            return None;
        }
        let summary = (self.total > 0).then(|| Summary {
            packets: self.total,
            p50_us: self.percentile(50),
            p99_us: self.percentile(99),
            max_us: self.max.as_micros() as u64,
        });
        *self = Self::new(now);
        summary
    }

    /// The upper edge of the bucket holding the `p`th percentile (the overflow bucket: the
    /// maximum).
    fn percentile(&self, p: u64) -> u64 {
        let rank = (self.total * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (bucket as u64 + 1) * BUCKET_US;
            }
        }
        self.max.as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets_and_a_window_resets() {
        let start = Instant::now();
        let mut latency = Latency::new(start);
        latency.record(Duration::from_micros(95), 98);
        latency.record(Duration::from_micros(850), 1);
        latency.record(Duration::from_millis(30), 1);
        assert_eq!(latency.take_summary(start + WINDOW / 2), None);
        let summary = latency.take_summary(start + WINDOW).expect("a summary");
        assert_eq!(
            summary,
            Summary {
                packets: 100,
                p50_us: 100,
                p99_us: 860,
                max_us: 30_000,
            }
        );
        // A new window: nothing forwarded in it, nothing to say.
        assert_eq!(latency.take_summary(start + WINDOW * 2), None);
    }

    #[test]
    fn beyond_the_range_the_maximum_stands_for_the_percentile() {
        let start = Instant::now();
        let mut latency = Latency::new(start);
        latency.record(Duration::from_millis(25), 10);
        let summary = latency.take_summary(start + WINDOW).expect("a summary");
        assert_eq!((summary.p50_us, summary.p99_us), (25_000, 25_000));
    }
}
