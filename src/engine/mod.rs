//! Engine: one cycle of one recipe instance. The only place that orders load cursor → poll →
//! dedupe → run chains → commit.
//!
//! A cycle first resumes records left in the run journal (a crash, `on_error: retry`, a
//! replayed dead letter), then polls the trigger from `cursor − lookback` (never before the
//! recipe's `start_from`) up to the cycle's start on the server's clock, skips records whose
//! dedupe key was handled, and runs up to `concurrency` records' chains at once while the
//! trigger already fetches the next page. Steps of one record run in order
//! (`chain::run_chain`); two versions of one record never run at once. Every
//! [`COMMIT_EVERY`] (or [`COMMIT_MAX_RECORDS`] records, and at the end) one atomic batch
//! stores the dedupe keys of the finished records (succeeded, filtered out, or ended as dead
//! letters), their dead letters and the new cursor, which never passes a record whose chain
//! is unfinished or in flight and never moves back. Each finished HTTP step is journaled (and
//! fsynced) before the next one starts, so after a crash only the steps in flight can run
//! again. `emit` lines are flushed before each journal write and commit.
//!
//! A cycle is a `Send + 'static` future ([`run_cycle`] takes `Arc`s) and takes a [`Shutdown`]:
//! once it is requested the cycle takes no new record, lets the chains in flight finish their
//! steps (or stay journaled), commits and returns.
//!
//! Records stay JSON text ([`Record`]) unless a template needs them: a chain parses its record
//! the first time a filter, condition or templated input reads it.

pub(crate) mod chain;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tracing::Instrument;

use crate::history::{Hourly, RecordRun, RunId, StepRun};
use crate::plan::{Recipe, StartFrom};
use crate::record::Record;
use crate::runtime::{Runtime, Shutdown};
use crate::store::{Checkpoint, Commit, DeadLetter, Known};
use crate::trigger::{id_of, Poll};
use chain::{passes_filter, run_chain, Chain, Live, Outcome, Tally};

/// Dedupe keys are kept this long beyond the lookback before pruning.
pub const PRUNE_MARGIN_SECS: i64 = 3600;
/// At most this many dedupe keys are pruned per cycle (a backfill's backlog goes over several).
pub const PRUNE_MAX_PER_CYCLE: usize = 5_000;
/// Finished records are committed at least this often…
pub const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// …and whenever this many are pending.
pub const COMMIT_MAX_RECORDS: usize = 1_000;

/// What one cycle did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CycleReport {
    /// Recipe id.
    pub recipe: String,
    /// The recipe instance (`recipe@connection`).
    pub instance: String,
    /// Records the trigger returned (at or after the poll's start).
    pub polled: u64,
    /// Records skipped because their dedupe key was already handled.
    pub skipped_seen: u64,
    /// Records the filter stopped.
    pub filtered: u64,
    /// Records whose chain ran (new, or resumed from the journal).
    pub fired: u64,
    /// Of those, resumed from the journal.
    pub resumed: u64,
    /// Chains that finished successfully.
    pub finished: u64,
    /// Steps that succeeded.
    pub steps_ok: u64,
    /// Steps that failed.
    pub steps_failed: u64,
    /// Of those, by class.
    pub step_failures: crate::failure::ByClass,
    /// Steps skipped (`if` false or `on_error: skip`).
    pub steps_skipped: u64,
    /// Records that ended as dead letters.
    pub dead_letters: u64,
    /// Records left unfinished for the next cycle.
    pub unfinished: u64,
    /// Cursor before the cycle.
    pub cursor_before: Option<i64>,
    /// Cursor after the cycle.
    pub cursor_after: Option<i64>,
    /// Dedupe keys pruned.
    pub pruned: u64,
    /// Why the cycle stopped early, if it did.
    pub error: Option<String>,
    /// Whether a shutdown request ended it before the poll was done.
    pub interrupted: bool,
    /// How long the cycle took, in milliseconds.
    pub elapsed_ms: f64,
    /// When it started (Unix milliseconds, local clock).
    pub started_at_ms: i64,
    /// The schedule slot it ran for (Unix milliseconds), when a schedule started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at_ms: Option<i64>,
    /// Its run in the history (`START_MS-ID`), when it was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `scheduled`, `on_demand` (run by a person: `run --once`, "run now") or `replay`.
    pub kind: String,
    /// Requests it sent (every attempt counts).
    pub calls: u64,
    /// 429 answers it got.
    pub rate_limited: u64,
    /// How many schedule slots it covers: 1, or more when it catches up on slots missed
    /// while sluice was down or the previous cycle ran long (0: not scheduled).
    #[serde(skip_serializing_if = "is_zero")]
    pub slots: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a cycle is run: what asks it to stop, the schedule slot it serves, where it shows its
/// progress.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    /// Stops it (see [`Shutdown`]).
    pub shutdown: Shutdown,
    /// The schedule slot, when a schedule started it.
    pub tick: Option<Tick>,
    /// Where its running counts go, for progress output.
    pub meter: Option<Arc<Meter>>,
}

