//! `sluice connect NAME` and `sluice connections list | check NAME | rotate-key`.
//!
//! Reads `sluice.yaml` for the connections (environment variables that are not set are
//! reported where they matter, not up front) and the credential files for OAuth tokens;
//! never needs the state store, so all of it works while a sidecar runs. Never prints a
//! token: only its state.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::{load_plan, Cli};
use crate::credential::{KeySource, Vault};
use crate::http::{Connection, HttpRequest};
use crate::oauth::{AuthStatus, ConnectOptions, Credentials};
use crate::plan::{self, ConnectionPlan, Method};

/// `sluice connections …`.
#[derive(Debug, clap::Subcommand)]
pub enum ConnectionsCommand {
    /// Every connection of the config file: auth kind and state, region, API version.
    List {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Ask the API who the connection is (`GET /me` for Intercom): app, workspace, region.
    Check {
        /// The connection's name in the config file.
        name: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every stored token under a new key (see README, "OAuth connections").
    RotateKey,
}

fn plan(cli: &Cli) -> Result<plan::Plan> {
    load_plan(cli, Vec::new(), plan::Secrets::Optional)
}

fn find<'p>(plan: &'p plan::Plan, name: &str) -> Result<&'p Arc<ConnectionPlan>> {
    if let Some(c) = plan.connection_named(name) {
        return Ok(c);
    }
    if let Some((_, d)) = plan.unavailable.iter().find(|(n, _)| n == name) {
        bail!("connection `{name}` cannot be used: {}", d.message);
    }
    let names: Vec<&str> = plan.connections.iter().map(|c| c.name.as_str()).collect();
    bail!(
        "there is no connection `{name}` in `{}` (connections: {})",
        cli_config_name(),
        names.join(", ")
    )
}

fn cli_config_name() -> &'static str {
    "the config file"
}

/// `sluice connect NAME`.
pub(super) async fn cmd_connect(
    cli: &Cli,
    name: &str,
    no_browser: bool,
    port: u16,
    timeout: &str,
) -> Result<ExitCode> {
    let plan = plan(cli)?;
    let conn = find(&plan, name)?;
    let Some(oauth) = &conn.oauth else {
        bail!("connection `{name}` does not use OAuth (add `auth: oauth2` with `client_id` and `client_secret` to it in the config file)");
    };
    let secs = plan::parse_duration(timeout).map_err(|m| anyhow!("--timeout: {m}"))?;
    let vault = Vault::new(&cli.state_dir);
    let opts = ConnectOptions {
        no_browser,
        port,
        timeout: std::time::Duration::from_secs(secs.max(1) as u64),
    };
    let say = |line: &str| eprintln!("{line}");
    // The flow failing (refused, wrong state, timed out) is exit 1; a configuration that
    // cannot run it at all was exit 2 above.
    let meta = match crate::oauth::connect(name, oauth, &vault, &opts, &say).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    eprintln!(
        "Connected `{name}`: the token is stored encrypted in `{}`.{}",
        cli.state_dir.join(crate::credential::DIR).display(),
        if meta.expires_at.is_some() {
            " It expires and is refreshed as needed."
        } else {
            ""
        }
    );
    if crate::sidecar::client::running(&cli.state_dir)
        .await
        .is_some()
    {
        eprintln!("The running sidecar picks the new token up within a second; recipes paused for this connection resume.");
    }
    Ok(ExitCode::SUCCESS)
}

/// The region a connection's base URL belongs to, else its configured one (a proxy or the
/// simulator).
fn region_of(c: &ConnectionPlan) -> String {
    c.connector
        .api
        .regions
        .iter()
        .find(|(_, url)| url.trim_end_matches('/') == c.base_url)
        .map_or_else(|| c.region.clone(), |(r, _)| r.clone())
}

fn auth_row(c: &ConnectionPlan, vault: &Vault) -> (&'static str, AuthStatus) {
    match &c.oauth {
        None => (
            "bearer",
            if c.token.as_ref().is_some_and(|t| !t.expose().is_empty()) {
                AuthStatus::Ready
            } else {
                AuthStatus::Missing
            },
        ),
        Some(_) => (
            "oauth2",
            match vault.meta(&c.name) {
                Ok(None) => AuthStatus::Missing,
                Ok(Some(m)) if m.revoked_at.is_some() => AuthStatus::Revoked,
                Ok(Some(_)) => AuthStatus::Ready,
                Err(e) => AuthStatus::Unreadable(format!("{e:#}")),
            },
        ),
    }
}

