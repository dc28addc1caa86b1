//! The rate governor: one budget of calls per workspace, shared by every recipe and command that
//! calls it, synchronised to the server's rate-limit windows.
//!
//! Owns the decision *when* a call may be sent: the budget per window (the server's limit times
//! the configured share), the window's edges on our clock (learned from `X-RateLimit-Reset`
//! against the response's `Date`), the calls in flight across an edge, pacing within the window,
//! round-robin fairness between clients and the pause after a 429. Does not own sending, reading
//! headers (the caller passes the numbers), retries or configuration: [`Governor::acquire`] before
//! each attempt, [`Governor::observe`] after each response, [`Governor::rejected`] after a 429.
//!
//! # Invariants, and why they hold
//!
//! * **Never more than the budget in a server window.** A call counts against the window the
//!   server will count it in. Our estimate of a window's end is never earlier than the server's
//!   (see [`ClockSync`]), so a call sent before the estimate may still land in the *next*
//!   window: the calls unanswered when a window rolls over are carried into the next one and
//!   count there until their response says they landed in the old one. Should a response
//!   still come from a window we thought over (the server's `Reset` and `Date` disagree, or
//!   its clock stands still), that window is taken back, its end moves later from then on, and
//!   every later window begun on our clock alone lets one call through until a response
//!   confirms it.
//! * **Room for the workspace's other apps.** Besides our own count, the server's `Remaining`
//!   (minus our calls it may not have counted yet) must stay above what the other apps' share
//!   still needs in this window.
//! * **Fair.** Waiting calls queue per client and clients are served round-robin; only the
//!   call at the head watches the clock.
//! * **No lost budget.** A call is counted only when [`Governor::acquire`] returns; a dropped
//!   `acquire` future leaves the queue without consuming anything and hands the turn on.
//! * **No lock across an await.** All state sits behind one `std::sync::Mutex`; waiting happens
//!   on a per-waiter [`Notify`] or a timer after the lock is released.

// Until the runtime wires the governor into `http` (issue 10), only the tests use it.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Microseconds per second, for server times (Unix seconds) on the µs scale of [`State::local_us`].
const US: i64 = 1_000_000;

/// The longest window a budget may have (a day).
const MAX_WINDOW_SECS: u64 = 86_400;

/// The longest a 429 pauses the governor, whatever the caller asks (a hostile `Reset`).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// The furthest ahead a window's end is believed (a hostile or broken `Reset`), unless the
/// window itself is longer.
const MAX_WINDOW_AHEAD: Duration = Duration::from_secs(60);

/// What identifies a workspace's rate budget: the connector, the base URL and a fingerprint of
/// the credential. Two connection names for one workspace make equal keys and so share one
/// [`Governor`].
///
/// The credential is kept only as a keyed hash whose key is random per process: the key never
/// holds the token, and its `Debug` shows neither the token nor any user info in the URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct WorkspaceKey {
    connector: Box<str>,
    /// Scheme and host lower-cased, trailing slashes removed.
    base_url: Box<str>,
    credential: Option<u64>,
}

impl WorkspaceKey {
    /// The key of `connector` at `base_url` with `credential` (the token, if any).
    pub(crate) fn new(connector: &str, base_url: &str, credential: Option<&str>) -> Self {
        static FINGERPRINT: OnceLock<RandomState> = OnceLock::new();
        let credential = credential.map(|c| FINGERPRINT.get_or_init(RandomState::new).hash_one(c));
        WorkspaceKey {
            connector: connector.into(),
            base_url: normalize_url(base_url).into(),
            credential,
        }
    }
}

impl fmt::Debug for WorkspaceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Fingerprint(Option<u64>);
        impl fmt::Debug for Fingerprint {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Some(fp) => write!(f, "#{:08x}", fp >> 32),
                    None => f.write_str("none"),
                }
            }
        }
        f.debug_struct("WorkspaceKey")
            .field("connector", &self.connector)
            .field("base_url", &without_userinfo(&self.base_url))
            .field("credential", &Fingerprint(self.credential))
            .finish()
    }
}

/// `url` with its scheme and authority lower-cased and trailing slashes removed, so spellings
/// of one workspace's URL make one key.
fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let Some(i) = url.find("://") else {
        return url.to_string();
    };
    let authority_end = url[i + 3..].find('/').map_or(url.len(), |j| i + 3 + j);
    let mut out = url[..authority_end].to_ascii_lowercase();
    out.push_str(&url[authority_end..]);
    out
}

/// `url` with any `user:password@` replaced by `***@`, for display.
fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority = &url[start..url[start..].find('/').map_or(url.len(), |j| start + j)];
    match authority.rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

/// The registry of governors: one per [`WorkspaceKey`], created on first use.
#[derive(Default)]
pub(crate) struct Governors {
    map: Mutex<HashMap<WorkspaceKey, Arc<Governor>>>,
}

impl Governors {
    /// An empty registry.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The governor of `key`, created with `budget` if there is none yet. An existing one keeps
    /// its window and takes the stricter share and limit hint of the two budgets (see
    /// [`Governor::tighten`]), so no connection's setting is exceeded.
    pub(crate) fn get_or_create(&self, key: WorkspaceKey, budget: Budget) -> Arc<Governor> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.entry(key) {
            Entry::Occupied(e) => {
                e.get().tighten(budget);
                Arc::clone(e.get())
            }
            Entry::Vacant(e) => Arc::clone(e.insert(Arc::new(Governor::new(budget)))),
        }
    }

    /// Every governor's key and statistics, for metrics.
    pub(crate) fn stats(&self) -> Vec<(WorkspaceKey, GovernorStats)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(k, g)| (k.clone(), g.stats())).collect()
    }
}

/// The limit hint of a connector that declares none: effectively no budget until the server
/// reports one.
pub(crate) const UNKNOWN_LIMIT: u32 = u32::MAX / 2;

/// A workspace's budget, before the server has said anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Budget {
    /// The server's window (Intercom: 10 s). Rounded up to whole seconds, from one to a day.
    pub window: Duration,
    /// Calls per window until a response carries `X-RateLimit-Limit`.
    pub limit_hint: u32,
    /// The part of the limit sluice may use, `0 < share ≤ 1`; the rest is left to the
    /// workspace's other apps.
    pub share: f64,
}

impl Budget {
    /// Calls sluice may send in one window when the server's limit is `limit`:
    /// `floor(limit × share)`, but at least one so that sluice is never stopped for good.
    /// The hint, when it is a real limit (not the "no limit declared" stand-in).
    fn known_limit(&self) -> Option<u32> {
        (self.limit_hint < UNKNOWN_LIMIT).then_some(self.limit_hint)
    }

