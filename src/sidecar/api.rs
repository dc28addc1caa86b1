//! The sidecar's HTTP face: `/livez`, `/readyz`, `/metrics` and the JSON admin API under
//! `/api/…` that the CLI's state, dead-letter and `run --once` commands use while the sidecar
//! holds the store.
//!
//! Access: bound to a loopback address (the default), requests must name a loopback host
//! (a page on another site cannot reach the API through DNS rebinding). Bound to any other
//! address, `/api/…` needs `Authorization: Bearer $SLUICE_ADMIN_TOKEN` (compared in constant
//! time); the probes and `/metrics` stay open for the orchestrator. Every state-changing
//! request is a `POST` carrying the header `X-Sluice-Client` (a cross-site form cannot set it).
//! The pages have their own guard ([`pages::page_guard`]); the OAuth callback
//! `/oauth/callback` is behind the host check only: its single-use `state` guards it (see
//! [`super::connect`]).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::scheduler::{Command, InstanceStatus, Work};
use super::{pages, Shared};
use crate::admin;
use crate::secret::{same_secret, Secret};

/// Who may use the API.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// Bound to loopback: only loopback host names are answered.
    pub loopback: bool,
    /// The admin token `/api/…` needs when not on loopback.
    pub token: Option<Secret>,
    /// The `Host` of `--public-url` (with its port when not the scheme's), answered on
    /// loopback too: a proxy in front of a loopback sidecar that passes the public name on.
    pub public_host: Option<String>,
}

/// The header every state-changing request carries.
pub const CLIENT_HEADER: &str = "x-sluice-client";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/state", get(state))
        .route("/api/state/reset", post(reset))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/{id}", get(dead_letter))
        .route("/api/dead-letters/{id}/replay", post(replay))
        .route("/api/dead-letters/{id}/drop", post(drop_letter))
        .route("/api/run", post(run_now))
        .route("/api/instances/{instance}/pause", post(pause))
        .route("/api/instances/{instance}/resume", post(resume))
        .route("/api/instances/{instance}/runs", get(runs))
        .route("/api/runs/{instance}/{run}", get(run_records))
        .route_layer(middleware::from_fn_with_state(shared.clone(), api_guard));
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/recipes/{instance}", get(pages::recipe))
        .route("/runs/{instance}/{run}", get(pages::run))
        .route("/dead-letters", get(pages::letters))
        .route("/dead-letters/{id}", get(pages::letter))
        .route(
            "/ui/instances/{instance}/{action}",
            post(pages::instance_action),
        )
        .route("/ui/dead-letters/replay-all", post(pages::replay_all))
        .route("/ui/dead-letters/{id}/{action}", post(pages::letter_action))
        .route(
            "/ui/connections/{name}/connect",
            post(super::connect::start),
        )
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            pages::page_guard,
        ));
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/login", get(pages::login_page).post(pages::login))
        // Not behind the page guard: the provider's redirect carries no admin cookie; the
        // single-use `state` is its guard (see `connect`).
        .route(super::connect::CALLBACK_PATH, get(super::connect::callback))
        .merge(api)
        .merge(pages)
        .layer(middleware::from_fn_with_state(shared.clone(), host_guard))
        .with_state(shared)
}

