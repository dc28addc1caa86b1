//! The scheduler: one task that keeps every recipe instance on its schedule.
//!
//! Owns the slot arithmetic (`every` aligned on the epoch, `cron` in its time zone, a fixed
//! jitter offset per instance), the timeline of next slots, and the rules of when a cycle
//! starts:
//!
//! * **Overlap.** A slot that comes while the instance's previous cycle (or other exclusive
//!   work: a replay, a reset, a run on demand) still runs is skipped and counted; an instance
//!   never runs twice at once.
//! * **Catch-up.** Slots skipped while a cycle ran long, or missed while sluice was down (the
//!   run history says which slot an instance last ran for), are made up by *one* cycle, at
//!   once: its cursor poll covers the gap. Never one cycle per missed slot.
//! * **Backoff.** After a failed cycle, slots are skipped (and counted) for `10 s × 2^(n−1)`
//!   (at most 10 min) after the `n`-th failure in a row; the next due slot after that runs.
//! * **Isolation.** A cycle is its own task; one that fails or panics ends only itself (a
//!   guard reports its end whatever happens).
//!
//! Wall time comes from a [`Clock`], sleeping from tokio's timer (so tests run on a paused
//! clock). Sleeps last at most a second, so a jump of the wall clock is noticed within one.
//! A jump forward makes the slots in between due (one cycle covers them); a step back (an
//! NTP correction, a VM restored from a snapshot) reschedules every instance from the new
//! time, so no schedule stalls until the clock is back where it was.
//! The scheduler never reads a spec or a file: reloads hand it compiled recipes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use crate::engine::{CycleOptions, CycleReport, Meter, Tick};
use crate::plan::{Recipe, Schedule, ScheduleKind};
use crate::runtime::Shutdown;

/// Wall-clock time, Unix milliseconds.
pub(crate) trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Starts a recipe's cycle on the current runtime.
pub(crate) type Launch =
    Arc<dyn Fn(Arc<Recipe>, CycleOptions) -> BoxFuture<'static, CycleReport> + Send + Sync>;

/// Work that needs an instance to itself (a replay, a reset, a cycle on demand): it runs
/// when no cycle of the instance does, and no slot starts one meanwhile. A cycle's report
/// comes back like a scheduled cycle's (metrics, last run, backoff).
pub(crate) type Work =
    Box<dyn FnOnce(Arc<Recipe>) -> BoxFuture<'static, Option<CycleReport>> + Send>;

/// The slot an instance last ran for, from the run history (`None`: never on a schedule).
pub(crate) type LastSlot = Arc<dyn Fn(&Recipe) -> Option<i64> + Send + Sync>;

/// What the scheduler is asked to do.
pub(crate) enum Command {
    /// Run these recipe versions from now on (a reload): new instances start, removed ones
    /// stop after their current cycle, the others keep their slots.
    Reload {
        recipes: Vec<Arc<Recipe>>,
        launch: Launch,
    },
    /// Run `work` on `instance` as soon as it is idle; `Err(work)` back when there is no
    /// such instance.
    Exclusive {
        instance: String,
        work: Work,
        refused: oneshot::Sender<Work>,
    },
    /// Pause (`true`) or resume an instance's slots; answers whether it exists.
    Pause {
        instance: String,
        paused: bool,
        reply: oneshot::Sender<bool>,
    },
    /// Hold an instance (`Some(why)`: a connection it uses cannot authenticate) or release
    /// it (`None`). Held, its slots are skipped and owed like a paused one's; released, one
    /// cycle catches up at once and the failures the hold caused are forgotten.
    Hold {
        instance: String,
        reason: Option<String>,
    },
    /// A snapshot of every instance.
    Status(oneshot::Sender<Vec<InstanceStatus>>),
}

/// One instance as the scheduler sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct InstanceStatus {
    /// `recipe@connection`.
    pub instance: String,
    /// The recipe id.
    pub recipe: String,
    /// The connection.
    pub connection: String,
    /// The schedule, for people.
    pub schedule: String,
    /// The next slot (Unix ms), jitter included.
    pub next_at_ms: Option<i64>,
    /// Whether a cycle (or other exclusive work) runs now.
    pub running: bool,
    /// Paused by a person.
    pub paused: bool,
    /// Held because a connection it uses cannot authenticate (revoked, no token): why.
    pub held: Option<String>,
    /// Failed cycles in a row.
    pub failures: u32,
    /// No slot runs before this (Unix ms), after failures.
    pub backoff_until_ms: Option<i64>,
    /// Slots skipped (overlap, backoff, pause) since the last run.
    pub owed: u32,
    /// The last finished cycle.
    pub last: Option<LastRun>,
    /// The running cycle's counts so far.
    pub progress: Option<crate::engine::MeterReading>,
}

/// What the last cycle of an instance came to.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LastRun {
    pub started_at_ms: i64,
    pub elapsed_ms: f64,
    pub fired: u64,
    pub dead_letters: u64,
    pub cursor_after: Option<i64>,
    pub error: Option<String>,
}

