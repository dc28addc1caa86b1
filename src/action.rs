//! Action: checking typed inputs, choosing the variant, rendering the request(s) and executing
//! them against a connection.
//!
//! Owns input validation (unknown, missing, wrong type, not allowed), variant selection,
//! `for_each` expansion and output extraction. `prepare` renders without sending, for dry runs.
//! Does not retry (the `http` layer does) or keep state.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::http::{Connection, Failure, FailureClass, HttpRequest};
use crate::plan::{type_matches, Action, Condition, Field, FieldType, FindEarlier, Variant};
use crate::template::{lookup, Scope};

/// Checks values against typed fields: unknown names, missing required ones, wrong types and
/// values outside `enum`. `what` is `input` or `option`, for the message.
pub fn check_fields(
    what: &str,
    fields: &IndexMap<String, Field>,
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
pub fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "text",
        FieldType::Integer => "a whole number",
        FieldType::Number => "a number",
        FieldType::Boolean => "true or false",
        FieldType::Timestamp => "a Unix timestamp in seconds",
        FieldType::Object => "an object",
        FieldType::Array => "a list",
        FieldType::Any => "any value",
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
) -> Result<Prepared<'a>, Failure> {
    check_fields("input", &action.inputs, input).map_err(Failure::input)?;
    let any = &action.require_any;
    if !any.is_empty()
        && !any
            .iter()
            .any(|k| input.get(k).is_some_and(|v| !v.is_null()))
    {
        return Err(Failure::input(format!(
            "give at least one of `{}`",
            any.join("`, `")
        )));
    }
    let variant = choose(action, input)?;
    let mut scope = Map::new();
    scope.insert("input".into(), Value::Object(input.clone()));
    let mut requests = Vec::new();
    let many = action.for_each.is_some();
    match &action.for_each {
        Some(list) => {
            let items = match input.get(list) {
                Some(Value::Array(a)) if !a.is_empty() => a.clone(),
                _ => {
                    return Err(Failure::input(format!(
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
                        .map_err(Failure::input)?,
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
                    .map_err(Failure::input)?,
            );
        }
    }
    Ok(Prepared {
        variant,
        requests,
        many,
    })
}

fn choose<'a>(action: &'a Action, input: &Map<String, Value>) -> Result<&'a Variant, Failure> {
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
        return Err(Failure::input(format!(
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
        return Err(Failure::input(format!(
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
) -> Result<Value, Failure> {
    match execute_once(conn, action, input).await {
        Err(f) if f.class == FailureClass::Conflict && action.on_conflict.is_some() => {
            let oc = action
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
                return Err(f);
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
) -> Result<Value, Failure> {
    let prepared = prepare(action, input)?;
    let mut outputs = Vec::with_capacity(prepared.requests.len());
    for req in &prepared.requests {
        if action.retry_safe.holds_for(input) {
            let resp = conn.send(req, &action.errors).await?;
            outputs.push(extract(&prepared.variant.output, resp.body, req)?);
            continue;
        }
        match send_unrepeated(conn, action, input, req).await? {
            Sent::Answer(body) => outputs.push(extract(&prepared.variant.output, body, req)?),
            Sent::FoundEarlier(object) => outputs.push(object),
        }
    }
    Ok(if prepared.many {
        Value::Array(outputs)
    } else {
        outputs.pop().unwrap_or(Value::Null)
    })
}

/// What sending a request that must not be carried out twice came to.
enum Sent {
    /// The response's body.
    Answer(Value),
    /// No answer came back, but the earlier attempt's object was found.
    FoundEarlier(Value),
}

/// Sends a request that is not safe to repeat (a create). When it may have been carried out
/// without an answer coming back, it is sent again only once the action's `find_earlier`
/// lookup shows that it was not; without a lookup, or when the lookup fails, the step fails
/// as `fatal` (a dead letter to check by hand) rather than risk a duplicate.
async fn send_unrepeated(
    conn: &Connection,
    action: &Action,
    input: &Map<String, Value>,
    req: &HttpRequest,
) -> Result<Sent, Failure> {
    // Candidates made before the first attempt cannot be its result. The server's clock is
    // known to the second from its `Date` headers (truncated): two seconds of margin, so an
    // identical object made just before is not taken for this attempt's.
    let first_attempt = conn.server_now().await - 2;
    let policy = conn.retry_policy();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let failure = match conn.send_once_only(req, &action.errors).await {
            Ok(resp) => return Ok(Sent::Answer(resp.body)),
            Err(f) if f.outcome_unknown() => f,
            Err(f) => return Err(f),
        };
        let unknown = |why: String| {
            Failure {
                class: FailureClass::Fatal,
                code: Some(crate::failure::OUTCOME_UNKNOWN.into()),
                message: format!(
                    "{} — the request may have been carried out, and `{}` is not safe to repeat, so it was not sent again ({why})",
                    failure.message, action.id
                ),
                help: Some("check whether it was carried out, then replay or drop the dead letter".into()),
                ..failure.clone()
            }
        };
        let Some(fe) = &action.find_earlier else {
            return Err(unknown(
                "the connector declares no way to look for it".into(),
            ));
        };
        // The first request may still be under way at the server (a timeout): give it the
        // backoff's time to land before looking, so it is not sent a second time.
        tokio::time::sleep(policy.backoff(attempts)).await;
        match find_earlier(conn, fe, input, first_attempt).await {
            Ok(Some(object)) => {
                tracing::debug!(action = %action.id, "The earlier attempt was carried out; using its result.");
                return Ok(Sent::FoundEarlier(object));
            }
            Ok(None) if attempts < policy.max_attempts => {}
            // Surely not carried out: a retryable failure, safe to try again later.
            Ok(None) => return Err(failure),
            Err(e) => return Err(unknown(format!("looking for it failed: {e}"))),
        }
    }
}

/// Runs a `find_earlier` lookup: the first candidate created since `since` whose fields match
/// what was sent.
async fn find_earlier(
    conn: &Connection,
    fe: &FindEarlier,
    input: &Map<String, Value>,
    since: i64,
) -> Result<Option<Value>, String> {
    let mut scope = Map::new();
    scope.insert("input".into(), Value::Object(input.clone()));
    let scope = Scope::new(Value::Object(scope));
    let req = fe.request.render(&scope, "input")?;
    let mut wanted = Vec::with_capacity(fe.matches.len());
    for (path, t) in &fe.matches {
        // A field whose input was not given (an optional `admin_id`) is not compared.
        let Some(v) = t.render_string(&scope).map_err(|e| e.to_string())? else {
            continue;
        };
        // Sent as plain text (stored as HTML) or as HTML: either reading may match.
        let plain = v.split_whitespace().collect::<Vec<_>>().join(" ");
        wanted.push((path, [plain, comparable_text(&v)]));
    }
    let resp = conn.send(&req, &[]).await.map_err(|f| f.to_string())?;
    let Some(Value::Array(candidates)) = lookup(&resp.body, &fe.records) else {
        return Err(format!(
            "{} answered without a `{}` list",
            req.describe(),
            fe.records.join(".")
        ));
    };
    let created = |c: &Value| {
        fe.created_field
            .as_ref()
            .and_then(|f| lookup(c, f))
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
    };
    // The newest match: an earlier identical object is older than this attempt.
    let found = candidates.iter().filter(|c| {
        let recent = fe.created_field.is_none() || created(c).is_some_and(|t| t >= since);
        recent
            && wanted.iter().all(|(path, want)| {
                let got = match lookup(c, path) {
                    Some(Value::String(s)) => comparable_text(s),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => return false,
                };
                want.contains(&got)
            })
    });
    Ok(found.max_by_key(|c| created(c)).cloned())
}

/// Text as compared by `find_earlier`: HTML tags removed, common entities decoded, white
/// space collapsed (an API may store `hello` as `<p>hello</p>`).
fn comparable_text(s: &str) -> String {
    let mut plain = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => {
                in_tag = true;
                plain.push(' ');
            }
            '>' if in_tag => in_tag = false,
            _ if in_tag => {}
            c => plain.push(c),
        }
    }
    let decoded = plain
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn extract(path: &[String], body: Value, req: &HttpRequest) -> Result<Value, Failure> {
    if path.is_empty() {
        return Ok(body);
    }
    match lookup(&body, path) {
        Some(v) => Ok(v.clone()),
        None => Err(Failure {
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
            step: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::comparable_text;

    #[test]
    fn comparable_text_reads_html_as_its_text() {
        assert_eq!(comparable_text("<p>Hello  <b>you</b></p>\n"), "Hello you");
        assert_eq!(
            comparable_text("<p>a &lt;x@y.io&gt; &amp; co</p>"),
            "a <x@y.io> & co"
        );
        assert_eq!(comparable_text("plain"), "plain");
    }
}
