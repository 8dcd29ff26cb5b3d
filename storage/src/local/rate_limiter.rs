//! [`LocalRateLimiter`]: token buckets in process, for one node (the
//! embedded default). A crash forgets them, which the port allows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use emosation_core::ports::{RateLimitError, RateLimiter};

#[derive(Default)]
pub struct LocalRateLimiter {
    buckets: Mutex<Buckets>,
}

/// Rate-limit buckets by key, and the size above which refilled ones are
/// swept out: twice what the last sweep kept (at least [`SWEEP_ABOVE`]),
/// so a sweep that finds them all still active is not repeated on every
/// call (each costs a pass over the map).
#[derive(Default)]
struct Buckets {
    /// Bucket → (tokens, last take, seconds to refill from empty).
    map: HashMap<String, (f64, Instant, f64)>,
    sweep_above: usize,
}

/// Buckets held before refilled ones are first swept out.
const SWEEP_ABOVE: usize = 100_000;

impl std::fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRateLimiter").finish_non_exhaustive()
    }
}

impl LocalRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn take(&self, bucket: &str, rate: f64, burst: u32) -> Result<bool, RateLimitError> {
        if rate <= 0.0 || rate.is_nan() {
            return Ok(true);
        }
        let burst = burst.max(1) as f64;
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Buckets {
            map: buckets,
            sweep_above,
        } = &mut *guard;
        if buckets.len() > (*sweep_above).max(SWEEP_ABOVE) {
            // Forget buckets that have refilled: they are indistinguishable from new ones.
            // Each bucket by its own refill time (buckets of different
            // limits share the map).
            buckets.retain(|_, (_, t, full_after)| now.duration_since(*t).as_secs_f64() < *full_after);
            *sweep_above = buckets.len() * 2;
        }
        // The hot path (every post) finds its bucket without allocating a key.
        if !buckets.contains_key(bucket) {
            buckets.insert(bucket.to_owned(), (burst, now, burst / rate));
        }
        let Some((tokens, last, _)) = buckets.get_mut(bucket) else {
            return Ok(true);
        };
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fill(p: &LocalRateLimiter, n: usize, rate: f64, burst: u32) {
        for i in 0..n {
            assert!(p.take(&format!("user-{i}"), rate, burst).await.unwrap());
        }
    }

    #[tokio::test]
    async fn refilled_buckets_are_swept_out_past_the_threshold() {
        let p = LocalRateLimiter::new();
        // A bucket of burst 1 at 1,000,000/s is full again after 1 µs.
        fill(&p, SWEEP_ABOVE + 1, 1e6, 1).await;
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(p.take("one-more", 1e6, 1).await.unwrap());
        let b = p.buckets.lock().unwrap();
        assert_eq!(b.map.len(), 1, "only the newest bucket is kept");
    }

    #[tokio::test]
    async fn a_sweep_that_keeps_everything_is_not_repeated_on_every_call() {
        let p = LocalRateLimiter::new();
        // Refilling takes 1,000 s: every bucket stays active.
        fill(&p, SWEEP_ABOVE + 1, 1.0, 1000).await;
        assert!(p.take("one-more", 1.0, 1000).await.unwrap());
        let b = p.buckets.lock().unwrap();
        assert_eq!(b.map.len(), SWEEP_ABOVE + 2);
        assert_eq!(
            b.sweep_above,
            2 * (SWEEP_ABOVE + 1),
            "the next sweep waits for twice as many"
        );
    }
}