/// Backoff after the `n`-th failed cycle in a row: `10 s × 2^(n−1)`, at most 10 minutes.
pub(crate) fn backoff_ms(failures: u32) -> i64 {
    if failures == 0 {
        return 0;
    }
    (10_000i64 << (failures - 1).min(16)).min(600_000)
}

/// The instance's fixed offset within `jitter_ms`: a hash of its name, so it is the same
/// after every restart (slots stay where they were) and differs between instances.
pub(crate) fn jitter_offset(instance: &str, jitter_ms: u64) -> i64 {
    if jitter_ms == 0 {
        return 0;
    }
    // FNV-1a: stable across processes and versions (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % jitter_ms) as i64
}

/// An instance's slots: its schedule shifted by its jitter offset.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    schedule: Schedule,
    offset: i64,
}

/// At most this many slots are counted in one gap (a long downtime on a seconds schedule).
const MAX_COUNTED: u32 = 1_000_000;

impl Slots {
    pub(crate) fn new(recipe: &Recipe) -> Slots {
        Slots::of(&recipe.instance, &recipe.schedule)
    }

    pub(crate) fn of(instance: &str, schedule: &Schedule) -> Slots {
        Slots {
            offset: jitter_offset(instance, schedule.jitter_ms),
            schedule: schedule.clone(),
        }
    }

    /// The first slot strictly after `t`.
    pub(crate) fn next_after(&self, t: i64) -> Option<i64> {
        self.schedule
            .next_after(t - self.offset)
            .map(|s| s + self.offset)
    }

    /// The slots in `(after, through]`: how many and the last one (`(0, None)` when none).
    pub(crate) fn between(&self, after: i64, through: i64) -> (u32, Option<i64>) {
        if through <= after {
            return (0, None);
        }
        if let ScheduleKind::Every(secs) = self.schedule.kind {
            let p = (secs as i64).saturating_mul(1000).max(1);
            let k = |t: i64| (t - self.offset).div_euclid(p);
            let n = (k(through) - k(after)).clamp(0, i64::from(MAX_COUNTED)) as u32;
            return (n, (n > 0).then(|| k(through) * p + self.offset));
        }
        let (mut n, mut last, mut t) = (0u32, None, after);
        while let Some(s) = self.next_after(t).filter(|s| *s <= through) {
            n += 1;
            last = Some(s);
            t = s;
            if n >= MAX_COUNTED {
                break;
            }
        }
        (n, last)
    }
}

struct Entry {
    recipe: Arc<Recipe>,
    slots: Slots,
    /// The next slot; `None` when the schedule has no more.
    next: Option<i64>,
    running: bool,
    paused: bool,
    /// Held while a connection it uses cannot authenticate: why.
    held: Option<String>,
    /// Slots skipped since the last run and the latest of them: the next run covers them.
    owed: u32,
    owed_last: i64,
    failures: u32,
    backoff_until: i64,
    /// Exclusive work waiting for the running cycle.
    waiting: VecDeque<Work>,
    last: Option<LastRun>,
    meter: Option<Arc<Meter>>,
    /// Removed by a reload while running: dropped when its cycle ends.
    removed: bool,
}

/// A finished cycle or piece of work, sent by a guard whatever ends the task.
struct Done {
    instance: String,
    report: Option<CycleReport>,
}

struct DoneGuard {
    tx: mpsc::UnboundedSender<Done>,
    done: Option<Done>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = self.tx.send(d);
        }
    }
}

/// The scheduler task's state.
pub(crate) struct Scheduler {
    clock: Arc<dyn Clock>,
    entries: HashMap<String, Entry>,
    /// `(next slot, instance)`, earliest first.
    timeline: BTreeSet<(i64, String)>,
    launch: Launch,
    last_slot: LastSlot,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Instances that ended a cycle owing slots: caught up after due slots fire (a slot due
    /// as the cycle ends takes the owed ones along).
    catch_ups: Vec<String>,
    stopping: bool,
    /// The wall clock when last read (a step back is noticed against it).
    last_now: i64,
}

/// The longest sleep: a jump of the wall clock is noticed within this.
const MAX_SLEEP_MS: i64 = 1000;

/// The wall clock going back by more than this is a step back (see [`Scheduler::stepped_back`]).
const STEP_BACK_MS: i64 = 1000;

impl Scheduler {
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        launch: Launch,
        last_slot: LastSlot,
        shutdown: Shutdown,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Scheduler {
            clock,
            entries: HashMap::new(),
            timeline: BTreeSet::new(),
            launch,
            last_slot,
            shutdown,
            metrics,
            done_tx,
            done_rx,
            catch_ups: Vec::new(),
            stopping: false,
            last_now: i64::MIN,
        }
    }

