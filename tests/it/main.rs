//! The single integration-test binary (ripgrep style): every feature through its public face —
//! the `sluice` CLI, the simulator's recorded calls and state.

mod util;

mod browser;
mod cli;
mod conformance;
mod conventions;
mod crash;
mod demo;
mod docs;
mod engine;
mod files;
mod generic;
mod hostile;
mod intercom_actions;
mod intercom_errors;
mod intercom_triggers;
mod oauth;
mod paths;
mod polling;
mod readme;
mod recipes;
mod schema;
mod sidecar;
mod store;
mod validate;
