//! The search API (`POST /contacts|conversations|tickets/search`).
//!
//! Owns the query grammar (filters and AND/OR groups, nesting and size limits, per-type operator
//! rules), contact Date-field day truncation in the workspace timezone, inclusive `>`/`<` on
//! conversation and ticket timestamps, sorting, body-cursor pagination and the response
//! envelopes. Paging walks the `(created_at|updated_at, id)` indices from the cursor position when
//! it can and falls back to filter-and-sort otherwise. It does not own storage or index lag
//! bookkeeping (see `store`).

use std::cmp::Ordering;
use std::ops::Bound;

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use serde_json::{json, Value};

use super::error::ApiError;
use super::store::{visible, Kind, Table};

/// Maximum `per_page`; larger values are silently capped.
pub(crate) const MAX_PER_PAGE: usize = 150;
const MAX_FILTERS_PER_GROUP: usize = 15;
const MAX_NESTING: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FType {
    /// Contact date: day granularity, only `= < >`.
    Day,
    /// Conversation/ticket timestamp: second precision, inclusive `> <`.
    Stamp,
    Int,
    Str,
    Bool,
    /// Only `=` and `!=` (contact `tag_id`).
    IdOnly,
    /// Unknown type (custom attributes): anything goes, type inferred from the value.
    Any,
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Lt(f64),
    Gt(f64),
    Le(f64),
    Ge(f64),
    /// `lo <= x < hi` (contact day ranges).
    Range(i64, i64),
    Contains(String),
    NotContains(String),
    Starts(String),
    Ends(String),
    Words(Vec<String>),
    NotWords(Vec<String>),
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Leaf { path: Vec<String>, test: Test },
}

/// A decoded cursor: the position of the last record served plus carried totals.
#[derive(Debug, Clone)]
struct Position {
    page: u64,
    total: u64,
    key: Value,
    id: String,
}

