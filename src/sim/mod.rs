//! A stateful in-memory Intercom (REST API version 2.15) for tests, `sluice demo` and benchmarks.
//!
//! Owns the public surface of the simulator: [`SimConfig`]/[`SimArgs`], the cloneable [`Sim`]
//! handle with its direct-control methods, the axum [`Sim::router`], [`serve`] and
//! [`Sim::start`]/[`SimHandle`], plus the transport tricks the HTTP layer needs (injected latency,
//! dropping a connection without a response). The runtime never imports this module.
//!
//! Layout: `clock` (simulated time), `store` (tables and search indices), `objects` (2.15 object
//! shapes), `state` (everything behind the lock), `seed` (deterministic data and churn), `search`
//! (query grammar, day truncation, cursors), `routes` (Intercom endpoints), `control` (`/_sim`),
//! `faults`, `audit`, `error`.
//!
//! # Decisions where the Intercom docs are silent
//!
//! - Auth is checked first (401 even on unknown paths, without rate-limit headers); every
//!   authenticated request counts against the 10-second window, including 4xx answers.
//! - Any `Intercom-Version` of the 2.15 enum (`1.0` … `2.15`) is accepted and answered with 2.15
//!   shapes; anything else is 400 `intercom_version_invalid`. A 406 carries code `not_acceptable`.
//! - Search: default sort `created_at` descending; ties broken by id. `per_page` above 150 is
//!   silently capped, below 1 is 400. Query errors are 400 `parameter_invalid` (bad sort order:
//!   `invalid_sort_order`). A group inside a group is the deepest nesting allowed. Unknown fields
//!   are accepted as strings. Conversations reject `>=`/`<=` on timestamps (tickets accept them).
//!   The cursor is base64 JSON `[page, total_count, last sort key, last id]`: `total_count` is
//!   fixed at the first page; an invalid cursor is 400 `parameter_invalid`.
//! - Index lag applies to creates and updates (API or `/_sim`); deletes vanish at once; seeded
//!   data is indexed from the start.
//! - Scroll: the `scroll_param` stays the same across pages; an expired or unknown one is 400
//!   `parameter_invalid`; an injected 5xx on a scroll closes it (the client must restart).
//! - Company list: `last_request_at` descending, `per_page` default 15 (max 60), 10,000 cap.
//! - Contact conflicts (409): same email within the same role, or same `external_id`.
//! - Ticket create with `{email}` creates a user when none exists; a state change through
//!   `PUT /tickets/{id}` adds a `ticket_state_updated_by_admin` part and sets `open` to
//!   `category != resolved` unless `open` is given. Tickets also carry `tags` and `company_id`.
//! - Deleting a company detaches its contacts without bumping their `updated_at`.
//! - `GET /conversations/{id}?display_as=plaintext` answers the message and part bodies with
//!   their HTML tags dropped (and `&lt; &gt; &amp;` decoded); any other value keeps HTML.
//! - OAuth (`GET /oauth`, `POST /auth/eagle/token`, `/_sim/oauth`): see `oauth`.
//! - A `fail_next` rule with status 0 drops the connection; without a connection tap (router used
//!   directly) a drop answers an empty 502.

mod audit;
mod clock;
mod control;
mod error;
mod faults;
mod oauth;
mod objects;
mod routes;
mod search;
mod seed;
mod state;
mod store;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub use audit::{AuditEntry, AuthSeen};
pub use control::RuntimeConfig;
pub use faults::{FailRule, Faults};
pub use store::Kind;

use state::State;

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed for deterministic data.
    pub seed: u64,
    /// Seeded contacts.
    pub contacts: usize,
    /// Seeded companies.
    pub companies: usize,
    /// Seeded tickets.
    pub tickets: usize,
    /// Seeded conversations.
    pub conversations: usize,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    /// Search index lag in seconds (records written more recently are stale or invisible).
    pub search_lag_secs: i64,
    /// Requests allowed per 10-second window.
    pub rate_limit_per_window: u32,
    /// Workspace timezone (contact search day boundaries, `GET /me`).
    pub timezone: chrono_tz::Tz,
    /// Simulator clock at start, unix seconds.
    pub start_time: i64,
    /// When true the clock only moves via `/_sim/clock` or [`Sim::advance_clock`].
    pub frozen_clock: bool,
    /// Companies per scroll page.
    pub scroll_page_size: usize,
    /// Make `>`/`<` on ticket and conversation stamps exclusive (Intercom's are inclusive).
    pub strict_gt: bool,
    /// Serve one workspace per token — each with its own data (seeded from `seed + i` for
    /// the `i`-th token), clock and rate budget — instead of one workspace accepting every
    /// token. Requests (`/_sim` calls too) go to the workspace of their bearer token; one
    /// with no known token goes to the first.
    pub workspace_per_token: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 42,
            contacts: 20,
            companies: 5,
            tickets: 10,
            conversations: 10,
            tokens: vec!["sim-token".into()],
            search_lag_secs: 0,
            rate_limit_per_window: 1666,
            timezone: chrono_tz::Europe::Dublin,
            start_time: chrono::Utc::now().timestamp(),
            frozen_clock: false,
            scroll_page_size: 50,
            strict_gt: false,
            workspace_per_token: false,
        }
    }
}