impl CycleOptions {
    /// A cycle that `shutdown` stops, with no schedule slot and no meter.
    pub fn new(shutdown: Shutdown) -> CycleOptions {
        CycleOptions {
            shutdown,
            tick: None,
            meter: None,
        }
    }
}

/// The schedule slot a cycle runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The slot's time (Unix milliseconds).
    pub at_ms: i64,
    /// How many slots the cycle covers (at least 1).
    pub slots: u32,
}

/// A running cycle's counts, published as it goes (once per page and at each commit), for
/// progress bars and progress lines. Readers see a recent, consistent-enough view.
#[derive(Debug, Default)]
pub struct Meter {
    polled: AtomicU64,
    fired: AtomicU64,
    finished: AtomicU64,
    dead: AtomicU64,
    cursor: AtomicI64,
}

/// A [`Meter`]'s reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MeterReading {
    /// Records polled so far.
    pub polled: u64,
    /// Chains started.
    pub fired: u64,
    /// Chains finished.
    pub finished: u64,
    /// Dead letters.
    pub dead: u64,
    /// The committed cursor (Unix seconds; 0 before the first commit).
    pub cursor: i64,
}

impl Meter {
    fn publish(&self, rep: &CycleReport, cursor: i64) {
        self.polled.store(rep.polled, Relaxed);
        self.fired.store(rep.fired, Relaxed);
        self.finished.store(rep.finished, Relaxed);
        self.dead.store(rep.dead_letters, Relaxed);
        self.cursor.store(cursor, Relaxed);
    }

    /// What the cycle has done so far.
    pub fn read(&self) -> MeterReading {
        MeterReading {
            polled: self.polled.load(Relaxed),
            fired: self.fired.load(Relaxed),
            finished: self.finished.load(Relaxed),
            dead: self.dead.load(Relaxed),
            cursor: self.cursor.load(Relaxed),
        }
    }
}

/// A cycle running longer than this logs its progress, and again each time this passes.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// What a cycle has decided so far about the records it saw, and so where the cursor may go.
struct Progress {
    /// Finished since the last commit: (dedupe key, cursor value, has a journal entry).
    finished: Vec<(String, i64, bool)>,
    /// Dead letters since the last commit.
    dead: Vec<DeadLetter>,
    /// Largest cursor value of a finished (or already handled) record.
    max_done: i64,
    /// Smallest cursor value of an unfinished record: the cursor must not pass it.
    min_open: Option<i64>,
    /// Cursor values of the chains in flight (value → how many): the cursor must not pass
    /// the smallest.
    in_flight: BTreeMap<i64, usize>,
    /// The cursor when the cycle began.
    start: i64,
    /// Why the cycle must stop, if it must.
    abort: Option<String>,
    /// When the last commit was made.
    committed_at: Instant,
}

impl Progress {
    fn new(cursor: i64) -> Progress {
        Progress {
            finished: Vec::new(),
            dead: Vec::new(),
            max_done: cursor,
            min_open: None,
            in_flight: BTreeMap::new(),
            start: cursor,
            abort: None,
            committed_at: Instant::now(),
        }
    }

    /// A record handled in an earlier cycle or page.
    fn seen(&mut self, ts: i64) {
        self.max_done = self.max_done.max(ts);
    }

    fn finish(&mut self, key: String, ts: i64, journaled: bool) {
        self.seen(ts);
        self.finished.push((key, ts, journaled));
    }

    fn hold(&mut self, ts: i64) {
        self.min_open = Some(self.min_open.map_or(ts, |m| m.min(ts)));
    }

    /// An unfinished record. It holds the cursor unless it is in the journal and already
    /// behind the cursor (a replayed dead letter): the journal resumes it every cycle, and
    /// holding would pin the cursor, and so the poll window, until it finishes.
    fn open(&mut self, ts: i64, journaled: bool) {
        if !(journaled && ts < self.start) {
            self.hold(ts);
        }
    }

    /// Records a chain's outcome; true when the record stays unfinished.
    fn outcome(&mut self, o: Outcome, key: String, ts: i64, journaled: bool) -> bool {
        match o {
            Outcome::Finished => self.finish(key, ts, journaled),
            Outcome::Dead(d) => {
                self.finish(key, ts, journaled);
                self.dead.push(*d);
            }
            Outcome::Unfinished(_) => {
                self.open(ts, journaled);
                return true;
            }
            Outcome::Abort(m) => {
                self.open(ts, journaled);
                // Chains in flight may abort too: the first reason is the one reported.
                self.abort.get_or_insert(m);
                return true;
            }
        }
        false
    }

    /// A chain starts: until it ends, the cursor stays at or before its record.
    fn start(&mut self, ts: i64) {
        *self.in_flight.entry(ts).or_default() += 1;
    }

