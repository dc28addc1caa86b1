//! Store: the sled database in the state directory. The only module that touches sled.
//!
//! One sled tree, [`TREE`], with a key space per kind (the prefixes below): cursors (recipe →
//! [`Checkpoint`]), dedupe keys (recipe + key → record time), a time index of dedupe keys for
//! pruning, the run journal (recipe + key → [`JournalEntry`]: a record whose chain is under
//! way) and dead letters (id → [`DeadLetter`]). One tree because sled applies a batch to one
//! tree atomically at a fraction of the cost of a multi-tree transaction (measured: see
//! docs/BENCHMARKS.md). Every value is versioned JSON (`{"v":1,…}`) so a later format can read
//! old data. Owns atomicity and durability: [`StateStore::commit`] writes dedupe keys, journal
//! removals, dead letters and the cursor in one atomic batch and fsyncs;
//! [`StateStore::journal_step`] fsyncs before returning. Does not decide what to commit: the
//! engine does.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tree holding all state.
pub const TREE: &str = "state";
/// Key prefix of cursors.
pub const CURSORS: u8 = b'c';
/// Key prefix of handled dedupe keys.
pub const DEDUPE: u8 = b'd';
/// Key prefix of the dedupe-key index by record time, for pruning.
pub const DEDUPE_BY_TIME: u8 = b't';
/// Key prefix of records whose chain is under way.
pub const JOURNAL: u8 = b'j';
/// Key prefix of dead letters.
pub const DEAD_LETTERS: u8 = b'x';

/// A recipe's progress: every record with a cursor value below `cursor` has finished, and
/// records older than `floor` never fire (the recipe's `start_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cursor (high-water mark), Unix seconds.
    pub cursor: i64,
    /// Records changed before this never fire.
    pub floor: i64,
    /// The largest cursor value of any record ever marked handled: a record above it cannot
    /// have been seen, so its dedupe lookup is skipped.
    #[serde(default)]
    pub high: i64,
}

/// One finished step in a record's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDone {
    /// Step id.
    pub step: String,
    /// Its output (`null` when skipped).
    pub output: Value,
    /// Whether it was skipped (`if` false, or failed with `on_error: skip`).
    pub skipped: bool,
    /// The error, when it failed and was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A record whose chain has started but not finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The record, as first seen (a resumed chain uses the same data).
    pub record: Value,
    /// Its cursor value.
    pub ts: i64,
    /// Steps finished so far, in order.
    pub done: Vec<StepDone>,
    /// Failed attempts of the current step (`on_error: retry`).
    pub attempts: u32,
}

/// A borrowed view of a [`JournalEntry`], for writing without copying the record.
#[derive(Debug, Serialize)]
pub struct JournalView<'a> {
    /// The record.
    pub record: &'a Value,
    /// Its cursor value.
    pub ts: i64,
    /// Steps finished so far.
    pub done: &'a [StepDone],
    /// Failed attempts of the current step.
    pub attempts: u32,
}

/// A record whose chain failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Recipe id.
    pub recipe: String,
    /// The record's dedupe key.
    pub key: String,
    /// The record's cursor value.
    pub ts: i64,
    /// The record.
    pub record: Value,
    /// Steps that had finished (replay starts after them).
    pub done: Vec<StepDone>,
    /// The step that failed.
    pub failed_step: String,
    /// Failure class (`fatal`, `conflict`, …).
    pub class: String,
    /// What went wrong.
    pub error: String,
    /// `METHOD /path` of the failing request, when there was one (no host, no query).
    pub request: Option<String>,
    /// HTTP status of the failing response, when there was one.
    pub status: Option<u16>,
    /// When it happened (Unix seconds).
    pub at: i64,
}

#[derive(Serialize, Deserialize)]
struct V1<T> {
    v: u32,
    #[serde(flatten)]
    inner: T,
}

fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    serde_json::to_vec(&V1 { v: 1, inner: t }).expect("invariant: state values serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    let v: V1<T> = serde_json::from_slice(bytes)
        .with_context(|| format!("the state store holds an unreadable {what}"))?;
    if v.v != 1 {
        return Err(anyhow!(
            "the state store holds a {what} of version {} (this sluice reads version 1)",
            v.v
        ));
    }
    Ok(v.inner)
}

fn key(kind: u8, recipe: &str, k: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + recipe.len() + 1 + k.len());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(recipe.as_bytes());
    out.push(0);
    out.extend_from_slice(k.as_bytes());
    out
}

fn prefix(kind: u8, recipe: &str) -> Vec<u8> {
    key(kind, recipe, "")
}

fn cursor_key(recipe: &str) -> Vec<u8> {
    key(CURSORS, recipe, "")
}

fn dead_key(id: u64) -> Vec<u8> {
    let mut out = vec![DEAD_LETTERS, 0];
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Order-preserving encoding of an i64.
fn time_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_key(recipe: &str, ts: i64, k: &str) -> Vec<u8> {
    let mut out = prefix(DEDUPE_BY_TIME, recipe);
    out.extend_from_slice(&time_bytes(ts));
    out.extend_from_slice(k.as_bytes());
    out
}

/// Counts for `sluice state show`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecipeState {
    /// Recipe id.
    pub recipe: String,
    /// Its checkpoint, if it has run.
    pub checkpoint: Option<Checkpoint>,
    /// Dedupe keys kept.
    pub dedupe_keys: usize,
    /// Records whose chain is under way.
    pub in_journal: usize,
    /// Dead letters.
    pub dead_letters: usize,
}

