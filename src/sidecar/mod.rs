//! The sidecar: `sluice run` as a long-running service.
//!
//! One process keeps every recipe instance on its schedule ([`scheduler`]), reloads edited
//! files without restarting the others ([`load`], file watching and `SIGHUP`), serves
//! `/livez`, `/readyz`, `/metrics`, the admin API and the status pages ([`api`],
//! [`metrics`], [`pages`], with OAuth's Connect / Re-authorize in [`connect`]), and stops
//! gracefully: on `SIGTERM`/`SIGINT` no new cycle starts, the cycles under way finish their
//! steps and commit within `--shutdown-timeout`, and a second signal exits at once (the run
//! journal makes that safe too). While it runs it holds the state store; the CLI's state and
//! dead-letter commands find it through `<state dir>/sidecar.json` ([`client`]).

pub(crate) mod api;
pub(crate) mod client;
pub(crate) mod connect;
pub(crate) mod load;
pub(crate) mod metrics;
pub(crate) mod pages;
pub(crate) mod scheduler;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{CycleOptions, CycleReport};
use crate::runtime::{Runtime, Shutdown};
use crate::secret::Secret;
use crate::store::Store;
use api::{Access, ApiError};
use load::{BrokenFile, Loader, Paths};
use metrics::{Metrics, Snapshot};
use scheduler::{Command, InstanceStatus, LastSlot, Launch, Scheduler, SystemClock};

/// How the sidecar runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sluice.yaml`.
    pub config: PathBuf,
    /// The connectors directory (`None`: the built-in connector).
    pub connectors: Option<PathBuf>,
    /// The connection files' directory, if any (watched like the others).
    pub connections: Option<PathBuf>,
    /// The recipes directory.
    pub recipes: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Where the HTTP endpoints listen.
    pub listen: String,
    /// The URL a browser reaches the sidecar on (`None`: `http://<listen address>`); the
    /// OAuth callback is under it.
    pub public_url: Option<String>,
    /// How long cycles under way may take to finish after a stop signal.
    pub shutdown_timeout: Duration,
    /// Whether to watch the files (else only `SIGHUP` reloads).
    pub watch: bool,
    /// At most this many scheduled cycles run at once.
    pub max_cycles: usize,
}

/// What is wrong with the configuration now.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// The last reload of `sluice.yaml` or the connectors failed (the last good plan runs).
    pub config: Vec<String>,
    /// Recipe files that do not load.
    pub files: Vec<BrokenFile>,
    /// Connections that cannot be used, with why.
    pub connections: Vec<(String, String)>,
    /// OAuth connections that cannot authenticate now (revoked, no token), with why.
    pub auth: Vec<(String, String)>,
}

impl Health {
    /// One line per problem; empty when ready.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .config
            .iter()
            .map(|e| format!("configuration not reloaded (the last good one runs): {e}"))
            .collect();
        for (name, why) in self.connections.iter().chain(&self.auth) {
            out.push(format!("connection `{name}`: {why}"));
        }
        // One line each (a diagnostic's `help:` goes on the same line).
        let one_line = |s: &String| s.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        for b in &self.files {
            let state = if b.running_last_good {
                "its last good version runs"
            } else {
                "not running"
            };
            out.push(format!(
                "recipe file `{}` ({state}): {}",
                b.file.display(),
                b.errors.join("; ")
            ));
        }
        out.iter().map(one_line).collect()
    }
}

/// What the HTTP handlers share with the sidecar.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    rt: RwLock<Arc<Runtime>>,
    health: RwLock<Health>,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
    pub shutdown: Shutdown,
    pub access: Access,
    /// The cap on scheduled cycles at once.
    cycles: Arc<tokio::sync::Semaphore>,
    /// The page templates.
    pub pages: handlebars::Handlebars<'static>,
    /// The token every page form carries.
    pub csrf: String,
    /// The sidecar's base URL as a browser reaches it, without a trailing slash.
    pub public_url: String,
    /// OAuth authorizations started from the status page, waiting for their callback.
    pub flows: connect::Flows,
}

