//! Failure classification end to end: 401, 404, 409, 422, 429 and 5xx from the simulator, and
//! the token never showing in output or logs.

use serde_json::json;
use sluice::sim::{FailRule, Faults, Kind};

use crate::util::{run_async, SimEnv, TOKEN};

fn fail(path: &str, status: u16, count: u32) -> Faults {
    Faults {
        fail_next: vec![FailRule {
            count,
            ..FailRule::once(None, path, status)
        }],
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_an_auth_failure_and_never_retried() {
    let env = SimEnv::start(SimEnv::config(1, 0, 0, 0)).await;
    let mut c = env.cmd(&[
        "call",
        "intercom.find_contact",
        "--connection",
        "intercom",
        "--with",
        r#"{"id":"x"}"#,
    ]);
    c.env("INTERCOM_TOKEN", "wrong-token-abc");
    let r = run_async(c).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("HTTP 401 `unauthorized` (auth)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("create a new one in Intercom's Developer Hub"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-token-abc") && !r.stdout.contains("wrong-token-abc"));
    assert_eq!(env.sim().audit().len(), 1, "auth failures are not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_conflict_and_unprocessable_are_permanent() {
    let env = SimEnv::start(SimEnv::config(1, 0, 0, 0)).await;
    let r = env
        .call("find_contact", json!({"id": "000000000000000000000000"}))
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("HTTP 404 `not_found` (fatal): User Not Found"),
        "{}",
        r.stderr
    );

    // A duplicate create is Intercom's 409 `conflict`; create_contact resolves it to the
    // existing contact (harmless to repeat).
    let existing = env.sim().records(Kind::Contact)[0].clone();
    let email = existing["email"].as_str().unwrap();
    env.sim().clear_audit();
    let out = env.ok("create_contact", json!({"email": email})).await;
    assert_eq!(out["id"], existing["id"]);
    let statuses: Vec<(String, u16)> = env
        .audit()
        .iter()
        .map(|e| (format!("{} {}", e.method, e.path), e.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("POST /contacts".to_string(), 409),
            (
                format!("GET /contacts/{}", existing["id"].as_str().unwrap()),
                200
            )
        ]
    );
    // A 409 elsewhere is the `conflict` class.
    env.sim().set_faults(Faults {
        fail_next: vec![FailRule {
            code: Some("conflict".into()),
            ..FailRule::once(Some("PUT"), "/contacts/", 409)
        }],
        ..Faults::default()
    });
    let r = env
        .call(
            "update_contact",
            json!({"id": existing["id"], "email": "x@y.z"}),
        )
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("HTTP 409 `conflict` (conflict)"),
        "{}",
        r.stderr
    );

    env.sim().set_faults(fail("/contacts", 422, 1));
    env.sim().clear_audit();
    let r = env
        .call("update_contact", json!({"id": existing["id"], "name": "x"}))
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("HTTP 422") && r.stderr.contains("(fatal)"),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.sim().audit().len(),
        1,
        "permanent failures are not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff_then_given_up() {
    let env = SimEnv::start(SimEnv::config(1, 0, 0, 0)).await;
    let id = env.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Two 500s then success: three requests, exit 0.
    env.sim().set_faults(fail("/contacts/", 500, 2));
    let out = env.ok("find_contact", json!({"id": id})).await;
    assert_eq!(out["id"], id.as_str());
    let statuses: Vec<u16> = env.audit().iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    // Always 503: gives up after max_attempts (3), class retryable.
    env.sim().clear_audit();
    env.sim().set_faults(fail("/contacts/", 503, 10));
    let r = env.call("find_contact", json!({"id": id})).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("HTTP 503")
            && r.stderr.contains("(retryable)")
            && r.stderr.contains("after 3 attempts"),
        "{}",
        r.stderr
    );
    assert_eq!(env.audit().len(), 3);
    // A dropped connection is retryable too.
    env.sim().clear_audit();
    env.sim().set_faults(fail("/contacts/", 0, 1));
    env.ok("find_contact", json!({"id": id})).await;
    assert_eq!(
        env.audit().iter().map(|e| e.status).collect::<Vec<_>>(),
        vec![0, 200]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_for_the_reset_then_succeed_or_give_up() {
    let env = SimEnv::start(SimEnv::config(1, 0, 0, 0)).await;
    let id = env.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // One second before the 10-second window ends, so each wait for X-RateLimit-Reset
    // (measured against the response's Date) is about a second.
    env.sim().set_clock(crate::util::T0 + 9);
    env.sim().set_faults(fail("/contacts/", 429, 1));
    let out = env.ok("find_contact", json!({"id": id})).await;
    assert_eq!(out["id"], id.as_str());
    assert_eq!(
        env.audit().iter().map(|e| e.status).collect::<Vec<_>>(),
        vec![429, 200]
    );
    // More 429s than the connection's max_rate_limit_waits (2): class rate_limited.
    env.sim().clear_audit();
    env.sim().set_faults(fail("/contacts/", 429, 5));
    let r = env.call("find_contact", json!({"id": id})).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("HTTP 429 `rate_limit_exceeded` (rate_limited)"),
        "{}",
        r.stderr
    );
    assert_eq!(env.audit().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_shows_in_output_logs_or_dry_runs() {
    let env = SimEnv::start(SimEnv::config(2, 0, 0, 0)).await;
    let id = env.sim().records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim().set_faults(fail("/contacts/", 500, 1));
    let with = json!({"id": id}).to_string();
    for args in [
        vec![
            "--log",
            "trace",
            "call",
            "intercom.find_contact",
            "--connection",
            "intercom",
            "--with",
            &with,
        ],
        vec![
            "--log",
            "trace",
            "--log-format",
            "json",
            "poll",
            "intercom.contact_updated",
            "--connection",
            "intercom",
            "--since",
            "0",
        ],
        vec![
            "call",
            "intercom.find_contact",
            "--connection",
            "intercom",
            "--with",
            &with,
            "--dry-run",
        ],
    ] {
        let r = run_async(env.cmd(&args)).await;
        r.assert_ok();
        assert!(
            !r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN),
            "token leaked in {args:?}:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    let r = run_async(env.cmd(&[
        "call",
        "intercom.find_contact",
        "--connection",
        "intercom",
        "--with",
        &with,
        "--dry-run",
    ]))
    .await;
    let shown = r.json();
    assert_eq!(shown["headers"]["Authorization"], "Bearer ***");
    assert_eq!(shown["headers"]["Intercom-Version"], "2.15");
    assert_eq!(shown["headers"]["Accept"], "application/json");
    assert_eq!(
        shown["url"],
        format!("{}/contacts/{id}", env.handle.base_url)
    );
    // Every request carried the headers Intercom needs.
    for e in env.sim().audit() {
        assert_eq!(e.intercom_version.as_deref(), Some("2.15"));
        assert_eq!(e.accept.as_deref(), Some("application/json"));
    }
}
