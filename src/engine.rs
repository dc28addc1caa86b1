//! Engine: one cycle of one recipe. The only place that orders load cursor → poll → dedupe →
//! run the chain → commit.
//!
//! A cycle first resumes records left in the run journal (a crash or `on_error: retry`), then
//! polls the trigger from `cursor − lookback` (never before the recipe's `start_from`), skips
//! records whose dedupe key was handled, and runs the chain for each new record in cursor
//! order, while the trigger already fetches the next page. Every [`COMMIT_EVERY`] (or
//! [`COMMIT_MAX_RECORDS`] records, and at the end) one atomic batch stores the dedupe keys of
//! the finished records (succeeded, filtered out, or ended as dead letters), their dead letters
//! and the new cursor, which never passes a record whose chain is unfinished and never moves
//! back. Dedupe keys are loaded once per cycle; keys already behind the pruning bound
//! (`cursor − lookback − PRUNE_MARGIN_SECS`) are never written. Each finished HTTP step is journaled (and fsynced) before the next one starts, so
//! after a crash only the step in flight can run again. `emit` lines are flushed before each
//! commit (see the README's guarantees).
//!
//! Records stay JSON text ([`Record`]) unless a template needs them: a chain parses its record
//! the first time a filter, condition or templated input reads it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::action::{self, ActionError};
use crate::http::{Connection, FailureClass};
use crate::plan::{EmitTo, Recipe, StartFrom, Step, StepAction};
use crate::record::{parse_raw, write_line, Record};
use crate::spec::{OnErrorSpec, SortSpec};
use crate::store::{Checkpoint, Commit, DeadLetter, JournalView, StepDone, Store};
use crate::template::{RenderError, Scope};
use crate::trigger::Poll;

/// Dedupe keys are kept this long beyond the lookback before pruning.
pub const PRUNE_MARGIN_SECS: i64 = 3600;
/// At most this many dedupe keys are pruned per cycle (a backfill's backlog goes over several).
pub const PRUNE_MAX_PER_CYCLE: usize = 5_000;
/// Finished records are committed at least this often…
pub const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// …and whenever this many are pending.
pub const COMMIT_MAX_RECORDS: usize = 1_000;

/// Where `emit` writes: stdout or files, buffered until [`Emitter::flush`].
#[derive(Debug, Default)]
pub struct Emitter {
    stdout: Mutex<Vec<u8>>,
    files: Mutex<HashMap<std::path::PathBuf, std::io::BufWriter<std::fs::File>>>,
}

impl Emitter {
    /// Queues one JSON line for `to`.
    pub fn emit(&self, to: &EmitTo, v: &Value) -> Result<()> {
        self.with_writer(to, |w| {
            serde_json::to_writer(&mut *w, v)?;
            w.write_all(b"\n")
        })
    }

    /// Queues a record's JSON text as one line for `to`, without parsing it.
    pub fn emit_raw(&self, to: &EmitTo, raw: &RawValue) -> Result<()> {
        self.with_writer(to, |w| write_line(w, raw))
    }

    fn with_writer(
        &self,
        to: &EmitTo,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = match to {
            EmitTo::Stdout => {
                let mut buf = self
                    .stdout
                    .lock()
                    .map_err(|_| anyhow!("emit buffer poisoned"))?;
                return Ok(write(&mut *buf)?);
            }
            EmitTo::File(p) => p.as_path(),
        };
        let mut files = self
            .files
            .lock()
            .map_err(|_| anyhow!("emit files poisoned"))?;
        if !files.contains_key(path) {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("emit: cannot create `{}`", dir.display()))?;
            }
            let mut open = std::fs::OpenOptions::new();
            open.create(true).append(true);
            // Records are private data: a new file is readable by its owner only.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let f = open
                .open(path)
                .with_context(|| format!("emit: cannot open `{}`", path.display()))?;
            files.insert(path.into(), std::io::BufWriter::with_capacity(1 << 16, f));
        }
        // Looked up by path (`out//a.jsonl` is `out/a.jsonl`), without allocating.
        let w = files.get_mut(path).expect("invariant: inserted above");
        write(w).with_context(|| format!("emit: cannot write `{}`", path.display()))
    }

    /// Writes everything queued.
    pub fn flush(&self) -> Result<()> {
        let mut buf = self
            .stdout
            .lock()
            .map_err(|_| anyhow!("emit buffer poisoned"))?;
        if !buf.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
            buf.clear();
        }
        for w in self
            .files
            .lock()
            .map_err(|_| anyhow!("emit files poisoned"))?
            .values_mut()
        {
            w.flush()?;
        }
        Ok(())
    }
}

