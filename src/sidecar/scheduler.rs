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
/// when no cycle of the instance does, and no slot starts one meanwhile.
pub(crate) type Work = Box<dyn FnOnce(Arc<Recipe>) -> BoxFuture<'static, ()> + Send>;

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
        Slots {
            offset: jitter_offset(&recipe.instance, recipe.schedule.jitter_ms),
            schedule: recipe.schedule.clone(),
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
    stopping: bool,
}

/// The longest sleep: a jump of the wall clock is noticed within this.
const MAX_SLEEP_MS: i64 = 1000;

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
            stopping: false,
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
                cmd = commands.recv(), if !self.stopping => match cmd {
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
            self.fire_due(self.clock.now_ms());
        }
    }

    fn running(&self) -> usize {
        self.entries.values().filter(|e| e.running).count()
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
                    e.removed = false;
                    let rescheduled =
                        e.recipe.schedule != r.schedule || e.slots.offset != Slots::new(&r).offset;
                    if e.recipe.trigger_id != r.trigger_id {
                        tracing::warn!(instance = %name, "The recipe's trigger changed: its state (cursor, dedupe keys) is kept; `sluice state reset --recipe {}` starts it afresh.", r.id);
                    }
                    e.recipe = r;
                    if rescheduled {
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
            let reason = if e.paused {
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
        let mut guard = DoneGuard {
            tx: self.done_tx.clone(),
            done: Some(Done {
                instance: name.to_string(),
                report: None,
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
        let guard = DoneGuard {
            tx: self.done_tx.clone(),
            done: Some(Done {
                instance: name.to_string(),
                report: None,
            }),
        };
        tokio::spawn(async move {
            fut.await;
            drop(guard);
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
        // Slots skipped while it ran: one cycle now covers them all.
        if e.owed > 0 && !e.paused && now >= e.backoff_until && !self.stopping {
            let tick = Tick {
                at_ms: e.owed_last,
                slots: e.owed,
            };
            e.owed = 0;
            self.metrics.catch_up(&done.instance);
            self.start_cycle(&done.instance, tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ScheduleKind;

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
