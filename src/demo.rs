//! `sluice demo`: the shipped recipes running against the built-in Intercom simulator.
//!
//! Starts the simulator in-process on a free loopback port with seeded data, opens the
//! recipes' connections against it, and runs every recipe in `recipes/` for several cycles
//! while the simulator keeps making changes (new contacts, ticket and conversation updates,
//! companies). State lives in a temporary directory that is removed at exit. Prints a report
//! per recipe and the simulator's audit totals. Uses only the runtime's public pieces; the
//! simulator is the only stand-in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::engine::CycleReport;
use crate::plan::{self, Connector};
use crate::runtime::{Runtime, Shutdown};
use crate::sim::{Sim, SimConfig};
use crate::store::SledStore;

/// Cycles the demo runs.
pub const CYCLES: usize = 6;
/// Changes the simulator makes before each cycle after the first.
pub const CHANGES_PER_CYCLE: usize = 150;

/// Runs the demo with the recipes in `recipes_dir` and returns the report text.
pub async fn run(connectors: &[Arc<Connector>], recipes_dir: &Path) -> Result<String> {
    let started = Instant::now();
    let config = SimConfig {
        seed: 42,
        contacts: 400,
        companies: 60,
        tickets: 200,
        conversations: 200,
        // The demo shows recipes, not waiting: a budget well above what its runs use (the
        // real 1,666 calls per 10 s would pace its ~6,400 calls over 40 s).
        rate_limit_per_window: 100_000,
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
    // Every connection the recipes name points at the simulator.
    let mut config = String::from("connections:\n");
    for name in ["intercom", "intercom_backup"] {
        config.push_str(&format!(
            "  {name}:\n    connector: intercom\n    base_url: {}\n    token: ${{env:SLUICE_DEMO_TOKEN}}\n",
            handle.base_url
        ));
    }
    let files = crate::spec::yaml_files_in(recipes_dir).with_context(|| {
        format!(
            "the demo runs the recipes in `{}`; run it from the repository",
            recipes_dir.display()
        )
    })?;
    let mut sources = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        sources.push((f, text));
    }
    let env = |k: &str| (k == "SLUICE_DEMO_TOKEN").then(|| "sim-token".to_string());
    let plan = plan::build(plan::Sources {
        connectors: connectors.to_vec(),
        config: Some((PathBuf::from("<demo>/sluice.yaml"), config)),
        recipes: sources,
        env: &env,
        secrets: plan::Secrets::Required,
    })
    .map_err(|d| {
        let list: Vec<String> = d.iter().map(ToString::to_string).collect();
        anyhow!("{}", list.join("\n"))
    })?;
    let state = tempfile_dir()?;
    let rt = Runtime::new(plan, Arc::new(SledStore::open(state.path())?))?;
    let recipes = rt.plan().recipes.clone();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice demo: {} recipes against the Intercom simulator at {} (seed 42: {} contacts, {} companies, {} tickets, {} conversations)\n",
        recipes.len(),
        handle.base_url,
        sizes.0,
        sizes.1,
        sizes.2,
        sizes.3
    );
    let mut totals: BTreeMap<String, CycleReport> = BTreeMap::new();
    for cycle in 1..=CYCLES {
        let what = if cycle == 1 {
            "first run: recipes start from now (new_contact_welcome backfills from its start_from)"
                .to_string()
        } else {
            let changed = sim.churn(CHANGES_PER_CYCLE);
            // Half a minute passes before the next run: it handles changes made before it.
            sim.advance_clock(30);
            let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
            for (k, _) in &changed {
                *by_kind.entry(format!("{k:?}").to_lowercase()).or_default() += 1;
            }
            format!(
                "the simulator made {} changes ({})",
                changed.len(),
                by_kind
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let t = Instant::now();
        let mut fired = 0;
        for r in &recipes {
            let rep = crate::engine::run_cycle(
                rt.clone(),
                r.clone(),
                crate::engine::CycleOptions::new(Shutdown::never()),
            )
            .await;
            fired += rep.fired;
            let tot = totals.entry(r.id.clone()).or_insert_with(|| CycleReport {
                recipe: r.id.clone(),
                ..Default::default()
            });
            tot.absorb(&rep);
        }
        let _ = writeln!(
            out,
            "cycle {cycle}: {what}; {fired} records fired ({:.0} ms)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    let _ = writeln!(
        out,
        "\n{:<28} {:>6} {:>9} {:>7} {:>8} {:>9} {:>6}",
        "recipe", "fired", "filtered", "steps", "failed", "skipped", "dead"
    );
    for r in totals.values() {
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>9} {:>7} {:>8} {:>9} {:>6}{}",
            r.recipe,
            r.fired,
            r.filtered,
            r.steps_ok,
            r.steps_failed,
            r.steps_skipped,
            r.dead_letters,
            r.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    let dead = rt.store()?.dead_letters(None)?;
    if let Some((_, d)) = dead.first() {
        let _ = writeln!(
            out,
            "\nfirst dead letter: recipe {} step `{}`: {}",
            d.recipe, d.failed_step, d.error
        );
    }

    let _ = writeln!(out, "\nWhat the simulator saw");
    let audit = sim.audit();
    let mut by_endpoint: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for e in &audit {
        let t = by_endpoint
            .entry(format!("{} {}", e.method, pattern(&e.path)))
            .or_default();
        t.0 += 1;
        if e.status >= 400 || e.status == 0 {
            t.1 += 1;
        }
    }
    for (k, (n, failed)) in &by_endpoint {
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
    let _ = writeln!(
        out,
        "   {:>5}  requests in all; demo took {:.1} s",
        audit.len(),
        started.elapsed().as_secs_f64()
    );
    drop(rt);
    handle.shutdown().await?;
    Ok(out)
}

/// A temporary state directory, removed on drop.
fn tempfile_dir() -> Result<TempDir> {
    let base = std::env::temp_dir().join(format!(
        "sluice-demo-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    std::fs::create_dir_all(&base)?;
    Ok(TempDir(base))
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