/// Command-line arguments of the simulator (`sluice sim`).
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Port to listen on (loopback).
    #[arg(long, default_value_t = 4010)]
    pub port: u16,
    /// Seed for deterministic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seeded contacts.
    #[arg(long, default_value_t = 20)]
    pub contacts: usize,
    /// Seeded companies.
    #[arg(long, default_value_t = 5)]
    pub companies: usize,
    /// Seeded tickets.
    #[arg(long, default_value_t = 10)]
    pub tickets: usize,
    /// Seeded conversations.
    #[arg(long, default_value_t = 10)]
    pub conversations: usize,
    /// Search index lag in seconds.
    #[arg(long, default_value_t = 0)]
    pub search_lag_secs: i64,
    /// Requests allowed per 10-second window.
    #[arg(long, default_value_t = 1666)]
    pub rate_limit: u32,
    /// Workspace timezone (IANA name).
    #[arg(long, default_value = "Europe/Dublin")]
    pub timezone: String,
    /// Simulator clock at start (unix seconds); default now.
    #[arg(long)]
    pub start_time: Option<i64>,
    /// Freeze the clock (it then moves only via /_sim/clock).
    #[arg(long)]
    pub frozen_clock: bool,
    /// Accepted bearer token (repeatable); default `sim-token`.
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// Companies per scroll page.
    #[arg(long, default_value_t = 50)]
    pub scroll_page_size: usize,
    /// One workspace per `--token` (each its own data, clock and rate budget) instead of one
    /// workspace accepting them all.
    #[arg(long)]
    pub workspace_per_token: bool,
}

impl SimArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        let timezone: chrono_tz::Tz = self
            .timezone
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown timezone `{}`", self.timezone))?;
        let defaults = SimConfig::default();
        Ok(SimConfig {
            seed: self.seed,
            contacts: self.contacts,
            companies: self.companies,
            tickets: self.tickets,
            conversations: self.conversations,
            tokens: if self.tokens.is_empty() {
                defaults.tokens
            } else {
                self.tokens.clone()
            },
            search_lag_secs: self.search_lag_secs.max(0),
            rate_limit_per_window: self.rate_limit,
            timezone,
            start_time: self.start_time.unwrap_or(defaults.start_time),
            frozen_clock: self.frozen_clock,
            scroll_page_size: self.scroll_page_size.max(1),
            strict_gt: false,
            workspace_per_token: self.workspace_per_token,
        })
    }
}

/// A simulated Intercom workspace; cheap to clone (shared state). One simulator may serve
/// several ([`SimConfig::workspace_per_token`]); a `Sim` is one of them, and its router
/// serves them all.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Mutex<State>>,
    fleet: Arc<Fleet>,
}

/// Every workspace one simulator serves, and which token reaches which.
struct Fleet {
    workspaces: Vec<Arc<Mutex<State>>>,
    by_token: std::collections::HashMap<String, usize>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

impl Sim {
    /// A simulator seeded from `config`.
    pub fn new(config: SimConfig) -> Sim {
        let configs: Vec<SimConfig> = if config.workspace_per_token && config.tokens.len() > 1 {
            (0..config.tokens.len())
                .map(|i| SimConfig {
                    seed: config.seed.wrapping_add(i as u64),
                    tokens: vec![config.tokens[i].clone()],
                    ..config.clone()
                })
                .collect()
        } else {
            vec![config]
        };
        let mut by_token = std::collections::HashMap::new();
        for (i, c) in configs.iter().enumerate() {
            for t in &c.tokens {
                by_token.entry(t.clone()).or_insert(i);
            }
        }
        let workspaces: Vec<Arc<Mutex<State>>> = configs
            .into_iter()
            .map(|c| Arc::new(Mutex::new(State::new(c))))
            .collect();
        Sim {
            inner: workspaces[0].clone(),
            fleet: Arc::new(Fleet {
                workspaces,
                by_token,
            }),
        }
    }

    /// Every workspace this simulator serves, in token order (one unless
    /// [`SimConfig::workspace_per_token`]).
    pub fn workspaces(&self) -> Vec<Sim> {
        self.fleet
            .workspaces
            .iter()
            .map(|w| Sim {
                inner: w.clone(),
                fleet: self.fleet.clone(),
            })
            .collect()
    }

