//! OAuth2 connections (issue 13) through the CLI against the simulator's OAuth endpoints:
//! `sluice connect` end to end (with each way it must refuse: a wrong `state`, a reused code,
//! a wrong client secret), PKCE, tokens at rest encrypted and key rotation, `connections
//! list | check`, revocation pausing a sidecar's recipes and re-authorization resuming them
//! from their cursors, and single-flight refresh of expiring tokens (the tiny OAuth connector
//! in tests/fixtures/oauth_connectors).
//!
//! The oracles: the simulator's recorded calls and issued tokens, the files in the state
//! directory, what the commands print (never a token) and the sidecar's HTTP face. Waits poll
//! a condition every 50 ms up to a deadline.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::sim::AuthSeen;

use crate::util::{run_async, Run, SimEnv, Workspace};

const SOON: Duration = Duration::from_secs(15);
const CLIENT_ID: &str = "sim-client-id";
const CLIENT_SECRET: &str = "sim-client-secret";

/// A workspace whose connection `name` (connector `connector`) uses OAuth on the simulator.
fn oauth_ws(env: &SimEnv, name: &str, connector: &str, extra: &str) -> Workspace {
    Workspace::new(&format!(
        "connections:\n  {name}:\n    connector: {connector}\n    base_url: {}\n    auth: oauth2\n    client_id: ${{env:OAUTH_CLIENT_ID}}\n    client_secret: ${{env:OAUTH_CLIENT_SECRET}}\n    retry: {{max_attempts: 2, base_delay_ms: 5, max_delay_ms: 20, max_rate_limit_waits: 2}}\n    max_clock_skew: 3650d\n{extra}",
        env.handle.base_url
    ))
}

/// `sluice ARGS…` in `ws` with its state directory and the client in the environment.
fn cmd(ws: &Workspace, args: &[&str], secret: &str) -> std::process::Command {
    let mut c = ws.sluice(args);
    c.arg("--state-dir")
        .arg(ws.path().join("state"))
        .env("OAUTH_CLIENT_ID", CLIENT_ID)
        .env("OAUTH_CLIENT_SECRET", secret)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    if ws.path().join("connectors").exists() {
        c.arg("--connectors").arg(ws.path().join("connectors"));
    }
    c
}

/// A `sluice connect` under way: its authorize URL, read from stderr.
struct Connecting {
    child: Child,
    url: String,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Connecting {
    fn start(ws: &Workspace, name: &str, secret: &str) -> Connecting {
        Connecting::spawn(cmd(
            ws,
            &["connect", name, "--no-browser", "--timeout", "30s"],
            secret,
        ))
    }

    fn spawn(mut c: std::process::Command) -> Connecting {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice connect");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + SOON;
        let url = loop {
            let l = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no authorize URL on stderr:\n{}", log.join("\n")));
            log.push(l.clone());
            if let Some(u) = l.trim().strip_prefix("http") {
                break format!("http{u}");
            }
        };
        Connecting {
            child,
            url,
            lines,
            log,
        }
    }

    /// Waits for the command to end: its exit code and everything it printed.
    fn finish(mut self) -> Run {
        let status = wait_child(&mut self.child);
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut stdout).unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(l);
        }
        Run {
            code: status,
            stdout,
            stderr: self.log.join("\n"),
        }
    }
}

/// The JSON strings emitted to `out`, one per line.
fn emitted_lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<String>(l).ok())
        .collect()
}