    /// A chain ended (its outcome is recorded separately).
    fn end(&mut self, ts: i64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.in_flight.entry(ts) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// The cursor: past every finished record, never past an unfinished one or one whose
    /// chain is in flight.
    fn cursor(&self) -> i64 {
        let mut c = self.max_done;
        if let Some(u) = self.min_open {
            c = c.min(u);
        }
        if let Some((&f, _)) = self.in_flight.first_key_value() {
            c = c.min(f);
        }
        c
    }

    /// Whether enough is pending (or enough time has passed) to commit.
    fn due(&self) -> bool {
        self.finished.len() >= COMMIT_MAX_RECORDS
            || self.committed_at.elapsed() >= COMMIT_EVERY
            || self.abort.is_some()
    }

    /// Commits what is pending (emit lines first), keeping the cursor bounds. Dedupe keys
    /// already behind the pruning bound of the new cursor are not written.
    /// `expected`: the checkpoint stored now (what the cycle loaded, or its last commit
    /// wrote); the store refuses the commit if another writer changed it.
    /// `known`: for a scan, the records to remember as listed (in the same batch).
    fn commit(
        &mut self,
        rt: &Runtime,
        recipe: &Recipe,
        expected: Option<Checkpoint>,
        cp: &Checkpoint,
        known: Option<HashMap<String, Known>>,
    ) -> Result<()> {
        rt.emitter().flush()?;
        let store = rt.store()?;
        durably(|| {
            store.commit(
                namespace(recipe),
                &Commit {
                    expected,
                    checkpoint: *cp,
                    finished: &self.finished,
                    dead: &self.dead,
                    keep_from: prune_bound(recipe, cp.cursor),
                    known: known.as_ref(),
                },
            )
        })?;
        self.finished.clear();
        self.dead.clear();
        self.committed_at = Instant::now();
        Ok(())
    }
}

/// Runs a store write that waits for the disk (an fsync) without holding up the other tasks
/// of a multi-threaded runtime (the sidecar's scheduler and the other recipes' cycles): the
/// worker hands its other tasks to another thread meanwhile.
pub(crate) fn durably<T>(write: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}

/// Dedupe keys of records older than this are never needed again: the next poll starts at
/// `cursor − lookback` and the cursor never moves back (see [`Cycle::commit`]).
fn prune_bound(recipe: &Recipe, cursor: i64) -> i64 {
    cursor
        .saturating_sub(recipe.trigger().lookback_secs)
        .saturating_sub(PRUNE_MARGIN_SECS)
}

/// A record a scan has not listed for this long is forgotten (the known records stay bounded
/// by what the API lists plus what it stopped listing within this time).
pub const KNOWN_ABSENT_SECS: i64 = 30 * 86_400;

/// Chains of one recipe in flight at once, unless the recipe says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// The state namespace of a recipe instance (`recipe@connection`): the one place that
/// decides where a recipe's cursor, dedupe keys, journal, known ids and history live.
pub fn namespace(recipe: &Recipe) -> &str {
    &recipe.instance
}

impl CycleReport {
    /// Adds another cycle's counts to these (totals over several cycles); its error, if any,
    /// becomes this one's.
    pub fn absorb(&mut self, other: &CycleReport) {
        self.polled += other.polled;
        self.skipped_seen += other.skipped_seen;
        self.filtered += other.filtered;
        self.fired += other.fired;
        self.resumed += other.resumed;
        self.finished += other.finished;
        self.steps_ok += other.steps_ok;
        self.steps_failed += other.steps_failed;
        self.step_failures.add(&other.step_failures);
        self.steps_skipped += other.steps_skipped;
        self.dead_letters += other.dead_letters;
        self.unfinished += other.unfinished;
        self.pruned += other.pruned;
        if other.error.is_some() {
            self.error.clone_from(&other.error);
        }
    }

    fn add(&mut self, t: Tally) {
        self.finished += t.finished;
        self.steps_ok += t.steps_ok;
        self.steps_failed += t.steps_failed;
        self.step_failures.add(&t.failed_by_class);
        self.steps_skipped += t.steps_skipped;
        self.dead_letters += t.dead_letters;
        self.unfinished += t.unfinished;
    }
}

/// Runs one cycle of `recipe` and reports it. Errors are reported in the result, never
/// panicked; the cursor stays where the last commit put it. Spawnable: it owns what it uses.
/// A cycle running longer than [`PROGRESS_EVERY`] logs its progress (records, rate, cursor).
pub fn run_cycle(
    rt: Arc<Runtime>,
    recipe: Arc<Recipe>,
    opts: CycleOptions,
) -> impl Future<Output = CycleReport> + Send + 'static {
    let id = next_cycle_id();
    let span = tracing::info_span!(parent: None, "recipe", recipe = %recipe.id);
    let span = tracing::info_span!(parent: &span, "cycle", cycle = id);
    let caller = Arc::new(crate::http::Caller {
        name: namespace(&recipe).to_string(),
        ..Default::default()
    });
    let counts = caller.clone();
    let cycle = async move {
        let started = Instant::now();
        let started_ms = chrono::Utc::now().timestamp_millis();
        let run = new_run(&rt, started_ms);
        let mut rep = CycleReport {
            recipe: recipe.id.clone(),
            instance: recipe.instance.clone(),
            started_at_ms: started_ms,
            scheduled_at_ms: opts.tick.map(|t| t.at_ms),
            slots: opts.tick.map_or(0, |t| t.slots),
            kind: if opts.tick.is_some() {
                "scheduled"
            } else {
                "on_demand"
            }
            .into(),
            run: run.map(|r| r.to_string()),
            ..CycleReport::default()
        };
        let meter = opts.meter.clone().unwrap_or_default();
        let mut trail = Trail::new(run, &recipe, rt.plan().retention.max_records_per_run);
        let work = cycle(&rt, &recipe, &opts.shutdown, &meter, &mut rep, &mut trail);
        let result = with_progress_log(work, &meter, started).await;
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), "Cycle stopped early; the cursor stays at the last committed record.");
            rep.error = Some(format!("{e:#}"));
        }
        let _ = rt.emitter().flush();
        rep.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        rep.calls = counts.calls.load(Relaxed);
        rep.rate_limited = counts.rate_limited.load(Relaxed);
        // What it did to each record, then one row for the cycle.
        if let Err(e) = trail.flush(&rt, namespace(&recipe)) {
            tracing::warn!(error = %format!("{e:#}"), "The run's records could not be kept in the run history.");
        }
        keep_run(&rt, &recipe, run, &rep);
        rep
    };
    // The recipe instance is the rate governor's client: fair shares between recipes.
    crate::http::CLIENT.scope(caller, cycle).instrument(span)
}

