//! Action: checking typed inputs, choosing the variant, rendering the request(s) and executing
//! them against a connection.
//!
//! Owns input validation (unknown, missing, wrong type, not allowed), variant selection,
//! `for_each` expansion and output extraction. `prepare` renders without sending, for dry runs.
//! Does not retry (the `http` layer does) or keep state.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::http::{Connection, Failure, FailureClass, HttpRequest};
use crate::plan::{type_matches, Action, Condition, Variant};
use crate::spec::{FieldSpec, FieldTypeSpec};
use crate::template::{lookup, Scope};

/// Why an action did not produce an output.
#[derive(Debug, Clone)]
pub enum ActionError {
    /// The inputs are wrong; nothing was sent.
    Input(String),
    /// A request failed (after retries where the class allows them).
    Failed(Failure),
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::Input(m) => write!(f, "invalid input: {m}"),
            ActionError::Failed(fail) => fail.fmt(f),
        }
    }
}

impl std::error::Error for ActionError {}

impl ActionError {
    /// The failure class, for callers that branch on it (input errors are fatal).
    pub fn class(&self) -> FailureClass {
        match self {
            ActionError::Input(_) => FailureClass::Fatal,
            ActionError::Failed(f) => f.class,
        }
    }
}

/// Checks values against typed fields: unknown names, missing required ones, wrong types and
/// values outside `enum`. `what` is `input` or `option`, for the message.
pub fn check_fields(
    what: &str,
    fields: &IndexMap<String, FieldSpec>,
    given: &Map<String, Value>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (k, v) in given {
        let Some(f) = fields.get(k) else {
            let hint = crate::spec::did_you_mean(k, fields.keys().map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            problems.push(format!("unknown {what} `{k}`{hint}"));
            continue;
        };
        if v.is_null() {
            // An explicit null is passed through: some APIs use it to clear a field.
            continue;
        }
        if !type_matches(f.ty, v) {
            problems.push(format!("{what} `{k}` must be {}, got {v}", type_name(f.ty)));
            continue;
        }
        if let (Some(items), Value::Array(a)) = (f.items, v) {
            if let Some(bad) = a.iter().find(|x| !type_matches(items, x)) {
                problems.push(format!(
                    "every item of `{k}` must be {}, got {bad}",
                    type_name(items)
                ));
            }
        }
        if let Some(allowed) = &f.allowed {
            if !allowed.contains(v) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                problems.push(format!(
                    "{what} `{k}` must be one of {}, got {v}",
                    list.join(", ")
                ));
            }
        }
    }
    for (k, f) in fields {
        if f.required && !given.contains_key(k) {
            problems.push(format!(
                "required {what} `{k}` is missing ({})",
                type_name(f.ty)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A type's name in messages.
pub fn type_name(t: FieldTypeSpec) -> &'static str {
    match t {
        FieldTypeSpec::String => "text",
        FieldTypeSpec::Integer => "a whole number",
        FieldTypeSpec::Number => "a number",
        FieldTypeSpec::Boolean => "true or false",
        FieldTypeSpec::Timestamp => "a Unix timestamp in seconds",
        FieldTypeSpec::Object => "an object",
        FieldTypeSpec::Array => "a list",
        FieldTypeSpec::Any => "any value",
    }
}

/// Rendered requests for one action call, before sending.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The chosen variant.
    pub variant: &'a Variant,
    /// One request, or one per item with `for_each`.
    pub requests: Vec<HttpRequest>,
    /// Whether the output is a list (one entry per request).
    pub many: bool,
}

/// Checks inputs, picks the variant and renders every request without sending anything.
pub fn prepare<'a>(
    action: &'a Action,
    input: &Map<String, Value>,
) -> Result<Prepared<'a>, ActionError> {
    check_fields("input", &action.spec.inputs, input).map_err(ActionError::Input)?;
    let any = &action.spec.require_any;
    if !any.is_empty()
        && !any
            .iter()
            .any(|k| input.get(k).is_some_and(|v| !v.is_null()))
    {
        return Err(ActionError::Input(format!(
            "give at least one of `{}`",
            any.join("`, `")
        )));
    }
    let variant = choose(action, input)?;
    let mut scope = Map::new();
    scope.insert("input".into(), Value::Object(input.clone()));
    let mut requests = Vec::new();
    let many = action.spec.for_each.is_some();
    match &action.spec.for_each {
        Some(list) => {
            let items = match input.get(list) {
                Some(Value::Array(a)) if !a.is_empty() => a.clone(),
                _ => {
                    return Err(ActionError::Input(format!(
                        "`{list}` must be a non-empty list: this action sends one request per item"
                    )))
                }
            };
            let mut s = Value::Object(scope);
            for item in items {
                if let Value::Object(m) = &mut s {
                    m.insert("item".into(), item);
                }
                let sc = Scope::new(s);
                requests.push(
                    variant
                        .request
                        .render(&sc, "input")
                        .map_err(ActionError::Input)?,
                );
                s = sc.value().clone();
            }
        }
        None => {
            let sc = Scope::new(Value::Object(scope));
            requests.push(
                variant
                    .request
                    .render(&sc, "input")
                    .map_err(ActionError::Input)?,
            );
        }
    }
    Ok(Prepared {
        variant,
        requests,
        many,
    })
}

fn choose<'a>(action: &'a Action, input: &Map<String, Value>) -> Result<&'a Variant, ActionError> {
    let found = action.variants.iter().find(|v| match &v.when {
        None => true,
        Some(Condition::Present(name)) => input.get(name).is_some_and(|v| !v.is_null()),
        Some(Condition::Equals(name, value)) => input.get(name) == Some(value),
    });
    let Some(v) = found else {
        let options: Vec<String> = action
            .variants
            .iter()
            .filter_map(|v| match &v.when {
                Some(Condition::Present(n)) => Some(format!("`{n}`")),
                Some(Condition::Equals(input, value)) => Some(format!("`{input}` = {value}")),
                None => None,
            })
            .collect();
        return Err(ActionError::Input(format!(
            "give one of: {}",
            options.join(", ")
        )));
    };
    let missing: Vec<&str> = v
        .requires
        .iter()
        .filter(|r| input.get(*r).is_none_or(Value::is_null))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let why = match &v.when {
            Some(Condition::Present(n)) => format!(" when `{n}` is given"),
            Some(Condition::Equals(input, value)) => format!(" when `{input}` is {value}"),
            None => String::new(),
        };
        return Err(ActionError::Input(format!(
            "`{}` {} required{why}",
            missing.join("`, `"),
            if missing.len() == 1 { "is" } else { "are" }
        )));
    }
    Ok(v)
}

