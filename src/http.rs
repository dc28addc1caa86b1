//! HTTP: one connection to one account of a service, sending rendered requests with auth and
//! headers, classifying every failure in one place, retrying and waiting out rate limits.
//!
//! Owns reqwest, the retry/backoff loop, rate-limit tracking, error-body parsing and the
//! `Failure` type the rest of the runtime branches on. Never logs or returns a token, and shows
//! URLs without their query string. Does not decide what to do with a failure beyond retrying.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::governor::{Budget, Governor, Governors, WorkspaceKey};
use crate::plan::{ConnectionPlan, Connector};
use crate::plan::{ErrorRule, Method};
use crate::secret::Secret;
use crate::template::lookup;

use crate::failure::COULD_NOT_CONNECT;
pub use crate::failure::{Failure, FailureClass};

/// When a failed request is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Retryable failures are retried with backoff.
    Always,
    /// Never (the caller restarts, e.g. a scroll).
    Never,
    /// Only when it surely was not carried out (see [`Failure::outcome_unknown`]).
    UnlessMaybeDone,
}

/// A request ready to send: path already percent-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// Path starting with `/`, encoded.
    pub path: String,
    /// Query parameters.
    pub query: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
}

impl HttpRequest {
    /// `METHOD /path` for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", method_str(self.method), self.path)
    }
}

/// The method's name.
pub fn method_str(m: Method) -> &'static str {
    m.as_str()
}

pub use crate::plan::RetryPolicy;

/// Who is calling (a recipe instance's cycle), for the rate governor's fairness, and what its
/// calls came to (for the cycle's report).
#[derive(Debug, Default)]
pub struct Caller {
    /// The client's name (a recipe instance); `cli` when no cycle is calling.
    pub name: String,
    /// Requests sent (every attempt counts).
    pub calls: AtomicU64,
    /// 429 answers.
    pub rate_limited: AtomicU64,
}

tokio::task_local! {
    /// The caller of the requests made on this task.
    pub static CLIENT: Arc<Caller>;
}

/// The budget of a connection's workspace, from the connector's `rate_limit` and the
/// connection's `rate_share`.
fn budget_of(plan: &ConnectionPlan) -> Budget {
    let spec = plan.connector.api.rate_limit.as_ref();
    Budget {
        window: spec.map_or(Duration::from_secs(60), |s| s.window),
        limit_hint: spec
            .and_then(|s| s.limit)
            .unwrap_or(crate::governor::UNKNOWN_LIMIT),
        share: plan.rate_share,
    }
}

/// A URL for messages, with any `user:password@` replaced by `***@`.
fn redact_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            let host = u.host_str().unwrap_or("");
            let rest = &url[url.find(host).map_or(0, |i| i + host.len())..];
            format!("{}://***@{host}{rest}", u.scheme())
        }
        _ => url.to_string(),
    }
}

/// A response that succeeded (2xx).
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Parsed JSON body; `Null` when the body was empty.
    pub body: Value,
}

/// A response that succeeded (2xx), its body unparsed (for pages of records, which are read
/// field by field rather than parsed whole).
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// The body as received.
    pub body: Vec<u8>,
    /// Attempts it took, rate-limit waits included.
    pub attempts: u32,
}

/// One account of a service: base URL, credentials, headers, retry policy and shared rate-limit
/// state. Clone the `Arc` to share it between triggers and actions of several recipes.
pub struct Connection {
    /// Connection name from `sluice.yaml`.
    pub name: String,
    /// The connector it speaks.
    pub connector: Arc<Connector>,
    base_url: String,
    token: Option<Secret>,
    api_version: Option<String>,
    configured_tz: Option<Tz>,
    discovered_tz: OnceCell<Option<Tz>>,
    retry: RetryPolicy,
    /// Largest response body accepted, in bytes.
    max_body: usize,
    redactor: Arc<Redactor>,
    /// With `auth: oauth2`: the live token (refreshed, revoked, replaced while running).
    auth: Option<Arc<crate::oauth::LiveAuth>>,
    client: reqwest::Client,
    /// The workspace's rate governor (shared by every connection to the same workspace).
    governor: Arc<Governor>,
    /// The server's clock minus ours, in milliseconds, from the last response's `Date` header
    /// that was within `max_clock_skew` ([`NO_OFFSET`] until one arrives).
    clock_offset: AtomicI64,
    /// How far (seconds, either way) the server's clock may be from ours and still be used.
    max_clock_skew: i64,
    /// Whether a `Date` beyond `max_clock_skew` was reported (once per connection).
    clock_warned: AtomicBool,
}

/// `Connection::clock_offset` before any `Date` header was seen.
const NO_OFFSET: i64 = i64::MIN;

/// The server's clock minus ours (ms), from a `Date` of `date_secs` that arrived when our
/// clock read `arrived_ms`: at most the true offset (see [`Connection::server_now`]).
fn clock_offset_ms(date_secs: i64, arrived_ms: i64) -> i64 {
    date_secs.saturating_mul(1000).saturating_sub(arrived_ms)
}

/// The server's clock (whole seconds) when ours reads `local_ms`, by offset `off_ms`.
fn server_secs(local_ms: i64, off_ms: i64) -> i64 {
    local_ms.saturating_add(off_ms).div_euclid(1000)
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("connector", &self.connector.id)
            .field("base_url", &redact_userinfo(&self.base_url))
            .field("token", &self.token)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// Why a token cannot be sent as `Authorization: Bearer <token>`, if it cannot: HTTP header
/// values hold no control characters (tab aside). Checked when a connection is opened (after
/// `${env:…}` is resolved) and by `validate` on the file's text, so it is a configuration
/// error, never a request that fails (and would be retried) at send time. Never shows the
/// token.
pub(crate) fn token_problem(token: &str) -> Option<&'static str> {
    if token.contains(['\r', '\n']) {
        Some("it contains a line break (CR or LF), which cannot be sent in an HTTP header; remove it (a value read from a file often ends with one)")
    } else if token.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        Some("it contains a control character, which cannot be sent in an HTTP header")
    } else {
        None
    }
}

impl Connection {
    /// Opens a connection from its compiled plan (nothing is sent yet), with a rate governor
    /// of its own.
    pub fn new(plan: &ConnectionPlan) -> anyhow::Result<Connection> {
        Self::with_governors(plan, &Governors::new())
    }

