//! Servers that misbehave: answers that must not make sluice page forever, swell its memory,
//! carry a request to another host or put a secret on screen. Each test starts its own server
//! on loopback (the `hostile` fixture connector) and drives the `sluice` CLI.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::json;

use crate::util::{run_async, Run, Workspace};

/// The token the connection sends; servers here echo it back.
const TOKEN: &str = "tok-SECRET-123";

#[derive(Default)]
struct Seen {
    /// Every request's method and URI, in order.
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

/// Starts `app` on a loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

/// What a handler sees of a request.
struct Req {
    method: String,
    path: String,
    query: std::collections::HashMap<String, String>,
    auth: String,
    /// How many requests this server has had, this one included.
    n: usize,
}

/// A server that records every request and answers it with `answer`.
async fn start(
    answer: impl Fn(&Req) -> Response + Clone + Send + Sync + 'static,
) -> (String, Shared) {
    let shared: Shared = Arc::default();
    let handler = move |State(s): State<Shared>,
                        method: axum::http::Method,
                        Path(path): Path<String>,
                        Query(query): Query<std::collections::HashMap<String, String>>,
                        uri: Uri,
                        headers: HeaderMap| {
        let answer = answer.clone();
        async move {
            let n = {
                let mut s = s.lock().unwrap();
                s.requests.push(format!("{method} {uri}"));
                s.requests.len()
            };
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            answer(&Req {
                method: method.to_string(),
                path,
                query,
                auth,
                n,
            })
        }
    };
    let app = Router::new()
        .route("/{*path}", any(handler))
        .with_state(shared.clone());
    (serve(app).await, shared)
}

fn workspace(url: &str) -> Workspace {
    Workspace::new(&format!(
        "connections:\n  h:\n    connector: hostile\n    base_url: {url}\n    token: ${{env:HOSTILE_TOKEN}}\n    retry: {{base_delay_ms: 5, max_delay_ms: 20}}\n"
    ))
}

fn with_fixture(mut c: std::process::Command) -> std::process::Command {
    c.env("HOSTILE_TOKEN", TOKEN)
        .arg("--connectors")
        .arg(crate::util::root().join("tests/fixtures/connectors"));
    c
}

/// `sluice call hostile.<action> --connection h --with <with>`.
async fn call(ws: &Workspace, action: &str, with: serde_json::Value) -> Run {
    let (a, w) = (format!("hostile.{action}"), with.to_string());
    run_async(with_fixture(ws.sluice(&[
        "call",
        &a,
        "--connection",
        "h",
        "--with",
        &w,
    ])))
    .await
}

fn requests(s: &Shared) -> Vec<String> {
    s.lock().unwrap().requests.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_to_another_host() {
    let (elsewhere, stolen) = start(|_| StatusCode::OK.into_response()).await;
    let target = format!("{elsewhere}/steal?from=sluice");
    let (url, seen) = start(move |r| {
        let status = if r.method == "POST" {
            StatusCode::TEMPORARY_REDIRECT
        } else {
            StatusCode::FOUND
        };
        (status, [(axum::http::header::LOCATION, target.clone())]).into_response()
    })
    .await;
    let ws = workspace(&url);
    for (action, with, status) in [
        ("send", json!({"what": "moved", "note": "private"}), 307),
        ("fetch", json!({"what": "moved"}), 302),
    ] {
        let run = call(&ws, action, with).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "failed with HTTP {status} `redirect` (fatal): the API answered with a redirect; sluice does not follow redirects; check the connection's `base_url`"
            )),
            "{}",
            run.stderr
        );
        // The Location is the server's text: not shown.
        assert!(!run.stderr.contains("steal"), "{}", run.stderr);
    }
    // Sent once each (a fatal failure is not retried); nothing reached the other host.
    assert_eq!(requests(&seen), ["POST /moved", "GET /moved"]);
    assert_eq!(requests(&stolen), Vec::<String>::new());
}

/// How much a huge answer would be: 300 MiB.
const HUGE: u64 = 300 << 20;

