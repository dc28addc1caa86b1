//! Dry runs (`sluice test`): the engine's own chain for one sample record, with an executor
//! that records every request instead of sending it — so a dry run cannot drift from a real
//! run.
//!
//! Owns the sample format (a record, or `{record, steps}` with mocked step outputs), the
//! placeholders used for outputs of steps that were not mocked, and the recording executor.
//! Does not send requests or touch state.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::action;
use crate::engine::chain::{passes_filter, run_chain, Chain, Executor, Line, Outcome, Tally};
use crate::failure::Failure;
use crate::http::{method_str, Connection, HttpRequest};
use crate::plan::{Action, EmitTo, Recipe, Step};
use crate::runtime::Runtime;
use crate::store::JournalView;

/// A sample: the trigger record and, optionally, outputs of steps by id.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The trigger record.
    pub record: Value,
    /// Mocked outputs of steps (step id → output).
    pub steps: Map<String, Value>,
}

impl Sample {
    /// Reads a sample: `{"record": {…}, "steps": {…}}`, or a bare record.
    pub fn from_json(v: Value) -> Result<Sample, String> {
        match v {
            Value::Object(mut m) if m.contains_key("record") => {
                let record = m.remove("record").unwrap_or(Value::Null);
                let steps = match m.remove("steps") {
                    None => Map::new(),
                    Some(Value::Object(s)) => s,
                    Some(_) => {
                        return Err("`steps` in the sample must map step ids to outputs".into())
                    }
                };
                if let Some(k) = m.keys().next() {
                    return Err(format!(
                        "unknown key `{k}` in the sample; it takes `record` and `steps`"
                    ));
                }
                if !record.is_object() {
                    return Err("`record` in the sample must be a JSON object".into());
                }
                Ok(Sample { record, steps })
            }
            Value::Object(_) => Ok(Sample {
                record: v,
                steps: Map::new(),
            }),
            _ => Err(
                "the sample must be a JSON object (a record, or {\"record\": …, \"steps\": …})"
                    .into(),
            ),
        }
    }
}

/// What one step would do.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    /// Step id.
    pub step: String,
    /// `<connector>.<action>`.
    pub action: String,
    /// Why it would not run (its `if` is false), if so.
    pub skipped: Option<String>,
    /// The requests it would send, in order.
    pub requests: Vec<Value>,
    /// Whether its output was mocked by the sample.
    pub mocked_output: bool,
}

/// What the whole recipe would do for the sample.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// Recipe id.
    pub recipe: String,
    /// Whether the filter lets the record through.
    pub passes_filter: bool,
    /// Steps in order (empty when the filter stops the record).
    pub steps: Vec<StepPlan>,
}

/// A request as shown to people: method, full URL (built as `Connection::url` builds the one
/// sent), headers (credentials as `***`), body.
pub fn describe_request(conn: &Connection, r: &HttpRequest) -> Result<Value, String> {
    let url = conn.url(r)?;
    let mut headers: Map<String, Value> = conn
        .redacted_headers()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    if r.body.is_some() {
        headers.insert("Content-Type".into(), "application/json".into());
    }
    Ok(json!({
        "method": method_str(r.method),
        "url": url.as_str(),
        "headers": headers,
        "body": r.body,
    }))
}

/// A stand-in output for a step that was not mocked: its declared output fields as
/// `"<steps.ID.FIELD>"` text (a list of them when the action sends one request per item).
fn placeholder(step: &Step, action: &Action, requests: usize) -> Value {
    let mut m = Map::new();
    for k in action.outputs.keys() {
        m.insert(k.clone(), Value::String(format!("<steps.{}.{k}>", step.id)));
    }
    let obj = Value::Object(m);
    if action.for_each.is_some() {
        Value::Array(vec![obj; requests.max(1)])
    } else {
        obj
    }
}

/// The executor of dry runs: it records what each step would send or write, sends nothing,
/// and answers with the sample's mocked outputs or placeholders. Progress is not journaled.
struct Recorder<'a> {
    rt: &'a Runtime,
    mocks: &'a Map<String, Value>,
    record: &'a Value,
    requests: Mutex<HashMap<String, Vec<Value>>>,
}

