//! `sluice demo`: the shipped recipes running against the built-in Intercom simulator.
//!
//! Starts the simulator in-process on a free loopback port with seeded data, opens the
//! recipes' connections against it, and runs every recipe in `recipes/` for several cycles
//! while the simulator keeps making changes (new contacts, ticket and conversation updates,
//! companies). State lives in a temporary directory that is removed at exit. Prints a report
//! per recipe, what its numbers mean (why a recipe fired 0 times, why `POST /contacts` answers
//! 409), one record's journey through its recipe's steps, one dead letter (a failure the
//! simulator injects in cycle 3) and its replay, the simulator's audit totals and what to try
//! next. Uses only the runtime's public pieces; the simulator is the only stand-in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::engine::CycleReport;
use crate::plan::{self, Connector};
use crate::runtime::{Runtime, Shutdown};
use crate::sim::{AuditEntry, FailRule, Faults, Sim, SimConfig};
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
        connection_files: Vec::new(),
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
    // The audit sequence numbers each cycle's requests fall in.
    let mut cycle_seqs: Vec<(u64, u64)> = Vec::new();
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
            let fault = if cycle == FAULT_CYCLE {
                // One company update fails for good: company_upgrade gets a dead letter.
                sim.set_faults(Faults {
                    fail_next: vec![FailRule {
                        code: Some("parameter_invalid".into()),
                        message: Some("injected by the demo".into()),
                        ..FailRule::once(Some("PUT"), "/companies/", 422)
                    }],
                    ..Faults::default()
                });
                "; the next `PUT /companies/{id}` is made to fail (422)"
            } else {
                ""
            };
            format!(
                "the simulator made {} changes ({}){fault}",
                changed.len(),
                by_kind
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let first_seq = sim.audit().last().map_or(0, |e| e.seq) + 1;
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
        sim.set_faults(Faults::default());
        cycle_seqs.push((first_seq, sim.audit().last().map_or(0, |e| e.seq)));
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
    let audit = sim.audit();
    explain(&mut out, &totals, &recipes, &audit);
    if let Some(&(from, to)) = cycle_seqs.get(1) {
        journey(&mut out, &sim, &audit, from, to);
    }
    let dead = rt.store()?.dead_letters(None)?;
    if let Some((id, d)) = dead.first() {
        let _ = writeln!(
            out,
            "\nOne dead letter and its replay\n\nThe failure injected in cycle {FAULT_CYCLE} ended one record's chain: it became a dead letter, kept with\neverything needed to act on it (`sluice dead-letters show {id}`):\n"
        );
        let text = crate::cli::dead_letter_text(*id, d);
        // The record itself is long: its first lines show what it is.
        let mut in_record = 0;
        for l in text.lines() {
            if l == "  record:" {
                in_record = 1;
            } else if in_record > 0 && l.starts_with("    ") {
                in_record += 1;
                if in_record == 6 {
                    let _ = writeln!(out, "   …");
                }
                if in_record >= 6 {
                    continue;
                }
            }
            let _ = writeln!(out, "  {l}");
        }
        if let Some(recipe) = recipes.iter().find(|r| r.instance == d.recipe) {
            let replayed = crate::admin::replay(&rt, recipe, *id).await?;
            let _ = writeln!(
                out,
                "\n`sluice dead-letters replay {id}` (the fault is gone now): {}",
                replayed.message
            );
        }
    }

    let _ = writeln!(
        out,
        "\nWhat the simulator saw (\"failed\": answers of 400 and above)"
    );
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
    let _ = writeln!(out, "{NEXT}");
    drop(rt);
    handle.shutdown().await?;
    Ok(out)
}

/// The cycle in which the demo makes one request fail, to show a dead letter.
const FAULT_CYCLE: usize = 3;

/// The end of the report.
const NEXT: &str = "
What to try next

  sluice connectors show intercom.create_tag          one action: its inputs and outputs
  sluice validate                                     check connectors/ and recipes/
  README.md, \"Trying Intercom actions and triggers by hand\": run `sluice sim` yourself, call
      actions, change its data through /_sim, see what a recipe would send
      (`sluice test … --sample-from intercom`) and run it
  recipes/README.md: write a recipe; edit a filter in recipes/ and run the demo again";

