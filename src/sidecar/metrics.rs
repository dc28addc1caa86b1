//! Metrics: the sidecar's Prometheus (OpenMetrics text) exposition, with `prometheus-client`.
//!
//! Per recipe instance (labels `recipe`, `connection`): cycles by result, records polled /
//! already seen / filtered / fired / finished / dead, step failures by class, cycle duration,
//! tick lateness, skipped slots by reason, catch-up cycles, failures in a row and the backoff,
//! cursor lag. Per workspace (label `workspace`: its connections' names): calls, 429s, the
//! limit, sluice's budget and what is left of it. Values only known at scrape time (cursor
//! lag, the governors' counts) are handed to [`Metrics::encode`] and written by a collector.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::CycleReport;
use crate::plan::Recipe;
use crate::runtime::WorkspaceStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Inst {
    recipe: String,
    connection: String,
}

/// An instance's labels and one more: `result`, `reason` or `class`, by family.
macro_rules! labels_with {
    ($name:ident, $extra:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
            recipe: String,
            connection: String,
            $extra: String,
        }

        impl $name {
            fn of(i: Inst, v: &str) -> $name {
                $name {
                    recipe: i.recipe,
                    connection: i.connection,
                    $extra: v.into(),
                }
            }
        }
    };
}
labels_with!(ByResult, result);
labels_with!(ByReason, reason);
labels_with!(ByClass, class);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: String,
}

const RESULTS: [&str; 3] = ["ok", "error", "interrupted"];
const REASONS: [&str; 3] = ["overlap", "backoff", "paused"];

type Hist = Family<Inst, Histogram, fn() -> Histogram>;

// Buckets ×4 apart: per-instance histograms are most of a scrape (1,000 instances at ×2
// apart made 37,000 bucket series of 66,000), and quantiles at ×4 still tell 250 ms from 1 s.