impl Shared {
    /// The runtime of the current plan.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.rt
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn health(&self) -> Health {
        self.health
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) async fn send(&self, c: Command) -> Result<(), ApiError> {
        self.commands.send(c).await.map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sidecar is stopping".into(),
            )
        })
    }

    pub(crate) async fn instances(&self) -> Result<Vec<InstanceStatus>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx)).await?;
        rx.await.map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sidecar is stopping".into(),
            )
        })
    }

    pub(crate) async fn instances_of(&self, recipe: &str) -> Result<Vec<String>, ApiError> {
        Ok(api::instances_named(&self.instances().await?, recipe))
    }

    pub(crate) fn metrics_text(&self, instances: &[InstanceStatus]) -> String {
        let now = chrono::Utc::now().timestamp();
        let health = self.health();
        let snap = Snapshot {
            // From the store: right after a restart too, before any cycle has run.
            cursor_lag: instances
                .iter()
                .filter_map(|i| {
                    let c = self.store.checkpoint(&i.instance).ok()??.cursor;
                    Some((i.recipe.clone(), i.connection.clone(), (now - c).max(0)))
                })
                .collect(),
            workspaces: self.runtime().workspaces(),
            broken: health.files.len()
                + health.connections.len()
                + usize::from(!health.config.is_empty()),
        };
        self.metrics.encode(snap)
    }
}

/// The first slot of recipe instance `instance` on `schedule` strictly after `t` (Unix ms),
/// jitter included: the scheduler's own slot arithmetic, for tools that check a run history.
pub fn slot_after(instance: &str, schedule: &crate::plan::Schedule, t: i64) -> Option<i64> {
    scheduler::Slots::of(instance, schedule).next_after(t)
}

/// The name of the file that tells the CLI where a running sidecar listens.
pub const DISCOVERY_FILE: &str = "sidecar.json";

fn launch(rt: Arc<Runtime>, cycles: Arc<tokio::sync::Semaphore>) -> Launch {
    Arc::new(move |recipe, opts: CycleOptions| {
        let mut stop = opts.shutdown.clone();
        let id = recipe.id.clone();
        let cycle = crate::engine::run_cycle(rt.clone(), recipe, opts);
        let cycles = cycles.clone();
        Box::pin(async move {
            // At most `--max-cycles` at once: a burst (catching up after downtime) waits
            // here instead of holding a thousand pages in memory. A stop while waiting
            // starts nothing.
            let _permit = tokio::select! {
                biased;
                _ = stop.requested() => {
                    return CycleReport {
                        recipe: id,
                        interrupted: true,
                        ..CycleReport::default()
                    };
                }
                p = cycles.acquire_owned() => p,
            };
            let rep = cycle.await;
            log_report(&rep);
            rep
        })
    })
}

fn log_report(r: &CycleReport) {
    if r.error.is_some() {
        // The engine has said why.
        return;
    }
    if r.fired > 0 || r.dead_letters > 0 || r.unfinished > 0 {
        tracing::info!(
            recipe = %r.recipe,
            polled = r.polled,
            fired = r.fired,
            finished = r.finished,
            dead_letters = r.dead_letters,
            unfinished = r.unfinished,
            elapsed_ms = r.elapsed_ms.round(),
            cursor = %crate::engine::fmt_cursor(r.cursor_after.unwrap_or(0)),
            "Cycle done."
        );
    } else {
        tracing::debug!(recipe = %r.recipe, polled = r.polled, elapsed_ms = r.elapsed_ms.round(), "Cycle done: nothing new.");
    }
}

/// `http://<listen address>`; bound to every interface (`0.0.0.0`, `::`), which no browser
/// can open, `127.0.0.1` (a browser on this machine) — `--public-url` says otherwise.
fn default_public_url(local: std::net::SocketAddr) -> String {
    if local.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", local.port())
    } else {
        format!("http://{local}")
    }
}

/// The slot an instance last ran for: the newest run-history row written by a scheduled
/// cycle, however many cycles on demand and replays came after it. Usually the newest row
/// is one, and it is the only row read (a start-up reads one row per instance).
fn last_slot(store: Arc<dyn Store>) -> LastSlot {
    Arc::new(move |recipe| last_slot_of(&*store, &recipe.instance))
}

fn last_slot_of(store: &dyn Store, instance: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Row {
        scheduled_at_ms: Option<i64>,
    }
    let slot = |json: &str| {
        serde_json::from_str::<Row>(json)
            .ok()
            .and_then(|r| r.scheduled_at_ms)
    };
    let (rows, _) = store
        .runs(instance, None, 1, usize::MAX, &|j| slot(j).is_some())
        .ok()?;
    rows.first().and_then(|(_, json)| slot(json))
}

