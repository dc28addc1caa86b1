//! The sidecar soak: `cargo bench --bench soak [-- --minutes M --recipes N --every S]`.
//! Prints figures; asserts nothing about time. Results are recorded in docs/BENCHMARKS.md.
//!
//! * `soak` (default 10 minutes, 1,000 recipe instances on `every: 10s` with `jitter: 10s`)
//!   runs `sluice run` (its own process, release build) against the simulator (in this
//!   process, clock running, data churning), rewrites 50 recipe files every minute (reloads),
//!   SIGKILLs the sidecar half way and starts it again, then stops it with SIGTERM. It then
//!   reads the run history from the state store and checks, per instance, that every slot
//!   from the first start to the stop is covered by exactly one cycle (a cycle covers
//!   `slots` slots ending at its `scheduled_at_ms`): **doubled** slots are covered twice,
//!   **lost** slots not at all. Tick lateness is the start of each on-time cycle minus its
//!   slot. RSS is sampled every second.
//! * `idle` (`-- idle`): the 12 shipped recipes for 60 s after start-up: CPU and RSS.
//! * `pages` (`-- pages`): a state store with 1,000,000 runs in its history (100 recipe
//!   instances × 10,000), one run of 10,000 records and 10,000 dead letters, served by a
//!   sidecar: each status page and its JSON twin fetched 20 times, time (on loopback, so
//!   about the server's) and size.
//! * `workspaces` (`-- workspaces [--minutes M --workspaces W --recipes-per R --limit L]`,
//!   default 3 minutes, 100 × 10 = 1,000 instances): many workspaces in one sidecar (issue
//!   13); see [`workspaces`].

// This harness is a plain thread driving child processes; the simulator runs on its own
// runtime's workers, so sleeping here blocks nothing.
#![allow(clippy::disallowed_methods, clippy::zombie_processes)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::store::Store;

const TOKEN: &str = "sim-token";
/// The workspaces' tokens are `WS_TOKEN-000`, `WS_TOKEN-001`, ….
const WS_TOKEN: &str = "ws-token";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size (bytes) and user+system CPU seconds of a process.
fn rss_and_cpu(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?;
    Some((rss_kb * 1024, ticks / 100.0))
}

/// A one-shot HTTP GET on loopback; the status code.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

struct Sidecar {
    child: Child,
    addr: String,
}

fn start_sidecar(dir: &Path, recipes: &Path, log: &str) -> Sidecar {
    start_sidecar_with(dir, recipes, log, &[])
}