/// A new contact in the simulator; its id.
fn new_contact(env: &SimEnv, email: &str) -> String {
    env.sim()
        .create(
            sluice::sim::Kind::Contact,
            json!({"email": email, "role": "user"}),
        )
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Contact A made and fired by the sidecar at `base`; the token revoked in the simulator;
/// contact B made; `/readyz` naming the revoked connection. A's and B's ids and `/readyz`.
async fn fire_then_revoke(
    env: &SimEnv,
    out: &Path,
    base: &str,
    log: &dyn Fn() -> String,
) -> (String, String, String) {
    let a = new_contact(env, "a@example.com");
    until("contact A to fire", log, || {
        emitted_lines(out).contains(&a).then_some(())
    })
    .await;
    sim_control(env, reqwest::Method::POST, "oauth/revoke", json!({})).await;
    let b = new_contact(env, "b@example.com");
    let readyz = until("/readyz to name the revoked connection", log, || {
        let r = blocking_get(&format!("{base}/readyz"))?;
        (r.0 == 503 && r.1.contains("revoked")).then_some(r.1)
    })
    .await;
    (a, b, readyz)
}

/// Waits for `sluice connect` (its `--timeout 30s` bounds the wait).
fn wait_child(child: &mut Child) -> i32 {
    child.wait().unwrap().code().unwrap_or(-1)
}

fn http() -> reqwest::Client {
    crate::util::browser_http()
}

/// The browser's part: GET the authorize URL; the simulator's redirect (to the callback).
async fn authorize(url: &str) -> String {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "authorize: {:?}", r.text().await);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// The browser following the redirect to sluice's callback.
async fn callback(location: &str) -> u16 {
    http().get(location).send().await.unwrap().status().as_u16()
}

/// `url` with query parameter `key` set to `value`.
fn with_param(url: &str, key: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == key {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn param(url: &str, key: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no `{key}` in {url}"))
}

/// The whole flow, as a browser would do it; the command's result.
async fn connect(ws: &Workspace, name: &str, secret: &str) -> Run {
    let c = Connecting::start(ws, name, secret);
    let location = authorize(&c.url).await;
    callback(&location).await;
    tokio::task::spawn_blocking(move || c.finish())
        .await
        .unwrap()
}

/// Token requests the simulator answered with `status`.
fn token_calls(env: &SimEnv, status: u16) -> usize {
    env.sim()
        .audit()
        .iter()
        .filter(|e| e.path == "/auth/eagle/token" && e.status == status)
        .count()
}

/// Every file under `dir`, as text (lossy).
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

async fn sim() -> SimEnv {
    SimEnv::start(SimEnv::config(3, 0, 0, 0)).await
}

async fn sim_control(env: &SimEnv, method: reqwest::Method, path: &str, body: Value) -> Value {
    http()
        .request(method, format!("{}/_sim/{path}", env.handle.base_url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_stores_an_encrypted_token_that_the_api_accepts() {
    let env = sim().await;
    let ws = oauth_ws(&env, "acme", "intercom", "");
    let before = run_async(cmd(&ws, &["connections", "list", "--json"], CLIENT_SECRET)).await;
    before.assert_ok();
    assert_eq!(before.json()[0]["state"], "missing", "{}", before.stdout);

    let c = Connecting::start(&ws, "acme", CLIENT_SECRET);
    // The authorize URL is the region's, moved onto the connection's base URL.
    assert!(
        c.url
            .starts_with(&format!("{}/oauth?", env.handle.base_url)),
        "{}",
        c.url
    );
    assert_eq!(param(&c.url, "client_id"), CLIENT_ID);
    let location = authorize(&c.url).await;
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    assert_eq!(callback(&location).await, 200);
    let done = tokio::task::spawn_blocking(move || c.finish())
        .await
        .unwrap();
    done.assert_ok();
    assert_eq!(token_calls(&env, 200), 1);

    let tokens = env.sim().oauth_tokens();
    assert_eq!(tokens.len(), 1);
    let token = &tokens[0];
    // At rest: encrypted, in a file of its own, the key file private.
    let state = ws.path().join("state");
    let file = state.join("credentials/acme.json");
    assert!(file.exists());
    assert!(
        !all_text(&state).contains(token.as_str()),
        "the token is stored in clear"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "secret.key is readable by others: {mode:o}"
        );
    }

    let list = run_async(cmd(&ws, &["connections", "list", "--json"], CLIENT_SECRET)).await;
    list.assert_ok();
    let row = &list.json()[0];
    assert_eq!(
        (row["auth"].as_str(), row["state"].as_str()),
        (Some("oauth2"), Some("token set"))
    );
    assert_eq!(row["region"], "us");
    assert_eq!(row["api_version"], "2.15");

    let check = run_async(cmd(
        &ws,
        &["connections", "check", "acme", "--json"],
        CLIENT_SECRET,
    ))
    .await;
    check.assert_ok();
    let v = check.json();
    assert_eq!(v["region"], "US");
    assert_eq!(v["app"], "Sluice Simulator");
    assert!(v["workspace_id"].as_str().is_some_and(|w| !w.is_empty()));

    // The stored token is what the API saw.
    let me: Vec<_> = env
        .sim()
        .audit()
        .into_iter()
        .filter(|e| e.path == "/me")
        .collect();
    assert!(!me.is_empty() && me.iter().all(|e| e.auth == AuthSeen::Valid));

    // A region that does not match the workspace's is an error.
    let eu = oauth_ws(&env, "acme", "intercom", "    region: eu\n");
    std::fs::rename(ws.path().join("state"), eu.path().join("state")).unwrap();
    let wrong = run_async(cmd(&eu, &["connections", "check", "acme"], CLIENT_SECRET)).await;
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("region `eu`") && wrong.stderr.contains("`us`"),
        "{}",
        wrong.stderr
    );

    for out in [
        &done.stderr,
        &done.stdout,
        &list.stdout,
        &check.stdout,
        &wrong.stderr,
    ] {
        assert!(
            !out.contains(token.as_str()) && !out.contains(CLIENT_SECRET),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_an_answer_with_another_state() {
    let env = sim().await;
    let ws = oauth_ws(&env, "acme", "intercom", "");
    let c = Connecting::start(&ws, "acme", CLIENT_SECRET);
    let location = authorize(&c.url).await;
    callback(&with_param(&location, "state", "forged")).await;
    let r = tokio::task::spawn_blocking(move || c.finish())
        .await
        .unwrap();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("`state` does not match"), "{}", r.stderr);
    // The code was never exchanged, nothing stored.
    assert_eq!(token_calls(&env, 200) + token_calls(&env, 400), 0);
    assert!(!ws.path().join("state/credentials/acme.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_reused_code_and_a_wrong_secret() {
    let env = sim().await;
    let ws = oauth_ws(&env, "acme", "intercom", "");
    // A first flow; its code is used once.
    let first = Connecting::start(&ws, "acme", CLIENT_SECRET);
    let used = authorize(&first.url).await;
    callback(&used).await;
    tokio::task::spawn_blocking(move || first.finish())
        .await
        .unwrap()
        .assert_ok();

    // A second flow handed the first one's code (with its own state).
    let second = Connecting::start(&ws, "acme", CLIENT_SECRET);
    let own = authorize(&second.url).await;
    let replay = with_param(&own, "code", &param(&used, "code"));
    callback(&replay).await;
    let r = tokio::task::spawn_blocking(move || second.finish())
        .await
        .unwrap();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("refused the code") && r.stderr.contains("invalid_grant"),
        "{}",
        r.stderr
    );
    assert_eq!(token_calls(&env, 400), 1);

    // A wrong client secret.
    let wrong = connect(&ws, "acme", "not-the-secret").await;
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("invalid_client"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("not-the-secret"), "{}", wrong.stderr);
    assert_eq!(token_calls(&env, 401), 1);
    // The first token is still the stored one, and works.
    assert_eq!(env.sim().oauth_tokens().len(), 1);
    run_async(cmd(&ws, &["connections", "check", "acme"], CLIENT_SECRET))
        .await
        .assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reencrypts_and_an_env_key_is_required_to_open() {
    let env = sim().await;
    let ws = oauth_ws(&env, "acme", "intercom", "");
    connect(&ws, "acme", CLIENT_SECRET).await.assert_ok();
    let state = ws.path().join("state");
    let key_before = std::fs::read_to_string(state.join("secret.key")).unwrap();
    let file_before = std::fs::read_to_string(state.join("credentials/acme.json")).unwrap();
    run_async(cmd(&ws, &["connections", "rotate-key"], CLIENT_SECRET))
        .await
        .assert_ok();
    let key_after = std::fs::read_to_string(state.join("secret.key")).unwrap();
    assert_ne!(key_before, key_after);
    assert_ne!(
        file_before,
        std::fs::read_to_string(state.join("credentials/acme.json")).unwrap()
    );
    run_async(cmd(&ws, &["connections", "check", "acme"], CLIENT_SECRET))
        .await
        .assert_ok();
    // The old key no longer opens it.
    let mut old = cmd(&ws, &["connections", "check", "acme"], CLIENT_SECRET);
    old.env("SLUICE_SECRET_KEY", key_before.trim());
    let r = run_async(old).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);

    // With SLUICE_SECRET_KEY: rotation needs the new key in SLUICE_NEW_SECRET_KEY.
    let k1 = "11".repeat(32);
    let k2 = "22".repeat(32);
    let env_ws = oauth_ws(&env, "globex", "intercom", "");
    let with = |args: &[&str], key: &str, new: Option<&str>| {
        let mut c = cmd(&env_ws, args, CLIENT_SECRET);
        c.env("SLUICE_SECRET_KEY", key);
        if let Some(n) = new {
            c.env("SLUICE_NEW_SECRET_KEY", n);
        }
        c
    };
    let c = Connecting::spawn(with(
        &["connect", "globex", "--no-browser", "--timeout", "30s"],
        &k1,
        None,
    ));
    callback(&authorize(&c.url).await).await;
    tokio::task::spawn_blocking(move || c.finish())
        .await
        .unwrap()
        .assert_ok();
    let env_state = env_ws.path().join("state");
    assert!(
        !env_state.join("secret.key").exists(),
        "a key file was made although SLUICE_SECRET_KEY is set"
    );
    let no_new = run_async(with(&["connections", "rotate-key"], &k1, None)).await;
    assert_eq!(no_new.code, 2, "{}", no_new.stderr);
    assert!(
        no_new.stderr.contains("SLUICE_NEW_SECRET_KEY"),
        "{}",
        no_new.stderr
    );
    run_async(with(&["connections", "rotate-key"], &k1, Some(&k2)))
        .await
        .assert_ok();
    assert_eq!(
        run_async(with(&["connections", "check", "globex"], &k1, None))
            .await
            .code,
        1
    );
    run_async(with(&["connections", "check", "globex"], &k2, None))
        .await
        .assert_ok();
}

/// Refresh: tokens that expire, refresh tokens that rotate (a second use is refused). Many
/// requests at once find the token stale; exactly one refresh happens and every request
/// succeeds. Then a token the server says has expired (401) is refreshed once and the
/// request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_tokens_are_refreshed_once_for_many_requests() {
    let env = sim().await;
    let ws = oauth_ws(&env, "tiny", "tinyoauth", "");
    let connectors = ws.path().join("connectors");
    std::fs::create_dir_all(&connectors).unwrap();
    std::fs::copy(
        crate::util::root().join("tests/fixtures/oauth_connectors/tinyoauth.yaml"),
        connectors.join("tinyoauth.yaml"),
    )
    .unwrap();
    // Tokens live 30 s: inside sluice's one-minute margin, so the first is stale at once.
    sim_control(
        &env,
        reqwest::Method::PUT,
        "oauth",
        json!({"expires_in": 30, "refresh": true}),
    )
    .await;
    let c = Connecting::start(&ws, "tiny", CLIENT_SECRET);
    // PKCE: the connector says the provider takes it.
    assert_eq!(param(&c.url, "code_challenge_method"), "S256");
    callback(&authorize(&c.url).await).await;
    tokio::task::spawn_blocking(move || c.finish())
        .await
        .unwrap()
        .assert_ok();
    let list = run_async(cmd(&ws, &["connections", "list", "--json"], CLIENT_SECRET)).await;
    assert_eq!(list.json()[0]["state"], "token set", "{}", list.stdout);
    // From here tokens live an hour (on the simulator's clock).
    sim_control(
        &env,
        reqwest::Method::PUT,
        "oauth",
        json!({"expires_in": 3600}),
    )
    .await;

    // Sixteen requests at once in one process, through the library's runtime.
    let env_fn = |k: &str| match k {
        "OAUTH_CLIENT_ID" => Some(CLIENT_ID.to_string()),
        "OAUTH_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        _ => None,
    };
    let file = connectors.join("tinyoauth.yaml");
    let connector =
        sluice::plan::load_connector_text(&file, &std::fs::read_to_string(&file).unwrap()).unwrap();
    let plan = sluice::plan::build(sluice::plan::Sources {
        connectors: vec![std::sync::Arc::new(connector)],
        config: Some((ws.config(), std::fs::read_to_string(ws.config()).unwrap())),
        connection_files: vec![],
        recipes: vec![],
        env: &env_fn,
        secrets: sluice::plan::Secrets::Required,
    })
    .unwrap();
    let store =
        std::sync::Arc::new(sluice::store::SledStore::open(&ws.path().join("rtstate")).unwrap());
    let creds = std::sync::Arc::new(sluice::oauth::Credentials::new(&ws.path().join("state")));
    let rt = sluice::runtime::Runtime::with_credentials(plan, store, creds).unwrap();
    let conn = rt.conn_named("tiny").unwrap().clone();
    let me = sluice::http::HttpRequest {
        method: sluice::plan::Method::Get,
        path: "/me".into(),
        query: vec![],
        body: None,
    };
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (conn, me) = (conn.clone(), me.clone());
        tasks.push(tokio::spawn(async move {
            conn.send(&me, &[]).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .unwrap_or_else(|f| panic!("a request failed: {f}"));
    }
    let oauth = sim_control(&env, reqwest::Method::GET, "oauth", json!({})).await;
    assert_eq!(oauth["refreshes"], 1, "{oauth}");
    assert!(env
        .sim()
        .audit()
        .iter()
        .filter(|e| e.path == "/me")
        .all(|e| e.auth == AuthSeen::Valid));

    // The server's clock passes the expiry: the 401 is answered by one refresh.
    env.sim().advance_clock(4000);
    conn.send(&me, &[])
        .await
        .unwrap_or_else(|f| panic!("after expiry: {f}"));
    let oauth = sim_control(&env, reqwest::Method::GET, "oauth", json!({})).await;
    assert_eq!(oauth["refreshes"], 2, "{oauth}");
    let expired: Vec<_> = env
        .sim()
        .audit()
        .into_iter()
        .filter(|e| e.path == "/me" && e.status == 401)
        .collect();
    assert_eq!(expired.len(), 1);
}

/// The first 401 marks the token revoked and holds the sidecar's recipes on that connection:
/// no further calls, readiness and `connections list` say why. `sluice connect` again (the
/// sidecar still running) releases them, and they go on from their cursors: every contact
/// fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_holds_recipes_until_connected_again() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let env = SimEnv::start(sluice::sim::SimConfig {
        start_time: now,
        frozen_clock: false,
        ..SimEnv::config(0, 0, 0, 0)
    })
    .await;
    let ws = oauth_ws(&env, "intercom", "intercom", "");
    let recipes = ws.path().join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    let out = ws.path().join("out.jsonl");
    std::fs::write(
        recipes.join("watch.yaml"),
        format!(
            "id: watch\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{{{record.id}}}}\"\n      to: {}\n",
            out.display()
        ),
    )
    .unwrap();
    connect(&ws, "intercom", CLIENT_SECRET).await.assert_ok();

    let state = ws.path().join("state");
    let log = ws.path().join("sidecar.log");
    let mut c = cmd(&ws, &["run", "--listen", "127.0.0.1:0"], CLIENT_SECRET);
    c.arg("--recipes")
        .arg(&recipes)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut sidecar = KillOnDrop(c.spawn().unwrap());
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = until("the sidecar's discovery file", &show_log, || {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(state.join("sidecar.json")).ok()?)
                .ok()?;
        Some(format!("http://{}", v["listen"].as_str()?))
    })
    .await;
    let emitted = || emitted_lines(&out);
    // The workspace uninstalls the app.
    let (a, b, readyz) = fire_then_revoke(&env, &out, &base, &show_log).await;
    assert!(readyz.contains("sluice connect intercom"), "{readyz}");
    let list = run_async(cmd(&ws, &["connections", "list", "--json"], CLIENT_SECRET)).await;
    assert_eq!(list.json()[0]["state"], "revoked", "{}", list.stdout);
    // Held: slots pass (owed) and nothing is sent.
    until("two slots to pass while held", &show_log, || {
        let (_, body) = blocking_get(&format!("{base}/api/status"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let i = &v["instances"][0];
        (i["held"].is_string() && i["owed"].as_u64()? >= 2).then_some(())
    })
    .await;
    let unauthorized = env
        .sim()
        .audit()
        .iter()
        .filter(|e| e.status == 401 && e.path != "/auth/eagle/token")
        .count();
    assert_eq!(unauthorized, 1, "calls after the first 401");
    assert!(!emitted().contains(&b));

    // Authorized again while the sidecar runs: it picks the token up and catches up.
    connect(&ws, "intercom", CLIENT_SECRET).await.assert_ok();
    until("contact B to fire", &show_log, || {
        emitted().contains(&b).then_some(())
    })
    .await;
    until("/readyz to be ready", &show_log, || {
        let r = blocking_get(&format!("{base}/readyz"))?;
        (r.0 == 200).then_some(())
    })
    .await;
    let all = emitted();
    assert_eq!(
        (
            all.iter().filter(|x| **x == a).count(),
            all.iter().filter(|x| **x == b).count()
        ),
        (1, 1),
        "{all:?}"
    );
    let text = show_log();
    for t in env.sim().oauth_tokens() {
        assert!(!text.contains(&t), "the log shows a token");
    }
    let _ = sidecar.0.kill();
    let _ = sidecar.0.wait();
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `probe` every 50 ms until it gives a value; panics after 15 s naming `what`.
async fn until<T>(what: &str, log: &dyn Fn() -> String, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited for {what}:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A blocking GET for probes (status and body), without proxies: on a thread of its own,
/// so that it can be called from a probe closure inside the test's runtime.
fn blocking_get(url: &str) -> Option<(u16, String)> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let r = reqwest::Client::builder()
                .no_proxy()
                .build()
                .ok()?
                .get(&url)
                .send()
                .await
                .ok()?;
            let status = r.status().as_u16();
            Some((status, r.text().await.ok()?))
        })
    })
    .join()
    .ok()?
}

// The status page's flow (issue 13, point 1): "Connect" / "Re-authorize" on the overview,
// the provider's redirect back to the sidecar's own `/oauth/callback`.

/// A recipe emitting each new contact's id to `out`, on connection `intercom`.
fn watch_recipe(ws: &Workspace, out: &Path) {
    let recipes = ws.path().join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::write(
        recipes.join("watch.yaml"),
        format!(
            "id: watch\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1s\nstart_from: \"2020-01-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{{{record.id}}}}\"\n      to: {}\n",
            out.display()
        ),
    )
    .unwrap();
}

/// A simulator whose clock runs from now (records created during the test are new).
async fn live_sim() -> SimEnv {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    SimEnv::start(sluice::sim::SimConfig {
        start_time: now,
        frozen_clock: false,
        ..SimEnv::config(0, 0, 0, 0)
    })
    .await
}

/// `sluice run` on a free loopback port in `ws` (its recipes in `<ws>/recipes`).
struct PageSidecar {
    _child: KillOnDrop,
    base: String,
    log: std::path::PathBuf,
}

impl PageSidecar {
    async fn start(ws: &Workspace) -> PageSidecar {
        PageSidecar::start_with(ws, &["--listen", "127.0.0.1:0"], &[]).await
    }

    /// `sluice run ARGS` with these environment variables.
    async fn start_with(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> PageSidecar {
        let state = ws.path().join("state");
        let log = ws.path().join("sidecar.log");
        let mut c = cmd(ws, &[&["run"][..], args].concat(), CLIENT_SECRET);
        c.envs(env.iter().copied());
        c.arg("--recipes")
            .arg(ws.path().join("recipes"))
            .env("PLAIN_TOKEN", crate::util::TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = KillOnDrop(c.spawn().unwrap());
        let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let base = until("the sidecar's discovery file", &show_log, || {
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(state.join("sidecar.json")).ok()?)
                    .ok()?;
            // Bound to every interface: reached on loopback.
            let listen = v["listen"].as_str()?.replace("0.0.0.0", "127.0.0.1");
            Some(format!("http://{listen}"))
        })
        .await;
        PageSidecar {
            _child: child,
            base,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` (no redirect followed): status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        get(&format!("{}{path}", self.base)).await
    }

    /// The overview's row of connection `name`.
    async fn row(&self, name: &str) -> String {
        let (code, html) = self.get("/").await;
        assert_eq!(code, 200, "{html}");
        let at = html
            .find(&format!("<tr data-connection=\"{name}\">"))
            .unwrap_or_else(|| panic!("no row of `{name}` in:\n{html}"));
        let row = &html[at..];
        row[..row.find("</tr>").unwrap()].to_string()
    }

    /// The overview's CSRF token.
    async fn csrf(&self) -> String {
        let (_, html) = self.get("/").await;
        let at = html
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF token in:\n{html}"));
        let rest = &html[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// `POST /ui/connections/{name}/connect` with these form fields: status and `Location`.
    async fn connect(&self, name: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let url = format!("{}/ui/connections/{name}/connect", self.base);
        crate::util::post_form(&url, fields).await.unwrap()
    }

    /// Connect (or Re-authorize) clicked on the overview: the provider's authorize URL.
    async fn begin(&self, name: &str) -> String {
        let csrf = self.csrf().await;
        let (code, location) = self.connect(name, &[("csrf", &csrf)]).await;
        assert_eq!(code, 303, "{location}\n{}", self.log());
        location
    }
}

/// A browser's `GET` (no redirect followed): status and body.
async fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The overview shows an OAuth connection without a token as `missing` with a Connect
/// button; Connect sends the browser to the provider with the sidecar's own callback as the
/// redirect URL; the provider's answer comes back there, the token is stored (encrypted),
/// and the held recipe fires. A refusal by the provider is named; an answer with a forged
/// `state`, without one, or used a second time is refused with nothing stored; a form
/// without the page's CSRF token, a connection that does not exist or does not use OAuth
/// start nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_connects_an_oauth_connection() {
    let env = live_sim().await;
    let plain = format!(
        "  plain:\n    connector: intercom\n    base_url: {}\n    token: ${{env:PLAIN_TOKEN}}\n",
        env.handle.base_url
    );
    let ws = oauth_ws(&env, "intercom", "intercom", &plain);
    let out = ws.path().join("out.jsonl");
    watch_recipe(&ws, &out);
    let sc = PageSidecar::start(&ws).await;
    let log = || sc.log();

    let row = sc.row("intercom").await;
    assert!(row.contains("class=\"auth failing\""), "{row}");
    assert!(row.contains(">missing<"), "{row}");
    assert!(
        row.contains("action=\"/ui/connections/intercom/connect\"")
            && row.contains(">Connect</button>"),
        "{row}"
    );
    let plain_row = sc.row("plain").await;
    assert!(
        plain_row.contains(">token set<") && !plain_row.contains("<form"),
        "{plain_row}"
    );
    let (_, overview) = sc.get("/").await;
    assert!(
        overview.contains(&format!("{}/oauth/callback", sc.base)),
        "the redirect URL to register is shown"
    );
    let (code, readyz) = sc.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(
        readyz.contains("Connect on the sidecar's status page"),
        "{readyz}"
    );

    // Forms that start nothing.
    let csrf = sc.csrf().await;
    let (code, _) = sc.connect("intercom", &[]).await;
    assert!((400..500).contains(&code), "no CSRF token: {code}");
    let (code, _) = sc.connect("intercom", &[("csrf", "forged")]).await;
    assert_eq!(code, 403, "a wrong CSRF token");
    let (code, _) = sc.connect("nope", &[("csrf", &csrf)]).await;
    assert_eq!(code, 404);
    let (code, _) = sc.connect("plain", &[("csrf", &csrf)]).await;
    assert_eq!(code, 400);
    assert!(
        !env.sim().audit().iter().any(|e| e.path == "/oauth"),
        "nobody was sent to the provider"
    );

    // The provider refuses: the page names its error; nothing stored.
    let url = sc.begin("intercom").await;
    let declined = format!(
        "{}/oauth/callback?error=access_denied&error_description=The+user+declined&state={}",
        sc.base,
        param(&url, "state")
    );
    let (code, page) = get(&declined).await;
    assert_eq!(code, 400, "{page}");
    assert!(
        page.contains("access_denied") && page.contains("The user declined"),
        "{page}"
    );

    // Connect: to the simulator's authorize URL, with the sidecar's callback.
    let url = sc.begin("intercom").await;
    assert!(
        url.starts_with(&format!("{}/oauth?", env.handle.base_url)),
        "{url}"
    );
    assert_eq!(param(&url, "client_id"), CLIENT_ID);
    assert_eq!(
        param(&url, "redirect_uri"),
        format!("{}/oauth/callback", sc.base)
    );
    let location = authorize(&url).await;
    assert!(
        location.starts_with(&format!("{}/oauth/callback?", sc.base)),
        "{location}"
    );
    // Someone else's answer: a forged state, or none.
    for forged in [
        with_param(&location, "state", "forged"),
        format!(
            "{}/oauth/callback?code={}",
            sc.base,
            param(&location, "code")
        ),
    ] {
        let (code, page) = get(&forged).await;
        assert_eq!(code, 400, "{page}");
        assert!(page.contains("unknown, expired"), "{page}");
    }
    assert_eq!(token_calls(&env, 200) + token_calls(&env, 400), 0);
    let file = ws.path().join("state/credentials/intercom.json");
    assert!(!file.exists());

    // The answer itself.
    let (code, page) = get(&location).await;
    assert_eq!(code, 200, "{page}\n{}", log());
    assert!(
        page.contains("Connection intercom is authorized") && page.contains("href=\"/\""),
        "{page}"
    );
    assert_eq!(token_calls(&env, 200), 1);
    // Used once: the same answer again is refused, and the code is not exchanged again.
    let (code, again) = get(&location).await;
    assert_eq!(code, 400, "{again}");
    assert_eq!(token_calls(&env, 200) + token_calls(&env, 400), 1);

    let tokens = env.sim().oauth_tokens();
    assert_eq!(tokens.len(), 1);
    let token = tokens[0].clone();
    assert!(file.exists());
    assert!(
        !all_text(&ws.path().join("state")).contains(token.as_str()),
        "the token is stored in clear"
    );
    let row = sc.row("intercom").await;
    assert!(
        row.contains(">token set<") && row.contains(">Re-authorize</button>"),
        "{row}"
    );
    let list = run_async(cmd(&ws, &["connections", "list", "--json"], CLIENT_SECRET)).await;
    let state_of = |v: &Value, name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["state"].clone())
    };
    assert_eq!(
        state_of(&list.json(), "intercom"),
        Some(json!("token set")),
        "{}",
        list.stdout
    );

    // The recipe held for the missing token runs now.
    let id = env
        .sim()
        .create(
            sluice::sim::Kind::Contact,
            json!({"email": "a@example.com", "role": "user"}),
        )
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    until("the new contact to fire", &log, || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(&id)
            .then_some(())
    })
    .await;
    until("/readyz to be ready", &log, || {
        (blocking_get(&format!("{}/readyz", sc.base))?.0 == 200).then_some(())
    })
    .await;

    let code_value = param(&location, "code");
    for (what, text) in [
        ("the answer page", &page),
        ("the refusal page", &again),
        ("the log", &log()),
        ("the overview", &sc.get("/").await.1),
    ] {
        assert!(!text.contains(token.as_str()), "{what} shows the token");
        assert!(
            !text.contains(CLIENT_SECRET),
            "{what} shows the client secret"
        );
        assert!(!text.contains(&code_value), "{what} shows the code");
    }
}

/// A revoked token holds the recipe and the overview says so (as failing, with
/// Re-authorize); re-authorizing on the page releases it, and it goes on from its cursor:
/// every contact fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_authorizing_on_the_status_page_resumes_recipes_held_by_a_revoked_token() {
    let env = live_sim().await;
    let ws = oauth_ws(&env, "intercom", "intercom", "");
    let out = ws.path().join("out.jsonl");
    watch_recipe(&ws, &out);
    connect(&ws, "intercom", CLIENT_SECRET).await.assert_ok();
    let sc = PageSidecar::start(&ws).await;
    let log = || sc.log();
    let emitted = || emitted_lines(&out);
    let (a, b, readyz) = fire_then_revoke(&env, &out, &sc.base, &log).await;
    assert!(
        readyz.contains("Re-authorize on the sidecar's status page"),
        "{readyz}"
    );
    let row = sc.row("intercom").await;
    assert!(
        row.contains("class=\"auth failing\"")
            && row.contains(">revoked<")
            && row.contains(">Re-authorize</button>"),
        "{row}"
    );
    let (_, overview) = sc.get("/").await;
    assert!(
        overview.contains("paused: connection not authorized"),
        "{overview}"
    );
    assert!(!emitted().contains(&b));

    let url = sc.begin("intercom").await;
    let (code, page) = get(&authorize(&url).await).await;
    assert_eq!(code, 200, "{page}\n{}", log());
    until("contact B to fire", &log, || {
        emitted().contains(&b).then_some(())
    })
    .await;
    until("/readyz to be ready", &log, || {
        (blocking_get(&format!("{}/readyz", sc.base))?.0 == 200).then_some(())
    })
    .await;
    assert!(sc.row("intercom").await.contains(">token set<"));
    let all = emitted();
    assert_eq!(
        (
            all.iter().filter(|x| **x == a).count(),
            all.iter().filter(|x| **x == b).count()
        ),
        (1, 1),
        "{all:?}"
    );
}

/// Bound beyond loopback, the status page and its Connect form need the admin token, but the
/// provider's redirect back (a cross-site navigation that carries no cookie) is answered
/// without it: its single-use `state` is what protects it. With no `--public-url`, the
/// redirect URL of a sidecar on every interface names 127.0.0.1, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_connect_needs_the_admin_token_and_the_callback_does_not() {
    let env = live_sim().await;
    let ws = oauth_ws(&env, "intercom", "intercom", "");
    let out = ws.path().join("out.jsonl");
    watch_recipe(&ws, &out);
    let admin = "admin-token-for-the-test";
    let sc = PageSidecar::start_with(
        &ws,
        &["--listen", "0.0.0.0:0"],
        &[("SLUICE_ADMIN_TOKEN", admin)],
    )
    .await;
    let as_admin = |r: reqwest::RequestBuilder| r.bearer_auth(admin);

    // Without the token: the pages and the form send the browser to sign in.
    let (code, _) = sc.get("/").await;
    assert_eq!(code, 303);
    let (code, location) = sc.connect("intercom", &[("csrf", "x")]).await;
    assert_eq!((code, location.as_str()), (303, "/login"));

    // With it: Connect goes to the provider, naming 127.0.0.1 in the redirect URL.
    let html = as_admin(http().get(format!("{}/", sc.base)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF token");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    let csrf = &rest[..rest.find('"').unwrap()];
    let r = as_admin(http().post(format!("{}/ui/connections/intercom/connect", sc.base)))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "{}", sc.log());
    let provider = r.headers()["location"].to_str().unwrap().to_string();
    let port = sc.base.rsplit(':').next().unwrap();
    assert_eq!(
        param(&provider, "redirect_uri"),
        format!("http://127.0.0.1:{port}/oauth/callback")
    );
    assert!(
        sc.log()
            .contains("Listening on every interface without --public-url"),
        "{}",
        sc.log()
    );

    // The provider's redirect back carries no token and is answered.
    let back = authorize(&provider).await;
    let (code, page) = get(&back).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Connection intercom is authorized"), "{page}");
    let html = as_admin(http().get(format!("{}/", sc.base)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = &html[html.find("<tr data-connection=\"intercom\">").unwrap()..];
    assert!(
        row[..row.find("</tr>").unwrap()].contains(">token set<"),
        "{row}"
    );
    assert!(!sc.log().contains(admin), "the admin token is not logged");
}

/// A loopback sidecar behind a proxy: the `--public-url` host is answered besides loopback
/// names; any other host is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_sidecar_answers_its_public_host_too() {
    let env = live_sim().await;
    let ws = oauth_ws(&env, "intercom", "intercom", "");
    watch_recipe(&ws, &ws.path().join("out.jsonl"));
    let sc = PageSidecar::start_with(
        &ws,
        &[
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "https://sluice.example.com/",
        ],
        &[],
    )
    .await;
    let with_host = |host: &'static str| {
        let url = format!("{}/readyz", sc.base);
        async move {
            http()
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_ne!(with_host("Sluice.Example.com").await, 403);
    assert_ne!(with_host("localhost").await, 403);
    assert_eq!(with_host("evil.example").await, 403);
    assert_eq!(with_host("sluice.example.com.evil.example").await, 403);
    let (_, overview) = sc.get("/").await;
    assert!(
        overview.contains("https://sluice.example.com/oauth/callback"),
        "{overview}"
    );
}