    /// Opens a connection whose rate governor is its workspace's in `governors`: every
    /// connection to one workspace (connector, base URL and credential) shares one budget.
    pub(crate) fn with_governors(
        plan: &ConnectionPlan,
        governors: &Governors,
    ) -> anyhow::Result<Connection> {
        Self::with_parts(plan, governors, &crate::oauth::Credentials::default())
    }

    /// As [`Connection::with_governors`]; an `auth: oauth2` connection takes its token from
    /// `credentials`.
    pub(crate) fn with_parts(
        plan: &ConnectionPlan,
        governors: &Governors,
        credentials: &crate::oauth::Credentials,
    ) -> anyhow::Result<Connection> {
        let auth = plan.oauth.as_ref().map(|o| credentials.auth(&plan.name, o));
        // An OAuth connection's workspace is named by the connection (its token changes).
        let oauth_key = auth.as_ref().map(|_| format!("oauth2:{}", plan.name));
        let key = WorkspaceKey::new(
            &plan.connector.id,
            &plan.base_url,
            oauth_key
                .as_deref()
                .or(plan.token.as_ref().map(Secret::expose)),
        );
        let governor = governors.get_or_create(key, budget_of(plan));
        let redactor = Arc::new(Redactor::new(plan.token.as_ref()));
        #[allow(clippy::disallowed_methods)]
        let client = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .timeout(plan.timeout)
            .connect_timeout(Duration::from_secs(10))
            // A redirect would carry the request (body, and a `Referer`) to wherever the
            // server points, and make a foreign answer the output: it is a failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Connection {
            name: plan.name.clone(),
            base_url: plan.base_url.clone(),
            api_version: plan.api_version.clone(),
            connector: plan.connector.clone(),
            token: plan.token.clone(),
            configured_tz: plan.timezone,
            discovered_tz: OnceCell::new(),
            retry: plan.retry,
            max_body: plan.max_body,
            redactor,
            auth,
            client,
            governor,
            clock_offset: AtomicI64::new(NO_OFFSET),
            max_clock_skew: plan.max_clock_skew,
            clock_warned: AtomicBool::new(false),
        })
    }

    /// The retry policy (attempts and backoff).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL a request is sent to: the base URL, the (already encoded) path, and the query
    /// encoded as reqwest's `query` would. The one place a URL is built, so a dry run shows
    /// exactly what is sent.
    pub(crate) fn url(&self, req: &HttpRequest) -> Result<reqwest::Url, String> {
        // The message names the path, not the base URL, which may hold credentials.
        let mut url =
            reqwest::Url::parse(&format!("{}{}", self.base_url, req.path)).map_err(|e| {
                format!(
                    "the base URL of connection `{}` with the path `{}` is not a valid URL: {e}",
                    self.name, req.path
                )
            })?;
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&req.query);
        }
        Ok(url)
    }

    /// The API version sent, if the connector pins one.
    pub fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    /// The headers every request carries, with the credential shown as `Bearer ***`.
    pub fn redacted_headers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self.connector.api.headers.clone();
        if let (Some((header, _)), Some(v)) = (&self.connector.api.api_version, &self.api_version) {
            out.push((header.clone(), v.clone()));
        }
        if self.token.is_some() || self.auth.is_some() {
            out.push(("Authorization".into(), "Bearer ***".into()));
        }
        out
    }

    /// Text a server sent, fit to show, log or store: the connection's token and any
    /// `Bearer <credential>` replaced by `***`. Every failure message or code taken from a
    /// response goes through here (see `Redactor`).
    pub(crate) fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.redactor().scrub(text)
    }

    /// The start of a response body for an error message, scrubbed. The whole body is
    /// scrubbed before it is cut, so a credential across the cut is not shown in part.
    pub(crate) fn snippet(&self, raw: &[u8]) -> String {
        let redactor = self.redactor();
        let raw = redactor.hide_token_bytes(raw);
        cut(
            &redactor.scrub(&String::from_utf8_lossy(&raw)),
            SNIPPET_CHARS,
        )
    }

    /// What hides the credential in server text: the live OAuth token's, else the
    /// configured token's.
    fn redactor(&self) -> Arc<Redactor> {
        match &self.auth {
            Some(a) => a.redactor(),
            None => self.redactor.clone(),
        }
    }

    /// The live OAuth token of an `auth: oauth2` connection.
    pub fn oauth(&self) -> Option<&Arc<crate::oauth::LiveAuth>> {
        self.auth.as_ref()
    }

    /// The account's timezone: configured, else asked of the API once (per the connector's
    /// `timezone` section). `None` when unknown; day-granular triggers then widen by two days.
    pub async fn timezone(&self) -> Option<Tz> {
        if self.configured_tz.is_some() {
            return self.configured_tz;
        }
        self.discover().await
    }

    /// Asks the connector's `timezone` request once per connection: the account's timezone,
    /// and (through the response's `Date`) the server's clock.
    async fn discover(&self) -> Option<Tz> {
        let (tz_path, tz_field) = self.connector.api.timezone.as_ref()?;
        *self
            .discovered_tz
            .get_or_init(|| async {
                let req = HttpRequest {
                    method: Method::Get,
                    path: tz_path.clone(),
                    query: vec![],
                    body: None,
                };
                match self.send(&req, &[]).await {
                    Ok(resp) => {
                        let name = lookup(&resp.body, tz_field).and_then(Value::as_str);
                        match name.and_then(|n| n.parse::<Tz>().ok()) {
                            Some(tz) => Some(tz),
                            None => {
                                if self.configured_tz.is_none() {
                                    warn!(connection = %self.name, "The account's timezone could not be read; day-granular triggers will look two days back.");
                                }
                                None
                            }
                        }
                    }
                    Err(error) => {
                        warn!(connection = %self.name, %error, "Could not ask the account's timezone and clock; day-granular triggers will look two days back.");
                        None
                    }
                }
            })
            .await
    }

    /// What the workspace's rate governor has seen.
    pub(crate) fn governor_stats(&self) -> crate::governor::GovernorStats {
        self.governor.stats()
    }

    /// Whether `other` shares this connection's rate budget (the same workspace).
    pub(crate) fn same_workspace(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.governor, &other.governor)
    }

    /// "Now" on the server's clock (Unix seconds), from the `Date` header of the last
    /// response. Before the first response it asks the connector's `timezone` request once (a
    /// cheap `GET /me` for Intercom); without one, or without a usable `Date`, it is the local
    /// clock. Cursors bounded by "now" use this, so a server whose clock is behind ours cannot
    /// make sluice skip the records it writes meanwhile. A `Date` more than `max_clock_skew`
    /// from the local clock is not used (see `note_date`).
    pub async fn server_now(&self) -> i64 {
        if self.clock_offset.load(Ordering::Relaxed) == NO_OFFSET {
            self.discover().await;
        }
        let local_ms = chrono::Utc::now().timestamp_millis();
        match self.clock_offset.load(Ordering::Relaxed) {
            NO_OFFSET => local_ms.div_euclid(1000),
            off => server_secs(local_ms, off),
        }
    }

    /// Notes the server's clock from a response's `Date` header, when it is within
    /// `max_clock_skew` of ours. One further off is a broken server (or a broken local
    /// clock): trusting it would make a first cursor (`start_from: now`) far in the future,
    /// so that nothing ever fires, or far in the past, a backfill of everything. It is
    /// ignored, with one warning per connection; the last offset within bounds (else the
    /// local clock) stays in use.
    fn note_date(&self, headers: &reqwest::header::HeaderMap) {
        let server = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let Some(server) = server else { return };
        // In milliseconds against the moment of arrival: the server stamped `Date` before it
        // sent the response and truncated it to the second, so the offset errs low and "now"
        // is never ahead of the server's clock. (Whole seconds on both sides could err a second
        // high, and a first cursor one second ahead could miss what the server writes in it.)
        let off_ms = clock_offset_ms(server, chrono::Utc::now().timestamp_millis());
        let off = off_ms / 1000;
        if off.unsigned_abs() <= self.max_clock_skew.unsigned_abs() {
            self.clock_offset
                .store(off_ms.max(NO_OFFSET + 1), Ordering::Relaxed);
        } else if !self.clock_warned.swap(true, Ordering::Relaxed) {
            // The connection's name and a parsed offset only: the header is the server's text.
            warn!(
                connection = %self.name,
                offset_secs = off,
                "The server's clock (its `Date` header) is {} the local clock, more than `max_clock_skew` allows; using the local clock for this connection. Check the server's clock, and this machine's.",
                describe_offset(off)
            );
        }
    }

    /// Sends a request, retrying retryable failures with backoff and waiting out rate limits.
    /// `rules` are checked before the connector's own error rules.
    pub async fn send(&self, req: &HttpRequest, rules: &[ErrorRule]) -> Result<Response, Failure> {
        self.send_with(req, rules, true).await
    }

    /// As [`Connection::send`]; with `retry: false` a retryable failure is returned at once
    /// (for scroll-style pagination, where the caller restarts from the first page instead).
    pub async fn send_with(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRule],
        retry: bool,
    ) -> Result<Response, Failure> {
        let mode = if retry { Resend::Always } else { Resend::Never };
        self.send_parsed(req, rules, mode).await
    }

    /// As [`Connection::send`] for a request that must not be carried out twice: a failure
    /// after which it may have been carried out ([`Failure::outcome_unknown`]) is returned at
    /// once, for the caller to check before sending again. Refused connections and rate limits
    /// are still retried.
    pub async fn send_once_only(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRule],
    ) -> Result<Response, Failure> {
        self.send_parsed(req, rules, Resend::UnlessMaybeDone).await
    }

    async fn send_parsed(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRule],
        mode: Resend,
    ) -> Result<Response, Failure> {
        let raw = self.send_raw_mode(req, rules, mode).await?;
        let body = if raw.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else if parsed_too_large(&raw.body) {
            let mb = PARSED_BUDGET >> 20;
            return Err(Failure {
                class: FailureClass::Fatal,
                status: Some(raw.status),
                code: Some("response_too_large".into()),
                message: format!("the response would take more than {mb} MiB of memory once parsed (it holds too many values)"),
                help: Some("an action's answer is read whole; ask the API for less (a smaller page, fewer items)".into()),
                request: req.describe(),
                attempts: raw.attempts,
                step: None,
            });
        } else {
            serde_json::from_slice(&raw.body).map_err(|_| Failure {
                class: FailureClass::Fatal,
                status: Some(raw.status),
                code: None,
                message: format!("the response is not JSON: {}", self.snippet(&raw.body)),
                help: None,
                request: req.describe(),
                attempts: raw.attempts,
                step: None,
            })?
        };
        Ok(Response {
            status: raw.status,
            body,
        })
    }

    /// As [`Connection::send_with`], returning the body unparsed.
    pub async fn send_raw(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRule],
        retry: bool,
    ) -> Result<RawResponse, Failure> {
        let mode = if retry { Resend::Always } else { Resend::Never };
        self.send_raw_mode(req, rules, mode).await
    }

    async fn send_raw_mode(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRule],
        mode: Resend,
    ) -> Result<RawResponse, Failure> {
        let mut attempts = 0u32;
        let mut rate_waits = 0u32;
        let first = tokio::time::Instant::now();
        // An OAuth connection: the token (refreshed first when it is about to expire), and
        // whether a 401 has already been answered with another token.
        let mut oauth: Option<(Secret, String)> = None;
        let mut retried_401 = false;
        loop {
            if let (Some(auth), None) = (&self.auth, &oauth) {
                // Revoked or missing: nothing is sent, no budget is spent.
                match auth.bearer().await {
                    Ok(t) => oauth = Some(t),
                    Err(na) => {
                        return Err(Failure {
                            class: if na.transient {
                                FailureClass::Retryable
                            } else {
                                FailureClass::Auth
                            },
                            status: None,
                            code: Some("not_authorized".into()),
                            message: na.message,
                            help: None,
                            request: req.describe(),
                            attempts: attempts + rate_waits,
                            step: None,
                        })
                    }
                }
            }
            // Budgeted ahead of sending, fairly between the recipes sharing the workspace.
            let client = CLIENT.try_with(|c| {
                c.calls.fetch_add(1, Ordering::Relaxed);
                c.name.clone()
            });
            self.governor
                .acquire(client.as_deref().unwrap_or("cli"))
                .await;
            attempts += 1;
            let token = oauth.as_ref().map(|(t, _)| t).or(self.token.as_ref());
            let mut failure = match self.send_once(req, rules, token).await {
                Ok(resp) => {
                    return Ok(RawResponse {
                        attempts: attempts + rate_waits,
                        ..resp
                    })
                }
                Err((f, wait)) => {
                    if f.class == FailureClass::RateLimited
                        && rate_waits < self.retry.max_rate_limit_waits
                    {
                        rate_waits += 1;
                        attempts -= 1;
                        let wait = wait.unwrap_or(Duration::from_secs(1));
                        debug!(connection = %self.name, request = %req.describe(), wait_ms = wait.as_millis() as u64, "Rate limited; waiting for the window to refill.");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    f
                }
            };
            if let (Some(auth), Some((_, id)), Some(401)) = (&self.auth, &oauth, failure.status) {
                // The first 401: a refreshed (or newly stored) token gets one try; without
                // one the token is marked revoked and the connection's recipes pause.
                match auth.unauthorized(id).await {
                    Some(next) if !retried_401 => {
                        retried_401 = true;
                        oauth = Some(next);
                        continue;
                    }
                    _ => {
                        failure.class = FailureClass::Auth;
                        failure.help = Some(format!(
                            "the OAuth token of connection `{}` is revoked or no longer valid; run `sluice connect {}`",
                            self.name, self.name
                        ));
                    }
                }
            }
            // A rule's `retry_for` (a state that clears by itself, such as another client's
            // scroll expiring) keeps retrying until that long has passed, whatever the count.
            let within_window = || {
                retry_window(&failure, &[rules, &self.connector.api.errors])
                    .is_some_and(|w| first.elapsed() < w)
            };
            let retry = match mode {
                Resend::Always => true,
                Resend::Never => false,
                Resend::UnlessMaybeDone => !failure.outcome_unknown(),
            };
            if retry
                && failure.class == FailureClass::Retryable
                && (attempts < self.retry.max_attempts || within_window())
            {
                let delay = self.retry.backoff(attempts);
                debug!(connection = %self.name, request = %req.describe(), status = failure.status, error = %failure.message, delay_ms = delay.as_millis() as u64, "Retrying after a transient failure.");
                tokio::time::sleep(delay).await;
                continue;
            }
            failure.attempts = attempts + rate_waits;
            return Err(failure);
        }
    }

    async fn send_once(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRule],
        token: Option<&Secret>,
    ) -> Result<RawResponse, (Failure, Option<Duration>)> {
        let fail = |class, status, code, message: String, help| Failure {
            class,
            status,
            code,
            message,
            help,
            request: req.describe(),
            attempts: 1,
            step: None,
        };
        let url = self
            .url(req)
            .map_err(|m| (fail(FailureClass::Fatal, None, None, m, None), None))?;
        let method = reqwest::Method::from_bytes(method_str(req.method).as_bytes())
            .expect("invariant: method names are valid");
        let mut rb = self.client.request(method, url);
        for (k, v) in &self.connector.api.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let (Some((header, _)), Some(v)) = (&self.connector.api.api_version, &self.api_version) {
            rb = rb.header(header.as_str(), v.as_str());
        }
        if let Some(t) = token {
            rb = rb.bearer_auth(t.expose());
        }
        if let Some(body) = &req.body {
            rb = rb.json(body);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                // The request could not even be built (a header value reqwest refuses): the
                // same happens on every attempt, so it is not transient. Values from the
                // configuration are checked when the connection is opened; this is the guard
                // for the rest. reqwest's message can hold the URL, so it is not shown.
                return Err((
                    fail(
                        FailureClass::Fatal,
                        None,
                        None,
                        "the request could not be built (a header value is not valid); check the connector's headers and the connection's settings".into(),
                        None,
                    ),
                    None,
                ));
            }
            Err(e) => {
                // Transport errors (refused, reset, timeout) are transient. reqwest's message can
                // hold the URL with its query string, so only its kind is shown.
                let what = if e.is_timeout() {
                    "the request timed out"
                } else if e.is_connect() {
                    COULD_NOT_CONNECT
                } else {
                    "the connection failed before a response arrived"
                };
                return Err((
                    fail(FailureClass::Retryable, None, None, what.into(), None),
                    None,
                ));
            }
        };
        let status = resp.status().as_u16();
        self.note_date(resp.headers());
        let wait = self.note_rate_headers(resp.headers(), status);
        if (300..400).contains(&status) {
            // Not followed (see the client's redirect policy). The `Location` is not shown:
            // it is the server's text and could carry anything.
            return Err((
                fail(
                    FailureClass::Fatal,
                    Some(status),
                    Some("redirect".into()),
                    "the API answered with a redirect; sluice does not follow redirects".into(),
                    Some(
                        "check the connection's `base_url` (the host, and https rather than http)"
                            .into(),
                    ),
                ),
                None,
            ));
        }
        let bytes = match self.read_body(resp).await {
            Ok(b) => b,
            Err(BodyError::CutOff) => {
                return Err((
                    fail(
                        FailureClass::Retryable,
                        Some(status),
                        None,
                        "the response body was cut off".into(),
                        None,
                    ),
                    None,
                ))
            }
            Err(BodyError::TooLarge) => {
                let mb = self.max_body >> 20;
                return Err((
                    fail(
                        FailureClass::Fatal,
                        Some(status),
                        Some("response_too_large".into()),
                        format!("the response is larger than the {mb} MiB limit (`max_response_mb`)"),
                        Some("if the API really answers this much, raise `max_response_mb` on the connection in sluice.yaml; otherwise ask for smaller pages".into()),
                    ),
                    None,
                ));
            }
        };
        if (200..300).contains(&status) {
            let mut body = bytes;
            self.redactor().hide_token_in_body(&mut body);
            return Ok(RawResponse {
                status,
                body,
                attempts: 1,
            });
        }
        let body: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            Some(Value::Null)
        } else if parsed_too_large(&bytes) {
            // Shown as a snippet instead, like a body that is not JSON.
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let (code, message) = self.error_details(body.as_ref(), &bytes);
        let code = code.map(|c| self.scrub(&c).into_owned());
        let message = self.scrub(&message).into_owned();
        let (class, help) = classify(
            status,
            code.as_deref(),
            &[rules, &self.connector.api.errors],
        );
        Err((fail(class, Some(status), code, message, help), wait))
    }

    /// Reads a response body of at most `max_body` bytes: refused at once when its
    /// `Content-Length` says more, else read chunk by chunk and refused as soon as it passes
    /// the limit. The buffer grows with what arrives and never beyond the limit, so a hostile
    /// or broken server cannot make the process hold more than one limit per request.
    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, BodyError> {
        let limit = self.max_body;
        let announced = resp.content_length().map(usize::try_from);
        if announced.is_some_and(|n| n.map_or(true, |n| n > limit)) {
            return Err(BodyError::TooLarge);
        }
        let mut body = Vec::with_capacity(announced.and_then(Result::ok).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|_| BodyError::CutOff)? {
            let len = body.len() + chunk.len();
            if len > limit {
                return Err(BodyError::TooLarge);
            }
            if len > body.capacity() {
                // Doubling, as `Vec` would, but capped at the limit: plain doubling could
                // reserve nearly twice the limit.
                let want = body.capacity().saturating_mul(2).max(len).min(limit);
                body.reserve_exact(want - body.len());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Tells the governor what the server said of its window; returns how long to wait after
    /// a 429.
    fn note_rate_headers(
        &self,
        headers: &reqwest::header::HeaderMap,
        status: u16,
    ) -> Option<Duration> {
        if status == 429 {
            Self::count_rate_limited();
        }
        let Some(spec) = self.connector.api.rate_limit.as_ref() else {
            // No rate-limit headers declared: a 429 still pauses the whole workspace, for
            // `Retry-After` seconds when the server says, else a second.
            if status != 429 {
                return None;
            }
            let wait = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(Duration::from_secs(1), |s| {
                    Duration::from_secs(s.clamp(1, 60))
                });
            self.governor.rejected(wait);
            return Some(wait);
        };
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        let remaining = num(&spec.remaining_header);
        let reset = num(&spec.reset_header);
        // Reset is a Unix time on the server's clock; measure it against the server's `Date`
        // so a skewed local clock cannot make us wait too long or not at all.
        let server_now = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        let wait = reset.map(|r| {
            let secs = r.saturating_sub(server_now).clamp(0, 60) as u64;
            // At least a second, plus jitter so several waiting clients do not stampede.
            Duration::from_secs(secs.max(1)) + Duration::from_millis(fastrand::u64(0..250))
        });
        let limit = spec.limit_header.as_deref().and_then(num);
        let has_date = headers.contains_key(reqwest::header::DATE);
        self.governor.observe(
            limit.map(|l| l.max(0) as u64),
            remaining.map(|r| r.max(0) as u64),
            reset,
            has_date.then_some(server_now),
        );
        if status == 429 {
            self.governor
                .rejected(wait.unwrap_or(Duration::from_secs(1)));
        }
        wait
    }

    /// Counts a 429 against the calling cycle.
    fn count_rate_limited() {
        let _ = CLIENT.try_with(|c| c.rate_limited.fetch_add(1, Ordering::Relaxed));
    }

    fn error_details(&self, body: Option<&Value>, raw: &[u8]) -> (Option<String>, String) {
        if let (Some(body), Some(spec)) = (body, &self.connector.api.error_body) {
            let first = lookup(body, &spec.list).and_then(|l| match l {
                Value::Array(a) => a.first(),
                other => Some(other),
            });
            if let Some(first) = first {
                let code = lookup(first, &spec.code)
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let message = lookup(first, &spec.message)
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if code.is_some() || message.is_some() {
                    return (code, message.unwrap_or_else(|| "no message".into()));
                }
            }
        }
        let msg = if raw.is_empty() {
            "the response has no body".to_string()
        } else {
            self.snippet(raw)
        };
        (None, msg)
    }
}

/// The most memory a body read whole (an action's answer, an error body) may take once parsed
/// into a `serde_json::Value`, as [`parsed_too_large`] estimates it. The byte limit
/// (`max_response_mb`) does not bound this: `[0,0,…]` takes 2 bytes a value as text and 32 or
/// more parsed, so 40 MB of it took 746 MB. Real answers (an object or a page of them) are
/// estimated at about twice their size, so this admits far more than any action returns.
pub(crate) const PARSED_BUDGET: usize = 64 << 20;

/// Estimated bytes a parsed value takes per list item or object entry (a 32-byte `Value`,
/// with room for the list's growth or the entry's key).
const PARSED_PER_ITEM: usize = 64;

/// Estimated bytes a parsed object takes before its entries (a `BTreeMap` node holds room
/// for eleven entries, however few it has).
const PARSED_PER_OBJECT: usize = 640;

/// Whether JSON `text`, parsed into a `serde_json::Value`, would take more than
/// [`PARSED_BUDGET`]: an upper estimate from the `[`, `{`, `,` and `:` outside strings
/// (strings take about their own size, which the byte limit bounds). One pass, stopping once
/// past the budget; nothing is allocated.
pub(crate) fn parsed_too_large(text: &[u8]) -> bool {
    let mut cost = 0usize;
    let mut rest = text;
    loop {
        let quote = memchr::memchr(b'"', rest);
        for block in rest[..quote.unwrap_or(rest.len())].chunks(1 << 16) {
            for b in block {
                cost += match b {
                    b'{' => PARSED_PER_OBJECT,
                    b'[' | b',' | b':' => PARSED_PER_ITEM,
                    _ => 0,
                };
            }
            if cost > PARSED_BUDGET {
                return true;
            }
        }
        let Some(q) = quote else { return false };
        // Past the string (which has no structure): its closing quote is the first one not
        // escaped. An unterminated string is not JSON, which the parser reports.
        let mut j = q + 1;
        loop {
            let Some(k) = rest.get(j..).and_then(|r| memchr::memchr2(b'"', b'\\', r)) else {
                return false;
            };
            if rest[j + k] == b'"' {
                j += k + 1;
                break;
            }
            j += k + 2;
        }
        rest = rest.get(j..).unwrap_or_default();
    }
}

/// `off` seconds as "3 days ahead of" / "2 hours behind", for the clock warning.
fn describe_offset(off: i64) -> String {
    let n = off.unsigned_abs();
    let (n, unit) = match n {
        n if n >= 86_400 => (n / 86_400, "day"),
        n if n >= 3_600 => (n / 3_600, "hour"),
        n if n >= 60 => (n / 60, "minute"),
        n => (n, "second"),
    };
    let s = if n == 1 { "" } else { "s" };
    let side = if off > 0 { "ahead of" } else { "behind" };
    format!("{n} {unit}{s} {side}")
}

/// Why a response body could not be read.
enum BodyError {
    /// The connection broke before the body was complete.
    CutOff,
    /// The body is (or says it will be) larger than the connection's limit.
    TooLarge,
}

/// Hides the connection's credential in what servers send back (an error body echoing the
/// request's `Authorization` header, a 2xx body echoing the token). Built once per connection.
///
/// Failure text (messages and codes from error bodies, snippets of bodies) is scrubbed of the
/// token and of any `Bearer <credential>`, which may be another credential of the same user.
/// A 2xx body is customer data: only the token itself is replaced there. Its bytes are found
/// with one `memmem` scan per response, and the body is copied only when found, so the record
/// path stays as fast. A JSON string can also spell the token with escapes (`\u0074ok…`, or
/// `\/` for a `/`), which every JSON reader downstream decodes: one `memchr` pass looks at
/// each backslash, and only an escape that decodes to a character of the token (so that it
/// could spell part of it) makes the body's string values be decoded and checked. Bodies
/// without such escapes, the common case, cost those two scans.
/// No `Debug`: the finder holds the token.
pub(crate) struct Redactor {
    token: Option<memchr::memmem::Finder<'static>>,
    /// Which ASCII characters occur in the token: an escape decoding to another one cannot
    /// spell part of it.
    ascii: [bool; 128],
    /// Whether the token holds characters beyond ASCII (then every `\u` escape to one is
    /// suspect).
    non_ascii: bool,
}

/// What a hidden credential is shown as.
const HIDDEN: &str = "***";

/// How many characters of a body a failure message shows.
const SNIPPET_CHARS: usize = 200;

impl Redactor {
    pub(crate) fn new(token: Option<&Secret>) -> Redactor {
        let token = token.map(Secret::expose).filter(|t| !t.is_empty());
        let mut ascii = [false; 128];
        let mut non_ascii = false;
        for b in token.unwrap_or_default().bytes() {
            match ascii.get_mut(usize::from(b)) {
                Some(seen) => *seen = true,
                None => non_ascii = true,
            }
        }
        let token = token.map(|t| memchr::memmem::Finder::new(t).into_owned());
        Redactor {
            token,
            ascii,
            non_ascii,
        }
    }

    /// `text` with the token and any `Bearer <credential>` replaced by `***`; borrowed when
    /// there is nothing to hide.
    pub(crate) fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let text = match self.replace_token(text.as_bytes()) {
            // Whole occurrences of a UTF-8 needle in UTF-8 text: the result is UTF-8.
            Some(b) => Cow::Owned(
                String::from_utf8(b)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
            None => Cow::Borrowed(text),
        };
        match hide_bearer(&text) {
            Some(s) => Cow::Owned(s),
            None => text,
        }
    }

    /// Hides the token in a 2xx body, as it is and as JSON escapes may spell it.
    fn hide_token_in_body(&self, body: &mut Vec<u8>) {
        if let Cow::Owned(b) = self.hide_token_bytes(body) {
            *body = b;
        }
    }

    /// `hay` with the token hidden, as it is and where a JSON string spells it with escapes;
    /// borrowed when there is nothing to hide.
    fn hide_token_bytes<'h>(&self, hay: &'h [u8]) -> Cow<'h, [u8]> {
        let hay = match self.replace_token(hay) {
            Some(b) => Cow::Owned(b),
            None => Cow::Borrowed(hay),
        };
        if !self.has_suspect_escape(&hay) {
            return hay;
        }
        // Each string's text appears whole in the body with every escape decoded (outside
        // strings valid JSON has none): when that holds no token, no string does, and the
        // strings need not be walked.
        let decoded = decode_escapes(&hay);
        if self
            .token
            .as_ref()
            .is_none_or(|f| f.find(&decoded).is_none())
        {
            return hay;
        }
        match self.replace_escaped(&hay) {
            Some(b) => Cow::Owned(b),
            None => hay,
        }
    }

    /// `hay` with every occurrence of the token replaced, or `None` when there is none.
    fn replace_token(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let finder = self.token.as_ref()?;
        let mut found = finder.find_iter(hay).peekable();
        found.peek()?;
        let n = finder.needle().len();
        let mut out = Vec::with_capacity(hay.len());
        let mut last = 0;
        for at in found {
            out.extend_from_slice(&hay[last..at]);
            out.extend_from_slice(HIDDEN.as_bytes());
            last = at + n;
        }
        out.extend_from_slice(&hay[last..]);
        Some(out)
    }

    /// Whether some backslash in `hay` starts an escape that decodes to a character of the
    /// token. Every escape starts at a backslash, so none is missed; a backslash that is
    /// itself escaped may be taken for an escape's start, which only costs the slow path.
    fn has_suspect_escape(&self, hay: &[u8]) -> bool {
        self.token.is_some() && memchr::memchr_iter(b'\\', hay).any(|i| self.suspect(hay, i))
    }

    /// Whether the escape at `hay[i]` (a backslash) decodes to a character of the token.
    fn suspect(&self, hay: &[u8], i: usize) -> bool {
        let decoded = match hay.get(i + 1) {
            Some(b'u') => match hay.get(i + 2..i + 6).and_then(hex4) {
                Some(c) if c < 0x80 => c as u8,
                // Beyond ASCII (surrogates included): only a token with such characters.
                Some(_) => return self.non_ascii,
                None => return false,
            },
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(&c @ (b'"' | b'\\' | b'/')) => c,
            // Not a JSON escape: nothing decodes it.
            _ => return false,
        };
        self.ascii[usize::from(decoded)]
    }

    /// `hay` with every JSON string whose decoded value holds the token written again, the
    /// token replaced; `None` when there is none. Strings are found by their quotes (outside
    /// a string, valid JSON has no quote or backslash); only those with a suspect escape
    /// are decoded. Text that is not valid JSON is not decoded by anyone downstream either.
    fn replace_escaped(&self, hay: &[u8]) -> Option<Vec<u8>> {
        self.token.as_ref()?;
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        let mut at = 0;
        while let Some(q) = memchr::memchr(b'"', &hay[at..]) {
            let start = at + q;
            let mut j = start + 1;
            let mut suspect = false;
            let end = loop {
                let Some(k) = memchr::memchr2(b'"', b'\\', &hay[j..]) else {
                    break None;
                };
                let k = j + k;
                if hay[k] == b'"' {
                    break Some(k);
                }
                suspect = suspect || self.suspect(hay, k);
                // The escaped character (or a `\u`'s first hex digit) is not a quote.
                j = k + 2;
                if j > hay.len() {
                    break None;
                }
            };
            let Some(end) = end else { break };
            if suspect {
                let decoded = decode_escapes(&hay[start + 1..end]);
                if let Some(hidden) = self.replace_token(&decoded) {
                    let hidden = String::from_utf8_lossy(&hidden);
                    let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
                    o.extend_from_slice(&hay[last..start]);
                    o.extend_from_slice(
                        serde_json::to_string(&hidden)
                            .expect("invariant: a string serialises")
                            .as_bytes(),
                    );
                    last = end + 1;
                }
            }
            at = end + 1;
        }
        let mut o = out?;
        o.extend_from_slice(&hay[last..]);
        Some(o)
    }
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0, |n, d| char::from(*d).to_digit(16).map(|d| n << 4 | d))
}