/// Runs `work`, logging the meter's reading every [`PROGRESS_EVERY`] while it runs.
async fn with_progress_log<T>(work: impl Future<Output = T>, meter: &Meter, started: Instant) -> T {
    let mut work = std::pin::pin!(work);
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = every.tick() => {
                let m = meter.read();
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    polled = m.polled,
                    fired = m.fired,
                    finished = m.finished,
                    dead_letters = m.dead,
                    records_per_sec = (m.polled as f64 / secs).round(),
                    cursor = %fmt_cursor(m.cursor),
                    "Cycle still running."
                );
            }
        }
    }
}

/// A cursor (Unix seconds) as a UTC time, `-` when unset.
pub fn fmt_cursor(ts: i64) -> String {
    match chrono::DateTime::from_timestamp(ts, 0) {
        Some(d) if ts > 0 => d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        _ => "-".into(),
    }
}

/// Cycle ids, for logs: unique within the process.
fn next_cycle_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Resumes the records in `recipe`'s journal without polling (`dead-letters replay`): the
/// report, and why it stopped early if it did.
/// It is kept in the run history as a run of kind `replay`.
pub async fn resume(rt: &Runtime, recipe: &Recipe) -> (CycleReport, Result<()>) {
    let started = Instant::now();
    let started_ms = chrono::Utc::now().timestamp_millis();
    let run = new_run(rt, started_ms);
    let mut rep = CycleReport {
        recipe: recipe.id.clone(),
        instance: recipe.instance.clone(),
        started_at_ms: started_ms,
        kind: "replay".into(),
        run: run.map(|r| r.to_string()),
        ..CycleReport::default()
    };
    let now = rt.conn(recipe.conn).server_now().await;
    let exec = Live {
        rt,
        ns: namespace(recipe),
        shutdown: None,
    };
    let mut trail = Trail::new(run, recipe, rt.plan().retention.max_records_per_run);
    let caller = Arc::new(crate::http::Caller {
        name: namespace(recipe).to_string(),
        ..Default::default()
    });
    let res = crate::http::CLIENT
        .scope(
            caller.clone(),
            resume_journal(rt, recipe, &exec, now, &mut rep, &mut trail),
        )
        .await
        .map(|_| ());
    rep.calls = caller.calls.load(Relaxed);
    rep.rate_limited = caller.rate_limited.load(Relaxed);
    let _ = rt.emitter().flush();
    if let Err(e) = &res {
        rep.error = Some(format!("{e:#}"));
    }
    rep.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    keep_run(rt, recipe, run, &rep);
    (rep, res)
}

/// A new run id for the history (`None` without a store, or when the store cannot give one:
/// the run then goes unrecorded rather than failing).
fn new_run(rt: &Runtime, started_ms: i64) -> Option<RunId> {
    let id = rt.store().ok()?.next_id().ok()?;
    Some(RunId { started_ms, id })
}

/// Keeps a run's report in the history; a failure to write it does not undo the run.
fn keep_run(rt: &Runtime, recipe: &Recipe, run: Option<RunId>, rep: &CycleReport) {
    let (Some(run), Ok(store), Ok(json)) = (run, rt.store(), serde_json::to_string(rep)) else {
        return;
    };
    let hour = Hourly {
        cycles: 1,
        fired: rep.fired,
        failed: rep.dead_letters + u64::from(rep.error.is_some()),
    };
    if let Err(e) = store.record_cycle(namespace(recipe), run, &json, hour) {
        tracing::warn!(error = %format!("{e:#}"), "The run could not be kept in the run history.");
    }
}

