//! The simulator clock.
//!
//! Owns the notion of "now" used for every timestamp the simulator writes, for rate-limit
//! windows, scroll expiry and index lag. A frozen clock only moves when told to (tests); a
//! running clock follows wall time from its last set point. It does not own any timers: nothing
//! in the simulator sleeps on this clock.

use std::time::Instant;

/// Simulated time in unix seconds.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    base_sim: i64,
    base_wall: Instant,
    frozen: bool,
}

impl Clock {
    /// A clock reading `start` now; `frozen` stops it from following wall time.
    pub(crate) fn new(start: i64, frozen: bool) -> Clock {
        Clock {
            base_sim: start,
            base_wall: Instant::now(),
            frozen,
        }
    }

    /// The current simulated time in unix seconds.
    pub(crate) fn now(&self) -> i64 {
        if self.frozen {
            self.base_sim
        } else {
            let elapsed = i64::try_from(self.base_wall.elapsed().as_secs()).unwrap_or(i64::MAX / 2);
            self.base_sim.saturating_add(elapsed)
        }
    }

    /// Moves the clock forward (or backward for negative `secs`).
    pub(crate) fn advance(&mut self, secs: i64) {
        self.base_sim = self.base_sim.saturating_add(secs);
    }

    /// Sets the clock to `ts`; a running clock continues from there.
    pub(crate) fn set(&mut self, ts: i64) {
        self.base_sim = ts;
        self.base_wall = Instant::now();
    }
}