    /// The workspace that accepts `token`, if any.
    pub fn workspace(&self, token: &str) -> Option<Sim> {
        let i = match self.fleet.by_token.get(token) {
            Some(i) => *i,
            // A token added since the start (e.g. issued by an OAuth exchange).
            None => self.fleet.workspaces.iter().position(|w| {
                w.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .config
                    .tokens
                    .iter()
                    .any(|t| t == token)
            })?,
        };
        Some(Sim {
            inner: self.fleet.workspaces[i].clone(),
            fleet: self.fleet.clone(),
        })
    }

    /// The workspace a request is for: its bearer token's, else this one.
    fn for_request(&self, headers: &axum::http::HeaderMap) -> Sim {
        if self.fleet.workspaces.len() == 1 {
            return self.clone();
        }
        headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .and_then(|t| self.workspace(t.trim()))
            .unwrap_or_else(|| self.clone())
    }

    /// Locks the state. A poisoned lock is recovered: every mutation leaves the state usable, so
    /// a panicking handler cannot corrupt it beyond one half-applied write.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The axum router serving both the Intercom API and `/_sim`.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Simulator time (unix seconds).
    pub fn now(&self) -> i64 {
        self.lock().now()
    }

    /// Moves the simulator clock by `secs`.
    pub fn advance_clock(&self, secs: i64) {
        self.lock().clock.advance(secs);
    }

    /// Sets the simulator clock to `ts`.
    pub fn set_clock(&self, ts: i64) {
        self.lock().clock.set(ts);
    }

    /// Every audited (non-`/_sim`) request so far.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.lock().audit.clone()
    }