/// [`start_sidecar`] with more global arguments (`--connections-dir DIR`).
fn start_sidecar_with(dir: &Path, recipes: &Path, log: &str, extra: &[&str]) -> Sidecar {
    let state = dir.join("state");
    let _ = std::fs::remove_file(state.join("sidecar.json"));
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(log))
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .env("INTERCOM_TOKEN", TOKEN)
        .env("INTERCOM_BACKUP_TOKEN", TOKEN)
        .env("WS_TOKEN", WS_TOKEN)
        .args(extra)
        .args(["--log", "warn", "--config"])
        .arg(dir.join("sluice.yaml"))
        .arg("--connectors")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors"))
        .arg("--recipes")
        .arg(recipes)
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start sluice run");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = std::fs::read_to_string(state.join("sidecar.json")) {
            let v: serde_json::Value = serde_json::from_str(&t).expect("sidecar.json");
            let addr = v["listen"].as_str().expect("listen").to_string();
            if http_status(&addr, "/livez") == Some(200) {
                return Sidecar { child, addr };
            }
        }
        assert!(Instant::now() < deadline, "the sidecar did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`start_sidecar_with`], then `/readyz` must say every file loaded; prints how long the
/// start took. The sidecar, and when it was started and ready (Unix ms).
fn start_ready(dir: &Path, recipes: &Path, extra: &[&str]) -> (Sidecar, i64, i64) {
    let t_start = chrono::Utc::now().timestamp_millis();
    let sc = start_sidecar_with(dir, recipes, "sidecar.log", extra);
    let t_ready = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        http_status(&sc.addr, "/readyz"),
        Some(200),
        "every connection and recipe loads (see sidecar.log)"
    );
    println!(
        "  started in {} ms (pid {})",
        t_ready - t_start,
        sc.child.id()
    );
    (sc, t_start, t_ready)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

fn config(dir: &Path, base_url: &str) {
    std::fs::write(
        dir.join("sluice.yaml"),
        format!(
            "connections:\n  intercom:\n    connector: intercom\n    base_url: {base_url}\n    token: ${{env:INTERCOM_TOKEN}}\n  intercom_backup:\n    connector: intercom\n    base_url: {base_url}\n    token: ${{env:INTERCOM_BACKUP_TOKEN}}\n"
        ),
    )
    .expect("sluice.yaml");
}

const TRIGGERS: [&str; 6] = [
    "intercom.new_contact",
    "intercom.contact_updated",
    "intercom.new_ticket",
    "intercom.ticket_updated",
    "intercom.new_conversation",
    "intercom.conversation_updated",
];

fn recipe_text(i: usize, every: u64, version: u64) -> String {
    format!(
        "id: r{i:04}\nconnection: intercom\ntrigger: {}\nschedule:\n  every: {every}s\n  jitter: {every}s\ndescription: version {version}\nsteps:\n  - id: out\n    action: emit\n    with:\n      to: out.jsonl\n      value: \"{{{{record.id}}}} v{version}\"\n",
        TRIGGERS[i % TRIGGERS.len()]
    )
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn soak(rt: &tokio::runtime::Runtime) {
    let minutes = arg("--minutes", 10);
    let n = arg("--recipes", 1000) as usize;
    let every = arg("--every", 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_path_buf();
    let sim = rt
        .block_on(sluice::sim::Sim::start(sluice::sim::SimConfig {
            contacts: 500,
            companies: 50,
            tickets: 200,
            conversations: 200,
            // The rate budget is not what this measures (the `actions_latency` and
            // `workspaces` benches do): 1,000 recipes every 10 s on one workspace ask 100
            // polls a second, more than half of Intercom's 166 a second before any paging.
            rate_limit_per_window: 100_000,
            ..sluice::sim::SimConfig::default()
        }))
        .expect("simulator");
    config(&dir, &sim.base_url);
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).expect("recipes dir");
    for i in 0..n {
        std::fs::write(
            recipes.join(format!("r{i:04}.yaml")),
            recipe_text(i, every, 0),
        )
        .expect("recipe");
    }
    println!("soak: {n} recipe instances on `every: {every}s, jitter: {every}s` for {minutes} min");
    let (mut sc, t_start, t_ready) = start_ready(&dir, &recipes, &[]);
    let total = Duration::from_secs(minutes * 60);
    let began = Instant::now();
    let mut max_rss = 0u64;
    let mut rss_samples = Vec::new();
    let mut killed = false;
    let mut reloads = 0u64;
    let mut last_reload = Instant::now();
    while began.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        // A change a second: each poll of an "updated" trigger rereads its 10-minute
        // lookback, about 100 records, one page.
        sim.sim.churn(1);
        if let Some((rss, _)) = rss_and_cpu(sc.child.id()) {
            max_rss = max_rss.max(rss);
            rss_samples.push(rss);
        }
        if last_reload.elapsed() >= Duration::from_secs(60) {
            if let Some((rss, cpu)) = rss_and_cpu(sc.child.id()) {
                println!(
                    "  {:>4.0} s: RSS {:.1} MB, sidecar CPU {:.1} s",
                    began.elapsed().as_secs_f64(),
                    rss as f64 / 1e6,
                    cpu
                );
            }
            reloads += 1;
            last_reload = Instant::now();
            for k in 0..50 {
                let i = (reloads as usize * 50 + k) % n;
                std::fs::write(
                    recipes.join(format!("r{i:04}.yaml")),
                    recipe_text(i, every, reloads),
                )
                .expect("rewrite recipe");
            }
        }
        if !killed && began.elapsed() >= total / 2 {
            killed = true;
            let t = chrono::Utc::now().timestamp_millis();
            signal(&sc.child, "-KILL");
            let _ = sc.child.wait();
            sc = start_sidecar(&dir, &recipes, "sidecar.log");
            let kill_downtime_ms = chrono::Utc::now().timestamp_millis() - t;
            println!(
                "  SIGKILL at {:.0} s, up again after {kill_downtime_ms} ms (pid {})",
                began.elapsed().as_secs_f64(),
                sc.child.id()
            );
        }
    }
    let t_stop = chrono::Utc::now().timestamp_millis();
    let metrics_ok = http_status(&sc.addr, "/metrics") == Some(200);
    signal(&sc.child, "-TERM");
    let stopping = Instant::now();
    let status = sc.child.wait().expect("wait");
    println!(
        "  SIGTERM: exit {:?} after {} ms; /metrics answered: {metrics_ok}",
        status.code(),
        stopping.elapsed().as_millis()
    );

    // The run history, per instance.
    let names: Vec<String> = (0..n).map(|i| format!("r{i:04}@intercom")).collect();
    tiling(&dir, &names, every, t_start, t_ready, t_stop);
    rss_samples.sort_unstable();
    println!(
        "  RSS: max {:.1} MB, median {:.1} MB; reloads: {reloads}",
        max_rss as f64 / 1e6,
        percentile(
            &rss_samples.iter().map(|r| *r as i64).collect::<Vec<_>>(),
            0.5
        ) as f64
            / 1e6
    );
}

/// Checks, per instance, that the run history's cycles tile the slots from the start to
/// the stop (none lost, none doubled) and prints the lateness of on-time cycles.
fn tiling(dir: &Path, names: &[String], every: u64, t_start: i64, t_ready: i64, t_stop: i64) {
    let store = sluice::store::SledStore::open(&dir.join("state")).expect("store");
    let (mut lost, mut doubled, mut covered, mut cycles) = (0u64, 0u64, 0u64, 0u64);
    let mut lateness: Vec<i64> = Vec::new();
    let mut worst: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let spec = sluice::spec::ScheduleSpec {
        every: Some(format!("{every}s")),
        jitter: Some(format!("{every}s")),
        ..Default::default()
    };
    let schedule = sluice::plan::recipe::parse_schedule(&spec).expect("schedule");
    for ns in names {
        let ns = ns.as_str();
        let rows = store.cycles(ns, 100_000).expect("history");
        let mut slots: Vec<(i64, u32, i64)> = rows
            .iter()
            .filter_map(|(_, json)| {
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                Some((
                    v["scheduled_at_ms"].as_i64()?,
                    v["slots"].as_u64()? as u32,
                    v["started_at_ms"].as_i64()?,
                ))
            })
            .collect();
        slots.sort();
        cycles += slots.len() as u64;
        // Every slot from the first after the scheduler took the recipe (between the start
        // and the sidecar answering) to the last before the stop, in order.
        let first_due = sluice::sidecar::slot_after(ns, &schedule, t_start).expect("slot");
        let latest_first = sluice::sidecar::slot_after(ns, &schedule, t_ready).expect("slot");
        let first_run = slots
            .first()
            .map(|(at, k, _)| at - (i64::from(*k) - 1) * every as i64 * 1000);
        let mut expect = match first_run {
            Some(f) if f >= first_due && f <= latest_first => f,
            _ => first_due,
        };
        let mut mine = (0u64, 0u64);
        for (at, k, started) in &slots {
            // The slots this cycle covers, oldest first.
            let mut covers = vec![*at];
            let mut t = *at;
            // Walk back `k - 1` slots.
            for _ in 1..*k {
                let prev = t - (every as i64) * 1000;
                covers.push(prev);
                t = prev;
            }
            covers.reverse();
            for c in covers {
                if c < expect {
                    mine.1 += 1;
                } else {
                    while expect < c {
                        mine.0 += 1;
                        expect = sluice::sidecar::slot_after(ns, &schedule, expect).unwrap();
                    }
                    covered += 1;
                    expect = sluice::sidecar::slot_after(ns, &schedule, expect).unwrap();
                }
            }
            if *k == 1 {
                lateness.push(started - at);
            }
        }
        // Slots due before the stop (with a second's grace) that no cycle covered.
        while expect < t_stop - 1000 {
            mine.0 += 1;
            expect = sluice::sidecar::slot_after(ns, &schedule, expect).unwrap();
        }
        lost += mine.0;
        doubled += mine.1;
        if mine != (0, 0) {
            worst.insert(ns.to_string(), mine);
        }
    }
    lateness.sort_unstable();
    println!("  cycles recorded: {cycles}, slots covered: {covered}");
    println!("  lost slots: {lost}, doubled slots: {doubled}");
    for (ns, (l, d)) in worst.iter().take(5) {
        println!("    {ns}: lost {l}, doubled {d}");
    }
    println!(
        "  tick lateness over {} on-time cycles: p50 {} ms, p99 {} ms, max {} ms",
        lateness.len(),
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        lateness.last().copied().unwrap_or(0)
    );
}

/// `workspaces`: one sidecar running `--recipes-per` recipes (default 10) for each of
/// `--workspaces` connections (default 100), every connection a file in a connections
/// directory and every recipe `connections: {label: customer}` — 1,000 instances — against
/// a simulator serving one workspace per token, each with its own data, clock and a rate
/// limit of `--limit` calls per 10 s (default 15). Data churns in ten workspaces a second.
/// Prints RSS, the calls and 429s per workspace (from each workspace's own log of answered
/// requests), and the slot tiling of every instance.
fn workspaces(rt: &tokio::runtime::Runtime) {
    let minutes = arg("--minutes", 3);
    let n_ws = arg("--workspaces", 100) as usize;
    let per = arg("--recipes-per", 10) as usize;
    let limit = arg("--limit", 15) as u32;
    let every = arg("--every", 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_path_buf();
    let tokens: Vec<String> = (0..n_ws).map(|i| format!("{WS_TOKEN}-{i:03}")).collect();
    let sim = rt
        .block_on(sluice::sim::Sim::start(sluice::sim::SimConfig {
            contacts: 20,
            companies: 5,
            tickets: 10,
            conversations: 10,
            tokens: tokens.clone(),
            workspace_per_token: true,
            rate_limit_per_window: limit,
            ..sluice::sim::SimConfig::default()
        }))
        .expect("simulator");
    let spaces = sim.sim.workspaces();
    assert_eq!(spaces.len(), n_ws);
    std::fs::write(dir.join("sluice.yaml"), "connections: {}\n").expect("sluice.yaml");
    let conns = dir.join("connections");
    std::fs::create_dir_all(&conns).expect("connections dir");
    for i in 0..n_ws {
        std::fs::write(
            conns.join(format!("ws{i:03}.yaml")),
            format!(
                "connector: intercom\nbase_url: {}\ntoken: ${{env:WS_TOKEN}}-{i:03}\nlabels: [customer]\n",
                sim.base_url
            ),
        )
        .expect("connection file");
    }
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).expect("recipes dir");
    for i in 0..per {
        let text = recipe_text(i, every, 0)
            .replace("connection: intercom", "connections: {label: customer}");
        std::fs::write(recipes.join(format!("r{i:04}.yaml")), text).expect("recipe");
    }
    let instances = n_ws * per;
    println!(
        "workspaces: {n_ws} workspaces × {per} recipes = {instances} instances on `every: {every}s, jitter: {every}s`, limit {limit} calls per 10 s per workspace, for {minutes} min"
    );
    let extra = ["--connections-dir", conns.to_str().expect("utf-8 path")];
    let (sc, t_start, t_ready) = start_ready(&dir, &recipes, &extra);
    let total = Duration::from_secs(minutes * 60);
    let began = Instant::now();
    let mut rss_samples = Vec::new();
    let mut tick = 0usize;
    while began.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        for k in 0..10 {
            spaces[(tick * 10 + k) % n_ws].churn(2);
        }
        tick += 1;
        if let Some((rss, _)) = rss_and_cpu(sc.child.id()) {
            rss_samples.push(rss as i64);
        }
        if tick % 60 == 0 {
            if let Some((rss, cpu)) = rss_and_cpu(sc.child.id()) {
                println!(
                    "  {:>4.0} s: RSS {:.1} MB, sidecar CPU {:.1} s",
                    began.elapsed().as_secs_f64(),
                    rss as f64 / 1e6,
                    cpu
                );
            }
        }
    }
    let t_stop = chrono::Utc::now().timestamp_millis();
    let (_, cpu) = rss_and_cpu(sc.child.id()).unwrap_or_default();
    signal(&sc.child, "-TERM");
    let mut child = sc.child;
    let status = child.wait().expect("wait");
    println!("  SIGTERM: exit {:?}", status.code());
    // Each workspace's own log of the requests it answered.
    let mut calls: Vec<usize> = Vec::new();
    let mut refused = 0usize;
    let mut busiest_window = 0usize;
    for ws in &spaces {
        let audit = ws.audit();
        refused += audit.iter().filter(|e| e.status == 429).count();
        let mut per_window: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &audit {
            *per_window.entry(e.at - e.at.rem_euclid(10)).or_default() += 1;
        }
        busiest_window = busiest_window.max(per_window.values().copied().max().unwrap_or(0));
        calls.push(audit.len());
    }
    calls.sort_unstable();
    println!(
        "  calls per workspace: min {}, median {}, max {}; busiest 10 s window of any workspace: {busiest_window} (limit {limit}); 429 answers: {refused}",
        calls[0],
        calls[calls.len() / 2],
        calls[calls.len() - 1]
    );
    let names: Vec<String> = (0..per)
        .flat_map(|r| (0..n_ws).map(move |w| format!("r{r:04}@ws{w:03}")))
        .collect();
    tiling(&dir, &names, every, t_start, t_ready, t_stop);
    rss_samples.sort_unstable();
    println!(
        "  RSS: max {:.1} MB, median {:.1} MB; sidecar CPU {cpu:.1} s over {:.0} s",
        rss_samples.last().copied().unwrap_or(0) as f64 / 1e6,
        percentile(&rss_samples, 0.5) as f64 / 1e6,
        (t_stop - t_start) as f64 / 1000.0
    );
}

