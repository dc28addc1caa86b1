//! Store: the state of every recipe instance, behind the [`Store`] trait; [`SledStore`], the
//! sled database in the state directory, is the one implementation and the only code that
//! touches sled.
//!
//! State is namespaced: every operation takes `ns`, the recipe instance's namespace (the
//! caller decides its format; sluice keys it by recipe id today and will key it
//! `recipe@connection`). [`Store::adopt_legacy`] moves an instance's state from an old
//! namespace to a new one.
//!
//! The cursor is fenced: [`Store::commit`] is compare-and-set on the checkpoint the caller
//! read, so a second writer (another process on a shared store, a stale cycle) can never move
//! a cursor back; its commit fails with [`StoreError::Conflict`] and writes nothing.
//!
//! One sled tree, `state`, with a key space per kind (the prefixes below), each key
//! `kind \0 ns \0 …`: cursors (ns → [`Checkpoint`]), dedupe-key blocks (ns + newest record
//! time + id → the keys one commit marked handled, with their record times), the run journal
//! (ns + key → [`JournalEntry`]: a record whose chain is under way), the ids a scan last
//! listed, run history (ns + start time + id → a cycle report) and dead letters (id →
//! [`DeadLetter`], whose `recipe` is the namespace). Dedupe keys are stored a commit's worth
//! per value, not one sled entry each: a cycle loads the namespace's keys once
//! ([`Store::handled_keys`]; only the lookback window's worth are kept) and a commit writes
//! one value however many records it covers, which measured several times cheaper than
//! per-key entries plus a time index (docs/BENCHMARKS.md). A block is pruned whole once its
//! newest key is behind the bound. One tree because sled applies a batch (or a transaction)
//! to one tree atomically at a fraction of the cost of a multi-tree transaction (measured: see
//! docs/BENCHMARKS.md). Every value is versioned JSON (`{"v":1,…}`) so a later format can read
//! old data. Owns atomicity and durability: [`Store::commit`] compares the checkpoint and
//! writes dedupe keys, journal removals, dead letters and the cursor in one sled transaction
//! and fsyncs; [`Store::journal_step`] fsyncs before returning. Does not decide what to
//! commit: the engine does.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::history::{Hourly, RecordRun, Retention, RunId};
use serde_json::Value;
use sled::transaction::{abort, TransactionError};

/// The tree holding all state.
const TREE: &str = "state";
/// Key prefix of cursors.
const CURSORS: u8 = b'c';
/// Key prefix of blocks of handled dedupe keys.
const DEDUPE_BLOCKS: u8 = b'b';
/// Key prefix of handled dedupe keys stored one per entry (written by sluice before blocks;
/// converted to blocks when the store is opened).
const LEGACY_DEDUPE: u8 = b'd';
/// Key prefix of the time index of [`LEGACY_DEDUPE`] keys.
const LEGACY_DEDUPE_BY_TIME: u8 = b't';
/// Key prefix of records whose chain is under way.
const JOURNAL: u8 = b'j';
/// Key prefix of dead letters.
const DEAD_LETTERS: u8 = b'x';
/// The key of the highest dead-letter id given so far (ids count 1, 2, 3… and are never
/// reused, a dropped letter's included).
const DEAD_LETTER_SEQ: &[u8] = b"q\0dead-letters";
/// Key prefix of the ids a scan trigger last listed (ns → [`KnownIds`]).
const KNOWN_IDS: u8 = b'k';
/// Key prefix of run history (ns + start time + id → a cycle report).
const HISTORY: u8 = b'h';
/// Key prefix of a run's record rows (ns + start time + run id + sequence → a [`RecordRun`]).
const RECORD_RUNS: u8 = b'r';
/// Key prefix of hourly counts (ns + hour start → [`Hourly`]).
const HOURLY: u8 = b'y';
/// Key prefix of a namespace's number of run-history rows (ns → u64, big-endian), written in
/// the same batch as the rows it counts: retention by count needs no scan, even at start-up.
const HISTORY_COUNT: u8 = b'n';
/// The key spaces holding a namespace's state, keyed `kind \0 ns \0 …` (dead letters are
/// keyed by id and name their namespace inside).
const NS_KINDS: [u8; 8] = [
    CURSORS,
    DEDUPE_BLOCKS,
    JOURNAL,
    KNOWN_IDS,
    HISTORY,
    RECORD_RUNS,
    HOURLY,
    HISTORY_COUNT,
];

/// The records a recipe's scan trigger has listed: id → the cursor value it was last listed
/// with and when. (Versions before it kept a bare id list, read as "listed, value unknown".)
#[derive(Debug, Serialize, Deserialize)]
struct KnownIds {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<String>,
    #[serde(default)]
    records: Vec<(String, i64, i64)>,
}

/// A record a scan has listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Its cursor value when last listed (`i64::MAX` when not recorded).
    pub cursor: i64,
    /// When it was last listed (Unix seconds, server clock).
    pub seen: i64,
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
    /// The namespace of the recipe instance it belongs to (the store files it under the
    /// namespace it is committed in).
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
    pub class: crate::failure::FailureClass,
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
    check_version(what, v.v)?;
    Ok(v.inner)
}

/// The one check of a stored value's format version.
fn check_version(what: &str, v: u32) -> Result<()> {
    if v != 1 {
        return Err(anyhow!(
            "the state store holds a {what} of version {v} (this sluice reads version 1)"
        ));
    }
    Ok(())
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
    check_version("journal entry", s.v)?;
    Ok(JournalEntry {
        record: s.record,
        ts: s.ts,
        done: s.done,
        attempts: s.attempts,
    })
}

/// A cycle report in the run history (written as `{"v":1,"report":…}`).
#[derive(Serialize)]
struct HistoryRow<'a> {
    report: &'a RawValue,
}

/// Reads a cycle report's JSON text (not through [`decode`], for the same reason as
/// [`decode_journal`]).
fn decode_history(bytes: &[u8]) -> Result<String> {
    #[derive(Deserialize)]
    struct Stored<'a> {
        v: u32,
        #[serde(borrow)]
        report: &'a RawValue,
    }
    let s: Stored = serde_json::from_slice(bytes)
        .context("the state store holds an unreadable cycle report")?;
    check_version("cycle report", s.v)?;
    Ok(s.report.get().to_string())
}

/// A key of a namespace's key space: `kind \0 ns \0 k`. The NUL after `ns` makes a namespace's
/// prefix match its own keys only (`a` is not a prefix of `a@b`'s keys).
fn key(kind: u8, ns: &str, k: &str) -> Vec<u8> {
    debug_assert!(!ns.contains('\0'), "invariant: a namespace holds no NUL");
    let mut out = Vec::with_capacity(2 + ns.len() + 1 + k.len());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(ns.as_bytes());
    out.push(0);
    out.extend_from_slice(k.as_bytes());
    out
}

fn prefix(kind: u8, ns: &str) -> Vec<u8> {
    key(kind, ns, "")
}

fn cursor_key(ns: &str) -> Vec<u8> {
    key(CURSORS, ns, "")
}

fn dead_key(id: u64) -> Vec<u8> {
    let mut out = vec![DEAD_LETTERS, 0];
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The key of run `run` in key space `kind` (history rows; record rows extend it).
fn run_key(kind: u8, ns: &str, run: RunId) -> Vec<u8> {
    let mut k = prefix(kind, ns);
    k.extend_from_slice(&time_bytes(run.started_ms));
    k.extend_from_slice(&run.id.to_be_bytes());
    k
}

/// The run of a history key's tail (after the namespace prefix).
fn run_of(tail: &[u8]) -> Result<RunId> {
    let t: [u8; 8] = tail
        .get(..8)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| anyhow!("the state store holds a malformed history key"))?;
    let id: [u8; 8] = tail
        .get(8..16)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| anyhow!("the state store holds a malformed history key"))?;
    Ok(RunId {
        started_ms: time_of(t),
        id: u64::from_be_bytes(id),
    })
}

