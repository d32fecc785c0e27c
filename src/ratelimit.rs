//! Token-bucket rate limits, per client address or account, for abuse-prone endpoints.

use std::{collections::HashMap, time::Instant};

use parking_lot::Mutex;

use crate::{
    config::{RateLimitConfig, RateLimitRule},
    error::{Error, Result},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    FailedLogin,
    Registration,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(Limit, String), Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            config: config.clone(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rule(&self, limit: Limit) -> RateLimitRule {
        match limit {
            Limit::FailedLogin => self.config.failed_login,
            Limit::Registration => self.config.registration,
        }
    }

    /// Fails with `429 M_LIMIT_EXCEEDED` if the bucket is empty; does not take a token.
    pub fn check(&self, limit: Limit, key: &str) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let rule = self.rule(limit);
        let mut buckets = self.buckets.lock();
        if let Some(bucket) = buckets.get_mut(&(limit, key.to_owned())) {
            refill(bucket, rule);
            if bucket.tokens < 1.0 {
                let wait = ((1.0 - bucket.tokens) / rule.per_second * 1000.0).ceil() as u64;
                return Err(Error::limit_exceeded(wait.max(1)));
            }
        }
        Ok(())
    }

    /// Takes a token (after a failed login, or for each registration attempt).
    pub fn hit(&self, limit: Limit, key: &str) {
        if !self.config.enabled {
            return;
        }
        let rule = self.rule(limit);
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            // Bound memory: drop buckets that are full again.
            buckets.retain(|_, b| {
                refill(b, rule);
                b.tokens < f64::from(rule.burst)
            });
        }
        let bucket = buckets.entry((limit, key.to_owned())).or_insert(Bucket {
            tokens: f64::from(rule.burst),
            updated: Instant::now(),
        });
        refill(bucket, rule);
        bucket.tokens -= 1.0;
    }

    /// `check` then `hit`, for limits that count every attempt.
    pub fn take(&self, limit: Limit, key: &str) -> Result<()> {
        self.check(limit, key)?;
        self.hit(limit, key);
        Ok(())
    }
}

fn refill(bucket: &mut Bucket, rule: RateLimitRule) {
    let elapsed = bucket.updated.elapsed().as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rule.per_second).min(f64::from(rule.burst));
    bucket.updated = Instant::now();
}
