//! Store: the sled database in the state directory. The only module that touches sled.
//!
//! Trees (names are the constants below): `cursors` (recipe → [`Checkpoint`]), `dedupe`
//! (recipe + dedupe key → record time), `dedupe_by_time` (an index for pruning), `journal`
//! (recipe + dedupe key → [`JournalEntry`]: a record whose chain is under way) and
//! `dead_letters` (id → [`DeadLetter`]). Every value is versioned JSON (`{"v":1,…}`) so a later
//! format can read old data. Owns atomicity and durability: [`StateStore::commit`] writes dedupe
//! keys, journal removals, dead letters and the cursor in one transaction and fsyncs;
//! [`StateStore::journal_step`] fsyncs before returning. Does not decide what to commit: the
//! engine does.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// Tree of cursors.
pub const CURSORS: &str = "cursors";
/// Tree of handled dedupe keys.
pub const DEDUPE: &str = "dedupe";
/// Index of dedupe keys by record time, for pruning.
pub const DEDUPE_BY_TIME: &str = "dedupe_by_time";
/// Tree of records whose chain is under way.
pub const JOURNAL: &str = "journal";
/// Tree of dead letters.
pub const DEAD_LETTERS: &str = "dead_letters";

/// A recipe's progress: every record with a cursor value below `cursor` has finished, and
/// records older than `floor` never fire (the recipe's `start_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cursor (high-water mark), Unix seconds.
    pub cursor: i64,
    /// Records changed before this never fire.
    pub floor: i64,
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

fn key(recipe: &str, k: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(recipe.len() + 1 + k.len());
    out.extend_from_slice(recipe.as_bytes());
    out.push(0);
    out.extend_from_slice(k.as_bytes());
    out
}

fn prefix(recipe: &str) -> Vec<u8> {
    key(recipe, "")
}