    pub(crate) fn per_window(&self, limit: u32) -> u32 {
        // The epsilon keeps an exact product (1000 × 0.7) from flooring one short.
        ((f64::from(limit) * self.share + 1e-9).floor() as u32).max(1)
    }

    /// The budget with its window in whole seconds, its share in `[0, 1]` (not a number: 1)
    /// and a limit hint of at least one.
    fn normalized(self) -> Budget {
        let secs = self
            .window
            .as_secs()
            .saturating_add(u64::from(self.window.subsec_nanos() > 0));
        Budget {
            window: Duration::from_secs(secs.clamp(1, MAX_WINDOW_SECS)),
            limit_hint: self.limit_hint.max(1),
            share: if self.share.is_nan() {
                1.0
            } else {
                self.share.clamp(0.0, 1.0)
            },
        }
    }
}

/// What a governor has done, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GovernorStats {
    /// Calls let through since the governor was created.
    pub sent: u64,
    /// 429s reported through [`Governor::rejected`].
    pub rejected: u64,
    /// The server's limit per window (the hint until a response said).
    pub limit: u32,
    /// sluice's budget per window: `floor(limit × share)`.
    pub budget: u32,
    /// Calls sluice may still send in the current window (pacing aside).
    pub remaining: u32,
    /// Calls waiting in [`Governor::acquire`].
    pub waiting: usize,
}

/// A workspace's rate governor. `Send + Sync`; share it behind an `Arc` (see [`Governors`]).
pub(crate) struct Governor {
    state: Mutex<State>,
}

impl fmt::Debug for Governor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Governor")
            .field("stats", &self.lock().stats())
            .finish_non_exhaustive()
    }
}

impl Governor {
    /// A governor with `budget`; its clock starts now.
    pub(crate) fn new(budget: Budget) -> Self {
        Governor {
            state: Mutex::new(State::new(budget.normalized(), Instant::now())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; should something, the state is still sound
        // (every update is a few counters), so a poisoned lock is simply taken.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until one call may be sent for `client` (a recipe instance id, or "cli"); fair
    /// between clients; consumes one call of the budget.
    ///
    /// Cancel-safe: dropping the future before it completes consumes nothing and lets the next
    /// waiter go. With nobody waiting and budget left, it returns at once without allocating.
    pub(crate) async fn acquire(&self, client: &str) {
        let (id, wake, mut step) = {
            let mut st = self.lock();
            let now = Instant::now();
            let first = if st.queue.is_empty() {
                match st.try_grant(now) {
                    Ok(()) => return,
                    Err(until) => Step::Sleep(until),
                }
            } else {
                Step::Wait
            };
            let (id, wake) = st.queue.push(client);
            (id, wake, first)
        };
        let mut waiting = Waiting {
            gov: self,
            client,
            id,
            granted: false,
        };
        loop {
            match step {
                Step::Granted => return,
                Step::Sleep(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = wake.notified() => {}
                    }
                }
                Step::Wait => wake.notified().await,
            }
            step = {
                let mut st = self.lock();
                if st.queue.head() != Some(id) {
                    Step::Wait
                } else {
                    match st.try_grant(Instant::now()) {
                        Ok(()) => {
                            st.queue.pop_head();
                            st.queue.wake_head();
                            waiting.granted = true;
                            Step::Granted
                        }
                        Err(until) => Step::Sleep(until),
                    }
                }
            };
        }
    }

    /// After every response: the server's headers (any may be missing) and its `Date` (Unix
    /// seconds). A response without rate-limit headers may be passed as all `None`.
    pub(crate) fn observe(
        &self,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<i64>,
        server_now: Option<i64>,
    ) {
        let mut st = self.lock();
        st.observe(Instant::now(), limit, remaining, reset, server_now);
        // The report may have freed budget or moved the window's end: the next waiter checks.
        st.queue.wake_head();
    }

    /// A 429 arrived despite the budget: nothing more is sent until the window resets (`wait`,
    /// at most an hour).
    pub(crate) fn rejected(&self, wait: Duration) {
        let now = Instant::now();
        let mut st = self.lock();
        st.rejected += 1;
        let until = now + wait.min(MAX_PAUSE);
        st.paused_until = Some(st.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Calls sent, 429s, the limit and what is left of the budget in this window.
    pub(crate) fn stats(&self) -> GovernorStats {
        let mut st = self.lock();
        st.roll(Instant::now());
        st.stats()
    }

    /// Takes the stricter share and limit hint of the governor's budget and `budget` (the
    /// window stays). For a second connection to one workspace configured differently.
    pub(crate) fn tighten(&self, budget: Budget) {
        let budget = budget.normalized();
        let mut st = self.lock();
        st.budget.share = st.budget.share.min(budget.share);
        st.budget.limit_hint = st.budget.limit_hint.min(budget.limit_hint);
    }
}

/// What a waiter in [`Governor::acquire`] does next.
enum Step {
    /// It may send.
    Granted,
    /// It is next; it checks again at this instant or when woken.
    Sleep(Instant),
    /// Another waiter is next; it waits to be woken.
    Wait,
}

/// A waiter's place in the queue; leaving it (a dropped `acquire`) hands the turn on.
struct Waiting<'a> {
    gov: &'a Governor,
    client: &'a str,
    id: u64,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.granted {
            self.gov.lock().queue.remove(self.client, self.id);
        }
    }
}

/// One waiting call.
struct Waiter {
    id: u64,
    wake: Arc<Notify>,
}

/// Waiting calls: a FIFO per client, served round-robin across clients. Only the waiter at the
/// head watches the clock; the others sleep until woken, so a grant costs one wake-up however
/// many wait.
#[derive(Default)]
struct Queue {
    /// Clients with waiting calls; the front one's first waiter is the head.
    ring: VecDeque<Arc<str>>,
    by_client: HashMap<Arc<str>, VecDeque<Waiter>>,
    next_id: u64,
    len: usize,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a call for `client`; returns its id and what wakes it.
    fn push(&mut self, client: &str) -> (u64, Arc<Notify>) {
        let id = self.next_id;
        self.next_id += 1;
        self.len += 1;
        let wake = Arc::new(Notify::new());
        let waiter = Waiter {
            id,
            wake: Arc::clone(&wake),
        };
        match self.by_client.get_mut(client) {
            Some(q) => q.push_back(waiter),
            None => {
                let client: Arc<str> = client.into();
                self.ring.push_back(Arc::clone(&client));
                self.by_client.insert(client, VecDeque::from([waiter]));
            }
        }
        (id, wake)
    }

    /// The id of the waiter served next.
    fn head(&self) -> Option<u64> {
        self.head_waiter().map(|w| w.id)
    }

    fn head_waiter(&self) -> Option<&Waiter> {
        self.by_client.get(self.ring.front()?)?.front()
    }

    fn wake_head(&self) {
        if let Some(w) = self.head_waiter() {
            w.wake.notify_one();
        }
    }

    /// Removes the head, moving its client to the back of the round. The caller wakes the new
    /// head.
    fn pop_head(&mut self) {
        let Some(client) = self.ring.pop_front() else {
            return;
        };
        if let Some(q) = self.by_client.get_mut(&client) {
            q.pop_front();
            self.len -= 1;
            if q.is_empty() {
                self.by_client.remove(&client);
            } else {
                self.ring.push_back(client);
            }
        }
    }

    /// Removes waiter `id` of `client` (a cancelled `acquire`); wakes the new head if it was
    /// the head.
    fn remove(&mut self, client: &str, id: u64) {
        let was_head = self.head() == Some(id);
        let Some(q) = self.by_client.get_mut(client) else {
            return;
        };
        let Some(pos) = q.iter().position(|w| w.id == id) else {
            return;
        };
        q.remove(pos);
        self.len -= 1;
        if q.is_empty() {
            self.by_client.remove(client);
            self.ring.retain(|c| &**c != client);
        }
        if was_head {
            self.wake_head();
        }
    }
}

/// One server window as sluice accounts for it.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The server's `X-RateLimit-Reset` for this window; `None` until a response said (until
    /// then windows are local: they start with sluice's first call).
    reset: Option<i64>,
    /// When it ends on our clock; never before the server's end (see [`ClockSync`]).
    end: Instant,
    /// Calls sent while this was the current window.
    own: u32,
    /// Calls sent at the end of the previous window, unanswered when it rolled over: they may
    /// land in this one, so they count here until a response says they landed there.
    carried: u32,
    /// Responses that said they were counted in this window.
    answered: u32,
    /// The least of `Remaining + answered` over this window's reports: the server's remaining
    /// now is at most this minus [`Window::sent`] (every call not answered when a report came
    /// is taken as not counted in it).
    remaining_plus: Option<u64>,
    /// The most of `Limit − Remaining − sent` over this window's reports: a lower bound of the
    /// calls the workspace's other apps used in it.
    others: u64,
    /// A response has said the server is in this window.
    confirmed: bool,
}

impl Window {
    fn new(reset: Option<i64>, end: Instant) -> Window {
        Window {
            reset,
            end,
            own: 0,
            carried: 0,
            answered: 0,
            remaining_plus: None,
            others: 0,
            confirmed: false,
        }
    }

