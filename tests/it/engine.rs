//! The engine through `sluice run --once`, with the simulator's audit log as the oracle:
//! first cycle fires, later cycles do not repeat, same-second and late records, changes twice
//! between polls, dead letters and replay, retries that hold the cursor, pruning, emit.

use serde_json::{json, Value};
use sluice::sim::{FailRule, Faults, Kind};

use crate::util::{Run, SimEnv, T0, TOKEN};

/// A simulator, a workspace with one recipe, and a state directory.
struct Engine {
    env: SimEnv,
}

impl Engine {
    async fn start(contacts: usize, recipe: &str) -> Engine {
        let env = SimEnv::start(SimEnv::config(contacts, 0, 0, 0)).await;
        env.write_recipe(recipe);
        Engine { env }
    }

    /// `sluice run --once --json`; returns the run and the recipe's report.
    async fn run_once(&self) -> (Run, Value) {
        let (r, reps) = self.env.run_once_in(None).await;
        let rep = reps.into_values().next().unwrap_or_default();
        (r, rep)
    }

    async fn sluice(&self, args: &[&str]) -> Run {
        self.env.sluice_in(args, None).await
    }

    fn count(&self, method: &str, path_suffix: &str) -> usize {
        self.env
            .sim()
            .audit()
            .iter()
            .filter(|e| e.method == method && e.path.ends_with(path_suffix) && e.status < 300)
            .count()
    }

    fn contact(&self, email: &str, ts: i64) -> String {
        let c = self
            .env
            .sim()
            .create(
                Kind::Contact,
                json!({"email": email, "role": "user", "created_at": ts, "updated_at": ts}),
            )
            .unwrap();
        c["id"].as_str().unwrap().to_string()
    }
}

const NOTE_ON_NEW: &str = "id: note_new\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"hello {{record.email}}\"\n";

