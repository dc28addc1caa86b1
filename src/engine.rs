//! Engine: one cycle of one recipe. The only place that orders load cursor → poll → dedupe →
//! run the chain → commit.
//!
//! A cycle first resumes records left in the run journal (a crash or `on_error: retry`), then
//! polls the trigger from `cursor − lookback` (never before the recipe's `start_from`), skips
//! records whose dedupe key was handled, and runs the chain for each new record in cursor
//! order. After each page, one transaction stores the dedupe keys of the finished records
//! (succeeded, filtered out, or ended as dead letters), their dead letters and the new cursor,
//! which never passes a record whose chain is unfinished. Each finished HTTP step is journaled
//! (and fsynced) before the next one starts, so after a crash only the step in flight can run
//! again. `emit` lines are flushed before the page commit (see the README's guarantees).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::action::{self, ActionError};
use crate::http::{Connection, FailureClass};
use crate::plan::{Recipe, StartFrom, Step, StepAction};
use crate::spec::OnErrorSpec;
use crate::store::{Checkpoint, DeadLetter, JournalView, StateStore, StepDone};
use crate::template::Scope;
use crate::trigger::{cursor_of, Poll};

/// Dedupe keys are kept this long beyond the lookback before pruning.
pub const PRUNE_MARGIN_SECS: i64 = 3600;
/// At most this many dedupe keys are pruned per cycle (a backfill's backlog goes over several).
pub const PRUNE_MAX_PER_CYCLE: usize = 5_000;

/// Where `emit` writes: stdout or files, buffered until [`Emitter::flush`].
#[derive(Debug, Default)]
pub struct Emitter {
    stdout: Mutex<Vec<u8>>,
    files: Mutex<HashMap<PathBuf, std::io::BufWriter<std::fs::File>>>,
}

