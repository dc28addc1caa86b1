//! The status pages: server-rendered HTML (Handlebars templates in `pages/`, escaped by
//! default) that works without JavaScript, and the forms behind them.
//!
//! Owns what each page shows and the page-side checks: a CSRF token in every form (one per
//! process, compared in constant time), and, when the sidecar listens beyond loopback, the
//! admin token as a cookie set by `/login`. Data comes from the scheduler (`Command::Status`),
//! the store (history, dead letters, cursors) and the current runtime (connections,
//! budgets). Reads are bounded: newest first, a page at a time, a cap on rows examined.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::api::ApiError;
use super::scheduler::{Command, InstanceStatus, Work};
use super::Shared;
use crate::history::{Hourly, RunId};
use crate::oauth::AuthStatus;

/// Recipes per overview page.
const OVERVIEW_PAGE: usize = 250;
/// Runs per recipe page.
const RUNS_PAGE: usize = 50;
/// Records per run page.
const RECORDS_PAGE: usize = 25;
/// Dead letters per page.
const LETTERS_PAGE: usize = 100;
/// At most this many rows are examined for one filtered page.
const MAX_SCAN: usize = 20_000;

/// The templates, compiled once.
pub(crate) fn templates() -> Handlebars<'static> {
    // Not `template::registry`: recipe templates render JSON values unescaped; pages must
    // escape HTML, which is this registry's default.
    #[allow(clippy::disallowed_methods)]
    let mut h = Handlebars::new();
    h.set_strict_mode(false);
    for (name, text) in [
        ("layout", include_str!("pages/layout.hbs")),
        ("overview", include_str!("pages/overview.hbs")),
        ("recipe", include_str!("pages/recipe.hbs")),
        ("run", include_str!("pages/run.hbs")),
        ("letters", include_str!("pages/letters.hbs")),
        ("letter", include_str!("pages/letter.hbs")),
        ("login", include_str!("pages/login.hbs")),
        ("oauth", include_str!("pages/oauth.hbs")),
    ] {
        h.register_template_string(name, text)
            .expect("invariant: the shipped templates compile");
    }
    h
}

/// A fresh random token (CSRF), 128 bits as hex, from the operating system.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        // No OS randomness (never seen on the systems sluice runs on): a process-unique,
        // time-seeded value still keeps other sites from guessing it blind.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ u128::from(std::process::id())).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn render(s: &Shared, name: &str, title: &str, mut data: Value, flash: Option<&str>) -> Response {
    if let Value::Object(m) = &mut data {
        m.insert("csrf".into(), json!(s.csrf));
        if let Some(f) = flash.filter(|f| !f.is_empty()) {
            m.insert("flash".into(), json!(f));
        }
    }
    render_open(s, name, title, data)
}

/// A page without forms, for anyone who reaches the sidecar (the OAuth callback's answer):
/// its data carries no CSRF token.
pub(crate) fn render_open(s: &Shared, name: &str, title: &str, mut data: Value) -> Response {
    if let Value::Object(m) = &mut data {
        m.insert("title".into(), json!(title));
        m.insert(
            "now".into(),
            json!(time_ms(chrono::Utc::now().timestamp_millis())),
        );
    }
    match s.pages.render(name, &data) {
        Ok(html) => Html(html).into_response(),
        Err(e) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("page `{name}`: {e}"),
        )
        .into_response(),
    }
}

/// A value for a URL's query string.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn time_s(s: Option<i64>) -> String {
    s.map_or_else(|| "-".into(), |s| time_ms(s.saturating_mul(1000)))
}

fn lag(cursor: Option<i64>) -> String {
    match cursor {
        None => "-".into(),
        Some(c) => {
            let secs = (chrono::Utc::now().timestamp() - c).max(0);
            match secs {
                s if s < 120 => format!("{s} s"),
                s if s < 7_200 => format!("{} min", s / 60),
                s if s < 172_800 => format!("{} h", s / 3_600),
                s => format!("{} d", s / 86_400),
            }
        }
    }
}

/// The state a person reads for an instance.
fn state_of(i: &InstanceStatus, broken: bool) -> (&'static str, &'static str) {
    if broken {
        ("broken file (last good version runs)", "broken")
    } else if i.held.is_some() {
        ("paused: connection not authorized", "paused")
    } else if i.paused {
        ("paused", "paused")
    } else if i.failures > 0 {
        ("failing", "failing")
    } else if i.last.is_none() {
        ("never run", "")
    } else {
        ("ok", "ok")
    }
}