    /// Calls that count against this window.
    fn sent(&self) -> u32 {
        self.own + self.carried
    }

    /// Calls of this window that may still land in the next: those not answered, at most the
    /// ones sent while it was current (a carried call that never gets an answer, such as one
    /// whose connection failed, is carried once, not forever).
    fn pending(&self) -> u32 {
        self.sent().saturating_sub(self.answered).min(self.own)
    }

    /// Calls the server's reports leave for sluice: the server's remaining minus what the other
    /// apps' share still needs. `None` before any report.
    ///
    /// Once the other apps have used more than their share they need nothing more, but they
    /// keep calling while our last report travels: a margin of 1 % of the limit is then kept
    /// so that the last calls of the window are theirs to lose, not ours.
    ///
    /// With the limit unknown (no `X-RateLimit-Limit` and no hint) the other apps' use cannot
    /// be told: only the server's remaining counts.
    fn server_room(&self, limit: Option<u32>, budget: u32) -> Option<u64> {
        // (`limit`: the workspace's limit when known.)
        let remaining = self.remaining_plus?.saturating_sub(u64::from(self.sent()));
        let Some(limit) = limit else {
            return Some(remaining);
        };
        let reserve = u64::from(limit.saturating_sub(budget));
        let needed = if self.others > 0 && self.others >= reserve {
            u64::from(burst(limit))
        } else {
            reserve - self.others
        };
        Some(remaining.saturating_sub(needed))
    }

    /// Takes in one response counted in this window.
    fn report(&mut self, limit: u32, remaining: Option<u64>) {
        // A response counted here is for a call that counts here: an answer beyond the calls
        // (for a call not carried, or a report with no call) must not make room.
        self.answered = (self.answered + 1).min(self.sent());
        if let Some(rem) = remaining {
            let plus = rem.saturating_add(u64::from(self.answered));
            self.remaining_plus = Some(self.remaining_plus.map_or(plus, |m| m.min(plus)));
            let others = u64::from(limit)
                .saturating_sub(rem)
                .saturating_sub(u64::from(self.sent()));
            self.others = self.others.max(others);
        }
    }
}

/// The server's clock against ours, from `Date` headers.
///
/// Each response gives `Date − (our clock when it arrived)`. The server stamped `Date` before
/// we received it and truncated it to the second, so every sample is at most the true offset;
/// the largest sample is the best estimate and errs low, which puts a window's end (`Reset −
/// offset`) late, never early. Samples are kept for the current and the previous window only,
/// so a server clock that steps back is followed within two windows.
#[derive(Debug, Default, Clone, Copy)]
struct ClockSync {
    cur: Option<i64>,
    prev: Option<i64>,
}

impl ClockSync {
    /// Server time minus our time, in µs.
    fn estimate(&self) -> Option<i64> {
        self.cur.max(self.prev)
    }

    fn sample(&mut self, s: i64) {
        self.cur = Some(self.cur.map_or(s, |c| c.max(s)));
    }

    /// A new window begins.
    fn rotate(&mut self) {
        if self.cur.is_some() {
            self.prev = self.cur.take();
        }
    }

