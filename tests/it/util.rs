//! Test harness: running the built `sluice` binary, temporary config files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `sluice` command run from the repository root, with logs at `warn` and no inherited
/// SLUICE_* variables.
pub fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.current_dir(root());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            c.env_remove(k);
        }
    }
    c
}

/// Compares `actual` with `tests/golden/<name>.expected`; `UPDATE_GOLDEN=1` rewrites the file
/// (review the diff by eye).
pub fn golden(name: &str, actual: &str) {
    let file = root().join(format!("tests/golden/{name}.expected"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, actual).unwrap();
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", file.display()));
    assert_eq!(actual, want, "differs from {}", file.display());
}

/// What a finished command printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Parses stdout as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Parses stdout as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect()
    }

    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs a command to completion (blocking; call from `spawn_blocking` inside async tests).
pub fn run(mut c: Command) -> Run {
    Run::from(c.output().expect("run sluice"))
}

/// A temporary directory holding a `sluice.yaml`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new(config_yaml: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sluice.yaml"), config_yaml).unwrap();
        Workspace { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("sluice.yaml")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `sluice --config <this workspace's sluice.yaml> ARGS…`
    pub fn sluice(&self, args: &[&str]) -> Command {
        let mut c = sluice();
        c.arg("--config").arg(self.config()).args(args);
        c
    }
}

/// The JSON run reports `run --once --json` writes on stdout's last line (after any `emit`
/// lines).
pub fn reports_of(stdout: &str) -> serde_json::Value {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no run report in an empty stdout"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: the last line of\n{stdout}"))
}

/// Runs a blocking command from async code.
pub async fn run_async(c: Command) -> Run {
    tokio::task::spawn_blocking(move || run(c)).await.unwrap()
}

/// A simulator on loopback plus a workspace whose `intercom` connection points at it.
pub struct SimEnv {
    pub handle: sluice::sim::SimHandle,
    pub ws: Workspace,
}

/// 2026-07-10 15:00:00 UTC (16:00 in Dublin, the simulator's default workspace timezone).
pub const T0: i64 = 1_783_695_600;

/// The token the simulator accepts; tests pass it through the environment only.
pub const TOKEN: &str = "sim-token";

impl SimEnv {
    /// A frozen-clock simulator at `T0` with the given sizes, and fast retries.
    pub async fn start(config: sluice::sim::SimConfig) -> SimEnv {
        let handle = sluice::sim::Sim::start(config)
            .await
            .expect("start simulator");
        // The simulator's clock is frozen at T0, months before today: its `Date` is to be
        // trusted all the same.
        let ws = Workspace::new(&format!(
            "connections:\n  intercom:\n    connector: intercom\n    base_url: {}\n    token: ${{env:INTERCOM_TOKEN}}\n    retry: {{max_attempts: 3, base_delay_ms: 5, max_delay_ms: 20, max_rate_limit_waits: 2}}\n    max_clock_skew: 3650d\n",
            handle.base_url
        ));
        SimEnv { handle, ws }
    }

    /// Seeded sizes, frozen clock at T0.
    pub fn config(
        contacts: usize,
        companies: usize,
        tickets: usize,
        conversations: usize,
    ) -> sluice::sim::SimConfig {
        sluice::sim::SimConfig {
            seed: 7,
            contacts,
            companies,
            tickets,
            conversations,
            start_time: T0,
            frozen_clock: true,
            ..sluice::sim::SimConfig::default()
        }
    }

    pub fn sim(&self) -> &sluice::sim::Sim {
        &self.handle.sim
    }

