//! Per-user token buckets: `rate` messages per second with a burst of `2 × rate`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate == 0` disables the limit.
    pub fn new(rate: u32) -> Self {
        RateLimiter {
            rate: rate as f64,
            burst: 2.0 * rate as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `user` if one is available.
    pub fn allow(&self, user: &str) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() > 100_000 {
            // Forget users whose buckets have refilled: they are indistinguishable from new ones.
            let full = self.burst / self.rate;
            buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full);
        }
        let (tokens, last) = buckets.entry(user.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_and_users_are_independent() {
        let l = RateLimiter::new(5);
        assert_eq!((0..20).filter(|_| l.allow("a")).count(), 10, "burst of 2x rate");
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        let off = RateLimiter::new(0);
        assert!((0..10_000).all(|_| off.allow("a")));
    }
}
