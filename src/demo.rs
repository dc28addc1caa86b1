//! `sluice demo`: the Intercom connector end to end against the built-in simulator.
//!
//! Starts the simulator in-process on a free loopback port with seeded data, polls every
//! trigger (a 30-day backfill), lets the simulator make changes, polls again, runs a chain of
//! actions on a new contact, and prints a report with the simulator's audit totals. Uses only
//! public runtime pieces (`Connection`, `trigger::Poll`, `action::execute`); the simulator is
//! the only stand-in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Map, Value};

use crate::http::Connection;
use crate::plan::Connector;
use crate::sim::{Sim, SimConfig};
use crate::spec::ConnectionSpec;

/// Runs the demo and returns the report text.
pub async fn run(connectors: &[Arc<Connector>]) -> Result<String> {
    let connector = connectors
        .iter()
        .find(|c| c.id == "intercom")
        .ok_or_else(|| anyhow!("the demo needs the `intercom` connector"))?
        .clone();
    let config = SimConfig {
        seed: 42,
        contacts: 5_000,
        companies: 300,
        tickets: 1_000,
        conversations: 1_000,
        ..SimConfig::default()
    };
    let sizes = (
        config.contacts,
        config.companies,
        config.tickets,
        config.conversations,
    );
    let handle = Sim::start(config).await.context("starting the simulator")?;
    let sim = handle.sim.clone();
    let spec = ConnectionSpec {
        connector: "intercom".into(),
        region: None,
        base_url: Some(handle.base_url.clone()),
        api_version: None,
        token: Some("sim-token".into()),
        timezone: None,
        timeout_secs: None,
        retry: None,
    };
    let conn = Connection::new("demo", connector.clone(), &spec, &|_| None)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice demo: Intercom simulator at {} (seed 42: {} contacts, {} companies, {} tickets, {} conversations)\n",
        handle.base_url, sizes.0, sizes.1, sizes.2, sizes.3
    );

    let backfill_since = sim.now() - 30 * 86_400;
    let _ = writeln!(out, "1. Backfill: every trigger since 30 days ago");
    poll_all(&conn, &connector, backfill_since, &mut out).await?;

    let before = sim.now();
    sim.advance_clock(1);
    let changed = sim.churn(300);
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (k, _) in &changed {
        *by_kind.entry(format!("{k:?}").to_lowercase()).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "\n2. The simulator made {} changes ({}); every trigger since then",
        changed.len(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    poll_all(&conn, &connector, before, &mut out).await?;

    let _ = writeln!(out, "\n3. A chain of actions for a new contact");
    chain(&conn, &connector, &sim, &mut out).await?;

    let _ = writeln!(out, "\n4. What the simulator saw");
    let audit = sim.audit();
    let mut totals: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in &audit {
        let key = format!("{} {}", e.method, pattern(&e.path));
        let t = totals.entry(key).or_default();
        t.0 += 1;
        if e.status >= 400 || e.status == 0 {
            t.1 += 1;
        }
    }
    for (k, (n, failed)) in &totals {
        let _ = writeln!(
            out,
            "   {n:>5}  {k}{}",
            if *failed > 0 {
                format!("  ({failed} failed)")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "   {:>5}  requests in all", audit.len());
    handle.shutdown().await?;
    Ok(out)
}

async fn poll_all(
    conn: &Connection,
    connector: &Connector,
    since: i64,
    out: &mut String,
) -> Result<()> {
    for t in connector.triggers.values() {
        let started = Instant::now();
        let mut poll = crate::trigger::Poll::start(conn, t, since, Map::new()).await?;
        let mut n = 0usize;
        while let Some(page) = poll
            .next_page()
            .await
            .with_context(|| format!("polling {}", t.id))?
        {
            n += page.len();
        }
        let _ = writeln!(
            out,
            "   {:<24} {:>6} records  {:>4} pages  {:>6.1} ms",
            t.id,
            n,
            poll.pages,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

async fn call(
    conn: &Connection,
    connector: &Connector,
    action: &str,
    input: Value,
    out: &mut String,
) -> Result<Value> {
    let a = connector
        .actions
        .get(action)
        .ok_or_else(|| anyhow!("no action {action}"))?;
    let Value::Object(input) = input else {
        return Err(anyhow!("inputs must be an object"));
    };
    let started = Instant::now();
    let result = crate::action::execute(conn, a, &input)
        .await
        .map_err(|e| anyhow!("{action}: {e}"))?;
    let summary = match &result {
        Value::Object(m) => m
            .get("id")
            .map(|id| format!("id {id}"))
            .unwrap_or_else(|| "ok".into()),
        Value::Array(a) => format!("{} results", a.len()),
        Value::Null => "accepted".into(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "   {action:<32} {summary:<40} {:>6.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(result)
}

async fn chain(conn: &Connection, c: &Connector, sim: &Sim, out: &mut String) -> Result<()> {
    let contact = call(conn, c, "create_contact", json!({"email": "ada@example.com", "name": "Ada Lovelace", "role": "user", "external_id": "usr_ada"}), out).await?;
    let contact_id = contact["id"].clone();
    call(
        conn,
        c,
        "find_contact",
        json!({"email": "ada@example.com"}),
        out,
    )
    .await?;
    let vip = call(conn, c, "create_tag", json!({"name": "VIP"}), out).await?;
    let trial = call(conn, c, "create_tag", json!({"name": "Trial"}), out).await?;
    call(
        conn,
        c,
        "assign_tags",
        json!({"target": "contact", "target_id": contact_id, "tag_ids": [vip["id"], trial["id"]]}),
        out,
    )
    .await?;
    call(
        conn,
        c,
        "add_note_to_contact",
        json!({"contact_id": contact_id, "body": "Signed up through the demo."}),
        out,
    )
    .await?;
    let company = call(
        conn,
        c,
        "create_or_update_company",
        json!({"company_id": "analytical-engines", "name": "Analytical Engines", "plan": "Pro"}),
        out,
    )
    .await?;
    call(
        conn,
        c,
        "add_contact_to_company",
        json!({"contact_id": contact_id, "company_id": company["id"]}),
        out,
    )
    .await?;
    let ticket_type = sim
        .records(crate::sim::Kind::TicketType)
        .into_iter()
        .find(|t| t["category"] == "Customer")
        .map(|t| t["id"].clone())
        .ok_or_else(|| anyhow!("the simulator has no Customer ticket type"))?;
    let ticket = call(conn, c, "create_ticket", json!({"ticket_type_id": ticket_type, "contact_id": contact_id, "ticket_attributes": {"_default_title_": "Welcome call", "_default_description_": "Book a call"}}), out).await?;
    call(
        conn,
        c,
        "update_ticket",
        json!({"id": ticket["id"], "open": false}),
        out,
    )
    .await?;
    call(
        conn,
        c,
        "create_event",
        json!({"event_name": "finished-demo", "created_at": sim.now(), "contact_id": contact_id}),
        out,
    )
    .await?;
    Ok(())
}

/// `/contacts/6762…/tags` → `/contacts/{id}/tags`.
fn pattern(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let idish = !seg.is_empty()
                && (seg.chars().all(|c| c.is_ascii_digit())
                    || (seg.len() >= 16 && seg.chars().all(|c| c.is_ascii_hexdigit())));
            if idish {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}
