//! Serde shape of the runtime configuration file (`sluice.yaml`): named connections.
//!
//! Secrets are never written in this file; values of the form `${env:NAME}` are looked up in the
//! environment when the plan is built.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whole `sluice.yaml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sluice configuration (sluice.yaml)")]
pub struct ConfigSpec {
    /// Connection name → how to reach one account of a service.
    #[serde(default)]
    pub connections: IndexMap<String, ConnectionSpec>,
    /// How much run history is kept.
    #[serde(default)]
    pub history: Option<HistorySpec>,
}

/// How much run history is kept (`history:` in `sluice.yaml`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistorySpec {
    /// Runs older than this go (default `30d`).
    #[serde(default)]
    pub max_age: Option<String>,
    /// At most this many runs per recipe instance (default 2,000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_runs: Option<usize>,
    /// At most this many record rows per run (default 10,000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_records_per_run: Option<usize>,
    /// At most this many runs in all, shared evenly by the recipe instances with history
    /// (default 200,000; each still keeps at most `max_runs`).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_total_runs: Option<usize>,
}

/// One connection: which connector, which account, which credentials.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// Connector id (`intercom`).
    pub connector: String,
    /// Labels, for recipes that run for every connection with a label
    /// (`connections: {label: customer}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Region name from the connector's `regions` (default: the connector's `default_region`).
    #[serde(default)]
    pub region: Option<String>,
    /// Overrides the region's base URL (proxies, the simulator).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Overrides the connector's pinned API version.
    #[serde(default)]
    pub api_version: Option<String>,
    /// How the connection authenticates: `bearer` (the default: `token`) or `oauth2` (a
    /// token obtained with `sluice connect NAME`, stored encrypted in the state directory).
    #[serde(default)]
    pub auth: Option<ConnectionAuth>,
    /// Access token, normally `${env:NAME}` (with `auth: bearer`).
    #[serde(default)]
    pub token: Option<String>,
    /// The OAuth2 app's client id, normally `${env:NAME}` (with `auth: oauth2`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The OAuth2 app's client secret, `${env:NAME}` (with `auth: oauth2`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The account's IANA timezone; looked up through the API when absent and needed.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Per-request timeout in seconds (default 30).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Retry policy for transient failures.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Largest response body accepted, in MiB (default: the connector's `max_response_mb`).
    #[serde(default)]
    pub max_response_mb: Option<u64>,
    /// How far the server's clock (its `Date` header) may be from ours before sluice stops
    /// trusting it and uses its own, as a duration (`30s`, `10m`, `2h`, `1d`; default `1d`).
    #[serde(default)]
    pub max_clock_skew: Option<String>,
    /// Share of the workspace's rate budget sluice may use, leaving the rest to the
    /// workspace's other apps (default 1.0; e.g. 0.7 leaves 30 %).
    #[serde(default)]
    pub rate_share: Option<f64>,
    /// At most this many records' chains in flight on this connection, across all recipes
    /// (default: no cap beyond each recipe's `concurrency`).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// How a connection authenticates (`auth:` in `sluice.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionAuth {
    /// A static access token from `token`.
    Bearer,
    /// The OAuth2 authorization-code flow (`sluice connect`); the token is stored encrypted.
    Oauth2,
}

/// Retry policy knobs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts for a retryable failure, the first included (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First backoff delay in milliseconds (default 500); doubles each attempt, with full jitter.
    #[serde(default)]
    pub base_delay_ms: Option<u64>,
    /// Longest backoff delay in milliseconds (default 30000).
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
    /// Waits for a rate-limit reset before giving up (default 10).
    #[serde(default)]
    pub max_rate_limit_waits: Option<u32>,
}