/// Fired and failed over the last `hours` hours.
fn recent(s: &Shared, ns: &str, hours: i64) -> Vec<(i64, Hourly)> {
    let now = chrono::Utc::now().timestamp_millis();
    let from = (now.div_euclid(3_600_000) - hours + 1) * 3_600_000;
    s.store
        .hourly(ns, from, now + 3_600_000)
        .unwrap_or_default()
}

fn broken_instance(s: &Shared, recipe_id: &str) -> bool {
    s.health().files.iter().any(|b| {
        b.running_last_good && b.file.file_stem().and_then(|x| x.to_str()) == Some(recipe_id)
    })
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    page: Option<usize>,
    flash: Option<String>,
}

/// `GET /`: every recipe instance and connection.
pub(crate) async fn overview(State(s): State<Arc<Shared>>, Query(q): Query<PageQuery>) -> Response {
    let instances = match s.instances().await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let health = s.health();
    let page = q.page.unwrap_or(0);
    let shown = instances
        .iter()
        .skip(page * OVERVIEW_PAGE)
        .take(OVERVIEW_PAGE);
    let recipes: Vec<Value> = shown
        .map(|i| {
            let cursor = s
                .store
                .checkpoint(&i.instance)
                .ok()
                .flatten()
                .map(|c| c.cursor);
            let (fired, failed) = recent(&s, &i.instance, 24)
                .iter()
                .fold((0, 0), |(f, x), (_, h)| (f + h.fired, x + h.failed));
            let (state, class) = state_of(i, broken_instance(&s, &i.recipe));
            let state = if i.running { "running" } else { state };
            json!({
                "instance": i.instance,
                "state": state,
                "state_class": class,
                "schedule": i.schedule,
                "next": if i.paused { "paused".into() } else { i.next_at_ms.map_or_else(|| "-".into(), time_ms) },
                "last": i.last.as_ref().map_or_else(|| "-".into(), |l| time_ms(l.started_at_ms)),
                "cursor": time_s(cursor),
                "lag": lag(cursor),
                "fired": fired,
                "failed": failed,
            })
        })
        .collect();
    let broken: Vec<Value> = health
        .files
        .iter()
        .map(|b| {
            json!({
                "file": b.file.display().to_string(),
                "state": if b.running_last_good { "broken (last good version runs)" } else { "broken (not running)" },
                "errors": b.errors.join("; "),
            })
        })
        .collect();
    let rt = s.runtime();
    let workspaces = rt.workspaces();
    let mut connections: Vec<Value> = rt
        .plan()
        .connections
        .iter()
        .map(|c| {
            let w = workspaces
                .iter()
                .find(|w| w.connections.split(',').any(|n| n == c.name));
            let oauth = rt.conn(c.id).oauth().map(|a| a.status());
            let (auth, ok) = match &oauth {
                Some(st) => (st.label(), *st == AuthStatus::Ready),
                None if c.token.is_some() => ("token set", true),
                None => ("no credential", false),
            };
            json!({
                "name": c.name,
                "name_q": enc(&c.name),
                "connector": c.connector.id,
                "base_url": c.base_url,
                "auth": auth,
                "auth_class": if ok { "ok" } else { "failing" },
                "auth_problem": oauth.as_ref().and_then(|st| st.problem(&c.name)),
                "oauth": oauth.is_some(),
                "connect": if oauth == Some(AuthStatus::Missing) { "Connect" } else { "Re-authorize" },
                "calls": w.map_or(0, |w| w.calls),
                "limited": w.map_or(0, |w| w.rate_limited),
                "budget": w.map_or_else(String::new, |w| format!("{} of {} (limit {})", w.budget.saturating_sub(w.remaining), w.budget, w.limit)),
            })
        })
        .collect();
    for (name, why) in &health.connections {
        connections.push(
            json!({"name": name, "auth": format!("unavailable: {why}"), "auth_class": "failing"}),
        );
    }
    let more = instances.len() > page.saturating_add(1).saturating_mul(OVERVIEW_PAGE);
    render(
        &s,
        "overview",
        "Overview",
        json!({
            "recipes": recipes,
            "broken": broken,
            "connections": connections,
            "oauth_redirect": rt.plan().connections.iter().any(|c| c.oauth.is_some()).then(|| super::connect::redirect_url(&s)),
            "problems": health.problems(),
            "more": more,
            "next_page": page + 1,
        }),
        q.flash.as_deref(),
    )
}

