//! The runtime is connector-agnostic: a second, tiny connector (tests/fixtures/connectors) with
//! different pagination, error shape and key fields works against its own tiny server.

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::util::{run_async, Workspace};

#[derive(Default)]
struct Tiny {
    /// Every request: method, raw path and query, headers of interest, body.
    seen: Vec<Value>,
    /// How many 418s to answer before succeeding.
    teapots: u32,
    /// When set, the list answers 200 with exactly this body.
    odd: Option<String>,
}

type Shared = Arc<Mutex<Tiny>>;

fn items() -> Vec<Value> {
    // made: 100..=106, one per second; `shelf` alternates.
    (0..7)
        .map(|i| json!({"key": format!("k{i}"), "made": 100 + i, "shelf": if i % 2 == 0 { "a" } else { "b" }}))
        .collect()
}

async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    s.lock().unwrap().seen.push(json!({
        "method": "GET", "uri": uri.to_string(),
        "auth": headers.get("authorization").and_then(|v| v.to_str().ok()),
        "version": headers.get("tiny-version").and_then(|v| v.to_str().ok()),
        "client": headers.get("x-tiny-client").and_then(|v| v.to_str().ok()),
    }));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tiny-secret") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"kind": "who", "text": "bad token"}})),
        )
            .into_response();
    }
    if let Some(body) = s.lock().unwrap().odd.clone() {
        return (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    let after: i64 = q
        .get("made_after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let per: usize = q.get("per").and_then(|v| v.parse().ok()).unwrap_or(10);
    let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
    let matching: Vec<Value> = items()
        .into_iter()
        .filter(|i| i["made"].as_i64().unwrap() > after)
        .filter(|i| q.get("shelf").is_none_or(|s| i["shelf"] == s.as_str()))
        .collect();
    let pages = matching.len().div_ceil(per).max(1);
    let chunk: Vec<Value> = matching
        .into_iter()
        .skip((page - 1) * per)
        .take(per)
        .collect();
    (
        StatusCode::OK,
        Json(json!({"items": chunk, "meta": {"pages": pages}})),
    )
        .into_response()
}

async fn create(
    State(s): State<Shared>,
    uri: Uri,
    body: Option<Json<Value>>,
) -> (StatusCode, Json<Value>) {
    let mut st = s.lock().unwrap();
    st.seen.push(json!({"method": "POST", "uri": uri.to_string(), "body": body.as_ref().map(|b| b.0.clone())}));
    if st.teapots > 0 {
        st.teapots -= 1;
        return (
            StatusCode::IM_A_TEAPOT,
            Json(json!({"error": {"kind": "busy", "text": "short and stout"}})),
        );
    }
    if uri.path().ends_with("/taken") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"kind": "name_taken", "text": "that name is taken"}})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"item": {"key": "new-1", "path": uri.path()}})),
    )
}

async fn start(teapots: u32) -> (String, Shared, tokio::task::JoinHandle<()>) {
    let shared: Shared = Arc::new(Mutex::new(Tiny {
        teapots,
        ..Tiny::default()
    }));
    let app = Router::new()
        .route("/items", get(list))
        .route("/items/{*name}", post(create))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let h = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, shared, h)
}

fn workspace(url: &str) -> Workspace {
    Workspace::new(&format!(
        "connections:\n  tiny:\n    connector: tinyapi\n    base_url: {url}\n    token: ${{env:TINY_TOKEN}}\n    retry: {{base_delay_ms: 5, max_delay_ms: 20}}\n"
    ))
}

fn with_fixture(mut c: std::process::Command) -> std::process::Command {
    c.env("TINY_TOKEN", "tiny-secret")
        .arg("--connectors")
        .arg(crate::util::root().join("tests/fixtures/connectors"));
    c
}

