//! sluice's benchmarks: `cargo bench --bench bench [NAME…]`. Prints figures; asserts nothing
//! about time. Results are recorded in docs/BENCHMARKS.md.
//!
//! * `sim_search_50k` — `sluice sim` (its own process) serving 50,000 contacts through
//!   `POST /contacts/search` in pages of 150 over loopback, read by `sluice poll`'s code path
//!   (trigger `contact_updated`). Reports the simulator's CPU and the client's CPU separately.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Map;
use sluice::http::Connection;
use sluice::spec::ConnectionSpec;

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
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["sim", "--port", "0", "--frozen-clock"])
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
    let spec = ConnectionSpec {
        connector: "intercom".into(),
        region: None,
        base_url: Some(url),
        api_version: None,
        token: Some("sim-token".into()),
        timezone: Some("Europe/Dublin".into()),
        timeout_secs: None,
        retry: None,
    };
    let conn = Connection::new("bench", c.clone(), &spec, &|_| None).expect("connection");
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
        "sim_search_50k: {n} contacts in {} pages: simulator CPU {:.2} s; client (sluice poll path, full JSON values) CPU {:.2} s = {:.1} µs/record; wall {:.2} s",
        poll.pages,
        sim_cpu,
        cpu,
        cpu * 1e6 / n as f64,
        wall
    );
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
}