fn idle(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_path_buf();
    let sim = rt
        .block_on(sluice::sim::Sim::start(sluice::sim::SimConfig::default()))
        .expect("simulator");
    config(&dir, &sim.base_url);
    let recipes: PathBuf = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes").into();
    let sc = start_sidecar(&dir, &recipes, "idle.log");
    std::thread::sleep(Duration::from_secs(5));
    let (_, cpu0) = rss_and_cpu(sc.child.id()).expect("proc");
    let t0 = Instant::now();
    let mut max_rss = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        let (rss, _) = rss_and_cpu(sc.child.id()).expect("proc");
        max_rss = max_rss.max(rss);
    }
    let (_, cpu1) = rss_and_cpu(sc.child.id()).expect("proc");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "idle: 12 shipped recipes, 60 s after start-up: CPU {:.3} s = {:.3} % of a core, max RSS {:.1} MB",
        cpu1 - cpu0,
        (cpu1 - cpu0) / secs * 100.0,
        max_rss as f64 / 1e6
    );
    signal(&sc.child, "-TERM");
    let mut child = sc.child;
    let _ = child.wait();
}

/// One HTTP GET on loopback: status, body bytes, seconds.
fn http_get(addr: &str, path: &str) -> (u16, usize, f64) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.find("\r\n\r\n").map_or(0, |i| buf.len() - i - 4);
    (status, body, secs)
}