/// `sluice poll tinyapi.new_item --connection tiny EXTRA…` against the fixture connector.
async fn poll_tiny(ws: &Workspace, extra: &[&str]) -> crate::util::Run {
    let mut args = vec!["poll", "tinyapi.new_item", "--connection", "tiny"];
    args.extend_from_slice(extra);
    run_async(with_fixture(ws.sluice(&args))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_connector_polls_every_page_in_order() {
    let (url, shared, _h) = start(0).await;
    let ws = workspace(&url);
    let run = poll_tiny(&ws, &["--since", "102"]).await;
    run.assert_ok();
    let keys: Vec<String> = run
        .json_lines()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    // made >= 102: k2..k6, over three pages of two.
    assert_eq!(keys, ["k2", "k3", "k4", "k5", "k6"]);
    let seen = shared.lock().unwrap().seen.clone();
    let uris: Vec<&str> = seen.iter().map(|s| s["uri"].as_str().unwrap()).collect();
    // Exclusive `>` at second granularity: since − 1 is sent; page numbers in the query.
    assert_eq!(
        uris,
        [
            "/items?made_after=101&per=2&page=1",
            "/items?made_after=101&per=2&page=2",
            "/items?made_after=101&per=2&page=3",
        ]
    );
    for s in &seen {
        assert_eq!(s["auth"], "Bearer tiny-secret");
        assert_eq!(s["version"], "7");
        assert_eq!(s["client"], "sluice-test");
    }
    // The secret never reaches the output.
    assert!(!run.stdout.contains("tiny-secret") && !run.stderr.contains("tiny-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_pages_get_a_clear_error_naming_what_is_wrong() {
    let (url, shared, _h) = start(0).await;
    let ws = workspace(&url);
    let cases = [
        (
            r#"{"meta":{"pages":1}}"#,
            "the response has no `items` list of records",
        ),
        (
            r#"{"items":null}"#,
            "the response has no `items` list of records",
        ),
        (
            r#"{"items":{"key":"k0"}}"#,
            "`items` in the response is an object, not a list of records",
        ),
        (
            r#"{"items":"k0"}"#,
            "`items` in the response is text, not a list of records",
        ),
        (r#"[1,2]"#, "the response is not a JSON object"),
        (
            r#"{"items":[{"key":"k0","made":100},7]}"#,
            "record #2 on page 1 is a number, not an object",
        ),
        (
            r#"{"items":[{"key":"k0","made":"soon"}]}"#,
            "record #1 on page 1 has no whole-number `made`",
        ),
        (
            r#"{"items":[{"key":"k0"}]}"#,
            "record #1 on page 1 has no whole-number `made`",
        ),
    ];
    let poll = || poll_tiny(&ws, &["--since", "100"]);
    for (body, want) in cases {
        shared.lock().unwrap().odd = Some(body.to_string());
        let run = poll().await;
        assert_eq!(run.code, 1, "{body}: {}", run.stderr);
        assert!(
            run.stderr.contains(want),
            "{body}: want {want:?} in {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    // A record is passed on exactly as the API wrote it, escapes and all.
    let text = r#"{"made":101,"key":"k\u00e9","note":"a\"b","n":1.50}"#;
    shared.lock().unwrap().odd = Some(format!(r#"{{"items":[{text}],"meta":{{"pages":1}}}}"#));
    let run = poll().await;
    run.assert_ok();
    assert_eq!(run.stdout, format!("{text}\n"));
    // So does a recipe's `emit` without `value`, through the engine.
    std::fs::create_dir_all(ws.path().join("recipes")).unwrap();
    std::fs::write(
        ws.path().join("recipes/tiny_raw.yaml"),
        "id: tiny_raw\nconnection: tiny\ntrigger: tinyapi.new_item\nschedule:\n  every: 1m\nstart_from: \"1970-01-01\"\nsteps:\n  - id: out\n    action: emit\n",
    )
    .unwrap();
    let (recipes, state) = (ws.path().join("recipes"), ws.path().join("state"));
    let mut c = with_fixture(ws.sluice(&["run", "--once"]));
    c.arg("--recipes")
        .arg(&recipes)
        .arg("--state-dir")
        .arg(&state);
    let run = run_async(c).await;
    run.assert_ok();
    assert_eq!(run.stdout, format!("{text}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_connector_options_reach_the_request() {
    let (url, shared, _h) = start(0).await;
    let ws = workspace(&url);
    let run = poll_tiny(&ws, &["--since", "100", "--with", r#"{"shelf":"b"}"#]).await;
    run.assert_ok();
    let keys: Vec<String> = run
        .json_lines()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["k1", "k3", "k5"]);
    assert!(shared.lock().unwrap().seen[0]["uri"]
        .as_str()
        .unwrap()
        .contains("shelf=b"));
    // An undeclared option is refused before anything is sent.
    let run = poll_tiny(&ws, &["--with", r#"{"shelff":"b"}"#]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("unknown option `shelff` (did you mean `shelf`?)"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_connector_action_encodes_path_retries_by_rule_and_drops_absent_inputs() {
    let (url, shared, _h) = start(2).await;
    let ws = workspace(&url);
    let run = run_async(with_fixture(ws.sluice(&[
        "call",
        "tinyapi.create_item",
        "--connection",
        "tiny",
        "--with",
        r#"{"name":"a b/c?d%"}"#,
    ])))
    .await;
    run.assert_ok();
    assert_eq!(
        run.json(),
        json!({"key": "new-1", "path": "/items/a%20b%2Fc%3Fd%25"})
    );
    let seen = shared.lock().unwrap().seen.clone();
    // Two 418s (retryable by the connector's own rule), then success: three identical requests.
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s["uri"], "/items/a%20b%2Fc%3Fd%25");
        // `labels` and `meta.size` were not given: left out, and the text template still renders.
        assert_eq!(s["body"], json!({"meta": {"note": "size a b/c?d%!"}}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_connector_error_body_and_rules_classify() {
    let (url, _shared, _h) = start(0).await;
    let ws = workspace(&url);
    let run = run_async(with_fixture(ws.sluice(&[
        "call",
        "tinyapi.create_item",
        "--connection",
        "tiny",
        "--with",
        r#"{"name":"taken","size":3}"#,
    ])))
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "POST /items/taken failed with HTTP 400 `name_taken` (conflict): that name is taken"
        ),
        "{}",
        run.stderr
    );
    // Wrong input type: refused before sending.
    let run = run_async(with_fixture(ws.sluice(&[
        "call",
        "tinyapi.create_item",
        "--connection",
        "tiny",
        "--with",
        r#"{"name":"x","size":"big"}"#,
    ])))
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("input `size` must be a whole number"),
        "{}",
        run.stderr
    );
}
