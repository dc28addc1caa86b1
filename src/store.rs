//! Store: the sled database in the state directory. The only module that touches sled.
//!
//! One sled tree, [`TREE`], with a key space per kind (the prefixes below): cursors (recipe →
//! [`Checkpoint`]), dedupe-key blocks (recipe + newest record time + id → the keys one commit
//! marked handled, with their record times), the run journal (recipe + key →
//! [`JournalEntry`]: a record whose chain is under way) and dead letters (id →
//! [`DeadLetter`]). Dedupe keys are stored a commit's worth per value, not one sled entry
//! each: a cycle loads the recipe's keys once ([`StateStore::handled_keys`]; only the
//! lookback window's worth are kept) and a commit writes one value however many records it
//! covers, which measured several times cheaper than per-key entries plus a time index
//! (docs/BENCHMARKS.md). A block is pruned whole once its newest key is behind the bound. One tree because sled applies a batch to one
//! tree atomically at a fraction of the cost of a multi-tree transaction (measured: see
//! docs/BENCHMARKS.md). Every value is versioned JSON (`{"v":1,…}`) so a later format can read
//! old data. Owns atomicity and durability: [`StateStore::commit`] writes dedupe keys, journal
//! removals, dead letters and the cursor in one atomic batch and fsyncs;
//! [`StateStore::journal_step`] fsyncs before returning. Does not decide what to commit: the
//! engine does.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The tree holding all state.
pub const TREE: &str = "state";
/// Key prefix of cursors.
pub const CURSORS: u8 = b'c';
/// Key prefix of blocks of handled dedupe keys.
pub const DEDUPE_BLOCKS: u8 = b'b';
/// Key prefix of handled dedupe keys stored one per entry (written by sluice before blocks;
/// converted to blocks when the store is opened).
const LEGACY_DEDUPE: u8 = b'd';
/// Key prefix of the time index of [`LEGACY_DEDUPE`] keys.
const LEGACY_DEDUPE_BY_TIME: u8 = b't';
/// Key prefix of records whose chain is under way.
pub const JOURNAL: u8 = b'j';
/// Key prefix of dead letters.
pub const DEAD_LETTERS: u8 = b'x';
/// Key prefix of the ids a scan trigger last listed (recipe → [`KnownIds`]).
pub const KNOWN_IDS: u8 = b'k';

/// The ids a recipe's scan trigger listed in its last complete scan.
#[derive(Debug, Serialize, Deserialize)]
struct KnownIds {
    ids: Vec<String>,
}

/// A recipe's progress: every record with a cursor value below `cursor` has finished, and
/// records older than `floor` never fire (the recipe's `start_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cursor (high-water mark), Unix seconds.
    pub cursor: i64,
    /// Records changed before this never fire.
    pub floor: i64,
    /// The largest cursor value of any record ever marked handled (shown by `state show`).
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

/// A record whose chain has started but not finished (written as a [`JournalView`]).
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The record's JSON, as first seen (a resumed chain uses the same data).
    pub record: Box<RawValue>,
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
    /// The record's JSON.
    pub record: &'a RawValue,
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