/// A server whose every answer is a 300 MiB JSON document, streamed from one small buffer (so
/// the test does not hold it), with or without a `Content-Length`. Hand-written HTTP/1.1 on a
/// thread, to control the framing. Each connection reports how many body bytes it got written
/// before the client hung up.
fn start_huge(announce: bool) -> (String, std::sync::mpsc::Receiver<u64>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                // A safety net only: the client hangs up long before.
                let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(60)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let head = if announce {
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {HUGE}\r\n\r\n")
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                };
                let chunk = vec![b' '; 64 << 10];
                let mut written = 0u64;
                let mut send = || -> std::io::Result<()> {
                    conn.write_all(head.as_bytes())?;
                    while written < HUGE {
                        if !announce {
                            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                        }
                        conn.write_all(&chunk)?;
                        if !announce {
                            conn.write_all(b"\r\n")?;
                        }
                        written += chunk.len() as u64;
                    }
                    Ok(())
                };
                let _ = send();
                let _ = tx.send(written);
            });
        }
    });
    (url, rx)
}

/// The peak resident memory of a running process, in KiB (`VmHWM`), while it is alive.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a command to completion, sampling its peak memory until it exits: the output, and
/// the largest `VmHWM` seen (`None` where /proc is not available). Output goes through files,
/// so a chatty child cannot block on a full pipe while it is watched.
async fn run_measured(mut c: std::process::Command, dir: &std::path::Path) -> (Run, Option<u64>) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = c
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut peak = None;
    let status = loop {
        // Read before reaping: the peak only grows, and /proc forgets the process once reaped.
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(Some(kib));
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    };
    (run, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_answers_are_refused_without_holding_them() {
    for announce in [true, false] {
        let (url, written) = start_huge(announce);
        let ws = workspace(&url);
        let c = with_fixture(ws.sluice(&[
            "call",
            "hostile.fetch",
            "--connection",
            "h",
            "--with",
            r#"{"what":"huge"}"#,
        ]));
        let (run, peak) = run_measured(c, ws.path()).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains(
                "GET /huge failed with HTTP 200 `response_too_large` (fatal): the response is larger than the 64 MiB limit (`max_response_mb`)"
            ),
            "{}",
            run.stderr
        );
        // The server was cut off: with a Content-Length at once (only what the sockets
        // buffer), else once the limit was passed.
        let sent = written.recv().unwrap();
        let bound = if announce { 32 << 20 } else { 100 << 20 };
        assert!(
            sent < bound,
            "announce {announce}: the server wrote {sent} bytes"
        );
        if let Some(kib) = peak {
            eprintln!(
                "announce {announce}: peak RSS of `sluice call` {} MiB",
                kib >> 10
            );
            assert!(kib < 100 << 10, "announce {announce}: peak RSS {kib} KiB");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_limit_is_set_per_connection() {
    let (url, written) = start_huge(false);
    let ws = Workspace::new(&format!(
        "connections:\n  h:\n    connector: hostile\n    base_url: {url}\n    token: ${{env:HOSTILE_TOKEN}}\n    max_response_mb: 1\n"
    ));
    let run = call(&ws, "fetch", json!({"what": "huge"})).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the response is larger than the 1 MiB limit (`max_response_mb`)"),
        "{}",
        run.stderr
    );
    assert!(written.recv().unwrap() < 32 << 20);
    // Zero is refused when the connection is opened.
    let ws = Workspace::new(&format!(
        "connections:\n  h:\n    connector: hostile\n    base_url: {url}\n    max_response_mb: 0\n"
    ));
    let run = call(&ws, "fetch", json!({"what": "huge"})).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("`max_response_mb` 0 is outside 1 to 4096"),
        "{}",
        run.stderr
    );
}

/// Another credential of the same user that a server might echo.
const OTHER: &str = "other.Cred-456";

/// The `hostile` server: `/items` pages as its `mode` says, `/numbered` and `/scan` as their
/// triggers in the fixture expect; `/echo` answers 200 echoing the
/// credential; `/fail` and `/fail_text` refuse with an error body echoing it. From the 50th
/// request on, everything is refused, so that a runaway client ends (and its test fails).
fn hostile(r: &Req) -> Response {
    if r.n >= 50 {
        let e = json!({"error": {"kind": "enough", "text": "the test server stops here"}});
        return (StatusCode::BAD_REQUEST, axum::Json(e)).into_response();
    }
    let item = |i: u64| json!({"key": format!("k{i}"), "made": 100 + i});
    let after = r.query.get("after");
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "items") => {
            let page = match r.query.get("mode").map(String::as_str) {
                // The same next token on every page.
                Some("same") => match after {
                    None => json!({"items": [item(0), item(1)], "next": SAME_TOKEN}),
                    Some(_) => json!({"items": [item(2), item(3)], "next": SAME_TOKEN}),
                },
                // A new token on every page, forever.
                Some("fresh") => {
                    let n: u64 = after.map_or(0, |a| a[1..].parse().unwrap());
                    json!({"items": [item(n)], "next": format!("c{}", n + 1)})
                }
                // A new token on every page, and the same records forever.
                Some("repeat") => {
                    let n: u64 = after.map_or(0, |a| a[1..].parse().unwrap());
                    json!({"items": [item(0), item(1)], "next": format!("r{}", n + 1)})
                }
                // Five pages listing the same two records, changed again each time (as
                // records changed while a poll pages are listed again).
                Some("changing") => {
                    let n: u64 = after.map_or(0, |a| a[1..].parse().unwrap());
                    let changed = |k: &str| json!({"key": k, "made": 200 + n});
                    let next = (n < 4).then(|| format!("c{}", n + 1));
                    json!({"items": [changed("k0"), changed("k1")], "next": next})
                }
                _ => json!({"items": [item(0)]}),
            };
            axum::Json(page).into_response()
        }
        // Page numbers: every page has a record, and no total is given.
        ("GET", "numbered") => {
            let n: u64 = r.query["page"].parse().unwrap();
            axum::Json(json!({"items": [item(n)]})).into_response()
        }
        // Page numbers that are ignored: every page is the first.
        ("GET", "stuck") => axum::Json(json!({"items": [item(0), item(1)]})).into_response(),
        // A scan whose second page fails the first time (request 2), so it restarts and
        // sends its first token again.
        ("GET", "scan") => match after.map(String::as_str) {
            None => axum::Json(json!({"items": [item(0)], "next": "s1"})).into_response(),
            Some("s1") if r.n == 2 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            Some("s1") => axum::Json(json!({"items": [item(1)], "next": "s2"})).into_response(),
            Some(_) => axum::Json(json!({"items": [], "next": "s3"})).into_response(),
        },
        ("POST", "echo") => axum::Json(json!({
            "auth": r.auth, "token": TOKEN, "other": format!("Bearer {OTHER}")
        }))
        .into_response(),
        ("POST", "fail") => {
            let e = json!({"error": {
                "kind": format!("denied-{TOKEN}"),
                "text": format!("refused {}: Authorization: {} (token {TOKEN}); also Bearer {OTHER}", r.path, r.auth),
            }});
            (StatusCode::BAD_REQUEST, axum::Json(e)).into_response()
        }
        // A 2xx answer spelling the credential with JSON escapes, as JSON writers may.
        ("POST", "echo_escaped") => {
            let token = r.auth.strip_prefix("Bearer ").unwrap_or_default();
            let escape = |c: char| format!("\\u{:04x}", u32::from(c));
            let all: String = token.chars().map(escape).collect();
            let mut chars = token.chars();
            let first = chars.next().map(escape).unwrap_or_default() + chars.as_str();
            let slashed = token.replace('/', "\\/");
            let body = format!(
                r#"{{"all":"{all}","first":"{first}","slashed":"{slashed}","text":"a\/b\n\u00e9"}}"#
            );
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        // An error body whose credential straddles the end of what a message shows.
        ("POST", "fail_long") => {
            let token = r.auth.strip_prefix("Bearer ").unwrap_or_default();
            let body = format!("{}{token} and more", "x".repeat(190));
            (StatusCode::BAD_REQUEST, body).into_response()
        }
        ("POST", "fail_text") => (
            StatusCode::BAD_REQUEST,
            format!("Authorization: {}\ntoken={TOKEN} Bearer {OTHER}", r.auth),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A next-page token longer than an error message shows.
const SAME_TOKEN: &str =
    "c1-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz";

/// No credential in `text`, and no header value carrying one.
fn assert_scrubbed(what: &str, text: &str) {
    for secret in [TOKEN, OTHER] {
        assert!(!text.contains(secret), "{what} shows `{secret}`:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_echoed_by_the_server_are_scrubbed_from_errors_and_output() {
    let (url, seen) = start(hostile).await;
    let ws = workspace(&url);
    // An error body (JSON, with the error read from it) echoing the header and the token.
    let run = call(&ws, "send", json!({"what": "fail"})).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_scrubbed("call's error", &run.stderr);
    assert!(
        run.stderr.contains(
            "POST /fail failed with HTTP 400 `denied-***` (fatal): refused fail: Authorization: Bearer *** (token ***); also Bearer ***"
        ),
        "{}",
        run.stderr
    );
    // A body that is not JSON, shown as a snippet.
    let run = call(&ws, "send", json!({"what": "fail_text"})).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_scrubbed("call's error", &run.stderr);
    assert!(
        run.stderr
            .contains("Authorization: Bearer ***\ntoken=*** Bearer ***"),
        "{}",
        run.stderr
    );
    // A 2xx answer: the token is hidden; the rest is the API's data, kept as is.
    let run = call(&ws, "send", json!({"what": "echo"})).await;
    run.assert_ok();
    assert_eq!(
        run.json(),
        json!({"auth": "Bearer ***", "token": "***", "other": format!("Bearer {OTHER}")})
    );
    assert!(!run.stdout.contains(TOKEN));
    // The server did get the credential.
    assert_eq!(requests(&seen).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_spelled_with_escapes_or_cut_by_a_snippet_are_scrubbed() {
    let (url, _seen) = start(hostile).await;
    let ws = workspace(&url);
    // A token with a `/`, which a JSON writer may send as `\/`.
    const SLASHED: &str = "tok/SLASHED-789";
    for token in [TOKEN, SLASHED] {
        let mut c = with_fixture(ws.sluice(&[
            "call",
            "hostile.send",
            "--connection",
            "h",
            "--with",
            r#"{"what":"echo_escaped"}"#,
        ]));
        c.env("HOSTILE_TOKEN", token);
        let run = run_async(c).await;
        run.assert_ok();
        assert_eq!(
            run.json(),
            json!({"all": "***", "first": "***", "slashed": "***", "text": "a/b\né"}),
            "{token}"
        );
        assert!(!run.stdout.contains(token), "{}", run.stdout);
    }
    // The error message shows the body's first 200 characters, scrubbed before the cut.
    let run = call(&ws, "send", json!({"what": "fail_long"})).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains(&TOKEN[..5]), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{}*** and mo…", "x".repeat(190))),
        "{}",
        run.stderr
    );
}

/// A workspace with one recipe `r` (trigger `hostile.items` with `mode`, then `steps`), and
/// `sluice ARGS…` against it.
fn recipe(ws: &Workspace, mode: &str, steps: &str) -> impl Fn(&[&str]) -> std::process::Command {
    let dir = ws.path().join("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("r.yaml"),
        format!("id: r\nconnection: h\ntrigger:\n  use: hostile.items\n  with: {{mode: {mode}}}\nschedule:\n  every: 1m\nstart_from: \"1970-01-01\"\nsteps:\n{steps}"),
    )
    .unwrap();
    let (config, state) = (ws.config(), ws.path().join("state"));
    move |args: &[&str]| {
        let mut c = with_fixture(crate::util::sluice());
        c.arg("--config")
            .arg(&config)
            .arg("--recipes")
            .arg(&dir)
            .arg("--state-dir")
            .arg(&state)
            .args(args);
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_echoed_in_a_failed_step_stay_out_of_dead_letters_and_state() {
    let (url, _seen) = start(hostile).await;
    let ws = workspace(&url);
    let sluice = recipe(
        &ws,
        "once",
        "  - id: send\n    action: hostile.send\n    with: {what: fail, note: \"{{record.key}}\"}\n",
    );
    let run = run_async(sluice(&["run", "--once"])).await;
    assert_scrubbed("run --once", &format!("{}{}", run.stdout, run.stderr));
    let list = run_async(sluice(&["dead-letters", "list"])).await;
    list.assert_ok();
    assert_scrubbed("dead-letters list", &list.stdout);
    assert!(list.stdout.contains("Bearer ***"), "{}", list.stdout);
    let id = list.stdout.split_whitespace().next().unwrap();
    let show = run_async(sluice(&["dead-letters", "show", id])).await;
    show.assert_ok();
    assert_scrubbed("dead-letters show", &show.stdout);
    assert!(show.stdout.contains("Bearer ***"), "{}", show.stdout);
    for args in [&["state", "show"][..], &["state", "show", "--json"]] {
        let state = run_async(sluice(args)).await;
        state.assert_ok();
        assert_scrubbed("state show", &state.stdout);
    }
}

/// `sluice poll hostile.<trigger> --connection h --since 0 EXTRA…`.
async fn poll(ws: &Workspace, trigger: &str, extra: &[&str]) -> Run {
    let t = format!("hostile.{trigger}");
    let mut args = vec!["poll", &t, "--connection", "h", "--since", "0"];
    args.extend_from_slice(extra);
    run_async(with_fixture(ws.sluice(&args))).await
}

/// The `key` of every record printed.
fn keys(run: &Run) -> Vec<String> {
    run.json_lines()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_token_sent_again_ends_the_poll() {
    let (url, seen) = start(hostile).await;
    let ws = workspace(&url);
    let run = poll(&ws, "items", &["--with", r#"{"mode":"same"}"#]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let shown: String = SAME_TOKEN.chars().take(40).collect();
    assert!(
        run.stderr.contains(&format!(
            "GET /items failed `pagination_loop` (fatal): trigger `items` would page forever: the API returned the same next-page token again on page 2 (`{shown}…`)"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(SAME_TOKEN), "{}", run.stderr);
    // The page that repeated the token is not used; the first page's records were printed once.
    assert_eq!(keys(&run), ["k0", "k1"]);
    assert_eq!(requests(&seen).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pages_end_the_poll_at_max_pages() {
    let (url, seen) = start(hostile).await;
    let ws = workspace(&url);
    // A fresh token on every page.
    let run = poll(&ws, "items", &["--with", r#"{"mode":"fresh"}"#]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "GET /items failed `pagination_loop` (fatal): trigger `items` returned more than 5 pages in one poll (`max_pages`)"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(keys(&run), ["k0", "k1", "k2", "k3", "k4"]);
    assert_eq!(requests(&seen).len(), 5);
    // Page numbers that never run out.
    let run = poll(&ws, "numbered", &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("trigger `numbered` returned more than 4 pages in one poll (`max_pages`)"),
        "{}",
        run.stderr
    );
    assert_eq!(requests(&seen).len(), 5 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_bring_nothing_new_end_the_poll() {
    let (url, seen) = start(hostile).await;
    let ws = workspace(&url);
    // A fresh token on every page, the same records on every page: the fourth page is the
    // third in a row with nothing new.
    let run = poll(&ws, "items", &["--with", r#"{"mode":"repeat"}"#]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "GET /items failed `pagination_loop` (fatal): trigger `items` would page forever: the last 3 pages (up to page 4) began and ended with records this poll had already received"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(keys(&run), ["k0", "k1", "k0", "k1", "k0", "k1"]);
    assert_eq!(requests(&seen).len(), 4);
    // Page numbers the server ignores.
    let run = poll(&ws, "stuck", &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "GET /stuck failed `pagination_loop` (fatal): trigger `stuck` would page forever: the last 3 pages (up to page 4)"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(requests(&seen).len(), 4 + 4);
    // Records listed again because they changed are new: every page is used.
    let run = poll(&ws, "items", &["--with", r#"{"mode":"changing"}"#]).await;
    run.assert_ok();
    assert_eq!(keys(&run).len(), 10);
    assert_eq!(requests(&seen).len(), 4 + 4 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scan_may_send_its_tokens_again() {
    let (url, seen) = start(hostile).await;
    let ws = workspace(&url);
    let run = poll(&ws, "scan", &[]).await;
    run.assert_ok();
    assert_eq!(keys(&run), ["k0", "k1"]);
    assert_eq!(
        requests(&seen),
        [
            "GET /scan",
            "GET /scan?after=s1",
            "GET /scan",
            "GET /scan?after=s1",
            "GET /scan?after=s2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_commits_the_records_before_a_pagination_loop() {
    let (url, seen) = start(hostile).await;
    let ws = workspace(&url);
    let sluice = recipe(&ws, "same", "  - id: out\n    action: emit\n");
    let run = run_async(sluice(&["run", "--once"])).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("`pagination_loop`"), "{}", run.stderr);
    // The first page's records were handled once, and committed.
    assert_eq!(keys(&run), ["k0", "k1"]);
    let state = run_async(sluice(&["state", "show", "--json"])).await;
    state.assert_ok();
    assert_eq!(
        state.json()[0]["state"]["checkpoint"]["cursor"],
        101,
        "{}",
        state.stdout
    );
    // The next run sees them again and does not fire them again.
    let run = run_async(sluice(&["run", "--once"])).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(requests(&seen).len(), 4);
}

/// Now on the local clock, in Unix seconds.
fn local_now() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_secs()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_far_off_ours_is_not_trusted() {
    for date in [
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Mon, 01 Jan 1990 00:00:00 GMT",
    ] {
        // Items (key, made) the server lists; every answer carries the absurd `Date`.
        let items: Arc<Mutex<Vec<(String, i64)>>> =
            Arc::new(Mutex::new(vec![("old".into(), local_now() - 3600)]));
        let listed = items.clone();
        let (url, seen) = start(move |r| {
            let body = match r.path.as_str() {
                "me" => json!({"timezone": "UTC"}),
                _ => {
                    let items = listed.lock().unwrap();
                    json!({"items": items.iter().map(|(k, t)| json!({"key": k, "made": t})).collect::<Vec<_>>()})
                }
            };
            ([(axum::http::header::DATE, date)], axum::Json(body)).into_response()
        })
        .await;
        let ws = Workspace::new(&format!(
            "connections:\n  s:\n    connector: skewed\n    base_url: {url}\n    token: ${{env:HOSTILE_TOKEN}}\n"
        ));
        let dir = ws.path().join("recipes");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("r.yaml"),
            "id: r\nconnection: s\ntrigger: skewed.items\nschedule:\n  every: 1m\nstart_from: now\nsteps:\n  - id: out\n    action: emit\n",
        )
        .unwrap();
        let sluice = |args: &[&str]| {
            let mut c = with_fixture(crate::util::sluice());
            c.arg("--config")
                .arg(ws.config())
                .arg("--recipes")
                .arg(&dir)
                .arg("--state-dir")
                .arg(ws.path().join("state"))
                .args(args);
            run_async(c)
        };
        let before = local_now();
        let run = sluice(&["run", "--once"]).await;
        run.assert_ok();
        assert_eq!(run.stdout, "", "{date}");
        // The clock was asked (GET /me) before the first cursor was taken, and refused once.
        assert_eq!(requests(&seen)[0], "GET /me", "{date}");
        let warning =
            "more than `max_clock_skew` allows; using the local clock for this connection";
        assert_eq!(
            run.stderr.matches(warning).count(),
            1,
            "{date}: {}",
            run.stderr
        );
        assert_scrubbed("the clock warning", &run.stderr);
        // The first cursor is local "now", not the server's.
        let state = sluice(&["state", "show", "--json"]).await;
        state.assert_ok();
        let cursor = state.json()[0]["state"]["checkpoint"]["cursor"]
            .as_i64()
            .unwrap();
        assert!(
            (before..=local_now()).contains(&cursor),
            "{date}: cursor {cursor}, local clock {before}"
        );
        // A record written after that fires on the next run, once that run's start (the
        // poll's upper bound, on the local clock) is past it.
        items.lock().unwrap().push(("new".into(), cursor));
        while local_now() <= cursor {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let run = sluice(&["run", "--once"]).await;
        run.assert_ok();
        assert_eq!(keys(&run), ["new"], "{date}: {}", run.stderr);
    }
    // The bound is a duration.
    let ws = Workspace::new(
        "connections:\n  s:\n    connector: skewed\n    base_url: http://127.0.0.1:9\n    max_clock_skew: soon\n",
    );
    let run = run_async(with_fixture(ws.sluice(&["validate"]))).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "connection `s`: `max_clock_skew`: `soon` does not start with a whole number"
        ),
        "{}",
        run.stderr
    );
}

/// A JSON list of `n` zeros: `[0,0,…,0]`, two bytes per value.
fn zeros(n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 * n + 1);
    body.push(b'[');
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'0');
    }
    body.push(b']');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_too_many_values_are_refused_before_they_are_parsed() {
    // 40 MB of `[0,0,…]`: twenty million values, within the byte limit, that would take
    // 700 MB and more parsed. As an answer (200) and as an error body (400).
    // And as a page's next-page token, which is not a token.
    let many = axum::body::Bytes::from(zeros(20_000_000));
    let mut page = br#"{"items":[{"key":"k0","made":100}],"next":"#.to_vec();
    page.extend_from_slice(&many);
    page.push(b'}');
    let page = axum::body::Bytes::from(page);
    let (url, _seen) = start(move |r| {
        let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "items") => (StatusCode::OK, json, page.clone()).into_response(),
            ("POST", _) => (StatusCode::BAD_REQUEST, json, many.clone()).into_response(),
            _ => (StatusCode::OK, json, many.clone()).into_response(),
        }
    })
    .await;
    let ws = workspace(&url);
    for (action, error) in [
        (
            "fetch",
            "GET /zeros failed with HTTP 200 `response_too_large` (fatal): the response would take more than 64 MiB of memory once parsed (it holds too many values)",
        ),
        // An error body too large to parse is shown as a snippet, as one that is not JSON.
        ("send", "POST /zeros failed with HTTP 400 (fatal): [0,0,0,0,"),
    ] {
        let c = with_fixture(ws.sluice(&[
            "call",
            &format!("hostile.{action}"),
            "--connection",
            "h",
            "--with",
            r#"{"what":"zeros"}"#,
        ]));
        let (run, peak) = run_measured(c, ws.path()).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(error), "{}", run.stderr);
        if let Some(kib) = peak {
            eprintln!("{action}: peak RSS of `sluice call` {} MiB", kib >> 10);
            assert!(kib < 100 << 10, "{action}: peak RSS {kib} KiB");
        }
    }
    let c = with_fixture(ws.sluice(&[
        "poll",
        "hostile.items",
        "--connection",
        "h",
        "--since",
        "0",
        "--with",
        r#"{"mode":"any"}"#,
    ]));
    let (run, peak) = run_measured(c, ws.path()).await;
    run.assert_ok();
    assert_eq!(keys(&run), ["k0"]);
    if let Some(kib) = peak {
        eprintln!("poll: peak RSS of `sluice poll` {} MiB", kib >> 10);
        assert!(kib < 100 << 10, "poll: peak RSS {kib} KiB");
    }
}