impl Recorder<'_> {
    fn note(&self, step: &Step, v: Value) {
        if let Ok(mut m) = self.requests.lock() {
            m.entry(step.id.clone()).or_default().push(v);
        }
    }
}

impl Executor for Recorder<'_> {
    async fn http(
        &self,
        step: &Step,
        action: &Action,
        input: &Map<String, Value>,
    ) -> Result<Value, Failure> {
        let conn = self.rt.conn(step.conn);
        let prepared = action::prepare(action, input)?;
        for r in &prepared.requests {
            self.note(step, describe_request(conn, r).map_err(Failure::input)?);
        }
        Ok(placeholder(step, action, prepared.requests.len()))
    }

    fn step_output(&self, step: &Step, output: Value) -> Value {
        // A mocked output stands for the whole step (all its items).
        self.mocks.get(&step.id).cloned().unwrap_or(output)
    }

    fn emit(&self, step: &Step, to: &EmitTo, line: Line<'_>) -> Result<(), Failure> {
        let value = match line {
            Line::Value(v) => v.clone(),
            Line::Raw(_) => self.record.clone(),
        };
        let to = match to {
            EmitTo::Stdout => "stdout".to_string(),
            EmitTo::File(p) => p.display().to_string(),
        };
        self.note(step, json!({"emit": value, "to": to}));
        Ok(())
    }

    fn journal(&self, _key: &str, _view: &JournalView<'_>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Whether the recipe's filter lets `record` through (`true` without a filter).
pub fn passes(recipe: &Recipe, record: &Value) -> Result<bool, String> {
    let raw = RawValue::from_string(record.to_string())
        .map_err(|e| format!("the record cannot be read: {e}"))?;
    let ts = crate::trigger::cursor_of(recipe.trigger(), record).unwrap_or_default();
    passes_filter(recipe, &mut Chain::new(raw, ts)).map_err(|f| format!("filter: {}", f.message))
}

/// Runs the recipe's own chain ([`crate::engine`]'s) for a sample, sending nothing.
pub async fn run(rt: &Runtime, recipe: &Recipe, sample: &Sample) -> Result<DryRun, String> {
    let raw = RawValue::from_string(sample.record.to_string())
        .map_err(|e| format!("the sample record cannot be read: {e}"))?;
    let ts = crate::trigger::cursor_of(recipe.trigger(), &sample.record).unwrap_or_default();
    let mut chain = Chain::new(raw, ts);
    let mut out = DryRun {
        recipe: recipe.id.clone(),
        passes_filter: true,
        steps: Vec::new(),
    };
    out.passes_filter =
        passes_filter(recipe, &mut chain).map_err(|f| format!("filter: {}", f.message))?;
    if !out.passes_filter {
        return Ok(out);
    }
    let rec = Recorder {
        rt,
        mocks: &sample.steps,
        record: &sample.record,
        requests: Mutex::new(HashMap::new()),
    };
    // Outputs the sample mocks are what later steps see.
    let mut chain = Some(chain);
    let mut tally = Tally::default();
    let outcome = run_chain(
        recipe,
        &rec,
        "dry-run",
        &mut chain,
        0,
        &mut tally,
        &mut Vec::new(),
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    let done = match (outcome, chain) {
        (Outcome::Finished, Some(c)) => c.done,
        (Outcome::Dead(d), _) => return Err(format!("step `{}`: {}", d.failed_step, d.error)),
        (Outcome::Unfinished(why), _) => {
            return Err(format!(
                "{why} (`on_error: retry` would try it again next run)"
            ))
        }
        (Outcome::Abort(why), _) => return Err(why),
        (_, None) => return Err("the chain did not finish".into()),
    };
    let mut requests = rec.requests.into_inner().unwrap_or_default();
    for (step, d) in recipe.steps.iter().zip(done) {
        out.steps.push(StepPlan {
            step: step.id.clone(),
            action: step.action_name(),
            skipped: d.skipped.then(|| match &d.error {
                Some(e) => format!("it failed and `on_error: skip` goes on: {e}"),
                None => "its `if` condition is false".into(),
            }),
            requests: requests.remove(&step.id).unwrap_or_default(),
            mocked_output: sample.steps.contains_key(&step.id),
        });
    }
    Ok(out)
}