/// Resumes every record in the journal (after a crash, `retry`, or a dead-letter replay),
/// without polling. Part of every cycle. Returns the checkpoint as stored (`None` on a first
/// run), the checkpoint to work from, the smallest cursor value of a record still
/// unfinished, and the keys still in the journal. The cursor does not move here: resumed
/// records can only hold it back.
async fn resume_journal(
    rt: &Runtime,
    recipe: &Recipe,
    exec: &Live<'_>,
    now: i64,
    rep: &mut CycleReport,
    trail: &mut Trail,
) -> Result<(Checkpoint, Option<i64>, HashSet<String>)> {
    let store = rt.store()?;
    let ns = namespace(recipe);
    // State kept under the bare recipe id (before instances) becomes the instance's, once;
    // only a recipe for one connection can say whose it was.
    if recipe.single && store.adopt_legacy(&recipe.id, ns)? {
        tracing::info!(recipe = %recipe.id, instance = ns, "Moved the recipe's state to its instance.");
    }
    let stored = store.checkpoint(ns)?;
    rep.cursor_before = stored.map(|c| c.cursor);
    let mut cp = stored.unwrap_or_else(|| {
        let floor = match recipe.start_from {
            StartFrom::Now => now,
            StartFrom::At(t) => t,
        };
        Checkpoint {
            cursor: floor,
            floor,
            high: floor,
        }
    });
    let mut entries = store.journal_entries(ns)?;
    entries.sort_by_key(|(_, e)| e.ts);
    let mut open = HashSet::new();
    let mut progress = Progress::new(cp.cursor);
    for (key, entry) in entries {
        if progress.abort.is_some() {
            progress.open(entry.ts, true);
            open.insert(key);
            continue;
        }
        rep.fired += 1;
        rep.resumed += 1;
        let ts = entry.ts;
        let mut chain = Some(Chain {
            raw: entry.record,
            scope: None,
            ts,
            done: entry.done,
            attempts: entry.attempts,
            journaled: true,
        });
        let mut tally = Tally::default();
        let mut trace = Vec::new();
        let outcome = run_chain(recipe, exec, &key, &mut chain, now, &mut tally, &mut trace)
            .instrument(tracing::info_span!("record", key = %key))
            .await?;
        rep.add(tally);
        trail.note(&key, &outcome, trace);
        if progress.outcome(outcome, key.clone(), ts, true) {
            open.insert(key);
        }
    }
    cp.high = cp.high.max(progress.max_done);
    // On success the store holds the returned checkpoint: the cycle's next commit expects it.
    if !progress.finished.is_empty() || !progress.dead.is_empty() || stored != Some(cp) {
        progress.commit(rt, recipe, stored, &cp, None)?;
    }
    trail.flush(rt, ns)?;
    if let Some(m) = progress.abort {
        return Err(anyhow!(m));
    }
    Ok((cp, progress.min_open, open))
}

/// What a chain in flight comes back with.
struct Done {
    key: String,
    id: Option<String>,
    ts: i64,
    late: bool,
    journaled: bool,
    outcome: Result<Outcome>,
    tally: Tally,
    trace: Vec<StepRun>,
}

/// A run's history rows for its fired records: gathered as chains end, written (without an
/// fsync) with each commit; at most `max` per run. A recipe whose steps are all `emit` keeps
/// rows only for records that did not finish: a finished one's output is its emitted line,
/// and the per-record path of such recipes (100,000 records/s) stays free of the writes.
pub(crate) struct Trail {
    run: Option<RunId>,
    rows: Vec<RecordRun>,
    next: u32,
    max: usize,
    finished_too: bool,
}

impl Trail {
    fn new(run: Option<RunId>, recipe: &Recipe, max: usize) -> Trail {
        Trail {
            run,
            rows: Vec::new(),
            next: 0,
            max,
            finished_too: recipe.steps.iter().any(|s| s.action().is_some()),
        }
    }

    fn note(&mut self, key: &str, outcome: &Outcome, steps: Vec<StepRun>) {
        if self.run.is_none() || self.next as usize + self.rows.len() >= self.max {
            return;
        }
        if !self.finished_too && matches!(outcome, Outcome::Finished) {
            return;
        }
        let (outcome, error) = match outcome {
            Outcome::Finished => ("finished", None),
            Outcome::Dead(d) => ("dead", Some(d.error.clone())),
            Outcome::Unfinished(m) | Outcome::Abort(m) => ("unfinished", Some(m.clone())),
        };
        self.rows.push(RecordRun {
            key: key.to_string(),
            outcome: outcome.into(),
            steps,
            error,
        });
    }

    fn flush(&mut self, rt: &Runtime, ns: &str) -> Result<()> {
        let Some(run) = self.run else {
            return Ok(());
        };
        if self.rows.is_empty() {
            return Ok(());
        }
        rt.store()?.record_runs(ns, run, self.next, &self.rows)?;
        self.next += self.rows.len() as u32;
        self.rows.clear();
        Ok(())
    }
}