/// `raw` with its JSON escapes decoded, as bytes: for a string literal's contents (between
/// its quotes), the UTF-8 of the text it stands for. Lenient, as no caller needs more: an
/// unpaired surrogate or a malformed escape becomes U+FFFD; other bytes are copied as they are.
fn decode_escapes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..i]);
        let esc = &rest[i..];
        let (c, used) = match esc.get(1) {
            Some(b'u') => match esc.get(2..6).and_then(hex4) {
                Some(hi @ 0xd800..=0xdbff) => {
                    // A surrogate pair is two escapes.
                    let lo = esc
                        .get(6..8)
                        .filter(|p| *p == b"\\u")
                        .and_then(|_| esc.get(8..12))
                        .and_then(hex4)
                        .filter(|lo| (0xdc00..=0xdfff).contains(lo));
                    match lo {
                        Some(lo) => {
                            let c = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                            (char::from_u32(c).unwrap_or('\u{fffd}'), 12)
                        }
                        None => ('\u{fffd}', 6),
                    }
                }
                Some(c) => (char::from_u32(c).unwrap_or('\u{fffd}'), 6),
                None => ('\u{fffd}', 2),
            },
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(&c @ (b'"' | b'\\' | b'/')) => (char::from(c), 2),
            _ => ('\u{fffd}', 2),
        };
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        rest = esc.get(used..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    out
}

