//! Failure: the one type for "this did not succeed", from a request to a dead letter.
//!
//! Owns the failure classes' names and the two questions the runtime asks of any failure:
//! its class, and whether a request may have been carried out although it failed
//! ([`Failure::outcome_unknown`]). Classification of HTTP answers lives in `http::classify`.

use crate::spec::FailureClassSpec;

/// The class of a failure; the runtime branches on this, never on status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Transient: retry with backoff.
    Retryable,
    /// Wait for the rate-limit window to refill, then retry.
    RateLimited,
    /// Credentials are missing, wrong or revoked: a person must act.
    Auth,
    /// Permanent: retrying cannot help.
    Fatal,
    /// The object already exists (e.g. duplicate email).
    Conflict,
}

impl From<FailureClassSpec> for FailureClass {
    fn from(s: FailureClassSpec) -> FailureClass {
        match s {
            FailureClassSpec::Retryable => FailureClass::Retryable,
            FailureClassSpec::RateLimited => FailureClass::RateLimited,
            FailureClassSpec::Auth => FailureClass::Auth,
            FailureClassSpec::Fatal => FailureClass::Fatal,
            FailureClassSpec::Conflict => FailureClass::Conflict,
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureClass::Retryable => "retryable",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Auth => "auth",
            FailureClass::Fatal => "fatal",
            FailureClass::Conflict => "conflict",
        })
    }
}

/// Counts per [`FailureClass`] (step failures in a cycle's report, by class).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ByClass {
    /// Transient failures.
    pub retryable: u64,
    /// Rate-limited.
    pub rate_limited: u64,
    /// Credentials.
    pub auth: u64,
    /// Permanent.
    pub fatal: u64,
    /// Conflicts (the object exists).
    pub conflict: u64,
}

impl ByClass {
    /// Counts one failure of `class`.
    pub fn bump(&mut self, class: FailureClass) {
        *self.slot(class) += 1;
    }

    fn slot(&mut self, class: FailureClass) -> &mut u64 {
        match class {
            FailureClass::Retryable => &mut self.retryable,
            FailureClass::RateLimited => &mut self.rate_limited,
            FailureClass::Auth => &mut self.auth,
            FailureClass::Fatal => &mut self.fatal,
            FailureClass::Conflict => &mut self.conflict,
        }
    }

    /// Adds another count.
    pub fn add(&mut self, o: &ByClass) {
        self.retryable += o.retryable;
        self.rate_limited += o.rate_limited;
        self.auth += o.auth;
        self.fatal += o.fatal;
        self.conflict += o.conflict;
    }

    /// `(class, count)` for every class, in a fixed order.
    pub fn iter(&self) -> [(FailureClass, u64); 5] {
        [
            (FailureClass::Retryable, self.retryable),
            (FailureClass::RateLimited, self.rate_limited),
            (FailureClass::Auth, self.auth),
            (FailureClass::Fatal, self.fatal),
            (FailureClass::Conflict, self.conflict),
        ]
    }
}

/// Why something did not succeed, classified: the one failure type from the HTTP layer to the
/// dead letter. Carries no secrets (server text is scrubbed before it gets here).
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
    /// `METHOD /path` of the request (no host, no query string); empty when nothing was sent
    /// (bad input, a template that could not be rendered).
    pub request: String,
    /// How many times it was sent.
    pub attempts: u32,
    /// The recipe step it happened in, when it happened in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        if self.request.is_empty() {
            if self.code.as_deref() == Some(INVALID_INPUT) {
                return write!(f, "invalid input: {}", self.message);
            }
            return write!(f, "{}", self.message);
        }
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

/// The message of a transport failure before anything was sent.
pub(crate) const COULD_NOT_CONNECT: &str = "could not connect";

/// The code of a failure after which a request that is not safe to repeat may or may not
/// have been carried out: it is not sent again without a person.
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// The code of a failure found before anything was sent: the inputs are wrong.
pub const INVALID_INPUT: &str = "invalid_input";

impl Failure {
    /// Inputs that cannot be sent (unknown, missing, wrong type, a template that failed): a
    /// `fatal` failure before anything was sent.
    pub fn input(message: impl Into<String>) -> Failure {
        Failure {
            class: FailureClass::Fatal,
            status: None,
            code: Some(INVALID_INPUT.into()),
            message: message.into(),
            help: None,
            request: String::new(),
            attempts: 0,
            step: None,
        }
    }

    /// The same failure, said to have happened in `step`.
    pub fn in_step(mut self, step: &str) -> Failure {
        self.step = Some(step.to_string());
        self
    }

    /// Whether nothing was sent because the inputs were wrong.
    pub fn is_input(&self) -> bool {
        self.code.as_deref() == Some(INVALID_INPUT) && self.request.is_empty()
    }

    /// Whether the request may have been carried out although no success came back: a
    /// retryable failure other than a refused connection or a 429 (which the server answers
    /// before doing anything). Repeating such a request could do its work twice.
    pub fn outcome_unknown(&self) -> bool {
        self.class == FailureClass::Retryable
            && match self.status {
                Some(s) => s != 429,
                None => self.message != COULD_NOT_CONNECT,
            }
    }
}
