//! Many workspaces (issue 13): one recipe run for several connections — named, or every
//! connection with a label — against a simulator serving one workspace per token; connections
//! from a directory of connection files, hot-reloaded by the sidecar. The oracles are the
//! emitted lines, each simulated workspace's recorded calls, `state show`, `/api/status`,
//! `/readyz` and `/metrics`.
//!
//! A child of `sidecar` (for its `Sidecar` harness).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use sluice::sim::{AuthSeen, Kind, Sim, SimConfig};

use super::{emitted, tally, write_atomically, Sidecar, RELOAD, SOON};
use crate::util::{reports_of, run_async, SimEnv, TOKEN};

/// globex's token: the test token with a suffix, so it reaches the sidecar through the one
/// variable the harness sets (`${env:INTERCOM_TOKEN}-globex`).
fn globex_token() -> String {
    format!("{TOKEN}-globex")
}

/// A simulator with two workspaces (acme: `sim-token`, globex: `sim-token-globex`), clock
/// running from now, nothing seeded; acme allows 40 calls per 10 s, globex 25.
async fn two_workspaces() -> SimEnv {
    let now = chrono::Utc::now().timestamp();
    let env = SimEnv::start(SimConfig {
        tokens: vec![TOKEN.into(), globex_token()],
        workspace_per_token: true,
        start_time: now,
        frozen_clock: false,
        ..SimEnv::config(0, 0, 0, 0)
    })
    .await;
    acme(&env).set_rate_limit(40);
    globex(&env).set_rate_limit(25);
    env
}

fn acme(env: &SimEnv) -> Sim {
    env.sim().workspace(TOKEN).unwrap()
}

fn globex(env: &SimEnv) -> Sim {
    env.sim().workspace(&globex_token()).unwrap()
}

/// A connection's fields (a `sluice.yaml` entry's, or a connection file's), indented by
/// `indent`.
fn connection(base_url: &str, token_suffix: &str, labels: &str, indent: &str) -> String {
    [
        "connector: intercom".to_string(),
        format!("base_url: {base_url}"),
        format!("token: ${{env:INTERCOM_TOKEN}}{token_suffix}"),
        "retry: {max_attempts: 3, base_delay_ms: 5, max_delay_ms: 20, max_rate_limit_waits: 2}"
            .into(),
        "max_clock_skew: 3650d".into(),
        format!("labels: [{labels}]"),
    ]
    .iter()
    .map(|l| format!("{indent}{l}\n"))
    .collect()
}

/// A contact created in workspace `ws` two seconds ago (a poll takes records up to the
/// second before the server's now); its email.
fn contact(ws: &Sim, email: &str) -> String {
    let at = ws.now() - 2;
    ws.create(
        Kind::Contact,
        json!({"email": email, "role": "user", "created_at": at}),
    )
    .unwrap();
    email.to_string()
}

/// Recipe `fan_out` for `connections`, emitting `<connection> <email>` for each new contact.
fn fan_out(connections: &str, every: &str, to: &Path) -> String {
    format!(
        "id: fan_out\nconnections: {connections}\ntrigger: intercom.new_contact\nschedule:\n  every: {every}\nstart_from: \"2020-01-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{{{recipe.connection}}}} {{{{record.email}}}}\"\n      to: {}\n",
        to.display()
    )
}

