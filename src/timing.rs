//! Per-stage timers of the write path, read by `membership_report`'s write
//! breakdown. Everything here compiles to nothing unless the `write-timing`
//! feature is on, so ordinary builds carry no timing in the hot path.
//!
//! A write calls [`start`], then [`mark`] after each stage (the time since
//! the previous mark goes to that stage; repeated stages add up), then
//! [`finish`]. Marks are per thread: a stage run on another thread reports
//! its instants back and the writer marks them with [`mark_at`].

use std::time::{Duration, Instant};

/// One write's stages in the order first marked, with their durations.
pub type Stages = Vec<(&'static str, Duration)>;

#[cfg(feature = "write-timing")]
mod on {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        static OPEN: RefCell<Option<(Instant, Stages)>> = const { RefCell::new(None) };
        static DONE: RefCell<Vec<Stages>> = const { RefCell::new(Vec::new()) };
    }

    pub fn start() {
        OPEN.with(|o| *o.borrow_mut() = Some((Instant::now(), Vec::new())));
    }

    pub fn mark_at(stage: &'static str, at: Instant) {
        OPEN.with(|o| {
            if let Some((last, stages)) = o.borrow_mut().as_mut() {
                let d = at.saturating_duration_since(*last);
                *last = at.max(*last);
                match stages.iter_mut().find(|(s, _)| *s == stage) {
                    Some((_, sum)) => *sum += d,
                    None => stages.push((stage, d)),
                }
            }
        });
    }

    pub fn finish() {
        if let Some((_, stages)) = OPEN.with(|o| o.borrow_mut().take()) {
            DONE.with(|d| d.borrow_mut().push(stages));
        }
    }

    pub fn take() -> Vec<Stages> {
        DONE.with(|d| std::mem::take(&mut *d.borrow_mut()))
    }
}

/// Whether this build times the write path.
pub const ENABLED: bool = cfg!(feature = "write-timing");

/// Starts timing a write on this thread.
#[inline(always)]
pub fn start() {
    #[cfg(feature = "write-timing")]
    on::start();
}

/// Ends the current stage now.
#[inline(always)]
pub fn mark(stage: &'static str) {
    #[cfg(feature = "write-timing")]
    on::mark_at(stage, Instant::now());
    #[cfg(not(feature = "write-timing"))]
    let _ = stage;
}

/// Ends the current stage at `at` (an instant taken on another thread).
#[inline(always)]
pub fn mark_at(stage: &'static str, at: Instant) {
    #[cfg(feature = "write-timing")]
    on::mark_at(stage, at);
    #[cfg(not(feature = "write-timing"))]
    let _ = (stage, at);
}

/// Ends the current write's timing.
#[inline(always)]
pub fn finish() {
    #[cfg(feature = "write-timing")]
    on::finish();
}

/// The stages of every write this thread finished since the last call.
pub fn take() -> Vec<Stages> {
    #[cfg(feature = "write-timing")]
    return on::take();
    #[cfg(not(feature = "write-timing"))]
    Vec::new()
}

/// `Instant::now()` when timing, for stages on another thread.
#[inline(always)]
pub fn now() -> Option<Instant> {
    if ENABLED {
        Some(Instant::now())
    } else {
        None
    }
}
