//! What the fuzz targets share: records built from fuzz input, placed on a
//! log as a log would place them, and a way to run a future that is ready at
//! once (an extractor over a body held in memory) without a runtime.
//!
//! # Layout
//! - [`records`]: arbitrary records over small id spaces, and their log positions.
//! - [`ready`]: polls a future that must be ready without waiting.
//! - `fuzz_targets/*.rs`: one target each (fuzz/README.md).

pub mod records;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs `f`, which must complete without waiting on anything (a body in
/// memory, no timers, no I/O): a few polls, then a panic, so that a future
/// that would hang is a finding, not a stuck fuzzer.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a future over an in-memory body did not complete");
}