/// What the table's numbers mean, why recipes fired 0 times and what the failed requests are.
fn explain(
    out: &mut String,
    totals: &BTreeMap<String, CycleReport>,
    recipes: &[Arc<crate::plan::Recipe>],
    audit: &[AuditEntry],
) {
    let _ = writeln!(
        out,
        "
What the numbers mean

  fired     records new to the recipe (or changed since it last saw them) that passed its
            filter: its steps ran for each
  filtered  records its `filter` turned away; they count as handled and are not seen again
  steps     steps that succeeded (a recipe has several steps per record)
  failed    steps that failed; skipped: steps whose `if` was false or that failed with
            `on_error: skip`
  dead      records whose chain failed for good: kept as dead letters, to replay or drop
"
    );
    let zero: Vec<&CycleReport> = totals.values().filter(|r| r.fired == 0).collect();
    if !zero.is_empty() {
        let _ = writeln!(out, "Why some recipes fired 0 times: their filters wait for something the simulator's random changes rarely make:");
        for r in zero {
            let what = recipes
                .iter()
                .find(|x| x.id == r.recipe)
                .map(|x| first_sentence(&x.description))
                .unwrap_or_default();
            let why = if r.polled == 0 {
                "its trigger returned no record".to_string()
            } else {
                format!("its filter was false for all {} records it saw", r.filtered)
            };
            let _ = writeln!(out, "  {:<26} {why}", r.recipe);
            if !what.is_empty() {
                let _ = writeln!(out, "  {:<26} ({what})", "");
            }
        }
    }
    let conflicts = audit
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/contacts" && e.status == 409)
        .count();
    if conflicts > 0 {
        let _ = writeln!(
            out,
            "
Why `POST /contacts` answered 409 ({conflicts} times): new_contact_backup copies each new contact
to the connection `intercom_backup`, another workspace in real life but the same simulator
here. The contact is already there, so Intercom answers 409 Conflict naming it, and
create_contact returns that existing contact (the `GET /contacts/{{id}}` calls): an expected
answer, not a failure, which is why the recipe's steps all succeeded."
        );
    }
}

/// A description's first sentence.
fn first_sentence(text: &str) -> String {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match t.find(". ") {
        Some(i) => t[..=i].to_string(),
        None => t,
    }
}

/// One `new_ticket_triage` record's requests in the cycle between audit entries `from` and
/// `to`: its steps' requests with their bodies and answers, and the ticket afterwards.
fn journey(out: &mut String, sim: &Sim, audit: &[AuditEntry], from: u64, to: u64) {
    let cycle: Vec<&AuditEntry> = audit
        .iter()
        .filter(|e| (from..=to).contains(&e.seq))
        .collect();
    // The note is new_ticket_triage's own request: it names the ticket's number.
    let note_of = |e: &&&AuditEntry| {
        e.method == "POST"
            && e.path.ends_with("/notes")
            && e.body
                .as_ref()
                .and_then(|b| b["body"].as_str())
                .is_some_and(|b| b.starts_with("Opened ticket #"))
    };
    let Some(note) = cycle.iter().find(note_of) else {
        return;
    };
    let number = note
        .body
        .as_ref()
        .and_then(|b| b["body"].as_str())
        .and_then(|b| b.strip_prefix("Opened ticket #"))
        .and_then(|b| b.split(':').next())
        .unwrap_or_default()
        .to_string();
    let Some(ticket) = sim
        .records(crate::sim::Kind::Ticket)
        .into_iter()
        .find(|t| t["ticket_id"].as_str() == Some(number.as_str()))
    else {
        return;
    };
    let ticket_path = format!(
        "/tickets/{}/tags",
        ticket["id"].as_str().unwrap_or_default()
    );
    let tagging = cycle
        .iter()
        .rev()
        .find(|e| e.seq < note.seq && e.path == ticket_path);
    let before = tagging.map_or(note.seq, |t| t.seq);
    let tag = cycle.iter().rev().find(|e| {
        e.seq < before
            && e.path == "/tags"
            && e.body.as_ref().is_some_and(|b| b["name"] == "needs-triage")
    });
    let search = cycle
        .iter()
        .rev()
        .find(|e| e.seq < tag.map_or(before, |t| t.seq) && e.path == "/tickets/search");
    let _ = writeln!(
        out,
        "
One record's journey: ticket #{number} through new_ticket_triage (cycle 2)
"
    );
    let steps = [
        (search, "trigger new_ticket: the search that found it"),
        (tag, "step triage_tag: intercom.create_tag"),
        (tagging, "step tag_ticket: intercom.assign_tags"),
        (
            Some(note),
            "step note_contact: intercom.add_note_to_contact",
        ),
    ];
    for (e, what) in steps {
        let Some(e) = e else { continue };
        // A search shows its query (the paging around it is noise here).
        let shown = match &e.body {
            Some(b) if e.path.ends_with("/search") => b.get("query").cloned(),
            other => other.clone(),
        };
        let body = shown
            .as_ref()
            .map(|b| {
                let s = b.to_string();
                if s.chars().count() > 110 {
                    format!(" {}…", s.chars().take(110).collect::<String>())
                } else {
                    format!(" {s}")
                }
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {what}\n    {} {}{body}\n    answered {}",
            e.method, e.path, e.status
        );
    }
    let tags: Vec<&str> = ticket["tags"]["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  afterwards the ticket carries the tags [{}] and its contact the note",
        tags.join(", ")
    );
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