/// Runs one record's chain and says what it came to.
async fn run_one(
    recipe: &Recipe,
    exec: &Live<'_>,
    now: i64,
    key: String,
    id: Option<String>,
    late: bool,
    chain: Chain,
) -> Done {
    let ts = chain.ts;
    let mut tally = Tally::default();
    let mut chain = Some(chain);
    let mut trace = Vec::new();
    let outcome = run_chain(recipe, exec, &key, &mut chain, now, &mut tally, &mut trace).await;
    let journaled = chain.as_ref().is_some_and(|c| c.journaled);
    Done {
        key,
        id,
        ts,
        late,
        journaled,
        outcome,
        tally,
        trace,
    }
}

type Running<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send + 'a>>>;

/// The poll part of a cycle: what it has decided, the state it checks records against, and
/// the chains in flight.
struct Cycle<'a> {
    rt: &'a Runtime,
    recipe: &'a Recipe,
    exec: &'a Live<'a>,
    /// The cycle's "now" on the server's clock.
    now: i64,
    cp: Checkpoint,
    progress: Progress,
    /// Keys still in the journal (resumed or left unfinished): never started again here.
    open: HashSet<String>,
    /// Keys of handled records (loaded from the store, plus those finished since) with their
    /// cursor values; those behind the pruning bound are dropped at each commit.
    handled: HashMap<String, i64>,
    /// Ids of a scan's late arrivals taken care of in this cycle.
    late_done: HashSet<String>,
    /// For a scan: the records to remember as listed, written with the last commit.
    known: Option<HashMap<String, Known>>,
    running: Running<'a>,
    /// Keys and record ids of the chains in flight.
    running_keys: HashSet<String>,
    running_ids: HashSet<String>,
    /// At most this many chains in flight.
    concurrency: usize,
    /// Whether a chain sends requests (else it runs to the end without waiting).
    io: bool,
    shutdown: &'a Shutdown,
    /// The run history rows of the records that ended.
    trail: &'a mut Trail,
}

