//! The state store's fence through its public faces: `sluice run --once` against the
//! simulator moves a recipe's cursor; a stale writer (it read the checkpoint before that run),
//! using the library's `Store`, cannot move it back, and `sluice state show` still shows the
//! run's cursor. sled admits one process at a time, so the test opens the store only between
//! runs.

use serde_json::{json, Value};
use sluice::sim::Kind;
use sluice::store::{Checkpoint, Commit, SledStore, Store, StoreError};

use crate::util::{SimEnv, T0};

const RECIPE: &str = "id: notes\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{record.email}}\"\n";

fn contact(env: &SimEnv, email: &str, ts: i64) {
    env.sim()
        .create(
            Kind::Contact,
            json!({"email": email, "role": "user", "created_at": ts, "updated_at": ts}),
        )
        .unwrap();
}

/// `run --once`, which must succeed; its report for the recipe.
async fn run_once(env: &SimEnv) -> Value {
    let (r, mut reps) = env.run_once_in(None).await;
    r.assert_ok();
    reps.remove("notes").unwrap()
}

/// `state show --json`: the recipe's state.
async fn state(env: &SimEnv) -> Value {
    let st = env.sluice_in(&["state", "show", "--json"], None).await;
    st.assert_ok();
    st.json()[0]["state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_cannot_move_a_cursor_back() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.write_recipe(RECIPE);
    let dir = env.ws.path().join("state");
    contact(&env, "a@x.io", T0 - 3600);
    let rep = run_once(&env).await;
    assert_eq!(rep["cursor_after"], json!(T0 - 3600), "{rep}");

    // A second writer reads the checkpoint now…
    let read = {
        let store = SledStore::open(&dir).unwrap();
        store.checkpoint("notes@intercom").unwrap().unwrap()
    };
    assert_eq!(read.cursor, T0 - 3600);
    // …while sluice runs on and moves the cursor.
    contact(&env, "b@x.io", T0 - 60);
    let rep = run_once(&env).await;
    assert_eq!(rep["cursor_after"], json!(T0 - 60), "{rep}");
    let moved = state(&env).await;
    assert_eq!(moved["checkpoint"]["cursor"], json!(T0 - 60));
    assert_eq!(moved["dedupe_keys"], 2);

    // The stale writer commits what it holds: the cursor it read, a key, a dead letter.
    {
        let sled = SledStore::open(&dir).unwrap();
        let store: &dyn Store = &sled;
        let err = store
            .commit(
                "notes@intercom",
                &Commit {
                    expected: Some(read),
                    checkpoint: Checkpoint {
                        cursor: T0 - 3000,
                        ..read
                    },
                    finished: &[("stale".into(), T0 - 3000, false)],
                    dead: &[],
                    keep_from: i64::MIN,
                    known: None,
                },
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "another sluice process moved recipe `notes@intercom`'s cursor; this cycle's progress was not saved"
        );
    }
    // Nothing it sent was written: the cursor stays where the run put it.
    assert_eq!(state(&env).await, moved);
    // And sluice carries on from there: nothing repeats, a new record fires.
    contact(&env, "c@x.io", T0 - 30);
    let rep = run_once(&env).await;
    assert_eq!(
        (
            rep["fired"].as_u64(),
            rep["cursor_before"].as_i64(),
            rep["cursor_after"].as_i64()
        ),
        (Some(1), Some(T0 - 60), Some(T0 - 30)),
        "{rep}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cycle_leaves_one_row_of_run_history() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.write_recipe(RECIPE);
    contact(&env, "a@x.io", T0 - 3600);
    let first = run_once(&env).await;
    contact(&env, "b@x.io", T0 - 60);
    let second = run_once(&env).await;
    let store = SledStore::open(&env.ws.path().join("state")).unwrap();
    let rows = store.cycles("notes@intercom", 10).unwrap();
    assert_eq!(rows.len(), 2);
    // Newest first, each the cycle's report as the run printed it.
    let reports: Vec<Value> = rows
        .iter()
        .map(|(_, json)| serde_json::from_str(json).unwrap())
        .collect();
    assert!(rows[0].0 >= rows[1].0);
    for (row, printed) in reports.iter().zip([&second, &first]) {
        assert_eq!(row["fired"], printed["fired"]);
        assert_eq!(row["cursor_after"], printed["cursor_after"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_an_earlier_version_moves_to_the_recipe_instance() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.write_recipe(RECIPE);
    contact(&env, "old@x.io", T0 - 3600);
    // State as sluice kept it before instances: under the bare recipe id.
    {
        let sled = SledStore::open(&env.ws.path().join("state")).unwrap();
        let cp = Checkpoint {
            cursor: T0 - 3600,
            floor: T0 - 86_400,
            high: T0 - 3600,
        };
        let key = env.sim().records(Kind::Contact)[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        sled.commit(
            "notes",
            &Commit {
                expected: None,
                checkpoint: cp,
                finished: &[(key, T0 - 3600, false)],
                dead: &[],
                keep_from: i64::MIN,
                known: None,
            },
        )
        .unwrap();
    }
    contact(&env, "new@x.io", T0 - 60);
    let rep = run_once(&env).await;
    // The old record was handled under the old name: only the new one fires.
    assert_eq!(rep["fired"], 1, "{rep}");
    assert_eq!(rep["cursor_before"], json!(T0 - 3600), "{rep}");
    let st = env.sluice_in(&["state", "show", "--json"], None).await;
    st.assert_ok();
    let v = st.json();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["state"]["recipe"], "notes@intercom");
    assert_eq!(v[0]["state"]["checkpoint"]["cursor"], json!(T0 - 60));
}