/// `sluice connections …`.
pub(super) async fn cmd_connections(cli: &Cli, command: &ConnectionsCommand) -> Result<ExitCode> {
    match command {
        ConnectionsCommand::List { json } => list(cli, *json),
        ConnectionsCommand::Check { name, json } => check(cli, name, *json).await,
        ConnectionsCommand::RotateKey => {
            let (n, source) = Vault::new(&cli.state_dir).rotate_key()?;
            match source {
                KeySource::Env => eprintln!(
                    "Re-encrypted {n} stored token(s) under {}: set {} to that key now (and restart a running sidecar).",
                    crate::credential::NEW_KEY_ENV,
                    crate::credential::KEY_ENV
                ),
                KeySource::File(f) => eprintln!(
                    "Re-encrypted {n} stored token(s) under a new key in `{}`.",
                    f.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(cli: &Cli, json: bool) -> Result<ExitCode> {
    let plan = plan(cli)?;
    let vault = Vault::new(&cli.state_dir);
    let mut rows: Vec<Value> = Vec::new();
    for c in &plan.connections {
        let (kind, status) = auth_row(c, &vault);
        rows.push(json!({
            "name": c.name,
            "connector": c.connector.id,
            "auth": kind,
            "state": status.label(),
            "problem": status.problem(&c.name),
            "region": region_of(c),
            "api_version": c.api_version,
            "base_url": c.base_url,
        }));
    }
    for (name, d) in &plan.unavailable {
        rows.push(json!({
            "name": name,
            "state": "unavailable",
            "problem": d.message,
        }));
    }
    if json {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&rows)?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<10} {:<7} {:<11} {:<7} {:<8} BASE URL",
        "NAME", "CONNECTOR", "AUTH", "STATE", "REGION", "VERSION"
    )?;
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    for r in &rows {
        writeln!(
            out,
            "{:<20} {:<10} {:<7} {:<11} {:<7} {:<8} {}",
            s(&r["name"]),
            s(&r["connector"]),
            s(&r["auth"]),
            s(&r["state"]),
            s(&r["region"]),
            s(&r["api_version"]),
            s(&r["base_url"])
        )?;
        if let Some(p) = r["problem"].as_str() {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(cli: &Cli, name: &str, json: bool) -> Result<ExitCode> {
    let plan = plan(cli)?;
    let c = find(&plan, name)?;
    let creds = Credentials::new(&cli.state_dir);
    let conn = Connection::with_parts(c, &crate::governor::Governors::new(), &creds)?;
    let Some((path, _)) = &c.connector.api.timezone else {
        bail!(
            "connector `{}` declares no account request (`timezone.path`) to check a connection with",
            c.connector.id
        );
    };
    let req = HttpRequest {
        method: Method::Get,
        path: path.clone(),
        query: vec![],
        body: None,
    };
    let resp = match conn.send(&req, &[]).await {
        Ok(r) => r,
        Err(f) => {
            eprintln!("error: connection `{name}`: {f}");
            return Ok(ExitCode::from(1));
        }
    };
    let app = &resp.body["app"];
    let remote = app["region"].as_str().map(str::to_string);
    let region = region_of(c);
    let mismatch = remote
        .as_deref()
        .is_some_and(|r| !r.eq_ignore_ascii_case(&region));
    let report = json!({
        "name": name,
        "ok": !mismatch,
        "app": app["name"],
        "workspace_id": app["id_code"],
        "region": remote,
        "expected_region": region,
        "base_url": c.base_url,
    });
    if json {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&report)?
        )?;
    } else {
        writeln!(
            std::io::stdout().lock(),
            "{name}: app {}, workspace {}, region {}",
            app["name"].as_str().unwrap_or("?"),
            app["id_code"].as_str().unwrap_or("?"),
            remote.as_deref().unwrap_or("?")
        )?;
    }
    if mismatch {
        eprintln!(
            "error: connection `{name}` uses region `{region}` ({}), but the workspace is in region `{}`; set `region:` to it",
            c.base_url,
            remote.unwrap_or_default().to_ascii_lowercase()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