/// Every call workspace `ws` answered was authenticated and none was refused for its rate;
/// how many there were.
fn clean_calls(ws: &Sim, name: &str) -> usize {
    let audit = ws.audit();
    for e in &audit {
        assert_eq!(e.auth, AuthSeen::Valid, "{name}: {e:?}");
        assert_ne!(e.status, 429, "{name}: {e:?}");
    }
    audit.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipe_for_two_connections_fires_each_workspace_once_in_its_own_namespace() {
    let env = two_workspaces().await;
    let base = env.handle.base_url.clone();
    std::fs::write(
        env.ws.config(),
        format!(
            "connections:\n  acme:\n{}  globex:\n{}  internal:\n{}",
            connection(&base, "", "customer", "    "),
            connection(&base, "-globex", "customer, big", "    "),
            connection(&base, "", "staff", "    "),
        ),
    )
    .unwrap();
    let out = env.ws.path().join("out.jsonl");
    env.write_recipe(&fan_out("{label: customer}", "1m", &out));
    let a: Vec<String> = (0..3)
        .map(|i| contact(&acme(&env), &format!("a{i}@acme.test")))
        .collect();
    let g: Vec<String> = (0..2)
        .map(|i| contact(&globex(&env), &format!("g{i}@globex.test")))
        .collect();

    let r = env.sluice_in(&["run", "--once", "--json"], None).await;
    r.assert_ok();
    let reports = reports_of(&r.stdout);
    let instances: BTreeSet<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|rep| rep["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        instances,
        BTreeSet::from(["fan_out@acme", "fan_out@globex"]),
        "one instance per connection with the label, none for `internal`: {reports}"
    );
    let mut want: Vec<String> = a.iter().map(|e| format!("acme {e}")).collect();
    want.extend(g.iter().map(|e| format!("globex {e}")));
    let mut got = emitted(&out);
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "each workspace's records, each once, on its own instance: {reports}\n{}",
        r.stderr
    );
    let (acme_calls, globex_calls) = (
        clean_calls(&acme(&env), "acme"),
        clean_calls(&globex(&env), "globex"),
    );
    assert!(acme_calls > 0 && globex_calls > 0);

    // A second run fires only what is new, in the workspace where it is new.
    let late = contact(&globex(&env), "late@globex.test");
    env.sluice_in(&["run", "--once", "--recipe", "fan_out"], None)
        .await
        .assert_ok();
    let got = emitted(&out);
    assert_eq!(got.len(), want.len() + 1, "{got:?}");
    assert_eq!(got.last().unwrap(), &format!("globex {late}"));
    assert!(tally(&got).values().all(|n| *n == 1), "{got:?}");

    // Two namespaces, each with its own cursor and keys.
    let r = env
        .sluice_in(&["state", "show", "--recipe", "fan_out", "--json"], None)
        .await;
    r.assert_ok();
    let states: Value = serde_json::from_str(&r.stdout).unwrap();
    let keys: Vec<(String, u64)> = states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"]["recipe"].as_str().unwrap().to_string(),
                s["state"]["dedupe_keys"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![("fan_out@acme".into(), 3), ("fan_out@globex".into(), 3)],
        "{states}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_file_added_to_a_running_sidecar_starts_its_instances() {
    let env = two_workspaces().await;
    let base = env.handle.base_url.clone();
    let dir = env.ws.path().join("connections");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("acme.yaml"), connection(&base, "", "customer", "")).unwrap();
    let out = env.ws.path().join("out.jsonl");
    env.write_recipe(&fan_out("{label: customer}", "1s", &out));
    let first = contact(&acme(&env), "first@acme.test");
    let sc = Sidecar::start(&env, &["--connections-dir", dir.to_str().unwrap()]).await;
    let seen = |want: String| {
        let out = out.clone();
        move || {
            let want = want.clone();
            let lines = emitted(&out);
            async move { lines.contains(&want).then_some(()) }
        }
    };
    sc.until("acme's contact", SOON, seen(format!("acme {first}")))
        .await;
    assert!(sc.instance("fan_out@globex").await.is_none());

    // Adding a customer is adding a file.
    let g = contact(&globex(&env), "first@globex.test");
    write_atomically(
        &dir.join("globex.yaml"),
        &connection(&base, "-globex", "customer", ""),
    );
    sc.until("globex's contact", SOON, seen(format!("globex {g}")))
        .await;
    assert!(sc.instance("fan_out@globex").await.is_some());

    // Each workspace has its own budget, learned from its own headers; `sluice.yaml`'s
    // `intercom` reaches acme's workspace with the same token, and shares its budget.
    let m = sc.metrics().await;
    assert_eq!(
        m.sum(
            "sluice_workspace_rate_limit",
            &[("workspace", "intercom,acme")]
        ),
        40.0,
        "{m:?}"
    );
    assert_eq!(
        m.sum("sluice_workspace_rate_limit", &[("workspace", "globex")]),
        25.0,
        "{m:?}"
    );
    for ws in ["intercom,acme", "globex"] {
        assert!(m.sum("sluice_workspace_calls_total", &[("workspace", ws)]) > 0.0);
    }
    assert_eq!(m.sum("sluice_workspace_rate_limited_total", &[]), 0.0);

    // A broken connection file is named on /readyz and stops only its own instances.
    std::fs::write(
        dir.join("initech.yaml"),
        "connector: intercom\ntokn: x\nlabels: [customer]\n",
    )
    .unwrap();
    let body = sc
        .until("/readyz naming initech.yaml", RELOAD, || async {
            let (code, body) = sc.get("/readyz").await;
            (code == 503 && body.contains("initech.yaml")).then_some(body)
        })
        .await;
    assert!(body.contains("connection `initech`"), "{body}");
    let later = contact(&acme(&env), "later@acme.test");
    sc.until("acme's later contact", SOON, seen(format!("acme {later}")))
        .await;
    assert!(sc.instance("fan_out@initech").await.is_none());
    let lines = emitted(&out);
    assert!(tally(&lines).values().all(|n| *n == 1), "{lines:?}");
    clean_calls(&acme(&env), "acme");
    clean_calls(&globex(&env), "globex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_lists_and_labels_are_checked_with_locations() {
    let env = two_workspaces().await;
    let base = env.handle.base_url.clone();
    std::fs::write(
        env.ws.config(),
        format!(
            "connections:\n  acme:\n{}  globex:\n{}",
            connection(&base, "", "customer", "    "),
            connection(&base, "-globex", "customer", "    "),
        ),
    )
    .unwrap();
    let to = env.ws.path().join("out.jsonl");
    let recipes = env.ws.path().join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    let write = |id: &str, connections: &str| {
        let text = fan_out(connections, "1m", &to).replace("id: fan_out", &format!("id: {id}"));
        std::fs::write(recipes.join(format!("{id}.yaml")), text).unwrap();
    };
    write("typo", "[acme, globx]");
    write("nolabel", "{label: custmer}");
    write("twice", "[acme, acme]");
    write("empty", "[]");
    std::fs::write(
        recipes.join("both.yaml"),
        fan_out("[acme]", "1m", &to).replace("id: fan_out", "id: both\nconnection: acme"),
    )
    .unwrap();
    let r = env
        .sluice_in(&["validate", recipes.to_str().unwrap()], None)
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        "typo.yaml:2:21: error: there is no connection `globx`",
        "help: did you mean `globex`?",
        "nolabel.yaml:2:15: error: no connection has label `custmer`",
        "help: did you mean `customer`?",
        "twice.yaml:2:21: error: connection `acme` is named twice",
        "empty.yaml:2:1: error: `connections` is empty",
        "both.yaml:3:1: error: give either `connection` (one) or `connections` (several), not both",
    ] {
        assert!(r.stderr.contains(want), "{want}\n{}", r.stderr);
    }

    // A connection defined in `sluice.yaml` and in a file is used from neither.
    for f in ["typo", "nolabel", "twice", "empty", "both"] {
        std::fs::remove_file(recipes.join(format!("{f}.yaml"))).unwrap();
    }
    write("fan_out", "[acme, globex]");
    let dir = env.ws.path().join("connections");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("globex.yaml"),
        connection(&base, "-globex", "", ""),
    )
    .unwrap();
    let args = ["--connections-dir", dir.to_str().unwrap()];
    let r = env
        .sluice_in(
            &[&["validate", recipes.to_str().unwrap()][..], &args].concat(),
            None,
        )
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("globex.yaml: error: connection `globex` is also defined in"),
        "{}",
        r.stderr
    );
    let r = env
        .sluice_in(&[&["run", "--once"][..], &args].concat(), None)
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("connection `globex` cannot be used"),
        "{}",
        r.stderr
    );

    // `sluice test` shows the instance asked for.
    std::fs::remove_file(dir.join("globex.yaml")).unwrap();
    let sample = env.ws.path().join("sample.json");
    std::fs::write(
        &sample,
        r#"{"id": "c1", "email": "x@y.test", "created_at": 1}"#,
    )
    .unwrap();
    let file = recipes.join("fan_out.yaml");
    let test = |conn: &str| {
        let mut c = env.cmd(&[
            "test",
            file.to_str().unwrap(),
            "--sample",
            sample.to_str().unwrap(),
            "--connection",
            conn,
        ]);
        c.arg("--recipes").arg(&recipes);
        run_async(c)
    };
    let r = test("globex").await;
    r.assert_ok();
    assert!(
        r.stdout.contains("recipe fan_out on connection globex:"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("globex x@y.test"), "{}", r.stdout);
    let r = test("initech").await;
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("does not run for connection `initech`; it runs for: acme, globex"),
        "{}",
        r.stderr
    );
}
