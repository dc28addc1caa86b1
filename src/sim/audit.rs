//! The request audit log.
//!
//! Owns the record of every Intercom-facing request the simulator answered (never `/_sim`
//! control calls). Entries keep what tests need to assert on: method, path, query, parsed body,
//! status and which headers were sent. The bearer token itself is never stored; only whether it
//! was missing, valid or invalid.

use serde::{Deserialize, Serialize};

/// What the simulator saw in the `Authorization` header. The token itself is never kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSeen {
    /// No `Authorization` header (or not a `Bearer` one).
    Missing,
    /// A bearer token that the simulator accepts.
    Valid,
    /// A bearer token that the simulator rejects.
    Invalid,
}

/// One answered (or dropped) request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Monotonic sequence number, starting at 1.
    pub seq: u64,
    /// Simulator clock when the request was answered.
    pub at: i64,
    /// HTTP method, upper case.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Raw query string, when present.
    pub query: Option<String>,
    /// Request body: parsed JSON, or a JSON string holding the raw text when it did not parse.
    pub body: Option<serde_json::Value>,
    /// Response status; 0 when the connection was dropped without a response.
    pub status: u16,
    /// What the `Authorization` header contained.
    pub auth: AuthSeen,
    /// The `Intercom-Version` header, when sent.
    pub intercom_version: Option<String>,
    /// The `Accept` header, when sent.
    pub accept: Option<String>,
}