    /// `sluice ARGS…` with this workspace's config and the token in the environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ws.sluice(args);
        c.env("INTERCOM_TOKEN", TOKEN);
        c
    }

    /// `sluice call intercom.<action> --connection intercom --with <json>`.
    pub async fn call(&self, action: &str, with: serde_json::Value) -> Run {
        let a = format!("intercom.{action}");
        let w = with.to_string();
        run_async(self.cmd(&["call", &a, "--connection", "intercom", "--with", &w])).await
    }

    /// `call` that must succeed; returns its output.
    pub async fn ok(&self, action: &str, with: serde_json::Value) -> serde_json::Value {
        let r = self.call(action, with).await;
        r.assert_ok();
        r.json()
    }

    /// `sluice poll intercom.<trigger> --connection intercom --since <since>`.
    pub async fn poll(&self, trigger: &str, since: i64) -> Run {
        let t = format!("intercom.{trigger}");
        let s = since.to_string();
        run_async(self.cmd(&["poll", &t, "--connection", "intercom", "--since", &s])).await
    }

    /// Ids of the records a successful poll printed, in order.
    pub async fn poll_ids(&self, trigger: &str, since: i64) -> Vec<String> {
        let r = self.poll(trigger, since).await;
        r.assert_ok();
        r.json_lines()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The audit entries for requests other than `GET /me`.
    pub fn audit(&self) -> Vec<sluice::sim::AuditEntry> {
        self.sim()
            .audit()
            .into_iter()
            .filter(|e| e.path != "/me")
            .collect()
    }

    /// Writes a recipe into the workspace's `recipes/` (named by its `id:` line).
    pub fn write_recipe(&self, yaml: &str) {
        let dir = self.ws.path().join("recipes");
        std::fs::create_dir_all(&dir).unwrap();
        let id = yaml
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .expect("a recipe with an `id:` line")
            .trim();
        std::fs::write(dir.join(format!("{id}.yaml")), yaml).unwrap();
    }

    /// `sluice ARGS… --recipes <ws>/recipes --state-dir <ws>/state`, run in `cwd` (default:
    /// the test's own directory).
    pub async fn sluice_in(&self, args: &[&str], cwd: Option<&Path>) -> Run {
        let dir = self.ws.path();
        let mut c = self.cmd(args);
        c.arg("--recipes")
            .arg(dir.join("recipes"))
            .arg("--state-dir")
            .arg(dir.join("state"));
        if let Some(cwd) = cwd {
            c.current_dir(cwd);
        }
        run_async(c).await
    }

    /// `run --once --json` over the workspace's recipes: the run and its reports by recipe id.
    /// The run's stdout is what came before the reports' line (the `emit` lines).
    pub async fn run_once_in(
        &self,
        cwd: Option<&Path>,
    ) -> (Run, std::collections::BTreeMap<String, serde_json::Value>) {
        let mut r = self.sluice_in(&["run", "--once", "--json"], cwd).await;
        let reports = reports_of(&r.stdout);
        let before = r
            .stdout
            .trim_end_matches('\n')
            .rfind('\n')
            .map_or(0, |i| i + 1);
        r.stdout.truncate(before);
        let by_id = reports
            .as_array()
            .unwrap_or_else(|| panic!("a list of reports: {reports}"))
            .iter()
            .map(|rep| (rep["recipe"].as_str().unwrap().to_string(), rep.clone()))
            .collect();
        (r, by_id)
    }
}

/// A `sluice sim` process (own process, port chosen by the OS), killed on drop.
pub struct SimProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl SimProcess {
    /// Starts `sluice sim --port 0 ARGS…` and reads its address from the banner.
    pub fn start(args: &[&str]) -> SimProcess {
        use std::io::BufRead;
        let mut child = sluice()
            .args(["sim", "--port", "0"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in the simulator's banner: {line:?}"))
            .to_string();
        SimProcess { child, url }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 50 ms until it gives a value; panics after `within` naming `what`
/// and showing `context()` (the sidecar's log, say).
pub async fn eventually<T, F, Fut>(
    what: &str,
    within: std::time::Duration,
    context: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {within:?} for {what}; log:\n{}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An HTTP client that acts as a browser's single step: no proxy, no redirect followed.
pub fn browser_http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A form `POST` to `url` (no redirect followed): the status and the `Location`.
pub async fn post_form(
    url: &str,
    fields: &[(&str, &str)],
) -> Result<(u16, String), reqwest::Error> {
    let r = browser_http().post(url).form(fields).send().await?;
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((r.status().as_u16(), location))
}