    /// Audited requests with `seq > since`.
    pub fn audit_since(&self, since: u64) -> Vec<AuditEntry> {
        self.lock()
            .audit
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    /// Empties the audit log (sequence numbers keep increasing).
    pub fn clear_audit(&self) {
        self.lock().audit.clear();
    }

    /// The current state of one record, bypassing auth and index lag.
    pub fn record(&self, kind: Kind, id: &str) -> Option<serde_json::Value> {
        self.lock().cloned(kind, id)
    }

    /// Every record of a kind, in `(created_at, id)` order.
    pub fn records(&self, kind: Kind) -> Vec<serde_json::Value> {
        self.lock()
            .tables
            .t(kind)
            .ordered()
            .into_iter()
            .cloned()
            .collect()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The injected faults (with `fail_next` rules not yet consumed).
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Creates a record from partial JSON (see `POST /_sim/{kind}`).
    pub fn create(
        &self,
        kind: Kind,
        partial: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        control::create(&mut self.lock(), kind, partial)
    }

    /// Merges `patch` into a record, bumping `updated_at` unless the patch sets it.
    pub fn patch(
        &self,
        kind: Kind,
        id: &str,
        patch: serde_json::Value,
    ) -> Option<serde_json::Value> {
        control::patch(&mut self.lock(), kind, id, &patch)
    }

    /// Deletes a record; false when it did not exist.
    pub fn delete(&self, kind: Kind, id: &str) -> bool {
        control::delete(&mut self.lock(), kind, id)
    }

    /// Makes `count` random realistic changes now; returns what changed.
    pub fn churn(&self, count: usize) -> Vec<(Kind, String)> {
        seed::churn(&mut self.lock(), count)
    }

    /// Re-seeds all data at the current simulator time (clears audit, faults and scroll).
    pub fn reset(&self) {
        control::reset(&mut self.lock());
    }

    /// The live configuration.
    pub fn runtime_config(&self) -> RuntimeConfig {
        control::runtime_config(&self.lock())
    }

    /// Makes `>`/`<` on ticket and conversation stamps exclusive (`true`) or, as Intercom
    /// documents them, inclusive (`false`).
    pub fn set_strict_gt(&self, on: bool) {
        self.lock().config.strict_gt = on;
    }

    /// The most Intercom requests answered at once since the last call (which resets it).
    pub fn take_max_in_flight(&self) -> usize {
        let mut st = self.lock();
        let now = st.in_flight.0;
        std::mem::replace(&mut st.in_flight.1, now)
    }

    /// Every access token issued through OAuth and not revoked (tests check none leaks).
    pub fn oauth_tokens(&self) -> Vec<String> {
        oauth::issued(&self.lock())
    }

    /// Sets the search index lag.
    pub fn set_search_lag(&self, secs: i64) {
        self.lock().config.search_lag_secs = secs.max(0);
    }

    /// Sets the requests allowed per 10-second window.
    pub fn set_rate_limit(&self, per_window: u32) {
        self.lock().config.rate_limit_per_window = per_window;
    }

    /// Sets the workspace timezone.
    pub fn set_timezone(&self, tz: chrono_tz::Tz) {
        self.lock().config.timezone = tz;
    }

    /// Starts serving on `127.0.0.1:0`; the server stops when the handle is dropped.
    pub async fn start(config: SimConfig) -> io::Result<SimHandle> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sim = Sim::new(config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(serve(listener, sim.clone(), async move {
            let _ = rx.await;
        }));
        Ok(SimHandle {
            sim,
            base_url: format!("http://{addr}"),
            shutdown: Some(tx),
            join: Some(join),
        })
    }
}

/// A running simulator started by [`Sim::start`].
#[derive(Debug)]
pub struct SimHandle {
    /// The simulator behind the server.
    pub sim: Sim,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl SimHandle {
    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.join.take() {
            Some(j) => j.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves the simulator on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    sim: Sim,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(
        TapListener(listener),
        sim.router()
            .into_make_service_with_connect_info::<ConnTap>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A TCP listener whose connections can be killed from a handler (fault `drop`).
struct TapListener(TcpListener);

/// A connection that fails every read and write once killed, so hyper closes it without
/// writing a response.
struct TapIo {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

/// The per-connection kill switch, handed to handlers as connect info.
#[derive(Clone, Debug)]
struct ConnTap(Arc<AtomicBool>);

impl Listener for TapListener {
    type Io = TapIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TapIo, std::net::SocketAddr) {
        let (inner, addr) = Listener::accept(&mut self.0).await;
        let _ = inner.set_nodelay(true);
        (
            TapIo {
                inner,
                killed: Arc::new(AtomicBool::new(false)),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, TapListener>> for ConnTap {
    fn connect_info(stream: IncomingStream<'_, TapListener>) -> ConnTap {
        ConnTap(stream.io().killed.clone())
    }
}

fn killed_err() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by simulator fault",
    )
}

impl AsyncRead for TapIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_err()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TapIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_err()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_err()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn http_date(ts: i64) -> String {
    let secs = u64::try_from(ts.clamp(0, clock::MAX_TS)).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

/// The single handler: `/_sim` control calls, everything else is Intercom.
async fn handle(AxumState(sim): AxumState<Sim>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let sim = sim.for_request(&parts.headers);
    let bytes = axum::body::to_bytes(body, 32 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let method = parts.method.as_str().to_ascii_uppercase();
    if path == "/_sim" || path.starts_with("/_sim/") {
        let (status, text) = control::handle(&sim, &method, &path, query.as_deref(), &bytes);
        let mut resp = Response::new(Body::from(text));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        set_header(&mut resp, "content-type", "application/json");
        set_header(&mut resp, "date", &http_date(sim.now()));
        return resp;
    }
    if path == "/oauth" || path == "/auth/eagle/token" {
        let ct = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        let answer = oauth::handle(
            &mut sim.lock(),
            &method,
            &path,
            query.as_deref(),
            ct,
            &bytes,
        );
        if let Some(r) = answer {
            let mut resp = Response::new(Body::from(r.body));
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            set_header(&mut resp, "date", &http_date(sim.now()));
            if let Some(l) = r.location {
                set_header(&mut resp, "location", &l);
            } else {
                set_header(&mut resp, "content-type", "application/json");
            }
            return resp;
        }
    }
    let latency = {
        let mut st = sim.lock();
        st.in_flight.0 += 1;
        st.in_flight.1 = st.in_flight.1.max(st.in_flight.0);
        st.faults.latency_ms
    };
    // Counts the request as answered however this handler ends.
    struct InFlight(Sim);
    impl Drop for InFlight {
        fn drop(&mut self) {
            let mut st = self.0.lock();
            st.in_flight.0 = st.in_flight.0.saturating_sub(1);
        }
    }
    let _in_flight = InFlight(sim.clone());
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let reply = {
        let mut st = sim.lock();
        routes::intercom(
            &mut st,
            &method,
            &path,
            query.as_deref(),
            &parts.headers,
            &bytes,
        )
    };
    if reply.drop {
        if let Some(ConnectInfo(tap)) = parts.extensions.get::<ConnectInfo<ConnTap>>() {
            tap.0.store(true, Ordering::SeqCst);
        }
        // Without a tap (router used directly) the closest thing is an empty 502.
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        return resp;
    }
    let has_body = reply.body.is_some();
    let mut resp = Response::new(Body::from(reply.body.unwrap_or_default()));
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_header(&mut resp, "date", &http_date(reply.date));
    if has_body {
        set_header(&mut resp, "content-type", "application/json; charset=utf-8");
    }
    if let Some((limit, remaining, reset)) = reply.rate {
        set_header(&mut resp, "x-ratelimit-limit", &limit.to_string());
        set_header(&mut resp, "x-ratelimit-remaining", &remaining.to_string());
        set_header(&mut resp, "x-ratelimit-reset", &reset.to_string());
    }
    resp
}