/// What a cycle needs from outside.
pub struct Deps<'a> {
    /// The state store.
    pub store: &'a dyn Store,
    /// Open connections by name.
    pub conns: &'a HashMap<String, Connection>,
    /// Where `emit` writes.
    pub emit: &'a Emitter,
    /// The cycle's clock (Unix seconds): `start_from: now` and the cursor's upper bound.
    pub now: i64,
}

/// What one cycle did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    /// Recipe id.
    pub recipe: String,
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
    /// How long the cycle took, in milliseconds.
    pub elapsed_ms: f64,
}

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
            Outcome::Unfinished => {
                self.open(ts, journaled);
                return true;
            }
            Outcome::Abort(m) => {
                self.open(ts, journaled);
                self.abort = Some(m);
                return true;
            }
        }
        false
    }

    /// The cursor: past every finished record, never past an unfinished one.
    fn cursor(&self) -> i64 {
        self.min_open
            .map_or(self.max_done, |u| self.max_done.min(u))
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
    /// `known`: for a scan, the ids to remember as listed (in the same batch).
    fn commit(
        &mut self,
        deps: &Deps<'_>,
        recipe: &Recipe,
        expected: Option<Checkpoint>,
        cp: &Checkpoint,
        known: Option<Vec<String>>,
    ) -> Result<()> {
        deps.emit.flush()?;
        deps.store.commit(
            &recipe.id,
            &Commit {
                expected,
                checkpoint: *cp,
                finished: &self.finished,
                dead: &self.dead,
                keep_from: prune_bound(recipe, cp.cursor),
                known: known.as_deref(),
            },
        )?;
        self.finished.clear();
        self.dead.clear();
        self.committed_at = Instant::now();
        Ok(())
    }
}

/// Dedupe keys of records older than this are never needed again: the next poll starts at
/// `cursor − lookback` and the cursor never moves back (see [`Cycle::commit`]).
fn prune_bound(recipe: &Recipe, cursor: i64) -> i64 {
    cursor
        .saturating_sub(recipe.trigger().lookback_secs)
        .saturating_sub(PRUNE_MARGIN_SECS)
}

enum Outcome {
    Finished,
    Dead(Box<DeadLetter>),
    /// Try again next cycle (`on_error: retry`).
    Unfinished,
    /// Stop the cycle: credentials, or the API is down (retries exhausted).
    Abort(String),
}

struct StepFailure {
    class: FailureClass,
    message: String,
    request: Option<String>,
    status: Option<u16>,
}

/// Runs one cycle of `recipe`. Errors are reported in the result, never panicked; the cursor
/// stays where the last commit put it.
pub async fn run_cycle(recipe: &Recipe, deps: &Deps<'_>) -> CycleReport {
    let started = std::time::Instant::now();
    let mut rep = CycleReport {
        recipe: recipe.id.clone(),
        ..CycleReport::default()
    };
    if let Err(e) = cycle(recipe, deps, &mut rep).await {
        tracing::warn!(recipe = %recipe.id, error = %format!("{e:#}"), "Cycle stopped early; the cursor stays at the last committed record.");
        rep.error = Some(format!("{e:#}"));
    }
    let _ = deps.emit.flush();
    rep.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    rep
}

