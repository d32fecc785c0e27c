//! Who is speaking, from the audio level header extension (RFC 6464) that clients put on their
//! audio packets, in the clear even when the audio itself is end-to-end encrypted. The mean
//! level over each interval decides; clients show it as the active-speaker indicator.

use std::time::Duration;

/// How often the speakers are worked out.
pub const INTERVAL: Duration = Duration::from_millis(300);
/// Louder than this (mean, in dBov) is speaking. Silence is about -127; speech -20 to -40.
const ACTIVE_DBOV: f64 = -50.0;

/// Levels of one audio track since the last interval.
#[derive(Default, Debug)]
pub struct LevelMeter {
    sum: f64,
    count: u32,
}

impl LevelMeter {
    /// One packet's level: `dbov` as carried in the extension (0 loudest, -127 silence).
    pub fn add(&mut self, dbov: i8) {
        self.sum += f64::from(dbov.min(0));
        self.count += 1;
    }

    /// The level LiveKit reports (0..1) if the track was speaking over the interval; resets.
    pub fn take(&mut self) -> Option<f32> {
        let (sum, count) = (self.sum, self.count);
        *self = Self::default();
        if count == 0 {
            return None;
        }
        let mean = sum / f64::from(count);
        (mean > ACTIVE_DBOV).then(|| 10f64.powf(mean / 20.0) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loud_is_speaking_and_silence_is_not() {
        let mut meter = LevelMeter::default();
        for _ in 0..10 {
            meter.add(-20);
        }
        let level = meter.take().expect("speaking");
        assert!((level - 0.1).abs() < 0.001, "{level}");
        assert_eq!(meter.take(), None, "reset after each interval");
        for _ in 0..10 {
            meter.add(-100);
        }
        assert_eq!(meter.take(), None);
    }
}
