//! The sidecar (`sluice run` without `--once`) as a child process against the simulator:
//! schedules, metrics that agree with the run history, hot reloads (file watching and
//! SIGHUP), graceful and hurried shutdown, the CLI's state, dead-letter and `run --once`
//! commands through its API, and who may use that API. The simulator's recorded calls, the
//! emitted lines and the state store (opened once the sidecar is gone) are the oracles.
//!
//! Nothing sleeps for a fixed time where a condition can be polled: every wait polls every
//! 50 ms up to a deadline and fails naming what it waited for, with the sidecar's log.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::sim::{FailRule, Faults, Kind, SimConfig};
use sluice::store::{SledStore, Store};

use crate::util::{eventually, run_async, Run, SimEnv};

/// How long a condition that should hold "within a few seconds" may take.
const SOON: Duration = Duration::from_secs(10);
/// How long a reload may take to show (wanted: about 2 s; the watcher debounces 200 ms).
const RELOAD: Duration = Duration::from_secs(3);

/// A simulator whose clock runs from now, with nothing seeded: records created during a
/// test fall after the cursors the sidecar's cycles take from the server's clock.
async fn live_sim() -> SimEnv {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    SimEnv::start(SimConfig {
        start_time: now,
        frozen_clock: false,
        ..SimEnv::config(0, 0, 0, 0)
    })
    .await
}

/// A contact created now on the simulator; its id.
fn contact(env: &SimEnv, email: &str) -> String {
    env.sim()
        .create(Kind::Contact, json!({"email": email, "role": "user"}))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A recipe on `every: 1s` that emits each new contact's id to `to`.
fn emit_recipe(id: &str, to: &Path) -> String {
    format!(
        "id: {id}\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{{{record.id}}}}\"\n      to: {}\n",
        to.display()
    )
}

/// A recipe on `every: 1s` that adds a note to each new contact, `concurrency` at a time.
fn note_recipe(id: &str, concurrency: usize) -> String {
    format!(
        "id: {id}\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nconcurrency: {concurrency}\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{{{record.id}}}}\"\n      body: \"hello\"\n"
    )
}

/// The JSON strings emitted to `file` so far, whole lines only (none when it does not exist
/// yet).
fn emitted(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// How many times each value occurs.
fn tally<'a>(values: impl IntoIterator<Item = &'a String>) -> HashMap<&'a str, usize> {
    let mut n = HashMap::new();
    for v in values {
        *n.entry(v.as_str()).or_default() += 1;
    }
    n
}

