//! Dry runs (`sluice test`): render a recipe's filter, conditions and every step's requests for
//! one sample record, without sending anything.
//!
//! Owns the sample format (a record, or `{record, steps}` with mocked step outputs) and the
//! placeholders used for outputs of steps that were not mocked. Does not send requests or touch
//! state; the engine runs the real thing.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::action;
use crate::http::{method_str, Connection, HttpRequest};
use crate::plan::{Recipe, Step};
use crate::template::Scope;

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
/// `"<steps.ID.FIELD>"` text (a one-item list when the step outputs a list).
fn placeholder(step: &Step) -> Value {
    let mut m = Map::new();
    let declared: Vec<String> = step
        .action()
        .map(|a| a.spec.outputs.keys().cloned().collect())
        .unwrap_or_default();
    for k in &declared {
        m.insert(k.clone(), Value::String(format!("<steps.{}.{k}>", step.id)));
    }
    let obj = Value::Object(m);
    if step.outputs_list() {
        Value::Array(vec![obj])
    } else {
        obj
    }
}

/// Renders the recipe for a sample. `conns` maps connection names to connections.
pub fn run(
    recipe: &Recipe,
    sample: &Sample,
    conns: &HashMap<String, Connection>,
) -> Result<DryRun, String> {
    let mut ctx = Map::new();
    ctx.insert("record".into(), sample.record.clone());
    ctx.insert("steps".into(), Value::Object(Map::new()));
    ctx.insert("recipe".into(), recipe.metadata().clone());
    let mut out = DryRun {
        recipe: recipe.id.clone(),
        passes_filter: true,
        steps: Vec::new(),
    };
    if let Some(f) = &recipe.filter {
        let scope = Scope::new(Value::Object(ctx.clone()));
        out.passes_filter = f.truthy(&scope).map_err(|e| format!("filter: {e}"))?;
        if !out.passes_filter {
            return Ok(out);
        }
    }
    for step in &recipe.steps {
        let scope = Scope::new(Value::Object(ctx.clone()));
        let mut plan = StepPlan {
            step: step.id.clone(),
            action: step.action_name(),
            skipped: None,
            requests: Vec::new(),
            mocked_output: sample.steps.contains_key(&step.id),
        };
        let run = match &step.condition {
            Some(c) => c
                .truthy(&scope)
                .map_err(|e| format!("step `{}`: if: {e}", step.id))?,
            None => true,
        };
        if !run {
            plan.skipped = Some("its `if` condition is false".into());
        } else {
            let items: Vec<Option<Value>> = match &step.for_each {
                Some(t) => match t
                    .render_required(&scope)
                    .map_err(|e| format!("step `{}`: for_each: {e}", step.id))?
                {
                    Value::Array(a) => a.into_iter().map(Some).collect(),
                    other => {
                        return Err(format!(
                            "step `{}`: for_each must give a list, got {other}",
                            step.id
                        ))
                    }
                },
                None => vec![None],
            };
            for item in items {
                let scope = match item {
                    Some(it) => {
                        let mut c = ctx.clone();
                        c.insert("item".into(), it);
                        Scope::new(Value::Object(c))
                    }
                    None => Scope::new(Value::Object(ctx.clone())),
                };
                let input = step
                    .render_inputs(&scope)
                    .map_err(|e| format!("step `{}`: {e}", step.id))?;
                let Some(a) = step.action() else {
                    // `emit` sends no request: show the line it would write.
                    let value = input
                        .get("value")
                        .cloned()
                        .unwrap_or_else(|| sample.record.clone());
                    let to = match step
                        .emit_to(&input)
                        .map_err(|e| format!("step `{}`: emit: {e}", step.id))?
                    {
                        crate::plan::EmitTo::Stdout => "stdout".to_string(),
                        crate::plan::EmitTo::File(p) => p.display().to_string(),
                    };
                    plan.requests.push(json!({"emit": value, "to": to}));
                    continue;
                };
                let conn = conns.get(&step.connection).ok_or_else(|| {
                    format!(
                        "step `{}`: connection `{}` is not open",
                        step.id, step.connection
                    )
                })?;
                let prepared =
                    action::prepare(a, &input).map_err(|e| format!("step `{}`: {e}", step.id))?;
                for r in &prepared.requests {
                    plan.requests.push(
                        describe_request(conn, r)
                            .map_err(|e| format!("step `{}`: {e}", step.id))?,
                    );
                }
            }
        }
        let output = match sample.steps.get(&step.id) {
            Some(v) => v.clone(),
            None if plan.skipped.is_some() => Value::Null,
            None => placeholder(step),
        };
        if let Some(Value::Object(steps)) = ctx.get_mut("steps") {
            steps.insert(step.id.clone(), output);
        }
        out.steps.push(plan);
    }
    Ok(out)
}
