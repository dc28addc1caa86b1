//! HTTP: one connection to one account of a service, sending rendered requests with auth and
//! headers, classifying every failure in one place, retrying and waiting out rate limits.
//!
//! Owns reqwest, the retry/backoff loop, rate-limit tracking, error-body parsing and the
//! `Failure` type the rest of the runtime branches on. Never logs or returns a token, and shows
//! URLs without their query string. Does not decide what to do with a failure beyond retrying.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, warn};

use crate::plan::Connector;
use crate::secret::Secret;
use crate::spec::{ConnectionSpec, ErrorRuleSpec, FailureClassSpec, MethodSpec};
use crate::template::lookup_str;

/// The class of a failure; the runtime branches on this, never on status codes.
pub type FailureClass = FailureClassSpec;

impl std::fmt::Display for FailureClassSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureClassSpec::Retryable => "retryable",
            FailureClassSpec::RateLimited => "rate_limited",
            FailureClassSpec::Auth => "auth",
            FailureClassSpec::Fatal => "fatal",
            FailureClassSpec::Conflict => "conflict",
        })
    }
}

/// A request that failed, classified. Carries no secrets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// What kind of failure.
    pub class: FailureClass,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The API's error code (`not_found`), when the body had one.
    pub code: Option<String>,
    /// The API's message, or what went wrong on the way.
    pub message: String,
    /// How to fix it, from the connector's error rules.
    pub help: Option<String>,
    /// `METHOD /path` of the request (no host, no query string).
    pub request: String,
    /// How many times it was sent.
    pub attempts: u32,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed", self.request)?;
        if let Some(s) = self.status {
            write!(f, " with HTTP {s}")?;
        }
        if let Some(c) = &self.code {
            write!(f, " `{c}`")?;
        }
        write!(f, " ({}): {}", self.class, self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        if let Some(h) = &self.help {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// A request ready to send: path already percent-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// Method.
    pub method: MethodSpec,
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
pub fn method_str(m: MethodSpec) -> &'static str {
    match m {
        MethodSpec::Get => "GET",
        MethodSpec::Post => "POST",
        MethodSpec::Put => "PUT",
        MethodSpec::Patch => "PATCH",
        MethodSpec::Delete => "DELETE",
    }
}

/// Retry knobs.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts for a retryable failure, the first included.
    pub max_attempts: u32,
    /// First backoff.
    pub base_delay: Duration,
    /// Longest backoff.
    pub max_delay: Duration,
    /// Rate-limit waits before giving up.
    pub max_rate_limit_waits: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_rate_limit_waits: 10,
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `n + 1` (n ≥ 1): exponential with equal jitter, bounded.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[derive(Debug, Default)]
struct RateState {
    /// Requests left in the window, as last reported.
    remaining: Option<u64>,
    /// When the window refills, on our clock.
    reset_at: Option<tokio::time::Instant>,
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
    client: reqwest::Client,
    rate: Mutex<RateState>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("connector", &self.connector.id)
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// Replaces `${env:NAME}` with the variable's value; the error names the missing variable.
pub fn resolve_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${env:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${env:` without a closing `}`".to_string())?;
        let name = &after[..end];
        let v = env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
    /// Builds a connection from its spec. `env` looks up environment variables.
    pub fn new(
        name: &str,
        connector: Arc<Connector>,
        spec: &ConnectionSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Connection> {
        let h = &connector.header;
        let base_url = match &spec.base_url {
            Some(u) => resolve_env(u, env).map_err(|e| anyhow::anyhow!("base_url: {e}"))?,
            None => {
                let region = spec.region.as_deref().unwrap_or(&h.default_region);
                let found = h
                    .regions
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(region))
                    .map(|(_, v)| v.clone());
                found.ok_or_else(|| {
                    anyhow::anyhow!(
                        "region `{region}` is not one of connector `{}`'s regions ({})",
                        connector.id,
                        h.regions.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?
            }
        };
        let token = match &spec.token {
            Some(t) => {
                let t = resolve_env(t, env).map_err(|e| anyhow::anyhow!("token: {e}"))?;
                if let Some(problem) = token_problem(&t) {
                    anyhow::bail!("token: {problem}");
                }
                Some(Secret::new(t))
            }
            None => None,
        };
        let configured_tz = match &spec.timezone {
            Some(tz) => Some(tz.parse::<Tz>().map_err(|_| {
                anyhow::anyhow!(
                    "timezone `{tz}` is not an IANA timezone name such as `Europe/Dublin`"
                )
            })?),
            None => None,
        };
        let r = spec.retry.clone().unwrap_or_default();
        let d = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts: r.max_attempts.unwrap_or(d.max_attempts).max(1),
            base_delay: r
                .base_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(d.base_delay),
            max_delay: r
                .max_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(d.max_delay),
            max_rate_limit_waits: r.max_rate_limit_waits.unwrap_or(d.max_rate_limit_waits),
        };
        #[allow(clippy::disallowed_methods)]
        let client = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(spec.timeout_secs.unwrap_or(30)))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Connection {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_version: spec
                .api_version
                .clone()
                .or_else(|| h.api_version.as_ref().map(|v| v.default.clone())),
            connector,
            token,
            configured_tz,
            discovered_tz: OnceCell::new(),
            retry,
            client,
            rate: Mutex::new(RateState::default()),
        })
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
        let mut out: Vec<(String, String)> = self
            .connector
            .header
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let (Some(spec), Some(v)) = (&self.connector.header.api_version, &self.api_version) {
            out.push((spec.header.clone(), v.clone()));
        }
        if self.token.is_some() {
            out.push(("Authorization".into(), "Bearer ***".into()));
        }
        out
    }

    /// The account's timezone: configured, else asked of the API once (per the connector's
    /// `timezone` section). `None` when unknown; day-granular triggers then widen by two days.
    pub async fn timezone(&self) -> Option<Tz> {
        if self.configured_tz.is_some() {
            return self.configured_tz;
        }
        let spec = self.connector.header.timezone.as_ref()?;
        *self
            .discovered_tz
            .get_or_init(|| async {
                let req = HttpRequest {
                    method: MethodSpec::Get,
                    path: spec.path.clone(),
                    query: vec![],
                    body: None,
                };
                match self.send(&req, &[]).await {
                    Ok(resp) => {
                        let name = lookup_str(&resp.body, &spec.field).and_then(Value::as_str);
                        match name.and_then(|n| n.parse::<Tz>().ok()) {
                            Some(tz) => Some(tz),
                            None => {
                                warn!(connection = %self.name, "The account's timezone could not be read; day-granular triggers will look two days back.");
                                None
                            }
                        }
                    }
                    Err(error) => {
                        warn!(connection = %self.name, %error, "Could not learn the account's timezone; day-granular triggers will look two days back.");
                        None
                    }
                }
            })
            .await
    }

    /// Sends a request, retrying retryable failures with backoff and waiting out rate limits.
    /// `rules` are checked before the connector's own error rules.
    pub async fn send(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRuleSpec],
    ) -> Result<Response, Failure> {
        self.send_with(req, rules, true).await
    }

    /// As [`Connection::send`]; with `retry: false` a retryable failure is returned at once
    /// (for scroll-style pagination, where the caller restarts from the first page instead).
    pub async fn send_with(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRuleSpec],
        retry: bool,
    ) -> Result<Response, Failure> {
        let raw = self.send_raw(req, rules, retry).await?;
        let body = if raw.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&raw.body).map_err(|_| Failure {
                class: FailureClass::Fatal,
                status: Some(raw.status),
                code: None,
                message: format!("the response is not JSON: {}", snippet(&raw.body)),
                help: None,
                request: req.describe(),
                attempts: raw.attempts,
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
        rules: &[ErrorRuleSpec],
        retry: bool,
    ) -> Result<RawResponse, Failure> {
        let mut attempts = 0u32;
        let mut rate_waits = 0u32;
        loop {
            self.throttle().await;
            attempts += 1;
            let mut failure = match self.send_once(req, rules).await {
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
            if retry
                && failure.class == FailureClass::Retryable
                && attempts < self.retry.max_attempts
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

    /// Waits when the last response said the window is used up.
    async fn throttle(&self) {
        let wait = {
            let st = self.rate.lock().await;
            match (st.remaining, st.reset_at) {
                (Some(0), Some(at)) if at > tokio::time::Instant::now() => Some(at),
                _ => None,
            }
        };
        if let Some(at) = wait {
            debug!(connection = %self.name, "Rate-limit window used up; waiting for it to refill.");
            tokio::time::sleep_until(at).await;
            let mut st = self.rate.lock().await;
            st.remaining = None;
        }
    }

    async fn send_once(
        &self,
        req: &HttpRequest,
        rules: &[ErrorRuleSpec],
    ) -> Result<RawResponse, (Failure, Option<Duration>)> {
        let fail = |class, status, code, message: String, help| Failure {
            class,
            status,
            code,
            message,
            help,
            request: req.describe(),
            attempts: 1,
        };
        let url = self
            .url(req)
            .map_err(|m| (fail(FailureClass::Fatal, None, None, m, None), None))?;
        let method = reqwest::Method::from_bytes(method_str(req.method).as_bytes())
            .expect("invariant: method names are valid");
        let mut rb = self.client.request(method, url);
        for (k, v) in &self.connector.header.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let (Some(spec), Some(v)) = (&self.connector.header.api_version, &self.api_version) {
            rb = rb.header(spec.header.as_str(), v.as_str());
        }
        if let Some(t) = &self.token {
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
                    "could not connect"
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
        let wait = self.note_rate_headers(resp.headers()).await;
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(_) => {
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
        };
        if (200..300).contains(&status) {
            return Ok(RawResponse {
                status,
                body: Vec::from(bytes),
                attempts: 1,
            });
        }
        let body: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            Some(Value::Null)
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let (code, message) = self.error_details(body.as_ref(), &bytes);
        let (class, help) = classify(status, code.as_deref(), &[rules, &self.connector.errors]);
        Err((fail(class, Some(status), code, message, help), wait))
    }

    /// Records rate-limit headers; returns how long to wait when the window is used up.
    async fn note_rate_headers(&self, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        let spec = self.connector.header.rate_limit.as_ref()?;
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
            let secs = (r - server_now).clamp(0, 60) as u64;
            // At least a second, plus jitter so several waiting clients do not stampede.
            Duration::from_secs(secs.max(1)) + Duration::from_millis(fastrand::u64(0..250))
        });
        let mut st = self.rate.lock().await;
        if let Some(rem) = remaining {
            st.remaining = Some(rem.max(0) as u64);
            st.reset_at = wait.map(|w| tokio::time::Instant::now() + w);
        }
        wait
    }

    fn error_details(&self, body: Option<&Value>, raw: &[u8]) -> (Option<String>, String) {
        if let (Some(body), Some(spec)) = (body, &self.connector.header.error_body) {
            let first = lookup_str(body, &spec.list).and_then(|l| match l {
                Value::Array(a) => a.first(),
                other => Some(other),
            });
            if let Some(first) = first {
                let code = lookup_str(first, &spec.code)
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let message = lookup_str(first, &spec.message)
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
            snippet(raw)
        };
        (None, msg)
    }
}

pub(crate) fn snippet(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Classifies a failed response: the first matching rule (action/trigger rules first, then the
/// connector's), else the built-in table. This is the only place statuses become classes.
pub fn classify(
    status: u16,
    code: Option<&str>,
    rule_sets: &[&[ErrorRuleSpec]],
) -> (FailureClass, Option<String>) {
    for rules in rule_sets {
        for r in rules.iter() {
            let code_ok = match (&r.code, code) {
                (None, _) => true,
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
            };
            if code_ok && r.status.contains(&status) {
                return (r.class, r.help.clone());
            }
        }
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

    fn rule(status: u16, code: Option<&str>, class: FailureClass) -> ErrorRuleSpec {
        ErrorRuleSpec {
            status: vec![status],
            code: code.map(str::to_string),
            class,
            help: None,
        }
    }

    #[test]
    fn classify_defaults() {
        use FailureClassSpec::*;
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
    fn env_substitution_names_missing_variable() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(resolve_env("a${env:A}b", &env).unwrap(), "axb");
        assert!(resolve_env("${env:B}", &env).unwrap_err().contains("`B`"));
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for n in 1..20 {
            let d = p.backoff(n);
            assert!(d <= Duration::from_millis(1000), "{d:?}");
        }
        assert!(p.backoff(1) >= Duration::from_millis(50));
        assert!(p.backoff(5) >= Duration::from_millis(500));
    }
}
