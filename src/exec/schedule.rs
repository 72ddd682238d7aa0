//! Where a plugin call runs, decided per endpoint from measured call times.
//!
//! Handing a call to another thread costs more than most plugin functions take (two thread
//! switches and two GIL hand-offs), so a call known to be short runs *inline*, on the worker's
//! I/O thread, which keeps a permanent Python thread state. A call that may wait (`time.sleep`,
//! a database query) must not stall that thread, so every endpoint starts on the pool of Python
//! threads and is promoted only after [`PROMOTE_AFTER`] calls in a row each under [`FAST`].
//!
//! An inline call that takes longer than [`TOO_SLOW`] sends its endpoint back to the pool. One
//! such call proves little on its own: the I/O thread can be preempted on a busy machine, or wait
//! for the GIL behind another thread, and a hello-world call measured 5 ms now and then under
//! load, which once sent the fastest endpoints to the pool for good (+15 % CPU per request). So
//! the first slow inline call puts the endpoint on *probation*: it earns inline back only with
//! [`PROBATION`] fast pool calls in a row, and it is slow **for good** (SPEC §9: not inline
//! again until its module reloads) when the slowness is confirmed — a pool call over
//! [`TOO_SLOW`] during probation, or a second slow inline call within [`STRIKE_WINDOW`] inline
//! calls of the first. An endpoint that is slow now and then (a cache refresh every 50th call)
//! thus freezes the I/O thread at most twice, not at every re-promotion. A reload makes a new
//! `Schedule`, so fixed code can earn promotion again. `@expose.endpoint(blocking=True)` keeps an
//! endpoint on the pool from the start. Coroutines are only created inline; they run on the
//! asyncio loop either way.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A pool call at most this long counts towards promotion.
pub const FAST: Duration = Duration::from_micros(500);
/// Consecutive fast pool calls before an endpoint runs inline.
pub const PROMOTE_AFTER: u32 = 16;
/// An inline call longer than this demotes its endpoint to the pool.
pub const TOO_SLOW: Duration = Duration::from_millis(5);
/// Fast pool calls in a row that clear a slow inline call.
pub const PROBATION: u32 = 256;
/// A second slow inline call within this many inline calls of the first confirms the slowness.
pub const STRIKE_WINDOW: u32 = 100_000;

/// Per-endpoint scheduling state, shared by all requests of one loaded endpoint.
#[derive(Debug, Default)]
pub struct Schedule {
    /// The author said the function blocks: never inline.
    blocking: bool,
    inline: AtomicBool,
    /// Its slowness is confirmed: never inline again.
    slow: AtomicBool,
    /// A slow inline call is not yet cleared.
    probation: AtomicBool,
    /// Inline calls since the last slow one (`u32::MAX`: none yet), for [`STRIKE_WINDOW`].
    since_strike: AtomicU32,
    fast_streak: AtomicU32,
}

impl Schedule {
    pub fn new(blocking: bool) -> Schedule {
        Schedule {
            blocking,
            since_strike: AtomicU32::new(u32::MAX),
            ..Schedule::default()
        }
    }

    /// Whether the next call runs inline.
    pub fn inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// Records a call's duration (the Python part only) and updates the decision.
    pub fn record(&self, inline: bool, took: Duration) {
        if self.blocking || self.slow.load(Ordering::Relaxed) {
            return;
        }
        if inline {
            let since = self.since_strike.load(Ordering::Relaxed);
            if took > TOO_SLOW {
                if since < STRIKE_WINDOW {
                    self.slow.store(true, Ordering::Relaxed);
                }
                self.since_strike.store(0, Ordering::Relaxed);
                self.probation.store(true, Ordering::Relaxed);
                self.fast_streak.store(0, Ordering::Relaxed);
                self.inline.store(false, Ordering::Relaxed);
            } else if since < STRIKE_WINDOW {
                // Only the I/O thread runs inline calls: no lost updates.
                self.since_strike.store(since + 1, Ordering::Relaxed);
            }
            return;
        }
        let probation = self.probation.load(Ordering::Relaxed);
        if took <= FAST {
            let needed = if probation { PROBATION } else { PROMOTE_AFTER };
            let streak = self.fast_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= needed {
                self.probation.store(false, Ordering::Relaxed);
                self.inline.store(true, Ordering::Relaxed);
            }
        } else {
            if probation && took > TOO_SLOW {
                self.slow.store(true, Ordering::Relaxed);
            }
            self.fast_streak.store(0, Ordering::Relaxed);
        }
    }

