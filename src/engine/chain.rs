//! Chain: one record's steps, in order, each at most once — the one implementation of a
//! recipe's chain, used by real cycles and by dry runs alike.
//!
//! Owns evaluating `if` and `for_each`, rendering inputs, recording each step's outcome,
//! `on_error`, and turning a failure into the record's fate ([`Outcome`]). What a step *does*
//! — send a request, write a line, make progress durable — is the [`Executor`]'s: [`Live`]
//! for cycles, `dryrun`'s recorder for `sluice test`.

use std::future::Future;

use tracing::Instrument;

use anyhow::Result;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::failure::{Failure, FailureClass, OUTCOME_UNKNOWN};
use crate::history::{truncate, StepRun};
use crate::plan::{Action, EmitTo, OnError, Recipe, Step, StepAction};
use crate::record::parse_raw;
use crate::runtime::Runtime;
use crate::store::{DeadLetter, JournalView, StepDone};
use crate::template::{RenderError, Scope};

/// What an `emit` step writes: a rendered value, or the record's text as the API sent it.
pub(crate) enum Line<'a> {
    /// `value` was given.
    Value(&'a Value),
    /// No `value`: the record itself.
    Raw(&'a RawValue),
}

/// Carries out a chain's steps. Implementations decide whether anything is really sent.
pub(crate) trait Executor: Sync {
    /// Runs an HTTP step's action with its rendered inputs; its output.
    fn http(
        &self,
        step: &Step,
        action: &Action,
        input: &Map<String, Value>,
    ) -> impl Future<Output = Result<Value, Failure>> + Send;

    /// Writes an `emit` step's line.
    fn emit(&self, step: &Step, to: &EmitTo, line: Line<'_>) -> Result<(), Failure>;

    /// Makes the chain's progress durable (after each finished HTTP step, and when a record
    /// is left unfinished with steps done).
    fn journal(&self, key: &str, view: &JournalView<'_>) -> Result<()>;

    /// Whether a shutdown asks chains to stop before their next step.
    fn stopping(&self) -> bool {
        false
    }

    /// The output later steps see for a step that ran (a dry run's sample may mock it).
    fn step_output(&self, _step: &Step, output: Value) -> Value {
        output
    }

    /// Whether steps' rendered inputs are kept for the run history.
    fn traced(&self) -> bool {
        false
    }
}

/// The executor of real cycles: requests go over the runtime's connections, lines to its
/// emitter, progress to its store under the recipe instance's namespace.
pub(crate) struct Live<'a> {
    pub(crate) rt: &'a Runtime,
    pub(crate) ns: &'a str,
    pub(crate) shutdown: Option<&'a crate::runtime::Shutdown>,
}

impl Executor for Live<'_> {
    async fn http(
        &self,
        step: &Step,
        action: &Action,
        input: &Map<String, Value>,
    ) -> Result<Value, Failure> {
        let conn = self.rt.conn(step.conn);
        crate::action::execute(conn, action, input).await
    }

    fn emit(&self, _step: &Step, to: &EmitTo, line: Line<'_>) -> Result<(), Failure> {
        let e = self.rt.emitter();
        match line {
            Line::Value(v) => e.emit(to, v),
            Line::Raw(raw) => e.emit_raw(to, raw),
        }
        .map_err(|e| Failure::input(format!("emit: {e:#}")))
    }

    fn traced(&self) -> bool {
        true
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_some_and(|s| s.is_requested())
    }

    fn journal(&self, key: &str, view: &JournalView<'_>) -> Result<()> {
        // The journal will say every step so far is done: lines an earlier `emit` step of this
        // chain queued must be written first, or a crash would lose them.
        self.rt.emitter().flush()?;
        let store = self.rt.store()?;
        super::durably(|| store.journal_step(self.ns, key, view))
    }
}

/// Counts a chain adds to its cycle's report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) finished: u64,
    pub(crate) steps_ok: u64,
    pub(crate) steps_failed: u64,
    pub(crate) failed_by_class: crate::failure::ByClass,
    pub(crate) steps_skipped: u64,
    pub(crate) dead_letters: u64,
    pub(crate) unfinished: u64,
}

/// How a record's chain ended.
pub(crate) enum Outcome {
    /// Every step done (or skipped).
    Finished,
    /// A step failed for good under `on_error: stop`.
    Dead(Box<DeadLetter>),
    /// Try again next cycle (`on_error: retry`, or a shutdown): why.
    Unfinished(String),
    /// Stop the cycle: credentials, or the API is down (retries exhausted).
    Abort(String),
}

/// A record's chain in progress.
pub(crate) struct Chain {
    /// The record's JSON text.
    pub(crate) raw: Box<RawValue>,
    /// The template scope, built from `raw` when a step first needs it.
    pub(crate) scope: Option<Scope>,
    pub(crate) ts: i64,
    pub(crate) done: Vec<StepDone>,
    pub(crate) attempts: u32,
    /// Whether it has a journal entry (to remove at commit).
    pub(crate) journaled: bool,
}

