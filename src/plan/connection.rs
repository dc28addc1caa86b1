//! Connection plans: the connections of `sluice.yaml` checked against the connectors and
//! compiled (region → base URL, `${env:…}` resolved, timezone parsed, retry policy, limits).
//!
//! Owns every check of a connection: unknown connector, unknown region, a base URL that is not
//! http(s), a missing environment variable, a token that cannot be sent in a header or is
//! written in the file, a timezone that is not IANA, limits out of range. Every problem is a
//! located diagnostic; none stops the others. The runtime opens an `http::Connection` from a
//! [`ConnectionPlan`] and never sees the spec.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;

use super::Connector;
use crate::diag::{Diagnostic, LocationIndex};
use crate::secret::Secret;
use crate::spec::{ConfigSpec, ConnectionAuth, ConnectionSpec};

/// Default limit on a response body, in MiB.
pub const DEFAULT_MAX_RESPONSE_MB: u64 = 64;
/// Default share of a workspace's rate budget sluice uses (the rest is left to other apps).
pub const DEFAULT_RATE_SHARE: f64 = 1.0;

/// How far the server's clock may be from ours before it is not trusted (`max_clock_skew`): a
/// day. Real servers are seconds off; one a day or more off is broken, and trusting it would
/// put a first cursor in the far future (nothing ever fires) or the far past (a backfill).
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: i64 = 86_400;

/// Where a connection sits in the [`super::Plan`]: recipes and steps hold this handle, not a
/// name looked up at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) usize);

impl ConnId {
    /// A handle for checks that never run anything (`validate`): a connection with problems
    /// of its own is reported in `sluice.yaml`, and the recipes naming it are still checked.
    pub const CHECK_ONLY: ConnId = ConnId(usize::MAX);

    /// The index into the plan's (and the runtime's) connections.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Retry knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// A compiled connection.
#[derive(Debug)]
pub struct ConnectionPlan {
    /// Its handle.
    pub id: ConnId,
    /// Its name in `sluice.yaml` (or its connection file's stem).
    pub name: String,
    /// Its labels (recipes may run for every connection with a label).
    pub labels: Vec<String>,
    /// The connector it speaks.
    pub connector: Arc<Connector>,
    /// Base URL, without a trailing `/`.
    pub base_url: String,
    /// The region: configured, else the connector's default (also with a `base_url`).
    pub region: String,
    /// The credential (never printed).
    pub token: Option<Secret>,
    /// The API version header's value, if the connector pins one.
    pub api_version: Option<String>,
    /// The account's timezone, when configured (else asked of the API when needed).
    pub timezone: Option<Tz>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Largest response body accepted, in bytes.
    pub max_body: usize,
    /// How far (seconds, either way) the server's clock may be from ours and still be used.
    pub max_clock_skew: i64,
    /// Share of the workspace's rate budget sluice may use (0 < share ≤ 1).
    pub rate_share: f64,
    /// At most this many chains in flight on this connection, across recipes.
    pub concurrency: Option<usize>,
    /// With `auth: oauth2`: the grant's URLs and client (the token is in the credential
    /// store, not in the plan).
    pub oauth: Option<Arc<OAuthPlan>>,
}

/// An OAuth2 connection's grant: where to authorize and exchange, and the app's client.
#[derive(Debug)]
pub struct OAuthPlan {
    /// Browser URL where the user grants access (the connection's region; on the
    /// connection's `base_url` when it sets one).
    pub authorize_url: String,
    /// URL where a code (or a refresh token) is exchanged for a token.
    pub token_url: String,
    /// Scopes to ask for.
    pub scopes: Vec<String>,
    /// Whether to use PKCE.
    pub pkce: bool,
    /// The client id, or the `${env:…}` text that is not set.
    pub client_id: Result<String, String>,
    /// The client secret, or the `${env:…}` text that is not set.
    pub client_secret: Result<Secret, String>,
}

/// `url` with its scheme, host and port replaced by `base`'s (its path, query and fragment
/// kept): a connection pointed at a proxy or the simulator authorizes there too.
fn rebase(url: &str, base: &str) -> Option<String> {
    let mut u = reqwest::Url::parse(url).ok()?;
    let b = reqwest::Url::parse(base).ok()?;
    u.set_scheme(b.scheme()).ok()?;
    u.set_host(b.host_str()).ok()?;
    u.set_port(b.port()).ok()?;
    // A base URL with a path prefix (a proxy) keeps it in front of the grant's path.
    let prefix = b.path().trim_end_matches('/');
    if !prefix.is_empty() {
        let path = format!("{prefix}{}", u.path());
        u.set_path(&path);
    }
    Some(u.to_string())
}

/// How `${env:…}` references that are not set are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// An error: the connection is about to be used.
    Required,
    /// A warning, the value left empty (`validate`, dry runs: nothing is sent).
    Optional,
}

