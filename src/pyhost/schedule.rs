//! Where a plugin call runs, decided per endpoint from measured call times.
//!
//! Handing a call to another thread costs more than most plugin functions take (two thread
//! switches and two GIL hand-offs), so a call known to be short runs *inline*, on the worker's
//! I/O thread, which keeps a permanent Python thread state. A call that may wait (`time.sleep`,
//! a database query) must not stall that thread, so every endpoint starts on the pool of Python
//! threads and is promoted only after [`PROMOTE_AFTER`] calls in a row each under [`FAST`]; an
//! inline call that takes longer than [`TOO_SLOW`] sends its endpoint back to the pool for
//! good (SPEC §9): an endpoint that is slow now and then (a cache refresh every 50th call)
//! would otherwise freeze the I/O thread, and so every request of its worker, each time it is
//! re-promoted. A reload makes a new `Schedule`, so fixed code can earn promotion again.
//! `@expose.endpoint(blocking=True)` keeps an endpoint on the pool from the start. Coroutines are only created inline; they run on the asyncio loop either way.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A pool call at most this long counts towards promotion.
pub const FAST: Duration = Duration::from_micros(500);
/// Consecutive fast pool calls before an endpoint runs inline.
pub const PROMOTE_AFTER: u32 = 16;
/// An inline call longer than this demotes its endpoint to the pool until its module reloads.
pub const TOO_SLOW: Duration = Duration::from_millis(5);

/// Per-endpoint scheduling state, shared by all requests of one loaded endpoint.
#[derive(Debug, Default)]
pub struct Schedule {
    /// The author said the function blocks: never inline.
    blocking: bool,
    inline: AtomicBool,
    /// It was slow while inline: never inline again.
    slow_inline: AtomicBool,
    fast_streak: AtomicU32,
}

impl Schedule {
    pub fn new(blocking: bool) -> Schedule {
        Schedule {
            blocking,
            ..Schedule::default()
        }
    }

    /// Whether the next call runs inline.
    pub fn inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// Records a call's duration (the Python part only) and updates the decision.
    pub fn record(&self, inline: bool, took: Duration) {
        if self.blocking {
            return;
        }
        if inline {
            if took > TOO_SLOW {
                self.slow_inline.store(true, Ordering::Relaxed);
                self.inline.store(false, Ordering::Relaxed);
            }
        } else if self.slow_inline.load(Ordering::Relaxed) {
            // Stays on the pool: no streak to count.
        } else if took <= FAST {
            let streak = self.fast_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= PROMOTE_AFTER {
                self.inline.store(true, Ordering::Relaxed);
            }
        } else {
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

    #[test]
    fn slow_once_while_inline_is_never_promoted_again() {
        let s = Schedule::new(false);
        for _ in 0..PROMOTE_AFTER {
            s.record(false, Duration::from_micros(10));
        }
        assert!(s.inline());
        // Fast inline calls keep it inline.
        for _ in 0..100 {
            s.record(true, Duration::from_micros(10));
        }
        assert!(s.inline());
        s.record(true, TOO_SLOW + Duration::from_millis(1));
        assert!(!s.inline());
        for _ in 0..10 * PROMOTE_AFTER {
            s.record(false, Duration::from_micros(10));
        }
        assert!(!s.inline());
        assert_eq!(s.describe(), "pool");
        // A reload makes a new schedule: it can earn promotion again.
        let reloaded = Schedule::new(false);
        for _ in 0..PROMOTE_AFTER {
            reloaded.record(false, Duration::from_micros(10));
        }
        assert!(reloaded.inline());
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