/// `text` with the credential after every `Bearer ` (any case) replaced by `***`, or `None`
/// when there is none.
fn hide_bearer(text: &str) -> Option<String> {
    // A backslash too: in the raw text of a JSON body, `\/` spells a `/`.
    let is_cred = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=\\".contains(&b);
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'b', b'B', &bytes[from..]).map(|i| from + i) {
        from = i + 1;
        let word = bytes.get(i..i + 6);
        if !word.is_some_and(|w| w.eq_ignore_ascii_case(b"bearer")) {
            continue;
        }
        let spaces = bytes[i + 6..]
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let start = i + 6 + spaces;
        let len = bytes[start..].iter().take_while(|b| is_cred(**b)).count();
        if spaces == 0 || len == 0 {
            continue;
        }
        // Only ASCII bytes were matched: `start` and `start + len` are char boundaries.
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[last..start]);
        o.push_str(HIDDEN);
        last = start + len;
        from = last;
    }
    let mut o = out?;
    o.push_str(&text[last..]);
    Some(o)
}

/// `text` trimmed and cut to at most `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The first rule (action/trigger rules first, then the connector's) matching a status and
/// error code.
fn matching_rule<'r>(
    status: u16,
    code: Option<&str>,
    rule_sets: &[&'r [ErrorRule]],
) -> Option<&'r ErrorRule> {
    rule_sets
        .iter()
        .flat_map(|rules| rules.iter())
        .find(|r| r.matches(status, code))
}

