//! sluice's benchmarks: `cargo bench --bench bench [-- NAME…]`. Prints figures; asserts
//! nothing about time. Results are recorded in docs/BENCHMARKS.md.
//!
//! * `engine_50k` — (a) the first `sluice run --once` over 50,000 contacts through a recipe
//!   with one `emit` step (records/s, CPU µs per record including dedupe and cursor commit, peak
//!   RSS), then (b) the next cycle after 1% of the contacts changed (wall time).
//! * `engine_chain_5k` — (c) a three-step Intercom chain over 5,000 records (actions/s, CPU per
//!   action).
//!
//! The `sluice` process is measured with GNU time (`/usr/bin/time`, Debian package `time`).
//!
//! * `sim_search_50k` — `sluice sim` (its own process) serving 50,000 contacts through
//!   `POST /contacts/search` in pages of 150 over loopback, read by `sluice poll`'s code path
//!   (trigger `contact_updated`). Reports the simulator's CPU and the client's CPU separately.
//! * `validate_20k` — `sluice validate` of one recipe with 20,000 steps (Intercom actions whose
//!   inputs read the record and the step before), then of the same recipe with a wrong
//!   reference in every step (20,000 diagnostics): wall time and peak RSS (issue 14).
//! * `store_50k` — the state store alone: 50,000 dedupe keys committed 150 at a time, each
//!   commit compare-and-set on the checkpoint, one atomic write plus an fsync.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Map;
use sluice::http::Connection;

/// User + system CPU seconds of this process so far (all threads, exited ones included), from
/// `/proc/self/stat` (Linux; clock ticks of 1/100 s).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

fn connector() -> Arc<sluice::plan::Connector> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/intercom.yaml"
    ))
    .expect("connectors/intercom.yaml");
    Arc::new(
        sluice::plan::load_connector_text(std::path::Path::new("connectors/intercom.yaml"), &text)
            .expect("the shipped connector builds"),
    )
}

/// CPU seconds used so far by process `pid`.
fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
}

/// Starts `sluice sim` as its own process (so its CPU can be measured apart from the client)
/// and returns it with its base URL.
fn spawn_sim(args: &[&str]) -> (std::process::Child, String) {
    spawn_sim_with(true, args)
}

/// As [`spawn_sim`]; `frozen: false` lets the simulator's clock (and so its rate windows) run.
fn spawn_sim_with(frozen: bool, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["sim", "--port", "0"])
        .args(if frozen { &["--frozen-clock"][..] } else { &[] })
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sluice sim");
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("sim banner");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (child, url)
}

async fn sim_search_50k() {
    let (mut child, url) = spawn_sim(&[
        "--contacts",
        "50000",
        "--companies",
        "0",
        "--tickets",
        "0",
        "--conversations",
        "0",
    ]);
    let c = connector();
    let config = format!(
        "connections:\n  bench:\n    connector: intercom\n    base_url: {url}\n    token: ${{env:BENCH_TOKEN}}\n    timezone: Europe/Dublin\n"
    );
    let env = |k: &str| (k == "BENCH_TOKEN").then(|| "sim-token".to_string());
    let plan = sluice::plan::build(sluice::plan::Sources {
        connectors: vec![c.clone()],
        config: Some(("bench.yaml".into(), config)),
        connection_files: Vec::new(),
        recipes: vec![],
        env: &env,
        secrets: sluice::plan::Secrets::Required,
    })
    .expect("plan");
    let conn = Connection::new(&plan.connections[0]).expect("connection");
    let trigger = &c.triggers["contact_updated"];
    let (sim0, cpu0, wall0) = (cpu_secs_of(child.id()), cpu_secs(), Instant::now());
    let mut poll = sluice::trigger::Poll::start(&conn, trigger, 0, Map::new())
        .await
        .expect("poll");
    let mut n = 0usize;
    while let Some(page) = poll.next_page().await.expect("page") {
        n += page.len();
    }
    let (sim_cpu, cpu, wall) = (
        cpu_secs_of(child.id()) - sim0,
        cpu_secs() - cpu0,
        wall0.elapsed().as_secs_f64(),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(n, 50_000);
    println!(
        "sim_search_50k: {n} contacts in {} pages: simulator CPU {:.2} s; client (sluice poll path: records kept as JSON text, id and cursor parsed) CPU {:.2} s = {:.1} µs/record; wall {:.2} s",
        poll.pages,
        sim_cpu,
        cpu,
        cpu * 1e6 / n as f64,
        wall
    );
}

/// Runs `sluice ARGS` under GNU time; returns (wall s, user+sys CPU s, peak RSS KiB, stdout:
/// the `--json` run reports on its last line).
fn timed(args: &[&str], dir: &std::path::Path) -> (f64, f64, u64, String) {
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("TIME %e %U %S %M")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("TIME "))
        .unwrap_or_else(|| panic!("no timing in {err}"));
    let f: Vec<f64> = line[5..]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(out.status.success(), "sluice {args:?} failed:\n{err}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (f[0], f[1] + f[2], f[3] as u64, stdout)
}

fn workspace(url: &str, recipe: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(dir.join("sluice.yaml"), format!("connections:\n  intercom:\n    connector: intercom\n    base_url: {url}\n    token: sim-token\n    timezone: Europe/Dublin\n")).unwrap();
    let id = recipe.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
    std::fs::write(dir.join(format!("recipes/{id}.yaml")), recipe).unwrap();
    dir
}

fn run_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--connectors".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/connectors").into(),
        "run".into(),
        "--once".into(),
        "--json".into(),
    ]
    .into_iter()
    .chain([
        "--state-dir".to_string(),
        dir.join("state").display().to_string(),
    ])
    .collect()
}