    /// Forgets every sample but `s` (the server's clock was seen behind the estimate).
    fn reset_to(&mut self, s: i64) {
        *self = ClockSync {
            cur: Some(s),
            prev: None,
        };
    }
}

/// Everything behind the governor's lock.
struct State {
    budget: Budget,
    /// `X-RateLimit-Limit` as last reported.
    limit: Option<u32>,
    cur: Option<Window>,
    /// The window before `cur`, while responses for it may still arrive.
    prev: Option<Window>,
    sync: ClockSync,
    /// Added to every window end (µs), grown when the server was seen still in a window we
    /// thought over (its `Reset` and `Date` disagree, or its clock lags).
    slack_us: i64,
    /// The server was once seen in a window we thought over: from then on a window begun on
    /// our clock alone lets one call through (a probe) until a response confirms it.
    distrust: bool,
    /// A probe (see `distrust`) is out and no response has come since.
    probe_out: bool,
    /// Our clock's origin for µs arithmetic.
    anchor: Instant,
    /// Pacing: the theoretical time of the next call (GCRA).
    tat: Option<Instant>,
    paused_until: Option<Instant>,
    queue: Queue,
    sent: u64,
    rejected: u64,
}

impl State {
    fn new(budget: Budget, now: Instant) -> State {
        State {
            budget,
            limit: None,
            cur: None,
            prev: None,
            sync: ClockSync::default(),
            slack_us: 0,
            distrust: false,
            probe_out: false,
            anchor: now,
            tat: None,
            paused_until: None,
            queue: Queue::default(),
            sent: 0,
            rejected: 0,
        }
    }

    fn limit(&self) -> u32 {
        self.limit.unwrap_or(self.budget.limit_hint)
    }

    fn window_secs(&self) -> i64 {
        i64::try_from(self.budget.window.as_secs()).unwrap_or(i64::MAX / US)
    }

    /// `t` in µs since [`State::anchor`].
    fn local_us(&self, t: Instant) -> i64 {
        i64::try_from(t.saturating_duration_since(self.anchor).as_micros()).unwrap_or(i64::MAX)
    }

    fn at_us(&self, us: i64) -> Instant {
        self.anchor + Duration::from_micros(u64::try_from(us).unwrap_or(0))
    }

    /// When the server's window ending at `reset` ends on our clock, kept within
    /// `[now, now + max(window, MAX_WINDOW_AHEAD)]`. `None` before any `Date`.
    fn local_end(&self, reset: i64, now: Instant) -> Option<Instant> {
        let offset = self.sync.estimate()?;
        let now_us = self.local_us(now);
        let ahead = self.budget.window.max(MAX_WINDOW_AHEAD).as_micros();
        let cap = now_us.saturating_add(i64::try_from(ahead).unwrap_or(i64::MAX));
        let end = reset
            .saturating_mul(US)
            .saturating_sub(offset)
            .saturating_add(self.slack_us);
        Some(self.at_us(end.clamp(now_us, cap)))
    }

    /// Makes `cur` the window that holds `now`.
    fn roll(&mut self, now: Instant) {
        let Some(cur) = self.cur else {
            self.cur = Some(Window::new(None, now + self.budget.window));
            return;
        };
        if now < cur.end {
            return;
        }
        let synced = cur.reset.zip(self.sync.estimate());
        let Some((reset, offset)) = synced else {
            self.prev = None;
            self.cur = Some(Window::new(None, now + self.budget.window));
            return;
        };
        // The next window the server is not yet past, by the estimate of its clock (which errs
        // behind, so this never skips a window the server is still in).
        let window_us = self.window_secs().saturating_mul(US);
        let server_now = self
            .local_us(now)
            .saturating_add(offset)
            .saturating_sub(self.slack_us);
        let past = server_now.saturating_sub(reset.saturating_mul(US)).max(0);
        let steps = past / window_us + 1;
        let reset = reset.saturating_add(steps.saturating_mul(self.window_secs()));
        let end = self
            .local_end(reset, now)
            .expect("invariant: the clock estimate exists");
        self.advance_to(cur, reset, end, steps == 1);
    }

    /// Starts the window ending at `reset` (`end` on our clock) after `cur`; `adjacent` when it
    /// directly follows `cur`, whose unanswered calls may then land in it.
    fn advance_to(&mut self, cur: Window, reset: i64, end: Instant, adjacent: bool) {
        // A new window may send its own probe.
        self.probe_out = false;
        let mut next = Window::new(Some(reset), end);
        if adjacent {
            next.carried = cur.pending();
            self.prev = Some(cur);
        } else {
            self.prev = None;
        }
        self.cur = Some(next);
        self.sync.rotate();
    }

