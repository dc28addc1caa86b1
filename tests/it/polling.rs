//! Polling reliability against a server that is not our clock or our order: `start_from: now`
//! on a server whose clock is behind, a cycle whose own writes change what it watches, scans
//! that restart, companies that become visible late, writes whose outcome is unknown. Through
//! `sluice run --once` with the simulator's audit log and state as the oracle.

use serde_json::{json, Value};
use sluice::sim::Kind;

use crate::util::{run_async, Run, SimEnv, T0};

/// The seven triggers of the Intercom connector.
const TRIGGERS: [&str; 7] = [
    "new_contact",
    "contact_updated",
    "new_or_updated_company",
    "new_ticket",
    "ticket_updated",
    "new_conversation",
    "conversation_updated",
];

/// Writes the given recipes into the workspace's `recipes/`.
fn write_recipes(env: &SimEnv, recipes: &[(String, String)]) {
    for (_, yaml) in recipes {
        env.write_recipe(yaml);
    }
}

async fn run_once(env: &SimEnv) -> (Run, std::collections::BTreeMap<String, Value>) {
    env.run_once_in(None).await
}

fn emit_recipe(trigger: &str, out: &std::path::Path) -> (String, String) {
    let id = format!("emit_{trigger}");
    let yaml = format!(
        "id: {id}\nconnection: intercom\ntrigger: intercom.{trigger}\nschedule:\n  every: 1m\nstart_from: now\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{{{record.id}}}}\"\n      to: {}\n",
        out.join(format!("{trigger}.jsonl")).display()
    );
    (id, yaml)
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_now_takes_now_from_the_server_clock_for_every_trigger() {
    // The simulator's clock stands at T0, months behind this machine's: a first cursor taken
    // from the local clock would skip everything the server writes until its clock catches up.
    let env = SimEnv::start(SimEnv::config(3, 0, 0, 0)).await;
    let out = tempfile::tempdir().unwrap();
    let recipes: Vec<_> = TRIGGERS
        .iter()
        .map(|t| emit_recipe(t, out.path()))
        .collect();
    write_recipes(&env, &recipes);
    let (r, reps) = run_once(&env).await;
    r.assert_ok();
    assert_eq!(reps.len(), 7);
    for (id, rep) in &reps {
        assert_eq!(rep["fired"], 0, "{id}: history must not fire: {rep}");
        // The simulator's clock is frozen and ours runs: "now" is the last `Date` plus the
        // time since it came, which a slow machine can take past the next second.
        let cursor = rep["cursor_after"].as_i64().unwrap();
        assert!((T0..=T0 + 1).contains(&cursor), "{id}: {rep}");
    }
    // One record of each kind, written on the server's clock after the first cycle.
    env.sim().advance_clock(2);
    let contact = id(&env
        .sim()
        .create(Kind::Contact, json!({"email": "skew@x.io", "role": "user"}))
        .unwrap());
    let company = id(&env
        .sim()
        .create(Kind::Company, json!({"name": "Skew Ltd"}))
        .unwrap());
    env.sim()
        .create(
            Kind::Contact,
            json!({"email": "skew2@x.io", "role": "user", "company_ids": [company]}),
        )
        .unwrap();
    let ticket_type = env
        .sim()
        .records(Kind::TicketType)
        .into_iter()
        .find(|t| t["category"] == "Customer")
        .map(|t| id(&t))
        .unwrap();
    env.sim()
        .create(
            Kind::Ticket,
            json!({"ticket_type_id": ticket_type, "contact_id": contact}),
        )
        .unwrap();
    env.sim()
        .create(Kind::Conversation, json!({"contact_id": contact}))
        .unwrap();
    env.sim().advance_clock(2);
    let (r, reps) = run_once(&env).await;
    r.assert_ok();
    for (id, rep) in &reps {
        let fired = rep["fired"].as_u64().unwrap();
        assert!(
            fired >= 1,
            "{id} lost what the server wrote after it started: {rep}"
        );
    }
    for t in TRIGGERS {
        let lines = std::fs::read_to_string(out.path().join(format!("{t}.jsonl"))).unwrap();
        assert!(!lines.is_empty(), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_leaves_changes_made_while_it_runs_to_the_next_cycle() {
    // Each note bumps the contact's `updated_at`, which is what the recipe watches: without
    // an upper bound the cycle keeps finding its own writes.
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let recipe = "id: note_updated\nconnection: intercom\ntrigger: intercom.contact_updated\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"seen {{record.email}}\"\n";
    write_recipes(&env, &[("note_updated".into(), recipe.into())]);
    for i in 0..300 {
        let ts = T0 - 3000 + i;
        env.sim()
            .create(
                Kind::Contact,
                json!({"email": format!("c{i}@x.io"), "role": "user", "created_at": ts, "updated_at": ts}),
            )
            .unwrap();
    }
    let notes = |env: &SimEnv| {
        env.sim()
            .audit()
            .iter()
            .filter(|e| e.method == "POST" && e.path.ends_with("/notes") && e.status < 300)
            .count()
    };
    let (r, reps) = run_once(&env).await;
    r.assert_ok();
    let rep = &reps["note_updated"];
    assert_eq!(
        (rep["fired"].as_u64(), rep["finished"].as_u64()),
        (Some(300), Some(300)),
        "{rep}"
    );
    assert_eq!(notes(&env), 300);
    // The notes' changes are the next cycle's; while the server's clock stands still they
    // are not polled.
    let (_, reps) = run_once(&env).await;
    assert_eq!(reps["note_updated"]["fired"], 0, "{}", reps["note_updated"]);
    assert_eq!(notes(&env), 300);
}

/// A company changed at `ts` that Intercom lists (a contact is attached); its id.
fn listed_company(env: &SimEnv, name: &str, ts: i64) -> String {
    let company = id(&env
        .sim()
        .create(
            Kind::Company,
            json!({"name": name, "created_at": ts, "updated_at": ts}),
        )
        .unwrap());
    env.sim()
        .create(
            Kind::Contact,
            json!({"email": format!("{company}@x.io"), "role": "user", "company_ids": [company]}),
        )
        .unwrap();
    company
}

/// Companies Intercom lists (those with contacts), as the trigger returns them: oldest
/// change first, ties by id.
fn listed_companies(env: &SimEnv, since: i64) -> Vec<String> {
    let mut v: Vec<(i64, String)> = env
        .sim()
        .records(Kind::Company)
        .into_iter()
        .filter(|c| c["user_count"].as_i64().unwrap_or(0) > 0)
        .filter(|c| c["updated_at"].as_i64().unwrap() >= since)
        .map(|c| (c["updated_at"].as_i64().unwrap(), id(&c)))
        .collect();
    v.sort();
    v.into_iter().map(|x| x.1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scroll_that_expires_mid_scan_starts_over() {
    let env = SimEnv::start(SimEnv::config(300, 120, 0, 0)).await;
    // The second scroll page answers 404, as Intercom does for an expired `scroll_param`.
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![sluice::sim::FailRule {
            code: Some("not_found".into()),
            message: Some("scroll_param not found".into()),
            skip: 1,
            ..sluice::sim::FailRule::once(None, "/companies/scroll", 404)
        }],
        ..sluice::sim::Faults::default()
    });
    let since = T0 - 30 * 86_400;
    assert_eq!(
        env.poll_ids("new_or_updated_company", since).await,
        listed_companies(&env, since)
    );
    let scrolls: Vec<(Option<String>, u16)> = env
        .audit()
        .into_iter()
        .filter(|e| e.path == "/companies/scroll")
        .map(|e| (e.query, e.status))
        .collect();
    assert_eq!(scrolls[1].1, 404, "{scrolls:?}");
    assert_eq!(
        scrolls[2],
        (None, 200),
        "restarts from the first page: {scrolls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_open_scroll_is_waited_out_beyond_the_retry_count() {
    let env = SimEnv::start(SimEnv::config(300, 120, 0, 0)).await;
    // Another client holds the app's one scroll.
    #[allow(clippy::disallowed_methods)]
    let client = reqwest::Client::new();
    let other = client
        .get(format!("{}/companies/scroll", env.handle.base_url))
        .bearer_auth(crate::util::TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // Once sluice has been told `scroll_exists` more often than its retry count (3 here),
    // the other scroll expires (a minute idle on the simulator's clock).
    let sim = env.sim().clone();
    let watcher = tokio::spawn(async move {
        loop {
            let refused = sim
                .audit()
                .iter()
                .filter(|e| e.path == "/companies/scroll" && e.status == 400)
                .count();
            if refused >= 6 {
                sim.advance_clock(61);
                return refused;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    let since = T0 - 30 * 86_400;
    let r = env.poll("new_or_updated_company", since).await;
    r.assert_ok();
    assert!(watcher.await.unwrap() >= 6);
    let ids: Vec<String> = r.json_lines().iter().map(id).collect();
    assert!(!ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_listed_late_fires_once_although_its_change_is_old() {
    let env = SimEnv::start(SimEnv::config(40, 10, 0, 0)).await;
    let out = tempfile::tempdir().unwrap();
    let (rid, mut yaml) = emit_recipe("new_or_updated_company", out.path());
    yaml = yaml.replace("start_from: now", "start_from: \"2026-07-01\"");
    write_recipes(&env, &[(rid.clone(), yaml)]);
    // A company changed just now, so the cursor ends up near T0.
    listed_company(&env, "Recent Ltd", T0 - 10);
    // A company created without contacts: Intercom does not list it.
    let hidden = id(&env
        .sim()
        .create(
            Kind::Company,
            json!({"name": "Late Ltd", "created_at": T0 - 1200, "updated_at": T0 - 1200}),
        )
        .unwrap());
    let (r, reps) = run_once(&env).await;
    r.assert_ok();
    assert_eq!(reps[&rid]["cursor_after"], json!(T0 - 10));
    let first = reps[&rid]["fired"].as_u64().unwrap();
    // 2026-07-01T00:00:00Z, the recipe's `start_from`.
    let floor = T0 - 9 * 86_400 - 15 * 3600;
    assert_eq!(first as usize, listed_companies(&env, floor).len());
    let emitted = |out: &std::path::Path| {
        std::fs::read_to_string(out.join("new_or_updated_company.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<String>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(!emitted(out.path()).contains(&hidden));
    // Twenty minutes later a contact is attached: the company is listed, with its old
    // `updated_at`, far behind the cursor and its lookback.
    env.sim().advance_clock(1200);
    env.sim()
        .create(
            Kind::Contact,
            json!({"email": "late@x.io", "role": "user", "company_ids": [hidden]}),
        )
        .unwrap();
    let company = env.sim().record(Kind::Company, &hidden).unwrap();
    assert_eq!(company["updated_at"], json!(T0 - 1200), "{company}");
    let (r, reps) = run_once(&env).await;
    r.assert_ok();
    assert_eq!(reps[&rid]["fired"], 1, "{}", reps[&rid]);
    assert_eq!(
        emitted(out.path()).iter().filter(|i| **i == hidden).count(),
        1
    );
    // Known now: it never fires again for the same change.
    let (_, reps) = run_once(&env).await;
    assert_eq!(reps[&rid]["fired"], 0, "{}", reps[&rid]);
    let st = run_async({
        let mut c = env.cmd(&["state", "show", "--json"]);
        c.arg("--state-dir").arg(env.ws.path().join("state"));
        c
    })
    .await;
    st.assert_ok();
    assert_eq!(
        st.json()[0]["state"]["known_ids"],
        json!(listed_companies(&env, 0).len())
    );
}

fn fault_after_write(path_prefix: &str, status: u16, count: u32) -> sluice::sim::FailRule {
    sluice::sim::FailRule {
        count,
        after_write: true,
        ..sluice::sim::FailRule::once(Some("POST"), path_prefix, status)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_whose_answer_was_lost_are_looked_for_not_written_twice() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let recipe = "id: note_new\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: note\n    action: intercom.add_note_to_contact\n    with:\n      contact_id: \"{{record.id}}\"\n      body: \"Welcome, <{{record.email}}> & co\"\n";
    write_recipes(&env, &[("note_new".into(), recipe.into())]);
    let mut contacts = Vec::new();
    for i in 0..60 {
        let ts = T0 - 3000 + i;
        contacts.push(id(&env
            .sim()
            .create(
                Kind::Contact,
                json!({"email": format!("c{i}@x.io"), "role": "user", "created_at": ts, "updated_at": ts}),
            )
            .unwrap()));
    }
    // 50 notes are written but their answer is lost: 25 answered 500, 25 connections dropped.
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: contacts[..50]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                fault_after_write(
                    &format!("/contacts/{c}/notes"),
                    if i % 2 == 0 { 500 } else { 0 },
                    1,
                )
            })
            .collect(),
        ..sluice::sim::Faults::default()
    });
    let (r, reps) = run_once(&env).await;
    r.assert_ok();
    let rep = &reps["note_new"];
    assert_eq!(
        (rep["finished"].as_u64(), rep["dead_letters"].as_u64()),
        (Some(60), Some(0)),
        "{rep}"
    );
    assert!(
        env.sim().faults().fail_next.is_empty(),
        "all 50 faults struck"
    );
    // Exactly one note per contact: none lost, none doubled.
    let notes = env.sim().records(Kind::Note);
    for c in &contacts {
        let n = notes
            .iter()
            .filter(|n| n["contact"]["id"] == json!(c))
            .count();
        assert_eq!(n, 1, "contact {c} has {n} notes");
    }
    assert_eq!(notes.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_with_no_way_to_look_for_it_is_not_repeated_but_dead_lettered() {
    let env = SimEnv::start(SimEnv::config(2, 0, 0, 0)).await;
    let contact = id(&env.sim().records(Kind::Contact)[0]);
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![fault_after_write("/conversations", 0, 1)],
        ..sluice::sim::Faults::default()
    });
    let before = env.sim().records(Kind::Conversation).len();
    let r = env
        .call(
            "create_conversation",
            json!({"contact_id": contact, "contact_type": "user", "body": "Hello"}),
        )
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not safe to repeat"), "{}", r.stderr);
    // Carried out once, not repeated.
    assert_eq!(env.sim().records(Kind::Conversation).len(), before + 1);
    let posts = env
        .audit()
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/conversations")
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_with_an_unknown_outcome_is_not_repeated_by_on_error_retry() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let recipe = "id: open_chat\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: chat\n    action: intercom.create_conversation\n    on_error: retry\n    with:\n      contact_id: \"{{record.id}}\"\n      contact_type: user\n      body: \"Hello\"\n";
    env.write_recipe(recipe);
    let contact = id(&env
        .sim()
        .create(
            Kind::Contact,
            json!({"email": "c@x.io", "role": "user", "created_at": T0 - 100, "updated_at": T0 - 100}),
        )
        .unwrap());
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![fault_after_write("/conversations", 0, 1)],
        ..sluice::sim::Faults::default()
    });
    let conversations = |env: &SimEnv| {
        env.sim()
            .records(Kind::Conversation)
            .iter()
            .filter(|c| c.to_string().contains(&contact))
            .count()
    };
    let (_, reps) = run_once(&env).await;
    assert_eq!(
        reps["open_chat"]["dead_letters"], 1,
        "{}",
        reps["open_chat"]
    );
    // The next run does not send it again: a person decides.
    let (_, reps) = run_once(&env).await;
    assert_eq!(reps["open_chat"]["fired"], 0, "{}", reps["open_chat"]);
    assert_eq!(conversations(&env), 1);
    let dl = env.sluice_in(&["dead-letters", "list"], None).await;
    assert!(dl.stdout.contains("not safe to repeat"), "{}", dl.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_note_written_earlier_is_not_taken_for_the_lost_one() {
    let env = SimEnv::start(SimEnv::config(1, 0, 0, 0)).await;
    let contact = id(&env.sim().records(Kind::Contact)[0]);
    let note = json!({"contact_id": contact, "body": "Plan changed"});
    env.ok("add_note_to_contact", note.clone()).await;
    // Later, the same text again: this time the server fails before writing.
    env.sim().advance_clock(30);
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![sluice::sim::FailRule::once(
            Some("POST"),
            format!("/contacts/{contact}/notes"),
            500,
        )],
        ..sluice::sim::Faults::default()
    });
    env.ok("add_note_to_contact", note.clone()).await;
    let notes = env
        .sim()
        .records(Kind::Note)
        .into_iter()
        .filter(|n| n["contact"]["id"] == json!(contact))
        .count();
    assert_eq!(notes, 2, "the second note was taken for the first");
    // By another admin, a lost answer is not mistaken for an identical note of someone else.
    let admins = env.sim().records(Kind::Admin);
    let (a, b) = (id(&admins[0]), id(&admins[1]));
    env.ok(
        "add_note_to_contact",
        json!({"contact_id": contact, "body": "Same", "admin_id": a}),
    )
    .await;
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![sluice::sim::FailRule::once(
            Some("POST"),
            format!("/contacts/{contact}/notes"),
            500,
        )],
        ..sluice::sim::Faults::default()
    });
    env.ok(
        "add_note_to_contact",
        json!({"contact_id": contact, "body": "Same", "admin_id": b}),
    )
    .await;
    let by_b = env
        .sim()
        .records(Kind::Note)
        .into_iter()
        .filter(|n| n["author"]["id"] == json!(b) && n["body"].as_str().unwrap().contains("Same"))
        .count();
    assert_eq!(by_b, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_without_a_natural_key_is_not_created_twice() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![fault_after_write("/contacts", 0, 1)],
        ..sluice::sim::Faults::default()
    });
    let r = env
        .call("create_contact", json!({"role": "lead", "name": "No Key"}))
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not safe to repeat"), "{}", r.stderr);
    assert_eq!(env.sim().records(Kind::Contact).len(), 1);
    // With an email the create answers 409 when repeated: sent again, the same contact.
    env.sim().set_faults(sluice::sim::Faults {
        fail_next: vec![fault_after_write("/contacts", 0, 1)],
        ..sluice::sim::Faults::default()
    });
    let out = env
        .ok("create_contact", json!({"email": "k@x.io", "role": "user"}))
        .await;
    assert_eq!(out["email"], "k@x.io");
    assert_eq!(env.sim().records(Kind::Contact).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_that_leaves_the_listing_and_returns_unchanged_does_not_fire_again() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let out = tempfile::tempdir().unwrap();
    let (rid, mut yaml) = emit_recipe("new_or_updated_company", out.path());
    yaml = yaml.replace("start_from: now", "start_from: \"2026-07-01\"");
    env.write_recipe(&yaml);
    let company = id(&env
        .sim()
        .create(
            Kind::Company,
            json!({"name": "Flaky Ltd", "created_at": T0 - 5000, "updated_at": T0 - 5000}),
        )
        .unwrap());
    let contact = id(&env
        .sim()
        .create(
            Kind::Contact,
            json!({"email": "f@x.io", "role": "user", "company_ids": [company]}),
        )
        .unwrap());
    // Another company changed just now: the cursor moves far past the flaky one's change.
    listed_company(&env, "Recent Ltd", T0 - 10);
    let (_, reps) = run_once(&env).await;
    assert_eq!(reps[&rid]["fired"], 2, "{}", reps[&rid]);
    assert_eq!(reps[&rid]["cursor_after"], json!(T0 - 10));
    // The contact leaves: the company is not listed; it comes back hours later, unchanged.
    let r = reqwest_delete(&env, &format!("/contacts/{contact}/companies/{company}")).await;
    assert!(r < 300, "detach: {r}");
    env.sim().advance_clock(2 * 3600);
    let (_, reps) = run_once(&env).await;
    assert_eq!(reps[&rid]["fired"], 0, "{}", reps[&rid]);
    env.call(
        "add_contact_to_company",
        json!({"contact_id": contact, "company_id": company}),
    )
    .await
    .assert_ok();
    env.sim()
        .patch(Kind::Company, &company, json!({"updated_at": T0 - 5000}))
        .unwrap();
    env.sim().advance_clock(60);
    let (_, reps) = run_once(&env).await;
    assert_eq!(
        reps[&rid]["fired"], 0,
        "fired again for the same change: {}",
        reps[&rid]
    );
}

/// A `DELETE` straight to the simulator's Intercom API (no sluice action detaches).
async fn reqwest_delete(env: &SimEnv, path: &str) -> u16 {
    #[allow(clippy::disallowed_methods)]
    let client = reqwest::Client::new();
    client
        .delete(format!("{}{path}", env.handle.base_url))
        .bearer_auth(crate::util::TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