/// Resumes every record in the journal (after a crash, `retry`, or a dead-letter replay),
/// without polling. Part of every cycle; also used by `dead-letters replay`. Returns the
/// checkpoint, the smallest cursor value of a record still unfinished, and the keys still in
/// the journal. The cursor does not move here: resumed records can only hold it back. On
/// success the store holds the returned checkpoint (the cycle's next commit expects it).
pub async fn resume_journal(
    recipe: &Recipe,
    deps: &Deps<'_>,
    rep: &mut CycleReport,
) -> Result<(Checkpoint, Option<i64>, HashSet<String>)> {
    let store = deps.store;
    let stored = store.checkpoint(&recipe.id)?;
    rep.cursor_before = stored.map(|c| c.cursor);
    let mut cp = stored.unwrap_or_else(|| {
        let floor = match recipe.start_from {
            StartFrom::Now => deps.now,
            StartFrom::At(t) => t,
        };
        Checkpoint {
            cursor: floor,
            floor,
            high: floor,
        }
    });
    let mut entries = store.journal_entries(&recipe.id)?;
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
        let outcome = run_chain(recipe, deps, &key, &mut chain, rep).await?;
        if progress.outcome(outcome, key.clone(), ts, true) {
            open.insert(key);
        }
    }
    cp.high = cp.high.max(progress.max_done);
    if !progress.finished.is_empty() || !progress.dead.is_empty() || stored != Some(cp) {
        progress.commit(deps, recipe, stored, &cp, None)?;
    }
    if let Some(m) = progress.abort {
        return Err(anyhow!(m));
    }
    Ok((cp, progress.min_open, open))
}

/// The poll part of a cycle: what it has decided, and the state it checks records against.
struct Cycle<'r, 'd> {
    recipe: &'r Recipe,
    deps: &'r Deps<'d>,
    cp: Checkpoint,
    progress: Progress,
    /// Keys still in the journal (resumed or left unfinished): never started again here.
    open: HashSet<String>,
    /// Keys of handled records (loaded from the store, plus those finished since) with their
    /// cursor values; those behind the pruning bound are dropped at each commit.
    handled: HashMap<String, i64>,
    /// Ids of a scan's late arrivals taken care of in this cycle.
    late_done: HashSet<String>,
    /// For a scan: the ids to remember as listed, written with the last commit.
    known: Option<Vec<String>>,
}

impl Cycle<'_, '_> {
    /// Dedupes one polled record and runs its chain. A late arrival of a scan (see
    /// [`Record::late`]) that is taken care of (finished, or in the journal) is noted, so the
    /// next scan knows it.
    async fn handle(&mut self, record: Record, rep: &mut CycleReport) -> Result<()> {
        let late = record
            .late
            .then(|| crate::trigger::id_of(self.recipe.trigger(), record.fields()))
            .flatten();
        let taken_care_of = self.handle_record(record, rep).await?;
        if let (Some(id), true) = (late, taken_care_of) {
            self.late_done.insert(id);
        }
        Ok(())
    }