#[derive(Deserialize, Default)]
pub(crate) struct RunsQuery {
    outcome: Option<String>,
    before: Option<String>,
    before_time: Option<String>,
    flash: Option<String>,
}

/// Whether a run's report matches an outcome filter.
fn run_matches(outcome: &str, report: &Value) -> bool {
    match outcome {
        "" | "all" => true,
        "error" => !report["error"].is_null(),
        "dead" => report["dead_letters"].as_u64().unwrap_or(0) > 0,
        "fired" => report["fired"].as_u64().unwrap_or(0) > 0,
        "ok" => report["error"].is_null() && report["interrupted"] != true,
        _ => true,
    }
}

fn outcome_of(report: &Value) -> &'static str {
    if !report["error"].is_null() {
        "error"
    } else if report["interrupted"] == true {
        "interrupted"
    } else {
        "ok"
    }
}

/// A page of an instance's runs: the query's filter, newest first.
pub(crate) fn runs_page(
    s: &Shared,
    instance: &str,
    q: &RunsQuery,
) -> Result<(Vec<(RunId, Value)>, bool), ApiError> {
    let outcome = q.outcome.clone().unwrap_or_default();
    let mut before = match q.before.as_deref().filter(|b| !b.is_empty()) {
        Some(b) => Some(
            b.parse::<RunId>()
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?,
        ),
        None => None,
    };
    if let Some(t) = q.before_time.as_deref().filter(|t| !t.is_empty()) {
        let ms = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
            .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("`{t}` is not a time")))?
            .and_utc()
            .timestamp_millis();
        before = Some(RunId {
            started_ms: ms,
            id: 0,
        });
    }
    let keep =
        |json: &str| serde_json::from_str::<Value>(json).is_ok_and(|v| run_matches(&outcome, &v));
    let (rows, more) = s
        .store
        .runs(instance, before, RUNS_PAGE, MAX_SCAN, &keep)
        .map_err(ApiError::from)?;
    let rows = rows
        .into_iter()
        .map(|(id, json)| (id, serde_json::from_str(&json).unwrap_or(Value::Null)))
        .collect();
    Ok((rows, more))
}