/// A parsed search request.
#[derive(Debug, Clone)]
pub(crate) struct Search {
    kind: Kind,
    root: Node,
    sort_field: String,
    sort_path: Vec<String>,
    desc: bool,
    per_page: usize,
    after: Option<Position>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad("parameter_invalid", msg)
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

/// Field path and type for a search field of a kind.
fn field(kind: Kind, name: &str) -> (Vec<String>, FType) {
    let custom = name.starts_with("custom_attributes.") || name.starts_with("ticket_attributes.");
    match kind {
        Kind::Contact => match name {
            "created_at"
            | "updated_at"
            | "signed_up_at"
            | "last_seen_at"
            | "last_contacted_at"
            | "last_replied_at"
            | "last_email_opened_at"
            | "last_email_clicked_at" => (split(name), FType::Day),
            "tag_id" => (split("tags.data.id"), FType::IdOnly),
            "company_id" => (split("companies.data.id"), FType::IdOnly),
            "owner_id" => (split(name), FType::Int),
            "unsubscribed_from_emails" | "has_hard_bounced" | "marked_email_as_spam" => {
                (split(name), FType::Bool)
            }
            _ if custom && name.ends_with("_at") => (split(name), FType::Day),
            _ if custom => (split(name), FType::Any),
            _ => (split(name), FType::Str),
        },
        Kind::Conversation => match name {
            "created_at" | "updated_at" | "waiting_since" | "snoozed_until" => {
                (split(name), FType::Stamp)
            }
            "admin_assignee_id" | "team_assignee_id" => (split(name), FType::Int),
            "open" | "read" | "ai_agent_participated" => (split(name), FType::Bool),
            "tag_ids" => (split("tags.tags.id"), FType::Str),
            "contact_ids" => (split("contacts.contacts.id"), FType::Str),
            "teammate_ids" => (split("teammates.teammates.id"), FType::Str),
            _ if name.starts_with("statistics.") => (split(name), FType::Int),
            _ if custom => (split(name), FType::Any),
            _ => (split(name), FType::Str),
        },
        _ => match name {
            "created_at" | "updated_at" | "snoozed_until" => (split(name), FType::Stamp),
            "ticket_type_id" => (split("ticket_type.id"), FType::Str),
            "ticket_state_id" => (split("ticket_state.id"), FType::Str),
            "state" => (split("ticket_state.category"), FType::Str),
            "title" => (split("ticket_attributes._default_title_"), FType::Str),
            "description" => (split("ticket_attributes._default_description_"), FType::Str),
            "open" | "is_shared" => (split(name), FType::Bool),
            "contact_ids" => (split("contacts.contacts.id"), FType::Str),
            "tag_ids" => (split("tags.tags.id"), FType::Str),
            _ if custom => (split(name), FType::Any),
            _ => (split(name), FType::Str),
        },
    }
}

fn allowed(kind: Kind, ft: FType, op: &str) -> bool {
    match ft {
        FType::Day => matches!(op, "=" | "<" | ">"),
        FType::Stamp => {
            matches!(op, "=" | "!=" | "IN" | "NIN" | "<" | ">")
                || (kind == Kind::Ticket && matches!(op, "<=" | ">="))
        }
        FType::Int => matches!(op, "=" | "!=" | "IN" | "NIN" | "<" | ">" | "<=" | ">="),
        FType::Str => matches!(op, "=" | "!=" | "IN" | "NIN" | "~" | "!~" | "^" | "$"),
        FType::Bool => matches!(op, "=" | "!=" | "IN" | "NIN"),
        FType::IdOnly => matches!(op, "=" | "!="),
        FType::Any => true,
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// Start of the local calendar day `date` in `tz`, as unix seconds.
fn local_midnight(tz: Tz, date: NaiveDate) -> i64 {
    for hour in 0..4 {
        if let Some(naive) = date.and_hms_opt(hour, 0, 0) {
            if let Some(dt) = tz.from_local_datetime(&naive).earliest() {
                return dt.timestamp();
            }
        }
    }
    date.and_hms_opt(0, 0, 0)
        .map_or(0, |n| n.and_utc().timestamp())
}

/// `[start of ts's local day, start of the next local day)` in `tz`.
pub(crate) fn day_bounds(tz: Tz, ts: i64) -> (i64, i64) {
    let date = match tz.timestamp_opt(ts, 0).single() {
        Some(dt) => dt.date_naive(),
        None => return (ts, ts.saturating_add(86_400)),
    };
    let start = local_midnight(tz, date);
    let next = date
        .succ_opt()
        .map_or(start + 86_400, |d| local_midnight(tz, d));
    (start, next)
}

fn scalar_for(ft: FType, field: &str, v: &Value) -> Result<Value, ApiError> {
    match ft {
        FType::Day | FType::Stamp | FType::Int => match v {
            Value::Null => Ok(Value::Null),
            _ => num(v).map(|n| json!(n as i64)).ok_or_else(|| {
                invalid(format!("The value for field '{field}' must be an integer"))
            }),
        },
        FType::Bool => match v {
            Value::Bool(_) | Value::Null => Ok(v.clone()),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            _ => Err(invalid(format!(
                "The value for field '{field}' must be a boolean"
            ))),
        },
        FType::Str | FType::IdOnly => match v {
            Value::String(_) | Value::Null => Ok(v.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err(invalid(format!(
                "The value for field '{field}' must be a string"
            ))),
        },
        FType::Any => Ok(v.clone()),
    }
}

fn ticket_category(v: Value) -> Value {
    match v.as_str().map(str::to_ascii_lowercase).as_deref() {
        Some("request") => json!("Customer"),
        Some("task") => json!("Back-office"),
        Some("tracker") => json!("Tracker"),
        _ => v,
    }
}

fn words(s: &str) -> Vec<String> {
    let mut text = String::with_capacity(s.len());
    let mut in_tag = false;
    for ch in s.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(ch),
            _ => {}
        }
    }
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

struct Ctx {
    kind: Kind,
    tz: Tz,
    /// `>`/`<` on second-precision stamps exclude the given second (as documented for other
    /// APIs; Intercom's include it). For tests that clients do not rely on the inclusive form.
    strict_gt: bool,
}

fn parse_leaf(ctx: &Ctx, obj: &serde_json::Map<String, Value>) -> Result<Node, ApiError> {
    let name = obj
        .get("field")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("Field is required in a filter"))?;
    let op = obj
        .get("operator")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("Operator is required in a filter"))?;
    let value = obj.get("value").cloned().unwrap_or(Value::Null);
    if !matches!(
        op,
        "=" | "!=" | "IN" | "NIN" | "<" | ">" | "<=" | ">=" | "~" | "!~" | "^" | "$"
    ) {
        return Err(invalid(format!("Operator '{op}' is not supported")));
    }
    let (path, ft) = field(ctx.kind, name);
    if !allowed(ctx.kind, ft, op) {
        return Err(invalid(format!(
            "The operator '{op}' is not supported for field '{name}'"
        )));
    }
    let category = ctx.kind == Kind::Ticket && name == "category";
    let one = |v: &Value| -> Result<Value, ApiError> {
        let s = scalar_for(ft, name, v)?;
        Ok(if category { ticket_category(s) } else { s })
    };
    let text = |v: &Value| -> Result<String, ApiError> {
        match v {
            Value::String(s) => Ok(s.to_lowercase()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(invalid(format!(
                "The value for field '{name}' must be a string"
            ))),
        }
    };
    let number = |v: &Value| -> Result<f64, ApiError> {
        num(v).ok_or_else(|| invalid(format!("The value for field '{name}' must be an integer")))
    };
    let list = |v: &Value| -> Result<Vec<Value>, ApiError> {
        v.as_array()
            .ok_or_else(|| invalid(format!("The value for operator '{op}' must be an array")))?
            .iter()
            .map(one)
            .collect()
    };
    let test = if ft == FType::Day {
        let ts = number(&value)? as i64;
        let (start, next) = day_bounds(ctx.tz, ts);
        match op {
            ">" => Test::Range(next, i64::MAX),
            "<" => Test::Range(i64::MIN, start),
            _ => Test::Range(start, next),
        }
    } else {
        let inclusive = ft == FType::Stamp && !ctx.strict_gt;
        match op {
            "=" => Test::Eq(one(&value)?),
            "!=" => Test::Ne(one(&value)?),
            "IN" => Test::In(list(&value)?),
            "NIN" => Test::Nin(list(&value)?),
            "<" if inclusive => Test::Le(number(&value)?),
            ">" if inclusive => Test::Ge(number(&value)?),
            "<" => Test::Lt(number(&value)?),
            ">" => Test::Gt(number(&value)?),
            "<=" => Test::Le(number(&value)?),
            ">=" => Test::Ge(number(&value)?),
            "~" | "!~" if name == "source.body" => {
                let w = words(&text(&value)?);
                if op == "~" {
                    Test::Words(w)
                } else {
                    Test::NotWords(w)
                }
            }
            "~" => Test::Contains(text(&value)?),
            "!~" => Test::NotContains(text(&value)?),
            "^" => Test::Starts(text(&value)?),
            _ => Test::Ends(text(&value)?),
        }
    };
    Ok(Node::Leaf { path, test })
}

fn parse_node(ctx: &Ctx, v: &Value, depth: usize) -> Result<Node, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("Query must be an object"))?;
    if obj.contains_key("field") {
        return parse_leaf(ctx, obj);
    }
    let op = obj.get("operator").and_then(Value::as_str).unwrap_or("");
    let items = obj.get("value").and_then(Value::as_array);
    match (op, items) {
        ("AND" | "OR", Some(items)) => {
            if depth > MAX_NESTING {
                return Err(invalid(format!("Query nesting is limited to {MAX_NESTING} levels")));
            }
            if items.len() > MAX_FILTERS_PER_GROUP {
                return Err(invalid(format!("A query group can have at most {MAX_FILTERS_PER_GROUP} filters")));
            }
            let nodes = items.iter().map(|i| parse_node(ctx, i, depth + 1)).collect::<Result<Vec<_>, _>>()?;
            Ok(if op == "AND" { Node::And(nodes) } else { Node::Or(nodes) })
        }
        _ => Err(invalid("Query must be a filter {field, operator, value} or a group {operator: AND|OR, value: [...]}")),
    }
}