fn health_of(loaded: &load::Loaded) -> Health {
    Health {
        config: Vec::new(),
        files: loaded.broken.clone(),
        connections: loaded
            .plan
            .unavailable
            .iter()
            .map(|(n, d)| {
                // A connection file's problem names the file; `sluice.yaml`'s are as before.
                let why = if d.file.file_stem().and_then(|s| s.to_str()) == Some(n.as_str()) {
                    d.to_string()
                } else {
                    d.message.clone()
                };
                (n.clone(), why)
            })
            .chain(loaded.unreadable.iter().cloned())
            .collect(),
        auth: Vec::new(),
    }
}

/// Keeps recipe instances held while a connection they use cannot authenticate: looks at
/// the credential files every second (a new token from `sluice connect`) and at once when
/// a token changes here (a 401 revoked it), then holds or releases instances and updates
/// readiness.
async fn hold_unauthorized(shared: Arc<Shared>, cmd: mpsc::Sender<Command>) {
    let mut changed = shared.runtime().credentials().subscribe();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: std::collections::HashMap<String, Option<String>> = Default::default();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            r = changed.changed() => if r.is_err() { return },
        }
        let rt = shared.runtime();
        rt.credentials().sync();
        let bad: std::collections::HashMap<String, String> =
            rt.unauthorized().into_iter().collect();
        {
            let mut h = shared
                .health
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            h.auth = bad.iter().map(|(n, p)| (n.clone(), p.clone())).collect();
            h.auth.sort();
        }
        let plan = rt.plan();
        let mut now = std::collections::HashMap::new();
        for r in &plan.recipes {
            let reason = std::iter::once(r.conn)
                .chain(r.steps.iter().map(|s| s.conn))
                .filter_map(|c| plan.connections.get(c.index()))
                .find_map(|c| {
                    bad.get(&c.name)
                        .map(|p| format!("connection `{}`: {p}", c.name))
                });
            now.insert(r.instance.clone(), reason);
        }
        for (instance, reason) in &now {
            if last.get(instance) != Some(reason) {
                let hold = Command::Hold {
                    instance: instance.clone(),
                    reason: reason.clone(),
                };
                if cmd.send(hold).await.is_err() {
                    return;
                }
            }
        }
        last = now;
    }
}

fn report_health(h: &Health) {
    for p in h.problems() {
        tracing::warn!(problem = %p, "Not ready.");
    }
}