    /// Lets one call through now, or says when to ask again.
    fn try_grant(&mut self, now: Instant) -> Result<(), Instant> {
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(until);
            }
            self.paused_until = None;
        }
        self.roll(now);
        let limit = self.limit();
        let budget = self.budget.per_window(limit);
        let interval = self.budget.window / budget;
        if let Some(tat) = self.tat {
            // GCRA: a call conforms when it is at most `burst − 1` intervals ahead of the
            // theoretical schedule.
            let tolerance = interval * (burst(budget) - 1);
            let earliest = tat.checked_sub(tolerance).unwrap_or(tat);
            if now < earliest {
                return Err(earliest);
            }
        }
        let cur = self.cur.as_mut().expect("invariant: roll sets the window");
        // An unconfirmed window of a server seen behind our clock lets one call through at a
        // time until a response says which window the server is in.
        let probing = self.distrust && !cur.confirmed && self.probe_out;
        let known = self.limit.or(self.budget.known_limit());
        if probing || cur.sent() >= budget || cur.server_room(known, budget) == Some(0) {
            return Err(cur.end);
        }
        if self.distrust && !cur.confirmed {
            self.probe_out = true;
        }
        cur.own += 1;
        self.tat = Some(self.tat.map_or(now, |t| t.max(now)) + interval);
        self.sent += 1;
        Ok(())
    }

    fn observe(
        &mut self,
        now: Instant,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<i64>,
        server_now: Option<i64>,
    ) {
        if let Some(l) = limit {
            self.limit = Some(u32::try_from(l).unwrap_or(u32::MAX));
        }
        let mut sample =
            server_now.map(|d| d.saturating_mul(US).saturating_sub(self.local_us(now)));
        if sample.is_none() && reset.is_some() && self.sync.estimate().is_none() {
            // No `Date` ever: our own wall clock is all there is to place `Reset` on.
            sample = wall_clock_us().map(|w| w.saturating_sub(self.local_us(now)));
        }
        if let Some(s) = sample {
            self.sync.sample(s);
        }
        // Any answer is news: an outstanding probe no longer holds the others back.
        self.probe_out = false;
        self.roll(now);
        let limit = self.limit();
        let mut cur = self.cur.expect("invariant: roll sets the window");
        match (reset, cur.reset) {
            (None, _) => {
                if remaining.is_some() {
                    cur.report(limit, remaining);
                }
            }
            // The first `Reset`: the local window becomes the server's (every call so far
            // counts in it, which can only overestimate).
            (Some(r), None) => {
                cur.reset = Some(r);
                cur.end = self.local_end(r, now).unwrap_or(cur.end);
                cur.confirmed = true;
                cur.report(limit, remaining);
            }
            (Some(r), Some(c)) if r == c => {
                cur.end = self.local_end(r, now).unwrap_or(cur.end);
                cur.confirmed = true;
                cur.report(limit, remaining);
            }
            // The server is in a later window than we thought: it begins now.
            (Some(r), Some(c)) if r > c => {
                let end = self.local_end(r, now).unwrap_or(now + self.budget.window);
                self.advance_to(cur, r, end, r - c <= self.window_secs());
                if let Some(s) = sample {
                    self.sync.sample(s);
                }
                cur = self.cur.expect("invariant: just set");
                cur.confirmed = true;
                cur.report(limit, remaining);
            }
            (Some(r), Some(_)) if self.prev.is_some_and(|p| p.reset == Some(r)) => {
                if cur.carried > 0 {
                    // A carried call landed in the window before: it does not count here.
                    cur.carried -= 1;
                } else {
                    // The server is still in the window we rolled over from: our end was
                    // early. Every call since counted in that window.
                    let prev = self.prev.take().expect("invariant: checked above");
                    let early = now.saturating_duration_since(prev.end).as_micros();
                    let window_us = self.window_secs().saturating_mul(US);
                    self.slack_us = self
                        .slack_us
                        .saturating_add(i64::try_from(early).unwrap_or(i64::MAX))
                        .min(window_us);
                    if let Some(s) = sample {
                        self.sync.reset_to(s);
                    }
                    self.distrust = true;
                    let mut merged = prev;
                    merged.own += cur.own;
                    merged.end = self.local_end(r, now).unwrap_or(now + self.budget.window);
                    merged.report(limit, remaining);
                    tracing::debug!(
                        early_ms = early / 1000,
                        "The server was still in a rate-limit window sluice thought over; its windows now end later."
                    );
                    cur = merged;
                }
            }
            // A response from a window older than the previous one: the server's clock stands
            // still or went back (a frozen or broken clock). Unless an unanswered call explains
            // it, the server's window is the one that counts: take it, with every call since.
            (Some(r), Some(_)) => {
                if cur.carried > 0 {
                    cur.carried -= 1;
                } else {
                    if let Some(s) = sample {
                        self.sync.reset_to(s);
                    }
                    self.distrust = true;
                    let mut theirs = Window::new(
                        Some(r),
                        self.local_end(r, now).unwrap_or(now + self.budget.window),
                    );
                    theirs.own = cur.own + self.prev.take().map_or(0, |p| p.own);
                    theirs.confirmed = true;
                    theirs.report(limit, remaining);
                    tracing::debug!("The server's rate-limit window is older than sluice thought; following the server's.");
                    cur = theirs;
                }
            }
        }
        self.cur = Some(cur);
    }

    /// The statistics; `roll` first, so that `cur` is the current window.
    fn stats(&self) -> GovernorStats {
        let limit = self.limit();
        let budget = self.budget.per_window(limit);
        let remaining = self.cur.map_or(budget, |cur| {
            let own = u64::from(budget.saturating_sub(cur.sent()));
            let known = self.limit.or(self.budget.known_limit());
            let room = cur.server_room(known, budget).unwrap_or(own).min(own);
            u32::try_from(room).unwrap_or(u32::MAX)
        });
        GovernorStats {
            sent: self.sent,
            rejected: self.rejected,
            limit,
            budget,
            remaining,
            waiting: self.queue.len,
        }
    }
}

/// Calls that may go at once after a quiet spell: 1 % of the budget, at least one. Small, so
/// calls are spread over the window rather than fired at its start.
fn burst(budget: u32) -> u32 {
    (budget / 100).max(1)
}