impl Chain {
    /// A chain that has not started.
    pub(crate) fn new(raw: Box<RawValue>, ts: i64) -> Chain {
        Chain {
            raw,
            scope: None,
            ts,
            done: Vec::new(),
            attempts: 0,
            journaled: false,
        }
    }

    /// The template scope, parsing the record the first time.
    pub(crate) fn scope(&mut self, recipe: &Recipe) -> Result<&Scope, String> {
        if self.scope.is_none() {
            let record = parse_raw(&self.raw)?;
            self.scope = Some(chain_scope(recipe, record, &self.done));
        }
        Ok(self.scope.as_ref().expect("invariant: set just above"))
    }

    fn journal(&mut self, exec: &impl Executor, key: &str) -> Result<()> {
        let view = JournalView {
            record: &self.raw,
            ts: self.ts,
            done: &self.done,
            attempts: self.attempts,
        };
        exec.journal(key, &view)?;
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

    /// The record as a value (its text when it is too deep to parse: nothing is lost).
    pub(crate) fn record(&self) -> Value {
        match &self.scope {
            Some(scope) => scope.value().get("record").cloned().unwrap_or(Value::Null),
            None => parse_raw(&self.raw).unwrap_or_else(|_| Value::String(self.raw.get().into())),
        }
    }

    /// The dead letter of this chain, failed at `step`.
    pub(crate) fn into_dead(
        self,
        recipe: &Recipe,
        key: &str,
        step: &str,
        f: Failure,
        now: i64,
    ) -> Box<DeadLetter> {
        let record = self.record();
        let error = if f.request.is_empty() {
            f.message.clone()
        } else {
            Failure {
                step: None,
                ..f.clone()
            }
            .to_string()
        };
        Box::new(DeadLetter {
            recipe: recipe.id.clone(),
            key: key.to_string(),
            ts: self.ts,
            record,
            done: self.done,
            failed_step: step.to_string(),
            class: f.class,
            error,
            request: (!f.request.is_empty()).then_some(f.request),
            status: f.status,
            at: now,
        })
    }
}

/// The template scope of a chain: `record`, `steps` (outputs so far) and `recipe`.
pub(crate) fn chain_scope(recipe: &Recipe, record: Value, done: &[StepDone]) -> Scope {
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

/// Whether the recipe's filter lets the chain's record through (`Ok(true)` without a filter).
pub(crate) fn passes_filter(recipe: &Recipe, chain: &mut Chain) -> Result<bool, Failure> {
    let Some(f) = &recipe.filter else {
        return Ok(true);
    };
    chain
        .scope(recipe)
        .map_err(RenderError)
        .and_then(|scope| f.truthy(scope))
        .map_err(|e| Failure::input(e.0))
}

/// Runs the chain from its first unfinished step. `chain` is taken when the record becomes a
/// dead letter.
/// Each step run is added to `trace` (what it sent and got, for the run history).
pub(crate) async fn run_chain(
    recipe: &Recipe,
    exec: &impl Executor,
    key: &str,
    chain: &mut Option<Chain>,
    now: i64,
    tally: &mut Tally,
    trace: &mut Vec<StepRun>,
) -> Result<Outcome> {
    let c = chain.as_mut().expect("invariant: a chain to run");
    while c.done.len() < recipe.steps.len() {
        if exec.stopping() {
            // Shutting down: the step under way finished; the rest waits for the next run.
            if !c.done.is_empty() {
                c.journal(exec, key)?;
            }
            tally.unfinished += 1;
            return Ok(Outcome::Unfinished("shutting down".into()));
        }
        let step = &recipe.steps[c.done.len()];
        let span = tracing::info_span!("step", step = %step.id, attempt = c.attempts + 1);
        let run = match &step.condition {
            Some(cond) => c
                .scope(recipe)
                .map_err(RenderError)
                .and_then(|scope| cond.truthy(scope))
                .map_err(|e| Failure::input(format!("if: {e}"))),
            None => Ok(true),
        };
        let mut sent = None;
        let result = match run {
            Ok(false) => {
                tally.steps_skipped += 1;
                trace.push(StepRun {
                    step: step.id.clone(),
                    sent: None,
                    got: Value::Null,
                    skipped: true,
                    error: None,
                });
                c.push(StepDone {
                    step: step.id.clone(),
                    output: Value::Null,
                    skipped: true,
                    error: None,
                });
                continue;
            }
            Ok(true) => {
                execute_step(recipe, step, c, exec, &mut sent)
                    .instrument(span.clone())
                    .await
            }
            Err(f) => Err(f),
        };
        match result {
            Ok(output) => {
                let output = exec.step_output(step, output);
                trace.push(StepRun {
                    step: step.id.clone(),
                    sent: sent.as_ref().map(truncate),
                    got: truncate(&output),
                    skipped: false,
                    error: None,
                });
                tally.steps_ok += 1;
                c.attempts = 0;
                c.push(StepDone {
                    step: step.id.clone(),
                    output,
                    skipped: false,
                    error: None,
                });
                // A finished HTTP step is made durable before anything else happens (the last
                // one too: the commit comes later), so it is never repeated. `emit` is local
                // and batched per commit instead.
                if matches!(step.kind, StepAction::Http { .. }) {
                    c.journal(exec, key)?;
                }
            }
            Err(f) => {
                let f = f.in_step(&step.id);
                trace.push(StepRun {
                    step: step.id.clone(),
                    sent: sent.as_ref().map(truncate),
                    got: Value::Null,
                    skipped: matches!(step.on_error, OnError::Skip),
                    error: Some(f.to_string()),
                });
                tally.steps_failed += 1;
                tally.failed_by_class.bump(f.class);
                span.in_scope(|| {
                    tracing::warn!(recipe = %recipe.id, step = %step.id, key, class = %f.class, error = %f, "Step failed.");
                });
                if matches!(
                    f.class,
                    FailureClass::Auth | FailureClass::Retryable | FailureClass::RateLimited
                ) {
                    if !c.done.is_empty() {
                        c.journal(exec, key)?;
                    }
                    tally.unfinished += 1;
                    return Ok(Outcome::Abort(f.to_string()));
                }
                // A request that may have been carried out is never repeated by `retry`: the
                // next cycle would send it again without looking. A person decides.
                let on_error = match step.on_error {
                    OnError::Retry if f.code.as_deref() == Some(OUTCOME_UNKNOWN) => OnError::Stop,
                    other => other,
                };
                match on_error {
                    OnError::Skip => {
                        tally.steps_skipped += 1;
                        c.push(StepDone {
                            step: step.id.clone(),
                            output: Value::Null,
                            skipped: true,
                            error: Some(f.message),
                        });
                    }
                    OnError::Stop => {
                        tally.dead_letters += 1;
                        let owned = chain.take().expect("invariant: present");
                        return Ok(Outcome::Dead(
                            owned.into_dead(recipe, key, &step.id, f, now),
                        ));
                    }
                    OnError::Retry => {
                        c.attempts += 1;
                        c.journal(exec, key)?;
                        tally.unfinished += 1;
                        return Ok(Outcome::Unfinished(f.to_string()));
                    }
                }
            }
        }
    }
    tally.finished += 1;
    Ok(Outcome::Finished)
}

/// Runs a step; `sent` gets the inputs it rendered (a list of them for `for_each`).
async fn execute_step(
    recipe: &Recipe,
    step: &Step,
    chain: &mut Chain,
    exec: &impl Executor,
    sent: &mut Option<Value>,
) -> Result<Value, Failure> {
    if !step.needs_scope() {
        return execute_one(step, None, &chain.raw, exec, sent).await;
    }
    chain.scope(recipe).map_err(Failure::input)?;
    let (Some(scope), raw) = (&chain.scope, &chain.raw) else {
        unreachable!("invariant: the scope was built just above")
    };
    let Some(each) = &step.for_each else {
        return execute_one(step, Some(scope), raw, exec, sent).await;
    };
    let items = match each
        .render_required(scope)
        .map_err(|e| Failure::input(format!("for_each: {e}")))?
    {
        Value::Array(a) => a,
        other => {
            return Err(Failure::input(format!(
                "for_each must give a list, got {other}"
            )))
        }
    };
    let mut outputs = Vec::with_capacity(items.len());
    let mut inputs = Vec::with_capacity(items.len());
    for it in items {
        let mut v = scope.value().clone();
        if let Value::Object(m) = &mut v {
            m.insert("item".into(), it);
        }
        let mut one = None;
        let out = execute_one(step, Some(&Scope::new(v)), raw, exec, &mut one).await;
        inputs.push(one.unwrap_or(Value::Null));
        *sent = Some(Value::Array(inputs.clone()));
        outputs.push(out?);
    }
    Ok(Value::Array(outputs))
}

/// Runs one step once. `scope` is `None` only for a step that does not need it (fixed
/// inputs); `raw` is the record's JSON text, which `emit` writes as it is.
async fn execute_one(
    step: &Step,
    scope: Option<&Scope>,
    raw: &RawValue,
    exec: &impl Executor,
    sent: &mut Option<Value>,
) -> Result<Value, Failure> {
    let rendered;
    let input = match (&step.fixed_inputs, scope) {
        (Some(fixed), _) => fixed,
        (None, Some(scope)) => {
            rendered = step.render_inputs(scope).map_err(Failure::input)?;
            &rendered
        }
        (None, None) => unreachable!("invariant: a step with templated inputs gets a scope"),
    };
    if exec.traced() {
        *sent = Some(Value::Object(input.clone()));
    }
    match &step.kind {
        StepAction::Emit { .. } => {
            let to = step
                .emit_to(input)
                .map_err(|e| Failure::input(format!("emit: {e}")))?;
            let line = match input.get("value") {
                Some(v) => Line::Value(v),
                None => Line::Raw(raw),
            };
            exec.emit(step, &to, line)?;
            Ok(Value::Null)
        }
        StepAction::Http {
            connector,
            action_id,
        } => exec.http(step, &connector.actions[action_id], input).await,
    }
}
