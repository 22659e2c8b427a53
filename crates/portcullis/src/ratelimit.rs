//! Rate limits per user, so one client cannot exhaust the EC2 API quota.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use portcullis_core::Timestamp;

/// Per-user (per-principal) limit on mutating requests, over a sliding minute.
pub struct RateLimiter {
    per_minute: usize,
    hits: Mutex<HashMap<String, VecDeque<Timestamp>>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter { per_minute: per_minute as usize, hits: Mutex::new(HashMap::new()) }
    }

    pub fn per_minute(&self) -> usize {
        self.per_minute
    }

    /// Gives back the latest action counted for `user` (it turned out not to be one: refused).
    pub fn give_back(&self, user: &str) {
        if let Some(user_hits) = self.hits.lock().expect("rate limiter mutex poisoned").get_mut(user) {
            user_hits.pop_back();
        }
    }

    /// Counts one action by `user` at `now`, or says how long until one is allowed.
    pub fn check(&self, user: &str, now: Timestamp) -> Result<(), time::Duration> {
        self.admit(user, now, true)
    }

    /// Whether `user` may act at `now`, counting nothing.
    pub fn peek(&self, user: &str, now: Timestamp) -> Result<(), time::Duration> {
        self.admit(user, now, false)
    }

    fn admit(&self, user: &str, now: Timestamp, count: bool) -> Result<(), time::Duration> {
        let window = time::Duration::minutes(1);
        let mut hits = self.hits.lock().expect("rate limiter mutex poisoned");
        if hits.len() > 10_000 {
            hits.retain(|_, h| h.back().is_some_and(|t| now - *t < window));
        }
        let user_hits = hits.entry(user.to_string()).or_default();
        while user_hits.front().is_some_and(|t| now - *t >= window) {
            user_hits.pop_front();
        }
        if user_hits.len() >= self.per_minute {
            let oldest = *user_hits.front().expect("full means non-empty");
            return Err(oldest + window - now);
        }
        if count {
            user_hits.push_back(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_slides_over_a_minute() {
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let limiter = RateLimiter::new(3);
        for i in 0..3 {
            limiter.check("U1", t0 + time::Duration::seconds(i)).unwrap();
        }
        assert_eq!(limiter.check("U1", t0 + time::Duration::seconds(10)), Err(time::Duration::seconds(50)));
        assert!(limiter.check("U2", t0).is_ok(), "per user");
        assert!(limiter.check("U1", t0 + time::Duration::seconds(60)).is_ok());
    }

    #[test]
    fn a_given_back_action_frees_its_place() {
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let limiter = RateLimiter::new(1);
        limiter.check("U1", t0).unwrap();
        assert!(limiter.check("U1", t0).is_err());
        limiter.give_back("U1");
        assert!(limiter.check("U1", t0).is_ok());
    }
}
