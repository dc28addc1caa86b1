//! Crash safety: a 2,000-record run of a three-step chain, the `sluice` process killed with
//! SIGKILL at random moments (seeded, by progress seen at the simulator) at least 20 times and
//! restarted. The simulator runs in its own process and its audit log is the oracle: every
//! record's chain completes, no record is lost, and a step can repeat only where a kill caught
//! it in flight: chains run 8 at a time, so at most 8 steps per kill, and never one step of a
//! record twice over. The chain opens with an `emit` step: every record's line must be in its
//! file at the end (a kill may repeat lines, never lose one).

use std::collections::HashMap;
use std::process::Stdio;

use serde_json::Value;

use crate::util::{SimProcess, Workspace};

const RECORDS: usize = 2_000;
const MIN_KILLS: usize = 20;
/// Chains in flight at once (the recipe's `concurrency`).
const CONCURRENCY: usize = 8;

const RECIPE: &str = "id: chain\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2020-01-01\"\nconcurrency: 8\nsteps:\n  - id: log\n    action: emit\n    with:\n      value: \"{{record.id}}\"\n      to: EMIT_TO\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"step one\"\n  - id: event\n    action: intercom.create_event\n    with:\n      event_name: step-two\n      created_at: \"{{record.created_at}}\"\n      contact_id: \"{{record.id}}\"\n  - id: rename\n    action: intercom.update_contact\n    with:\n      id: \"{{record.id}}\"\n      name: \"done\"\n";

async fn audit(client: &reqwest::Client, url: &str) -> Vec<Value> {
    client
        .get(format!("{url}/_sim/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn audit_len(client: &reqwest::Client, url: &str, since: u64) -> u64 {
    let v: Vec<Value> = client
        .get(format!("{url}/_sim/audit?since={since}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.last().and_then(|e| e["seq"].as_u64()).unwrap_or(since)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_repeats_only_steps_in_flight() {
    // The simulator in its own process: killing sluice must not touch it.
    let records = RECORDS.to_string();
    let sim = SimProcess::start(&[
        "--seed",
        "11",
        "--contacts",
        &records,
        "--companies",
        "0",
        "--tickets",
        "0",
        "--conversations",
        "0",
        "--frozen-clock",
        "--rate-limit",
        "10000000",
    ]);
    let url = sim.url.clone();
    let ws = Workspace::new(&format!("connections:\n  intercom:\n    connector: intercom\n    base_url: {url}\n    token: sim-token\n    retry: {{max_attempts: 3, base_delay_ms: 5, max_delay_ms: 20}}\n"));
    std::fs::create_dir_all(ws.path().join("recipes")).unwrap();
    let emitted = ws.path().join("emitted.jsonl");
    std::fs::write(
        ws.path().join("recipes/chain.yaml"),
        RECIPE.replace("EMIT_TO", emitted.to_str().unwrap()),
    )
    .unwrap();
    let run_cmd = || {
        let mut c = ws.sluice(&["run", "--once", "--json"]);
        c.arg("--recipes")
            .arg(ws.path().join("recipes"))
            .arg("--state-dir")
            .arg(ws.path().join("state"));
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let client = reqwest::Client::builder().build().unwrap();
    let mut rng = fastrand::Rng::with_seed(20261122);
    let mut kills = 0usize;
    let mut seq = 0u64;
    let mut finished = false;
    for _attempt in 0..200 {
        let mut child = run_cmd().spawn().unwrap();
        if kills < MIN_KILLS {
            // Kill after a random amount of progress (requests seen by the simulator).
            let target = seq + rng.u64(3..400);
            let mut exited = false;
            loop {
                if child.try_wait().unwrap().is_some() {
                    exited = true;
                    break;
                }
                seq = audit_len(&client, &url, seq).await;
                if seq >= target {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !exited {
                child.kill().unwrap(); // SIGKILL
                let _ = child.wait();
                kills += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "run failed:\n{stderr}");
        let reports = crate::util::reports_of(&String::from_utf8_lossy(&out.stdout));
        if reports[0]["fired"] == 0 && reports[0]["unfinished"] == 0 {
            finished = true;
            break;
        }
        seq = audit_len(&client, &url, seq).await;
    }
    assert!(finished, "the run never completed");
    assert!(kills >= MIN_KILLS, "only {kills} kills happened");

    // The oracle: what the simulator saw.
    let entries = audit(&client, &url).await;
    let contacts: Vec<Value> = client
        .get(format!("{url}/_sim/contacts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(contacts.len(), RECORDS);
    let mut counts: HashMap<(String, &str), usize> = HashMap::new();
    for e in &entries {
        if e["status"].as_u64().unwrap_or(0) >= 300 || e["status"] == 0 {
            continue;
        }
        let path = e["path"].as_str().unwrap();
        let method = e["method"].as_str().unwrap();
        let (id, step) = if method == "POST" && path.ends_with("/notes") {
            (
                path.trim_start_matches("/contacts/")
                    .trim_end_matches("/notes")
                    .to_string(),
                "note",
            )
        } else if method == "POST" && path == "/events" {
            (e["body"]["id"].as_str().unwrap().to_string(), "event")
        } else if method == "PUT" && path.starts_with("/contacts/") {
            (path.trim_start_matches("/contacts/").to_string(), "rename")
        } else {
            continue;
        };
        *counts.entry((id, step)).or_default() += 1;
    }
    let lines = std::fs::read_to_string(&emitted).unwrap();
    let logged: std::collections::HashSet<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect();
    let mut repeats = 0;
    for c in &contacts {
        let id = c["id"].as_str().unwrap();
        assert!(logged.contains(id), "record {id}: its emit line was lost");
        for step in ["note", "event", "rename"] {
            let n = counts.get(&(id.to_string(), step)).copied().unwrap_or(0);
            assert!(n >= 1, "record {id} lost: step {step} never ran");
            // Each repeat is a kill that caught this step in flight.
            assert!(n <= 1 + kills, "record {id}: step {step} ran {n} times");
            repeats += n - 1;
        }
        assert_eq!(c["name"], "done", "record {id} did not finish");
    }
    assert!(
        repeats <= kills * CONCURRENCY,
        "{repeats} repeated steps for {kills} kills of {CONCURRENCY} chains: a finished step ran again"
    );
    // Nothing left under way, nothing dead.
    let mut c = ws.sluice(&["state", "show", "--json"]);
    c.arg("--state-dir").arg(ws.path().join("state"));
    let st = crate::util::run(c);
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v[0]["state"]["in_journal"], 0, "{v}");
    assert_eq!(v[0]["state"]["dead_letters"], 0, "{v}");
    // Keys behind the lookback are pruned; never more keys than records.
    assert!(v[0]["state"]["dedupe_keys"].as_u64().unwrap() as usize <= RECORDS);
    eprintln!(
        "crash test: {kills} kills, {repeats} in-flight steps repeated, {} requests",
        entries.len()
    );
}