/// Reads a journal entry. Not through [`decode`]: serde's `flatten` cannot carry a borrowed
/// `RawValue`, so the version field is spelt out.
fn decode_journal(bytes: &[u8]) -> Result<JournalEntry> {
    #[derive(Deserialize)]
    struct Stored {
        v: u32,
        record: Box<RawValue>,
        ts: i64,
        done: Vec<StepDone>,
        attempts: u32,
    }
    let s: Stored = serde_json::from_slice(bytes)
        .context("the state store holds an unreadable journal entry")?;
    if s.v != 1 {
        return Err(anyhow!(
            "the state store holds a journal entry of version {} (this sluice reads version 1)",
            s.v
        ));
    }
    Ok(JournalEntry {
        record: s.record,
        ts: s.ts,
        done: s.done,
        attempts: s.attempts,
    })
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

/// The key of a dedupe block: recipe, its newest record time, a unique id.
fn block_key(recipe: &str, newest: i64, id: u64) -> Vec<u8> {
    let mut out = prefix(DEDUPE_BLOCKS, recipe);
    out.extend_from_slice(&time_bytes(newest));
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The dedupe keys one commit marked handled, with their records' cursor values.
#[derive(Serialize, Deserialize)]
struct Block<K> {
    keys: Vec<(K, i64)>,
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
    /// For a scan trigger: ids its last complete scan listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_ids: Option<usize>,
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

/// Creates the state directory `0700` (and any missing parents), or tightens an existing one
/// to `0700`, before sled writes anything in it.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the state directory `{}`", dir.display()))?;
    set_mode(dir, 0o700)
}

/// Makes everything under the state directory private: the directory and its subdirectories
/// `0700`, its files `0600` (cursors, dedupe keys, the journal and dead letters all hold
/// record data). sled creates its files itself with the default mode, and creates more later
/// (snapshots, blobs) without asking: for those, the `0700` directory is the protection, since
/// nobody else can reach a file inside it. Links are left alone (never followed).
fn make_private(dir: &Path) -> Result<()> {
    set_mode(dir, 0o700)?;
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the state directory `{}`", dir.display()))?;
    for entry in entries {
        let entry = entry
            .with_context(|| format!("cannot read the state directory `{}`", dir.display()))?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            make_private(&entry.path())?;
        } else if ty.is_file() {
            set_mode(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot make `{}` private (mode {mode:o})", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. Fails with a clear message when another sluice
    /// process holds it. The directory is made private first: `0700`, its files `0600`.
    pub fn open(dir: &Path) -> Result<StateStore> {
        create_private_dir(dir)?;
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
        let store = StateStore {
            tree: db.open_tree(TREE)?,
            db,
        };
        make_private(dir)?;
        store.migrate_legacy_dedupe()?;
        Ok(store)
    }

    /// A recipe's checkpoint.
    pub fn checkpoint(&self, recipe: &str) -> Result<Option<Checkpoint>> {
        self.tree
            .get(cursor_key(recipe))?
            .map(|b| decode("checkpoint", &b))
            .transpose()
    }

    /// The dedupe keys of every record marked handled and not yet pruned, with the records'
    /// cursor values.
    pub fn handled_keys(&self, recipe: &str) -> Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        for item in self.tree.scan_prefix(prefix(DEDUPE_BLOCKS, recipe)) {
            let (_, v) = item?;
            let b: Block<String> = decode("dedupe block", &v)?;
            out.extend(b.keys);
        }
        Ok(out)
    }

    /// The ids the recipe's scan trigger listed in its last complete scan; `None` before the
    /// first.
    pub fn known_ids(&self, recipe: &str) -> Result<Option<std::collections::HashSet<String>>> {
        self.tree
            .get(key(KNOWN_IDS, recipe, ""))?
            .map(|b| decode::<KnownIds>("known ids", &b).map(|k| k.ids.into_iter().collect()))
            .transpose()
    }

    /// The journal entry of a record whose chain is under way.
    pub fn journal(&self, recipe: &str, k: &str) -> Result<Option<JournalEntry>> {
        self.tree
            .get(key(JOURNAL, recipe, k))?
            .map(|b| decode_journal(&b))
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
    /// checkpoint; then fsyncs. Dedupe keys of records older than `keep_from` are not written:
    /// they are already behind the pruning bound (a poll never returns them again), so
    /// writing them would only have [`StateStore::prune`] delete them next.
    pub fn commit(
        &self,
        recipe: &str,
        finished: &[(String, i64, bool)],
        dead: &[DeadLetter],
        checkpoint: Checkpoint,
        keep_from: i64,
    ) -> Result<()> {
        self.commit_with_known(recipe, finished, dead, checkpoint, keep_from, None)
    }

    /// [`StateStore::commit`], also replacing the ids the recipe's scan last listed (in the
    /// same atomic batch, so a record that fired as a late arrival is never taken for one
    /// again after a crash).
    pub fn commit_with_known(
        &self,
        recipe: &str,
        finished: &[(String, i64, bool)],
        dead: &[DeadLetter],
        checkpoint: Checkpoint,
        keep_from: i64,
        known: Option<&[String]>,
    ) -> Result<()> {
        let mut b = sled::Batch::default();
        if let Some(ids) = known {
            b.insert(
                key(KNOWN_IDS, recipe, ""),
                encode(&KnownIds { ids: ids.to_vec() }),
            );
        }
        // Keys at or before the cursor in one block; keys ahead of it (records after one that
        // holds the cursor back, or dated in the future) in another, so that one far-ahead key
        // cannot keep a whole commit's keys from being pruned.
        let (mut behind, mut ahead) = (Vec::with_capacity(finished.len()), Vec::new());
        for (k, ts, journaled) in finished {
            if *journaled {
                b.remove(key(JOURNAL, recipe, k));
            }
            if *ts >= keep_from {
                let side = if *ts <= checkpoint.cursor {
                    &mut behind
                } else {
                    &mut ahead
                };
                side.push((k.as_str(), *ts));
            }
        }
        for keys in [behind, ahead] {
            self.put_block(&mut b, recipe, Block { keys })?;
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

    /// Adds a dedupe block to `b` (nothing when it is empty).
    fn put_block<K: Serialize>(
        &self,
        b: &mut sled::Batch,
        recipe: &str,
        block: Block<K>,
    ) -> Result<()> {
        if let Some(newest) = block.keys.iter().map(|(_, ts)| *ts).max() {
            b.insert(
                block_key(recipe, newest, self.db.generate_id()?),
                encode(&block),
            );
        }
        Ok(())
    }

    /// Deletes dedupe keys of records older than `before`, a block at a time (a block goes once
    /// its newest key is older), stopping once at least `max` keys are gone; returns how many.
    /// The cap spreads a large backlog over several cycles.
    pub fn prune(&self, recipe: &str, before: i64, max: usize) -> Result<usize> {
        let start = prefix(DEDUPE_BLOCKS, recipe);
        let mut end = start.clone();
        end.extend_from_slice(&time_bytes(before));
        let mut n = 0;
        let mut b = sled::Batch::default();
        for item in self.tree.range(start..end) {
            let (k, v) = item?;
            let block: Block<IgnoredAny> = decode("dedupe block", &v)?;
            n += block.keys.len();
            b.remove(k);
            if n >= max {
                break;
            }
        }
        if n > 0 {
            self.tree.apply_batch(b)?;
        }
        Ok(n)
    }

    /// Converts dedupe keys stored one per entry (by an earlier sluice) into blocks, once.
    fn migrate_legacy_dedupe(&self) -> Result<()> {
        let mut blocks: std::collections::BTreeMap<Vec<u8>, Block<String>> = Default::default();
        let mut b = sled::Batch::default();
        let mut any = false;
        for item in self.tree.scan_prefix([LEGACY_DEDUPE, 0]) {
            let (k, v) = item?;
            any = true;
            // d \0 recipe \0 key → 8-byte record time.
            let rest = &k[2..];
            let Some(sep) = rest.iter().position(|&c| c == 0) else {
                continue;
            };
            let recipe = String::from_utf8_lossy(&rest[..sep]).into_owned();
            let dkey = String::from_utf8_lossy(&rest[sep + 1..]).into_owned();
            let ts =
                (u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) ^ (1 << 63)) as i64;
            blocks
                .entry(recipe.into_bytes())
                .or_insert_with(|| Block { keys: Vec::new() })
                .keys
                .push((dkey, ts));
            b.remove(k);
        }
        if !any {
            return Ok(());
        }
        for item in self.tree.scan_prefix([LEGACY_DEDUPE_BY_TIME, 0]) {
            b.remove(item?.0);
        }
        for (recipe, mut block) in blocks {
            let recipe = String::from_utf8_lossy(&recipe).into_owned();
            // Oldest first, in blocks of the engine's commit size, so pruning can drop the old
            // ones as the cursor moves on.
            block.keys.sort_by_key(|(_, ts)| *ts);
            for chunk in block.keys.chunks(1_000) {
                self.put_block(
                    &mut b,
                    &recipe,
                    Block {
                        keys: chunk.to_vec(),
                    },
                )?;
            }
        }
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
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
    /// removes the dead letter, atomically. Its dedupe key stays: a record in the journal is
    /// resumed from there, never started again by a poll.
    pub fn requeue_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let Some(d) = self.dead_letter(id)? else {
            return Ok(None);
        };
        let record = serde_json::value::to_raw_value(&d.record)?;
        let view = JournalView {
            record: &record,
            ts: d.ts,
            done: &d.done,
            attempts: 0,
        };
        let mut b = sled::Batch::default();
        b.insert(key(JOURNAL, &d.recipe, &d.key), encode(&view));
        b.remove(dead_key(id));
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
                decode_journal(&v)?,
            ));
        }
        Ok(out)
    }

    /// Counts for one recipe.
    pub fn recipe_state(&self, recipe: &str) -> Result<RecipeState> {
        Ok(RecipeState {
            recipe: recipe.to_string(),
            checkpoint: self.checkpoint(recipe)?,
            dedupe_keys: self.handled_keys(recipe)?.len(),
            in_journal: self.tree.scan_prefix(prefix(JOURNAL, recipe)).count(),
            dead_letters: self.dead_letters(Some(recipe))?.len(),
            known_ids: self.known_ids(recipe)?.map(|k| k.len()),
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
        b.remove(key(KNOWN_IDS, recipe, ""));
        for kind in [DEDUPE_BLOCKS, JOURNAL] {
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
        let record = RawValue::from_string(r#"{"id":"a"}"#.into()).unwrap();
        s.journal_step(
            "r",
            "a",
            &JournalView {
                record: &record,
                ts: 10,
                done: &[],
                attempts: 0,
            },
        )
        .unwrap();
        let entry = s.journal("r", "a").unwrap().unwrap();
        assert_eq!((entry.record.get(), entry.ts), (record.get(), 10));
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
            &[
                ("a".into(), 10, true),
                ("b".into(), 20, false),
                ("old".into(), 4, false),
            ],
            std::slice::from_ref(&dl),
            cp,
            5,
        )
        .unwrap();
        // Behind `keep_from`: not written.
        assert_eq!(
            s.handled_keys("r").unwrap(),
            HashMap::from([("a".to_string(), 10), ("b".to_string(), 20)])
        );
        assert!(s.handled_keys("other").unwrap().is_empty());
        assert!(s.journal("r", "a").unwrap().is_none());
        assert_eq!(s.checkpoint("r").unwrap(), Some(cp));
        let dead = s.dead_letters(Some("r")).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, dl);
        // A second commit makes a second block; pruning removes whole blocks whose newest key
        // is older than the bound.
        s.commit("r", &[("c".into(), 40, false)], &[], cp, 0)
            .unwrap();
        assert_eq!(s.prune("r", 20, 100).unwrap(), 0);
        assert_eq!(s.prune("r", 21, 100).unwrap(), 2);
        assert_eq!(
            s.handled_keys("r").unwrap(),
            HashMap::from([("c".to_string(), 40)])
        );
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
    fn a_key_ahead_of_the_cursor_does_not_keep_older_keys_from_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        let cp = Checkpoint {
            cursor: 10,
            floor: 0,
            high: 10,
        };
        s.commit(
            "r",
            &[("x".into(), 5, false), ("far".into(), 1_000, false)],
            &[],
            cp,
            0,
        )
        .unwrap();
        assert_eq!(s.prune("r", 6, 100).unwrap(), 1);
        assert_eq!(
            s.handled_keys("r").unwrap(),
            HashMap::from([("far".to_string(), 1_000)])
        );
    }

    #[test]
    fn legacy_per_key_dedupe_entries_become_a_block_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path()).unwrap();
            for (k, ts) in [("a", 10i64), ("b", 20)] {
                s.tree
                    .insert(key(LEGACY_DEDUPE, "r", k), &time_bytes(ts))
                    .unwrap();
                let mut t = prefix(LEGACY_DEDUPE_BY_TIME, "r");
                t.extend_from_slice(&time_bytes(ts));
                t.extend_from_slice(k.as_bytes());
                s.tree.insert(t, &[]).unwrap();
            }
            s.db.flush().unwrap();
        }
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            s.handled_keys("r").unwrap(),
            HashMap::from([("a".to_string(), 10), ("b".to_string(), 20)])
        );
        assert_eq!(s.tree.scan_prefix([LEGACY_DEDUPE, 0]).count(), 0);
        assert_eq!(s.tree.scan_prefix([LEGACY_DEDUPE_BY_TIME, 0]).count(), 0);
    }

    #[test]
    fn time_keys_sort_by_time_including_negative() {
        assert!(time_bytes(-5) < time_bytes(3));
        assert!(time_bytes(3) < time_bytes(1_700_000_000));
    }
}