fn duration_histogram() -> Histogram {
    // 10 ms … ~44 min.
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

fn lateness_histogram() -> Histogram {
    // 1 ms … ~66 s (0.256 s: the soak's bar).
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

/// The sidecar's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    /// Instance name → labels.
    labels: Mutex<std::collections::HashMap<String, Inst>>,
    cycles: Family<ByResult, Counter>,
    polled: Family<Inst, Counter>,
    seen: Family<Inst, Counter>,
    filtered: Family<Inst, Counter>,
    fired: Family<Inst, Counter>,
    finished: Family<Inst, Counter>,
    dead: Family<Inst, Counter>,
    step_failures: Family<ByClass, Counter>,
    duration: Hist,
    lateness: Hist,
    skipped: Family<ByReason, Counter>,
    catch_up: Family<Inst, Counter>,
    failures: Family<Inst, Gauge>,
    backoff: Family<Inst, Gauge>,
    reloads: Family<ReloadResult, Counter>,
    scrape: Arc<ScrapeTime>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Values known at scrape time.
#[derive(Debug, Default)]
struct ScrapeTime {
    now: Mutex<Snapshot>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    /// Per instance: labels' recipe and connection, and the cursor lag in seconds.
    pub cursor_lag: Vec<(String, String, i64)>,
    pub workspaces: Vec<WorkspaceStats>,
    /// Broken recipe files and unavailable connections.
    pub broken: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ws {
    workspace: String,
}

impl Collector for ScrapeTime {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self
            .now
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "sluice_cursor_lag_seconds",
                "How far the instance's cursor is behind now",
                None,
                g.metric_type(),
            )?;
            for (recipe, connection, lag) in &snap.cursor_lag {
                let l = Inst {
                    recipe: recipe.clone(),
                    connection: connection.clone(),
                };
                ConstGauge::new(*lag).encode(m.encode_family(&l)?)?;
            }
        }
        type Pick = fn(&WorkspaceStats) -> u64;
        let counters: [(&str, &str, Pick); 2] = [
            (
                "sluice_workspace_calls",
                "Calls sent to the workspace",
                |w| w.calls,
            ),
            (
                "sluice_workspace_rate_limited",
                "429 answers from the workspace",
                |w| w.rate_limited,
            ),
        ];
        for (name, help, pick) in counters {
            let mut m =
                enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            for w in &snap.workspaces {
                let l = Ws {
                    workspace: w.connections.clone(),
                };
                ConstCounter::new(pick(w)).encode(m.encode_family(&l)?)?;
            }
        }
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "sluice_workspace_rate_limit",
                "The server's limit per window",
                |w| u64::from(w.limit),
            ),
            (
                "sluice_workspace_budget",
                "sluice's share of the limit per window",
                |w| u64::from(w.budget),
            ),
            (
                "sluice_workspace_budget_remaining",
                "Calls left in the current window",
                |w| u64::from(w.remaining),
            ),
        ];
        for (name, help, pick) in gauges {
            let mut m =
                enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for w in &snap.workspaces {
                let l = Ws {
                    workspace: w.connections.clone(),
                };
                ConstGauge::new(pick(w).min(i64::MAX as u64) as i64)
                    .encode(m.encode_family(&l)?)?;
            }
        }
        let g = ConstGauge::new(snap.broken as i64);
        g.encode(enc.encode_descriptor(
            "sluice_broken",
            "Recipe files that do not load and connections that cannot be used",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            labels: Mutex::default(),
            cycles: Family::default(),
            polled: Family::default(),
            seen: Family::default(),
            filtered: Family::default(),
            fired: Family::default(),
            finished: Family::default(),
            dead: Family::default(),
            step_failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            lateness: Family::new_with_constructor(lateness_histogram),
            skipped: Family::default(),
            catch_up: Family::default(),
            failures: Family::default(),
            backoff: Family::default(),
            reloads: Family::default(),
            scrape: Arc::default(),
        };
        let r = &mut m.registry;
        r.register(
            "sluice_cycles",
            "Cycles by result (ok, error, interrupted)",
            m.cycles.clone(),
        );
        r.register(
            "sluice_records_polled",
            "Records the trigger returned",
            m.polled.clone(),
        );
        r.register(
            "sluice_records_seen",
            "Records skipped: already handled",
            m.seen.clone(),
        );
        r.register(
            "sluice_records_filtered",
            "Records the filter stopped",
            m.filtered.clone(),
        );
        r.register(
            "sluice_records_fired",
            "Records whose chain ran",
            m.fired.clone(),
        );
        r.register(
            "sluice_records_finished",
            "Chains that finished",
            m.finished.clone(),
        );
        r.register(
            "sluice_records_dead",
            "Records that became dead letters",
            m.dead.clone(),
        );
        r.register(
            "sluice_step_failures",
            "Failed steps by failure class",
            m.step_failures.clone(),
        );
        r.register(
            "sluice_cycle_duration_seconds",
            "How long cycles take",
            m.duration.clone(),
        );
        r.register(
            "sluice_tick_lateness_seconds",
            "How late after its slot a scheduled cycle started",
            m.lateness.clone(),
        );
        r.register(
            "sluice_ticks_skipped",
            "Slots skipped, by reason (overlap, backoff, paused); a later cycle covers them",
            m.skipped.clone(),
        );
        r.register(
            "sluice_catch_up_cycles",
            "Cycles run at once for slots skipped or missed while down",
            m.catch_up.clone(),
        );
        r.register(
            "sluice_recipe_consecutive_failures",
            "Failed cycles in a row",
            m.failures.clone(),
        );
        r.register(
            "sluice_recipe_backoff_seconds",
            "Backoff after the failed cycles in a row",
            m.backoff.clone(),
        );
        r.register(
            "sluice_reloads",
            "Configuration reloads by result (ok, partial, failed)",
            m.reloads.clone(),
        );
        r.register_collector(Box::new(m.scrape.clone()));
        m
    }

    fn inst(&self, instance: &str) -> Inst {
        let labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        labels.get(instance).cloned().unwrap_or_else(|| {
            let (recipe, connection) = instance.split_once('@').unwrap_or((instance, ""));
            Inst {
                recipe: recipe.into(),
                connection: connection.into(),
            }
        })
    }

    /// The per-instance counters without a further label.
    fn record_counters(&self) -> [&Family<Inst, Counter>; 7] {
        [
            &self.polled,
            &self.seen,
            &self.filtered,
            &self.fired,
            &self.finished,
            &self.dead,
            &self.catch_up,
        ]
    }

    /// Makes an instance's series exist from the start (at zero).
    pub(crate) fn register(&self, r: &Recipe) {
        let i = Inst {
            recipe: r.id.clone(),
            connection: r.connection.clone(),
        };
        self.labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(r.instance.clone(), i.clone());
        for f in self.record_counters() {
            let _ = f.get_or_create(&i);
        }
        for v in RESULTS {
            let _ = self.cycles.get_or_create(&ByResult::of(i.clone(), v));
        }
        for v in REASONS {
            let _ = self.skipped.get_or_create(&ByReason::of(i.clone(), v));
        }
        let _ = self.failures.get_or_create(&i);
        let _ = self.backoff.get_or_create(&i);
    }

    /// Drops a removed instance's series.
    pub(crate) fn forget(&self, instance: &str) {
        let i = self.inst(instance);
        for f in self.record_counters() {
            f.remove(&i);
        }
        for f in [&self.failures, &self.backoff] {
            f.remove(&i);
        }
        self.duration.remove(&i);
        self.lateness.remove(&i);
        for v in RESULTS {
            self.cycles.remove(&ByResult::of(i.clone(), v));
        }
        for v in REASONS {
            self.skipped.remove(&ByReason::of(i.clone(), v));
        }
        for (class, _) in crate::failure::ByClass::default().iter() {
            self.step_failures
                .remove(&ByClass::of(i.clone(), &class.to_string()));
        }
        self.labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(instance);
    }

    /// A scheduled cycle started `late_ms` after its slot.
    pub(crate) fn tick(&self, instance: &str, late_ms: i64) {
        self.lateness
            .get_or_create(&self.inst(instance))
            .observe(late_ms.max(0) as f64 / 1e3);
    }

    /// `n` slots skipped for `reason`.
    pub(crate) fn skipped(&self, instance: &str, reason: &str, n: u32) {
        self.skipped
            .get_or_create(&ByReason::of(self.inst(instance), reason))
            .inc_by(u64::from(n));
    }

    /// A catch-up cycle started.
    pub(crate) fn catch_up(&self, instance: &str) {
        self.catch_up.get_or_create(&self.inst(instance)).inc();
    }

    /// A cycle ended.
    pub(crate) fn cycle(&self, instance: &str, r: &CycleReport, failures: u32, backoff_ms: i64) {
        let i = self.inst(instance);
        self.count(&i, r);
        self.failures.get_or_create(&i).set(i64::from(failures));
        self.backoff.get_or_create(&i).set(backoff_ms / 1000);
    }

    /// A cycle's counts and duration.
    fn count(&self, i: &Inst, r: &CycleReport) {
        let result = if r.error.is_some() {
            "error"
        } else if r.interrupted {
            "interrupted"
        } else {
            "ok"
        };
        self.cycles
            .get_or_create(&ByResult::of(i.clone(), result))
            .inc();
        self.polled.get_or_create(i).inc_by(r.polled);
        self.seen.get_or_create(i).inc_by(r.skipped_seen);
        self.filtered.get_or_create(i).inc_by(r.filtered);
        self.fired.get_or_create(i).inc_by(r.fired);
        self.finished.get_or_create(i).inc_by(r.finished);
        self.dead.get_or_create(i).inc_by(r.dead_letters);
        for (class, n) in r.step_failures.iter() {
            if n > 0 {
                self.step_failures
                    .get_or_create(&ByClass::of(i.clone(), &class.to_string()))
                    .inc_by(n);
            }
        }
        self.duration.get_or_create(i).observe(r.elapsed_ms / 1e3);
    }

    /// A reload ended (`ok`, `partial`: some files kept their last good version, `failed`).
    pub(crate) fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ReloadResult {
                result: result.into(),
            })
            .inc();
    }

    /// The exposition, with the scrape-time values.
    pub(crate) fn encode(&self, snap: Snapshot) -> String {
        *self
            .scrape
            .now
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = snap;
        let mut out = String::new();
        // Writing to a `String` cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