/// The key of the hour that `t_ms` falls in.
fn hour_key(ns: &str, t_ms: i64) -> Vec<u8> {
    let mut k = prefix(HOURLY, ns);
    k.extend_from_slice(&time_bytes(t_ms.div_euclid(3_600_000) * 3_600_000));
    k
}

/// The first key after every key that starts with `p`.
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; p.len() + 1]
}

/// Order-preserving encoding of an i64.
fn time_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_bytes`].
fn time_of(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The key of a dedupe block: namespace, its newest record time, a unique id.
fn block_key(ns: &str, newest: i64, id: u64) -> Vec<u8> {
    let mut out = prefix(DEDUPE_BLOCKS, ns);
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
    /// The recipe instance's namespace (shown as `recipe`).
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

/// What one [`Store::commit`] writes, and the checkpoint it expects to replace.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The checkpoint the caller read (`None`: there was none), and so expects to be stored
    /// still: the first commit of a cycle passes what it loaded, each later one what the
    /// previous commit wrote. Anything else stored means another writer moved the cursor,
    /// and the commit is refused.
    pub expected: Option<Checkpoint>,
    /// The new checkpoint.
    pub checkpoint: Checkpoint,
    /// Records finished (succeeded, filtered out, or dead): (dedupe key, cursor value, has a
    /// journal entry to remove).
    pub finished: &'a [(String, i64, bool)],
    /// Dead letters to store (filed under the commit's namespace), their journal entries
    /// removed.
    pub dead: &'a [DeadLetter],
    /// Dedupe keys of records older than this are not written: they are already behind the
    /// pruning bound (a poll never returns them again), so writing them would only have
    /// [`Store::prune`] delete them next.
    pub keep_from: i64,
    /// For a scan trigger: the ids its scan listed, replacing those stored (in the same
    /// atomic write, so a record that fired as a late arrival is never taken for one again
    /// after a crash).
    pub known: Option<&'a HashMap<String, Known>>,
}

/// Why a [`Store::commit`] failed. The caller branches on [`StoreError::Conflict`]: nothing
/// was written, and the cycle must stop rather than retry with what it holds.
#[derive(Debug)]
pub enum StoreError {
    /// The stored checkpoint is not the one the commit expected: another writer committed
    /// (or reset the recipe) since. Nothing was written.
    Conflict {
        /// The namespace.
        ns: String,
    },
    /// The store could not be read or written.
    Storage(anyhow::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict { ns } => write!(
                f,
                "another sluice process moved recipe `{ns}`'s cursor; this cycle's progress was not saved"
            ),
            // Transparent: the chain continues with the wrapped error's causes.
            StoreError::Storage(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Conflict { .. } => None,
            StoreError::Storage(error) => error.source(),
        }
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(error: anyhow::Error) -> StoreError {
        StoreError::Storage(error)
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> StoreError {
        StoreError::Storage(error.into())
    }
}

/// The state of every recipe instance, namespaced by `ns` (the caller's choice; it must not
/// contain NUL). What a cycle, the operator commands and run history need; a second
/// implementation (PostgreSQL) must keep the same guarantees: [`Store::commit`] atomic,
/// compare-and-set on the checkpoint and durable when it returns; [`Store::journal_step`]
/// durable when it returns.
pub trait Store: Send + Sync + fmt::Debug {
    /// The namespace's checkpoint; `None` before its first commit (or after a reset).
    fn checkpoint(&self, ns: &str) -> Result<Option<Checkpoint>>;

    /// The dedupe keys of every record marked handled and not yet pruned, with the records'
    /// cursor values.
    fn handled_keys(&self, ns: &str) -> Result<HashMap<String, i64>> {
        self.handled_keys_from(ns, i64::MIN)
    }

    /// The handled dedupe keys of records whose cursor value is at or after `from` (a poll
    /// that returns nothing older needs no more: fewer blocks read, less memory).
    fn handled_keys_from(&self, ns: &str, from: i64) -> Result<HashMap<String, i64>>;

    /// The records the scan trigger has listed; `None` before its first complete scan.
    fn known_ids(&self, ns: &str) -> Result<Option<HashMap<String, Known>>>;

    /// Records whose chain is under way, with their dedupe keys.
    fn journal_entries(&self, ns: &str) -> Result<Vec<(String, JournalEntry)>>;

    /// Records progress of a chain and makes it durable (fsync) before returning, so a
    /// finished step is never run again after a crash.
    fn journal_step(&self, ns: &str, key: &str, entry: &JournalView<'_>) -> Result<()>;

    /// If the stored checkpoint is still `c.expected`, in one atomic write: marks the finished
    /// records handled (dedupe keys), removes the journal entries of those that had one,
    /// stores the dead letters, replaces the known ids when given, and sets the checkpoint;
    /// then makes it durable. Otherwise writes nothing and fails with
    /// [`StoreError::Conflict`], so a second writer can never move a cursor back.
    fn commit(&self, ns: &str, c: &Commit<'_>) -> Result<(), StoreError>;

    /// Deletes dedupe keys of records older than `before`, stopping once at least `max` keys
    /// are gone (the cap spreads a large backlog over several cycles); returns how many.
    fn prune(&self, ns: &str, before: i64, max: usize) -> Result<usize>;

    /// A fresh id, unique in the store (for runs).
    fn next_id(&self) -> Result<u64>;

    /// Appends one cycle's report (JSON) to the namespace's run history and adds `hour` to
    /// the counts of the hour it started in. Not fsynced on its own: the next commit (or
    /// the store's closing) makes it durable. [`Store::prune_history`] bounds it.
    fn record_cycle(&self, ns: &str, run: RunId, report_json: &str, hour: Hourly) -> Result<()>;

    /// Stores record rows of run `run`, numbered from `first` (not fsynced).
    fn record_runs(&self, ns: &str, run: RunId, first: u32, rows: &[RecordRun]) -> Result<()>;

    /// Runs of the namespace newest first (older than `before`, when given) whose report
    /// `keep` accepts: at most `limit`, looking at no more than `max_scan` rows. The flag says
    /// whether rows were left unexamined.
    fn runs(
        &self,
        ns: &str,
        before: Option<RunId>,
        limit: usize,
        max_scan: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<(RunId, String)>, bool)>;

    /// One run's report.
    fn run(&self, ns: &str, run: RunId) -> Result<Option<String>>;

    /// A run's record rows from number `from`, at most `limit`.
    fn run_records(
        &self,
        ns: &str,
        run: RunId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<(u32, RecordRun)>>;

    /// Hourly counts of hours starting in `[from_ms, to_ms)`.
    fn hourly(&self, ns: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Hourly)>>;

    /// Drops the namespace's runs (with their record rows) that `retention` no longer keeps
    /// at `now_ms`, and hourly counts older than its age, deleting at most about `max` rows;
    /// returns how many went. Call again until it returns less than `max`.
    fn prune_history(
        &self,
        ns: &str,
        now_ms: i64,
        retention: &Retention,
        max: usize,
    ) -> Result<usize>;

    /// The newest `limit` cycle reports of the namespace, newest first, with their start times
    /// (Unix milliseconds).
    fn cycles(&self, ns: &str, limit: usize) -> Result<Vec<(i64, String)>>;

    /// Namespaces with run history, sorted.
    fn history_namespaces(&self) -> Result<Vec<String>>;

    /// Namespaces with a checkpoint or dead letters, sorted.
    fn namespaces(&self) -> Result<Vec<String>>;

    /// Counts for `sluice state show`.
    fn recipe_state(&self, ns: &str) -> Result<RecipeState> {
        Ok(RecipeState {
            recipe: ns.to_string(),
            checkpoint: self.checkpoint(ns)?,
            dedupe_keys: self.handled_keys(ns)?.len(),
            in_journal: self.journal_entries(ns)?.len(),
            dead_letters: self.dead_letters(Some(ns))?.len(),
            known_ids: self.known_ids(ns)?.map(|k| k.len()),
        })
    }

    /// Forgets the namespace's cursor, dedupe keys, known ids and journal (dead letters and
    /// run history are kept). A cycle under way then fails its next commit.
    fn reset(&self, ns: &str) -> Result<()>;

    /// Dead letters, oldest first, with their ids; only one namespace's when given.
    fn dead_letters(&self, ns: Option<&str>) -> Result<Vec<(u64, DeadLetter)>>;

    /// One dead letter.
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>>;

    /// Dead letters newest first, older than id `before` when given, those `keep` accepts:
    /// at most `limit`, examining at most `max_scan`. The flag says whether some were left
    /// unexamined.
    fn dead_letters_page(
        &self,
        before: Option<u64>,
        limit: usize,
        max_scan: usize,
        keep: &dyn Fn(&DeadLetter) -> bool,
    ) -> Result<(Vec<(u64, DeadLetter)>, bool)>;

    /// Removes a dead letter; false when there was none.
    fn drop_dead_letter(&self, id: u64) -> Result<bool>;

    /// Puts a dead letter's record back into its namespace's journal (resuming at its failed
    /// step) and removes the dead letter, atomically. Its dedupe key stays: a record in the
    /// journal is resumed from there, never started again by a poll.
    fn requeue_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>>;

    /// When `new_ns` has no state (no checkpoint, dedupe keys, journal, known ids or history)
    /// and `old_ns` has some, moves all of `old_ns`'s state, its dead letters included, to
    /// `new_ns` in one atomic write; true when it did. Earlier sluice versions keyed state by
    /// recipe id; instances are keyed by their own namespace. Nothing may write `old_ns`
    /// meanwhile (nothing does once the caller has switched to `new_ns`).
    fn adopt_legacy(&self, old_ns: &str, new_ns: &str) -> Result<bool>;
}

/// The sled store: one database in the state directory, one tree.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// History rows per namespace: read from its [`HISTORY_COUNT`] key when first needed
    /// (counted once, for a store of an earlier version without one). Held while a count
    /// changes, so a row and its count are written in one batch.
    history_rows: Mutex<HashMap<String, usize>>,
    /// The id the next dead letter gets.
    next_dead_letter: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// The state directory is held by another sluice process (a running sidecar, say).
#[derive(Debug)]
pub struct InUse(pub std::path::PathBuf);

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the state directory `{}` is in use by another sluice process",
            self.0.display()
        )
    }
}

impl std::error::Error for InUse {}

/// The database's name inside the state directory (with `sidecar.json` while a sidecar runs).
const DB_NAME: &str = "sluice.db";

/// Creates the state directory `0700` (and any missing parents), or tightens an existing one
/// to owner-only, before sled writes anything in it. Tightening is best effort: a directory
/// sluice may use but cannot change (not its owner, or a mount point set up by someone else)
/// is a warning, not a failure; the files sluice makes in it are still private.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the state directory `{}`", dir.display()))?;
    // The directory the user named is followed if it is a link: that is where state goes.
    if let Err(e) = std::fs::metadata(dir)
        .map_err(anyhow::Error::from)
        .and_then(|m| tighten(dir, &m))
    {
        tracing::warn!(
            "The state directory `{}` could not be made private: {e:#}; sluice's own files in it are made private all the same.",
            dir.display()
        );
    }
    Ok(())
}

/// Makes sluice's own files private: the database directory `db` and everything under it
/// (cursors, dedupe keys, the journal and dead letters all hold record data), directories
/// `0700` and files `0600` at most. sled creates its files itself with the default mode, and
/// more later (snapshots, blobs) without asking: for those, the private directories are the
/// protection. Nothing else in the state directory is touched (it may be a mounted volume
/// with a `lost+found`, or hold files of the user's); links are never followed. Best effort:
/// what cannot be changed is a warning, never a failure to start.
pub(crate) fn make_private(db: &Path) {
    let mut failed: Vec<String> = Vec::new();
    let mut pending = vec![db.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                failed.push(format!("`{}`: {e}", path.display()));
                continue;
            }
        };
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => pending.extend(entries.filter_map(|e| e.ok()).map(|e| e.path())),
                Err(e) => failed.push(format!("`{}`: {e}", path.display())),
            }
        } else if !meta.is_file() {
            continue;
        }
        if let Err(e) = tighten(&path, &meta) {
            failed.push(format!("{e:#}"));
        }
    }
    if let Some(first) = failed.first() {
        tracing::warn!(
            "{} of sluice's files in `{}` could not be made private (the first: {first}); they may be readable by other users of this machine.",
            failed.len(),
            db.display()
        );
    }
}

/// Clears the group and other permission bits of `path` (so at most `0700` for a directory
/// and `0600` for a file); nothing is changed when they are clear already.
#[cfg(unix)]
fn tighten(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let private = mode & !0o077;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)).with_context(|| {
        format!(
            "cannot make `{}` private (mode {mode:o} to {private:o})",
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Fails with a clear message when another sluice
    /// process holds it. The directory is made private first (`0700`, best effort), then the
    /// database's own files (`0600`); nothing else in the directory is touched.
    pub fn open(dir: &Path) -> Result<SledStore> {
        create_private_dir(dir)?;
        // sled lets go of its file lock from a background thread after the last handle is
        // dropped, so a store reopened at once (a restart, a command after the sidecar
        // stopped) may find it still held for a moment: a locked store is tried again for up
        // to a second before it is reported as in use.
        let mut tries = 0;
        let db = loop {
            #[allow(clippy::disallowed_methods)]
            let opened = sled::Config::new()
                .path(dir.join(DB_NAME))
                // No background flusher waking every second: commits and journal steps
                // flush themselves (fsync) before returning, and what else is written (run
                // history) goes to disk with the next of them, or when the store closes.
                .flush_every_ms(None)
                // sled's default page cache is 1 GiB; the state is small and mostly write-once.
                .cache_capacity(2 * 1024 * 1024)
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(ref io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    tries += 1;
                    if tries >= 20 {
                        return Err(anyhow::Error::new(InUse(dir.to_path_buf())));
                    }
                    // Start-up work, before any cycle runs: a short blocking wait is harmless.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(other) => {
                    return Err(anyhow!(
                        "cannot open the state store in `{}`: {other}",
                        dir.display()
                    ))
                }
            }
        };
        let tree = db.open_tree(TREE)?;
        // After the highest id given (stored), or the highest letter kept (a store written
        // before ids were counted, or a batch that stored a lower count last).
        let given = tree
            .get(DEAD_LETTER_SEQ)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let kept = tree
            .scan_prefix([DEAD_LETTERS, 0])
            .next_back()
            .transpose()?
            .and_then(|(k, _)| k.get(2..).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map_or(0, u64::from_be_bytes);
        let store = SledStore {
            tree,
            db,
            history_rows: Mutex::new(HashMap::new()),
            next_dead_letter: (given.max(kept) + 1).into(),
        };
        make_private(&dir.join(DB_NAME));
        store.migrate_legacy_dedupe()?;
        Ok(store)
    }

    /// The batch a [`Commit`] writes (without the compare).
    fn commit_batch(&self, ns: &str, c: &Commit<'_>) -> Result<sled::Batch> {
        let mut b = sled::Batch::default();
        if let Some(known) = c.known {
            let records = known
                .iter()
                .map(|(id, k)| (id.clone(), k.cursor, k.seen))
                .collect();
            b.insert(
                key(KNOWN_IDS, ns, ""),
                encode(&KnownIds {
                    ids: Vec::new(),
                    records,
                }),
            );
        }
        // Keys at or before the cursor in one block; keys ahead of it (records after one that
        // holds the cursor back, or dated in the future) in another, so that one far-ahead key
        // cannot keep a whole commit's keys from being pruned.
        let (mut behind, mut ahead) = (Vec::with_capacity(c.finished.len()), Vec::new());
        for (k, ts, journaled) in c.finished {
            if *journaled {
                b.remove(key(JOURNAL, ns, k));
            }
            if *ts >= c.keep_from {
                let side = if *ts <= c.checkpoint.cursor {
                    &mut behind
                } else {
                    &mut ahead
                };
                side.push((k.as_str(), *ts));
            }
        }
        for keys in [behind, ahead] {
            self.put_block(&mut b, ns, Block { keys })?;
        }
        for d in c.dead {
            // A dead letter belongs to the namespace it is committed in (`requeue` puts it
            // back into that namespace's journal).
            let d = if d.recipe == ns {
                Cow::Borrowed(d)
            } else {
                Cow::Owned(DeadLetter {
                    recipe: ns.to_string(),
                    ..d.clone()
                })
            };
            let id = self
                .next_dead_letter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            b.insert(dead_key(id), encode(&d));
            b.insert(DEAD_LETTER_SEQ, &id.to_be_bytes());
            b.remove(key(JOURNAL, ns, &d.key));
        }
        b.insert(cursor_key(ns), encode(&c.checkpoint));
        Ok(b)
    }

    /// Adds a dedupe block to `b` (nothing when it is empty).
    fn put_block<K: Serialize>(
        &self,
        b: &mut sled::Batch,
        ns: &str,
        block: Block<K>,
    ) -> Result<()> {
        if let Some(newest) = block.keys.iter().map(|(_, ts)| *ts).max() {
            b.insert(
                block_key(ns, newest, self.db.generate_id()?),
                encode(&block),
            );
        }
        Ok(())
    }

    /// The namespace's number of history rows (`rows` is the held cache).
    fn history_count(&self, rows: &mut HashMap<String, usize>, ns: &str) -> Result<usize> {
        if let Some(n) = rows.get(ns) {
            return Ok(*n);
        }
        let stored = self.tree.get(prefix(HISTORY_COUNT, ns))?;
        let n = match stored.as_deref().map(<[u8; 8]>::try_from) {
            Some(Ok(b)) => usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
            // Written by a sluice before the count was kept (or not eight bytes): counted this
            // once, and the next write stores it.
            _ => self.tree.scan_prefix(prefix(HISTORY, ns)).count(),
        };
        rows.insert(ns.to_string(), n);
        Ok(n)
    }

    /// Puts the namespace's history count `n` into batch `b`.
    fn put_history_count(b: &mut sled::Batch, ns: &str, n: usize) {
        let k = prefix(HISTORY_COUNT, ns);
        if n == 0 {
            b.remove(k);
        } else {
            b.insert(k, &(n as u64).to_be_bytes()[..]);
        }
    }

    fn lock_history_rows(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, usize>>> {
        self.history_rows
            .lock()
            .map_err(|_| anyhow!("history counts poisoned"))
    }

    /// Whether the namespace has any key of its own (dead letters aside).
    fn has_state(&self, ns: &str) -> Result<bool> {
        for kind in NS_KINDS {
            if self
                .tree
                .scan_prefix(prefix(kind, ns))
                .next()
                .transpose()?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The namespaces found in one key space, in order: one seek per namespace (each jumps
    /// past the previous namespace's keys), however many keys each has.
    fn namespaces_of(&self, kind: u8) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut from = vec![kind, 0];
        while let Some((k, _)) = self.tree.range(from.as_slice()..).next().transpose()? {
            if k.get(..2) != Some(&[kind, 0][..]) {
                break;
            }
            let rest = &k[2..];
            let Some(end) = rest.iter().position(|&c| c == 0) else {
                break;
            };
            let ns = &rest[..end];
            out.insert(String::from_utf8_lossy(ns).into_owned());
            // `kind \0 ns \1` sorts after every `kind \0 ns \0 …`.
            from = vec![kind, 0];
            from.extend_from_slice(ns);
            from.push(1);
        }
        Ok(out)
    }

    /// Converts dedupe keys stored one per entry (by an earlier sluice) into blocks, once.
    fn migrate_legacy_dedupe(&self) -> Result<()> {
        let mut blocks: std::collections::BTreeMap<Vec<u8>, Block<String>> = Default::default();
        let mut b = sled::Batch::default();
        let mut any = false;
        for item in self.tree.scan_prefix([LEGACY_DEDUPE, 0]) {
            let (k, v) = item?;
            any = true;
            // d \0 ns \0 key → 8-byte record time.
            let rest = &k[2..];
            let Some(sep) = rest.iter().position(|&c| c == 0) else {
                continue;
            };
            let ns = String::from_utf8_lossy(&rest[..sep]).into_owned();
            let dkey = String::from_utf8_lossy(&rest[sep + 1..]).into_owned();
            let ts = time_of(v.as_ref().try_into().unwrap_or([0; 8]));
            blocks
                .entry(ns.into_bytes())
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
        for (ns, mut block) in blocks {
            let ns = String::from_utf8_lossy(&ns).into_owned();
            // Oldest first, in blocks of the engine's commit size, so pruning can drop the old
            // ones as the cursor moves on.
            block.keys.sort_by_key(|(_, ts)| *ts);
            for chunk in block.keys.chunks(1_000) {
                self.put_block(
                    &mut b,
                    &ns,
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
}

impl Store for SledStore {
    fn checkpoint(&self, ns: &str) -> Result<Option<Checkpoint>> {
        self.tree
            .get(cursor_key(ns))?
            .map(|b| decode("checkpoint", &b))
            .transpose()
    }

    fn handled_keys_from(&self, ns: &str, from: i64) -> Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        // A block is keyed by its newest key's time: older blocks hold nothing at `from`.
        let p = prefix(DEDUPE_BLOCKS, ns);
        let start = block_key(ns, from, 0);
        for item in self.tree.range(start..prefix_end(&p)) {
            let (_, v) = item?;
            let b: Block<String> = decode("dedupe block", &v)?;
            out.extend(b.keys.into_iter().filter(|(_, ts)| *ts >= from));
        }
        Ok(out)
    }

    fn known_ids(&self, ns: &str) -> Result<Option<HashMap<String, Known>>> {
        self.tree
            .get(key(KNOWN_IDS, ns, ""))?
            .map(|b| {
                decode::<KnownIds>("known ids", &b).map(|k| {
                    let legacy = k.ids.into_iter().map(|id| {
                        let known = Known {
                            cursor: i64::MAX,
                            seen: 0,
                        };
                        (id, known)
                    });
                    let records = k
                        .records
                        .into_iter()
                        .map(|(id, cursor, seen)| (id, Known { cursor, seen }));
                    legacy.chain(records).collect()
                })
            })
            .transpose()
    }

    fn journal_entries(&self, ns: &str) -> Result<Vec<(String, JournalEntry)>> {
        let p = prefix(JOURNAL, ns);
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

    fn journal_step(&self, ns: &str, k: &str, entry: &JournalView<'_>) -> Result<()> {
        self.tree.insert(key(JOURNAL, ns, k), encode(entry))?;
        self.db.flush()?;
        Ok(())
    }

    /// The compare and the batch run in one sled transaction on the one tree: sled holds its
    /// write lock for the whole of it, so no other write to the store (a commit, a reset, an
    /// adoption) can come between the read of the checkpoint and the batch. The batch is built
    /// (ids drawn, values encoded) before, so the lock is held only for the compare and the
    /// inserts. The fsync follows, as with a plain batch.
    fn commit(&self, ns: &str, c: &Commit<'_>) -> Result<(), StoreError> {
        let batch = self.commit_batch(ns, c)?;
        let cursor = cursor_key(ns);
        self.tree
            .transaction(|tx| {
                let stored = match tx.get(&cursor)? {
                    Some(v) => match decode::<Checkpoint>("checkpoint", &v) {
                        Ok(cp) => Some(cp),
                        Err(error) => return abort(StoreError::Storage(error)),
                    },
                    None => None,
                };
                if stored != c.expected {
                    return abort(StoreError::Conflict { ns: ns.to_string() });
                }
                tx.apply_batch(&batch)?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        self.db.flush()?;
        Ok(())
    }

    /// A block goes once its newest key is older than `before`.
    fn prune(&self, ns: &str, before: i64, max: usize) -> Result<usize> {
        let start = prefix(DEDUPE_BLOCKS, ns);
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

    fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    fn record_cycle(&self, ns: &str, run: RunId, report_json: &str, hour: Hourly) -> Result<()> {
        let report = RawValue::from_string(report_json.to_string())
            .context("a cycle report must be JSON")?;
        let mut b = sled::Batch::default();
        b.insert(
            run_key(HISTORY, ns, run),
            encode(&HistoryRow { report: &report }),
        );
        let hk = hour_key(ns, run.started_ms);
        let mut h: Hourly = match self.tree.get(&hk)? {
            Some(v) => decode("hourly counts", &v)?,
            None => Hourly::default(),
        };
        h.cycles += hour.cycles;
        h.fired += hour.fired;
        h.failed += hour.failed;
        b.insert(hk, encode(&h));
        let mut rows = self.lock_history_rows()?;
        let n = self.history_count(&mut rows, ns)?.saturating_add(1);
        Self::put_history_count(&mut b, ns, n);
        self.tree.apply_batch(b)?;
        rows.insert(ns.to_string(), n);
        Ok(())
    }

    fn record_runs(&self, ns: &str, run: RunId, first: u32, rows: &[RecordRun]) -> Result<()> {
        let mut b = sled::Batch::default();
        for (i, r) in rows.iter().enumerate() {
            let mut k = run_key(RECORD_RUNS, ns, run);
            k.extend_from_slice(&(first + i as u32).to_be_bytes());
            b.insert(k, encode(r));
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    fn runs(
        &self,
        ns: &str,
        before: Option<RunId>,
        limit: usize,
        max_scan: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<(RunId, String)>, bool)> {
        let start = prefix(HISTORY, ns);
        let end = match before {
            Some(r) => run_key(HISTORY, ns, r),
            None => prefix_end(&start),
        };
        let mut out = Vec::new();
        for (scanned, item) in self.tree.range(start.clone()..end).rev().enumerate() {
            if out.len() >= limit || scanned >= max_scan {
                return Ok((out, true));
            }
            let (k, v) = item?;
            let json = decode_history(&v)?;
            if keep(&json) {
                out.push((run_of(&k[start.len()..])?, json));
            }
        }
        Ok((out, false))
    }

    fn run(&self, ns: &str, run: RunId) -> Result<Option<String>> {
        self.tree
            .get(run_key(HISTORY, ns, run))?
            .map(|v| decode_history(&v))
            .transpose()
    }

    fn run_records(
        &self,
        ns: &str,
        run: RunId,
        from: u32,
        limit: usize,
    ) -> Result<Vec<(u32, RecordRun)>> {
        let p = run_key(RECORD_RUNS, ns, run);
        let mut start = p.clone();
        start.extend_from_slice(&from.to_be_bytes());
        let mut out = Vec::new();
        for item in self.tree.range(start..prefix_end(&p)).take(limit) {
            let (k, v) = item?;
            let seq: [u8; 4] = k[p.len()..]
                .try_into()
                .map_err(|_| anyhow!("the state store holds a malformed record-run key"))?;
            out.push((u32::from_be_bytes(seq), decode("record run", &v)?));
        }
        Ok(out)
    }

    fn hourly(&self, ns: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, Hourly)>> {
        let p = prefix(HOURLY, ns);
        let mut out = Vec::new();
        for item in self.tree.range(hour_key(ns, from_ms)..hour_key(ns, to_ms)) {
            let (k, v) = item?;
            let t: [u8; 8] = k[p.len()..]
                .try_into()
                .map_err(|_| anyhow!("the state store holds a malformed hourly key"))?;
            out.push((time_of(t), decode("hourly counts", &v)?));
        }
        Ok(out)
    }

    fn prune_history(
        &self,
        ns: &str,
        now_ms: i64,
        retention: &Retention,
        max: usize,
    ) -> Result<usize> {
        let start = prefix(HISTORY, ns);
        // The count lock is not held while the batch is made (cycles write their rows
        // meanwhile); the count written is taken again under it as the batch is applied.
        // One pruner at a time per store: the sidecar's pass, or `run --once`'s.
        let count = {
            let mut rows = self.lock_history_rows()?;
            self.history_count(&mut rows, ns)?
        };
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        let mut over = count.saturating_sub(retention.max_runs);
        let mut gone = 0usize;
        let mut runs_gone = 0usize;
        let mut b = sled::Batch::default();
        for item in self.tree.scan_prefix(&start) {
            let (k, _) = item?;
            let run = run_of(&k[start.len()..])?;
            if run.started_ms >= cutoff && over == 0 {
                break;
            }
            // Its record rows first; the run row goes once they all have.
            let rp = run_key(RECORD_RUNS, ns, run);
            let mut all = true;
            for r in self.tree.scan_prefix(&rp) {
                if gone >= max {
                    all = false;
                    break;
                }
                b.remove(r?.0);
                gone += 1;
            }
            if !all || gone >= max {
                break;
            }
            b.remove(k);
            gone += 1;
            runs_gone += 1;
            over = over.saturating_sub(1);
        }
        // Record rows past the age whose run row is gone (a run killed before its end
        // writes records but no run row).
        let rp = prefix(RECORD_RUNS, ns);
        let mut old_records = rp.clone();
        old_records.extend_from_slice(&time_bytes(cutoff));
        for item in self.tree.range(rp..old_records) {
            if gone >= max {
                break;
            }
            b.remove(item?.0);
            gone += 1;
        }
        // Hourly counts past the age.
        let hp = prefix(HOURLY, ns);
        for item in self.tree.range(hp.clone()..hour_key(ns, cutoff)) {
            if gone >= max {
                break;
            }
            b.remove(item?.0);
            gone += 1;
        }
        if gone > 0 {
            let mut rows = self.lock_history_rows()?;
            let n = self.history_count(&mut rows, ns)?.saturating_sub(runs_gone);
            if runs_gone > 0 {
                Self::put_history_count(&mut b, ns, n);
            }
            self.tree.apply_batch(b)?;
            rows.insert(ns.to_string(), n);
        }
        Ok(gone)
    }

    fn cycles(&self, ns: &str, limit: usize) -> Result<Vec<(i64, String)>> {
        let p = prefix(HISTORY, ns);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&p).rev().take(limit) {
            let (k, v) = item?;
            let t: [u8; 8] = k
                .get(p.len()..p.len() + 8)
                .and_then(|t| t.try_into().ok())
                .ok_or_else(|| anyhow!("the state store holds a malformed history key"))?;
            out.push((time_of(t), decode_history(&v)?));
        }
        Ok(out)
    }

    fn history_namespaces(&self) -> Result<Vec<String>> {
        Ok(self.namespaces_of(HISTORY)?.into_iter().collect())
    }

    fn namespaces(&self) -> Result<Vec<String>> {
        let mut out = self.namespaces_of(CURSORS)?;
        for (_, d) in self.dead_letters(None)? {
            out.insert(d.recipe);
        }
        Ok(out.into_iter().collect())
    }

    fn reset(&self, ns: &str) -> Result<()> {
        let mut b = sled::Batch::default();
        b.remove(cursor_key(ns));
        b.remove(key(KNOWN_IDS, ns, ""));
        for kind in [DEDUPE_BLOCKS, JOURNAL] {
            for item in self.tree.scan_prefix(prefix(kind, ns)) {
                b.remove(item?.0);
            }
        }
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    fn dead_letters(&self, ns: Option<&str>) -> Result<Vec<(u64, DeadLetter)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([DEAD_LETTERS, 0]) {
            let (k, v) = item?;
            let d: DeadLetter = decode("dead letter", &v)?;
            if ns.is_none_or(|ns| ns == d.recipe) {
                let id = u64::from_be_bytes(k[2..].try_into().unwrap_or([0; 8]));
                out.push((id, d));
            }
        }
        Ok(out)
    }

    fn dead_letters_page(
        &self,
        before: Option<u64>,
        limit: usize,
        max_scan: usize,
        keep: &dyn Fn(&DeadLetter) -> bool,
    ) -> Result<(Vec<(u64, DeadLetter)>, bool)> {
        let start = vec![DEAD_LETTERS, 0];
        let end = match before {
            Some(id) => dead_key(id),
            None => prefix_end(&start),
        };
        let mut out = Vec::new();
        for (scanned, item) in self.tree.range(start..end).rev().enumerate() {
            if out.len() >= limit || scanned >= max_scan {
                return Ok((out, true));
            }
            let (k, v) = item?;
            let d: DeadLetter = decode("dead letter", &v)?;
            if keep(&d) {
                let id = u64::from_be_bytes(k[2..].try_into().unwrap_or([0; 8]));
                out.push((id, d));
            }
        }
        Ok((out, false))
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        self.tree
            .get(dead_key(id))?
            .map(|b| decode("dead letter", &b))
            .transpose()
    }

    fn drop_dead_letter(&self, id: u64) -> Result<bool> {
        let had = self.tree.remove(dead_key(id))?.is_some();
        self.db.flush()?;
        Ok(had)
    }

    fn requeue_dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
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

    /// The keys are read outside the transaction (sled's cannot scan); inside it, `new_ns`
    /// must still have no checkpoint and `old_ns`'s must be unchanged, or nothing is written
    /// and the adoption reports false.
    fn adopt_legacy(&self, old_ns: &str, new_ns: &str) -> Result<bool> {
        if old_ns == new_ns || self.has_state(new_ns)? {
            return Ok(false);
        }
        // Held throughout: the history count moves with the rows it counts.
        let mut rows = self.lock_history_rows()?;
        let (old_cursor, new_cursor) = (cursor_key(old_ns), cursor_key(new_ns));
        let old_cp = self.tree.get(&old_cursor)?;
        let mut b = sled::Batch::default();
        let mut moved = false;
        for kind in NS_KINDS {
            let (from, to) = (prefix(kind, old_ns), prefix(kind, new_ns));
            for item in self.tree.scan_prefix(&from) {
                let (k, v) = item?;
                let mut nk = to.clone();
                nk.extend_from_slice(&k[from.len()..]);
                b.remove(k);
                b.insert(nk, v);
                moved = true;
            }
        }
        for (id, mut d) in self.dead_letters(Some(old_ns))? {
            d.recipe = new_ns.to_string();
            b.insert(dead_key(id), encode(&d));
            moved = true;
        }
        if !moved {
            return Ok(false);
        }
        let done = self
            .tree
            .transaction(|tx| {
                if tx.get(&new_cursor)?.is_some() || tx.get(&old_cursor)? != old_cp {
                    return abort(());
                }
                tx.apply_batch(&b)?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => None,
                TransactionError::Storage(e) => Some(e),
            });
        match done {
            Ok(()) => {}
            Err(None) => return Ok(false),
            Err(Some(e)) => return Err(e.into()),
        }
        self.db.flush()?;
        rows.remove(old_ns);
        rows.remove(new_ns);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known_of(ids: &[&str]) -> HashMap<String, Known> {
        ids.iter()
            .map(|id| {
                let k = Known { cursor: 1, seen: 1 };
                (id.to_string(), k)
            })
            .collect()
    }

    fn cp(cursor: i64) -> Checkpoint {
        Checkpoint {
            cursor,
            floor: 0,
            high: cursor,
        }
    }

    fn dead(ns: &str, key: &str) -> DeadLetter {
        DeadLetter {
            recipe: ns.into(),
            key: key.into(),
            ts: 25,
            record: Value::Null,
            done: vec![],
            failed_step: "x".into(),
            class: crate::failure::FailureClass::Fatal,
            error: "boom".into(),
            request: None,
            status: None,
            at: 1,
        }
    }

    fn journal(s: &SledStore, ns: &str, key: &str, ts: i64) {
        let record = RawValue::from_string(format!(r#"{{"id":"{key}"}}"#)).unwrap();
        let view = JournalView {
            record: &record,
            ts,
            done: &[],
            attempts: 0,
        };
        s.journal_step(ns, key, &view).unwrap();
    }

    /// A commit of `finished` (no journal entries), keeping every key.
    fn commit(
        s: &SledStore,
        ns: &str,
        expected: Option<Checkpoint>,
        checkpoint: Checkpoint,
        finished: &[(String, i64, bool)],
    ) -> Result<(), StoreError> {
        s.commit(
            ns,
            &Commit {
                expected,
                checkpoint,
                finished,
                dead: &[],
                keep_from: i64::MIN,
                known: None,
            },
        )
    }

    #[test]
    fn commit_prune_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.checkpoint("r").unwrap(), None);
        journal(&s, "r", "a", 10);
        let entries = s.journal_entries("r").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (
                entries[0].0.as_str(),
                entries[0].1.record.get(),
                entries[0].1.ts
            ),
            ("a", r#"{"id":"a"}"#, 10)
        );
        let dl = dead("r", "c");
        s.commit(
            "r",
            &Commit {
                expected: None,
                checkpoint: cp(30),
                finished: &[
                    ("a".into(), 10, true),
                    ("b".into(), 20, false),
                    ("old".into(), 4, false),
                ],
                dead: std::slice::from_ref(&dl),
                keep_from: 5,
                known: Some(&known_of(&["1", "2"])),
            },
        )
        .unwrap();
        // Behind `keep_from`: not written.
        assert_eq!(
            s.handled_keys("r").unwrap(),
            HashMap::from([("a".to_string(), 10), ("b".to_string(), 20)])
        );
        assert!(s.handled_keys("other").unwrap().is_empty());
        assert!(s.journal_entries("r").unwrap().is_empty());
        assert_eq!(s.checkpoint("r").unwrap(), Some(cp(30)));
        assert_eq!(s.known_ids("r").unwrap().map(|k| k.len()), Some(2));
        let dead = s.dead_letters(Some("r")).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, dl);
        // A second commit makes a second block; pruning removes whole blocks whose newest key
        // is older than the bound.
        commit(&s, "r", Some(cp(30)), cp(30), &[("c".into(), 40, false)]).unwrap();
        // Keys from a time on: within a block too, and across blocks.
        assert_eq!(
            s.handled_keys_from("r", 15).unwrap(),
            HashMap::from([("b".to_string(), 20), ("c".to_string(), 40)])
        );
        assert_eq!(
            s.handled_keys_from("r", 21).unwrap(),
            HashMap::from([("c".to_string(), 40)])
        );
        assert!(s.handled_keys_from("r", 41).unwrap().is_empty());
        assert_eq!(s.prune("r", 20, 100).unwrap(), 0);
        assert_eq!(s.prune("r", 21, 100).unwrap(), 2);
        assert_eq!(
            s.handled_keys("r").unwrap(),
            HashMap::from([("c".to_string(), 40)])
        );
        assert_eq!(s.recipe_state("r").unwrap().dedupe_keys, 1);
        assert_eq!(s.namespaces().unwrap(), ["r"]);
        // Requeue moves the dead letter back to the journal.
        let id = dead[0].0;
        assert!(s.requeue_dead_letter(id).unwrap().is_some());
        assert!(s.dead_letters(None).unwrap().is_empty());
        assert_eq!(s.journal_entries("r").unwrap().len(), 1);
        s.reset("r").unwrap();
        assert_eq!(s.recipe_state("r").unwrap().dedupe_keys, 0);
        assert_eq!(s.checkpoint("r").unwrap(), None);
        assert_eq!(s.known_ids("r").unwrap(), None);
    }

    #[test]
    fn a_dead_letter_is_filed_under_the_namespace_it_is_committed_in() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.commit(
            "r@work",
            &Commit {
                expected: None,
                checkpoint: cp(30),
                finished: &[],
                dead: &[dead("r", "k")],
                keep_from: 0,
                known: None,
            },
        )
        .unwrap();
        let all = s.dead_letters(None).unwrap();
        assert_eq!(all[0].1.recipe, "r@work");
        s.requeue_dead_letter(all[0].0).unwrap();
        assert_eq!(s.journal_entries("r@work").unwrap().len(), 1);
    }

    #[test]
    fn commit_is_compare_and_set_on_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        // The normal sequence: each commit expects what the previous one wrote.
        commit(&s, "r", None, cp(10), &[("a".into(), 10, false)]).unwrap();
        commit(&s, "r", Some(cp(10)), cp(20), &[("b".into(), 20, false)]).unwrap();
        commit(&s, "r", Some(cp(20)), cp(20), &[]).unwrap();
        // A stale writer (it read cursor 10, or nothing) is refused and writes nothing: no
        // dedupe keys, journal removal, dead letter, known ids or cursor.
        journal(&s, "r", "j", 5);
        let before = (s.handled_keys("r").unwrap(), s.checkpoint("r").unwrap());
        for stale in [Some(cp(10)), None, Some(cp(30))] {
            let err = s
                .commit(
                    "r",
                    &Commit {
                        expected: stale,
                        checkpoint: cp(15),
                        finished: &[("j".into(), 5, true), ("x".into(), 15, false)],
                        dead: &[dead("r", "y")],
                        keep_from: i64::MIN,
                        known: Some(&known_of(&["1"])),
                    },
                )
                .unwrap_err();
            assert!(
                matches!(&err, StoreError::Conflict { ns } if ns == "r"),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                "another sluice process moved recipe `r`'s cursor; this cycle's progress was not saved"
            );
        }
        assert_eq!(
            (s.handled_keys("r").unwrap(), s.checkpoint("r").unwrap()),
            before
        );
        assert_eq!(s.journal_entries("r").unwrap().len(), 1);
        assert!(s.dead_letters(None).unwrap().is_empty());
        assert_eq!(s.known_ids("r").unwrap(), None);
        // A conflict is recoverable through anyhow, as the engine reports it.
        let e = anyhow::Error::from(commit(&s, "r", None, cp(1), &[]).unwrap_err());
        assert!(matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::Conflict { .. })
        ));
        // A reset while a cycle runs: the cycle's next commit is refused.
        s.reset("r").unwrap();
        assert!(matches!(
            commit(&s, "r", Some(cp(20)), cp(25), &[]),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.checkpoint("r").unwrap(), None);
        // Namespaces are fenced apart.
        commit(&s, "r@a", None, cp(1), &[]).unwrap();
        commit(&s, "r@b", None, cp(2), &[]).unwrap();
        assert_eq!(s.namespaces().unwrap(), ["r@a", "r@b"]);
    }

    #[test]
    fn a_checkpoint_written_without_high_compares_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.tree
            .insert(cursor_key("r"), &br#"{"v":1,"cursor":7,"floor":3}"#[..])
            .unwrap();
        let read = s.checkpoint("r").unwrap();
        commit(&s, "r", read, cp(8), &[]).unwrap();
        assert_eq!(s.checkpoint("r").unwrap(), Some(cp(8)));
    }

    fn run(t: i64, id: u64) -> RunId {
        RunId { started_ms: t, id }
    }

    fn one(fired: u64) -> Hourly {
        Hourly {
            cycles: 1,
            fired,
            failed: 0,
        }
    }

    fn rec(key: &str) -> RecordRun {
        RecordRun {
            key: key.into(),
            outcome: "finished".into(),
            steps: vec![],
            error: None,
        }
    }

    #[test]
    fn history_reads_newest_first_with_records_and_hours() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for (t, id) in [(5_000, 1), (1_000, 2), (3_000, 3), (3_000, 4)] {
            s.record_cycle("r", run(t, id), &format!(r#"{{"t":{t}}}"#), one(2))
                .unwrap();
        }
        s.record_cycle("other", run(2_000, 5), "{}", one(0))
            .unwrap();
        assert_eq!(
            s.cycles("r", 10)
                .unwrap()
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            [5_000, 3_000, 3_000, 1_000]
        );
        assert_eq!(s.cycles("r@x", 10).unwrap(), []);
        assert_eq!(s.history_namespaces().unwrap(), ["other", "r"]);
        assert!(s
            .record_cycle("r", run(6_000, 6), "not json", one(0))
            .is_err());
        // Pages: before a run, a filter, a bound on what is examined.
        let (page, more) = s
            .runs("r", Some(run(3_000, 4)), 10, 100, &|_| true)
            .unwrap();
        assert_eq!(
            page.iter().map(|p| p.0).collect::<Vec<_>>(),
            [run(3_000, 3), run(1_000, 2)]
        );
        assert!(!more);
        let (page, more) = s.runs("r", None, 10, 2, &|j| j.contains("1000")).unwrap();
        assert!(
            page.is_empty() && more,
            "two rows examined, none kept, more left"
        );
        assert_eq!(
            s.run("r", run(5_000, 1)).unwrap().as_deref(),
            Some(r#"{"t":5000}"#)
        );
        assert_eq!(s.run("r", run(5_000, 9)).unwrap(), None);
        // Record rows, in order, from a number.
        s.record_runs("r", run(5_000, 1), 0, &[rec("a"), rec("b")])
            .unwrap();
        s.record_runs("r", run(5_000, 1), 2, &[rec("c")]).unwrap();
        let keys = |from| {
            s.run_records("r", run(5_000, 1), from, 10)
                .unwrap()
                .into_iter()
                .map(|(n, r)| (n, r.key))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(0), [(0, "a".into()), (1, "b".into()), (2, "c".into())]);
        assert_eq!(keys(2), [(2, "c".to_string())]);
        assert!(s.run_records("r", run(3_000, 3), 0, 10).unwrap().is_empty());
        // Hours: the four runs fell in the first hour.
        assert_eq!(
            s.hourly("r", 0, 3_600_000).unwrap(),
            [(
                0,
                Hourly {
                    cycles: 4,
                    fired: 8,
                    failed: 0
                }
            )]
        );
    }

    #[test]
    fn history_is_pruned_by_count_and_age_a_bounded_amount_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let hour = 3_600_000;
        for i in 0..10i64 {
            s.record_cycle("r", run(i * hour, i as u64), "{}", one(1))
                .unwrap();
            s.record_runs("r", run(i * hour, i as u64), 0, &[rec("a"), rec("b")])
                .unwrap();
        }
        let keep = Retention {
            max_age_ms: 100 * hour,
            max_runs: 6,
            max_records_per_run: 10,
            max_total_runs: 1_000,
        };
        // Four runs over the count, three rows each: 12 rows, at most 5 per call.
        let now = 10 * hour;
        let mut calls = 0;
        while s.prune_history("r", now, &keep, 5).unwrap() > 0 {
            calls += 1;
            assert!(calls < 10);
        }
        let left: Vec<i64> = s
            .cycles("r", 100)
            .unwrap()
            .iter()
            .map(|r| r.0 / hour)
            .collect();
        assert_eq!(left, [9, 8, 7, 6, 5, 4]);
        assert!(s
            .run_records("r", run(3 * hour, 3), 0, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            s.run_records("r", run(4 * hour, 4), 0, 10).unwrap().len(),
            2
        );
        // Record rows of a run killed before it wrote its run row.
        s.record_runs("r", run(5 * hour - 1, 99), 0, &[rec("orphan")])
            .unwrap();
        // By age: runs, orphan record rows and hours older than 3 hours go, whatever the
        // count.
        let young = Retention {
            max_age_ms: 3 * hour,
            ..keep
        };
        while s.prune_history("r", now, &young, 1_000).unwrap() > 0 {}
        let left: Vec<i64> = s
            .cycles("r", 100)
            .unwrap()
            .iter()
            .map(|r| r.0 / hour)
            .collect();
        assert_eq!(left, [9, 8, 7]);
        assert!(s
            .run_records("r", run(5 * hour - 1, 99), 0, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            s.hourly("r", 0, now)
                .unwrap()
                .iter()
                .map(|h| h.0 / hour)
                .collect::<Vec<_>>(),
            [7, 8, 9]
        );
        // The count is stored with the rows: a reopened store reads it.
        let stored = |s: &SledStore| {
            s.tree
                .get(prefix(HISTORY_COUNT, "r"))
                .unwrap()
                .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
        };
        assert_eq!(stored(&s), Some(3));
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        let two = Retention {
            max_runs: 2,
            ..keep
        };
        while s.prune_history("r", now, &two, 1_000).unwrap() > 0 {}
        assert_eq!(s.cycles("r", 100).unwrap().len(), 2);
        assert_eq!(stored(&s), Some(2));
        // A store written before the count was kept is counted once, then kept.
        s.tree.remove(prefix(HISTORY_COUNT, "r")).unwrap();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        s.record_cycle("r", run(now, 77), "{}", one(0)).unwrap();
        assert_eq!(stored(&s), Some(3));
        let one_run = Retention {
            max_runs: 1,
            ..keep
        };
        while s.prune_history("r", now, &one_run, 1_000).unwrap() > 0 {}
        assert_eq!(s.cycles("r", 100).unwrap().len(), 1);
        assert_eq!(stored(&s), Some(1));
    }

    /// Cycles write rows while the pruner removes them: the stored count stays the number of
    /// rows.
    #[test]
    fn the_history_count_survives_cycles_writing_while_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let keep = Retention {
            max_age_ms: i64::MAX / 2,
            max_runs: 50,
            max_records_per_run: 10,
            max_total_runs: 1_000_000,
        };
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let id = w * 1_000 + i;
                        s.record_cycle("r", run(id as i64, id), "{}", one(0))
                            .unwrap();
                    }
                })
            })
            .collect();
        while !writers.iter().all(|w| w.is_finished()) {
            s.prune_history("r", 0, &keep, 7).unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        while s.prune_history("r", 0, &keep, 7).unwrap() > 0 {}
        let rows = s.tree.scan_prefix(prefix(HISTORY, "r")).count();
        assert_eq!(rows, 50);
        let stored = s.tree.get(prefix(HISTORY_COUNT, "r")).unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(stored.as_ref().try_into().unwrap()), 50);
    }

    #[test]
    fn adopt_legacy_moves_every_key_of_the_old_namespace_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.commit(
            "r",
            &Commit {
                expected: None,
                checkpoint: cp(30),
                finished: &[("a".into(), 20, false)],
                dead: &[dead("r", "d")],
                keep_from: 0,
                known: Some(&known_of(&["1"])),
            },
        )
        .unwrap();
        journal(&s, "r", "j", 25);
        s.record_cycle("r", run(1, 1), "{}", one(0)).unwrap();
        // Another recipe whose id starts the same is not touched.
        commit(&s, "r2", None, cp(5), &[("z".into(), 5, false)]).unwrap();
        let before = s.recipe_state("r").unwrap();

        assert!(s.adopt_legacy("r", "r@intercom").unwrap());
        let after = s.recipe_state("r@intercom").unwrap();
        assert_eq!(
            (
                after.checkpoint,
                after.dedupe_keys,
                after.in_journal,
                after.dead_letters,
                after.known_ids
            ),
            (
                before.checkpoint,
                before.dedupe_keys,
                before.in_journal,
                before.dead_letters,
                before.known_ids
            )
        );
        assert_eq!(s.cycles("r@intercom", 10).unwrap().len(), 1);
        assert_eq!(s.dead_letters(None).unwrap()[0].1.recipe, "r@intercom");
        assert!(!s.has_state("r").unwrap());
        assert!(s.dead_letters(Some("r")).unwrap().is_empty());
        assert_eq!(s.namespaces().unwrap(), ["r2", "r@intercom"]);
        assert_eq!(s.checkpoint("r2").unwrap(), Some(cp(5)));
        // The adopted checkpoint fences as before.
        commit(&s, "r@intercom", Some(cp(30)), cp(31), &[]).unwrap();

        // Nothing left to adopt; and a namespace with state of its own is never overwritten.
        assert!(!s.adopt_legacy("r", "r@intercom").unwrap());
        assert!(!s.adopt_legacy("r2", "r@intercom").unwrap());
        assert_eq!(s.checkpoint("r2").unwrap(), Some(cp(5)));
        assert_eq!(s.checkpoint("r@intercom").unwrap(), Some(cp(31)));
        assert!(!s.adopt_legacy("r2", "r2").unwrap());
    }

    #[test]
    fn a_key_ahead_of_the_cursor_does_not_keep_older_keys_from_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        commit(
            &s,
            "r",
            None,
            cp(10),
            &[("x".into(), 5, false), ("far".into(), 1_000, false)],
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
            let s = SledStore::open(dir.path()).unwrap();
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
        let s = SledStore::open(dir.path()).unwrap();
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
        for t in [i64::MIN, -5, 0, 1_700_000_000, i64::MAX] {
            assert_eq!(time_of(time_bytes(t)), t);
        }
    }
}
