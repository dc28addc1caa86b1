//! Each of the 7 Intercom triggers through `sluice poll` against the simulator, over more than
//! one page, asserting exactly which records come back and what was asked of the API.

use serde_json::{json, Value};
use sluice::sim::Kind;

use crate::util::{SimEnv, T0};

/// Start of 2026-07-10 in Dublin (IST, UTC+1): 2026-07-09 23:00 UTC.
const DAY_START: i64 = T0 - 16 * 3600;

fn create(env: &SimEnv, kind: Kind, v: Value) -> String {
    let rec = env
        .sim()
        .create(kind, v)
        .unwrap_or_else(|e| panic!("create {kind:?}: {e}"));
    rec["id"].as_str().unwrap().to_string()
}

/// The search requests the simulator saw for a path: (filter value, starting_after).
fn searches(env: &SimEnv, path: &str) -> Vec<(Value, Option<String>)> {
    env.audit()
        .into_iter()
        .filter(|e| e.path == path)
        .map(|e| {
            let b = e.body.unwrap();
            (
                b["query"]["value"].clone(),
                b["pagination"]["starting_after"]
                    .as_str()
                    .map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_contact_widens_to_the_local_day_and_pages_through_the_body_cursor() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let since = T0 - 3600; // 15:00 local on 2026-07-10
    let mut expected = Vec::new();
    for i in 0..160 {
        let ts = since + i;
        expected.push(create(&env, Kind::Contact, json!({"email": format!("a{i}@x.io"), "role": "user", "created_at": ts, "updated_at": ts})));
    }
    // Earlier the same local day: the server returns them (day granularity), sluice drops them.
    for i in 0..5 {
        let ts = DAY_START + 60 + i;
        create(
            &env,
            Kind::Contact,
            json!({"email": format!("b{i}@x.io"), "role": "lead", "created_at": ts, "updated_at": ts}),
        );
    }
    // The second before `since`, and the previous local day.
    create(
        &env,
        Kind::Contact,
        json!({"email": "c@x.io", "role": "user", "created_at": since - 1, "updated_at": since - 1}),
    );
    create(
        &env,
        Kind::Contact,
        json!({"email": "d@x.io", "role": "user", "created_at": DAY_START - 100, "updated_at": DAY_START - 100}),
    );

    let ids = env.poll_ids("new_contact", since).await;
    assert_eq!(ids, expected);

    // The timezone was learnt from GET /me, once.
    assert_eq!(
        env.sim().audit().iter().filter(|e| e.path == "/me").count(),
        1
    );
    let s = searches(&env, "/contacts/search");
    // 167 records of the local day match `> DAY_START − 1`: two pages of 150, cursor in the body.
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0], (json!(DAY_START - 1), None));
    assert_eq!(s[1].0, json!(DAY_START - 1));
    assert!(
        s[1].1.is_some(),
        "second page must send starting_after in the body"
    );
    let first = env
        .audit()
        .into_iter()
        .find(|e| e.path == "/contacts/search")
        .unwrap();
    assert_eq!(
        first.body.unwrap()["sort"],
        json!({"field": "created_at", "order": "ascending"})
    );
    assert_eq!(
        first.query, None,
        "the search cursor never goes in the query string"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_updated_sees_later_same_day_changes_once_with_latest_data() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let since = T0 - 7200;
    let early = create(
        &env,
        Kind::Contact,
        json!({"email": "early@x.io", "role": "user", "created_at": DAY_START + 10, "updated_at": DAY_START + 10}),
    );
    let later = create(
        &env,
        Kind::Contact,
        json!({"email": "later@x.io", "role": "user", "created_at": DAY_START - 86_400, "updated_at": DAY_START - 86_400}),
    );
    // Changed twice later the same day as `since`: one record, the latest version.
    env.sim()
        .patch(
            Kind::Contact,
            &later,
            json!({"name": "First", "updated_at": since + 5}),
        )
        .unwrap();
    env.sim()
        .patch(
            Kind::Contact,
            &later,
            json!({"name": "Second", "updated_at": since + 9}),
        )
        .unwrap();
    let mut many = Vec::new();
    for i in 0..151 {
        many.push(create(&env, Kind::Contact, json!({"email": format!("m{i}@x.io"), "role": "user", "created_at": since + 20 + i, "updated_at": since + 20 + i})));
    }
    let run = env.poll("contact_updated", since).await;
    run.assert_ok();
    let recs = run.json_lines();
    let ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut want = vec![later.as_str()];
    want.extend(many.iter().map(String::as_str));
    assert_eq!(ids, want);
    assert_eq!(recs[0]["name"], "Second");
    assert_eq!(recs[0]["updated_at"], json!(since + 9));
    assert!(!ids.contains(&early.as_str()));
    let s = searches(&env, "/contacts/search");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0, json!(DAY_START - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_triggers_do_not_rely_on_the_inclusive_gt_and_page() {
    let env = SimEnv::start(SimEnv::config(3, 0, 0, 0)).await;
    let since = T0 - 600;
    let contact = env.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tt = env
        .sim()
        .records(Kind::TicketType)
        .into_iter()
        .find(|t| t["category"] == "Customer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ticket = |ts: i64| json!({"ticket_type_id": tt, "contacts": [{"id": contact}], "created_at": ts, "updated_at": ts});
    create(&env, Kind::Ticket, ticket(since - 1));
    let mut expected = vec![create(&env, Kind::Ticket, ticket(since))];
    for i in 1..=151 {
        expected.push(create(&env, Kind::Ticket, ticket(since + i)));
    }
    assert_eq!(env.poll_ids("new_ticket", since).await, expected);
    let s = searches(&env, "/tickets/search");
    // `>` is inclusive for tickets, but sluice does not rely on it: one second earlier is
    // sent, the extra record is dropped locally; 153 matches → two pages.
    assert_eq!(
        s.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        vec![json!(since - 1), json!(since - 1)]
    );
    // Were the API's `>` exclusive, nothing would be lost.
    env.sim().set_strict_gt(true);
    assert_eq!(env.poll_ids("new_ticket", since).await, expected);
    env.sim().set_strict_gt(false);

    // ticket_updated: an old ticket changed now comes back; unchanged old ones do not.
    env.sim().clear_audit();
    env.sim().advance_clock(100);
    let old = expected[0].clone();
    env.sim()
        .patch(Kind::Ticket, &old, json!({"open": false}))
        .unwrap();
    let ids = env.poll_ids("ticket_updated", T0 + 50).await;
    assert_eq!(ids, vec![old]);
    assert_eq!(searches(&env, "/tickets/search")[0].0, json!(T0 + 49));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_triggers_do_not_rely_on_the_inclusive_gt_and_page() {
    let env = SimEnv::start(SimEnv::config(2, 0, 0, 0)).await;
    let since = T0 - 900;
    let contact = env.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let conv = |ts: i64| json!({"contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": contact}]}, "created_at": ts, "updated_at": ts});
    create(&env, Kind::Conversation, conv(since - 1));
    let mut expected = Vec::new();
    for i in 0..155 {
        expected.push(create(&env, Kind::Conversation, conv(since + i)));
    }
    assert_eq!(env.poll_ids("new_conversation", since).await, expected);
    let s = searches(&env, "/conversations/search");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].0, json!(since - 1));
    env.sim().set_strict_gt(true);
    assert_eq!(env.poll_ids("new_conversation", since).await, expected);
    env.sim().set_strict_gt(false);

    env.sim().clear_audit();
    env.sim().advance_clock(60);
    let a = expected[3].clone();
    let b = expected[0].clone();
    env.sim()
        .patch(Kind::Conversation, &a, json!({"title": "first"}))
        .unwrap();
    env.sim().advance_clock(1);
    env.sim()
        .patch(Kind::Conversation, &b, json!({"title": "second"}))
        .unwrap();
    // Oldest change first.
    assert_eq!(
        env.poll_ids("conversation_updated", T0 + 60).await,
        vec![a, b]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_trigger_scrolls_everything_and_filters_locally() {
    let env = SimEnv::start(SimEnv::config(300, 120, 0, 0)).await;
    let since = T0 - 5 * 86_400;
    let ids = env.poll_ids("new_or_updated_company", since).await;
    // Expected: companies Intercom lists (those with contacts) changed at or after `since`,
    // oldest first (ties by id).
    let mut want: Vec<(i64, String)> = env
        .sim()
        .records(Kind::Company)
        .into_iter()
        .filter(|c| c["user_count"].as_i64().unwrap_or(0) > 0)
        .filter(|c| c["updated_at"].as_i64().unwrap() >= since)
        .map(|c| {
            (
                c["updated_at"].as_i64().unwrap(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    want.sort();
    assert!(
        !want.is_empty() && want.len() < 120,
        "seed should give some but not all: {}",
        want.len()
    );
    assert_eq!(ids, want.into_iter().map(|x| x.1).collect::<Vec<_>>());
    let scrolls: Vec<Option<String>> = env
        .audit()
        .into_iter()
        .filter(|e| e.path == "/companies/scroll")
        .map(|e| e.query)
        .collect();
    assert!(
        scrolls.len() >= 3,
        "several scroll pages expected: {scrolls:?}"
    );
    assert_eq!(scrolls[0], None);
    assert!(scrolls[1..]
        .iter()
        .all(|q| q.as_deref().is_some_and(|q| q.starts_with("scroll_param="))));
}