    /// Runs until the shutdown is requested and every cycle under way has ended.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let now = self.clock.now_ms();
            let wake = self
                .timeline
                .first()
                .map_or(now + MAX_SLEEP_MS, |(t, _)| *t);
            let nap = Duration::from_millis((wake - now).clamp(0, MAX_SLEEP_MS) as u64);
            tokio::select! {
                biased;
                _ = shutdown.requested(), if !self.stopping => {
                    self.stopping = true;
                    tracing::info!(running = self.running(), "No new cycles start; waiting for those under way.");
                }
                Some(done) = self.done_rx.recv() => self.finished(done),
                cmd = commands.recv() => match cmd {
                    Some(c) if self.stopping => self.refuse(c),
                    Some(c) => self.command(c),
                    None => self.stopping = true,
                },
                _ = tokio::time::sleep(nap), if !self.stopping => {}
            }
            if self.stopping {
                if self.running() == 0 {
                    return;
                }
                continue;
            }
            let now = self.clock.now_ms();
            if now < self.last_now.saturating_sub(STEP_BACK_MS) {
                self.stepped_back(now);
            }
            self.last_now = now;
            self.fire_due(now);
            self.catch_up(now);
        }
    }

    /// Starts one cycle for each instance that ended a cycle owing slots (unless a due slot
    /// already started one).
    fn catch_up(&mut self, now: i64) {
        for name in std::mem::take(&mut self.catch_ups) {
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            if e.running
                || e.removed
                || e.paused
                || e.held.is_some()
                || e.owed == 0
                || now < e.backoff_until
            {
                continue;
            }
            let tick = Tick {
                at_ms: e.owed_last,
                slots: e.owed,
            };
            e.owed = 0;
            self.metrics.catch_up(&name);
            self.start_cycle(&name, tick);
        }
    }

    /// The wall clock went back to `now`: every next slot is taken again from `now` (slots
    /// past `now` were computed from a time that has not come yet, and waiting for them
    /// would stall each schedule by the step), and a backoff ends no later than it would
    /// have from `now`. A slot may so be covered twice; each cycle is a cursor poll, so
    /// nothing fires twice.
    fn stepped_back(&mut self, now: i64) {
        tracing::warn!(
            by_ms = self.last_now.saturating_sub(now),
            "The wall clock stepped back: every schedule continues from the new time."
        );
        for (name, e) in &mut self.entries {
            if e.removed {
                // Ends with its cycle; it has no slot to take again.
                continue;
            }
            if let Some(n) = e.next {
                self.timeline.remove(&(n, name.clone()));
            }
            e.next = e.slots.next_after(now);
            if let Some(n) = e.next {
                self.timeline.insert((n, name.clone()));
            }
            if e.failures > 0 {
                e.backoff_until = e
                    .backoff_until
                    .min(now.saturating_add(backoff_ms(e.failures)));
            }
        }
    }

    fn running(&self) -> usize {
        self.entries.values().filter(|e| e.running).count()
    }

    /// While stopping: status is still answered; nothing new starts.
    fn refuse(&mut self, c: Command) {
        match c {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Exclusive { work, refused, .. } => {
                let _ = refused.send(work);
            }
            Command::Pause { reply, .. } => {
                let _ = reply.send(false);
            }
            Command::Reload { .. } | Command::Hold { .. } => {}
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Reload { recipes, launch } => self.reload(recipes, launch),
            Command::Exclusive {
                instance,
                work,
                refused,
            } => match self.entries.get_mut(&instance) {
                Some(e) if !e.removed => {
                    if e.running {
                        e.waiting.push_back(work);
                    } else {
                        self.start_work(&instance, work);
                    }
                }
                _ => {
                    let _ = refused.send(work);
                }
            },
            Command::Pause {
                instance,
                paused,
                reply,
            } => {
                let found = match self.entries.get_mut(&instance) {
                    Some(e) if !e.removed => {
                        e.paused = paused;
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(found);
            }
            Command::Hold { instance, reason } => {
                let Some(e) = self.entries.get_mut(&instance) else {
                    return;
                };
                let released = e.held.is_some() && reason.is_none();
                if reason.is_some() && e.held.is_none() {
                    tracing::warn!(instance = %instance, "Held: a connection it uses cannot authenticate; its slots wait.");
                }
                e.held = reason;
                if released {
                    // The failures were the revoked token's; the cursor did not move, so one
                    // cycle now picks up everything since.
                    e.failures = 0;
                    e.backoff_until = 0;
                    e.owed = e.owed.max(1);
                    if e.owed_last == 0 {
                        e.owed_last = self.clock.now_ms();
                    }
                    tracing::info!(instance = %instance, "Released: its connection authenticates again; catching up.");
                    self.catch_ups.push(instance);
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn status(&self) -> Vec<InstanceStatus> {
        let mut out: Vec<InstanceStatus> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.removed)
            .map(|(name, e)| InstanceStatus {
                instance: name.clone(),
                recipe: e.recipe.id.clone(),
                connection: e.recipe.connection.clone(),
                schedule: e.recipe.schedule.describe(),
                next_at_ms: e.next,
                running: e.running,
                paused: e.paused,
                held: e.held.clone(),
                failures: e.failures,
                backoff_until_ms: (e.failures > 0).then_some(e.backoff_until),
                owed: e.owed,
                last: e.last.clone(),
                progress: e.meter.as_ref().filter(|_| e.running).map(|m| m.read()),
            })
            .collect();
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        out
    }

    fn reload(&mut self, recipes: Vec<Arc<Recipe>>, launch: Launch) {
        self.launch = launch;
        let now = self.clock.now_ms();
        let mut keep = std::collections::HashSet::new();
        for r in recipes {
            let name = r.instance.clone();
            keep.insert(name.clone());
            match self.entries.get_mut(&name) {
                Some(e) => {
                    if e.removed {
                        // Its series went with the removal.
                        self.metrics.register(&r);
                    }
                    e.removed = false;
                    let rescheduled =
                        e.recipe.schedule != r.schedule || e.slots.offset != Slots::new(&r).offset;
                    if e.recipe.trigger_id != r.trigger_id {
                        tracing::warn!(instance = %name, "The recipe's trigger changed: its state (cursor, dedupe keys) is kept; `sluice state reset --recipe {}` starts it afresh.", r.id);
                    }
                    e.recipe = r;
                    // Rescheduled, or removed and back before its last cycle ended.
                    if rescheduled || e.next.is_none() {
                        e.slots = Slots::new(&e.recipe);
                        let next = e.slots.next_after(now);
                        if let Some(old) = e.next {
                            self.timeline.remove(&(old, name.clone()));
                        }
                        e.next = next;
                        if let Some(n) = next {
                            self.timeline.insert((n, name));
                        }
                    }
                }
                None => self.add(r, now),
            }
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            if let Some(n) = e.next.take() {
                self.timeline.remove(&(n, name.clone()));
            }
            if e.running {
                e.removed = true;
            } else {
                self.entries.remove(&name);
            }
            self.metrics.forget(&name);
            tracing::info!(instance = %name, "Recipe removed: it stops after its current cycle.");
        }
    }

    /// A new instance: its next slot, or a catch-up at once when it missed slots while
    /// sluice was down.
    fn add(&mut self, recipe: Arc<Recipe>, now: i64) {
        let name = recipe.instance.clone();
        let slots = Slots::new(&recipe);
        let (missed, latest) = match (self.last_slot)(&recipe) {
            Some(last) => slots.between(last, now),
            None => (0, None),
        };
        let next = slots.next_after(now);
        self.metrics.register(&recipe);
        self.entries.insert(
            name.clone(),
            Entry {
                recipe,
                slots,
                next,
                running: false,
                paused: false,
                held: None,
                owed: 0,
                owed_last: 0,
                failures: 0,
                backoff_until: 0,
                waiting: VecDeque::new(),
                last: None,
                meter: None,
                removed: false,
            },
        );
        if let Some(n) = next {
            self.timeline.insert((n, name.clone()));
        }
        if let Some(latest) = latest {
            tracing::info!(instance = %name, missed, "Catching up on slots missed while sluice was down: one cycle now.");
            self.metrics.catch_up(&name);
            self.start_cycle(
                &name,
                Tick {
                    at_ms: latest,
                    slots: missed,
                },
            );
        }
    }

    fn fire_due(&mut self, now: i64) {
        while let Some((t, name)) = self.timeline.first().cloned() {
            if t > now {
                break;
            }
            self.timeline.remove(&(t, name.clone()));
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            // Every slot from this one through now is due; a sleep cut short by a paused
            // process or a clock jump may have let several pass.
            let (n, latest) = e.slots.between(t - 1, now);
            let latest = latest.unwrap_or(t);
            let n = n.max(1);
            e.next = e.slots.next_after(latest.max(now));
            if let Some(next) = e.next {
                self.timeline.insert((next, name.clone()));
            }
            let reason = if e.paused || e.held.is_some() {
                Some("paused")
            } else if e.running {
                Some("overlap")
            } else if now < e.backoff_until {
                Some("backoff")
            } else {
                None
            };
            if let Some(reason) = reason {
                e.owed = e.owed.saturating_add(n);
                e.owed_last = latest;
                self.metrics.skipped(&name, reason, n);
                continue;
            }
            let slots = n.saturating_add(e.owed);
            e.owed = 0;
            self.metrics.tick(&name, now - latest);
            self.start_cycle(
                &name,
                Tick {
                    at_ms: latest,
                    slots,
                },
            );
        }
    }

    fn start_cycle(&mut self, name: &str, tick: Tick) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        let meter = Arc::new(Meter::default());
        e.running = true;
        e.meter = Some(meter.clone());
        let opts = CycleOptions {
            shutdown: self.shutdown.clone(),
            tick: Some(tick),
            meter: Some(meter),
        };
        let cycle = (self.launch)(e.recipe.clone(), opts);
        // A cycle that panics ends as a failed one (its guard reports this).
        let mut guard = DoneGuard {
            tx: self.done_tx.clone(),
            done: Some(Done {
                instance: name.to_string(),
                report: Some(CycleReport {
                    recipe: e.recipe.id.clone(),
                    error: Some("the cycle panicked (a bug: see the log)".into()),
                    ..CycleReport::default()
                }),
            }),
        };
        tokio::spawn(async move {
            let report = cycle.await;
            if let Some(d) = guard.done.as_mut() {
                d.report = Some(report);
            }
        });
    }

    fn start_work(&mut self, name: &str, work: Work) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.running = true;
        e.meter = None;
        let fut = work(e.recipe.clone());
        let mut guard = DoneGuard {
            tx: self.done_tx.clone(),
            done: Some(Done {
                instance: name.to_string(),
                report: None,
            }),
        };
        tokio::spawn(async move {
            let report = fut.await;
            if let Some(d) = guard.done.as_mut() {
                d.report = report;
            }
        });
    }

    fn finished(&mut self, done: Done) {
        let now = self.clock.now_ms();
        let Some(e) = self.entries.get_mut(&done.instance) else {
            return;
        };
        e.running = false;
        e.meter = None;
        if let Some(rep) = &done.report {
            if rep.error.is_some() {
                e.failures += 1;
                e.backoff_until = now + backoff_ms(e.failures);
            } else {
                e.failures = 0;
                e.backoff_until = 0;
            }
            e.last = Some(LastRun {
                started_at_ms: rep.started_at_ms,
                elapsed_ms: rep.elapsed_ms,
                fired: rep.fired,
                dead_letters: rep.dead_letters,
                cursor_after: rep.cursor_after,
                error: rep.error.clone(),
            });
            if !e.removed {
                self.metrics
                    .cycle(&done.instance, rep, e.failures, backoff_ms(e.failures));
            }
        }
        if e.removed {
            self.entries.remove(&done.instance);
            return;
        }
        if let Some(work) = e.waiting.pop_front() {
            if !self.stopping {
                self.start_work(&done.instance, work);
            }
            return;
        }
        // Slots skipped while it ran: one cycle covers them all, at once.
        if e.owed > 0 {
            self.catch_ups.push(done.instance);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ScheduleKind;

    use std::sync::Mutex;

    /// Wall time that moves with tokio's (paused) clock, plus a step set by the test.
    struct TokioClock {
        wall0: i64,
        t0: tokio::time::Instant,
        step: std::sync::atomic::AtomicI64,
    }

    impl Clock for TokioClock {
        fn now_ms(&self) -> i64 {
            self.wall0
                + self.t0.elapsed().as_millis() as i64
                + self.step.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A second past a whole minute: slots of `every: 10s` fall on whole ten seconds.
    const WALL0: i64 = 1_800_000_001_000;

    fn recipes(specs: &[(&str, &str)]) -> Vec<Arc<Recipe>> {
        let connectors = crate::plan::load_connectors_from(None).expect("built-in connector");
        let config = "connections:\n  intercom:\n    connector: intercom\n    base_url: http://127.0.0.1:9\n    token: t\n";
        let files = specs
            .iter()
            .map(|(id, schedule)| {
                (
                    std::path::PathBuf::from(format!("{id}.yaml")),
                    format!("id: {id}\nconnection: intercom\ntrigger: intercom.new_contact\nschedule: {schedule}\nsteps:\n  - id: out\n    action: emit\n    with: {{value: x}}\n"),
                )
            })
            .collect();
        crate::plan::build(crate::plan::Sources {
            connectors,
            config: Some(("sluice.yaml".into(), config.into())),
            connection_files: Vec::new(),
            recipes: files,
            env: &|_| None,
            secrets: crate::plan::Secrets::Required,
        })
        .map_err(|d| format!("{d:?}"))
        .expect("recipes build")
        .recipes
    }

    /// One started cycle: instance, slot, slots covered, when it started (wall ms).
    type Started = (String, i64, u32, i64);

    /// A scheduler whose cycles take `work` (per recipe id, default 0) and fail when the
    /// id is in `failing`; what started is recorded.
    struct Harness {
        started: Arc<Mutex<Vec<Started>>>,
        running: Arc<Mutex<HashMap<String, usize>>>,
        clock: Arc<TokioClock>,
        metrics: Arc<Metrics>,
        stop: crate::runtime::ShutdownTrigger,
        tx: mpsc::Sender<Command>,
        task: tokio::task::JoinHandle<()>,
    }

    fn fake_launch(
        clock: Arc<TokioClock>,
        started: Arc<Mutex<Vec<Started>>>,
        running: Arc<Mutex<HashMap<String, usize>>>,
        work: HashMap<String, Duration>,
        failing: Vec<String>,
    ) -> Launch {
        Arc::new(move |recipe: Arc<Recipe>, opts: CycleOptions| {
            let tick = opts.tick.expect("scheduled cycles carry their slot");
            let now = clock.now_ms();
            started
                .lock()
                .unwrap()
                .push((recipe.instance.clone(), tick.at_ms, tick.slots, now));
            let n = {
                let mut r = running.lock().unwrap();
                let n = r.entry(recipe.instance.clone()).or_default();
                *n += 1;
                *n
            };
            assert_eq!(n, 1, "two cycles of {} at once", recipe.instance);
            let d = work.get(&recipe.id).copied().unwrap_or_default();
            let fail = failing.contains(&recipe.id);
            let running = running.clone();
            Box::pin(async move {
                tokio::time::sleep(d).await;
                *running.lock().unwrap().get_mut(&recipe.instance).unwrap() -= 1;
                CycleReport {
                    recipe: recipe.id.clone(),
                    error: fail.then(|| "the API is down".to_string()),
                    ..CycleReport::default()
                }
            })
        })
    }

    impl Harness {
        async fn start(
            specs: &[(&str, &str)],
            work: &[(&str, u64)],
            failing: &[&str],
            last_slot: Option<i64>,
        ) -> Harness {
            let clock = Arc::new(TokioClock {
                wall0: WALL0,
                t0: tokio::time::Instant::now(),
                step: Default::default(),
            });
            let started = Arc::new(Mutex::new(Vec::new()));
            let running = Arc::new(Mutex::new(HashMap::new()));
            let work: HashMap<String, Duration> = work
                .iter()
                .map(|(id, s)| (id.to_string(), Duration::from_secs(*s)))
                .collect();
            let failing: Vec<String> = failing.iter().map(|s| s.to_string()).collect();
            let launch = fake_launch(
                clock.clone(),
                started.clone(),
                running.clone(),
                work,
                failing,
            );
            let (stop, shutdown) = crate::runtime::shutdown_channel();
            let metrics = Arc::new(Metrics::new());
            let sched = Scheduler::new(
                clock.clone(),
                launch.clone(),
                Arc::new(move |_: &Recipe| last_slot),
                shutdown,
                metrics.clone(),
            );
            let (tx, rx) = mpsc::channel(16);
            let task = tokio::spawn(sched.run(rx));
            tx.send(Command::Reload {
                recipes: recipes(specs),
                launch,
            })
            .await
            .unwrap();
            Harness {
                started,
                running,
                clock,
                metrics,
                stop,
                tx,
                task,
            }
        }

        /// Reloads with recipes `specs`, whose cycles take no time and succeed.
        async fn reload(&self, specs: &[(&str, &str)]) {
            let launch = fake_launch(
                self.clock.clone(),
                self.started.clone(),
                self.running.clone(),
                HashMap::new(),
                vec![],
            );
            self.tx
                .send(Command::Reload {
                    recipes: recipes(specs),
                    launch,
                })
                .await
                .unwrap();
        }

        fn started(&self) -> Vec<Started> {
            self.started.lock().unwrap().clone()
        }

        fn metric(&self, line_start: &str) -> f64 {
            let text = self.metrics.encode(Default::default());
            text.lines()
                .find(|l| l.starts_with(line_start))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no `{line_start}` in:\n{text}"))
        }

        async fn stop(self) {
            self.stop.trigger();
            self.task.await.unwrap();
            assert!(self.running.lock().unwrap().values().all(|n| *n == 0));
        }
    }

    async fn wait(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn slots_fire_on_time_once_each() {
        let h = Harness::start(
            &[("a", "{every: 10s}"), ("b", "{cron: '*/15 * * * * *'}")],
            &[],
            &[],
            None,
        )
        .await;
        wait(45).await;
        let a: Vec<(i64, u32, i64)> = h
            .started()
            .into_iter()
            .filter(|s| s.0 == "a@intercom")
            .map(|s| (s.1 - WALL0, s.2, s.3 - s.1))
            .collect();
        // 1 s past a whole ten: slots at +9 s, +19 s, +29 s, +39 s, each once, on time.
        assert_eq!(
            a,
            vec![
                (9_000, 1, 0),
                (19_000, 1, 0),
                (29_000, 1, 0),
                (39_000, 1, 0)
            ]
        );
        let b: Vec<i64> = h
            .started()
            .into_iter()
            .filter(|s| s.0 == "b@intercom")
            .map(|s| s.1 - WALL0)
            .collect();
        // Seconds 0, 15, 30, 45 of each minute (WALL0 is at second 1 of a minute… of UTC).
        let first = b[0];
        assert!(b.windows(2).all(|w| w[1] - w[0] == 15_000), "{b:?}");
        assert_eq!(
            chrono::DateTime::from_timestamp_millis(WALL0 + first)
                .unwrap()
                .timestamp()
                % 15,
            0
        );
        assert_eq!(
            h.metric("sluice_tick_lateness_seconds_count{recipe=\"a\""),
            4.0
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_cycle_skips_slots_then_one_cycle_catches_up() {
        // Cycles take 25 s on a 10 s schedule.
        let h = Harness::start(&[("slow", "{every: 10s}")], &[("slow", 25)], &[], None).await;
        wait(70).await;
        let s: Vec<(i64, u32, i64)> = h
            .started()
            .into_iter()
            .map(|s| (s.1 - WALL0, s.2, s.3 - WALL0))
            .collect();
        // +9 runs to +34 (slots +19, +29 skipped); one catch-up at +34 covers both and runs
        // to +59 (+39, +49 skipped); the slot of +59 covers those two and itself.
        assert_eq!(
            s,
            vec![(9_000, 1, 9_000), (29_000, 2, 34_000), (59_000, 3, 59_000)]
        );
        // +19, +29, +39, +49 and +69 were skipped; +59 came as the cycle ended and took
        // the two before it along.
        assert_eq!(
            h.metric("sluice_ticks_skipped_total{recipe=\"slow\",connection=\"intercom\",reason=\"overlap\"}"),
            5.0
        );
        assert_eq!(
            h.metric("sluice_catch_up_cycles_total{recipe=\"slow\""),
            1.0
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn slots_missed_while_paused_make_one_cycle() {
        let h = Harness::start(&[("a", "{every: 10s}")], &[], &[], None).await;
        wait(10).await;
        assert_eq!(h.started().len(), 1);
        // The process stands still (SIGSTOP, a suspended laptop) for 100 s: the wall clock
        // jumps; every slot in between is due at once.
        tokio::time::advance(Duration::from_secs(100)).await;
        wait(1).await;
        let s = h.started();
        assert_eq!(s.len(), 2, "{s:?}");
        let (_, slot, slots, _) = s[1];
        assert_eq!((slot - WALL0, slots), (109_000, 10));
        wait(10).await;
        assert_eq!(h.started().len(), 3);
        assert_eq!(h.started()[2].2, 1);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_stepped_back_does_not_stall_the_schedules() {
        let h = Harness::start(&[("a", "{every: 10s}")], &[], &[], None).await;
        wait(25).await;
        assert_eq!(h.started().len(), 2, "slots 9 s and 19 s after the start");
        // An hour back: the next slot is the one after the new time, not an hour away.
        h.clock
            .step
            .store(-3_600_000, std::sync::atomic::Ordering::Relaxed);
        wait(10).await;
        let s = h.started();
        assert_eq!(s.len(), 3, "{s:?}");
        let (_, slot, slots, at) = s[2];
        assert_eq!(slots, 1);
        assert_eq!(slot % 10_000, 0, "on the instance's grid: {slot}");
        assert!(
            slot <= at && at - slot < 1_000,
            "on time: {slot} started at {at}"
        );
        assert!(slot < WALL0, "from the new time: {slot}");
        wait(10).await;
        assert_eq!(h.started().len(), 4);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_catches_up_on_slots_missed_while_down() {
        // The history says the last run was for the slot an hour before start.
        let last = WALL0 - 1_000 - 3_600_000;
        let h = Harness::start(&[("a", "{every: 10m}")], &[], &[], Some(last)).await;
        wait(1).await;
        let s = h.started();
        assert_eq!(s.len(), 1, "one catch-up at once, not six");
        assert_eq!((s[0].1, s[0].2, s[0].3), (WALL0 - 1_000, 6, WALL0));
        h.stop().await;
        // Ran for the latest slot already: nothing until the next.
        let h = Harness::start(&[("a", "{every: 10m}")], &[], &[], Some(WALL0 - 1_000)).await;
        wait(1).await;
        assert!(h.started().is_empty());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_the_next_run_covers_the_skipped_slots() {
        let h = Harness::start(&[("bad", "{every: 1s}")], &[], &["bad"], None).await;
        wait(40).await;
        let s: Vec<(i64, u32)> = h
            .started()
            .into_iter()
            .map(|s| (s.3 - WALL0, s.2))
            .collect();
        // Fails at +1 → 10 s off; +11 covers 10 slots → 20 s off; +31 covers 20.
        assert_eq!(s, vec![(1_000, 1), (11_000, 10), (31_000, 20)]);
        assert_eq!(
            h.metric("sluice_recipe_consecutive_failures{recipe=\"bad\""),
            3.0
        );
        assert_eq!(
            h.metric("sluice_recipe_backoff_seconds{recipe=\"bad\""),
            40.0
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reloads_keep_slots_reschedule_add_and_remove() {
        let h = Harness::start(
            &[("a", "{every: 10s}"), ("b", "{every: 10s}")],
            &[("b", 5)],
            &[],
            None,
        )
        .await;
        wait(10).await;
        let at_reload = h.clock.now_ms();
        // `a` changes schedule, `b` is removed mid-cycle, `c` is new.
        h.reload(&[("a", "{every: 4s}"), ("c", "{every: 10s}")])
            .await;
        wait(20).await;
        let after: Vec<(String, i64)> = h
            .started()
            .into_iter()
            .filter(|s| s.3 >= at_reload)
            .map(|s| (s.0, s.1 - WALL0))
            .collect();
        assert!(after.iter().all(|(i, _)| i != "b@intercom"), "{after:?}");
        let a: Vec<i64> = after
            .iter()
            .filter(|(i, _)| i == "a@intercom")
            .map(|x| x.1)
            .collect();
        assert_eq!(a, vec![11_000, 15_000, 19_000, 23_000, 27_000]);
        let c: Vec<i64> = after
            .iter()
            .filter(|(i, _)| i == "c@intercom")
            .map(|x| x.1)
            .collect();
        assert_eq!(c, vec![19_000, 29_000]);
        // `b`'s cycle under way at the reload finished (nothing left running).
        assert_eq!(h.running.lock().unwrap().get("b@intercom"), Some(&0));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipe_removed_and_back_during_its_cycle_keeps_its_slots() {
        let h = Harness::start(&[("b", "{every: 10s}")], &[("b", 5)], &[], None).await;
        wait(10).await; // b's cycle of +9 runs until +14
        for specs in [&[][..], &[("b", "{every: 10s}")][..]] {
            h.reload(specs).await;
        }
        wait(20).await;
        let slots: Vec<i64> = h.started().iter().map(|s| s.1 - WALL0).collect();
        assert_eq!(slots, vec![9_000, 19_000, 29_000]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipe_removed_during_its_cycle_stays_removed_when_the_clock_steps_back() {
        let h = Harness::start(
            &[("b", "{every: 10s}"), ("keep", "{every: 10s}")],
            &[("b", 30)],
            &[],
            None,
        )
        .await;
        wait(10).await; // b's cycle of +9 runs until +39
        h.reload(&[("keep", "{every: 10s}")]).await;
        wait(1).await;
        h.clock
            .step
            .store(-3_600_000, std::sync::atomic::Ordering::Relaxed);
        wait(30).await;
        let b = h.started().iter().filter(|s| s.0.starts_with("b@")).count();
        assert_eq!(
            b,
            1,
            "only the cycle under way at the removal: {:?}",
            h.started()
        );
        let keep = h
            .started()
            .iter()
            .filter(|s| s.0.starts_with("keep@"))
            .count();
        assert_eq!(keep, 4, "{:?}", h.started());
        // Its metrics went with it and stay gone (no skipped slot is counted for it).
        let text = h.metrics.encode(Default::default());
        assert!(!text.contains("b@intercom"), "{text}");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn exclusive_work_waits_for_the_cycle_and_a_panic_frees_the_instance() {
        let h = Harness::start(&[("slow", "{every: 10s}")], &[("slow", 5)], &[], None).await;
        wait(10).await; // the cycle of +9 runs until +14
        let (tx, rx) = oneshot::channel();
        let (refused, _r) = oneshot::channel();
        let clock = h.clock.clone();
        h.tx.send(Command::Exclusive {
            instance: "slow@intercom".into(),
            work: Box::new(move |_| {
                Box::pin(async move {
                    let _ = tx.send(clock.now_ms());
                    panic!("work that panics");
                    #[allow(unreachable_code)]
                    None
                })
            }),
            refused,
        })
        .await
        .unwrap();
        let ran_at = rx.await.unwrap();
        assert_eq!(ran_at - WALL0, 14_000, "after the cycle, not during it");
        wait(16).await;
        // The panic did not leave the instance marked as running: its slots still run.
        assert!(h.started().iter().any(|s| s.1 - WALL0 == 29_000));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_ticks_at_once_and_waits_for_cycles() {
        let h = Harness::start(&[("slow", "{every: 10s}")], &[("slow", 30)], &[], None).await;
        wait(10).await;
        let before = h.started().len();
        let t = tokio::time::Instant::now();
        h.stop.trigger();
        let task = h.task;
        task.await.unwrap();
        // It waited for the cycle under way (till +39) and started nothing new.
        assert_eq!(t.elapsed(), Duration::from_secs(29));
        assert_eq!(h.started.lock().unwrap().len(), before);
    }

    #[test]
    fn every_slots_are_aligned_and_counted() {
        let s = Slots {
            schedule: Schedule {
                kind: ScheduleKind::Every(10),
                jitter_ms: 0,
            },
            offset: 0,
        };
        assert_eq!(s.next_after(0), Some(10_000));
        assert_eq!(s.next_after(9_999), Some(10_000));
        assert_eq!(s.next_after(10_000), Some(20_000));
        assert_eq!(s.between(10_000, 45_000), (3, Some(40_000)));
        assert_eq!(s.between(10_000, 19_999), (0, None));
        let j = Slots {
            offset: 2_500,
            ..s.clone()
        };
        assert_eq!(j.next_after(0), Some(2_500));
        assert_eq!(j.next_after(2_500), Some(12_500));
        assert_eq!(j.between(0, 32_500), (4, Some(32_500)));
    }

    #[test]
    fn jitter_offsets_are_stable_and_spread() {
        assert_eq!(jitter_offset("a@x", 0), 0);
        let a = jitter_offset("a@x", 60_000);
        assert_eq!(a, jitter_offset("a@x", 60_000));
        assert!((0..60_000).contains(&a));
        let distinct: std::collections::HashSet<i64> = (0..1000)
            .map(|i| jitter_offset(&format!("r{i}@c"), 60_000) / 1000)
            .collect();
        // 1,000 instances over 60 one-second buckets: every bucket is used.
        assert_eq!(distinct.len(), 60);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_ms(0), 0);
        assert_eq!(backoff_ms(1), 10_000);
        assert_eq!(backoff_ms(2), 20_000);
        assert_eq!(backoff_ms(6), 320_000);
        assert_eq!(backoff_ms(7), 600_000);
        assert_eq!(backoff_ms(40), 600_000);
    }
}