/// Order-preserving encoding of an i64.
fn time_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_key(recipe: &str, ts: i64, k: &str) -> Vec<u8> {
    let mut out = prefix(recipe);
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
    cursors: sled::Tree,
    dedupe: sled::Tree,
    by_time: sled::Tree,
    journal: sled::Tree,
    dead: sled::Tree,
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
            cursors: db.open_tree(CURSORS)?,
            dedupe: db.open_tree(DEDUPE)?,
            by_time: db.open_tree(DEDUPE_BY_TIME)?,
            journal: db.open_tree(JOURNAL)?,
            dead: db.open_tree(DEAD_LETTERS)?,
            db,
        })
    }

    /// A recipe's checkpoint.
    pub fn checkpoint(&self, recipe: &str) -> Result<Option<Checkpoint>> {
        self.cursors
            .get(recipe.as_bytes())?
            .map(|b| decode("checkpoint", &b))
            .transpose()
    }

    /// Whether a record with this dedupe key has finished.
    pub fn seen(&self, recipe: &str, k: &str) -> Result<bool> {
        Ok(self.dedupe.contains_key(key(recipe, k))?)
    }

    /// The journal entry of a record whose chain is under way.
    pub fn journal(&self, recipe: &str, k: &str) -> Result<Option<JournalEntry>> {
        self.journal
            .get(key(recipe, k))?
            .map(|b| decode("journal entry", &b))
            .transpose()
    }

    /// Records progress of a chain and makes it durable (fsync) before returning, so a
    /// finished step is never run again after a crash.
    pub fn journal_step(&self, recipe: &str, k: &str, entry: &JournalEntry) -> Result<()> {
        self.journal.insert(key(recipe, k), encode(entry))?;
        self.db.flush()?;
        Ok(())
    }

    /// In one transaction: marks `finished` records handled (dedupe keys), removes their
    /// journal entries, stores dead letters and sets the checkpoint; then fsyncs.
    pub fn commit(
        &self,
        recipe: &str,
        finished: &[(String, i64)],
        dead: &[DeadLetter],
        checkpoint: Checkpoint,
    ) -> Result<()> {
        let dead_ids: Vec<u64> = dead
            .iter()
            .map(|_| self.db.generate_id())
            .collect::<sled::Result<_>>()?;
        let res: std::result::Result<(), TransactionError<()>> = (
            &self.cursors,
            &self.dedupe,
            &self.by_time,
            &self.journal,
            &self.dead,
        )
            .transaction(|(cur, dd, bt, jr, dl)| {
                for (k, ts) in finished {
                    let kk = key(recipe, k);
                    dd.insert(kk.clone(), &time_bytes(*ts))?;
                    bt.insert(time_key(recipe, *ts, k), &[])?;
                    jr.remove(kk)?;
                }
                for (d, id) in dead.iter().zip(&dead_ids) {
                    dl.insert(&id.to_be_bytes(), encode(d))?;
                    jr.remove(key(recipe, &d.key))?;
                }
                cur.insert(recipe.as_bytes(), encode(&checkpoint))?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        res.map_err(|e| anyhow!("state transaction failed: {e:?}"))?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes dedupe keys of records older than `before`; returns how many.
    pub fn prune(&self, recipe: &str, before: i64) -> Result<usize> {
        let start = prefix(recipe);
        let mut end = prefix(recipe);
        end.extend_from_slice(&time_bytes(before));
        let mut n = 0;
        let mut batch_t = sled::Batch::default();
        let mut batch_d = sled::Batch::default();
        let plen = start.len();
        for item in self.by_time.range(start..end) {
            let (k, _) = item?;
            let dk = key(
                recipe,
                std::str::from_utf8(&k[plen + 8..]).unwrap_or_default(),
            );
            batch_t.remove(k);
            batch_d.remove(dk);
            n += 1;
        }
        if n > 0 {
            self.by_time.apply_batch(batch_t)?;
            self.dedupe.apply_batch(batch_d)?;
        }
        Ok(n)
    }

    /// Dead letters, oldest first, with their ids; only one recipe's when given.
    pub fn dead_letters(&self, recipe: Option<&str>) -> Result<Vec<(u64, DeadLetter)>> {
        let mut out = Vec::new();
        for item in self.dead.iter() {
            let (k, v) = item?;
            let d: DeadLetter = decode("dead letter", &v)?;
            if recipe.is_none_or(|r| r == d.recipe) {
                let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                out.push((id, d));
            }
        }
        Ok(out)
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        self.dead
            .get(id.to_be_bytes())?
            .map(|b| decode("dead letter", &b))
            .transpose()
    }

    /// Removes a dead letter; false when there was none.
    pub fn drop_dead_letter(&self, id: u64) -> Result<bool> {
        let had = self.dead.remove(id.to_be_bytes())?.is_some();
        self.db.flush()?;
        Ok(had)
    }

    /// Puts a dead letter's record back into the journal (resuming at its failed step) and
    /// removes the dead letter, atomically.
    pub fn requeue_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let Some(d) = self.dead_letter(id)? else {
            return Ok(None);
        };
        let entry = JournalEntry {
            record: d.record.clone(),
            ts: d.ts,
            done: d.done.clone(),
            attempts: 0,
        };
        let res: std::result::Result<(), TransactionError<()>> =
            (&self.journal, &self.dead, &self.dedupe).transaction(|(jr, dl, dd)| {
                jr.insert(key(&d.recipe, &d.key), encode(&entry))?;
                dl.remove(&id.to_be_bytes())?;
                dd.remove(key(&d.recipe, &d.key))?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        res.map_err(|e| anyhow!("state transaction failed: {e:?}"))?;
        self.db.flush()?;
        Ok(Some(d))
    }

    /// Journal entries of a recipe (records under way), with their keys.
    pub fn journal_entries(&self, recipe: &str) -> Result<Vec<(String, JournalEntry)>> {
        let p = prefix(recipe);
        let mut out = Vec::new();
        for item in self.journal.scan_prefix(&p) {
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
        let p = prefix(recipe);
        Ok(RecipeState {
            recipe: recipe.to_string(),
            checkpoint: self.checkpoint(recipe)?,
            dedupe_keys: self.dedupe.scan_prefix(&p).count(),
            in_journal: self.journal.scan_prefix(&p).count(),
            dead_letters: self.dead_letters(Some(recipe))?.len(),
        })
    }

    /// Recipe ids that have any state.
    pub fn recipes(&self) -> Result<Vec<String>> {
        let mut out = std::collections::BTreeSet::new();
        for item in self.cursors.iter() {
            let (k, _) = item?;
            out.insert(String::from_utf8_lossy(&k).into_owned());
        }
        for (_, d) in self.dead_letters(None)? {
            out.insert(d.recipe);
        }
        Ok(out.into_iter().collect())
    }

    /// Forgets a recipe's cursor, dedupe keys and journal (dead letters are kept).
    pub fn reset(&self, recipe: &str) -> Result<()> {
        let p = prefix(recipe);
        self.cursors.remove(recipe.as_bytes())?;
        for tree in [&self.dedupe, &self.by_time, &self.journal] {
            let mut b = sled::Batch::default();
            for item in tree.scan_prefix(&p) {
                b.remove(item?.0);
            }
            tree.apply_batch(b)?;
        }
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
        s.journal_step("r", "a", &entry).unwrap();
        assert_eq!(s.journal("r", "a").unwrap(), Some(entry));
        let cp = Checkpoint {
            cursor: 30,
            floor: 0,
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
            &[("a".into(), 10), ("b".into(), 20)],
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
        assert_eq!(s.prune("r", 15).unwrap(), 1);
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