/// What [`build_connections`] made of `sluice.yaml`.
#[derive(Debug, Default)]
pub struct BuiltConnections {
    /// The connections that compiled.
    pub plans: Vec<ConnectionPlan>,
    /// Problems with the file (errors and warnings), located.
    pub problems: Vec<Diagnostic>,
    /// Connections left out, with the first reason (a problem of the file, or an environment
    /// variable that is not set): an error for whatever uses them, not for the others.
    pub unavailable: Vec<(String, Diagnostic)>,
    /// With [`Secrets::Optional`]: environment variables that are not set (left empty).
    pub unset: Vec<Diagnostic>,
}

/// One connection to build: its name, its spec and where it is written.
#[derive(Debug, Clone)]
pub struct ConnSource {
    /// Its name: the key in `sluice.yaml`, or the connection file's stem.
    pub name: String,
    /// What the file says.
    pub spec: ConnectionSpec,
    /// The file it is written in.
    pub file: PathBuf,
    /// Positions in that file.
    pub index: Arc<LocationIndex>,
    /// Its field path in the file: `connections.<name>` in `sluice.yaml`, empty in a
    /// connection file.
    pub at: String,
}

/// The connections of `sluice.yaml` and of a connections directory, gathered by name.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Connections to build, `sluice.yaml`'s first, then the files' in name order.
    pub sources: Vec<ConnSource>,
    /// Connections that cannot be built at all (a file that does not parse, a name defined
    /// twice), with the first reason.
    pub broken: Vec<(String, Diagnostic)>,
    /// Every problem of the connection files, located (errors and warnings).
    pub problems: Vec<Diagnostic>,
}

/// Gathers the connections of `sluice.yaml` (`config`) and of the connection files (each
/// one connection named by its file stem). A name defined twice is an error, and neither
/// definition is used: running recipes against the wrong workspace would be worse than not
/// running them.
pub fn gather(
    config: Option<(&Path, &ConfigSpec, Arc<LocationIndex>)>,
    files: &[(PathBuf, String)],
) -> Gathered {
    let mut g = Gathered::default();
    if let Some((file, config, index)) = config {
        for (name, spec) in &config.connections {
            g.sources.push(ConnSource {
                name: name.clone(),
                spec: spec.clone(),
                file: file.to_path_buf(),
                index: index.clone(),
                at: format!("connections.{name}"),
            });
        }
    }
    for (file, text) in files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let (parsed, problems) = crate::spec::parse_connection_file(file, text);
        let first_error = problems.iter().find(|d| d.is_error()).cloned();
        g.problems.extend(problems);
        let twice = g
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.file.as_path()))
            .chain(g.broken.iter().map(|(n, d)| (n.as_str(), d.file.as_path())))
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f.to_path_buf());
        if let Some(other) = twice {
            let d = Diagnostic::error(
                file,
                format!(
                    "connection `{name}` is also defined in `{}`",
                    other.display()
                ),
            )
            .help("give each connection one definition; neither is used until then");
            g.problems.push(d.clone());
            g.sources.retain(|s| s.name != name);
            g.broken.push((name, d));
            continue;
        }
        match (parsed, first_error) {
            (Some((spec, index)), None) => g.sources.push(ConnSource {
                name,
                spec,
                file: file.clone(),
                index: Arc::new(index),
                at: String::new(),
            }),
            (_, Some(d)) => g.broken.push((name, d)),
            (None, None) => {}
        }
    }
    g
}

