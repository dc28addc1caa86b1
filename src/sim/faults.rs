//! Fault injection.
//!
//! Owns the description of injected failures (latency, random 5xx/429, dropped connections and
//! deterministic `fail_next` rules) and the decision, per request, of which fault applies. It does
//! not build responses; `routes` turns a [`FaultAction`] into one.

use serde::{Deserialize, Serialize};

/// Faults to inject into Intercom-facing requests (never into `/_sim`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Extra latency added before every request is answered, in milliseconds.
    pub latency_ms: u64,
    /// Probability (0..=1) of answering with a random 5xx (500/502/503/504) with code
    /// `server_error`.
    pub error_rate: f64,
    /// Probability (0..=1) of answering with a 429 `rate_limit_exceeded`.
    pub rate_limit_rate: f64,
    /// Probability (0..=1) of closing the connection without any response.
    pub drop_rate: f64,
    /// Deterministic failures, consumed in order of the list.
    pub fail_next: Vec<FailRule>,
}

/// A deterministic failure for the next `count` requests matching `path_prefix` (and `method`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailRule {
    /// Matches requests whose path starts with this prefix.
    pub path_prefix: String,
    /// Matches only this HTTP method (case-insensitive) when set.
    #[serde(default)]
    pub method: Option<String>,
    /// Status to answer with; 0 drops the connection without a response.
    pub status: u16,
    /// `errors[0].code` of the body; defaults from the status.
    #[serde(default)]
    pub code: Option<String>,
    /// `errors[0].message` of the body; defaults from the status.
    #[serde(default)]
    pub message: Option<String>,
    /// How many matching requests fail; defaults to 1.
    #[serde(default = "one")]
    pub count: u32,
    /// Matching requests let through before the rule starts failing them (e.g. to fail a
    /// scroll's second page rather than its first).
    #[serde(default)]
    pub skip: u32,
    /// Carry the request out first, then answer with the failure (or drop the connection): the
    /// write happened, but the client cannot know it.
    #[serde(default)]
    pub after_write: bool,
}

fn one() -> u32 {
    1
}

impl FailRule {
    /// Fails the next request to `path_prefix` (with `method`, or any) with `status`, once,
    /// before it is carried out; the other fields change with struct update syntax.
    pub fn once(method: Option<&str>, path_prefix: impl Into<String>, status: u16) -> FailRule {
        FailRule {
            path_prefix: path_prefix.into(),
            method: method.map(str::to_string),
            status,
            code: None,
            message: None,
            count: 1,
            skip: 0,
            after_write: false,
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FaultAction {
    /// Answer with this status and error.
    Fail {
        status: u16,
        code: String,
        message: String,
    },
    /// Close the connection without answering.
    Drop,
}

/// A fault and when it strikes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    /// What to answer.
    pub action: FaultAction,
    /// Whether the request is carried out first.
    pub after_write: bool,
}

/// The default error code for an injected status.
pub(crate) fn default_code(status: u16) -> &'static str {
    match status {
        429 => "rate_limit_exceeded",
        500 => "server_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "request_timeout",
        401 => "unauthorized",
        403 => "api_plan_restricted",
        404 => "not_found",
        409 => "conflict",
        _ => "server_error",
    }
}

/// The default error message for an injected status.
pub(crate) fn default_message(status: u16) -> &'static str {
    match status {
        429 => "Exceeded rate limit",
        500 => "Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Request Timeout",
        401 => "Access Token Invalid",
        403 => "Active subscription needed.",
        404 => "Resource Not Found",
        _ => "Injected failure",
    }
}

impl Faults {
    /// Picks the fault for a request, consuming a matching `fail_next` rule first.
    pub(crate) fn decide(
        &mut self,
        method: &str,
        path: &str,
        rng: &mut fastrand::Rng,
        limit: u32,
    ) -> Option<Decision> {
        let before = |action| {
            Some(Decision {
                action,
                after_write: false,
            })
        };
        if let Some(pos) = self.fail_next.iter().position(|r| {
            path.starts_with(&r.path_prefix)
                && r.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        }) {
            let rule = &mut self.fail_next[pos];
            if rule.skip > 0 {
                rule.skip -= 1;
                return None;
            }
            let after_write = rule.after_write;
            let action = if rule.status == 0 {
                FaultAction::Drop
            } else {
                FaultAction::Fail {
                    status: rule.status,
                    code: rule
                        .code
                        .clone()
                        .unwrap_or_else(|| default_code(rule.status).to_string()),
                    message: rule.message.clone().unwrap_or_else(|| {
                        if rule.status == 429 {
                            format!("Exceeded rate limit of {limit} in 10_seconds")
                        } else {
                            default_message(rule.status).to_string()
                        }
                    }),
                }
            };
            rule.count = rule.count.saturating_sub(1);
            if rule.count == 0 {
                self.fail_next.remove(pos);
            }
            return Some(Decision {
                action,
                after_write,
            });
        }
        if self.drop_rate > 0.0 && rng.f64() < self.drop_rate {
            return before(FaultAction::Drop);
        }
        if self.error_rate > 0.0 && rng.f64() < self.error_rate {
            let status = [500u16, 502, 503, 504][rng.usize(0..4)];
            return before(FaultAction::Fail {
                status,
                code: "server_error".to_string(),
                message: default_message(status).to_string(),
            });
        }
        if self.rate_limit_rate > 0.0 && rng.f64() < self.rate_limit_rate {
            return before(FaultAction::Fail {
                status: 429,
                code: "rate_limit_exceeded".to_string(),
                message: format!("Exceeded rate limit of {limit} in 10_seconds"),
            });
        }
        None
    }
}
