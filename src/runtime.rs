//! Runtime: the one composition root. Built from a [`Plan`], it owns what the plan's recipes
//! share while they run — open connections (one per connection of the plan), the state store,
//! the `emit` sink and the per-connection chain limits — and hands them to cycles.
//!
//! `run --once`, dead-letter replay, `sluice test` (dry runs, no store) and the demo all build
//! one; nothing else wires connections, stores or sinks by hand. Cycles take an
//! `Arc<Runtime>` and an `Arc<Recipe>`, so they can be spawned.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tokio::sync::{watch, Semaphore};

use crate::emit::Emitter;
use crate::governor::Governors;
use crate::http::Connection;
use crate::oauth::Credentials;
use crate::plan::{ConnId, Plan};
use crate::store::Store;

/// Everything running recipes share.
pub struct Runtime {
    plan: Plan,
    conns: Vec<Arc<Connection>>,
    /// Per-connection cap on chains in flight (`concurrency` in `sluice.yaml`).
    conn_limits: Vec<Option<Arc<Semaphore>>>,
    store: Option<Arc<dyn Store>>,
    emit: Arc<Emitter>,
    /// One rate governor per workspace, shared by its connections (and by the runtimes a
    /// reload builds: a workspace's budget outlives a change of configuration).
    governors: Arc<Governors>,
    /// The live tokens of OAuth connections (shared with the runtimes a reload builds).
    credentials: Arc<Credentials>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("recipes", &self.plan.recipes.len())
            .field("connections", &self.conns)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens every connection of the plan (nothing is sent yet) around a state store.
    /// OAuth connections have no token (see [`Runtime::with_credentials`]).
    pub fn new(plan: Plan, store: Arc<dyn Store>) -> Result<Arc<Runtime>> {
        Self::build(
            plan,
            Some(store),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        )
    }

    /// As [`Runtime::new`], OAuth connections taking their tokens from `credentials` (those
    /// stored in the state directory).
    pub fn with_credentials(
        plan: Plan,
        store: Arc<dyn Store>,
        credentials: Arc<Credentials>,
    ) -> Result<Arc<Runtime>> {
        Self::build(
            plan,
            Some(store),
            Arc::default(),
            Arc::default(),
            credentials,
        )
    }

    /// A runtime without state, for dry runs: cycles cannot run on it.
    pub fn stateless(plan: Plan) -> Result<Arc<Runtime>> {
        Self::build(plan, None, Arc::default(), Arc::default(), Arc::default())
    }

    /// A runtime for a new plan (a reload) that keeps this one's store, rate governors and
    /// `emit` sink: cycles still running on this one and those starting on the new one share
    /// each workspace's budget.
    pub fn rebuild(&self, plan: Plan) -> Result<Arc<Runtime>> {
        Self::build(
            plan,
            self.store.clone(),
            self.governors.clone(),
            self.emit.clone(),
            self.credentials.clone(),
        )
    }

    fn build(
        plan: Plan,
        store: Option<Arc<dyn Store>>,
        governors: Arc<Governors>,
        emit: Arc<Emitter>,
        credentials: Arc<Credentials>,
    ) -> Result<Arc<Runtime>> {
        let mut conns = Vec::with_capacity(plan.connections.len());
        let mut conn_limits = Vec::with_capacity(plan.connections.len());
        for c in &plan.connections {
            conns.push(Arc::new(
                Connection::with_parts(c, &governors, &credentials)
                    .with_context(|| format!("connection `{}`", c.name))?,
            ));
            conn_limits.push(c.concurrency.map(|n| Arc::new(Semaphore::new(n))));
        }
        Ok(Arc::new(Runtime {
            plan,
            conns,
            conn_limits,
            store,
            emit,
            governors,
            credentials,
        }))
    }

    /// The live tokens of OAuth connections.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Each OAuth connection that cannot be used now, with why (by name).
    pub fn unauthorized(&self) -> Vec<(String, String)> {
        self.conns
            .iter()
            .filter_map(|c| {
                let p = c.oauth()?.status().problem(&c.name)?;
                Some((c.name.clone(), p))
            })
            .collect()
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// An open connection.
    pub fn conn(&self, id: ConnId) -> &Arc<Connection> {
        &self.conns[id.index()]
    }

    /// An open connection by its name in `sluice.yaml`.
    pub fn conn_named(&self, name: &str) -> Result<&Arc<Connection>> {
        self.plan
            .connection_named(name)
            .map(|c| self.conn(c.id))
            .ok_or_else(|| anyhow!("there is no connection `{name}` in the config file"))
    }

    /// The cap on chains in flight on a connection, if it has one.
    pub(crate) fn conn_limit(&self, id: ConnId) -> Option<&Arc<Semaphore>> {
        self.conn_limits[id.index()].as_ref()
    }

    /// The state store.
    pub fn store(&self) -> Result<&dyn Store> {
        self.store
            .as_deref()
            .ok_or_else(|| anyhow!("this runtime has no state store (a dry run)"))
    }

    /// Where `emit` steps write.
    pub fn emitter(&self) -> &Emitter {
        &self.emit
    }

    /// The shared state store, for those that outlive this runtime (a reload's).
    pub fn store_arc(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Each workspace's rate budget: the names of the connections to it (joined by `,`) and
    /// what its governor has seen.
    pub fn workspaces(&self) -> Vec<WorkspaceStats> {
        let mut out: Vec<WorkspaceStats> = Vec::new();
        for (conn, plan) in self.conns.iter().zip(&self.plan.connections) {
            let s = conn.governor_stats();
            match out
                .iter_mut()
                .find(|w| conn.same_workspace(&self.conns[w.first]))
            {
                Some(w) => w.connections.push_str(&format!(",{}", plan.name)),
                None => out.push(WorkspaceStats {
                    connections: plan.name.clone(),
                    first: plan.id.index(),
                    calls: s.sent,
                    rate_limited: s.rejected,
                    limit: s.limit,
                    budget: s.budget,
                    remaining: s.remaining,
                }),
            }
        }
        out
    }

    /// Logs what each workspace's rate governor has seen (calls, 429s, budget).
    pub fn log_rate_budgets(&self) {
        for (key, s) in self.governors.stats() {
            tracing::debug!(workspace = ?key, calls = s.sent, rate_limited = s.rejected, limit = s.limit, budget = s.budget, remaining = s.remaining, "Rate budget.");
        }
    }
}

/// A workspace's rate budget, for metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceStats {
    /// The connections to it, by name, joined by `,`.
    pub connections: String,
    first: usize,
    /// Calls sent since sluice started.
    pub calls: u64,
    /// 429 answers since sluice started.
    pub rate_limited: u64,
    /// The server's limit per window.
    pub limit: u32,
    /// sluice's share of it per window.
    pub budget: u32,
    /// Calls left in the current window.
    pub remaining: u32,
}

/// Asks running cycles to stop (mini-redis style): they stop taking records, let chains in
/// flight finish their step, commit, and return.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A cycle's view of the shutdown request.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and receiver.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Requests the shutdown.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A receiver that is never triggered.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // The sender is dropped: the value stays `false` for good.
        drop(tx);
        Shutdown(rx)
    }

    /// Whether the shutdown was requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the shutdown is requested (for ever, when it cannot be).
    pub async fn requested(&mut self) {
        if self.0.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