/// Runs the sidecar until a stop signal. `Err`: it could not start (exit 2).
pub async fn run(opts: Options) -> Result<ExitCode> {
    // First of all: a stop signal from here on is a graceful stop, never a lost one.
    let mut signals = StopSignals::new();
    let mut loader = Loader::new(Paths {
        config: opts.config.clone(),
        connectors: opts.connectors.clone(),
        connections: opts.connections.clone(),
        recipes: opts.recipes.clone(),
    });
    let loaded = loader.load().map_err(|errs| {
        anyhow!(
            "the configuration has problems; run `sluice validate`:\n{}",
            errs.join("\n")
        )
    })?;
    let addr: SocketAddr = opts.listen.parse().map_err(|_| {
        anyhow!(
            "--listen `{}` is not an address and port like `127.0.0.1:9187`",
            opts.listen
        )
    })?;
    let token = std::env::var("SLUICE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    let public_url = opts
        .public_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(connect::check_public_url)
        .transpose()?;
    let loopback = addr.ip().is_loopback();
    if !loopback && token.is_none() {
        return Err(anyhow!("--listen {addr} is reachable from other machines: set SLUICE_ADMIN_TOKEN (the admin API then needs it), or listen on 127.0.0.1"));
    }
    let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(&opts.state_dir)?);
    let health = health_of(&loaded);
    let rt = Runtime::with_credentials(
        loaded.plan,
        store.clone(),
        Arc::new(crate::oauth::Credentials::new(&opts.state_dir)),
    )?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (`--listen`)"))?;
    let local = listener.local_addr()?;

    let (stop, shutdown) = crate::runtime::shutdown_channel();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let metrics = Arc::new(Metrics::new());
    let cycles = Arc::new(tokio::sync::Semaphore::new(opts.max_cycles.max(1)));
    let shared = Arc::new(Shared {
        store: store.clone(),
        rt: RwLock::new(rt.clone()),
        health: RwLock::new(health.clone()),
        metrics: metrics.clone(),
        commands: cmd_tx.clone(),
        shutdown: shutdown.clone(),
        access: Access {
            loopback,
            token,
            public_host: public_url.as_deref().and_then(connect::host_of),
        },
        cycles: cycles.clone(),
        pages: pages::templates(),
        csrf: pages::random_token(),
        public_url: public_url.unwrap_or_else(|| default_public_url(local)),
        flows: connect::Flows::default(),
    });
    let scheduler = Scheduler::new(
        Arc::new(SystemClock),
        launch(rt.clone(), cycles.clone()),
        last_slot(store.clone()),
        shutdown.clone(),
        metrics.clone(),
    );
    let sched = tokio::spawn(scheduler.run(cmd_rx));
    cmd_tx
        .send(Command::Reload {
            recipes: rt.plan().recipes.clone(),
            launch: launch(rt.clone(), cycles.clone()),
        })
        .await
        .map_err(|_| anyhow!("the scheduler stopped at start"))?;

    let (server_stop, server_stopped) = oneshot::channel::<()>();
    let router = api::router(shared.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .await
    });
    // History retention: a pass a minute on a blocking thread, a bounded batch per call, so
    // it never holds up a cycle.
    let pruner = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let store = shared.store.clone();
                let retention = shared.runtime().plan().retention;
                let now = chrono::Utc::now().timestamp_millis();
                let pass = tokio::task::spawn_blocking(move || {
                    crate::history::prune_all(store.as_ref(), now, &retention, 1_000)
                });
                match pass.await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(rows = n, "Run history pruned."),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "The run history could not be pruned.")
                    }
                    _ => {}
                }
            }
        })
    };
    let holder = tokio::spawn(hold_unauthorized(shared.clone(), cmd_tx.clone()));
    let discovery = opts.state_dir.join(DISCOVERY_FILE);
    write_discovery(&discovery, local, !loopback)?;
    tracing::info!(
        recipes = rt.plan().recipes.len(),
        listen = %local,
        "sluice is running: /livez, /readyz, /metrics and /api on http://{local}"
    );
    if rt.plan().connections.iter().any(|c| c.oauth.is_some()) {
        tracing::info!(
            redirect_url = %connect::redirect_url(&shared),
            "OAuth connections can be authorized on the status page; the provider's app must list this redirect URL (see --public-url)."
        );
        if local.ip().is_unspecified() && opts.public_url.as_deref().is_none_or(str::is_empty) {
            tracing::warn!("Listening on every interface without --public-url: the OAuth redirect URL names 127.0.0.1, which only a browser on this machine can open. Set --public-url to the address browsers use.");
        }
    }
    report_health(&health);
    drop(rt);

    // Reloads: file events are hints (debounced), the fingerprint decides; a periodic check
    // covers a watch that was lost (a directory replaced), SIGHUP forces one.
    let (hint_tx, mut hints) = mpsc::channel::<()>(1);
    let _watcher = if opts.watch {
        watch(&load::watched_dirs(loader.paths()), hint_tx)
    } else {
        None
    };
    let mut print = loader.fingerprint();
    let mut hup = hangups();
    let mut check = tokio::time::interval(Duration::from_secs(5));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let force = tokio::select! {
            _ = signals.next() => break,
            Some(()) = hup.recv() => true,
            Some(()) = hints.recv() => {
                due.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(200));
                continue;
            }
            _ = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => false,
            _ = check.tick(), if opts.watch => false,
        };
        due = None;
        let now = loader.fingerprint();
        if !force && now == print {
            continue;
        }
        print = now;
        reload(&mut loader, &shared, &cmd_tx).await;
    }

    // Stop: no new cycle from here; those under way finish their steps and commit.
    stop.trigger();
    tracing::warn!(
        timeout_s = opts.shutdown_timeout.as_secs_f64(),
        "Stopping: cycles under way finish their steps and commit; a second signal exits at once."
    );
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("Second signal: exiting now; unfinished records resume from the journal at the next start.");
        std::process::exit(130);
    });
    pruner.abort();
    holder.abort();
    let drained = tokio::time::timeout(opts.shutdown_timeout, sched).await;
    let _ = server_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    let _ = std::fs::remove_file(&discovery);
    drop(shared);
    if drained.is_err() {
        tracing::error!("Cycles were still running at --shutdown-timeout: exiting; their unfinished records resume from the journal at the next start.");
        return Ok(ExitCode::from(1));
    }
    tracing::info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