/// Builds every connection of `config`. Connections with problems are left out, and each
/// problem is a diagnostic located in `file` (warnings for things worth fixing that do not
/// stop the connection from working).
pub fn build_connections(
    file: &Path,
    config: &ConfigSpec,
    index: &LocationIndex,
    connectors: &[Arc<Connector>],
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> BuiltConnections {
    let g = gather(Some((file, config, Arc::new(index.clone()))), &[]);
    build_connection_list(&g.sources, connectors, env, secrets)
}

/// Builds connections from wherever they are written ([`gather`]). Connections with
/// problems are left out, and each problem is a diagnostic located in its file (warnings for
/// things worth fixing that do not stop the connection from working).
pub fn build_connection_list(
    sources: &[ConnSource],
    connectors: &[Arc<Connector>],
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> BuiltConnections {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let mut unavailable: Vec<(String, Diagnostic)> = Vec::new();
    let mut unset: Vec<Diagnostic> = Vec::new();
    for src in sources {
        let (name, spec, file, index) = (&src.name, &src.spec, src.file.as_path(), &*src.index);
        let at = |field: &str| match (src.at.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => src.at.clone(),
            (false, false) => format!("{}.{field}", src.at),
        };
        let before = diags.iter().filter(|d: &&Diagnostic| d.is_error()).count();
        let Some(connector) = connectors.iter().find(|c| c.id == spec.connector) else {
            let known: Vec<&str> = connectors.iter().map(|c| c.id.as_str()).collect();
            let d = Diagnostic::error(
                file,
                format!(
                    "connection `{name}` names connector `{}`, which is not loaded",
                    spec.connector
                ),
            )
            .at(index, &at("connector"))
            .help(
                crate::spec::did_you_mean(&spec.connector, known.iter().copied()).map_or_else(
                    || format!("known connectors: {}", known.join(", ")),
                    |s| format!("did you mean `{s}`?"),
                ),
            );
            unavailable.push((name.clone(), d.clone()));
            diags.push(d);
            continue;
        };
        let h = &connector.api;
        let mut missing: Option<Diagnostic> = None;
        let mut resolve = |field: &str, v: &str, diags: &mut Vec<Diagnostic>| -> Option<String> {
            match resolve_env(v, env) {
                Ok(s) => Some(s),
                Err(EnvError::Missing(var)) => {
                    let d = Diagnostic::error(
                        file,
                        format!(
                            "connection `{name}`: `{field}`: environment variable `{var}` is not set"
                        ),
                    )
                    .at(index, &at(field))
                    .help(format!("export {var}=… before running sluice"));
                    match secrets {
                        Secrets::Required => {
                            missing.get_or_insert(d);
                            None
                        }
                        Secrets::Optional => {
                            unset.push(d);
                            Some(String::new())
                        }
                    }
                }
                Err(EnvError::Syntax(m)) => {
                    diags.push(
                        Diagnostic::error(file, format!("connection `{name}`: `{field}`: {m}"))
                            .at(index, &at(field))
                            .help("write `${env:NAME}`"),
                    );
                    None
                }
            }
        };
        let base_url = match &spec.base_url {
            Some(raw_url) => resolve("base_url", raw_url, &mut diags).and_then(|u| {
                let ok = reqwest::Url::parse(&u)
                    .ok()
                    .filter(|p| matches!(p.scheme(), "http" | "https") && p.has_host());
                if ok.is_none() {
                    diags.push(
                        Diagnostic::error(
                            file,
                            // The file's text, not the resolved value: an environment
                            // variable may hold a secret.
                            format!(
                                "connection `{name}`: `base_url` `{raw_url}` is not an http(s) URL"
                            ),
                        )
                        .at(index, &at("base_url"))
                        .help("write the full URL, e.g. `https://api.intercom.io`"),
                    );
                }
                ok.map(|_| u)
            }),
            None => {
                let region = spec.region.as_deref().unwrap_or(&h.default_region);
                let found = h
                    .regions
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(region))
                    .map(|(_, v)| v.clone());
                if found.is_none() {
                    let mut e = Diagnostic::error(
                        file,
                        format!(
                            "connection `{name}`: region `{region}` is not one of connector `{}`'s regions",
                            connector.id
                        ),
                    )
                    .at(index, &at("region"));
                    e.help = Some(format!(
                        "use one of: {}",
                        h.regions.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    diags.push(e);
                }
                found
            }
        };
        let token = match &spec.token {
            Some(raw) => {
                if !raw.contains("${env:") {
                    diags.push(
                        Diagnostic::error(
                            file,
                            format!("connection `{name}` has its token written in the file"),
                        )
                        .at(index, &at("token"))
                        .warning()
                        .help("use `${env:NAME}` so the token is not in a file (e.g. `token: ${env:INTERCOM_TOKEN}`)"),
                    );
                }
                match resolve("token", raw, &mut diags) {
                    Some(t) => match crate::http::token_problem(&t) {
                        Some(problem) => {
                            diags.push(
                                Diagnostic::error(
                                    file,
                                    format!("connection `{name}`: token: {problem}"),
                                )
                                .at(index, &at("token")),
                            );
                            None
                        }
                        None => Some(Secret::new(t)),
                    },
                    None => None,
                }
            }
            None => None,
        };
        let oauth = match spec.auth.unwrap_or(ConnectionAuth::Bearer) {
            ConnectionAuth::Bearer => {
                for (field, v) in [
                    ("client_id", &spec.client_id),
                    ("client_secret", &spec.client_secret),
                ] {
                    if v.is_some() {
                        diags.push(
                            Diagnostic::error(
                                file,
                                format!("connection `{name}`: `{field}` is only used with `auth: oauth2`"),
                            )
                            .at(index, &at(field))
                            .warning()
                            .help("add `auth: oauth2`, or remove the field"),
                        );
                    }
                }
                None
            }
            ConnectionAuth::Oauth2 => {
                oauth_plan(name, spec, connector, file, index, env, &mut diags)
            }
        };
        let timezone = spec
            .timezone
            .as_ref()
            .and_then(|tz| match tz.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    diags.push(
                        Diagnostic::error(
                            file,
                            format!(
                                "connection `{name}`: timezone `{tz}` is not an IANA timezone name"
                            ),
                        )
                        .at(index, &at("timezone"))
                        .help("e.g. `Europe/Dublin` or `America/New_York`"),
                    );
                    None
                }
            });
        let timeout_secs = spec.timeout_secs.unwrap_or(30);
        if !(1..=600).contains(&timeout_secs) {
            diags.push(
                Diagnostic::error(
                    file,
                    format!(
                        "connection `{name}`: `timeout_secs` {timeout_secs} is outside 1 to 600"
                    ),
                )
                .at(index, &at("timeout_secs")),
            );
        }
        let r = spec.retry.clone().unwrap_or_default();
        let d = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
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
        if !(1..=100).contains(&retry.max_attempts) {
            diags.push(
                Diagnostic::error(
                    file,
                    format!(
                        "connection `{name}`: `retry.max_attempts` {} is outside 1 to 100",
                        retry.max_attempts
                    ),
                )
                .at(index, &at("retry.max_attempts")),
            );
        }
        if retry.base_delay > retry.max_delay || retry.max_delay > Duration::from_secs(3600) {
            diags.push(
                Diagnostic::error(
                    file,
                    format!("connection `{name}`: retry delays must satisfy base_delay_ms ≤ max_delay_ms ≤ 3600000"),
                )
                .at(index, &at("retry")),
            );
        }
        let max_response_mb = spec
            .max_response_mb
            .or(h.max_response_mb)
            .unwrap_or(DEFAULT_MAX_RESPONSE_MB);
        if !(1..=4096).contains(&max_response_mb) {
            diags.push(
                Diagnostic::error(
                    file,
                    format!(
                        "connection `{name}`: `max_response_mb` {max_response_mb} is outside 1 to 4096"
                    ),
                )
                .at(index, &at("max_response_mb")),
            );
        }
        let max_clock_skew = match spec.max_clock_skew.as_deref().map(super::parse_duration) {
            None => DEFAULT_MAX_CLOCK_SKEW_SECS,
            Some(Ok(secs)) => secs,
            Some(Err(m)) => {
                diags.push(
                    Diagnostic::error(file, format!("connection `{name}`: `max_clock_skew`: {m}"))
                        .at(index, &at("max_clock_skew")),
                );
                DEFAULT_MAX_CLOCK_SKEW_SECS
            }
        };
        let rate_share = spec.rate_share.unwrap_or(DEFAULT_RATE_SHARE);
        if !(rate_share > 0.0 && rate_share <= 1.0) {
            diags.push(
                Diagnostic::error(
                    file,
                    format!("connection `{name}`: `rate_share` {rate_share} is outside (0, 1]"),
                )
                .at(index, &at("rate_share"))
                .help("the share of the workspace's rate budget sluice may use, e.g. `0.7` leaves 30 % to other apps"),
            );
        }
        if spec.concurrency == Some(0) {
            diags.push(
                Diagnostic::error(
                    file,
                    format!("connection `{name}`: `concurrency` must be at least 1"),
                )
                .at(index, &at("concurrency")),
            );
        }
        let after = diags.iter().filter(|d| d.is_error()).count();
        if after > before {
            // The first problem says why the connection cannot be used.
            if let Some(d) = diags.iter().filter(|d| d.is_error()).nth(before) {
                unavailable.push((name.clone(), d.clone()));
            }
            continue;
        }
        if let Some(d) = missing {
            unavailable.push((name.clone(), d));
            continue;
        }
        let Some(base_url) = base_url else { continue };
        out.push(ConnectionPlan {
            id: ConnId(out.len()),
            name: name.clone(),
            labels: spec.labels.clone(),
            connector: connector.clone(),
            base_url: base_url.trim_end_matches('/').to_string(),
            region: spec
                .region
                .clone()
                .unwrap_or_else(|| h.default_region.clone()),
            token,
            api_version: spec
                .api_version
                .clone()
                .or_else(|| h.api_version.as_ref().map(|(_, default)| default.clone())),
            timezone,
            timeout: Duration::from_secs(timeout_secs),
            retry,
            max_body: usize::try_from(max_response_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            max_clock_skew,
            rate_share,
            concurrency: spec.concurrency,
            oauth,
        });
    }
    BuiltConnections {
        plans: out,
        problems: diags,
        unavailable,
        unset,
    }
}

/// The grant of an `auth: oauth2` connection; `None` (with an error) when it cannot be had.
/// The client id and secret may be unset here: a stored token that does not expire needs
/// neither, and `sluice connect` (or a refresh) names the variable when it does.
fn oauth_plan(
    name: &str,
    spec: &ConnectionSpec,
    connector: &Connector,
    file: &Path,
    index: &LocationIndex,
    env: &dyn Fn(&str) -> Option<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<OAuthPlan>> {
    let at = |field: &str| format!("connections.{name}.{field}");
    let Some(grant) = &connector.api.oauth2 else {
        diags.push(
            Diagnostic::error(
                file,
                format!(
                    "connection `{name}` has `auth: oauth2`, but connector `{}` offers no OAuth2 grant",
                    connector.id
                ),
            )
            .at(index, &at("auth"))
            .help("use `auth: bearer` with a `token`"),
        );
        return None;
    };
    if spec.token.is_some() {
        diags.push(
            Diagnostic::error(
                file,
                format!("connection `{name}` has `auth: oauth2` and a `token`"),
            )
            .at(index, &at("token"))
            .help(format!(
                "remove `token`: `sluice connect {name}` obtains and stores the token"
            )),
        );
        return None;
    }
    let mut client = |field: &str, v: &Option<String>| -> Option<Result<String, String>> {
        let Some(raw) = v else {
            diags.push(
                Diagnostic::error(
                    file,
                    format!("connection `{name}` has `auth: oauth2` but no `{field}`"),
                )
                .at(index, &at("auth"))
                .help(format!("add `{field}: ${{env:NAME}}`")),
            );
            return None;
        };
        if field == "client_secret" && !raw.contains("${env:") {
            diags.push(
                Diagnostic::error(
                    file,
                    format!("connection `{name}` has its client secret written in the file"),
                )
                .at(index, &at(field))
                .warning()
                .help("use `${env:NAME}` so the secret is not in a file"),
            );
        }
        match resolve_env(raw, env) {
            Ok(v) => Some(Ok(v)),
            Err(EnvError::Missing(var)) => Some(Err(var)),
            Err(EnvError::Syntax(m)) => {
                diags.push(
                    Diagnostic::error(file, format!("connection `{name}`: `{field}`: {m}"))
                        .at(index, &at(field)),
                );
                None
            }
        }
    };
    let client_id = client("client_id", &spec.client_id);
    let client_secret = client("client_secret", &spec.client_secret);
    let (client_id, client_secret) = (client_id?, client_secret?);
    let region = spec
        .region
        .as_deref()
        .unwrap_or(&connector.api.default_region);
    let (authorize, token) = grant
        .regions
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(region))
        .map_or(&grant.urls, |(_, v)| v);
    let (authorize_url, token_url) = match &spec.base_url {
        // Checked with the base URL itself; an `${env:…}` there is resolved the same way.
        Some(base) => {
            let base = resolve_env(base, env).ok()?;
            (rebase(authorize, &base)?, rebase(token, &base)?)
        }
        None => (authorize.clone(), token.clone()),
    };
    Some(Arc::new(OAuthPlan {
        authorize_url,
        token_url,
        scopes: grant.scopes.clone(),
        pkce: grant.pkce,
        client_id,
        client_secret: client_secret.map(Secret::new),
    }))
}

/// Why `${env:…}` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// The variable is not set.
    Missing(String),
    /// `${env:` without `}`.
    Syntax(String),
}

/// Replaces `${env:NAME}` with the variable's value.
pub fn resolve_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${env:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let end = after
            .find('}')
            .ok_or_else(|| EnvError::Syntax("`${env:` without a closing `}`".to_string()))?;
        let name = &after[..end];
        let v = env(name).ok_or_else(|| EnvError::Missing(name.to_string()))?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_substitution_names_missing_variable() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(resolve_env("a${env:A}b", &env).unwrap(), "axb");
        assert_eq!(
            resolve_env("${env:B}", &env),
            Err(EnvError::Missing("B".into()))
        );
        assert!(matches!(
            resolve_env("${env:B", &env),
            Err(EnvError::Syntax(_))
        ));
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for n in 1..20 {
            assert!(p.backoff(n) <= Duration::from_millis(1000));
        }
        assert!(p.backoff(1) >= Duration::from_millis(50));
        assert!(p.backoff(5) >= Duration::from_millis(500));
    }
}
