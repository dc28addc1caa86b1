//! # sluice
//!
//! A self-hosted polling automation runtime: connectors are YAML data describing an API's
//! triggers and actions; recipes bind a trigger to a chain of actions.
//!
//! # Layout
//!
//! * `cli`       — argument parsing and commands; the only module that prints.
//! * `admin`     — state and dead-letter operations, shared by the CLI and the sidecar's API.
//! * `diag`      — `Diagnostic` (file:line:col, message, help) and YAML position lookup.
//! * `spec`      — serde shapes of connector, recipe and `sluice.yaml` files (data only).
//! * `plan`      — `plan::build`: connectors, connections and recipes → one `Plan`, every
//!   problem a located diagnostic; recipes and steps hold `ConnId` handles.
//! * `runtime`   — the composition root: a `Plan` plus a store → connections, rate
//!   governors, emit sink; `Shutdown`.
//! * `engine`    — one cycle of a recipe: journal, poll, dedupe, concurrent chains
//!   (`engine::chain`, the one chain implementation), cursor, commits.
//! * `dryrun`    — `sluice test`: the engine's chain with a recording executor.
//! * `schema`    — JSON Schemas for editors: recipes completed per connector, `sluice.yaml`.
//! * `template`  — the Handlebars registry, compiled templates and template trees.
//! * `http`      — a `Connection`: auth, headers, URL, body limits, redaction, retries, the
//!   server's clock.
//! * `governor`  — one rate budget per workspace, shared by every connection to it.
//! * `failure`   — the one failure type, from a request to a dead letter.
//! * `trigger`   — polling one trigger: paging, server filter widening, local bounds, scans.
//! * `record`    — a polled record as unparsed JSON text plus its id, cursor and key fields.
//! * `action`    — checking inputs, choosing variants, rendering and executing requests;
//!   writes whose outcome is unknown.
//! * `emit`      — the `emit` step's buffered sink.
//! * `secret`    — `Secret`, which never prints itself; `same_secret`, the one constant-time
//!   comparison.
//! * `credential` — OAuth tokens at rest: AES-256-GCM files under the state directory, the
//!   key, rotation.
//! * `oauth`     — the authorization-code flow (PKCE, `state`) that `sluice connect`'s
//!   loopback listener and the status page's Connect drive, and the live token of an OAuth
//!   connection: single-flight refresh, revoked on a 401.
//! * `store`     — the `Store` trait and the sled store: cursors, dedupe keys, journal,
//!   dead letters, known ids, run history.
//! * `telemetry` — the tracing subscriber; JSON lines.
//! * `sidecar`   — `sluice run`: the scheduler, reloads, `/livez` `/readyz` `/metrics`, the
//!   admin API and the status pages (`sidecar::connect`: OAuth's Connect and
//!   `/oauth/callback`), graceful shutdown; the CLI's client for it.
//! * `history`   — run history rows (runs, fired records' steps, hourly counts), retention.
//! * `demo`      — `sluice demo`: the connector end to end against the simulator.
//! * `sim`       — the Intercom simulator (tests, demo, benchmarks; the runtime never uses it).
//!
//! # Data flow
//!
//! ```text
//! connectors/*.yaml, sluice.yaml, recipes/*.yaml ── spec ──► plan::build ──► Plan
//! Plan + Store ──► Runtime::new ──► Arc<Runtime> (connections, governors, emitter)
//! engine::run_cycle(rt, recipe, shutdown):
//!     resume journal → trigger::Poll (since = cursor − lookback, until = server now)
//!     → dedupe → chain::run_chain × concurrency (Live executor: action::execute → http)
//!     → Store::commit (compare-and-set cursor, dedupe keys, dead letters) → record_cycle
//! sluice run:   sidecar: load (last good per file) → Runtime → scheduler → run_cycle per
//!               slot; reload → Runtime::rebuild (same store and governors) → scheduler
//! sluice test:  dryrun::run → chain::run_chain with the recording executor (nothing sent)
//! ```
#![warn(missing_docs)]
// The library has no `unsafe` at all; the binary's one setting of the allocator is in main.rs.
#![forbid(unsafe_code)]
// Diagnostics are returned by value on the (cold) validation path; boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub mod action;
pub mod admin;
pub mod cli;
pub mod credential;
pub mod demo;
pub mod diag;
pub mod dryrun;
pub mod emit;
pub mod engine;
pub mod failure;
pub(crate) mod governor;
pub mod history;
pub mod http;
pub mod oauth;
pub mod plan;
pub mod record;
pub mod runtime;
pub mod schema;
pub mod secret;
pub mod sidecar;
pub mod sim;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod trigger;