impl Emitter {
    /// Queues one JSON line for `to` (`stdout` or a file path).
    pub fn emit(&self, to: &str, v: &Value) -> Result<()> {
        if to == "stdout" || to == "-" {
            let mut buf = self
                .stdout
                .lock()
                .map_err(|_| anyhow!("emit buffer poisoned"))?;
            serde_json::to_writer(&mut *buf, v)?;
            buf.push(b'\n');
            return Ok(());
        }
        let path = PathBuf::from(to);
        let mut files = self
            .files
            .lock()
            .map_err(|_| anyhow!("emit files poisoned"))?;
        if !files.contains_key(&path) {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("emit: cannot create `{}`", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("emit: cannot open `{}`", path.display()))?;
            files.insert(path.clone(), std::io::BufWriter::with_capacity(1 << 16, f));
        }
        let w = files.get_mut(&path).expect("invariant: inserted above");
        serde_json::to_writer(&mut *w, v)?;
        w.write_all(b"\n")?;
        Ok(())
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
    pub store: &'a StateStore,
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
    /// Why the cycle must stop, if it must.
    abort: Option<String>,
}

impl Progress {
    fn new(cursor: i64) -> Progress {
        Progress {
            finished: Vec::new(),
            dead: Vec::new(),
            max_done: cursor,
            min_open: None,
            abort: None,
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

    /// Records a chain's outcome; true when the record stays unfinished.
    fn outcome(&mut self, o: Outcome, key: String, ts: i64, journaled: bool) -> bool {
        match o {
            Outcome::Finished => self.finish(key, ts, journaled),
            Outcome::Dead(d) => {
                self.finish(key, ts, journaled);
                self.dead.push(*d);
            }
            Outcome::Unfinished => {
                self.hold(ts);
                return true;
            }
            Outcome::Abort(m) => {
                self.hold(ts);
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

    /// Commits what is pending (emit lines first), keeping the cursor bounds.
    fn commit(&mut self, deps: &Deps<'_>, recipe: &str, cp: &Checkpoint) -> Result<()> {
        deps.emit.flush()?;
        deps.store.commit(recipe, &self.finished, &self.dead, *cp)?;
        self.finished.clear();
        self.dead.clear();
        Ok(())
    }
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
/// without polling. Part of every cycle; also used by `dead-letters replay`.
pub async fn resume_journal(
    recipe: &Recipe,
    deps: &Deps<'_>,
    rep: &mut CycleReport,
) -> Result<(Checkpoint, Option<i64>, HashSet<String>)> {
    let store = deps.store;
    let cp = store.checkpoint(&recipe.id)?;
    rep.cursor_before = cp.map(|c| c.cursor);
    let mut cp = cp.unwrap_or_else(|| {
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
            progress.hold(entry.ts);
            open.insert(key);
            continue;
        }
        rep.fired += 1;
        rep.resumed += 1;
        let ts = entry.ts;
        let scope = chain_scope(recipe, entry.record, &entry.done);
        let mut chain = Some(Chain {
            scope,
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
    // Resumed records are older than the cursor: they can hold it back, never move it on.
    cp.cursor = cp.cursor.min(progress.cursor());
    cp.high = cp.high.max(progress.max_done);
    if !progress.finished.is_empty() || !progress.dead.is_empty() || rep.cursor_before.is_none() {
        progress.commit(deps, &recipe.id, &cp)?;
    }
    if let Some(m) = progress.abort {
        return Err(anyhow!(m));
    }
    Ok((cp, progress.min_open, open))
}

async fn cycle(recipe: &Recipe, deps: &Deps<'_>, rep: &mut CycleReport) -> Result<()> {
    let store = deps.store;
    let trigger = recipe.trigger();
    let conn = deps
        .conns
        .get(&recipe.connection)
        .ok_or_else(|| anyhow!("connection `{}` is not open", recipe.connection))?;
    let (mut cp, min_open, open) = resume_journal(recipe, deps, rep).await?;
    let since = (cp.cursor - trigger.lookback_secs).max(cp.floor);
    let mut poll = Poll::start(conn, trigger, since, recipe.options.clone())
        .await
        .map_err(|f| anyhow!("polling {}.{}: {f}", recipe.connector.id, recipe.trigger_id))?;
    let mut progress = Progress::new(cp.cursor);
    progress.min_open = min_open;
    let mut batch_keys: HashSet<String> = HashSet::new();
    loop {
        let page = poll
            .next_page()
            .await
            .map_err(|f| anyhow!("polling {}.{}: {f}", recipe.connector.id, recipe.trigger_id))?;
        let Some(page) = page else { break };
        for record in page {
            rep.polled += 1;
            let ts = cursor_of(trigger, &record).unwrap_or(i64::MIN);
            if ts < cp.floor {
                continue;
            }
            let key = trigger
                .dedupe_key
                .render(&record)
                .map_err(|m| anyhow!("a record cannot be keyed: {m}"))?;
            if open.contains(&key) {
                continue;
            }
            // Above the highest record ever handled nothing can have been seen: no lookup.
            if batch_keys.contains(&key) || (ts <= cp.high && store.seen(&recipe.id, &key)?) {
                // Handled before: finished, so the cursor may move past it.
                rep.skipped_seen += 1;
                progress.seen(ts);
                continue;
            }
            if progress.abort.is_some() {
                // After an abort nothing else runs; the cursor must not pass this record.
                progress.hold(ts);
                continue;
            }
            let scope = chain_scope(recipe, record, &[]);
            let mut chain = Some(Chain {
                scope,
                ts,
                done: Vec::new(),
                attempts: 0,
                journaled: false,
            });
            let outcome = match recipe
                .filter
                .as_ref()
                .map(|f| f.truthy(&chain.as_ref().expect("invariant: just built").scope))
            {
                Some(Ok(false)) => {
                    rep.filtered += 1;
                    batch_keys.insert(key.clone());
                    progress.finish(key, ts, false);
                    continue;
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
            if !unfinished {
                batch_keys.insert(key.clone());
            }
            progress.outcome(outcome, key, ts, journaled);
        }
        cp.cursor = progress.cursor().min(deps.now.max(cp.cursor));
        cp.high = cp.high.max(progress.max_done);
        progress.commit(deps, &recipe.id, &cp)?;
        if let Some(m) = progress.abort.take() {
            rep.cursor_after = Some(cp.cursor);
            return Err(anyhow!(m));
        }
    }
    rep.cursor_after = Some(cp.cursor);
    rep.pruned = store.prune(
        &recipe.id,
        cp.cursor - trigger.lookback_secs - PRUNE_MARGIN_SECS,
        PRUNE_MAX_PER_CYCLE,
    )? as u64;
    Ok(())
}

/// The template scope of a chain: `record`, `steps` (outputs so far) and `recipe`. The record
/// is moved in, not copied; it is read back from the scope for the journal.
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
    scope: Scope,
    ts: i64,
    done: Vec<StepDone>,
    attempts: u32,
    /// Whether it has a journal entry (to remove at commit).
    journaled: bool,
}

impl Chain {
    fn record(&self) -> &Value {
        &self.scope.value()["record"]
    }

    fn journal(&mut self, deps: &Deps<'_>, recipe: &str, key: &str) -> Result<()> {
        let view = JournalView {
            record: self.record(),
            ts: self.ts,
            done: &self.done,
            attempts: self.attempts,
        };
        deps.store.journal_step(recipe, key, &view)?;
        self.journaled = true;
        Ok(())
    }

    fn push(&mut self, d: StepDone) {
        if let Some(Value::Object(steps)) = self.scope.value_mut().get_mut("steps") {
            steps.insert(d.step.clone(), d.output.clone());
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
        let Chain {
            scope, ts, done, ..
        } = self;
        let record = match scope.into_value() {
            Value::Object(mut m) => m.remove("record").unwrap_or(Value::Null),
            _ => Value::Null,
        };
        dead_letter(
            recipe, key, ts, record, done, step, f.class, &f.message, f.request, f.status, now,
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
            Some(cond) => cond.truthy(&c.scope).map_err(|e| StepFailure {
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
            Ok(true) => execute_step(step, &c.scope, deps).await,
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

async fn execute_step(step: &Step, scope: &Scope, deps: &Deps<'_>) -> Result<Value, StepFailure> {
    let input_err = |m: String| StepFailure {
        class: FailureClass::Fatal,
        message: m,
        request: None,
        status: None,
    };
    let Some(each) = &step.for_each else {
        return execute_one(step, scope, deps).await;
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
        outputs.push(execute_one(step, &Scope::new(v), deps).await?);
    }
    Ok(Value::Array(outputs))
}

async fn execute_one(step: &Step, scope: &Scope, deps: &Deps<'_>) -> Result<Value, StepFailure> {
    let input_err = |m: String| StepFailure {
        class: FailureClass::Fatal,
        message: m,
        request: None,
        status: None,
    };
    let input = step.render_inputs(scope).map_err(input_err)?;
    match &step.kind {
        StepAction::Emit => {
            let value = input.get("value").unwrap_or(&scope.value()["record"]);
            let to = input.get("to").and_then(Value::as_str).unwrap_or("stdout");
            deps.emit
                .emit(to, value)
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
            action::execute(conn, &connector.actions[action_id], &input)
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