async fn reload(loader: &mut Loader, shared: &Shared, cmd: &mpsc::Sender<Command>) {
    match loader.load() {
        Ok(loaded) => {
            let mut health = health_of(&loaded);
            health.auth = shared.health().auth;
            let partial = !health.files.is_empty();
            let rt = match shared.runtime().rebuild(loaded.plan) {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "Configuration not reloaded; the last good one keeps running.");
                    shared.metrics.reload("failed");
                    return;
                }
            };
            let recipes = rt.plan().recipes.clone();
            *shared.rt.write().unwrap_or_else(PoisonError::into_inner) = rt.clone();
            *shared
                .health
                .write()
                .unwrap_or_else(PoisonError::into_inner) = health.clone();
            let _ = cmd
                .send(Command::Reload {
                    recipes,
                    launch: launch(rt.clone(), shared.cycles.clone()),
                })
                .await;
            shared
                .metrics
                .reload(if partial { "partial" } else { "ok" });
            tracing::info!(
                recipes = rt.plan().recipes.len(),
                broken_files = health.files.len(),
                "Configuration reloaded."
            );
            report_health(&health);
        }
        Err(errs) => {
            shared.metrics.reload("failed");
            for e in &errs {
                tracing::warn!(error = %e, "Configuration not reloaded; the last good one keeps running.");
            }
            shared
                .health
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .config = errs;
        }
    }
}

/// Watches `dirs`; any event is a hint to look again.
fn watch(dirs: &[PathBuf], hint: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reading a directory (our own fingerprint check) is an access event: taken for a
        // hint, it would make the next check, and so on for ever.
        if let Ok(ev) = &res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
        }
        let _ = hint.try_send(());
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch the configuration files: changes are picked up every 5 s (and on SIGHUP).");
            return None;
        }
    };
    for d in dirs {
        if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "Cannot watch a directory: its changes are picked up every 5 s (and on SIGHUP).");
        }
    }
    Some(w)
}

/// SIGHUP, as a stream of hints (never on other systems).
fn hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut s) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.try_send(());
                }
            });
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Stop signals — SIGINT (Ctrl-C) and, on Unix, SIGTERM — listened for from creation on, so
/// that none is missed between the first and the second.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts listening (the default action — exit — no longer applies).
    pub(crate) fn new() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next stop signal.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => {}
                _ = recv(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn write_discovery(path: &Path, addr: SocketAddr, token: bool) -> Result<()> {
    let body = serde_json::json!({
        "pid": std::process::id(),
        "listen": addr.to_string(),
        "token_required": token,
    });
    std::fs::write(path, body.to_string())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    crate::store::make_private(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start-up catch-up finds the last scheduled slot behind any number of cycles on
    /// demand and replays (which carry no slot).
    #[test]
    fn the_last_slot_is_found_behind_many_unscheduled_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let run = |t: i64, id: u64| crate::history::RunId { started_ms: t, id };
        let hour = crate::history::Hourly::default();
        assert_eq!(last_slot_of(&store, "r@c"), None);
        store
            .record_cycle(
                "r@c",
                run(1_000, 1),
                r#"{"kind":"scheduled","scheduled_at_ms":900}"#,
                hour,
            )
            .unwrap();
        store
            .record_cycle(
                "r@c",
                run(2_000, 2),
                r#"{"kind":"scheduled","scheduled_at_ms":1900}"#,
                hour,
            )
            .unwrap();
        for i in 0..200 {
            store
                .record_cycle(
                    "r@c",
                    run(3_000 + i, 10 + i as u64),
                    r#"{"kind":"on_demand"}"#,
                    hour,
                )
                .unwrap();
        }
        store
            .record_cycle(
                "other@c",
                run(9_000, 999),
                r#"{"scheduled_at_ms":8900}"#,
                hour,
            )
            .unwrap();
        assert_eq!(last_slot_of(&store, "r@c"), Some(1_900));
        assert_eq!(last_slot_of(&store, "other@c"), Some(8_900));
    }

    /// Reading a watched directory is no hint (else the fingerprint check feeds itself);
    /// writing a file in it is.
    #[tokio::test]
    async fn reading_a_watched_directory_is_no_hint_writing_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "x").unwrap();
        let (tx, mut hints) = mpsc::channel(1);
        let _w = watch(&[dir.path().to_path_buf()], tx).expect("a watcher");
        for _ in 0..3 {
            let _ = crate::spec::yaml_files_in(dir.path()).unwrap();
            let _ = std::fs::read_to_string(dir.path().join("a.yaml")).unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(300), hints.recv()).await;
        assert!(quiet.is_err(), "reads made a hint");
        std::fs::write(dir.path().join("b.yaml"), "y").unwrap();
        let hint = tokio::time::timeout(Duration::from_secs(5), hints.recv()).await;
        assert!(matches!(hint, Ok(Some(()))), "a new file made no hint");
    }
}