    /// [`Cycle::handle`]; true when the record needs nothing more from the poll (finished,
    /// seen before, or left to the journal).
    async fn handle_record(&mut self, record: Record, rep: &mut CycleReport) -> Result<bool> {
        let (recipe, deps) = (self.recipe, self.deps);
        let trigger = recipe.trigger();
        rep.polled += 1;
        let ts = record.ts;
        if ts < self.cp.floor && !record.late {
            return Ok(true);
        }
        let key = trigger
            .dedupe_key
            .render(record.fields())
            .map_err(|m| anyhow!("a record cannot be keyed: {m}"))?;
        if self.open.contains(&key) {
            return Ok(true);
        }
        if self.handled.contains_key(&key) {
            // Handled before: finished, so the cursor may move past it.
            rep.skipped_seen += 1;
            self.progress.seen(ts);
            return Ok(true);
        }
        if self.progress.abort.is_some() {
            // After an abort nothing else runs; the cursor must not pass this record.
            self.progress.hold(ts);
            return Ok(false);
        }
        let mut chain = Some(Chain {
            raw: record.into_raw(),
            scope: None,
            ts,
            done: Vec::new(),
            attempts: 0,
            journaled: false,
        });
        let verdict = recipe.filter.as_ref().map(|f| {
            match chain.as_mut().expect("invariant: just built").scope(recipe) {
                Ok(scope) => f.truthy(scope),
                Err(e) => Err(RenderError(e)),
            }
        });
        let outcome = match verdict {
            Some(Ok(false)) => {
                rep.filtered += 1;
                self.handled.insert(key.clone(), ts);
                self.progress.finish(key, ts, false);
                return Ok(true);
            }
            Some(Err(e)) => {
                rep.dead_letters += 1;
                let failure = StepFailure {
                    class: FailureClass::Fatal,
                    message: e.0,
                    request: None,
                    status: None,
                };
                let chain = chain.take().expect("invariant: just built");
                Outcome::Dead(chain.into_dead(recipe, &key, "filter", failure, deps.now))
            }
            Some(Ok(true)) | None => {
                rep.fired += 1;
                run_chain(recipe, deps, &key, &mut chain, rep).await?
            }
        };
        let journaled = chain.as_ref().is_some_and(|c| c.journaled);
        let unfinished = matches!(outcome, Outcome::Unfinished | Outcome::Abort(_));
        if unfinished {
            self.open.insert(key.clone());
        } else {
            self.handled.insert(key.clone(), ts);
        }
        self.progress.outcome(outcome, key, ts, journaled);
        Ok(!unfinished || journaled)
    }

    /// Commits what is pending and moves the cursor: past every finished record, never past
    /// an unfinished one, never beyond the clock, and never back (a replayed dead letter older
    /// than the cursor waits in the journal; it does not pull the cursor back to re-poll
    /// records whose dedupe keys may be gone).
    fn commit(&mut self) -> Result<()> {
        // What the store holds: `resume_journal` left it there and every commit since wrote it
        // (a failed commit ends the cycle).
        let expected = Some(self.cp);
        self.cp.cursor = self
            .progress
            .cursor()
            .min(self.deps.now.max(self.cp.cursor))
            .max(self.cp.cursor);
        self.cp.high = self.cp.high.max(self.progress.max_done);
        // Keys behind the pruning bound leave memory too, except this batch's own: with
        // offset (page-number) pagination a record can show up again on the next page when
        // records are inserted ahead of it while the trigger pages.
        let batch_low = self.progress.finished.iter().map(|(_, ts, _)| *ts).min();
        self.progress.commit(
            self.deps,
            self.recipe,
            expected,
            &self.cp,
            self.known.take(),
        )?;
        let bound = prune_bound(self.recipe, self.cp.cursor).min(batch_low.unwrap_or(i64::MAX));
        self.handled.retain(|_, ts| *ts >= bound);
        Ok(())
    }
}