/// Our wall clock in µs since the Unix epoch.
fn wall_clock_us() -> Option<i64> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(d.as_micros()).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex as StdMutex;

    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn governor(limit_hint: u32, share: f64) -> Arc<Governor> {
        Arc::new(Governor::new(Budget {
            window: WINDOW,
            limit_hint,
            share,
        }))
    }

    /// Our clock since `t0`, in ms.
    fn ms_since(t0: Instant) -> u128 {
        Instant::now().duration_since(t0).as_millis()
    }

    /// Calls one server window counted.
    #[derive(Debug, Default, Clone, Copy)]
    struct Counts {
        ours: u32,
        others: u32,
        ours_429: u32,
        others_429: u32,
    }

    /// A server with fixed windows on its own clock (as Intercom and `sim::routes::pipeline`
    /// count): a call is counted, or refused with a 429, in the window it arrives in.
    struct Server {
        limit: u32,
        origin: Instant,
        /// The server's clock at `origin`, in ms since the epoch.
        base_ms: i64,
        /// The clock stands still at `base_ms`.
        frozen: bool,
        windows: BTreeMap<i64, Counts>,
    }

    /// What the server answered: limit, remaining, reset, date, and whether it was a 429.
    type Reply = (u64, u64, i64, i64, bool);

    impl Server {
        fn shared(limit: u32, base_ms: i64) -> Arc<StdMutex<Server>> {
            Arc::new(StdMutex::new(Server {
                limit,
                origin: Instant::now(),
                base_ms,
                frozen: false,
                windows: BTreeMap::new(),
            }))
        }

        fn hit(&mut self, ours: bool) -> Reply {
            let elapsed = Instant::now().duration_since(self.origin).as_millis() as i64;
            let now = self.base_ms + if self.frozen { 0 } else { elapsed };
            let start = now.div_euclid(10_000) * 10;
            let c = self.windows.entry(start).or_default();
            let ok = c.ours + c.others < self.limit;
            match (ok, ours) {
                (true, true) => c.ours += 1,
                (true, false) => c.others += 1,
                (false, true) => c.ours_429 += 1,
                (false, false) => c.others_429 += 1,
            }
            let remaining = self.limit - (c.ours + c.others);
            let limit = u64::from(self.limit);
            (
                limit,
                u64::from(remaining),
                start + 10,
                now.div_euclid(1000),
                !ok,
            )
        }
    }

    /// One of sluice's workers: acquire, a request with `one_way` latency each way, observe.
    async fn worker(
        gov: Arc<Governor>,
        server: Arc<StdMutex<Server>>,
        client: &'static str,
        one_way: Duration,
        until: Instant,
    ) {
        while Instant::now() < until {
            gov.acquire(client).await;
            tokio::time::sleep(one_way).await;
            let (limit, remaining, reset, date, refused) = server.lock().unwrap().hit(true);
            tokio::time::sleep(one_way).await;
            gov.observe(Some(limit), Some(remaining), Some(reset), Some(date));
            if refused {
                gov.rejected(Duration::from_secs((reset - date).max(1) as u64));
            }
        }
    }

    /// Another app of the workspace, ungoverned.
    #[derive(Debug, Clone, Copy)]
    enum Others {
        None,
        /// This many calls a window, evenly spread.
        Even(u32),
        /// This many calls a window, all in its last half second.
        AtTheEnd(u32),
    }

    async fn other_app(server: Arc<StdMutex<Server>>, others: Others, until: Instant) {
        let (per_window, at_the_end) = match others {
            Others::None => return,
            Others::Even(n) => (n, false),
            Others::AtTheEnd(n) => (n, true),
        };
        let mut next = Instant::now();
        while Instant::now() < until {
            if at_the_end {
                // 9.5 s into the server's next window, then one call a millisecond.
                let (base_ms, origin) = {
                    let s = server.lock().unwrap();
                    (s.base_ms, s.origin)
                };
                let server_ms = base_ms + Instant::now().duration_since(origin).as_millis() as i64;
                let to = (server_ms + 500).div_euclid(10_000) * 10_000 + 9_500 - server_ms;
                next = Instant::now() + Duration::from_millis(to as u64);
                for _ in 0..per_window {
                    tokio::time::sleep_until(next).await;
                    server.lock().unwrap().hit(false);
                    next += Duration::from_millis(1);
                }
            } else {
                next += WINDOW / per_window;
                tokio::time::sleep_until(next).await;
                server.lock().unwrap().hit(false);
            }
        }
    }

    /// Runs `workers` workers (and another app, if `others` > 0) for `secs` seconds against a
    /// server whose clock reads `base_ms` now; returns the counts of the windows that lay wholly
    /// inside the run, after the first.
    async fn run(
        gov: &Arc<Governor>,
        limit: u32,
        base_ms: i64,
        workers: usize,
        others: Others,
        secs: u64,
    ) -> Outcome {
        let server = Server::shared(limit, base_ms);
        let until = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for i in 0..workers {
            let client = ["backfill", "cli", "sync"][i % 3];
            let one_way = Duration::from_millis(50);
            tasks.push(tokio::spawn(worker(
                Arc::clone(gov),
                Arc::clone(&server),
                client,
                one_way,
                until,
            )));
        }
        tasks.push(tokio::spawn(other_app(Arc::clone(&server), others, until)));
        for t in tasks {
            t.await.unwrap();
        }
        let server = server.lock().unwrap();
        let first = base_ms.div_euclid(10_000) * 10 + 10;
        let last = (base_ms + secs as i64 * 1000).div_euclid(10_000) * 10 - 10;
        Outcome {
            all: server.windows.values().copied().collect(),
            full: server
                .windows
                .range(first + 10..=last)
                .map(|(_, c)| *c)
                .collect(),
        }
    }

    /// What the server counted in each window of a [`run`].
    #[derive(Debug)]
    struct Outcome {
        all: Vec<Counts>,
        /// The windows wholly inside the run, after the first.
        full: Vec<Counts>,
    }

    impl Outcome {
        fn assert_no_429s(&self) {
            let refused = |c: &Counts| c.ours_429 + c.others_429 > 0;
            assert!(!self.all.iter().any(refused), "429s: {self:#?}");
        }

        /// Asserts sluice sent at most `budget` and at least 95 % of it in every full window.
        fn assert_used(&self, budget: u32) {
            assert!(self.full.len() >= 3, "{self:#?}");
            assert!(
                self.all.iter().all(|c| c.ours <= budget),
                "over {budget}: {self:#?}"
            );
            for c in &self.full {
                assert!(c.ours <= budget, "over {budget}: {self:#?}");
                assert!(
                    c.ours * 100 >= budget * 95,
                    "under 95 % of {budget}: {self:#?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_calls_evenly_and_never_early() {
        // 100 calls per 10 s: one every 100 ms; a burst of one.
        let gov = governor(100, 1.0);
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..30 {
            gov.acquire("a").await;
            at.push(ms_since(t0));
        }
        for (i, t) in at.iter().enumerate() {
            assert_eq!(*t, i as u128 * 100, "call {i} at {t} ms: {at:?}");
        }
        // Concurrent callers are paced the same way.
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let gov = Arc::clone(&gov);
                tokio::spawn(async move {
                    gov.acquire("b").await;
                    ms_since(t0)
                })
            })
            .collect();
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort_unstable();
        assert_eq!(at, (1..=10).map(|i| i * 100).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_pace() {
        // 1,666 per 10 s: 16 may go at once, then one every 6 ms.
        let gov = governor(1666, 1.0);
        let t0 = Instant::now();
        for _ in 0..16 {
            gov.acquire("a").await;
        }
        assert_eq!(ms_since(t0), 0);
        for _ in 0..100 {
            gov.acquire("a").await;
        }
        let took = ms_since(t0);
        assert!(
            (590..=610).contains(&took),
            "100 paced calls took {took} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_budget_in_a_local_window() {
        // No rate-limit headers at all: windows are local, 20 calls each, at most.
        let gov = governor(20, 1.0);
        let t0 = Instant::now();
        let mut per_window = BTreeMap::<u128, u32>::new();
        for _ in 0..100 {
            gov.acquire("a").await;
            gov.observe(None, None, None, None);
            *per_window.entry(ms_since(t0) / 10_000).or_default() += 1;
        }
        assert!(per_window.values().all(|&n| n == 20), "{per_window:?}");
        assert_eq!(gov.stats().sent, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn uses_the_budget_without_429s_with_latency() {
        // The benchmark's case: 100 ms round trips, 1,666 calls per 10 s, 64 workers.
        let gov = governor(1000, 1.0);
        let base = 1_700_000_003_250; // the server's windows are not aligned with ours
        let outcome = run(&gov, 1666, base, 64, Others::None, 60).await;
        outcome.assert_no_429s();
        outcome.assert_used(1666);
        let stats = gov.stats();
        assert_eq!((stats.limit, stats.budget, stats.rejected), (1666, 1666, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_server_clock_ahead_of_or_behind_ours() {
        let wall = wall_clock_us().unwrap() / 1000;
        for skew_ms in [3_600_000 + 3_700, -86_400_000 - 6_150] {
            let gov = governor(1666, 1.0);
            let outcome = run(&gov, 1666, wall + skew_ms, 32, Others::None, 50).await;
            outcome.assert_no_429s();
            outcome.assert_used(1666);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_ends_when_the_servers_reset_says() {
        for date in [1_000_000_000, 4_000_000_000] {
            // 100 calls a window, paced 100 ms apart. The server says 4 remain (other apps
            // used the rest: one is kept as a margin) and the window resets 4 s from its
            // `Date`.
            let gov = governor(100, 1.0);
            gov.observe(Some(100), Some(4), Some(date + 4), Some(date));
            let t0 = Instant::now();
            let mut at = Vec::new();
            for i in 0..5 {
                gov.acquire("a").await;
                let ms = ms_since(t0);
                at.push(ms);
                let secs = (ms / 1000) as i64;
                let (remaining, reset) = if secs < 4 { (3 - i, 4) } else { (102 - i, 14) };
                gov.observe(
                    Some(100),
                    Some(remaining as u64),
                    Some(date + reset),
                    Some(date + secs),
                );
            }
            assert_eq!(at, [0, 100, 200, 4000, 4100]);
            assert_eq!(gov.stats().remaining, 98);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_date_sample_moves_the_end_earlier() {
        // The first `Date` came 900 ms into its second, so the end is first believed 900 ms
        // late; a response just after the next tick corrects it.
        let gov = governor(100, 1.0);
        gov.observe(Some(100), Some(0), Some(110), Some(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        gov.observe(Some(100), Some(0), Some(110), Some(101));
        let t0 = Instant::now();
        // The window ends 9.1 s after the first response, 9 s from now.
        gov.acquire("a").await;
        assert_eq!(ms_since(t0), 9_000);
    }

    #[tokio::test(start_paused = true)]
    async fn leaves_the_share_of_other_apps() {
        // The benchmark's second case: another app uses 30 % of the budget, share 0.7.
        let gov = governor(1666, 0.7);
        let outcome = run(&gov, 1666, 1_700_000_001_000, 64, Others::Even(499), 60).await;
        outcome.assert_no_429s();
        outcome.assert_used(1166);
        assert!(outcome.full.iter().all(|c| c.others == 499), "{outcome:#?}");
        // The same when the other app waits for the end of each window to make its calls.
        let gov = governor(1666, 0.7);
        let outcome = run(&gov, 1666, 1_700_000_001_000, 64, Others::AtTheEnd(499), 60).await;
        outcome.assert_no_429s();
        outcome.assert_used(1166);
        assert!(outcome.full.iter().all(|c| c.others == 499), "{outcome:#?}");
        assert_eq!(gov.stats().budget, 1166);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_way_when_other_apps_take_more_than_their_share() {
        // Another app takes 800 of 1,666 (more than its 30 %): sluice takes what is left.
        let gov = governor(1666, 0.7);
        let outcome = run(&gov, 1666, 1_700_000_000_500, 64, Others::Even(800), 60).await;
        for c in &outcome.all {
            assert_eq!(c.ours_429, 0, "{outcome:#?}");
        }
        for c in &outcome.full {
            assert!(c.ours >= 850, "{outcome:#?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_client_until_the_reset() {
        let gov = governor(100, 1.0);
        gov.acquire("a").await;
        gov.rejected(Duration::from_secs(3));
        let t0 = Instant::now();
        let tasks: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|c| {
                let gov = Arc::clone(&gov);
                tokio::spawn(async move {
                    gov.acquire(c).await;
                    ms_since(t0)
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap() >= 3000);
        }
        assert_eq!(gov.stats().rejected, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn clients_are_served_round_robin() {
        let gov = governor(100, 1.0);
        let order = Arc::new(StdMutex::new(Vec::new()));
        let spawn = |client: &'static str| {
            let (gov, order) = (Arc::clone(&gov), Arc::clone(&order));
            tokio::spawn(async move {
                gov.acquire(client).await;
                order.lock().unwrap().push(client);
            })
        };
        let mut tasks: Vec<_> = (0..100).map(|_| spawn("backfill")).collect();
        tokio::time::advance(Duration::from_millis(250)).await;
        let before = order.lock().unwrap().len();
        assert!(before < 10);
        tasks.extend((0..5).map(|_| spawn("webhook")));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let last_b = order.iter().rposition(|c| *c == "webhook").unwrap();
        assert!(last_b < before + 10, "{before} then {:?}", &order[before..]);
        assert_eq!(order.len(), 105);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_acquire_consumes_nothing_and_blocks_no_one() {
        let gov = governor(100, 1.0);
        gov.acquire("a").await;
        // The next call waits 100 ms; give up after 50: nothing is consumed.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), gov.acquire("a")).await;
        assert!(gave_up.is_err());
        assert_eq!((gov.stats().sent, gov.stats().waiting), (1, 0));
        // Many waiters; the head and some others are dropped; the rest go at the pace.
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let gov = Arc::clone(&gov);
                tokio::spawn(async move {
                    gov.acquire(if i % 2 == 0 { "a" } else { "b" }).await;
                    ms_since(t0)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gov.stats().waiting, 10);
        for i in [0, 1, 5, 8] {
            tasks[i].abort();
        }
        let mut done = Vec::new();
        for t in tasks {
            if let Ok(ms) = t.await {
                done.push(ms);
            }
        }
        done.sort_unstable();
        assert_eq!(done, [50, 150, 250, 350, 450, 550]);
        let stats = gov.stats();
        assert_eq!((stats.sent, stats.waiting), (7, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_fast_path_does_not_queue() {
        let gov = governor(1666, 1.0);
        gov.acquire("cli").await;
        let st = gov.lock();
        assert!(st.queue.by_client.is_empty() && st.queue.ring.is_empty());
        assert_eq!(st.queue.next_id, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_calls_across_the_edge_count_where_they_land() {
        // 1,000 calls a window, the window ends in 1 s. 10 calls go just before the edge, all
        // unanswered when it passes: the next window counts them until their responses say
        // where they landed (6 in the old window, 4 in the new).
        let gov = governor(1000, 1.0);
        let date = 1_000_000_000;
        gov.observe(Some(1000), Some(1000), Some(date + 1), Some(date));
        tokio::time::advance(Duration::from_millis(990)).await;
        for _ in 0..10 {
            gov.acquire("a").await;
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(gov.stats().remaining, 990);
        for _ in 0..6 {
            gov.observe(Some(1000), Some(990), Some(date + 1), Some(date));
        }
        assert_eq!(gov.stats().remaining, 996);
        for i in 0..4 {
            gov.observe(Some(1000), Some(999 - i), Some(date + 11), Some(date + 1));
        }
        assert_eq!(gov.stats().remaining, 996);
        let cur = gov.lock().cur.unwrap();
        assert_eq!((cur.carried, cur.own, cur.answered), (4, 0, 4));
    }

    /// 8 workers calling for 60 s (50 ms each way) a server whose clock stands still.
    async fn frozen_server_run(gov: &Arc<Governor>, limit: u32) -> Arc<StdMutex<Server>> {
        let server = Server::shared(limit, 1_000_000_000_000);
        server.lock().unwrap().frozen = true;
        let until = Instant::now() + Duration::from_secs(60);
        let one_way = Duration::from_millis(50);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(worker(
                    Arc::clone(gov),
                    Arc::clone(&server),
                    "a",
                    one_way,
                    until,
                ))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        server
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_whose_clock_stands_still() {
        // The simulator's frozen clock: the server's window never ends. sluice's guess that it
        // ended is proved wrong by the next response, and the window is kept open.
        let gov = governor(100, 1.0);
        let t0 = Instant::now();
        let server = frozen_server_run(&gov, 100).await;
        let server = server.lock().unwrap();
        let c = server.windows.values().next().unwrap();
        assert_eq!(server.windows.len(), 1);
        assert_eq!(c.ours, 100);
        // After the first early guess, one probe a window (a 429 that pauses sluice), not a
        // round trip's worth of calls.
        let windows = ms_since(t0) / 10_000;
        assert!(
            u128::from(gov.stats().rejected) <= windows + 2,
            "{c:?} in {windows} windows"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_whose_clock_stands_still_with_room_to_spare_is_not_starved() {
        // A frozen clock and a budget far above what is sent: calls must keep flowing after
        // sluice's own guess of the window's end, not one probe per window.
        let gov = governor(1_000_000, 1.0);
        let server = frozen_server_run(&gov, 1_000_000).await;
        let server = server.lock().unwrap();
        let c = server.windows.values().next().unwrap();
        assert_eq!(server.windows.len(), 1);
        // 8 workers, 100 ms a round trip, 60 s: about 4,800 calls; one probe a window would
        // be a handful.
        assert!(c.ours >= 4_000, "{c:?}");
        assert_eq!(c.ours_429, 0, "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_known_limit_the_servers_remaining_is_the_room() {
        // No `limit` in the connector and no `X-RateLimit-Limit`: the other apps' use cannot
        // be told, so the server's remaining is what counts, not a guess from the stand-in.
        let gov = Arc::new(Governor::new(Budget {
            window: WINDOW,
            limit_hint: UNKNOWN_LIMIT,
            share: 1.0,
        }));
        gov.acquire("a").await;
        gov.observe(None, Some(999), Some(2_000_000_010), Some(2_000_000_000));
        let t0 = Instant::now();
        for _ in 0..5 {
            gov.acquire("a").await;
        }
        assert!(ms_since(t0) < 100, "waited {} ms", ms_since(t0));
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_headers_neither_panic_nor_hang() {
        let gov = governor(100, 0.5);
        let values = [
            (
                Some(u64::MAX),
                Some(u64::MAX),
                Some(i64::MAX),
                Some(i64::MIN),
            ),
            (Some(0), Some(0), Some(i64::MIN), Some(i64::MAX)),
            (None, Some(7), Some(-5), None),
            (Some(3), None, Some(0), Some(253_402_300_799)),
        ];
        for (limit, remaining, reset, date) in values {
            gov.observe(limit, remaining, reset, date);
            for _ in 0..3 {
                let go = tokio::time::timeout(Duration::from_secs(7200), gov.acquire("a")).await;
                assert!(go.is_ok(), "{:?}", gov.stats());
            }
        }
        gov.rejected(Duration::MAX);
        let go = tokio::time::timeout(Duration::from_secs(7200), gov.acquire("a")).await;
        assert!(go.is_ok());
    }

    #[test]
    fn workspace_keys() {
        let a = WorkspaceKey::new("intercom", "https://api.intercom.io", Some("tok_secret_1"));
        let b = WorkspaceKey::new("intercom", "HTTPS://API.Intercom.io/", Some("tok_secret_1"));
        assert_eq!(a, b);
        assert_ne!(
            a,
            WorkspaceKey::new("intercom", "https://api.intercom.io", Some("tok_2"))
        );
        assert_ne!(
            a,
            WorkspaceKey::new("intercom", "https://api.intercom.io", None)
        );
        assert_ne!(
            a,
            WorkspaceKey::new(
                "intercom",
                "https://api.eu.intercom.io",
                Some("tok_secret_1")
            )
        );
        assert_ne!(
            a,
            WorkspaceKey::new("other", "https://api.intercom.io", Some("tok_secret_1"))
        );
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("tok_secret_1") && shown.contains("intercom"),
            "{shown}"
        );
        let with_user = WorkspaceKey::new("x", "https://me:pw_secret@host/v1", None);
        let shown = format!("{with_user:?}");
        assert!(
            !shown.contains("pw_secret") && shown.contains("https://***@host/v1"),
            "{shown}"
        );
    }

    #[test]
    fn one_governor_per_workspace() {
        let govs = Governors::new();
        let key = |t| WorkspaceKey::new("intercom", "https://api.intercom.io", Some(t));
        let budget = Budget {
            window: WINDOW,
            limit_hint: 1666,
            share: 0.8,
        };
        let a = govs.get_or_create(key("t1"), budget);
        let b = govs.get_or_create(
            key("t1"),
            Budget {
                share: 0.5,
                ..budget
            },
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &govs.get_or_create(key("t2"), budget)));
        // The stricter share wins.
        assert_eq!(a.stats().budget, 833);
        assert_eq!(govs.stats().len(), 2);
    }

    #[test]
    fn budgets() {
        let b = |share| Budget {
            window: Duration::from_millis(9_500),
            limit_hint: 0,
            share,
        };
        assert_eq!(b(0.7).per_window(1000), 700);
        assert_eq!(b(0.7).per_window(1666), 1166);
        assert_eq!(b(1.0).per_window(1666), 1666);
        assert_eq!(b(0.01).per_window(10), 1);
        let n = b(f64::NAN).normalized();
        assert_eq!((n.window, n.limit_hint, n.share), (WINDOW, 1, 1.0));
        assert_eq!(b(2.0).normalized().share, 1.0);
        let long = Budget {
            window: Duration::MAX,
            ..b(1.0)
        }
        .normalized();
        assert_eq!(long.window, Duration::from_secs(86_400));
    }
}
