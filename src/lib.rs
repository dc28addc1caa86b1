//! sluice: a self-hosted polling automation runtime.

pub mod sim;