async fn cycle(recipe: &Recipe, deps: &Deps<'_>, rep: &mut CycleReport) -> Result<()> {
    let trigger = recipe.trigger();
    let conn = deps
        .conns
        .get(&recipe.connection)
        .ok_or_else(|| anyhow!("connection `{}` is not open", recipe.connection))?;
    // "Now" is the server's: a first cursor (`start_from: now`) taken from a local clock
    // ahead of the server's would skip what the server writes meanwhile. The poll stops at
    // the cycle's start, so changes made while the cycle runs (its own writes too) are the
    // next cycle's.
    let now = conn.server_now().await;
    let deps = &Deps {
        store: deps.store,
        conns: deps.conns,
        emit: deps.emit,
        now,
    };
    let (cp, min_open, open) = resume_journal(recipe, deps, rep).await?;
    let since = (cp.cursor - trigger.lookback_secs).max(cp.floor);
    let polling = |f: crate::http::Failure| {
        anyhow!("polling {}.{}: {f}", recipe.connector.id, recipe.trigger_id)
    };
    let mut poll = Poll::start(conn, trigger, since, recipe.options.clone())
        .await
        .map_err(polling)?;
    poll.until(now);
    let scan = trigger.spec.cursor.sort == SortSpec::None;
    if scan {
        poll.known_ids(deps.store.known_ids(&recipe.id)?);
    }
    let mut progress = Progress::new(cp.cursor);
    progress.min_open = min_open;
    let mut cy = Cycle {
        recipe,
        deps,
        cp,
        progress,
        open,
        handled: deps.store.handled_keys(&recipe.id)?,
        late_done: HashSet::new(),
        known: None,
    };
    let picker = poll.picker();
    let mut page = poll.next_batch().await.map_err(polling)?;
    // A scan reads everything in its first batch: what it listed is known now.
    let scanned = poll.scanned_ids();
    // Each page's records are read and handled while the next page is fetched (so the API
    // works on it meanwhile). Whatever ends the loop, what has finished is committed before
    // returning.
    let result = loop {
        let Some(batch) = page.take() else {
            break Ok(());
        };
        // Boxed so that `work`, which borrows the cycle, can be dropped once done while the
        // fetch goes on.
        let mut fetch = Box::pin(poll.next_batch());
        let mut work = Box::pin(async {
            for record in picker.read(batch) {
                if cy.progress.abort.is_some() {
                    // Later records are later in cursor order: the held record keeps the
                    // cursor before them all.
                    break;
                }
                cy.handle(record.map_err(polling)?, rep).await?;
            }
            anyhow::Ok(())
        });
        let mut fetched = None;
        let handled = loop {
            tokio::select! {
                // The fetch first: its request must be on the wire before the page's records
                // (CPU work, often without an await) are handled.
                biased;
                f = &mut fetch, if fetched.is_none() => fetched = Some(f),
                done = &mut work => break done,
            }
        };
        drop(work);
        if let Err(e) = handled {
            break Err(e);
        }
        if let Some(m) = cy.progress.abort.take() {
            // The next page is not needed (its request, if still under way, is dropped).
            break Err(anyhow!(m));
        }
        let next = match fetched {
            Some(f) => f,
            None => fetch.await,
        };
        match next {
            Ok(p) => page = p,
            Err(f) => break Err(polling(f)),
        }
        if cy.progress.due() {
            cy.commit()?;
        }
    };
    if let Some(scanned) = scanned {
        // Remember what the scan listed, except late arrivals not taken care of: the next
        // scan must see them as late again.
        cy.known = Some(
            scanned
                .ids
                .into_iter()
                .filter(|id| !scanned.late.contains(id) || cy.late_done.contains(id))
                .collect(),
        );
    }
    cy.commit()?;
    rep.cursor_after = Some(cy.cp.cursor);
    result?;
    rep.pruned = deps.store.prune(
        &recipe.id,
        prune_bound(recipe, cy.cp.cursor),
        PRUNE_MAX_PER_CYCLE,
    )? as u64;
    Ok(())
}

/// The template scope of a chain: `record`, `steps` (outputs so far) and `recipe`.
fn chain_scope(recipe: &Recipe, record: Value, done: &[StepDone]) -> Scope {
    let mut steps = Map::new();
    for d in done {
        steps.insert(d.step.clone(), d.output.clone());
    }
    let mut ctx = Map::with_capacity(3);
    ctx.insert("record".into(), record);
    ctx.insert("steps".into(), Value::Object(steps));
    ctx.insert("recipe".into(), recipe.metadata().clone());
    Scope::new(Value::Object(ctx))
}

/// A record's chain in progress.
struct Chain {
    /// The record's JSON text.
    raw: Box<RawValue>,
    /// The template scope, built from `raw` when a step first needs it.
    scope: Option<Scope>,
    ts: i64,
    done: Vec<StepDone>,
    attempts: u32,
    /// Whether it has a journal entry (to remove at commit).
    journaled: bool,
}

impl Chain {
    /// The template scope, parsing the record the first time.
    fn scope(&mut self, recipe: &Recipe) -> Result<&Scope, String> {
        if self.scope.is_none() {
            let record = parse_raw(&self.raw)?;
            self.scope = Some(chain_scope(recipe, record, &self.done));
        }
        Ok(self.scope.as_ref().expect("invariant: set just above"))
    }