/// Successful `POST /contacts/{id}/notes` the simulator answered, by contact id.
fn notes_by_contact(env: &SimEnv) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in env.sim().audit() {
        if e.method == "POST" && e.status > 0 && e.status < 300 {
            if let Some(id) = e
                .path
                .strip_prefix("/contacts/")
                .and_then(|p| p.strip_suffix("/notes"))
            {
                *n.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    n
}

/// Successful calls with this method and path.
fn calls(env: &SimEnv, method: &str, path: &str) -> usize {
    env.sim()
        .audit()
        .iter()
        .filter(|e| e.method == method && e.path == path && e.status > 0 && e.status < 300)
        .count()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Writes `text` to `path` through a temporary file and a rename, as editors do.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------
// The sidecar process and its HTTP face.

/// A `sluice run --listen 127.0.0.1:0 …` child process over a [`SimEnv`]'s workspace,
/// killed on drop.
struct Sidecar {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`, from `<state dir>/sidecar.json`.
    base: String,
    /// Its stderr (the log).
    log: PathBuf,
    http: reqwest::Client,
    exited: Option<std::process::ExitStatus>,
}

/// One sample of the metrics exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug)]
struct Metrics(Vec<Sample>);

impl Metrics {
    /// Parses the exposition: every line is `# …` or `name{labels} value`; the last is
    /// `# EOF`. Panics naming the first line that is neither.
    fn parse(text: &str) -> Metrics {
        assert!(
            text.trim_end().ends_with("# EOF"),
            "OpenMetrics text ends with `# EOF`:\n{text}"
        );
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            out.push(
                parse_sample(line).unwrap_or_else(|| {
                    panic!("a metrics line that does not parse: {line:?}\n{text}")
                }),
            );
        }
        Metrics(out)
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Whether any sample carries `recipe="…"`.
    fn mentions_recipe(&self, recipe: &str) -> bool {
        self.0
            .iter()
            .any(|s| s.labels.get("recipe").map(String::as_str) == Some(recipe))
    }
}

/// `name{k="v",…} value` or `name value`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r;
        loop {
            if let Some(after) = r.strip_prefix('}') {
                r = after;
                break;
            }
            let eq = r.find('=')?;
            let key = &r[..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let mut chars = r[eq + 1..].strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            r = &r[eq + 1 + 1 + end + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
        rest = r;
    }
    let value = rest.strip_prefix(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

impl Sidecar {
    /// Starts `sluice run --listen 127.0.0.1:0 EXTRA… --recipes <ws>/recipes --state-dir
    /// <ws>/state` and waits for `<state dir>/sidecar.json` to name it.
    async fn start(env: &SimEnv, extra: &[&str]) -> Sidecar {
        Sidecar::start_with(env, "127.0.0.1:0", extra, None).await
    }

    /// [`Sidecar::start`] on `listen`, with `SLUICE_ADMIN_TOKEN=token` when given.
    async fn start_with(
        env: &SimEnv,
        listen: &str,
        extra: &[&str],
        token: Option<&str>,
    ) -> Sidecar {
        let ws = env.ws.path();
        let state = ws.join("state");
        let discovery = state.join("sidecar.json");
        // A killed sidecar leaves its file behind.
        let _ = std::fs::remove_file(&discovery);
        std::fs::create_dir_all(ws.join("recipes")).unwrap();
        let n = std::fs::read_dir(ws)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("sidecar-"))
            })
            .count();
        let log = ws.join(format!("sidecar-{n}.log"));
        let mut args = vec!["run", "--listen", listen];
        args.extend_from_slice(extra);
        let mut c = env.cmd(&args);
        if let Some(t) = token {
            c.env("SLUICE_ADMIN_TOKEN", t);
        }
        c.arg("--recipes")
            .arg(ws.join("recipes"))
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = c.spawn().expect("start the sidecar");
        let pid = child.id();
        let mut sc = Sidecar {
            child,
            pid,
            base: String::new(),
            log,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            exited: None,
        };
        let listen = {
            let sc = &mut sc;
            let deadline = Instant::now() + SOON;
            loop {
                if let Some(st) = sc.child.try_wait().unwrap() {
                    panic!("the sidecar exited at start ({st}):\n{}", sc.log());
                }
                let found = std::fs::read_to_string(&discovery)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .filter(|v| v["pid"] == json!(pid));
                if let Some(v) = found {
                    let loopback = listen.starts_with("127.");
                    assert_eq!(v["token_required"], json!(!loopback), "{v}");
                    break v["listen"].as_str().unwrap().to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "no {} after {SOON:?}:\n{}",
                    discovery.display(),
                    sc.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(!listen.ends_with(":0"), "{listen}");
        // A sidecar on every address is reached on loopback.
        sc.base = format!("http://{}", listen.replace("0.0.0.0:", "127.0.0.1:"));
        sc
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `POST`, with the `x-sluice-client` header or without it.
    async fn post(&self, path: &str, client_header: bool) -> (u16, String) {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if client_header {
            req = req.header("x-sluice-client", "test");
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()));
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `GET /api/status`.
    async fn status(&self) -> Value {
        let (code, body) = self.get("/api/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The status of instance `name` (`recipe@connection`), if the scheduler runs it.
    async fn instance(&self, name: &str) -> Option<Value> {
        self.status().await["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance"] == name)
            .cloned()
    }

    /// `GET /metrics`, parsed (every line must parse).
    async fn metrics(&self) -> Metrics {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        Metrics::parse(&r.text().await.unwrap())
    }

    /// Waits for `probe`, failing with this sidecar's log.
    async fn until<T, F, Fut>(&self, what: &str, within: Duration, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        eventually(what, within, || self.log(), probe).await
    }

    /// Waits until instance `name` has finished a cycle that started after `after_ms`;
    /// returns its status then.
    async fn cycle_after(&self, name: &str, after_ms: i64) -> Value {
        self.until(
            &format!("a cycle of `{name}` started after {after_ms}"),
            SOON,
            || async {
                self.instance(name)
                    .await
                    .filter(|i| i["last"]["started_at_ms"].as_i64() > Some(after_ms))
            },
        )
        .await
    }

    /// Pauses instance `name` and waits until no cycle of it runs.
    async fn pause(&self, name: &str) {
        let (code, body) = self
            .post(&format!("/api/instances/{name}/pause"), true)
            .await;
        assert_eq!(code, 200, "{body}");
        self.until(&format!("`{name}` idle after pausing"), SOON, || async {
            self.instance(name)
                .await
                .filter(|i| i["paused"] == true && i["running"] == false)
        })
        .await;
    }

    /// Sends `kill -s SIG`.
    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -s {sig} {}", self.pid);
    }

    /// Waits for the process to exit; its exit code (-signal when a signal ended it) and how
    /// long that took.
    async fn wait_exit(&mut self, within: Duration) -> (i32, Duration) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.exited = Some(st);
                let code = st.code().unwrap_or_else(|| {
                    -std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
                });
                return (code, t.elapsed());
            }
            assert!(
                t.elapsed() < within,
                "the sidecar did not exit within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the exit code and how long it took.
    async fn stop(&mut self) -> (i32, Duration) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30)).await
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw HTTP/1.1 request with exactly these headers; the status and body.
async fn raw_request(base: &str, request_head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request_head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The run history of `ns` in the store (the sidecar must be gone): oldest first.
fn history(env: &SimEnv, ns: &str) -> Vec<Value> {
    let store = SledStore::open(&env.ws.path().join("state")).unwrap();
    let mut rows: Vec<Value> = store
        .cycles(ns, 100_000)
        .unwrap()
        .into_iter()
        .map(|(_, j)| serde_json::from_str(&j).unwrap())
        .collect();
    rows.reverse();
    rows
}

fn sum_of(rows: &[Value], field: &str) -> f64 {
    rows.iter().map(|r| r[field].as_f64().unwrap()).sum()
}

// ---------------------------------------------------------------------------------------
// Schedules and metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_recipes_fire_new_records_once_and_the_counters_match_the_run_history() {
    let env = live_sim().await;
    let out = env.ws.path().join("out.jsonl");
    env.write_recipe(&emit_recipe("tick", &out));
    let mut sc = Sidecar::start(&env, &[]).await;
    let started = unix_ms();
    sc.cycle_after("tick@intercom", 0).await;

    // Two batches of new records: each is fired within a few seconds, once.
    let mut ids = Vec::new();
    for batch in [3, 2] {
        let created = Instant::now();
        for i in 0..batch {
            ids.push(contact(&env, &format!("c{}@x.io", ids.len() + i)));
        }
        let want = ids.len();
        sc.until(&format!("{want} ids emitted"), SOON, || async {
            (emitted(&out).len() >= want).then_some(())
        })
        .await;
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "fired {:?} after the records were created",
            created.elapsed()
        );
    }
    // Two more cycles repeat nothing.
    let last = sc.instance("tick@intercom").await.unwrap()["last"]["started_at_ms"]
        .as_i64()
        .unwrap();
    let next = sc.cycle_after("tick@intercom", last).await["last"]["started_at_ms"]
        .as_i64()
        .unwrap();
    sc.cycle_after("tick@intercom", next).await;
    let lines = emitted(&out);
    let counts = tally(&lines);
    assert_eq!(lines.len(), ids.len(), "{lines:?}");
    for id in &ids {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} in {lines:?}");
    }

    // Stop the schedule, then read what the counters say.
    sc.pause("tick@intercom").await;
    let m = sc.metrics().await;
    let tick = [("recipe", "tick"), ("connection", "intercom")];
    let status = sc.instance("tick@intercom").await.unwrap();
    let (code, took) = sc.stop().await;
    assert_eq!(code, 0, "{}", sc.log());
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The run history is the cycle reports: the counters must agree with them.
    let rows = history(&env, "tick@intercom");
    let cycles = m.sum("sluice_cycles_total", &tick);
    assert_eq!(
        cycles,
        rows.len() as f64,
        "cycles counted vs cycles in the run history:\n{rows:#?}"
    );
    assert_eq!(
        m.sum(
            "sluice_cycles_total",
            &[("recipe", "tick"), ("result", "ok")]
        ),
        cycles
    );
    for (metric, field) in [
        ("sluice_records_fired_total", "fired"),
        ("sluice_records_polled_total", "polled"),
        ("sluice_records_seen_total", "skipped_seen"),
        ("sluice_records_finished_total", "finished"),
    ] {
        assert_eq!(m.sum(metric, &tick), sum_of(&rows, field), "{metric}");
    }
    assert_eq!(m.sum("sluice_records_fired_total", &tick), ids.len() as f64);
    assert_eq!(
        m.sum("sluice_tick_lateness_seconds_count", &tick),
        cycles,
        "every cycle here was scheduled"
    );
    assert_eq!(m.sum("sluice_cycle_duration_seconds_count", &tick), cycles);
    assert_eq!(
        status["last"]["started_at_ms"],
        rows.last().unwrap()["started_at_ms"]
    );
    assert!(m.sum("sluice_workspace_calls_total", &[("workspace", "intercom")]) >= cycles);

    // On schedule: every one-second slot from the first to the last is covered by exactly
    // one cycle (a slot skipped because the previous cycle overran is covered by the
    // catch-up cycle after it, which says how many slots it covers), and a cycle for one
    // slot starts just after it.
    let mut slots: Vec<i64> = Vec::new();
    let mut covered = 0;
    for r in &rows {
        let slot = r["scheduled_at_ms"].as_i64().expect("a scheduled cycle");
        assert_eq!(
            slot % 1000,
            0,
            "slots of `every: 1s` are whole seconds: {r}"
        );
        assert!(
            slots.last() < Some(&slot),
            "slots in order, once each: {rows:#?}"
        );
        slots.push(slot);
        let n = r["slots"].as_i64().unwrap();
        covered += n;
        if n == 1 {
            let late = r["started_at_ms"].as_i64().unwrap() - slot;
            assert!(
                (0..1000).contains(&late),
                "started {late} ms after its slot: {r}"
            );
        }
    }
    let span = (slots.last().unwrap() - slots[0]) / 1000 + 1;
    assert_eq!(
        covered, span,
        "slots covered from {} on: {rows:#?}",
        slots[0]
    );
    assert!(
        slots[0] - started < 2000,
        "the first cycle came {} ms after the start",
        slots[0] - started
    );
}

// ---------------------------------------------------------------------------------------
// Reloads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_added_removed_and_broken_recipe_files_reload_without_a_restart() {
    let env = live_sim().await;
    let ws = env.ws.path().to_path_buf();
    let recipes = ws.join("recipes");
    let (a1, a2, b_out) = (ws.join("a1.jsonl"), ws.join("a2.jsonl"), ws.join("b.jsonl"));
    env.write_recipe(&emit_recipe("a", &a1));
    let sc = Sidecar::start(&env, &[]).await;
    sc.cycle_after("a@intercom", 0).await;
    let first = contact(&env, "first@x.io");
    sc.until("the first record in a1", SOON, || async {
        (emitted(&a1) == [first.clone()]).then_some(())
    })
    .await;
    let reloads_ok = |m: &Metrics| m.sum("sluice_reloads_total", &[("result", "ok")]);
    let before = reloads_ok(&sc.metrics().await);

    // An edit (a new emit target) takes effect without a restart.
    std::fs::write(recipes.join("a.yaml"), emit_recipe("a", &a2)).unwrap();
    let edited = Instant::now();
    sc.until("the edit reloaded", RELOAD, || async {
        (reloads_ok(&sc.metrics().await) > before).then_some(())
    })
    .await;
    eprintln!("edit reloaded after {:?}", edited.elapsed());
    let second = contact(&env, "second@x.io");
    sc.until("the second record in a2", SOON, || async {
        (emitted(&a2) == [second.clone()]).then_some(())
    })
    .await;
    assert_eq!(emitted(&a1), [first.as_str()], "the old version stopped");

    // A new file starts running…
    std::fs::write(recipes.join("b.yaml"), emit_recipe("b", &b_out)).unwrap();
    let added = unix_ms();
    sc.until("`b` running", RELOAD, || async {
        sc.instance("b@intercom").await.map(|_| ())
    })
    .await;
    sc.cycle_after("b@intercom", added).await;
    let third = contact(&env, "third@x.io");
    sc.until("the third record from a and b", SOON, || async {
        (emitted(&b_out).contains(&third) && emitted(&a2).contains(&third)).then_some(())
    })
    .await;
    // …and, removed, stops: gone from the status and the metrics, no more cycles.
    assert!(sc.metrics().await.mentions_recipe("b"));
    std::fs::remove_file(recipes.join("b.yaml")).unwrap();
    sc.until("`b` gone from /api/status", RELOAD, || async {
        sc.instance("b@intercom").await.is_none().then_some(())
    })
    .await;
    let m = sc.metrics().await;
    assert!(!m.mentions_recipe("b"), "{m:?}");
    let b_lines = emitted(&b_out);
    let fourth = contact(&env, "fourth@x.io");
    sc.until("the fourth record from a", SOON, || async {
        emitted(&a2).contains(&fourth).then_some(())
    })
    .await;
    // Another cycle of `a` later, `b` still has not fired it.
    sc.cycle_after("a@intercom", unix_ms()).await;
    assert_eq!(emitted(&b_out), b_lines, "the removed recipe still runs");
    assert!(!sc.metrics().await.mentions_recipe("b"));

    // A broken edit: not ready, naming the file; the last good version keeps running.
    let (code, body) = sc.get("/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    std::fs::write(
        recipes.join("a.yaml"),
        emit_recipe("a", &a1).replace("intercom.new_contact", "intercom.no_such_trigger"),
    )
    .unwrap();
    let (code, body) = sc
        .until("/readyz 503", RELOAD, || async {
            let (code, body) = sc.get("/readyz").await;
            (code != 200).then_some((code, body))
        })
        .await;
    assert_eq!(code, 503, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "not ready:", "{body}");
    // One `- ` line per problem (a diagnostic's help goes on indented lines after it).
    let problems: Vec<&&str> = lines.iter().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(problems.len(), 1, "{body}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("- ") || l.starts_with("  ")),
        "{body}"
    );
    assert!(
        problems[0].contains(&recipes.join("a.yaml").display().to_string())
            && problems[0].contains("its last good version runs")
            && problems[0].contains("no_such_trigger"),
        "{body}"
    );
    let fifth = contact(&env, "fifth@x.io");
    sc.until(
        "the fifth record from a's last good version",
        SOON,
        || async { emitted(&a2).contains(&fifth).then_some(()) },
    )
    .await;
    assert_eq!(emitted(&a1), [first.as_str()]);
    assert_eq!(
        sc.status().await["problems"].as_array().unwrap().len(),
        1,
        "/api/status lists the problem too"
    );
    // A new file that never loaded does not run, and says so.
    std::fs::write(recipes.join("c.yaml"), "id: c\nconnection: intercom\n").unwrap();
    let body = sc
        .until("c.yaml reported", RELOAD, || async {
            let (_, body) = sc.get("/readyz").await;
            body.contains("c.yaml").then_some(body)
        })
        .await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("- ") && l.contains("c.yaml") && l.contains("not running")),
        "{body}"
    );
    assert!(sc.instance("c@intercom").await.is_none());
    // Fixed (and the never-good file removed): ready again, running the fixed text.
    std::fs::remove_file(recipes.join("c.yaml")).unwrap();
    write_atomically(&recipes.join("a.yaml"), &emit_recipe("a", &a1));
    sc.until("/readyz 200 again", RELOAD, || async {
        let (code, body) = sc.get("/readyz").await;
        (code == 200 && body == "ready\n").then_some(())
    })
    .await;
    let sixth = contact(&env, "sixth@x.io");
    sc.until("the sixth record in a1", SOON, || async {
        emitted(&a1).contains(&sixth).then_some(())
    })
    .await;
    assert!(!emitted(&a2).contains(&sixth));
    // One process all along.
    assert_eq!(sc.status().await["pid"], json!(sc.pid));
    let all: Vec<String> = [emitted(&a1), emitted(&a2)].concat();
    for (id, n) in tally(&all) {
        assert_eq!(n, 1, "{id} fired {n} times by `a`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_watch_only_sighup_reloads() {
    let env = live_sim().await;
    let ws = env.ws.path().to_path_buf();
    env.write_recipe(&emit_recipe("a", &ws.join("a.jsonl")));
    let sc = Sidecar::start(&env, &["--no-watch"]).await;
    sc.cycle_after("a@intercom", 0).await;
    env.write_recipe(&emit_recipe("b", &ws.join("b.jsonl")));
    // Not watched: no reload for a while (the watcher would take ~200 ms).
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        assert!(
            sc.instance("b@intercom").await.is_none(),
            "reloaded without SIGHUP under --no-watch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sc.signal("HUP");
    sc.until("`b` running after SIGHUP", RELOAD, || async {
        sc.instance("b@intercom").await.map(|_| ())
    })
    .await;
    let id = contact(&env, "hup@x.io");
    sc.until("the record from b", SOON, || async {
        emitted(&ws.join("b.jsonl")).contains(&id).then_some(())
    })
    .await;
    assert_eq!(sc.status().await["pid"], json!(sc.pid));
}

// ---------------------------------------------------------------------------------------
// Shutdown.

/// `n` contacts, created before the sidecar starts; their ids.
fn contacts(env: &SimEnv, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| contact(env, &format!("s{i}@x.io")))
        .collect()
}

fn set_latency(env: &SimEnv, ms: u64) {
    env.sim().set_faults(Faults {
        latency_ms: ms,
        ..Faults::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_cycle_finishes_the_steps_under_way_and_loses_or_repeats_nothing() {
    const N: usize = 20;
    let env = live_sim().await;
    env.write_recipe(&note_recipe("notes", 2));
    let ids = contacts(&env, N);
    // 200 ms per request, two chains at once: the first cycle takes about two seconds.
    set_latency(&env, 200);
    let mut sc = Sidecar::start(&env, &["--shutdown-timeout", "10s"]).await;
    sc.until("two notes sent", SOON, || async {
        (notes_by_contact(&env).len() >= 2).then_some(())
    })
    .await;
    let running = sc.instance("notes@intercom").await.unwrap();
    assert_eq!(running["running"], true, "{running}");
    sc.signal("TERM");
    let (code, took) = sc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, 0, "{}", sc.log());
    assert!(
        took < Duration::from_secs(10),
        "within --shutdown-timeout: {took:?}"
    );
    let done = notes_by_contact(&env);
    assert!(
        done.len() < N,
        "the cycle was not cut short ({} of {N} done): the test proves nothing",
        done.len()
    );
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    assert!(!env.ws.path().join("state/sidecar.json").exists());
    // The stopped cycle says so in the run history, and left nothing half done.
    let rows = history(&env, "notes@intercom");
    let last = rows.last().unwrap();
    assert_eq!(last["interrupted"], true, "{last}");
    assert_eq!(last["unfinished"], 0, "{last}");
    assert_eq!(sum_of(&rows, "finished"), done.len() as f64, "{rows:#?}");

    // Restarted, it does the rest, and nothing twice.
    set_latency(&env, 0);
    let sc = Sidecar::start(&env, &[]).await;
    sc.until(&format!("{N} contacts with a note"), SOON, || async {
        (notes_by_contact(&env).len() == N).then_some(())
    })
    .await;
    sc.cycle_after("notes@intercom", unix_ms()).await;
    let notes = notes_by_contact(&env);
    for id in &ids {
        assert_eq!(notes.get(id), Some(&1), "{id}: {notes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_and_a_restart_resumes_without_losing_anything() {
    const N: usize = 10;
    let env = live_sim().await;
    env.write_recipe(&note_recipe("notes", 1));
    let ids = contacts(&env, N);
    // A second per request, one chain at a time: once the first note is answered, the
    // second is in flight for a second, and the graceful stop waits for it.
    set_latency(&env, 1000);
    let mut sc = Sidecar::start(&env, &["--shutdown-timeout", "20s"]).await;
    sc.until("the first note", SOON, || async {
        (!notes_by_contact(&env).is_empty()).then_some(())
    })
    .await;
    sc.signal("TERM");
    // The second signal is listened for once the first is handled (its warning logged).
    sc.until("the first signal handled", SOON, || async {
        sc.log().contains("WARN Stopping:").then_some(())
    })
    .await;
    sc.signal("TERM");
    let (code, took) = sc.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(code, 130, "{}", sc.log());
    assert!(took < Duration::from_secs(1), "at once: {took:?}");
    let before = notes_by_contact(&env);
    assert!(before.len() < N, "{before:?}");

    // Restart: every record gets its note. The journal resumes the chain the second signal
    // cut off; its note may already have reached the server (the request was in flight), so
    // that record, and only that one, may get a second.
    set_latency(&env, 0);
    let sc = Sidecar::start(&env, &[]).await;
    sc.until(&format!("{N} contacts with a note"), SOON, || async {
        (notes_by_contact(&env).len() == N).then_some(())
    })
    .await;
    sc.cycle_after("notes@intercom", unix_ms()).await;
    let notes = notes_by_contact(&env);
    let repeated: Vec<_> = notes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.len() <= 1, "{notes:?}");
    for (id, n) in &repeated {
        assert_eq!(**n, 2, "{id}");
        assert!(
            !before.contains_key(*id) || before[*id] == 1,
            "{id}: only the chain in flight at the kill may repeat"
        );
    }
    for id in &ids {
        assert!(notes.contains_key(id), "{id} lost: {notes:?}");
    }
    let st = env.sluice_in(&["state", "show", "--json"], None).await;
    st.assert_ok();
    assert_eq!(st.json()[0]["state"]["in_journal"], 0, "{}", st.stdout);
}

// ---------------------------------------------------------------------------------------
// The CLI against a running sidecar.

const CHAIN: &str = "id: chain\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"step one\"\n  - id: rename\n    action: intercom.update_contact\n    with:\n      id: \"{{record.id}}\"\n      name: \"done\"\n    on_error: stop\n";

/// The next `PUT /contacts/…` fails for good (422).
fn fail_next_rename(env: &SimEnv) {
    env.sim().set_faults(Faults {
        fail_next: vec![FailRule::once(Some("PUT"), "/contacts/", 422)],
        ..Faults::default()
    });
}

async fn dead_letter_ids(sc: &Sidecar) -> Vec<u64> {
    let (code, body) = sc.get("/api/dead-letters").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect()
}

async fn cli(env: &SimEnv, args: &[&str]) -> Run {
    env.sluice_in(args, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_dead_letter_commands_work_through_a_running_sidecar() {
    let env = live_sim().await;
    env.write_recipe(CHAIN);
    let mut sc = Sidecar::start(&env, &[]).await;
    sc.cycle_after("chain@intercom", 0).await;
    fail_next_rename(&env);
    let dead = contact(&env, "dead@x.io");
    let letter = sc
        .until("a dead letter", SOON, || async {
            dead_letter_ids(&sc).await.first().copied()
        })
        .await
        .to_string();
    sc.pause("chain@intercom").await;

    // The same commands, the same answers, with the sidecar holding the store and without.
    let commands: [&[&str]; 5] = [
        &["state", "show"],
        &["state", "show", "--json"],
        &["state", "show", "--recipe", "chain"],
        &["dead-letters", "list"],
        &["dead-letters", "show", &letter],
    ];
    let mut through_sidecar = Vec::new();
    for c in commands {
        let r = cli(&env, c).await;
        r.assert_ok();
        through_sidecar.push(r.stdout);
    }
    assert!(
        through_sidecar[0].starts_with("chain@intercom: cursor ")
            && through_sidecar[0].contains("1 dead letters"),
        "{}",
        through_sidecar[0]
    );
    assert!(
        through_sidecar[3].contains("step `rename`") && through_sidecar[3].contains("HTTP 422"),
        "{}",
        through_sidecar[3]
    );
    let (code, _) = sc.stop().await;
    assert_eq!(code, 0, "{}", sc.log());
    for (c, seen) in commands.iter().zip(&through_sidecar) {
        let r = cli(&env, c).await;
        r.assert_ok();
        assert_eq!(
            &r.stdout,
            seen,
            "`{}` differs without the sidecar",
            c.join(" ")
        );
    }

    // Replay through the sidecar once the cause is gone: it finishes from the failed step.
    let sc = Sidecar::start(&env, &[]).await;
    env.sim().set_faults(Faults::default());
    let r = cli(&env, &["dead-letters", "replay", &letter]).await;
    r.assert_ok();
    assert!(
        r.stdout.starts_with("replayed: ") && r.stdout.contains("from step `rename`"),
        "{}",
        r.stdout
    );
    let note_path = format!("/contacts/{dead}/notes");
    let put_path = format!("/contacts/{dead}");
    assert_eq!(
        calls(&env, "POST", &note_path),
        1,
        "the note is not sent again"
    );
    assert_eq!(calls(&env, "PUT", &put_path), 1);
    assert_eq!(
        env.sim().record(Kind::Contact, &dead).unwrap()["name"],
        "done"
    );
    let r = cli(&env, &["dead-letters", "list"]).await;
    assert_eq!(r.stdout, "no dead letters\n");
    let r = cli(&env, &["dead-letters", "replay", &letter]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("no dead letter {letter}")),
        "{}",
        r.stderr
    );

    // Drop through the sidecar.
    fail_next_rename(&env);
    contact(&env, "dropped@x.io");
    let second = sc
        .until("a second dead letter", SOON, || async {
            dead_letter_ids(&sc).await.first().copied()
        })
        .await
        .to_string();
    let r = cli(&env, &["dead-letters", "drop", &second]).await;
    r.assert_ok();
    assert_eq!(r.stdout, format!("dropped dead letter {second}\n"));
    let r = cli(&env, &["dead-letters", "drop", &second]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, format!("error: no dead letter {second}\n").as_str())
    );
    let r = cli(&env, &["dead-letters", "show", &second]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("no dead letter"), "{}", r.stderr);

    // `run --once --recipe` has the sidecar run it now; its report reads as without one.
    sc.pause("chain@intercom").await;
    let fired = contact(&env, "now@x.io");
    // A poll stops at the server's "now" (whole seconds of its `Date`, so up to a second
    // behind): a record of this very second is the next one's.
    let created = env.sim().record(Kind::Contact, &fired).unwrap()["created_at"]
        .as_i64()
        .unwrap();
    eventually(
        "the simulator's clock past the record",
        SOON,
        String::new,
        || async { (env.sim().now() > created + 1).then_some(()) },
    )
    .await;
    let m0 = sc.metrics().await;
    let r = cli(&env, &["run", "--once", "--recipe", "chain"]).await;
    r.assert_ok();
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("chain: "))
        .unwrap_or_else(|| panic!("no summary line:\n{}", r.stderr));
    assert!(
        line.contains("fired 1 (0 resumed), finished 1") && line.contains(", cursor "),
        "{line}\n{}",
        sc.log()
    );
    assert_eq!(calls(&env, "POST", &format!("/contacts/{fired}/notes")), 1);
    let r = cli(&env, &["run", "--once", "--recipe", "chain", "--json"]).await;
    r.assert_ok();
    let reps = crate::util::reports_of(&r.stdout);
    assert_eq!(reps[0]["fired"], 0, "{reps}");
    // A cycle run on demand is a cycle of the instance: the counters include it.
    let m1 = sc.metrics().await;
    let chain = [("recipe", "chain")];
    assert_eq!(
        m1.sum("sluice_records_fired_total", &chain) - m0.sum("sluice_records_fired_total", &chain),
        1.0,
        "a record fired by `run --once --recipe` is not counted"
    );
    assert_eq!(
        m1.sum("sluice_cycles_total", &chain) - m0.sum("sluice_cycles_total", &chain),
        2.0
    );
    // Every recipe at once is the sidecar's job: refused, saying what to do.
    let r = cli(&env, &["run", "--once"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("give --recipe ID"), "{}", r.stderr);
    let r = cli(&env, &["run", "--once", "--recipe", "nope"]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no recipe `nope`"), "{}", r.stderr);
    assert_eq!(sc.status().await["pid"], json!(sc.pid));
}

// ---------------------------------------------------------------------------------------
// Access.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_host_names_and_marked_posts_are_answered() {
    let env = live_sim().await;
    env.write_recipe(&emit_recipe("a", &env.ws.path().join("a.jsonl")));
    let sc = Sidecar::start(&env, &[]).await;
    let port = sc.base.rsplit(':').next().unwrap().to_string();
    for path in ["/livez", "/metrics", "/api/status"] {
        let (code, body) = raw_request(
            &sc.base,
            &format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(code, 403, "{path}: {body}");
        let (code, body) = raw_request(
            &sc.base,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    // A cross-site form could send this POST, but not the header: refused, and not done.
    let (code, body) = sc.post("/api/instances/a@intercom/pause", false).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("x-sluice-client"), "{body}");
    assert_eq!(sc.instance("a@intercom").await.unwrap()["paused"], false);
    let (code, body) = raw_request(
        &sc.base,
        "POST /api/instances/a@intercom/pause HTTP/1.1\r\nHost: evil.example\r\nx-sluice-client: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(sc.instance("a@intercom").await.unwrap()["paused"], false);
    let (code, body) = sc.post("/api/instances/a@intercom/pause", true).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(sc.instance("a@intercom").await.unwrap()["paused"], true);
    let (code, _) = sc.post("/api/instances/a@intercom/resume", true).await;
    assert_eq!(code, 200);
    let (code, _) = sc.post("/api/instances/nope@intercom/pause", true).await;
    assert_eq!(code, 404);
    // A second sidecar on the same state directory refuses to start and leaves the first
    // one's discovery file alone.
    let discovery = env.ws.path().join("state/sidecar.json");
    let before = std::fs::read_to_string(&discovery).unwrap();
    let mut c = env.cmd(&["run", "--listen", "127.0.0.1:0"]);
    c.arg("--recipes")
        .arg(env.ws.path().join("recipes"))
        .arg("--state-dir")
        .arg(env.ws.path().join("state"));
    let r = run_async(c).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("in use by another sluice process"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&discovery).unwrap(), before);
    assert_eq!(sc.get("/livez").await, (200, "ok\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_needs_an_admin_token() {
    let env = live_sim().await;
    env.write_recipe(&emit_recipe("a", &env.ws.path().join("a.jsonl")));
    let mut c = env.cmd(&["run", "--listen", "0.0.0.0:0"]);
    c.arg("--recipes")
        .arg(env.ws.path().join("recipes"))
        .arg("--state-dir")
        .arg(env.ws.path().join("state"));
    let r = run_async(c).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("0.0.0.0:0")
            && r.stderr.contains("reachable from other machines")
            && r.stderr.contains("SLUICE_ADMIN_TOKEN"),
        "{}",
        r.stderr
    );
    assert!(!env.ws.path().join("state/sidecar.json").exists());

    // With a token it starts; the API then needs it, the probes and metrics do not.
    let sc = Sidecar::start_with(&env, "0.0.0.0:0", &[], Some("s3cret")).await;
    for path in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(sc.get(path).await.0, 200, "{path}");
    }
    assert_eq!(sc.get("/api/status").await.0, 401);
    let bearer = |token: &str| {
        sc.http
            .get(format!("{}/api/status", sc.base))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(bearer("s3cre").await.unwrap().status(), 401);
    assert_eq!(bearer("s3cret").await.unwrap().status(), 200);
    // The CLI finds it, and needs the token too.
    let r = env.sluice_in(&["state", "show"], None).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("needs SLUICE_ADMIN_TOKEN"),
        "{}",
        r.stderr
    );
    let dir = env.ws.path();
    let mut c = env.cmd(&["state", "show", "--json"]);
    c.env("SLUICE_ADMIN_TOKEN", "s3cret")
        .arg("--state-dir")
        .arg(dir.join("state"));
    let r = run_async(c).await;
    r.assert_ok();
    assert!(r.json().is_array(), "{}", r.stdout);
    // A refused token is said as such, not taken for a missing dead letter.
    let letters = |token: &'static str, args: &'static [&'static str]| {
        let mut c = env.cmd(args);
        c.env("SLUICE_ADMIN_TOKEN", token)
            .arg("--state-dir")
            .arg(dir.join("state"));
        run_async(c)
    };
    for args in [
        &["dead-letters", "show", "1"],
        &["dead-letters", "drop", "1"],
    ] {
        let r = letters("wrong", args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("Bearer") && !r.stderr.contains("no dead letter"),
            "{args:?}: {}",
            r.stderr
        );
        let r = letters("s3cret", args).await;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("no dead letter 1"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

// ---- The status pages (issue 12): HTML through HTTP; the browser test drives them too. ----

/// A recipe that notes each new contact with its name (record data on the pages).
const NAMED: &str = "id: named\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"for {{record.name}}\"\n";

/// A page's form CSRF token.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF token in:\n{html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Every `href="/runs/…"` of a page, in order.
fn run_links(html: &str) -> Vec<String> {
    html.split("href=\"/runs/")
        .skip(1)
        .map(|s| format!("/runs/{}", &s[..s.find('"').unwrap()]))
        .collect()
}

impl Sidecar {
    /// A form `POST` (no redirect followed): the status and the `Location`.
    async fn form(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        crate::util::post_form(&format!("{}{path}", self.base), fields)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()))
    }

    /// A page that must answer 200.
    async fn page(&self, path: &str) -> String {
        let (code, body) = self.get(path).await;
        assert_eq!(code, 200, "GET {path}: {body}\n{}", self.log());
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_runs_and_records_with_record_data_escaped() {
    let env = live_sim().await;
    env.write_recipe(NAMED);
    let sc = Sidecar::start(&env, &[]).await;
    let id = env
        .sim()
        .create(
            Kind::Contact,
            json!({"email": "x@x.io", "role": "user", "name": "<script>window.__pwned=1</script>"}),
        )
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    sc.until("the note", SOON, || async {
        (calls(&env, "POST", &format!("/contacts/{id}/notes")) == 1).then_some(())
    })
    .await;
    let overview = sc.page("/").await;
    assert!(
        overview.contains("<tr data-instance=\"named@intercom\">"),
        "{overview}"
    );
    assert!(
        overview.contains("<tr data-connection=\"intercom\">"),
        "{overview}"
    );
    // The run that fired it, through the outcome filter, then its records.
    let fired = sc
        .until("a run that fired", SOON, || async {
            let html = sc.page("/recipes/named@intercom?outcome=fired").await;
            run_links(&html).into_iter().next()
        })
        .await;
    let html = sc.page("/recipes/named@intercom").await;
    assert!(html.contains("<svg id=\"chart\""), "{html}");
    assert!(html.contains("data-kind=\"scheduled\""), "{html}");
    let run = sc.page(&fired).await;
    assert!(
        run.contains("<tr class=\"record\" data-outcome=\"finished\">"),
        "{run}"
    );
    // What the step sent, escaped: the page shows the text, never the tag.
    assert!(
        run.contains("&lt;script&gt;window.__pwned&#x3D;1&lt;/script&gt;"),
        "{run}"
    );
    assert!(!run.contains("<script>"), "{run}");
    // The same as JSON.
    let (code, body) = sc
        .get("/api/instances/named@intercom/runs?outcome=fired")
        .await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let first = &v["runs"][0];
    assert_eq!(first["report"]["fired"], json!(1), "{v}");
    let run_id = first["run"].as_str().unwrap();
    let (code, body) = sc.get(&format!("/api/runs/named@intercom/{run_id}")).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let step = &v["records"][0]["record"]["steps"][0];
    assert_eq!(step["step"], "note", "{v}");
    assert_eq!(
        step["sent"]["body"],
        json!("for <script>window.__pwned=1</script>"),
        "{v}"
    );
    assert_eq!(step["got"]["type"], "note", "{v}");
    // Unknown things are 404s, bad ids 400s.
    assert_eq!(sc.get("/recipes/nope@intercom").await.0, 404);
    assert_eq!(sc.get("/runs/named@intercom/x").await.0, 400);
    assert_eq!(sc.get("/runs/named@intercom/1-1").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_and_dropped_from_the_pages_with_their_csrf_token() {
    let env = live_sim().await;
    env.write_recipe(NAMED);
    let sc = Sidecar::start(&env, &[]).await;
    let (a, id) = a_failed_note(&env, &sc, "a@x.io").await;
    let detail = sc.page(&format!("/dead-letters/{id}")).await;
    assert!(detail.contains("class=\"error\""), "{detail}");
    assert!(detail.contains("422"), "{detail}");
    assert!(detail.contains(&a), "the record's JSON: {detail}");
    // A form without the page's token changes nothing.
    let (code, _) = sc
        .form(
            &format!("/ui/dead-letters/{id}/replay"),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(calls(&env, "POST", &format!("/contacts/{a}/notes")), 0);
    // Fixed; replayed with the token: back on the recipe's page, finished.
    env.sim().set_faults(Faults::default());
    let token = csrf_of(&detail);
    let (code, location) = sc
        .form(
            &format!("/ui/dead-letters/{id}/replay"),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(code, 303, "{location}");
    assert!(
        location.starts_with("/recipes/named@intercom?flash="),
        "{location}"
    );
    let page = sc.page(&location).await;
    assert!(page.contains("class=\"flash\">replayed: "), "{page}");
    assert!(page.contains("finished from step"), "{page}");
    assert!(page.contains("data-kind=\"replay\""), "{page}");
    assert_eq!(calls(&env, "POST", &format!("/contacts/{a}/notes")), 1);
    assert!(!sc
        .page("/dead-letters")
        .await
        .contains(&format!("data-id=\"{id}\"")));
    // Another one, dropped.
    let (b, id) = a_failed_note(&env, &sc, "b@x.io").await;
    let (code, location) = sc
        .form(&format!("/ui/dead-letters/{id}/drop"), &[("csrf", &token)])
        .await;
    assert_eq!(
        (code, location.starts_with("/dead-letters?flash=dropped")),
        (303, true)
    );
    assert!(!sc.page("/dead-letters").await.contains("<tr data-id="));
    assert_eq!(calls(&env, "POST", &format!("/contacts/{b}/notes")), 0);
}

/// A new contact whose note (recipe `named`) fails for good (422): set up while the recipe
/// is paused, then resumed; the contact's id and its dead letter's, once the page lists it.
async fn a_failed_note(env: &SimEnv, sc: &Sidecar, email: &str) -> (String, String) {
    sc.pause("named@intercom").await;
    let c = contact(env, email);
    env.sim().set_faults(Faults {
        fail_next: vec![FailRule::once(
            Some("POST"),
            format!("/contacts/{c}/notes"),
            422,
        )],
        ..Faults::default()
    });
    assert_eq!(
        sc.post("/api/instances/named@intercom/resume", true)
            .await
            .0,
        200
    );
    let id = sc
        .until("a dead letter on the page", SOON, || async {
            let html = sc.page(&format!("/dead-letters?q={c}")).await;
            let at = html.find("<tr data-id=\"")? + "<tr data-id=\"".len();
            Some(html[at..at + html[at..].find('"')?].to_string())
        })
        .await;
    (c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_on_the_page_stops_the_ticks_and_resume_restarts_them() {
    let env = live_sim().await;
    env.write_recipe(NAMED);
    let sc = Sidecar::start(&env, &[]).await;
    let html = sc.page("/recipes/named@intercom").await;
    assert!(html.contains("<form class=\"pause"), "{html}");
    let token = csrf_of(&html);
    let (code, _) = sc
        .form("/ui/instances/named@intercom/pause", &[("csrf", &token)])
        .await;
    assert_eq!(code, 303);
    let html = sc.page("/recipes/named@intercom").await;
    assert!(html.contains("<form class=\"resume"), "{html}");
    sc.until("idle and paused", SOON, || async {
        sc.instance("named@intercom")
            .await
            .filter(|i| i["paused"] == true && i["running"] == false)
    })
    .await;
    let runs = |html: &str| html.matches("<tr class=\"run\"").count();
    let before = runs(&sc.page("/recipes/named@intercom").await);
    // Three of its slots pass: no run.
    let c = contact(&env, "p@x.io");
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(runs(&sc.page("/recipes/named@intercom").await), before);
    assert_eq!(calls(&env, "POST", &format!("/contacts/{c}/notes")), 0);
    let (code, _) = sc
        .form("/ui/instances/named@intercom/resume", &[("csrf", &token)])
        .await;
    assert_eq!(code, 303);
    sc.until("the note after resuming", SOON, || async {
        (calls(&env, "POST", &format!("/contacts/{c}/notes")) == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_pages_need_the_admin_token() {
    let env = live_sim().await;
    env.write_recipe(NAMED);
    let sc = Sidecar::start_with(&env, "0.0.0.0:0", &[], Some("s3cret-admin")).await;
    let (code, location) = sc
        .form("/ui/instances/named@intercom/pause", &[("csrf", "x")])
        .await;
    assert_eq!((code, location.as_str()), (303, "/login"));
    let http = crate::util::browser_http();
    let r = http.get(format!("{}/", sc.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let wrong = http
        .post(format!("{}/login", sc.base))
        .form(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = http
        .post(format!("{}/login", sc.base))
        .form(&[("token", "s3cret-admin")])
        .send()
        .await
        .unwrap();
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let page = http
        .get(format!("{}/", sc.base))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-instance=\"named@intercom\""));
    assert!(!html.contains("s3cret-admin"), "no page shows a credential");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_kept_to_its_bounds() {
    let env = live_sim().await;
    env.write_recipe(NAMED);
    let config = std::fs::read_to_string(env.ws.config()).unwrap();
    std::fs::write(
        env.ws.config(),
        format!("{config}history:\n  max_runs: 3\n  max_age: 30d\n"),
    )
    .unwrap();
    for _ in 0..5 {
        env.sluice_in(&["run", "--once"], None).await.assert_ok();
    }
    let store = SledStore::open(&env.ws.path().join("state")).unwrap();
    assert_eq!(store.cycles("named@intercom", 100).unwrap().len(), 3);
    drop(store);
    // The bound on the whole history, shared by the instances, when it is the smaller.
    std::fs::write(
        env.ws.config(),
        format!("{config}history:\n  max_runs: 3\n  max_total_runs: 2\n"),
    )
    .unwrap();
    env.sluice_in(&["run", "--once"], None).await.assert_ok();
    let store = SledStore::open(&env.ws.path().join("state")).unwrap();
    assert_eq!(store.cycles("named@intercom", 100).unwrap().len(), 2);
    drop(store);
    // A bound that is no bound is refused where it is written.
    std::fs::write(
        env.ws.config(),
        format!("{config}history:\n  max_runs: 0\n"),
    )
    .unwrap();
    let r = env.sluice_in(&["validate"], None).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("history.max_runs must be at least 1"),
        "{}",
        r.stderr
    );
}

#[path = "workspaces.rs"]
mod workspaces;