/// An API error: a status and a message, as `{"error": …}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn host_guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if s.access.loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let public = s
            .access
            .public_host
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case(host));
        if !is_loopback_host(host) && !public {
            return ApiError(
                StatusCode::FORBIDDEN,
                "this sidecar answers loopback host names (and --public-url's) only".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn api_guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if !s.access.loopback {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok = s
            .access
            .token
            .as_ref()
            .is_some_and(|t| same_secret(given.as_bytes(), t.expose().as_bytes()));
        if !ok {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "this API needs `Authorization: Bearer $SLUICE_ADMIN_TOKEN`".into(),
            )
            .into_response();
        }
    }
    if req.method() == Method::POST && !req.headers().contains_key(CLIENT_HEADER) {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!("a state-changing request needs the `{CLIENT_HEADER}` header"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let problems = s.health().problems();
    if problems.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut text = String::from("not ready:\n");
    for p in problems {
        text.push_str("- ");
        text.push_str(&p);
        text.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let instances = s.instances().await.unwrap_or_default();
    let body = s.metrics_text(&instances);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> ApiResult {
    let instances = s.instances().await?;
    let health = s.health();
    Ok(Json(json!({
        "instances": instances,
        "problems": health.problems(),
        "pid": std::process::id(),
    })))
}

#[derive(Deserialize)]
struct RecipeQuery {
    recipe: Option<String>,
}

async fn state(State(s): State<Arc<Shared>>, Query(q): Query<RecipeQuery>) -> ApiResult {
    let views = admin::state(s.store.as_ref(), q.recipe.as_deref())?;
    Ok(Json(
        serde_json::to_value(views).map_err(anyhow::Error::from)?,
    ))
}

/// Runs `work` on each of `instances` when it is idle, and collects the answers.
async fn on_each<T: Send + 'static>(
    s: &Shared,
    instances: Vec<String>,
    make: impl Fn(String) -> (Work, oneshot::Receiver<T>),
) -> Result<Vec<(String, Option<T>)>, ApiError> {
    let mut waits = Vec::new();
    for inst in instances {
        let (work, rx) = make(inst.clone());
        let (refused_tx, refused_rx) = oneshot::channel();
        s.send(Command::Exclusive {
            instance: inst.clone(),
            work,
            refused: refused_tx,
        })
        .await?;
        waits.push((inst, rx, refused_rx));
    }
    let mut out = Vec::new();
    for (inst, rx, refused) in waits {
        let got = match refused.await {
            // Sent back: the instance is not scheduled (removed, or its file broken).
            Ok(work) => {
                drop(work);
                None
            }
            // Taken (the scheduler let go of the way back): wait for the answer.
            Err(_) => rx.await.ok(),
        };
        out.push((inst, got));
    }
    Ok(out)
}

async fn reset(State(s): State<Arc<Shared>>, Query(q): Query<RecipeQuery>) -> ApiResult {
    let recipe = q
        .recipe
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "give ?recipe=ID".into()))?;
    let running = s.instances_of(&recipe).await?;
    let mut with_state = admin::instances_with_state(s.store.as_ref(), &recipe)?;
    if running.is_empty() && with_state.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no recipe `{recipe}` runs here or has state"),
        ));
    }
    // Instances that run are reset between their cycles; the others at once.
    with_state.retain(|ns| !running.contains(ns));
    for ns in &with_state {
        s.store.reset(ns)?;
    }
    let store = s.store.clone();
    let done = on_each(&s, running, |_| {
        let (tx, rx) = oneshot::channel();
        let store = store.clone();
        let work: Work = Box::new(move |recipe| {
            Box::pin(async move {
                let _ = tx.send(store.reset(&recipe.instance).map_err(|e| format!("{e:#}")));
                None
            })
        });
        (work, rx)
    })
    .await?;
    let mut reset: Vec<String> = with_state;
    for (inst, r) in done {
        match r {
            Some(Ok(())) => reset.push(inst),
            Some(Err(e)) => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e)),
            None => {}
        }
    }
    Ok(Json(json!({ "reset": reset })))
}

async fn dead_letters(State(s): State<Arc<Shared>>, Query(q): Query<RecipeQuery>) -> ApiResult {
    let list = admin::dead_letters(s.store.as_ref(), q.recipe.as_deref())?;
    Ok(Json(
        serde_json::to_value(list).map_err(anyhow::Error::from)?,
    ))
}

fn no_letter(id: u64) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no dead letter {id} (see `sluice dead-letters list`)"),
    )
}

async fn dead_letter(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> ApiResult {
    let d = s.store.dead_letter(id)?.ok_or_else(|| no_letter(id))?;
    Ok(Json(
        serde_json::to_value(admin::Letter { id, letter: d }).map_err(anyhow::Error::from)?,
    ))
}

async fn drop_letter(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> ApiResult {
    if s.store.drop_dead_letter(id)? {
        Ok(Json(json!({ "dropped": id })))
    } else {
        Err(no_letter(id))
    }
}

async fn replay(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> ApiResult {
    let (_, r) = replay_letter(&s, id).await?;
    Ok(Json(serde_json::to_value(r).map_err(anyhow::Error::from)?))
}

/// Replays dead letter `id` on its instance when that is idle (the one replay path of the
/// API and the pages): the instance and how it ended.
pub(crate) async fn replay_letter(
    s: &Arc<Shared>,
    id: u64,
) -> Result<(String, admin::Replayed), ApiError> {
    let d = s.store.dead_letter(id)?.ok_or_else(|| no_letter(id))?;
    let shared = s.clone();
    let done = on_each(s, vec![d.recipe.clone()], move |_| {
        let (tx, rx) = oneshot::channel();
        let shared = shared.clone();
        let work: Work = Box::new(move |recipe| {
            Box::pin(async move {
                let rt = shared.runtime();
                let r = admin::replay(&rt, &recipe, id)
                    .await
                    .map_err(|e| format!("{e:#}"));
                let _ = tx.send(r);
                None
            })
        });
        (work, rx)
    })
    .await?;
    match done.into_iter().next().and_then(|(_, r)| r) {
        Some(Ok(r)) => Ok((d.recipe, r)),
        Some(Err(e)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e)),
        None => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "recipe instance `{}` does not run in this sidecar (removed, or its file is broken): fix it, then replay",
                d.recipe
            ),
        )),
    }
}