fn collect_leaves<'a>(v: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match path.split_first() {
        None => match v {
            Value::Array(items) => out.extend(items.iter()),
            Value::Null => {}
            _ => out.push(v),
        },
        Some((head, rest)) => match v {
            Value::Object(m) => {
                if let Some(child) = m.get(head.as_str()) {
                    collect_leaves(child, rest, out);
                }
            }
            Value::Array(items) => {
                for i in items {
                    collect_leaves(i, path, out);
                }
            }
            _ => {}
        },
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            x.eq_ignore_ascii_case(y) || x.to_lowercase() == y.to_lowercase()
        }
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Bool(x), Value::String(y)) | (Value::String(y), Value::Bool(x)) => {
            y == if *x { "true" } else { "false" }
        }
        (Value::Null, Value::Null) => true,
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn lower(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Node {
    /// A value of the field at `path` below which no record can match, when the query
    /// implies one (`updated_at > X`, alone or in an `AND`): the index is read from there.
    fn lower_bound(&self, path: &[String]) -> Option<i64> {
        match self {
            Node::And(nodes) => nodes.iter().filter_map(|n| n.lower_bound(path)).max(),
            Node::Or(nodes) => nodes
                .iter()
                .map(|n| n.lower_bound(path))
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .min(),
            Node::Leaf { path: p, test } if p.as_slice() == path => match test {
                Test::Gt(x) | Test::Ge(x) => Some(x.floor() as i64),
                Test::Range(lo, _) => Some(*lo),
                Test::Eq(v) => num(v).map(|x| x.floor() as i64),
                _ => None,
            },
            Node::Leaf { .. } => None,
        }
    }

    fn matches(&self, rec: &Value) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.matches(rec)),
            Node::Or(nodes) => nodes.iter().any(|n| n.matches(rec)),
            Node::Leaf { path, test } => {
                let mut leaves = Vec::new();
                collect_leaves(rec, path, &mut leaves);
                let eq = |q: &Value| {
                    if q.is_null() {
                        leaves.is_empty()
                    } else {
                        leaves.iter().any(|l| loose_eq(l, q))
                    }
                };
                let cmp = |f: &dyn Fn(f64) -> bool| leaves.iter().filter_map(|l| num(l)).any(f);
                let text = |f: &dyn Fn(&str) -> bool| {
                    leaves.iter().filter_map(|l| lower(l)).any(|s| f(&s))
                };
                match test {
                    Test::Eq(q) => eq(q),
                    Test::Ne(q) => !eq(q),
                    Test::In(qs) => qs.iter().any(eq),
                    Test::Nin(qs) => !qs.iter().any(eq),
                    Test::Lt(x) => cmp(&|n| n < *x),
                    Test::Gt(x) => cmp(&|n| n > *x),
                    Test::Le(x) => cmp(&|n| n <= *x),
                    Test::Ge(x) => cmp(&|n| n >= *x),
                    Test::Range(lo, hi) => cmp(&|n| {
                        let n = n as i64;
                        n >= *lo && n < *hi
                    }),
                    Test::Contains(s) => text(&|t| t.contains(s.as_str())),
                    Test::NotContains(s) => !text(&|t| t.contains(s.as_str())),
                    Test::Starts(s) => text(&|t| t.starts_with(s.as_str())),
                    Test::Ends(s) => text(&|t| t.ends_with(s.as_str())),
                    Test::Words(ws) | Test::NotWords(ws) => {
                        let found = leaves.iter().filter_map(|l| l.as_str()).any(|body| {
                            let have = words(body);
                            ws.iter().all(|w| have.contains(w))
                        });
                        found == matches!(test, Test::Words(_))
                    }
                }
            }
        }
    }
}