// Emits instead of writing to Intercom: a note would itself bump the contact's `updated_at`.
const EMIT_ON_UPDATE: &str = "id: emit_updated\nconnection: intercom\ntrigger: intercom.contact_updated\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{record.name}}\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_cycle_fires_each_record_once_and_later_cycles_repeat_nothing() {
    let e = Engine::start(0, NOTE_ON_NEW).await;
    for i in 0..5 {
        e.contact(&format!("c{i}@x.io"), T0 - 3600 + i);
    }
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(
        (
            rep["fired"].as_u64(),
            rep["finished"].as_u64(),
            rep["steps_ok"].as_u64()
        ),
        (Some(5), Some(5), Some(5)),
        "{rep}"
    );
    assert_eq!(rep["cursor_after"], json!(T0 - 3600 + 4));
    assert_eq!(e.count("POST", "/notes"), 5);
    // A new process, same state: nothing fires again.
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (rep["fired"].as_u64(), rep["skipped_seen"].as_u64()),
        (Some(0), Some(5)),
        "{rep}"
    );
    assert_eq!(e.count("POST", "/notes"), 5);
    // A new contact fires alone.
    e.contact("late@x.io", T0 - 60);
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 1);
    assert_eq!(e.count("POST", "/notes"), 6);
    let st = e.sluice(&["state", "show", "--json"]).await;
    st.assert_ok();
    let v = st.json();
    assert_eq!(v[0]["state"]["checkpoint"]["cursor"], json!(T0 - 60));
    assert_eq!(v[0]["state"]["dedupe_keys"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_updates_across_two_polls_fire_once_each() {
    let e = Engine::start(0, EMIT_ON_UPDATE).await;
    let a = e.contact("a@x.io", T0 - 100);
    e.env
        .sim()
        .patch(
            Kind::Contact,
            &a,
            json!({"name": "A", "updated_at": T0 - 5}),
        )
        .unwrap();
    let (r, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 1);
    assert_eq!(r.stdout, "\"A\"\n");
    // After the poll, another contact changes in the very same second.
    let b = e.contact("b@x.io", T0 - 100);
    e.env
        .sim()
        .patch(
            Kind::Contact,
            &b,
            json!({"name": "B", "updated_at": T0 - 5}),
        )
        .unwrap();
    let (r, rep) = e.run_once().await;
    assert_eq!(
        (rep["fired"].as_u64(), rep["skipped_seen"].as_u64()),
        (Some(1), Some(1)),
        "{rep}"
    );
    assert_eq!(r.stdout, "\"B\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_changed_twice_between_polls_fires_once_with_the_latest_data() {
    let e = Engine::start(0, EMIT_ON_UPDATE).await;
    let a = e.contact("a@x.io", T0 - 100);
    e.env
        .sim()
        .patch(
            Kind::Contact,
            &a,
            json!({"name": "first", "updated_at": T0 - 50}),
        )
        .unwrap();
    e.env
        .sim()
        .patch(
            Kind::Contact,
            &a,
            json!({"name": "second", "updated_at": T0 - 40}),
        )
        .unwrap();
    let (r, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 1);
    assert_eq!(r.stdout, "\"second\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_reach_search_minutes_late_still_fire_and_later_same_day_changes_too() {
    let e = Engine::start(0, NOTE_ON_NEW).await;
    e.contact("early@x.io", T0 - 7200);
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 1);
    // Search lags four minutes behind writes: a contact created now is invisible at first.
    e.env.sim().set_search_lag(240);
    e.contact("lagging@x.io", T0 - 10);
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 0, "not searchable yet: {rep}");
    // Five minutes later it shows up with its original created_at, behind the cursor but
    // inside the lookback, later the same day as the cursor: it fires.
    e.env.sim().advance_clock(300);
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (rep["fired"].as_u64(), rep["skipped_seen"].as_u64()),
        (Some(1), Some(1)),
        "{rep}"
    );
    assert_eq!(e.count("POST", "/notes"), 2);
}

const THREE_STEPS: &str = "id: chain\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"step one\"\n  - id: event\n    action: intercom.create_event\n    with:\n      event_name: step-two\n      created_at: \"{{record.created_at}}\"\n      contact_id: \"{{record.id}}\"\n  - id: rename\n    action: intercom.update_contact\n    with:\n      id: \"{{record.id}}\"\n      name: \"done {{steps.note.id}}\"\n    on_error: ON_ERROR\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_makes_a_dead_letter_that_replays_from_that_step() {
    let e = Engine::start(0, &THREE_STEPS.replace("ON_ERROR", "stop")).await;
    let id = e.contact("dead@x.io", T0 - 100);
    e.env.sim().set_faults(Faults {
        fail_next: vec![FailRule::once(Some("PUT"), "/contacts/", 422)],
        ..Faults::default()
    });
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(
        (
            rep["dead_letters"].as_u64(),
            rep["finished"].as_u64(),
            rep["steps_ok"].as_u64()
        ),
        (Some(1), Some(0), Some(2)),
        "{rep}"
    );
    // The dead record does not hold the cursor or fire again.
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (rep["fired"].as_u64(), rep["skipped_seen"].as_u64()),
        (Some(0), Some(1))
    );
    let list = e.sluice(&["dead-letters", "list"]).await;
    list.assert_ok();
    assert!(
        list.stdout.contains("step `rename`") && list.stdout.contains("HTTP 422"),
        "{}",
        list.stdout
    );
    let dl_id = list.stdout.split_whitespace().next().unwrap().to_string();
    let show = e.sluice(&["dead-letters", "show", &dl_id, "--json"]).await;
    let d = show.json();
    assert_eq!(d["failed_step"], "rename");
    assert_eq!(d["request"], format!("PUT /contacts/{id}"));
    assert_eq!(d["status"], 422);
    assert_eq!(d["done"].as_array().unwrap().len(), 2);
    assert!(!show.stdout.contains(crate::util::TOKEN));
    // Replay resumes at the failed step: notes and events are not repeated.
    let rp = e.sluice(&["dead-letters", "replay", &dl_id]).await;
    rp.assert_ok();
    assert_eq!(
        (
            e.count("POST", "/notes"),
            e.count("POST", "/events"),
            e.count("PUT", &id)
        ),
        (1, 1, 1)
    );
    assert!(e.env.sim().record(Kind::Contact, &id).unwrap()["name"]
        .as_str()
        .unwrap()
        .starts_with("done "));
    let list = e.sluice(&["dead-letters", "list"]).await;
    assert!(list.stdout.contains("no dead letters"), "{}", list.stdout);
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_keeps_the_record_and_holds_the_cursor_without_repeating_done_steps() {
    let e = Engine::start(0, &THREE_STEPS.replace("ON_ERROR", "retry")).await;
    let first = e.contact("first@x.io", T0 - 200);
    e.contact("second@x.io", T0 - 100);
    e.env.sim().set_faults(Faults {
        fail_next: vec![FailRule::once(
            Some("PUT"),
            format!("/contacts/{first}"),
            422,
        )],
        ..Faults::default()
    });
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (rep["finished"].as_u64(), rep["unfinished"].as_u64()),
        (Some(1), Some(1)),
        "{rep}"
    );
    // The cursor stays at the unfinished record although a later one finished.
    assert_eq!(rep["cursor_after"], json!(T0 - 200));
    let st = e.sluice(&["state", "show"]).await;
    assert!(
        st.stdout.contains("1 under way") && st.stdout.contains("done: [\"note\",\"event\"]"),
        "{}",
        st.stdout
    );
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (
            rep["resumed"].as_u64(),
            rep["finished"].as_u64(),
            rep["fired"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{rep}"
    );
    assert_eq!(rep["cursor_after"], json!(T0 - 100));
    // Each step ran once per record; the retried step twice for the first record (one failure).
    assert_eq!(
        (e.count("POST", "/notes"), e.count("POST", "/events")),
        (2, 2)
    );
    assert_eq!(
        e.env
            .sim()
            .audit()
            .iter()
            .filter(|x| x.method == "PUT")
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_that_fails_again_neither_pulls_back_nor_pins_the_cursor() {
    let e = Engine::start(0, &THREE_STEPS.replace("ON_ERROR", "stop")).await;
    let old = e.contact("old@x.io", T0 - 3000);
    let rule = |count| Faults {
        fail_next: vec![FailRule {
            count,
            ..FailRule::once(Some("PUT"), format!("/contacts/{old}"), 422)
        }],
        ..Faults::default()
    };
    e.env.sim().set_faults(rule(1));
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["dead_letters"], 1, "{rep}");
    e.contact("mid@x.io", T0 - 100);
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["cursor_after"], json!(T0 - 100), "{rep}");
    // Replayed under `on_error: retry`, the old record fails again and stays under way.
    let recipe = e.env.ws.path().join("recipes/chain.yaml");
    std::fs::write(&recipe, THREE_STEPS.replace("ON_ERROR", "retry")).unwrap();
    e.env.sim().set_faults(rule(100));
    let list = e.sluice(&["dead-letters", "list"]).await;
    let dl_id = list.stdout.split_whitespace().next().unwrap().to_string();
    let rp = e.sluice(&["dead-letters", "replay", &dl_id]).await;
    assert_eq!(rp.code, 1, "{}", rp.stderr);
    let cursor = |v: &Value| v[0]["state"]["checkpoint"]["cursor"].clone();
    let st = e.sluice(&["state", "show", "--json"]).await.json();
    assert_eq!(
        cursor(&st),
        json!(T0 - 100),
        "replay moved the cursor back: {st}"
    );
    assert_eq!(st[0]["state"]["in_journal"], 1);
    // Newer records still move the cursor on; the old record waits in the journal.
    e.contact("new@x.io", T0 - 50);
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (
            rep["resumed"].as_u64(),
            rep["unfinished"].as_u64(),
            rep["finished"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{rep}"
    );
    assert_eq!(rep["cursor_after"], json!(T0 - 50), "{rep}");
    // Once Intercom accepts it, it finishes from the failed step; nothing else repeats.
    e.env.sim().set_faults(Faults::default());
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (
            rep["resumed"].as_u64(),
            rep["finished"].as_u64(),
            rep["fired"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{rep}"
    );
    assert_eq!(rep["cursor_after"], json!(T0 - 50), "{rep}");
    assert_eq!(
        (e.count("POST", "/notes"), e.count("POST", "/events")),
        (3, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_keys_behind_the_lookback_are_pruned() {
    let e = Engine::start(0, NOTE_ON_NEW).await;
    for i in 0..3 {
        e.contact(&format!("old{i}@x.io"), T0 - 3 * 86_400 + i);
    }
    for i in 0..2 {
        e.contact(&format!("new{i}@x.io"), T0 - 60 + i);
    }
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (rep["fired"].as_u64(), rep["pruned"].as_u64()),
        (Some(5), Some(0)),
        "{rep}"
    );
    // The old records were already behind `cursor − lookback − 1h` when committed: their keys
    // were never stored. The two recent ones were.
    let v = e.sluice(&["state", "show", "--json"]).await.json();
    assert_eq!(v[0]["state"]["dedupe_keys"], 2);
    // A day later the cursor has moved on: the two keys fall behind the bound and are pruned.
    e.env.sim().advance_clock(86_400 + 1);
    e.contact("later@x.io", T0 + 86_400);
    let (_, rep) = e.run_once().await;
    assert_eq!(
        (rep["fired"].as_u64(), rep["pruned"].as_u64()),
        (Some(1), Some(2)),
        "{rep}"
    );
    let v = e.sluice(&["state", "show", "--json"]).await.json();
    assert_eq!(v[0]["state"]["dedupe_keys"], 1);
    // Pruned and never-stored records are behind the poll window: they never fire again.
    let (_, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 0);
    assert_eq!(e.count("POST", "/notes"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_writes_one_json_line_per_record_and_start_from_now_fires_no_history() {
    let recipe = "id: emit_all\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value:\n        id: \"{{record.id}}\"\n        email: \"{{record.email}}\"\n      to: OUT\n";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/records.jsonl");
    let e = Engine::start(0, &recipe.replace("OUT", out.to_str().unwrap())).await;
    let ids: Vec<String> = (0..3)
        .map(|i| e.contact(&format!("e{i}@x.io"), T0 - 30 + i))
        .collect();
    let (r, _) = e.run_once().await;
    r.assert_ok();
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(lines[0]["email"], "e0@x.io");

    // `start_from: now` (the default): existing records never fire.
    let recipe2 = "id: from_now\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nsteps:\n  - id: out\n    action: emit\n";
    std::fs::write(e.env.ws.path().join("recipes/from_now.yaml"), recipe2).unwrap();
    std::fs::remove_file(e.env.ws.path().join("recipes/emit_all.yaml")).unwrap();
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(rep["fired"], 0, "{rep}");
    assert_eq!(r.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_without_a_value_writes_every_record_whole_in_cursor_order() {
    let recipe = "id: raw\nconnection: intercom\ntrigger: intercom.contact_updated\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n";
    let e = Engine::start(0, recipe).await;
    for i in 0..160 {
        e.contact(&format!("raw{i}@x.io"), T0 - 1000 + i);
    }
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(rep["fired"], 160, "{rep}");
    // The oracle: the simulator's own search pages, as text.
    let client = reqwest::Client::builder().build().unwrap();
    let mut want = String::new();
    let mut after = Value::Null;
    loop {
        let body: Value = client
            .post(format!("{}/contacts/search", e.env.handle.base_url))
            .bearer_auth(TOKEN)
            .json(
                &json!({"query": {"field": "updated_at", "operator": ">", "value": T0 - 3 * 86_400},
                "sort": {"field": "updated_at", "order": "ascending"},
                "pagination": {"per_page": 150, "starting_after": after}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in body["data"].as_array().unwrap() {
            want.push_str(&serde_json::to_string(c).unwrap());
            want.push('\n');
        }
        after = body["pages"]["next"]["starting_after"].clone();
        if after.is_null() {
            break;
        }
    }
    assert_eq!(r.stdout.lines().count(), 160);
    assert!(
        r.stdout == want,
        "emitted lines differ from the API's records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_updated_while_the_trigger_pages_is_not_missed_and_each_version_fires_once() {
    let recipe = "id: versions\nconnection: intercom\ntrigger: intercom.contact_updated\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{record.id}}@{{record.updated_at}}\"\n";
    let e = Engine::start(0, recipe).await;
    let ids: Vec<String> = (0..200)
        .map(|i| e.contact(&format!("p{i}@x.io"), T0 - 1000 + i))
        .collect();
    // Each request waits 300 ms at the simulator: a window to change a record between pages.
    e.env.sim().set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let dir = e.env.ws.path();
    let mut c = e.env.cmd(&["run", "--once", "--json"]);
    c.arg("--recipes")
        .arg(dir.join("recipes"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as the first page has been answered, move a record of that page to the end.
    loop {
        if e.env
            .sim()
            .audit()
            .iter()
            .any(|x| x.path == "/contacts/search" && x.status == 200)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    e.env
        .sim()
        .patch(
            Kind::Contact,
            &ids[5],
            json!({"name": "moved", "updated_at": T0 - 10}),
        )
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The emitted lines, then the run reports on the last line.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (emitted, reports) = stdout.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(crate::util::reports_of(reports)[0]["recipe"], "versions");
    let lines: Vec<String> = emitted
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect();
    // Every original version once, in order, and the moved record's new version at the end.
    let mut want: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id}@{}", T0 - 1000 + i as i64))
        .collect();
    want.push(format!("{}@{}", ids[5], T0 - 10));
    assert_eq!(lines, want);
    e.env.sim().set_faults(Faults::default());
    let (r, rep) = e.run_once().await;
    assert_eq!(rep["fired"], 0, "{rep}");
    assert_eq!(r.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_cannot_be_evaluated_makes_a_dead_letter_not_a_stuck_cursor() {
    let recipe = "id: strict_filter\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nfilter: '{{eq record.custom_attributes.tier \"gold\"}}'\nsteps:\n  - id: out\n    action: emit\n";
    let e = Engine::start(0, recipe).await;
    let id = e.contact("nofield@x.io", T0 - 60);
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(
        (rep["dead_letters"].as_u64(), rep["fired"].as_u64()),
        (Some(1), Some(0)),
        "{rep}"
    );
    assert_eq!(rep["cursor_after"], json!(T0 - 60));
    let list = e.sluice(&["dead-letters", "list"]).await;
    assert!(
        list.stdout.contains("step `filter`")
            && list.stdout.contains("record.custom_attributes.tier"),
        "{}",
        list.stdout
    );
    let dl_id = list.stdout.split_whitespace().next().unwrap().to_string();
    let d = e
        .sluice(&["dead-letters", "show", &dl_id, "--json"])
        .await
        .json();
    assert_eq!(d["record"]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_only_json_lines_with_the_recipe_cycle_record_and_step_spans() {
    let e = Engine::start(0, NOTE_ON_NEW).await;
    let c = e.contact("span@x.io", T0 - 100);
    e.env.sim().set_faults(Faults {
        fail_next: vec![FailRule::once(
            Some("POST"),
            format!("/contacts/{c}/notes"),
            422,
        )],
        ..Faults::default()
    });
    let r = e
        .sluice(&["--log-format", "json", "--log", "info", "run", "--once"])
        .await;
    r.assert_ok();
    let lines: Vec<Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["message"] == "Step failed.")
        .unwrap_or_else(|| panic!("no step failure in {}", r.stderr));
    assert_eq!(failed["level"], "WARN");
    let spans: Vec<&str> = failed["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(spans, ["recipe", "cycle", "record", "step"], "{failed}");
    assert_eq!(failed["spans"][0]["recipe"], "note_new");
    assert!(lines
        .iter()
        .any(|l| l["message"] == "cycle report" && l["report"]["dead_letters"] == 1));
}

/// A recipe adding notes to `n` new contacts, the simulator answering after 20 ms: a cycle
/// still running when a shutdown comes.
async fn slow_backlog(n: i64) -> Engine {
    let e = Engine::start(0, NOTE_ON_NEW).await;
    for i in 0..n {
        e.contact(&format!("s{i}@x.io"), T0 - 3000 + i);
    }
    e.env.sim().set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_mid_cycle_stops_taking_records_and_loses_or_repeats_nothing() {
    use std::sync::Arc;
    let e = slow_backlog(300).await;
    let dir = e.env.ws.path();
    let connectors = vec![Arc::new(
        sluice::plan::load_connector_text(
            std::path::Path::new("connectors/intercom.yaml"),
            &std::fs::read_to_string(crate::util::root().join("connectors/intercom.yaml")).unwrap(),
        )
        .unwrap(),
    )];
    let env = |k: &str| (k == "INTERCOM_TOKEN").then(|| TOKEN.to_string());
    let plan = sluice::plan::build(sluice::plan::Sources {
        connectors,
        config: Some((
            dir.join("sluice.yaml"),
            std::fs::read_to_string(dir.join("sluice.yaml")).unwrap(),
        )),
        recipes: vec![(dir.join("recipes/note_new.yaml"), NOTE_ON_NEW.to_string())],
        connection_files: Vec::new(),
        env: &env,
        secrets: sluice::plan::Secrets::Required,
    })
    .unwrap();
    let store = Arc::new(sluice::store::SledStore::open(&dir.join("state")).unwrap());
    let rt = sluice::runtime::Runtime::new(plan, store).unwrap();
    let recipe = rt.plan().recipes[0].clone();
    let (trigger, shutdown) = sluice::runtime::shutdown_channel();
    let cycle = tokio::spawn(sluice::engine::run_cycle(
        rt.clone(),
        recipe,
        sluice::engine::CycleOptions::new(shutdown),
    ));
    while e.count("POST", "/notes") < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    trigger.trigger();
    let rep = cycle.await.unwrap();
    assert!(rep.interrupted, "{rep:?}");
    assert_eq!(rep.error, None);
    assert!(rep.fired < 300, "{rep:?}");
    // Chains stopped before their step, or finished it; the next run does the rest, none twice.
    assert_eq!(rep.finished + rep.unfinished, rep.fired, "{rep:?}");
    drop(rt);
    e.env.sim().set_faults(Faults::default());
    let (r, rep2) = e.run_once().await;
    r.assert_ok();
    assert_eq!(
        rep.finished + rep2["finished"].as_u64().unwrap(),
        300,
        "{rep2}"
    );
    assert_eq!(e.count("POST", "/notes"), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_run_concurrently_up_to_the_recipe_and_connection_caps() {
    let recipe = NOTE_ON_NEW.replace("steps:", "concurrency: 6\nsteps:");
    let e = Engine::start(0, &recipe).await;
    for i in 0..40 {
        e.contact(&format!("k{i}@x.io"), T0 - 3000 + i);
    }
    // Slow answers: chains overlap as far as they are let.
    e.env.sim().set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(rep["finished"], 40, "{rep}");
    let most = e.env.sim().take_max_in_flight();
    // Six chains, plus the next page's request fetched meanwhile.
    assert!((6..=7).contains(&most), "{most} requests at once");
    // A connection's cap holds across the recipe's own.
    let config = std::fs::read_to_string(e.env.ws.config()).unwrap();
    std::fs::write(
        e.env.ws.config(),
        config.replace(
            "connector: intercom\n",
            "connector: intercom\n    concurrency: 2\n",
        ),
    )
    .unwrap();
    e.env.sim().advance_clock(60);
    for i in 0..20 {
        e.contact(&format!("m{i}@x.io"), T0 + 10 + i);
    }
    e.env.sim().advance_clock(60);
    let (r, rep) = e.run_once().await;
    r.assert_ok();
    assert_eq!(rep["finished"], 20, "{rep}");
    let most = e.env.sim().take_max_in_flight();
    assert!((2..=3).contains(&most), "{most} requests at once");
    assert_eq!(e.count("POST", "/notes"), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_steps_under_way_and_exits_cleanly() {
    let e = slow_backlog(300).await;
    let dir = e.env.ws.path();
    let mut c = e.env.cmd(&["run", "--once", "--json"]);
    c.arg("--recipes")
        .arg(dir.join("recipes"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    while e.count("POST", "/notes") < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rep = crate::util::reports_of(&String::from_utf8_lossy(&out.stdout))[0].clone();
    assert_eq!(rep["interrupted"], true, "{rep}");
    assert!(rep["fired"].as_u64().unwrap() < 300, "{rep}");
    // The next run does the rest: every contact gets exactly one note.
    e.env.sim().set_faults(Faults::default());
    let (r, rep2) = e.run_once().await;
    r.assert_ok();
    assert_eq!(
        rep["finished"].as_u64().unwrap() + rep2["finished"].as_u64().unwrap(),
        300,
        "{rep2}"
    );
    assert_eq!(e.count("POST", "/notes"), 300);
}
