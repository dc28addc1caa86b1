//! # sluice
//!
//! A self-hosted polling automation runtime: connectors are YAML data describing an API's
//! triggers and actions; recipes bind a trigger to a chain of actions.
//!
//! # Layout
//!
//! * `cli`       — argument parsing and commands; the only module that prints.
//! * `diag`      — `Diagnostic` (file:line:col, message, help) and YAML position lookup.
//! * `spec`      — serde shapes of connector, recipe and `sluice.yaml` files (data only).
//! * `plan`      — specs → compiled, validated `Connector` / `Trigger` / `Action` / `Recipe`.
//! * `template`  — the Handlebars registry, compiled templates and template trees.
//! * `http`      — a `Connection`: auth, headers, retries, rate limits, failure classes.
//! * `trigger`   — polling one trigger: paging, server filter widening, local cursor filter.
//! * `record`    — a polled record as unparsed JSON text plus its id, cursor and key fields.
//! * `action`    — checking inputs, choosing variants, rendering and executing requests.
//! * `engine`    — one cycle of a recipe: poll, dedupe, run chains, journal, commit.
//! * `dryrun`    — `sluice test`: a recipe's requests for a sample record, nothing sent.
//! * `secret`    — `Secret`, which never prints itself.
//! * `store`     — the `Store` trait and its sled implementation, namespaced by recipe instance:
//!   cursors (commit is compare-and-set), dedupe keys, run journal, dead letters, run history.
//! * `telemetry` — the tracing subscriber.
//! * `demo`      — `sluice demo`: the connector end to end against the simulator.
//! * `sim`       — the Intercom simulator (tests, demo, benchmarks; the runtime never uses it).
//!
//! # Data flow
//!
//! ```text
//! connectors/*.yaml ── spec::parse_connector ──► ConnectorSpec + Diagnostics (file:line:col)
//!                      plan::build_connector ──► Connector { triggers, actions } | Diagnostics
//! sluice.yaml ──────── spec::parse_config ─────► http::Connection (base URL, token, version)
//! sluice poll:  trigger::Poll::start(conn, trigger, since)
//!                 server filter = since widened (day granularity / exclusive `>`)
//!                 next_page() → records with cursor ≥ since, in cursor order
//! sluice call:  action::prepare(action, inputs) → variant + rendered requests
//!               action::execute → http::Connection::send (classify, retry, rate limit) → output
//! ```
#![warn(missing_docs)]
// Diagnostics are returned by value on the (cold) validation path; boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub mod action;
pub mod cli;
pub mod demo;
pub mod diag;
pub mod dryrun;
pub mod emit;
pub mod engine;
pub mod failure;
pub(crate) mod governor;
pub mod http;
pub mod plan;
pub mod record;
pub mod runtime;
pub mod secret;
pub mod sim;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod trigger;