impl<'a> Cycle<'a> {
    /// Dedupes one polled record and starts its chain (waiting while `concurrency` chains
    /// are in flight, or one for the same record).
    async fn admit(&mut self, record: Record, rep: &mut CycleReport) -> Result<()> {
        let recipe = self.recipe;
        let trigger = recipe.trigger();
        rep.polled += 1;
        let ts = record.ts;
        if ts < self.cp.floor && !record.late {
            return Ok(());
        }
        let key = trigger
            .dedupe_key
            .render(record.fields())
            .map_err(|m| anyhow!("a record cannot be keyed: {m}"))?;
        let late = record.late;
        // The record's id serves a late arrival's bookkeeping and, with requests, keeping two
        // versions of one record apart: not read otherwise (the hot path of `emit` recipes).
        let id = (late || self.io)
            .then(|| id_of(trigger, record.fields()))
            .flatten();
        // A late arrival (see `Record::late`) taken care of is noted, so the next scan knows it.
        let taken_care_of = |cy: &mut Cycle<'a>| {
            if let (true, Some(id)) = (late, &id) {
                cy.late_done.insert(id.clone());
            }
        };
        if self.open.contains(&key) || self.running_keys.contains(&key) {
            taken_care_of(self);
            return Ok(());
        }
        if self.handled.contains_key(&key) {
            // Handled before: finished, so the cursor may move past it.
            rep.skipped_seen += 1;
            self.progress.seen(ts);
            taken_care_of(self);
            return Ok(());
        }
        let mut chain = Chain::new(record.into_raw(), ts);
        match passes_filter(recipe, &mut chain) {
            Ok(true) => {}
            Ok(false) => {
                rep.filtered += 1;
                self.handled.insert(key.clone(), ts);
                self.progress.finish(key, ts, false);
                taken_care_of(self);
                return Ok(());
            }
            Err(f) => {
                rep.dead_letters += 1;
                let dead = chain.into_dead(recipe, &key, "filter", f, self.now);
                self.handled.insert(key.clone(), ts);
                self.progress.outcome(Outcome::Dead(dead), key, ts, false);
                taken_care_of(self);
                return Ok(());
            }
        }
        // Two versions of one record never run at once; at most `concurrency` chains.
        while self.running.len() >= self.concurrency
            || id.as_ref().is_some_and(|i| self.running_ids.contains(i))
        {
            let Some(d) = self.running.next().await else {
                break;
            };
            self.complete(d, rep)?;
        }
        if self.progress.abort.is_some() || self.shutdown.is_requested() {
            // A chain in flight stopped the cycle, or a shutdown came while this record
            // waited: it must wait for the next cycle.
            self.progress.hold(ts);
            return Ok(());
        }
        rep.fired += 1;
        if !self.io {
            // A chain without a request (only `emit`s) never waits: run it here, without the
            // machinery of chains in flight.
            self.progress.start(ts);
            let done = run_one(self.recipe, self.exec, self.now, key, id, late, chain).await;
            return self.complete(done, rep);
        }
        self.start(key, id, late, chain);
        Ok(())
    }

    fn start(&mut self, key: String, id: Option<String>, late: bool, chain: Chain) {
        let (recipe, exec, now) = (self.recipe, self.exec, self.now);
        let limit = self.rt.conn_limit(recipe.conn).cloned();
        let ts = chain.ts;
        self.progress.start(ts);
        self.running_keys.insert(key.clone());
        if let Some(i) = &id {
            self.running_ids.insert(i.clone());
        }
        let span = tracing::info_span!("record", key = %key);
        self.running.push(Box::pin(
            async move {
                // The connection's cap on chains in flight, shared by every recipe using it.
                let _permit = match limit {
                    Some(s) => s.acquire_owned().await.ok(),
                    None => None,
                };
                run_one(recipe, exec, now, key, id, late, chain).await
            }
            .instrument(span),
        ));
    }

    /// Records what a chain in flight came to.
    fn complete(&mut self, d: Done, rep: &mut CycleReport) -> Result<()> {
        self.progress.end(d.ts);
        self.running_keys.remove(&d.key);
        if let Some(i) = &d.id {
            self.running_ids.remove(i);
        }
        rep.add(d.tally);
        let outcome = match d.outcome {
            Ok(o) => o,
            Err(e) => {
                // Its progress could not be made durable: the record is unfinished and must
                // hold the cursor, whatever else finishes.
                self.progress.hold(d.ts);
                self.open.insert(d.key);
                return Err(e);
            }
        };
        let unfinished = matches!(outcome, Outcome::Unfinished(_) | Outcome::Abort(_));
        if unfinished {
            self.open.insert(d.key.clone());
        } else {
            self.handled.insert(d.key.clone(), d.ts);
        }
        if let (true, Some(id)) = (d.late && (!unfinished || d.journaled), d.id) {
            self.late_done.insert(id);
        }
        self.trail.note(&d.key, &outcome, d.trace);
        self.progress.outcome(outcome, d.key, d.ts, d.journaled);
        Ok(())
    }

    /// Waits for every chain in flight (all of them, whatever fails: a chain dropped
    /// mid-request would be sent again), returning the first error.
    async fn drain(&mut self, rep: &mut CycleReport) -> Result<()> {
        let mut first = Ok(());
        while let Some(d) = self.running.next().await {
            if let Err(e) = self.complete(d, rep) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Commits what is pending and moves the cursor: past every finished record, never past
    /// an unfinished one or one in flight, never beyond the clock, and never back (a replayed
    /// dead letter older than the cursor waits in the journal; it does not pull the cursor
    /// back to re-poll records whose dedupe keys may be gone).
    fn commit(&mut self) -> Result<()> {
        self.trail.flush(self.rt, namespace(self.recipe))?;
        // What the store holds: `resume_journal` left it there and every commit since wrote it.
        // The new checkpoint becomes the cycle's only once it is stored.
        let expected = Some(self.cp);
        let mut next = self.cp;
        next.cursor = self
            .progress
            .cursor()
            .min(self.now.max(self.cp.cursor))
            .max(self.cp.cursor);
        next.high = next.high.max(self.progress.max_done);
        if next == self.cp
            && self.progress.finished.is_empty()
            && self.progress.dead.is_empty()
            && self.known.is_none()
        {
            // Nothing to write (a cycle that found nothing new): no transaction, no fsync.
            self.progress.committed_at = Instant::now();
            return Ok(());
        }
        // Keys behind the pruning bound leave memory too, except this batch's own: with
        // offset (page-number) pagination a record can show up again on the next page when
        // records are inserted ahead of it while the trigger pages.
        let batch_low = self.progress.finished.iter().map(|(_, ts, _)| *ts).min();
        self.progress
            .commit(self.rt, self.recipe, expected, &next, self.known.take())?;
        self.cp = next;
        let bound = prune_bound(self.recipe, self.cp.cursor).min(batch_low.unwrap_or(i64::MAX));
        self.handled.retain(|_, ts| *ts >= bound);
        Ok(())
    }
}

async fn cycle(
    rt: &Runtime,
    recipe: &Recipe,
    shutdown: &Shutdown,
    meter: &Meter,
    rep: &mut CycleReport,
    trail: &mut Trail,
) -> Result<()> {
    let trigger = recipe.trigger();
    let conn = rt.conn(recipe.conn);
    let store = rt.store()?;
    let ns = namespace(recipe);
    // "Now" is the server's: a first cursor (`start_from: now`) taken from a local clock
    // ahead of the server's would skip what the server writes meanwhile. The poll stops at
    // the cycle's start, so changes made while the cycle runs (its own writes too) are the
    // next cycle's.
    let now = conn.server_now().await;
    let exec = Live {
        rt,
        ns,
        shutdown: Some(shutdown),
    };
    let (cp, min_open, open) = resume_journal(rt, recipe, &exec, now, rep, trail).await?;
    let since = (cp.cursor - trigger.lookback_secs).max(cp.floor);
    let polling = |f: crate::http::Failure| {
        anyhow!("polling {}.{}: {f}", recipe.connector.id, recipe.trigger_id)
    };
    let mut poll = Poll::start(conn, trigger, since, recipe.options.clone())
        .await
        .map_err(polling)?;
    poll.until(now);
    let scan = !trigger.cursor.sorted;
    let known_before = if scan { store.known_ids(ns)? } else { None };
    if scan {
        poll.known_ids(known_before.clone());
    }
    let mut progress = Progress::new(cp.cursor);
    progress.min_open = min_open;
    let mut cy = Cycle {
        rt,
        recipe,
        exec: &exec,
        now,
        cp,
        progress,
        open,
        // A sorted poll returns nothing before `since`: older keys cannot match. A scan may
        // list anything.
        handled: store.handled_keys_from(ns, if scan { i64::MIN } else { since })?,
        late_done: HashSet::new(),
        known: None,
        running: FuturesUnordered::new(),
        running_keys: HashSet::new(),
        running_ids: HashSet::new(),
        concurrency: recipe.concurrency.max(1),
        io: recipe.steps.iter().any(|s| s.action().is_some()),
        shutdown,
        trail,
    };
    let picker = poll.picker();
    let mut page = poll.next_batch().await.map_err(polling)?;
    // A scan reads everything in its first batch: what it listed is known now.
    let scanned = poll.scanned_ids();
    // Each page's records are admitted while the next page is fetched (so the API works on
    // it meanwhile) and the chains in flight go on. Whatever ends the loop, the chains in
    // flight finish and what has finished is committed before returning.
    let result: Result<()> = async {
        loop {
            let Some(batch) = page.take() else {
                return Ok(());
            };
            if shutdown.is_requested() {
                rep.interrupted = true;
                return Ok(());
            }
            // Boxed so that `work`, which borrows the cycle, can be dropped once done while
            // the fetch goes on.
            let mut fetch = Box::pin(poll.next_batch());
            let mut work = Box::pin(async {
                for record in picker.read(batch) {
                    let record = record.map_err(polling)?;
                    if cy.progress.abort.is_some() || shutdown.is_requested() {
                        // Later records are later in cursor order: holding this one keeps
                        // the cursor before them all.
                        cy.progress.hold(record.ts);
                        break;
                    }
                    cy.admit(record, rep).await?;
                    if cy.progress.due() {
                        cy.commit()?;
                    }
                }
                anyhow::Ok(())
            });
            let mut fetched = None;
            let handled = loop {
                tokio::select! {
                    // The fetch first: its request must be on the wire before the page's
                    // records (CPU work, often without an await) are handled.
                    biased;
                    f = &mut fetch, if fetched.is_none() => fetched = Some(f),
                    done = &mut work => break done,
                }
            };
            drop(work);
            handled?;
            if cy.progress.abort.is_some() || shutdown.is_requested() {
                // The next page is not needed (its request, if still under way, is dropped).
                rep.interrupted = cy.progress.abort.is_none();
                return Ok(());
            }
            let next = match fetched {
                Some(f) => f,
                None => loop {
                    tokio::select! {
                        biased;
                        f = &mut fetch => break f,
                        Some(d) = cy.running.next() => {
                            cy.complete(d, rep)?;
                            if cy.progress.due() {
                                cy.commit()?;
                            }
                        }
                    }
                },
            };
            page = next.map_err(polling)?;
            if cy.progress.due() {
                cy.commit()?;
            }
            meter.publish(rep, cy.cp.cursor);
        }
    }
    .await;
    // Chains in flight finish their steps (or stay journaled) whatever ended the poll.
    let drained = cy.drain(rep).await;
    if let Some(scanned) = scanned {
        // Remember what the scan listed (and what it listed before, for a while: a record
        // that leaves the listing and comes back unchanged must not fire again), except late
        // arrivals not taken care of: the next scan must see them as late again.
        let mut known = known_before.unwrap_or_default();
        known.retain(|_, k| k.seen >= now - KNOWN_ABSENT_SECS);
        for (id, ts) in scanned.ids {
            if scanned.late.contains(&id) && !cy.late_done.contains(&id) {
                continue;
            }
            known.insert(
                id,
                Known {
                    cursor: ts,
                    seen: now,
                },
            );
        }
        cy.known = Some(known);
    }
    cy.commit()?;
    rep.cursor_after = Some(cy.cp.cursor);
    drained?;
    result?;
    if let Some(m) = cy.progress.abort.take() {
        return Err(anyhow!(m));
    }
    rep.pruned = store.prune(ns, prune_bound(recipe, cy.cp.cursor), PRUNE_MAX_PER_CYCLE)? as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_spawnable<F: Future + Send + 'static>(_: &F) {}

    /// Compile-time: a cycle can be `tokio::spawn`ed.
    #[allow(dead_code)]
    fn cycles_are_send_and_static(rt: Arc<Runtime>, recipe: Arc<Recipe>) {
        let f = run_cycle(rt, recipe, CycleOptions::new(Shutdown::never()));
        assert_spawnable(&f);
    }

    #[test]
    fn the_cursor_waits_for_chains_in_flight() {
        let mut p = Progress::new(100);
        p.start(120);
        p.start(110);
        p.finish("a".into(), 130, false);
        assert_eq!(p.cursor(), 110);
        p.end(110);
        assert_eq!(p.cursor(), 120);
        p.end(120);
        assert_eq!(p.cursor(), 130);
        p.hold(125);
        assert_eq!(p.cursor(), 125);
    }
}