async fn engine_50k() {
    let (_reap, url) = contacts_sim(50_000);
    let recipe = "id: emit_contacts\nconnection: intercom\ntrigger: intercom.contact_updated\nschedule:\n  every: 1m\nstart_from: \"2020-01-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      to: /dev/null\n";
    let dir = workspace(&url, recipe);
    let args = run_args(&dir);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (wall, cpu, rss, out) = timed(&a, &dir);
    let fired = fired_of(&out);
    println!(
        "engine_50k (a) first cycle: {fired} records fired in {wall:.2} s = {:.0} records/s; CPU {cpu:.2} s = {:.1} µs/record; peak RSS {:.1} MB",
        fired as f64 / wall,
        cpu * 1e6 / fired as f64,
        rss as f64 / 1024.0
    );
    // (b) 1% of the contacts change, then the next cycle.
    let client = reqwest::Client::builder().build().unwrap();
    let contacts = get_json(&client, &format!("{url}/_sim/contacts")).await;
    for c in contacts.iter().step_by(100) {
        let id = c["id"].as_str().unwrap();
        client
            .patch(format!("{url}/_sim/contacts/{id}"))
            .json(&serde_json::json!({"name": "changed"}))
            .send()
            .await
            .unwrap();
    }
    // The server's clock moves on: a cycle handles changes made before it starts.
    client
        .post(format!("{url}/_sim/clock"))
        .json(&serde_json::json!({"advance": 1}))
        .send()
        .await
        .unwrap();
    let (wall, cpu, rss, out) = timed(&a, &dir);
    let rep = report_of(&out);
    println!(
        "engine_50k (b) next cycle with 1% changed: {} fired ({} already seen); the cycle took {:.0} ms; the whole process {:.0} ms, CPU {cpu:.3} s, peak RSS {:.1} MB",
        rep["fired"],
        rep["skipped_seen"],
        rep["elapsed_ms"].as_f64().unwrap_or(0.0),
        wall * 1e3,
        rss as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn engine_chain_5k() {
    let (_reap, url) = contacts_sim(5_000);
    let recipe = "id: chain\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2020-01-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"step one\"\n  - id: event\n    action: intercom.create_event\n    with:\n      event_name: step-two\n      created_at: \"{{record.created_at}}\"\n      contact_id: \"{{record.id}}\"\n  - id: rename\n    action: intercom.update_contact\n    with:\n      id: \"{{record.id}}\"\n      name: \"done\"\n";
    let dir = workspace(&url, recipe);
    let args = run_args(&dir);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (wall, cpu, rss, out) = timed(&a, &dir);
    let fired = fired_of(&out);
    let actions = fired * 3;
    println!(
        "engine_chain_5k (c): {fired} records, {actions} actions in {wall:.2} s = {:.0} actions/s; sluice CPU {cpu:.2} s = {:.0} µs/action; peak RSS {:.1} MB",
        actions as f64 / wall,
        cpu * 1e6 / actions as f64,
        rss as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first recipe's report: `run --once --json` writes the reports on stdout's last line.
fn report_of(stdout: &str) -> serde_json::Value {
    let last = stdout.lines().next_back().expect("run report");
    let v: serde_json::Value = serde_json::from_str(last).expect("run report JSON");
    v[0].clone()
}

fn fired_of(stdout: &str) -> u64 {
    report_of(stdout)["fired"].as_u64().unwrap_or(0)
}

/// `sluice sim` with `n` contacts and nothing else, no rate limit in the way.
fn contacts_sim(n: usize) -> (Reap, String) {
    contacts_sim_with(true, &n.to_string(), "100000000")
}

/// A simulator holding only `n` contacts, with a rate limit per 10 s window; `frozen` stops
/// its clock.
fn contacts_sim_with(frozen: bool, n: &str, rate_limit: &str) -> (Reap, String) {
    let (child, url) = spawn_sim_with(
        frozen,
        &[
            "--contacts",
            n,
            "--companies",
            "0",
            "--tickets",
            "0",
            "--conversations",
            "0",
            "--rate-limit",
            rate_limit,
        ],
    );
    (Reap(child), url)
}

/// Kills a child process on drop.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The state store alone: 50,000 dedupe keys committed 150 at a time (one block and one
/// fsync per commit; the engine commits up to 1,000 at a time), each commit compare-and-set
/// on the checkpoint the previous one wrote, as a cycle's are. Used through `dyn Store`, as
/// the engine uses it.
fn store_50k() {
    use sluice::store::{Checkpoint, Commit, SledStore, Store};
    let dir = std::env::temp_dir().join(format!("sluice-bench-store-{}", std::process::id()));
    let sled = SledStore::open(&dir).expect("store");
    let store: &dyn Store = &sled;
    let before = rss_kib();
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let mut n = 0i64;
    let mut expected = None;
    for _page in 0..334 {
        let batch: Vec<(String, i64, bool)> = (0..150)
            .map(|_| {
                n += 1;
                (
                    format!("6762f0d01bb69f9f{n:08x}:{}", 1_700_000_000 + n),
                    1_700_000_000 + n,
                    false,
                )
            })
            .collect();
        let checkpoint = Checkpoint {
            cursor: 1_700_000_000 + n,
            floor: 0,
            high: 1_700_000_000 + n,
        };
        store
            .commit(
                "bench",
                &Commit {
                    expected,
                    checkpoint,
                    finished: &batch,
                    dead: &[],
                    keep_from: i64::MIN,
                    known: None,
                },
            )
            .expect("commit");
        expected = Some(checkpoint);
    }
    let (cpu, wall) = (cpu_secs() - cpu0, t0.elapsed().as_secs_f64());
    // What every cycle pays when all of them are inside the dedupe window: loading the keys.
    let t1 = Instant::now();
    let loaded = store.handled_keys("bench").expect("load").len();
    let load_ms = t1.elapsed().as_secs_f64() * 1e3;
    println!(
        "store_50k: {n} keys in 334 commits: wall {wall:.2} s = {:.0} µs/commit, CPU {cpu:.2} s = {:.1} µs/key; RSS +{:.1} MB; loading all {loaded} keys {load_ms:.1} ms",
        wall * 1e6 / 334.0,
        cpu * 1e6 / n as f64,
        (rss_kib().saturating_sub(before)) as f64 / 1024.0
    );
    drop(sled);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 10's action-path figures: one `add_note_to_contact` step over 5,000 contacts, the
/// simulator answering every request after 100 ms. (1) no rate limit; (2) Intercom's budget of
/// 1,666 calls per 10 s, enforced; (3) the same with another client of the app using 30 % of
/// it and `rate_share: 0.7`. The simulator's audit log counts the calls and 429s of each.
async fn actions_latency() {
    const CONTACTS: &str = "5000";
    let recipe = |concurrency: usize| {
        format!("id: note_all\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2020-01-01\"\nconcurrency: {concurrency}\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{{{record.id}}}}\"\n      body: \"hello\"\n")
    };
    #[allow(clippy::disallowed_methods)]
    let client = reqwest::Client::new();
    for (label, rate_limit, share, other, concurrency) in [
        ("(1) no rate limit", "100000000", 1.0, false, 16usize),
        ("(1) no rate limit", "100000000", 1.0, false, 64),
        ("(2) 1,666 calls / 10 s", "1666", 1.0, false, 64),
        (
            "(3) 1,666 / 10 s, another client at 30 %, share 0.7",
            "1666",
            0.7,
            true,
            64,
        ),
    ] {
        let (_reap, url) = contacts_sim_with(false, CONTACTS, rate_limit);
        client
            .put(format!("{url}/_sim/faults"))
            .json(&serde_json::json!({"latency_ms": 100}))
            .send()
            .await
            .unwrap();
        let dir = workspace(&url, &recipe(concurrency));
        std::fs::write(
            dir.join("sluice.yaml"),
            format!("connections:\n  intercom:\n    connector: intercom\n    base_url: {url}\n    token: sim-token\n    timezone: Europe/Dublin\n    rate_share: {share}\n"),
        )
        .unwrap();
        // The other client: 30 % of the budget (50 calls a second), paced, until told to stop.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other_task = other.then(|| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let c = client.clone();
                    let u = format!("{url}/tags");
                    tokio::spawn(async move {
                        let _ = c
                            .get(u)
                            .bearer_auth("sim-token")
                            .header("accept", "application/json")
                            .send()
                            .await;
                    });
                }
            })
        });
        let args = run_args(&dir);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (wall, cpu, rss, out) = tokio::task::block_in_place(|| timed(&a, &dir));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = other_task {
            let _ = t.await;
        }
        let rep = report_of(&out);
        let audit = get_json(&client, &format!("{url}/_sim/audit")).await;
        let ours = |e: &&serde_json::Value| e["path"] != "/tags";
        let calls = audit.iter().filter(ours).count();
        let ours_429 = audit
            .iter()
            .filter(ours)
            .filter(|e| e["status"] == 429)
            .count();
        let other_429 = audit
            .iter()
            .filter(|e| e["path"] == "/tags" && e["status"] == 429)
            .count();
        let notes = rep["steps_ok"].as_u64().unwrap_or(0);
        let budget = 166.6 * share;
        println!(
            "actions_latency {label}, concurrency {concurrency}: {notes} notes in {wall:.1} s = {:.0} actions/s; sluice's calls {calls} = {:.0}/s ({:.0} % of its budget of {budget:.0}/s); 429s: sluice {ours_429}, other client {other_429}; sluice CPU {cpu:.2} s, peak RSS {:.1} MB",
            notes as f64 / wall,
            calls as f64 / wall,
            100.0 * calls as f64 / wall / budget,
            rss as f64 / 1024.0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A JSON list from the simulator's control API.
async fn get_json(client: &reqwest::Client, url: &str) -> Vec<serde_json::Value> {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// A recipe of `n` steps; `broken`: every step reads an output its previous step lacks.
fn steps_recipe(n: usize, broken: bool) -> String {
    let mut r = String::from(
        "id: steps_20k\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 5m\nfilter: '{{eq record.role \"user\"}}'\nsteps:\n",
    );
    for i in 0..n {
        let prev = if i == 0 {
            "{{record.id}}".to_string()
        } else if broken {
            format!("{{{{steps.s{}.nope}}}}", i - 1)
        } else {
            format!("{{{{default steps.s{}.id record.id}}}}", i - 1)
        };
        r.push_str(&format!(
            "  - id: s{i}\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{prev}\"\n      body: \"Step {i} for {{{{lowercase record.email}}}}\"\n"
        ));
    }
    r
}

fn validate_20k() {
    for broken in [false, true] {
        let dir = workspace("http://127.0.0.1:9", &steps_recipe(20_000, broken));
        let size = std::fs::metadata(dir.join("recipes/steps_20k.yaml"))
            .unwrap()
            .len();
        let args = [
            "--connectors",
            concat!(env!("CARGO_MANIFEST_DIR"), "/connectors"),
            "validate",
            "recipes",
        ];
        let out = std::process::Command::new("/usr/bin/time")
            .args(["-f", "TIME %e %M"])
            .arg(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("/usr/bin/time (apt-get install time)");
        let err = String::from_utf8_lossy(&out.stderr);
        let t: Vec<&str> = err
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("TIME "))
            .expect("timing")
            .split_whitespace()
            .collect();
        let diags = err.matches(": error: ").count();
        println!(
            "validate_20k{}: 20,000 steps ({:.1} MB): {} s wall, peak RSS {} MiB, {diags} error(s), exit {}",
            if broken { " (broken)" } else { "" },
            size as f64 / 1e6,
            t[0],
            t[1].parse::<u64>().unwrap_or(0) / 1024,
            out.status.code().unwrap_or(-1)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.contains(w.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if run("sim_search_50k") {
        rt.block_on(sim_search_50k());
    }
    if run("store_50k") {
        store_50k();
    }
    if run("validate_20k") {
        validate_20k();
    }
    if run("engine_50k") {
        rt.block_on(engine_50k());
    }
    if run("engine_chain_5k") {
        rt.block_on(engine_chain_5k());
    }
    if run("actions_latency") {
        rt.block_on(actions_latency());
    }
}