/// The last 48 hours as bars: fired (up) and failed (down), an SVG of numbers only.
fn chart(hours: &[(i64, Hourly)]) -> String {
    let now_h = chrono::Utc::now().timestamp_millis().div_euclid(3_600_000);
    let by_hour: HashMap<i64, Hourly> = hours
        .iter()
        .map(|(t, h)| (t.div_euclid(3_600_000), *h))
        .collect();
    let max = hours
        .iter()
        .map(|(_, h)| h.fired.max(h.failed))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (w, h, mid) = (960.0, 160.0, 80.0);
    let bar = w / 48.0;
    let mut svg = format!(
        r##"<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="fired and failed per hour"><line x1="0" y1="{mid}" x2="{w}" y2="{mid}" stroke="#999"/>"##
    );
    for i in 0..48 {
        let hour = now_h - 47 + i;
        let c = by_hour.get(&hour).copied().unwrap_or_default();
        let x = i as f64 * bar + 1.0;
        let up = c.fired as f64 / max * (mid - 4.0);
        let down = c.failed as f64 / max * (mid - 4.0);
        svg.push_str(&format!(
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{up:.1}" fill="#2f81f7"><title>{} fired</title></rect><rect x="{x:.1}" y="{mid}" width="{:.1}" height="{down:.1}" fill="#d1242f"><title>{} failed</title></rect>"##,
            mid - up,
            bar - 2.0,
            c.fired,
            bar - 2.0,
            c.failed
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// `GET /recipes/{instance}`.
pub(crate) async fn recipe(
    State(s): State<Arc<Shared>>,
    Path(instance): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Response {
    let all = match s.instances().await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let Some(i) = all.iter().find(|i| i.instance == instance) else {
        return ApiError(
            StatusCode::NOT_FOUND,
            format!("no recipe instance `{instance}` runs here"),
        )
        .into_response();
    };
    let (rows, more) = match runs_page(&s, &instance, &q) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let older = more
        .then(|| rows.last().map(|(id, _)| id.to_string()))
        .flatten();
    let runs: Vec<Value> = rows
        .iter()
        .map(|(id, r)| {
            json!({
                "run": id.to_string(),
                "started": time_ms(id.started_ms),
                "kind": r["kind"].as_str().filter(|k| !k.is_empty()).unwrap_or("scheduled"),
                "outcome": outcome_of(r),
                "polled": r["polled"], "seen": r["skipped_seen"], "filtered": r["filtered"],
                "fired": r["fired"], "dead": r["dead_letters"], "unfinished": r["unfinished"],
                "cursor": time_s(r["cursor_after"].as_i64()),
                "calls": r["calls"], "limited": r["rate_limited"],
                "duration": format!("{:.0} ms", r["elapsed_ms"].as_f64().unwrap_or(0.0)),
                "error": r["error"],
            })
        })
        .collect();
    let cursor = s
        .store
        .checkpoint(&instance)
        .ok()
        .flatten()
        .map(|c| c.cursor);
    let (state, class) = state_of(i, broken_instance(&s, &i.recipe));
    let outcome = q.outcome.clone().unwrap_or_default();
    let outcomes: Vec<Value> = [
        ("", "all"),
        ("ok", "ok"),
        ("error", "error"),
        ("dead", "with dead letters"),
        ("fired", "fired something"),
    ]
    .iter()
    .map(|(v, l)| json!({"value": v, "label": l, "selected": *v == outcome}))
    .collect();
    render(
        &s,
        "recipe",
        &instance,
        json!({
            "instance": instance,
            "state": state, "state_class": class,
            "paused": i.paused,
            "schedule": i.schedule,
            "next": if i.paused { "paused".into() } else { i.next_at_ms.map_or_else(|| "-".into(), time_ms) },
            "cursor": time_s(cursor), "lag": lag(cursor),
            "chart": chart(&recent(&s, &instance, 48)),
            "runs": runs,
            "outcome": outcome,
            "outcome_q": enc(&outcome),
            "outcomes": outcomes,
            "before_time": q.before_time,
            "older": if runs.len() == RUNS_PAGE { older } else { None },
            "scanned_out": more && runs.len() < RUNS_PAGE,
            "scan_limit": MAX_SCAN,
        }),
        q.flash.as_deref(),
    )
}

#[derive(Deserialize)]
pub(crate) struct RecordsQuery {
    from: Option<u32>,
}

/// `GET /runs/{instance}/{run}`.
pub(crate) async fn run(
    State(s): State<Arc<Shared>>,
    Path((instance, run)): Path<(String, String)>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    let id = match run.parse::<RunId>() {
        Ok(id) => id,
        Err(e) => return ApiError(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let report: Value = match s.store.run(&instance, id) {
        Ok(Some(json)) => serde_json::from_str(&json).unwrap_or(Value::Null),
        Ok(None) => {
            return ApiError(
                StatusCode::NOT_FOUND,
                format!("no run {run} of `{instance}`"),
            )
            .into_response()
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let from = q.from.unwrap_or(0);
    let rows = match s.store.run_records(&instance, id, from, RECORDS_PAGE + 1) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let next = (rows.len() > RECORDS_PAGE).then(|| rows[RECORDS_PAGE].0);
    let pretty = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    let records: Vec<Value> = rows
        .iter()
        .take(RECORDS_PAGE)
        .map(|(n, r)| {
            json!({
                "n": n + 1,
                "key": r.key,
                "outcome": r.outcome,
                "error": r.error,
                "steps": r.steps.iter().map(|st| json!({
                    "step": st.step,
                    "sent": st.sent.as_ref().map(pretty),
                    "got": pretty(&st.got),
                    "skipped": st.skipped,
                    "error": st.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let r = &report;
    render(
        &s,
        "run",
        &format!("run {run}"),
        json!({
            "instance": instance, "run": run,
            "kind": r["kind"].as_str().filter(|k| !k.is_empty()).unwrap_or("scheduled"),
            "started": time_ms(id.started_ms),
            "scheduled": r["scheduled_at_ms"].as_i64().map(time_ms),
            "duration": format!("{:.0} ms", r["elapsed_ms"].as_f64().unwrap_or(0.0)),
            "outcome": outcome_of(r),
            "polled": r["polled"], "seen": r["skipped_seen"], "filtered": r["filtered"],
            "fired": r["fired"], "finished": r["finished"], "dead": r["dead_letters"],
            "unfinished": r["unfinished"],
            "cursor_before": time_s(r["cursor_before"].as_i64()),
            "cursor_after": time_s(r["cursor_after"].as_i64()),
            "calls": r["calls"], "limited": r["rate_limited"],
            "error": r["error"],
            "records": records,
            // As text: `{{#if 0}}` would hide the link to the first page.
            "prev": (from > 0).then(|| from.saturating_sub(RECORDS_PAGE as u32).to_string()),
            "next": next,
        }),
        None,
    )
}

#[derive(Deserialize, Default)]
pub(crate) struct LettersQuery {
    recipe: Option<String>,
    q: Option<String>,
    before: Option<u64>,
    flash: Option<String>,
}

fn letter_matches(recipe: &str, q: &str, d: &crate::store::DeadLetter) -> bool {
    (recipe.is_empty() || crate::plan::recipe::instance_of(&d.recipe, recipe))
        && (q.is_empty() || d.key.contains(q) || d.error.contains(q) || d.failed_step.contains(q))
}

/// `GET /dead-letters`.
pub(crate) async fn letters(
    State(s): State<Arc<Shared>>,
    Query(q): Query<LettersQuery>,
) -> Response {
    let recipe = q.recipe.clone().unwrap_or_default();
    let text = q.q.clone().unwrap_or_default();
    let keep = |d: &crate::store::DeadLetter| letter_matches(&recipe, &text, d);
    let (rows, more) = match s
        .store
        .dead_letters_page(q.before, LETTERS_PAGE, MAX_SCAN, &keep)
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let letters: Vec<Value> = rows
        .iter()
        .map(|(id, d)| {
            json!({
                "id": id, "at": time_s(Some(d.at)), "recipe": d.recipe,
                "step": d.failed_step, "key": d.key, "error": d.error,
            })
        })
        .collect();
    let last = rows.last().map(|(id, _)| *id);
    render(
        &s,
        "letters",
        "Dead letters",
        json!({
            "letters": letters,
            "recipe": recipe, "q": text,
            "recipe_q": enc(&recipe), "q_q": enc(&text),
            "more": if more { last } else { None },
        }),
        q.flash.as_deref(),
    )
}

/// `GET /dead-letters/{id}`.
pub(crate) async fn letter(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    let d = match s.store.dead_letter(id) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return ApiError(StatusCode::NOT_FOUND, format!("no dead letter {id}")).into_response()
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    render(
        &s,
        "letter",
        &format!("dead letter {id}"),
        json!({
            "id": id, "recipe": d.recipe, "key": d.key, "step": d.failed_step,
            "class": d.class.to_string(), "request": d.request, "status": d.status,
            "at": time_s(Some(d.at)), "error": d.error,
            "done": d.done.iter().map(|x| x.step.clone()).collect::<Vec<_>>().join(", "),
            "record": serde_json::to_string_pretty(&d.record).unwrap_or_default(),
        }),
        None,
    )
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub(crate) csrf: String,
    recipe: Option<String>,
    q: Option<String>,
}

pub(crate) fn check_csrf(s: &Shared, given: &str) -> Result<(), Response> {
    if crate::secret::same_secret(given.as_bytes(), s.csrf.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match: reload the page and try again".into(),
        )
        .into_response())
    }
}

/// A redirect to `path` with a message shown at its top.
pub(crate) fn back(path: &str, flash: &str) -> Response {
    let f = percent_encoding::utf8_percent_encode(flash, percent_encoding::NON_ALPHANUMERIC);
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}flash={f}")).into_response()
}

/// `POST /ui/instances/{instance}/{pause|resume|run}`.
pub(crate) async fn instance_action(
    State(s): State<Arc<Shared>>,
    Path((instance, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&s, &f.csrf) {
        return r;
    }
    let page = format!("/recipes/{instance}");
    match action.as_str() {
        "pause" | "resume" => {
            let (tx, rx) = oneshot::channel();
            let paused = action == "pause";
            if let Err(e) = s
                .send(Command::Pause {
                    instance: instance.clone(),
                    paused,
                    reply: tx,
                })
                .await
            {
                return e.into_response();
            }
            match rx.await {
                Ok(true) if paused => back(&page, "paused: no new runs until resumed"),
                Ok(true) => back(&page, "resumed: it runs at its next slot"),
                _ => back("/", &format!("no recipe instance `{instance}` runs here")),
            }
        }
        "run" => {
            let shared = s.clone();
            let work: Work = Box::new(move |recipe| {
                Box::pin(async move {
                    let rt = shared.runtime();
                    let opts = crate::engine::CycleOptions::new(shared.shutdown.clone());
                    Some(crate::engine::run_cycle(rt, recipe, opts).await)
                })
            });
            let (refused, back_rx) = oneshot::channel();
            if let Err(e) = s
                .send(Command::Exclusive {
                    instance: instance.clone(),
                    work,
                    refused,
                })
                .await
            {
                return e.into_response();
            }
            match back_rx.await {
                Ok(_) => back("/", &format!("no recipe instance `{instance}` runs here")),
                Err(_) => back(&page, "run started: it shows below when it ends"),
            }
        }
        _ => ApiError(StatusCode::NOT_FOUND, format!("no action `{action}`")).into_response(),
    }
}

/// Replays dead letter `id` (see [`super::api::replay_letter`]); what went wrong, for people.
async fn replay_one(s: &Arc<Shared>, id: u64) -> Result<(String, crate::admin::Replayed), String> {
    super::api::replay_letter(s, id).await.map_err(|e| e.1)
}

/// `POST /ui/dead-letters/{id}/{replay|drop}`.
pub(crate) async fn letter_action(
    State(s): State<Arc<Shared>>,
    Path((id, action)): Path<(u64, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&s, &f.csrf) {
        return r;
    }
    match action.as_str() {
        "replay" => match replay_one(&s, id).await {
            Ok((instance, r)) => back(&format!("/recipes/{instance}"), &r.message),
            Err(e) => back(&format!("/dead-letters/{id}"), &e),
        },
        "drop" => match s.store.drop_dead_letter(id) {
            Ok(true) => back("/dead-letters", &format!("dropped dead letter {id}")),
            Ok(false) => back("/dead-letters", &format!("no dead letter {id}")),
            Err(e) => ApiError::from(e).into_response(),
        },
        _ => ApiError(StatusCode::NOT_FOUND, format!("no action `{action}`")).into_response(),
    }
}

/// `POST /ui/dead-letters/replay-all`: every letter matching the filter (up to 500).
pub(crate) async fn replay_all(State(s): State<Arc<Shared>>, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = check_csrf(&s, &f.csrf) {
        return r;
    }
    let recipe = f.recipe.unwrap_or_default();
    let text = f.q.unwrap_or_default();
    let keep = |d: &crate::store::DeadLetter| letter_matches(&recipe, &text, d);
    let ids: Vec<u64> = match s.store.dead_letters_page(None, 500, MAX_SCAN, &keep) {
        Ok((rows, _)) => rows.into_iter().map(|(id, _)| id).rev().collect(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (mut finished, mut not) = (0, 0);
    for id in &ids {
        match replay_one(&s, *id).await {
            Ok((_, r)) if r.finished => finished += 1,
            _ => not += 1,
        }
    }
    back(
        "/dead-letters",
        &format!("replayed {}: {finished} finished, {not} did not", ids.len()),
    )
}

/// The cookie that carries the admin token in a browser.
const ADMIN_COOKIE: &str = "sluice_admin";

/// Pages need the admin token when the sidecar listens beyond loopback: as a cookie from
/// `/login`, or as a bearer token.
pub(crate) async fn page_guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if s.access.loopback {
        return next.run(req).await;
    }
    let Some(token) = &s.access.token else {
        return next.run(req).await;
    };
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{ADMIN_COOKIE}=")));
    let ok = [bearer, cookie]
        .into_iter()
        .flatten()
        .any(|t| crate::secret::same_secret(t.as_bytes(), token.expose().as_bytes()));
    if ok {
        next.run(req).await
    } else {
        Redirect::to("/login").into_response()
    }
}

/// `GET /login`.
pub(crate) async fn login_page(State(s): State<Arc<Shared>>) -> Response {
    render(&s, "login", "Sign in", json!({}), None)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: sets the cookie when the token is right.
pub(crate) async fn login(State(s): State<Arc<Shared>>, Form(f): Form<LoginForm>) -> Response {
    let ok = s
        .access
        .token
        .as_ref()
        .is_some_and(|t| crate::secret::same_secret(f.token.as_bytes(), t.expose().as_bytes()));
    if !ok {
        return render(
            &s,
            "login",
            "Sign in",
            json!({}),
            Some("that is not the admin token"),
        );
    }
    let cookie = format!(
        "{ADMIN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        f.token
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