fn pages(rt: &tokio::runtime::Runtime) {
    use sluice::history::{Hourly, RecordRun, RunId, StepRun};
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_path_buf();
    let sim = rt
        .block_on(sluice::sim::Sim::start(sluice::sim::SimConfig::default()))
        .expect("simulator");
    config(&dir, &sim.base_url);
    // Keep everything: the bench is about reading a full history.
    let mut cfg = std::fs::read_to_string(dir.join("sluice.yaml")).expect("config");
    cfg.push_str("history:\n  max_runs: 1000000\n  max_age: 3650d\n");
    std::fs::write(dir.join("sluice.yaml"), cfg).expect("config");
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).expect("recipes dir");
    let (instances, per) = (100usize, 10_000usize);
    for i in 0..instances {
        std::fs::write(
            recipes.join(format!("p{i:03}.yaml")),
            format!("id: p{i:03}\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1h\nsteps:\n  - id: out\n    action: emit\n    with:\n      to: out.jsonl\n"),
        )
        .expect("recipe");
    }
    let t = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    let big = RunId {
        started_ms: now - 1_000,
        id: u64::MAX / 2,
    };
    {
        let store = sluice::store::SledStore::open(&dir.join("state")).expect("store");
        for i in 0..instances {
            let ns = format!("p{i:03}@intercom");
            for k in 0..per {
                // One run a minute back from now, every tenth with an error.
                let started = now - (per - k) as i64 * 60_000;
                let err = if k % 10 == 0 {
                    "\"the API is down\""
                } else {
                    "null"
                };
                let json = format!(
                    r#"{{"recipe":"p{i:03}","polled":150,"skipped_seen":140,"filtered":2,"fired":8,"finished":8,"dead_letters":0,"unfinished":0,"cursor_before":{c},"cursor_after":{c},"error":{err},"interrupted":false,"elapsed_ms":42.0,"started_at_ms":{started},"kind":"scheduled","calls":2,"rate_limited":0}}"#,
                    c = started / 1000
                );
                let run = RunId {
                    started_ms: started,
                    id: (i * per + k) as u64,
                };
                let hour = Hourly {
                    cycles: 1,
                    fired: 8,
                    failed: u64::from(k % 10 == 0),
                };
                store.record_cycle(&ns, run, &json, hour).expect("row");
            }
        }
        // One big run of p000: 10,000 records of three steps each.
        let rows: Vec<RecordRun> = (0..10_000)
            .map(|n| RecordRun {
                key: format!("contact-{n}"),
                outcome: "finished".into(),
                steps: (0..3)
                    .map(|s| StepRun {
                        step: format!("step{s}"),
                        sent: Some(serde_json::json!({"id": format!("contact-{n}"), "body": "x".repeat(200)})),
                        got: serde_json::json!({"type": "note", "id": n, "body": "y".repeat(600)}),
                        skipped: false,
                        error: None,
                    })
                    .collect(),
                error: None,
            })
            .collect();
        store
            .record_cycle(
                "p000@intercom",
                big,
                r#"{"recipe":"p000","fired":10000,"finished":10000,"kind":"scheduled"}"#,
                Hourly::default(),
            )
            .expect("big run");
        for (n, chunk) in rows.chunks(1_000).enumerate() {
            store
                .record_runs("p000@intercom", big, (n * 1_000) as u32, chunk)
                .expect("records");
        }
        // 10,000 dead letters.
        let letters: Vec<sluice::store::DeadLetter> = (0..10_000)
            .map(|n| sluice::store::DeadLetter {
                recipe: format!("p{:03}@intercom", n % instances),
                key: format!("contact-{n}"),
                ts: now / 1000,
                record: serde_json::json!({"id": format!("contact-{n}"), "name": "z".repeat(300)}),
                done: vec![],
                failed_step: "out".into(),
                class: sluice::failure::FailureClass::Fatal,
                error: format!("POST /contacts/{n}/notes failed with HTTP 422"),
                request: Some(format!("POST /contacts/{n}/notes")),
                status: Some(422),
                at: now / 1000,
            })
            .collect();
        for chunk in letters.chunks(1_000) {
            store
                .commit(
                    &chunk[0].recipe,
                    &sluice::store::Commit {
                        expected: store.checkpoint(&chunk[0].recipe).expect("cp"),
                        checkpoint: sluice::store::Checkpoint {
                            cursor: now / 1000,
                            floor: 0,
                            high: now / 1000,
                        },
                        finished: &[],
                        dead: chunk,
                        keep_from: 0,
                        known: None,
                    },
                )
                .expect("dead letters");
        }
    }
    println!(
        "pages: {} history rows, 10,000 records in one run, 10,000 dead letters written in {:.1} s",
        instances * per + 1,
        t.elapsed().as_secs_f64()
    );
    let sc = start_sidecar(&dir, &recipes, "pages.log");
    let big_path = format!("/runs/p000@intercom/{big}");
    let paths = [
        "/".to_string(),
        "/recipes/p050@intercom".into(),
        "/recipes/p050@intercom?outcome=error".into(),
        "/recipes/p050@intercom?outcome=dead".into(),
        big_path.clone(),
        format!("{big_path}?from=9975"),
        "/dead-letters".into(),
        "/dead-letters?q=contact-9999".into(),
        "/dead-letters?recipe=p077".into(),
        "/dead-letters/5000".into(),
        "/api/instances/p050@intercom/runs".into(),
        format!("/api/runs/p000@intercom/{big}?limit=100"),
        "/metrics".into(),
    ];
    println!(
        "  {:<52} {:>6} {:>9} {:>9} {:>9}",
        "page", "status", "p50 ms", "max ms", "bytes"
    );
    for p in &paths {
        let mut times = Vec::new();
        let (mut status, mut bytes) = (0, 0);
        for _ in 0..20 {
            let (s, b, secs) = http_get(&sc.addr, p);
            status = s;
            bytes = b;
            times.push((secs * 1e6) as i64);
        }
        times.sort_unstable();
        println!(
            "  {:<52} {:>6} {:>9.1} {:>9.1} {:>9}",
            p,
            status,
            percentile(&times, 0.5) as f64 / 1e3,
            *times.last().unwrap_or(&0) as f64 / 1e3,
            bytes
        );
    }
    signal(&sc.child, "-TERM");
    let mut child = sc.child;
    let _ = child.wait();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "idle") {
        idle(&rt);
    } else if args.iter().any(|a| a == "pages") {
        pages(&rt);
    } else if args.iter().any(|a| a == "workspaces") {
        workspaces(&rt);
    } else {
        soak(&rt);
    }
}