/// Default `per_page` of a kind's search.
pub(crate) fn default_per_page(kind: Kind) -> usize {
    if kind == Kind::Contact {
        50
    } else {
        20
    }
}

/// Parses a search body. `tz` is the workspace timezone (contact day truncation);
/// `strict_gt` makes `>`/`<` on stamps exclusive.
pub(crate) fn parse(kind: Kind, body: &Value, tz: Tz, strict_gt: bool) -> Result<Search, ApiError> {
    let ctx = Ctx {
        kind,
        tz,
        strict_gt,
    };
    let query = body
        .get("query")
        .ok_or_else(|| invalid("query is required"))?;
    let root = parse_node(&ctx, query, 1)?;
    let (sort_field, desc) = match body.get("sort") {
        None | Some(Value::Null) => ("created_at".to_string(), true),
        Some(s) => {
            let f = s
                .get("field")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("sort.field is required"))?;
            let desc = match s.get("order").and_then(Value::as_str) {
                None | Some("descending") => true,
                Some("ascending") => false,
                Some(other) => {
                    return Err(ApiError::bad(
                        "invalid_sort_order",
                        format!("Sort order '{other}' is invalid; use 'ascending' or 'descending'"),
                    ))
                }
            };
            (f.to_string(), desc)
        }
    };
    let sort_path = field(kind, &sort_field).0;
    let pagination = body.get("pagination").filter(|p| !p.is_null());
    let per_page = match pagination
        .and_then(|p| p.get("per_page"))
        .filter(|v| !v.is_null())
    {
        None => default_per_page(kind),
        Some(v) => {
            let n = num(v).ok_or_else(|| invalid("per_page must be an integer"))? as i64;
            if n < 1 {
                return Err(invalid("per_page must be between 1 and 150"));
            }
            (n as usize).min(MAX_PER_PAGE)
        }
    };
    let after = match pagination.and_then(|p| p.get("starting_after")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(decode_cursor(s).ok_or_else(|| invalid("starting_after is invalid"))?)
        }
        Some(_) => return Err(invalid("starting_after is invalid")),
    };
    Ok(Search {
        kind,
        root,
        sort_field,
        sort_path,
        desc,
        per_page,
        after,
    })
}

