//! The simulator clock.
//!
//! Owns the notion of "now" used for every timestamp the simulator writes, for rate-limit
//! windows, scroll expiry and index lag. A frozen clock only moves when told to (tests); a
//! running clock follows wall time from its last set point. It does not own any timers: nothing
//! in the simulator sleeps on this clock.

use std::time::Instant;

/// The latest representable simulator time (9999-12-31T23:59:59Z, the limit of HTTP dates).
/// Clamping keeps every window/lag computation free of overflow.
pub(crate) const MAX_TS: i64 = 253_402_300_799;

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
            base_sim: start.clamp(0, MAX_TS),
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
            self.base_sim.saturating_add(elapsed).min(MAX_TS)
        }
    }

    /// Moves the clock forward (or backward for negative `secs`), staying within [`MAX_TS`].
    pub(crate) fn advance(&mut self, secs: i64) {
        self.base_sim = self.base_sim.saturating_add(secs).clamp(0, MAX_TS);
    }

    /// Sets the clock to `ts` (clamped to `0..=MAX_TS`); a running clock continues from there.
    pub(crate) fn set(&mut self, ts: i64) {
        self.base_sim = ts.clamp(0, MAX_TS);
        self.base_wall = Instant::now();
    }
}