/// Runs an action and returns its output (a list with `for_each`). A `conflict` on an action
/// with `on_conflict` returns the existing object instead.
pub async fn execute(
    conn: &Connection,
    action: &Action,
    input: &Map<String, Value>,
) -> Result<Value, ActionError> {
    match execute_once(conn, action, input).await {
        Err(ActionError::Failed(f))
            if f.class == FailureClass::Conflict && action.spec.on_conflict.is_some() =>
        {
            let oc = action
                .spec
                .on_conflict
                .as_ref()
                .expect("invariant: checked in the guard");
            let id = f
                .message
                .split_once(oc.id_after.as_str())
                .map(|(_, rest)| {
                    rest.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                        .collect::<String>()
                })
                .filter(|id| !id.is_empty());
            let (Some(id), Some(then)) = (id, conn.connector.actions.get(&oc.then)) else {
                return Err(ActionError::Failed(f));
            };
            tracing::debug!(action = %action.id, "The object exists already; using it.");
            let mut m = Map::new();
            m.insert(oc.input.clone(), Value::String(id));
            execute_once(conn, then, &m).await
        }
        other => other,
    }
}

async fn execute_once(
    conn: &Connection,
    action: &Action,
    input: &Map<String, Value>,
) -> Result<Value, ActionError> {
    let prepared = prepare(action, input)?;
    let mut outputs = Vec::with_capacity(prepared.requests.len());
    for req in &prepared.requests {
        let resp = conn
            .send(req, &action.spec.errors)
            .await
            .map_err(ActionError::Failed)?;
        outputs.push(extract(&prepared.variant.output, resp.body, req)?);
    }
    Ok(if prepared.many {
        Value::Array(outputs)
    } else {
        outputs.pop().unwrap_or(Value::Null)
    })
}

fn extract(path: &[String], body: Value, req: &HttpRequest) -> Result<Value, ActionError> {
    if path.is_empty() {
        return Ok(body);
    }
    match lookup(&body, path) {
        Some(v) => Ok(v.clone()),
        None => Err(ActionError::Failed(Failure {
            class: FailureClass::Fatal,
            status: None,
            code: Some("not_found".into()),
            message: format!(
                "nothing was found: the response has no `{}`",
                path.join(".")
            ),
            help: None,
            request: req.describe(),
            attempts: 1,
        })),
    }
}