/// Total order used for sorting: null < bool < number < string < other, then by value.
fn cmp_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            _ => 4,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn sort_key(v: &Value, path: &[String]) -> Value {
    let mut leaves = Vec::new();
    collect_leaves(v, path, &mut leaves);
    leaves.first().map_or(Value::Null, |l| (*l).clone())
}

/// Runs a search against a table at simulator time `now` with index lag `lag`; returns the
/// response body.
pub(crate) fn run(t: &Table, s: &Search, now: i64, lag: i64) -> String {
    let fast_key = match &s.after {
        None => Some(None),
        Some(p) => p.key.as_i64().map(|k| Some((k, p.id.clone()))),
    };
    let fast = matches!(s.sort_field.as_str(), "created_at" | "updated_at") && t.settled(now, lag);
    // (key, id) of the page's records plus one look-ahead.
    let mut rows: Vec<(Value, String)> = Vec::with_capacity(s.per_page + 1);
    let total;
    match (fast, fast_key) {
        (true, Some(start)) => {
            let idx = if s.sort_field == "created_at" {
                &t.by_created
            } else {
                &t.by_updated
            };
            // Records below the query's bound on the sort field cannot match: skip them.
            let from = match s.root.lower_bound(&s.sort_path) {
                Some(b) => Bound::Included((b, String::new())),
                None => Bound::Unbounded,
            };
            let iter: Box<dyn Iterator<Item = &(i64, String)>> = match (s.desc, start) {
                (false, None) => Box::new(idx.range((from.clone(), Bound::Unbounded))),
                (false, Some(k)) => Box::new(idx.range((Bound::Excluded(k), Bound::Unbounded))),
                (true, None) => Box::new(idx.range((from.clone(), Bound::Unbounded)).rev()),
                (true, Some(k)) => match &from {
                    Bound::Included(b) if *b >= k => Box::new(std::iter::empty()),
                    _ => Box::new(idx.range((from.clone(), Bound::Excluded(k))).rev()),
                },
            };
            for (key, id) in iter {
                if let Some(rec) = t.recs.get(id) {
                    if s.root.matches(&rec.cur) {
                        rows.push((json!(key), id.clone()));
                        if rows.len() > s.per_page {
                            break;
                        }
                    }
                }
            }
            total = match &s.after {
                Some(p) => p.total,
                None => idx
                    .range((from, Bound::Unbounded))
                    .filter(|(_, id)| t.recs.get(id).is_some_and(|r| s.root.matches(&r.cur)))
                    .count() as u64,
            };
        }
        _ => {
            let mut all: Vec<(Value, &String)> = t
                .recs
                .iter()
                .filter_map(|(id, rec)| visible(rec, now, lag).map(|(v, _)| (id, v)))
                .filter(|(_, v)| s.root.matches(v))
                .map(|(id, v)| (sort_key(v, &s.sort_path), id))
                .collect();
            all.sort_by(|a, b| cmp_values(&a.0, &b.0).then_with(|| a.1.cmp(b.1)));
            if s.desc {
                all.reverse();
            }
            total = s.after.as_ref().map_or(all.len() as u64, |p| p.total);
            let after = |row: &(Value, &String)| match &s.after {
                None => true,
                Some(p) => {
                    let o = cmp_values(&row.0, &p.key).then_with(|| row.1.cmp(&p.id));
                    if s.desc {
                        o == Ordering::Less
                    } else {
                        o == Ordering::Greater
                    }
                }
            };
            rows.extend(
                all.into_iter()
                    .filter(after)
                    .take(s.per_page + 1)
                    .map(|(k, id)| (k, id.clone())),
            );
        }
    }
    let more = rows.len() > s.per_page;
    rows.truncate(s.per_page);
    // Every record carries its serialized search form, so a page is a concatenation.
    let (ty, key) = match s.kind {
        Kind::Conversation => ("conversation.list", "conversations"),
        Kind::Ticket => ("ticket.list", "tickets"),
        _ => ("list", "data"),
    };
    let mut out = String::with_capacity(rows.len() * 2048 + 256);
    out.push_str(&format!(r#"{{"type":"{ty}","{key}":["#));
    let mut first = true;
    for (_, id) in &rows {
        let Some((_, json)) = t.recs.get(id).and_then(|rec| visible(rec, now, lag)) else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(json);
    }
    let page = s.after.as_ref().map_or(1, |p| p.page);
    let per_page = s.per_page as u64;
    let mut pages = json!({
        "type": "pages",
        "page": page,
        "per_page": per_page,
        "total_pages": total.div_ceil(per_page),
    });
    if more {
        if let Some((key, id)) = rows.last() {
            let cursor = encode_cursor(&Position {
                page: page + 1,
                total,
                key: key.clone(),
                id: id.clone(),
            });
            pages["next"] =
                json!({ "page": page + 1, "per_page": per_page, "starting_after": cursor });
        }
    }
    out.push_str(&format!(r#"],"total_count":{total},"pages":{pages}}}"#));
    out
}

fn encode_cursor(p: &Position) -> String {
    base64_encode(json!([p.page, p.total, p.key, p.id]).to_string().as_bytes())
}

fn decode_cursor(s: &str) -> Option<Position> {
    let bytes = base64_decode(s)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let a = v.as_array()?;
    if a.len() != 4 {
        return None;
    }
    Some(Position {
        page: a[0].as_u64()?,
        total: a[1].as_u64()?,
        key: a[2].clone(),
        id: a[3].as_str()?.to_string(),
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on invalid input.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "[1,2,\"x\"]"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn the_index_is_read_from_the_querys_lower_bound_only_when_it_is_one() {
        let tz = chrono_tz::Europe::Dublin;
        let bound = |kind, q: Value| {
            let s = parse(kind, &json!({"query": q}), tz, false).unwrap();
            s.root.lower_bound(&s.sort_path.clone())
        };
        let upd = |op: &str, v: i64| json!({"field": "updated_at", "operator": op, "value": v});
        // Default sort is created_at; sort explicitly on updated_at.
        let sorted = |kind, q: Value| {
            let s = parse(
                kind,
                &json!({"query": q, "sort": {"field": "updated_at", "order": "ascending"}}),
                tz,
                false,
            )
            .unwrap();
            s.root.lower_bound(&s.sort_path)
        };
        assert_eq!(sorted(Kind::Ticket, upd(">", 100)), Some(100));
        assert_eq!(
            sorted(
                Kind::Ticket,
                json!({"operator": "AND", "value": [upd(">", 100), upd(">", 300),
                    {"field": "open", "operator": "=", "value": true}]})
            ),
            Some(300)
        );
        assert_eq!(
            sorted(
                Kind::Ticket,
                json!({"operator": "OR", "value": [upd(">", 100), upd(">", 50)]})
            ),
            Some(50)
        );
        // One side of an OR without a bound: none at all.
        assert_eq!(
            sorted(
                Kind::Ticket,
                json!({"operator": "OR", "value": [upd(">", 100),
                    {"field": "open", "operator": "=", "value": true}]})
            ),
            None
        );
        assert_eq!(sorted(Kind::Ticket, upd("<", 100)), None);
        // Contacts compare whole days: `> X` starts at the next local day, never before X.
        let day = sorted(Kind::Contact, upd(">", 1_719_835_200)).unwrap();
        assert!(
            day > 1_719_835_200 && day <= 1_719_835_200 + 86_400,
            "{day}"
        );
        // A bound on another field than the sort field does not count.
        assert_eq!(bound(Kind::Ticket, upd(">", 100)), None);
    }

    #[test]
    fn day_bounds_follow_the_workspace_timezone() {
        // 2024-07-01 12:00 UTC is 13:00 in Dublin (IST, UTC+1); the local day starts 23:00 UTC.
        let ts = 1_719_835_200;
        let (start, next) = day_bounds(chrono_tz::Europe::Dublin, ts);
        assert_eq!(start, 1_719_788_400);
        assert_eq!(next, start + 86_400);
        let (s_utc, _) = day_bounds(chrono_tz::UTC, ts);
        assert_eq!(s_utc, 1_719_792_000);
    }
}