    fn journal(&mut self, deps: &Deps<'_>, recipe: &str, key: &str) -> Result<()> {
        // The journal will say every step so far is done: lines an earlier `emit` step of this
        // chain queued must be written first, or a crash would lose them.
        deps.emit.flush()?;
        let view = JournalView {
            record: &self.raw,
            ts: self.ts,
            done: &self.done,
            attempts: self.attempts,
        };
        deps.store.journal_step(recipe, key, &view)?;
        self.journaled = true;
        Ok(())
    }

    fn push(&mut self, d: StepDone) {
        if let Some(scope) = &mut self.scope {
            if let Some(Value::Object(steps)) = scope.value_mut().get_mut("steps") {
                steps.insert(d.step.clone(), d.output.clone());
            }
        }
        self.done.push(d);
    }

    fn into_dead(
        self,
        recipe: &Recipe,
        key: &str,
        step: &str,
        f: StepFailure,
        now: i64,
    ) -> Box<DeadLetter> {
        let record = match self.scope {
            Some(scope) => match scope.into_value() {
                Value::Object(mut m) => m.remove("record").unwrap_or(Value::Null),
                _ => Value::Null,
            },
            // A record too deep to parse is kept as its text: nothing is lost.
            None => parse_raw(&self.raw).unwrap_or_else(|_| Value::String(self.raw.get().into())),
        };
        dead_letter(
            recipe, key, self.ts, record, self.done, step, f.class, &f.message, f.request,
            f.status, now,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn dead_letter(
    recipe: &Recipe,
    key: &str,
    ts: i64,
    record: Value,
    done: Vec<StepDone>,
    step: &str,
    class: FailureClass,
    error: &str,
    request: Option<String>,
    status: Option<u16>,
    now: i64,
) -> Box<DeadLetter> {
    Box::new(DeadLetter {
        recipe: recipe.id.clone(),
        key: key.to_string(),
        ts,
        record,
        done,
        failed_step: step.to_string(),
        class: class.to_string(),
        error: error.to_string(),
        request,
        status,
        at: now,
    })
}

async fn run_chain(
    recipe: &Recipe,
    deps: &Deps<'_>,
    key: &str,
    chain: &mut Option<Chain>,
    rep: &mut CycleReport,
) -> Result<Outcome> {
    let c = chain.as_mut().expect("invariant: a chain to run");
    while c.done.len() < recipe.steps.len() {
        let step = &recipe.steps[c.done.len()];
        let run = match &step.condition {
            Some(cond) => c
                .scope(recipe)
                .map_err(RenderError)
                .and_then(|scope| cond.truthy(scope))
                .map_err(|e| StepFailure {
                    class: FailureClass::Fatal,
                    message: format!("if: {e}"),
                    request: None,
                    status: None,
                }),
            None => Ok(true),
        };
        let result = match run {
            Ok(false) => {
                rep.steps_skipped += 1;
                c.push(StepDone {
                    step: step.id.clone(),
                    output: Value::Null,
                    skipped: true,
                    error: None,
                });
                continue;
            }
            Ok(true) => execute_step(recipe, step, c, deps).await,
            Err(f) => Err(f),
        };
        match result {
            Ok(output) => {
                rep.steps_ok += 1;
                c.attempts = 0;
                c.push(StepDone {
                    step: step.id.clone(),
                    output,
                    skipped: false,
                    error: None,
                });
                // A finished HTTP step is made durable before anything else happens (the last
                // one too: the page commit comes later), so it is never repeated. `emit` is
                // local and batched per page instead.
                if matches!(step.kind, StepAction::Http { .. }) {
                    c.journal(deps, &recipe.id, key)?;
                }
            }
            Err(f) => {
                rep.steps_failed += 1;
                tracing::info!(recipe = %recipe.id, step = %step.id, error = %f.message, "Step failed.");
                if matches!(
                    f.class,
                    FailureClass::Auth | FailureClass::Retryable | FailureClass::RateLimited
                ) {
                    if !c.done.is_empty() {
                        c.journal(deps, &recipe.id, key)?;
                    }
                    rep.unfinished += 1;
                    return Ok(Outcome::Abort(format!("step `{}`: {}", step.id, f.message)));
                }
                match step.on_error {
                    OnErrorSpec::Skip => {
                        rep.steps_skipped += 1;
                        c.push(StepDone {
                            step: step.id.clone(),
                            output: Value::Null,
                            skipped: true,
                            error: Some(f.message),
                        });
                    }
                    OnErrorSpec::Stop => {
                        rep.dead_letters += 1;
                        let owned = chain.take().expect("invariant: present");
                        return Ok(Outcome::Dead(
                            owned.into_dead(recipe, key, &step.id, f, deps.now),
                        ));
                    }
                    OnErrorSpec::Retry => {
                        c.attempts += 1;
                        c.journal(deps, &recipe.id, key)?;
                        rep.unfinished += 1;
                        return Ok(Outcome::Unfinished);
                    }
                }
            }
        }
    }
    rep.finished += 1;
    Ok(Outcome::Finished)
}

async fn execute_step(
    recipe: &Recipe,
    step: &Step,
    chain: &mut Chain,
    deps: &Deps<'_>,
) -> Result<Value, StepFailure> {
    let input_err = |m: String| StepFailure {
        class: FailureClass::Fatal,
        message: m,
        request: None,
        status: None,
    };
    if !step.needs_scope() {
        return execute_one(step, None, &chain.raw, deps).await;
    }
    chain.scope(recipe).map_err(input_err)?;
    let (Some(scope), raw) = (&chain.scope, &chain.raw) else {
        unreachable!("invariant: the scope was built just above")
    };
    let Some(each) = &step.for_each else {
        return execute_one(step, Some(scope), raw, deps).await;
    };
    let items = match each
        .render_required(scope)
        .map_err(|e| input_err(format!("for_each: {e}")))?
    {
        Value::Array(a) => a,
        other => return Err(input_err(format!("for_each must give a list, got {other}"))),
    };
    let mut outputs = Vec::with_capacity(items.len());
    for it in items {
        let mut v = scope.value().clone();
        if let Value::Object(m) = &mut v {
            m.insert("item".into(), it);
        }
        outputs.push(execute_one(step, Some(&Scope::new(v)), raw, deps).await?);
    }
    Ok(Value::Array(outputs))
}

/// Runs one step once. `scope` is `None` only for a step that does not need it (fixed
/// inputs); `raw` is the record's JSON text, which `emit` writes as it is.
async fn execute_one(
    step: &Step,
    scope: Option<&Scope>,
    raw: &RawValue,
    deps: &Deps<'_>,
) -> Result<Value, StepFailure> {
    let input_err = |m: String| StepFailure {
        class: FailureClass::Fatal,
        message: m,
        request: None,
        status: None,
    };
    let rendered;
    let input = match (&step.fixed_inputs, scope) {
        (Some(fixed), _) => fixed,
        (None, Some(scope)) => {
            rendered = step.render_inputs(scope).map_err(input_err)?;
            &rendered
        }
        (None, None) => unreachable!("invariant: a step with templated inputs gets a scope"),
    };
    match &step.kind {
        StepAction::Emit { .. } => {
            let to = step
                .emit_to(input)
                .map_err(|e| input_err(format!("emit: {e}")))?;
            match input.get("value") {
                Some(v) => deps.emit.emit(&to, v),
                None => deps.emit.emit_raw(&to, raw),
            }
            .map_err(|e| input_err(format!("emit: {e:#}")))?;
            Ok(Value::Null)
        }
        StepAction::Http {
            connector,
            action_id,
        } => {
            let conn = deps.conns.get(&step.connection).ok_or_else(|| {
                input_err(format!("connection `{}` is not open", step.connection))
            })?;
            action::execute(conn, &connector.actions[action_id], input)
                .await
                .map_err(|e| match e {
                    ActionError::Input(m) => input_err(m),
                    ActionError::Failed(f) => StepFailure {
                        class: f.class,
                        message: f.to_string(),
                        request: Some(f.request.clone()),
                        status: f.status,
                    },
                })
        }
    }
}
