//! Admin: the state and dead-letter operations, one implementation for both ways of reaching
//! the store — the CLI opening it directly, and the sidecar's `/api/…` while it holds it (the
//! CLI's commands then go through the API and render the same answers).
//!
//! Owns what each operation reads and decides (which namespaces a recipe id names, when a
//! replayed record counts as finished). Does not print: results are serialisable views.

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::recipe::instance_of;
use crate::plan::Recipe;
use crate::runtime::Runtime;
use crate::store::{DeadLetter, RecipeState, Store};

/// A recipe instance's state, as `state show` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateView {
    /// Cursor, counts.
    pub state: Value,
    /// Records under way: key, cursor value, steps done, attempts.
    pub journal: Vec<JournalView>,
}

/// A record under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalView {
    /// Its dedupe key.
    pub key: String,
    /// Its cursor value.
    pub ts: i64,
    /// Steps done.
    pub steps_done: Vec<String>,
    /// Attempts so far.
    pub attempts: u32,
}

/// The state of every instance (of recipe `recipe`, when given).
pub fn state(store: &dyn Store, recipe: Option<&str>) -> Result<Vec<StateView>> {
    let mut out = Vec::new();
    for ns in store.namespaces()? {
        if recipe.is_some_and(|r| !instance_of(&ns, r)) {
            continue;
        }
        let st: RecipeState = store.recipe_state(&ns)?;
        let journal = store
            .journal_entries(&ns)?
            .into_iter()
            .map(|(k, e)| JournalView {
                key: k,
                ts: e.ts,
                steps_done: e.done.iter().map(|d| d.step.clone()).collect(),
                attempts: e.attempts,
            })
            .collect();
        out.push(StateView {
            state: serde_json::to_value(&st)?,
            journal,
        });
    }
    Ok(out)
}

/// The namespaces (instances) of recipe `recipe` that have state.
pub fn instances_with_state(store: &dyn Store, recipe: &str) -> Result<Vec<String>> {
    Ok(store
        .namespaces()?
        .into_iter()
        .filter(|ns| instance_of(ns, recipe))
        .collect())
}

/// A dead letter with its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Letter {
    /// Its id.
    pub id: u64,
    /// The letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// Dead letters (of recipe `recipe`, when given), oldest first.
pub fn dead_letters(store: &dyn Store, recipe: Option<&str>) -> Result<Vec<Letter>> {
    Ok(store
        .dead_letters(None)?
        .into_iter()
        .filter(|(_, d)| recipe.is_none_or(|r| instance_of(&d.recipe, r)))
        .map(|(id, letter)| Letter { id, letter })
        .collect())
}

/// How a replay ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replayed {
    /// Whether the record's chain finished.
    pub finished: bool,
    /// What happened, for people.
    pub message: String,
}

/// Replays dead letter `id` on `recipe` (the current version of its instance, from `rt`):
/// the record goes back to the journal and resumes at the step that failed. The caller
/// makes sure no cycle of the instance runs meanwhile.
pub async fn replay(rt: &Runtime, recipe: &Recipe, id: u64) -> Result<Replayed> {
    let store = rt.store()?;
    let d = store
        .dead_letter(id)?
        .ok_or_else(|| anyhow!("no dead letter {id} (see `sluice dead-letters list`)"))?;
    if d.recipe != recipe.instance {
        return Err(anyhow!(
            "dead letter {id} belongs to `{}`, not `{}`",
            d.recipe,
            recipe.instance
        ));
    }
    store.requeue_dead_letter(id)?;
    let (rep, res) = crate::engine::resume(rt, recipe).await;
    // The journal may hold other records too: what counts is where this one ended.
    let ns = crate::engine::namespace(recipe);
    let still_open = store.journal_entries(ns)?.iter().any(|(k, _)| *k == d.key);
    let dead_again = store
        .dead_letters(Some(ns))?
        .iter()
        .any(|(_, l)| l.key == d.key);
    Ok(match res {
        Ok(()) if !still_open && !dead_again => Replayed {
            finished: true,
            message: format!(
                "replayed: `{}` finished from step `{}`",
                d.key, d.failed_step
            ),
        },
        Ok(()) => Replayed {
            finished: false,
            message: format!("replay did not finish: {} dead letter(s), {} unfinished (see `sluice dead-letters list`)", rep.dead_letters, rep.unfinished),
        },
        Err(e) => Replayed {
            finished: false,
            message: format!("replay stopped: {e:#}"),
        },
    })
}