    /// `inline`, `pool` or `blocking`, for `__dir__` and logs.
    pub fn describe(&self) -> &'static str {
        match (self.blocking, self.inline()) {
            (true, _) => "blocking",
            (false, true) => "inline",
            (false, false) => "pool",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_and_demotion() {
        let s = Schedule::new(false);
        for _ in 0..PROMOTE_AFTER - 1 {
            s.record(false, Duration::from_micros(10));
        }
        assert!(!s.inline());
        s.record(false, Duration::from_micros(10));
        assert!(s.inline());
        s.record(true, TOO_SLOW + Duration::from_millis(1));
        assert!(!s.inline());
    }

    #[test]
    fn one_slow_pool_call_breaks_the_streak() {
        let s = Schedule::new(false);
        for _ in 0..PROMOTE_AFTER - 1 {
            s.record(false, Duration::from_micros(10));
        }
        s.record(false, Duration::from_millis(2));
        s.record(false, Duration::from_micros(10));
        assert!(!s.inline());
        for _ in 0..PROMOTE_AFTER {
            s.record(false, Duration::from_micros(10));
        }
        assert!(s.inline());
    }

    fn promoted(s: &Schedule, calls: u32) {
        for _ in 0..calls {
            s.record(false, Duration::from_micros(10));
        }
    }

    const SLOW: Duration = Duration::from_millis(6);

    #[test]
    fn one_slow_inline_call_is_probation_not_a_verdict() {
        // A hiccup (preemption, a GIL hand-off) must not pin a fast endpoint to the pool.
        let s = Schedule::new(false);
        promoted(&s, PROMOTE_AFTER);
        assert!(s.inline());
        s.record(true, SLOW);
        assert!(!s.inline());
        promoted(&s, PROBATION - 1);
        assert!(!s.inline());
        promoted(&s, 1);
        assert!(s.inline());
        // Long after the strike, another hiccup is probation again.
        for _ in 0..STRIKE_WINDOW {
            s.record(true, Duration::from_micros(10));
        }
        s.record(true, SLOW);
        promoted(&s, PROBATION);
        assert!(s.inline());
    }

    #[test]
    fn slow_again_on_the_pool_during_probation_is_for_good() {
        let s = Schedule::new(false);
        promoted(&s, PROMOTE_AFTER);
        s.record(true, SLOW);
        promoted(&s, 40);
        s.record(false, SLOW); // the cache refresh again, now on the pool
        promoted(&s, 10 * PROBATION);
        assert!(!s.inline());
        assert_eq!(s.describe(), "pool");
        // A reload makes a new schedule: it can earn promotion again.
        let reloaded = Schedule::new(false);
        promoted(&reloaded, PROMOTE_AFTER);
        assert!(reloaded.inline());
    }

    #[test]
    fn slow_twice_inline_within_the_window_is_for_good() {
        let s = Schedule::new(false);
        promoted(&s, PROMOTE_AFTER);
        s.record(true, SLOW);
        promoted(&s, PROBATION);
        assert!(s.inline());
        for _ in 0..1000 {
            s.record(true, Duration::from_micros(10));
        }
        s.record(true, SLOW);
        promoted(&s, 10 * PROBATION);
        assert!(!s.inline());
    }

    #[test]
    fn a_fast_pool_call_of_an_inline_endpoint_does_not_matter() {
        // Calls dispatched to the pool before the promotion may finish after it.
        let s = Schedule::new(false);
        for _ in 0..PROMOTE_AFTER {
            s.record(false, Duration::from_micros(10));
        }
        s.record(false, Duration::from_millis(3));
        s.record(false, Duration::from_micros(10));
        assert!(s.inline());
    }

    #[test]
    fn blocking_hint_pins_to_the_pool() {
        let s = Schedule::new(true);
        for _ in 0..100 {
            s.record(false, Duration::from_micros(1));
        }
        assert!(!s.inline());
        assert_eq!(s.describe(), "blocking");
    }
}