async fn run_now(State(s): State<Arc<Shared>>, Query(q): Query<RecipeQuery>) -> ApiResult {
    let recipe = q
        .recipe
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "give ?recipe=ID".into()))?;
    let instances = s.instances_of(&recipe).await?;
    if instances.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no recipe `{recipe}` runs in this sidecar"),
        ));
    }
    let shared = s.clone();
    let done = on_each(&s, instances, move |_| {
        let (tx, rx) = oneshot::channel();
        let shared = shared.clone();
        let work: Work = Box::new(move |recipe| {
            Box::pin(async move {
                let rt = shared.runtime();
                let opts = crate::engine::CycleOptions::new(shared.shutdown.clone());
                let rep = crate::engine::run_cycle(rt, recipe, opts).await;
                let _ = tx.send(rep.clone());
                Some(rep)
            })
        });
        (work, rx)
    })
    .await?;
    let reports: Vec<_> = done.into_iter().filter_map(|(_, r)| r).collect();
    Ok(Json(
        serde_json::to_value(reports).map_err(anyhow::Error::from)?,
    ))
}

async fn pause(State(s): State<Arc<Shared>>, Path(instance): Path<String>) -> ApiResult {
    set_paused(&s, instance, true).await
}

async fn resume(State(s): State<Arc<Shared>>, Path(instance): Path<String>) -> ApiResult {
    set_paused(&s, instance, false).await
}

async fn set_paused(s: &Shared, instance: String, paused: bool) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    s.send(Command::Pause {
        instance: instance.clone(),
        paused,
        reply: tx,
    })
    .await?;
    if rx.await.unwrap_or(false) {
        Ok(Json(json!({ "instance": instance, "paused": paused })))
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no recipe instance `{instance}` runs here"),
        ))
    }
}

/// `GET /api/instances/{instance}/runs?outcome=&before=`: a page of runs, newest first.
async fn runs(
    State(s): State<Arc<Shared>>,
    Path(instance): Path<String>,
    Query(q): Query<pages::RunsQuery>,
) -> ApiResult {
    let (rows, more) = pages::runs_page(&s, &instance, &q)?;
    let runs: Vec<Value> = rows
        .into_iter()
        .map(|(id, r)| json!({"run": id.to_string(), "report": r}))
        .collect();
    Ok(Json(json!({ "runs": runs, "more": more })))
}

#[derive(Deserialize)]
struct FromQuery {
    from: Option<u32>,
    limit: Option<usize>,
}

/// `GET /api/runs/{instance}/{run}?from=&limit=`: a run's report and a page of its records.
async fn run_records(
    State(s): State<Arc<Shared>>,
    Path((instance, run)): Path<(String, String)>,
    Query(q): Query<FromQuery>,
) -> ApiResult {
    let id: crate::history::RunId = run
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let report = s.store.run(&instance, id)?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no run {run} of `{instance}`"),
        )
    })?;
    let records = s.store.run_records(
        &instance,
        id,
        q.from.unwrap_or(0),
        q.limit.unwrap_or(100).min(1_000),
    )?;
    let records: Vec<Value> = records
        .into_iter()
        .map(|(n, r)| json!({"n": n, "record": r}))
        .collect();
    let report: Value = serde_json::from_str(&report).map_err(anyhow::Error::from)?;
    Ok(Json(json!({ "report": report, "records": records })))
}

/// The instances of a recipe id the scheduler runs.
pub(crate) fn instances_named(all: &[InstanceStatus], recipe: &str) -> Vec<String> {
    all.iter()
        .filter(|i| crate::plan::recipe::instance_of(&i.instance, recipe))
        .map(|i| i.instance.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:9187",
            "localhost:9187",
            "LOCALHOST",
            "[::1]:9187",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:9187",
            "10.0.0.1:9187",
            "",
            "[::2]:1",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
