//! Run history: what each cycle did and, for each record it fired, what each step sent and
//! got — kept in the state store, bounded by age and count.
//!
//! Owns the shapes of history rows ([`RunId`], [`RecordRun`], [`StepRun`], [`Hourly`]), the
//! bound on what a row may hold ([`truncate`]) and the retention settings. The store keeps
//! them; the engine writes them; the sidecar's pages and `/api` read them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cycle in the history: its start (Unix ms) and an id unique in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId {
    /// When the cycle started (Unix milliseconds).
    pub started_ms: i64,
    /// Unique among the store's runs.
    pub id: u64,
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.started_ms, self.id)
    }
}

impl std::str::FromStr for RunId {
    type Err = String;
    fn from_str(s: &str) -> Result<RunId, String> {
        let (t, id) = s
            .split_once('-')
            .filter(|(t, _)| !t.is_empty())
            .or_else(|| {
                // A negative start time: `-5-7`.
                s.strip_prefix('-')
                    .and_then(|r| r.split_once('-'))
                    .map(|(t, id)| (&s[..t.len() + 1], id))
            })
            .ok_or_else(|| format!("`{s}` is not a run id (START_MS-ID)"))?;
        Ok(RunId {
            started_ms: t.parse().map_err(|_| format!("`{s}` is not a run id"))?,
            id: id.parse().map_err(|_| format!("`{s}` is not a run id"))?,
        })
    }
}

/// What a fired record came to in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordRun {
    /// Its dedupe key.
    pub key: String,
    /// `finished`, `dead` (a dead letter) or `unfinished` (left for the next cycle).
    pub outcome: String,
    /// The steps run in this cycle, in order (steps finished in an earlier cycle are not
    /// repeated here).
    pub steps: Vec<StepRun>,
    /// Why it did not finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One step of a record's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// The step's id.
    pub step: String,
    /// The inputs it was rendered with (what it sent), truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Value>,
    /// Its output (what it got), truncated.
    #[serde(default)]
    pub got: Value,
    /// Skipped (`if` false, or `on_error: skip`).
    #[serde(default)]
    pub skipped: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One hour of a recipe instance's runs, for charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hourly {
    /// Cycles started in the hour.
    pub cycles: u64,
    /// Records fired.
    pub fired: u64,
    /// Records that became dead letters, plus cycles that stopped on an error.
    pub failed: u64,
}

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Runs older than this go (milliseconds).
    pub max_age_ms: i64,
    /// At most this many runs per recipe instance (the oldest go first).
    pub max_runs: usize,
    /// At most this many record rows per run.
    pub max_records_per_run: usize,
    /// At most this many runs in all, shared evenly by the instances with history: the
    /// store's memory grows with its number of keys (sled), so the default bounds the whole
    /// history, not only each instance's, whatever the number of instances.
    pub max_total_runs: usize,
}

impl Retention {
    /// The runs each of `namespaces` instances keeps: `max_runs`, or its even share of
    /// `max_total_runs` when that is smaller (at least one).
    pub fn runs_per_instance(&self, namespaces: usize) -> usize {
        let share = self.max_total_runs / namespaces.max(1);
        self.max_runs.min(share.max(1))
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_age_ms: 30 * 86_400_000,
            max_runs: 2_000,
            max_records_per_run: 10_000,
            max_total_runs: 200_000,
        }
    }
}

/// Prunes every namespace's history to `retention`, at most `batch` rows per store call (so
/// no call holds the store long); returns how many rows went. Blocking: call it from a
/// blocking thread in async code.
pub fn prune_all(
    store: &dyn crate::store::Store,
    now_ms: i64,
    retention: &Retention,
    batch: usize,
) -> anyhow::Result<usize> {
    let mut gone = 0;
    let namespaces = store.history_namespaces()?;
    let retention = Retention {
        max_runs: retention.runs_per_instance(namespaces.len()),
        ..*retention
    };
    for ns in namespaces {
        loop {
            // One namespace's trouble does not keep the others from being pruned.
            let n = match store.prune_history(&ns, now_ms, &retention, batch) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(instance = %ns, error = %format!("{e:#}"), "Its run history could not be pruned.");
                    break;
                }
            };
            gone += n;
            if n < batch {
                break;
            }
        }
    }
    Ok(gone)
}

/// The most a step's `sent` or `got` keeps, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 2_048;

/// `v` if its JSON fits in [`MAX_VALUE_BYTES`], else its JSON text cut there (on a character
/// boundary) with `…` appended, as a string.
pub fn truncate(v: &Value) -> Value {
    let text = v.to_string();
    if text.len() <= MAX_VALUE_BYTES {
        return v.clone();
    }
    let mut end = MAX_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(format!("{}…", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_history_is_bounded_and_shared_evenly() {
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let r = Retention {
            max_age_ms: i64::MAX / 2,
            max_runs: 8,
            max_records_per_run: 10,
            max_total_runs: 12,
        };
        assert_eq!(r.runs_per_instance(1), 8);
        assert_eq!(r.runs_per_instance(3), 4);
        assert_eq!(r.runs_per_instance(100), 1, "at least one each");
        let mut id = 0;
        for ns in ["a@c", "b@c", "c@c"] {
            for t in 0..10 {
                id += 1;
                let run = RunId { started_ms: t, id };
                store
                    .record_cycle(ns, run, "{}", Hourly::default())
                    .unwrap();
            }
        }
        // Three instances share 12 runs: 4 each, the newest.
        assert_eq!(prune_all(&store, 100, &r, 5).unwrap(), 18);
        for ns in ["a@c", "b@c", "c@c"] {
            let left: Vec<i64> = store.cycles(ns, 100).unwrap().iter().map(|c| c.0).collect();
            assert_eq!(left, [9, 8, 7, 6], "{ns}");
        }
        // One instance alone keeps its own bound (8), not the whole total.
        for t in 0..10 {
            let run = RunId {
                started_ms: t,
                id: 1_000 + t as u64,
            };
            store
                .record_cycle("solo", run, "{}", Hourly::default())
                .unwrap();
        }
        let solo = Retention {
            max_total_runs: 1_000,
            ..r
        };
        prune_all(&store, 100, &solo, 100).unwrap();
        assert_eq!(store.cycles("solo", 100).unwrap().len(), 8);
    }

    #[test]
    fn run_ids_round_trip() {
        for r in [
            RunId {
                started_ms: 1_796_000_000_000,
                id: 42,
            },
            RunId {
                started_ms: -5,
                id: 7,
            },
        ] {
            assert_eq!(r.to_string().parse::<RunId>(), Ok(r));
        }
        assert!("x-1".parse::<RunId>().is_err());
        assert!("12".parse::<RunId>().is_err());
    }

    #[test]
    fn values_are_cut_on_a_character_boundary() {
        let small = serde_json::json!({"a": 1});
        assert_eq!(truncate(&small), small);
        let big = Value::String("é".repeat(5_000));
        let Value::String(cut) = truncate(&big) else {
            panic!("a string")
        };
        assert!(cut.len() <= MAX_VALUE_BYTES + "…".len());
        assert!(cut.ends_with('…'));
    }
}