/// The state store.
pub struct StateStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. Fails with a clear message when another sluice
    /// process holds it.
    pub fn open(dir: &Path) -> Result<StateStore> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory `{}`", dir.display()))?;
        #[allow(clippy::disallowed_methods)]
        let db = sled::Config::new()
            .path(dir.join("sluice.db"))
            .flush_every_ms(Some(1000))
            // sled's default page cache is 1 GiB; the state is small and mostly write-once.
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    anyhow!(
                        "the state directory `{}` is in use by another sluice process",
                        dir.display()
                    )
                }
                other => anyhow!(
                    "cannot open the state store in `{}`: {other}",
                    dir.display()
                ),
            })?;
        Ok(StateStore {
            tree: db.open_tree(TREE)?,
            db,
        })
    }

    /// A recipe's checkpoint.
    pub fn checkpoint(&self, recipe: &str) -> Result<Option<Checkpoint>> {
        self.tree
            .get(cursor_key(recipe))?
            .map(|b| decode("checkpoint", &b))
            .transpose()
    }

    /// Whether a record with this dedupe key has finished.
    pub fn seen(&self, recipe: &str, k: &str) -> Result<bool> {
        Ok(self.tree.contains_key(key(DEDUPE, recipe, k))?)
    }

    /// The journal entry of a record whose chain is under way.
    pub fn journal(&self, recipe: &str, k: &str) -> Result<Option<JournalEntry>> {
        self.tree
            .get(key(JOURNAL, recipe, k))?
            .map(|b| decode("journal entry", &b))
            .transpose()
    }

    /// Records progress of a chain and makes it durable (fsync) before returning, so a
    /// finished step is never run again after a crash.
    pub fn journal_step(&self, recipe: &str, k: &str, entry: &JournalView<'_>) -> Result<()> {
        self.tree.insert(key(JOURNAL, recipe, k), encode(entry))?;
        self.db.flush()?;
        Ok(())
    }

    /// In one atomic batch: marks `finished` records handled (dedupe keys), removes the journal
    /// entries of those that had one (`journaled`), stores dead letters and sets the
    /// checkpoint; then fsyncs.
    pub fn commit(
        &self,
        recipe: &str,
        finished: &[(String, i64, bool)],
        dead: &[DeadLetter],
        checkpoint: Checkpoint,
    ) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, ts, journaled) in finished {
            if *journaled {
                b.remove(key(JOURNAL, recipe, k));
            }
            b.insert(key(DEDUPE, recipe, k), &time_bytes(*ts));
            b.insert(time_key(recipe, *ts, k), &[]);
        }
        for d in dead {
            b.insert(dead_key(self.db.generate_id()?), encode(d));
            b.remove(key(JOURNAL, recipe, &d.key));
        }
        b.insert(cursor_key(recipe), encode(&checkpoint));
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes up to `max` dedupe keys of records older than `before`, oldest first; returns
    /// how many. Works in chunks so that pruning a large backlog does not hold it in memory;
    /// the cap spreads a large backlog (after a backfill) over several cycles.
    pub fn prune(&self, recipe: &str, before: i64, max: usize) -> Result<usize> {
        const CHUNK: usize = 1024;
        let start = prefix(DEDUPE_BY_TIME, recipe);
        let plen = start.len();
        let mut end = start.clone();
        end.extend_from_slice(&time_bytes(before));
        let mut n = 0;
        loop {
            let keys: Vec<sled::IVec> = self
                .tree
                .range(start.clone()..end.clone())
                .keys()
                .take(CHUNK.min(max - n))
                .collect::<sled::Result<_>>()?;
            if keys.is_empty() {
                break;
            }
            let mut b = sled::Batch::default();
            for k in &keys {
                b.remove(key(
                    DEDUPE,
                    recipe,
                    std::str::from_utf8(&k[plen + 8..]).unwrap_or_default(),
                ));
                b.remove(k.clone());
            }
            self.tree.apply_batch(b)?;
            n += keys.len();
            if n >= max {
                break;
            }
        }
        Ok(n)
    }

    /// Dead letters, oldest first, with their ids; only one recipe's when given.
    pub fn dead_letters(&self, recipe: Option<&str>) -> Result<Vec<(u64, DeadLetter)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([DEAD_LETTERS, 0]) {
            let (k, v) = item?;
            let d: DeadLetter = decode("dead letter", &v)?;
            if recipe.is_none_or(|r| r == d.recipe) {
                let id = u64::from_be_bytes(k[2..].try_into().unwrap_or([0; 8]));
                out.push((id, d));
            }
        }
        Ok(out)
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        self.tree
            .get(dead_key(id))?
            .map(|b| decode("dead letter", &b))
            .transpose()
    }

    /// Removes a dead letter; false when there was none.
    pub fn drop_dead_letter(&self, id: u64) -> Result<bool> {
        let had = self.tree.remove(dead_key(id))?.is_some();
        self.db.flush()?;
        Ok(had)
    }

    /// Puts a dead letter's record back into the journal (resuming at its failed step) and
    /// removes the dead letter and its dedupe key, atomically.
    pub fn requeue_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let Some(d) = self.dead_letter(id)? else {
            return Ok(None);
        };
        let view = JournalView {
            record: &d.record,
            ts: d.ts,
            done: &d.done,
            attempts: 0,
        };
        let mut b = sled::Batch::default();
        b.insert(key(JOURNAL, &d.recipe, &d.key), encode(&view));
        b.remove(dead_key(id));
        b.remove(key(DEDUPE, &d.recipe, &d.key));
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(Some(d))
    }

    /// Journal entries of a recipe (records under way), with their keys.
    pub fn journal_entries(&self, recipe: &str) -> Result<Vec<(String, JournalEntry)>> {
        let p = prefix(JOURNAL, recipe);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&p) {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k[p.len()..]).into_owned(),
                decode("journal entry", &v)?,
            ));
        }
        Ok(out)
    }

    /// Counts for one recipe.
    pub fn recipe_state(&self, recipe: &str) -> Result<RecipeState> {
        Ok(RecipeState {
            recipe: recipe.to_string(),
            checkpoint: self.checkpoint(recipe)?,
            dedupe_keys: self.tree.scan_prefix(prefix(DEDUPE, recipe)).count(),
            in_journal: self.tree.scan_prefix(prefix(JOURNAL, recipe)).count(),
            dead_letters: self.dead_letters(Some(recipe))?.len(),
        })
    }

    /// Recipe ids that have any state.
    pub fn recipes(&self) -> Result<Vec<String>> {
        let mut out = std::collections::BTreeSet::new();
        for item in self.tree.scan_prefix([CURSORS, 0]) {
            let (k, _) = item?;
            let name = &k[2..k.len().saturating_sub(1)];
            out.insert(String::from_utf8_lossy(name).into_owned());
        }
        for (_, d) in self.dead_letters(None)? {
            out.insert(d.recipe);
        }
        Ok(out.into_iter().collect())
    }

    /// Forgets a recipe's cursor, dedupe keys and journal (dead letters are kept).
    pub fn reset(&self, recipe: &str) -> Result<()> {
        let mut b = sled::Batch::default();
        b.remove(cursor_key(recipe));
        for kind in [DEDUPE, DEDUPE_BY_TIME, JOURNAL] {
            for item in self.tree.scan_prefix(prefix(kind, recipe)) {
                b.remove(item?.0);
            }
        }
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_prune_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(s.checkpoint("r").unwrap(), None);
        let entry = JournalEntry {
            record: serde_json::json!({"id": "a"}),
            ts: 10,
            done: vec![],
            attempts: 0,
        };
        s.journal_step(
            "r",
            "a",
            &JournalView {
                record: &entry.record,
                ts: entry.ts,
                done: &entry.done,
                attempts: 0,
            },
        )
        .unwrap();
        assert_eq!(s.journal("r", "a").unwrap(), Some(entry));
        let cp = Checkpoint {
            cursor: 30,
            floor: 0,
            high: 30,
        };
        let dl = DeadLetter {
            recipe: "r".into(),
            key: "c".into(),
            ts: 25,
            record: Value::Null,
            done: vec![],
            failed_step: "x".into(),
            class: "fatal".into(),
            error: "boom".into(),
            request: None,
            status: None,
            at: 1,
        };
        s.commit(
            "r",
            &[("a".into(), 10, true), ("b".into(), 20, false)],
            std::slice::from_ref(&dl),
            cp,
        )
        .unwrap();
        assert!(
            s.seen("r", "a").unwrap()
                && s.seen("r", "b").unwrap()
                && !s.seen("other", "a").unwrap()
        );
        assert_eq!(s.journal("r", "a").unwrap(), None);
        assert_eq!(s.checkpoint("r").unwrap(), Some(cp));
        let dead = s.dead_letters(Some("r")).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, dl);
        // Pruning removes only keys older than the bound.
        assert_eq!(s.prune("r", 25, 1).unwrap(), 1);
        assert!(!s.seen("r", "a").unwrap() && s.seen("r", "b").unwrap());
        assert_eq!(s.recipe_state("r").unwrap().dedupe_keys, 1);
        // Requeue moves the dead letter back to the journal.
        let id = dead[0].0;
        assert!(s.requeue_dead_letter(id).unwrap().is_some());
        assert!(s.dead_letters(None).unwrap().is_empty());
        assert_eq!(s.journal_entries("r").unwrap().len(), 1);
        s.reset("r").unwrap();
        assert_eq!(s.recipe_state("r").unwrap().dedupe_keys, 0);
        assert_eq!(s.checkpoint("r").unwrap(), None);
    }

    #[test]
    fn time_keys_sort_by_time_including_negative() {
        assert!(time_bytes(-5) < time_bytes(3));
        assert!(time_bytes(3) < time_bytes(1_700_000_000));
    }
}