/// How long a failure's rule says to keep retrying it (`retry_for`), if it says so.
fn retry_window(failure: &Failure, rule_sets: &[&[ErrorRule]]) -> Option<Duration> {
    matching_rule(failure.status?, failure.code.as_deref(), rule_sets)?.retry_for
}

/// Classifies a failed response: the first matching rule (action/trigger rules first, then the
/// connector's), else the built-in table. This is the only place statuses become classes.
pub fn classify(
    status: u16,
    code: Option<&str>,
    rule_sets: &[&[ErrorRule]],
) -> (FailureClass, Option<String>) {
    if let Some(r) = matching_rule(status, code, rule_sets) {
        return (r.class, r.help.clone());
    }
    let class = match status {
        401 => FailureClass::Auth,
        408 | 425 => FailureClass::Retryable,
        409 => FailureClass::Conflict,
        429 => FailureClass::RateLimited,
        500..=599 => FailureClass::Retryable,
        _ => FailureClass::Fatal,
    };
    (class, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the true offset's fraction of a second, the latency, and when the estimate
    /// is read, "now" is never ahead of the server's clock, and at most a second plus the
    /// latency behind it. (Whole seconds on both sides erred a second ahead.)
    #[test]
    fn the_server_clock_estimate_is_never_ahead() {
        for true_off in [0i64, 1, 250, 500, 999, 1_000, 1_500, -1, -250, -999, -3_700] {
            for latency in [0, 1, 40, 999] {
                for sent in (0i64..3_000).step_by(7) {
                    let date = (sent + true_off).div_euclid(1000);
                    let off = clock_offset_ms(date, sent + latency);
                    for later in [0, 1, 499, 500, 999, 1_000, 2_345] {
                        let local = sent + latency + later;
                        let truth = (local + true_off).div_euclid(1000);
                        let est = server_secs(local, off);
                        assert!(
                            est <= truth && truth - est <= 1 + latency / 1000 + 1,
                            "offset {true_off} ms, latency {latency}, sent {sent}, read {later} later: estimate {est}, server {truth}"
                        );
                    }
                }
            }
        }
    }

    fn rule(status: u16, code: Option<&str>, class: FailureClass) -> ErrorRule {
        ErrorRule {
            status: vec![status],
            code: code.map(str::to_string),
            class,
            help: None,
            retry_for: None,
        }
    }

    #[test]
    fn classify_defaults() {
        use FailureClass::*;
        for (s, c) in [
            (401, Auth),
            (404, Fatal),
            (409, Conflict),
            (422, Fatal),
            (429, RateLimited),
            (500, Retryable),
            (503, Retryable),
            (400, Fatal),
        ] {
            assert_eq!(classify(s, None, &[]).0, c, "status {s}");
        }
    }

    #[test]
    fn classify_rules_first_and_by_code() {
        let action = [rule(400, Some("scroll_exists"), FailureClass::Retryable)];
        let conn = [
            rule(400, None, FailureClass::Fatal),
            rule(503, None, FailureClass::Fatal),
        ];
        assert_eq!(
            classify(400, Some("scroll_exists"), &[&action, &conn]).0,
            FailureClass::Retryable
        );
        assert_eq!(
            classify(400, Some("other"), &[&action, &conn]).0,
            FailureClass::Fatal
        );
        assert_eq!(
            classify(503, None, &[&action, &conn]).0,
            FailureClass::Fatal
        );
    }

    #[test]
    fn redactor_hides_the_token_and_bearer_credentials_in_failure_text() {
        let r = Redactor::new(Some(&Secret::new("tok-SECRET-123")));
        assert!(matches!(r.scrub("nothing to hide"), Cow::Borrowed(_)));
        assert_eq!(
            r.scrub("Authorization: Bearer tok-SECRET-123; token tok-SECRET-123."),
            "Authorization: Bearer ***; token ***."
        );
        assert_eq!(
            r.scrub("bearer\tother.Cred/4+5=, BEARER  x-y_z~ and Bearer, bearer\"q\" héllo Bearer"),
            "bearer\t***, BEARER  *** and Bearer, bearer\"q\" héllo Bearer"
        );
        assert_eq!(r.scrub("é tok-SECRET-123é"), "é ***é");
        // A 2xx body keeps everything but the token itself.
        let mut body = br#"{"a":"tok-SECRET-123","b":"Bearer other"}"#.to_vec();
        r.hide_token_in_body(&mut body);
        assert_eq!(body, br#"{"a":"***","b":"Bearer other"}"#);
        // No token: only the bearer rule.
        let r = Redactor::new(Some(&Secret::new("")));
        assert_eq!(r.scrub("tok Bearer abc"), "tok Bearer ***");
        let mut body = br#"{"a":"\u0074"}"#.to_vec();
        r.hide_token_in_body(&mut body);
        assert_eq!(body, br#"{"a":"\u0074"}"#);
        let mut body = b"Bearer abc".to_vec();
        r.hide_token_in_body(&mut body);
        assert_eq!(body, b"Bearer abc");
    }

    /// A 2xx body after hiding the token, as text.
    fn hidden(r: &Redactor, body: &str) -> String {
        let mut b = body.as_bytes().to_vec();
        r.hide_token_in_body(&mut b);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn redactor_hides_the_token_spelled_with_json_escapes() {
        let r = Redactor::new(Some(&Secret::new("tok/S-é😀")));
        for spelled in [
            r#"\u0074ok/S-é😀"#,
            r#"tok\/S-é😀"#,
            r#"\u0074\u006F\u006b\u002f\u0053\u002d\u00e9\ud83d\ude00"#,
        ] {
            let body = format!(r#"{{"a":"x\n{spelled} y","b":["\u00e9\/", "tok/S-é😀"]}}"#);
            assert_eq!(
                hidden(&r, &body),
                r#"{"a":"x\n*** y","b":["\u00e9\/", "***"]}"#,
                "{spelled}"
            );
            // Whatever reads the body finds no token.
            let v: Value = serde_json::from_str(&hidden(&r, &body)).unwrap();
            assert!(!v.to_string().contains("tok/S-é😀"));
        }
        // Escapes that spell no part of it, an escaped backslash before text that only looks
        // like an escape, and a lone surrogate leave the body as it is.
        for body in [
            r#"{"a":"\n\t\"\\ tok/S-é"}"#,
            r#"{"a":"\\u0074ok/S-é😀"}"#,
            r#"{"a":"\ud83d tok/S-é", "b": "\/"}"#,
        ] {
            assert_eq!(hidden(&r, body), body);
        }
        // An ASCII token: escapes beyond ASCII cannot spell it, and are not decoded.
        let r = Redactor::new(Some(&Secret::new("tok-SECRET-123")));
        assert!(!r.has_suspect_escape(br#"{"a":"\u00e9\n\/\ud83d\ude00"}"#));
        assert!(r.has_suspect_escape(br#"{"a":"\u0074"}"#));
        assert_eq!(
            hidden(&r, r#"{"a":"\u0074ok-SECRET-123\u00e9"}"#),
            r#"{"a":"***é"}"#
        );
    }

    #[test]
    fn parsed_size_is_estimated_from_structure_outside_strings() {
        let zeros = |n: usize| format!("[{}0]", "0,".repeat(n - 1));
        let per = PARSED_BUDGET / PARSED_PER_ITEM;
        assert!(!parsed_too_large(zeros(per - 10).as_bytes()));
        assert!(parsed_too_large(zeros(per + 10).as_bytes()));
        // Commas, colons and brackets inside strings are text, escaped quotes included.
        let text = format!(
            r#"{{"a":"{}\"{}","b":"\\"}}"#,
            ",".repeat(per),
            "[".repeat(per)
        );
        assert!(!parsed_too_large(text.as_bytes()));
        let objects = format!("[{}{{}}]", "{},".repeat(PARSED_BUDGET / PARSED_PER_OBJECT));
        assert!(parsed_too_large(objects.as_bytes()));
        assert!(!parsed_too_large(br#"{"unterminated": "abc"#));
        assert!(!parsed_too_large(b""));
    }

    #[test]
    fn a_snippet_is_scrubbed_before_it_is_cut() {
        let r = Redactor::new(Some(&Secret::new("tok-SECRET-123")));
        let body = format!(
            "{}tok-SECRET-123 and Bearer other/cred-456",
            "x".repeat(190)
        );
        let raw = r.hide_token_bytes(body.as_bytes());
        let shown = cut(&r.scrub(&String::from_utf8_lossy(&raw)), SNIPPET_CHARS);
        assert_eq!(shown, format!("{}*** and Be…", "x".repeat(190)));
        let body = format!("{} Bearer other\\/cred-456 and more", "x".repeat(170));
        let shown = cut(&r.scrub(&body), SNIPPET_CHARS);
        assert_eq!(shown, format!("{} Bearer *** and more", "x".repeat(170)));
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn urls_in_messages_hide_their_credentials() {
        assert_eq!(
            super::redact_userinfo("https://me:pw_secret@host.io/v1"),
            "https://***@host.io/v1"
        );
        assert_eq!(
            super::redact_userinfo("https://api.intercom.io"),
            "https://api.intercom.io"
        );
    }
}
