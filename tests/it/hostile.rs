//! Servers that misbehave: answers that must not make sluice page forever, swell its memory,
//! carry a request to another host or put a secret on screen. Each test starts its own server
//! on loopback (the `hostile` fixture connector) and drives the `sluice` CLI.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

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

/// A server that records every request and answers it with `answer(method, path, uri)`.
async fn start(
    answer: impl Fn(&str, &str, &Uri, &HeaderMap) -> Response + Clone + Send + Sync + 'static,
) -> (String, Shared) {
    let shared: Shared = Arc::default();
    let handler = move |State(s): State<Shared>,
                        method: axum::http::Method,
                        Path(path): Path<String>,
                        uri: Uri,
                        headers: HeaderMap| {
        let answer = answer.clone();
        async move {
            s.lock().unwrap().requests.push(format!("{method} {uri}"));
            answer(method.as_str(), &path, &uri, &headers)
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
    let (elsewhere, stolen) = start(|_, _, _, _| StatusCode::OK.into_response()).await;
    let target = format!("{elsewhere}/steal?from=sluice");
    let (url, seen) = start(move |method, _, _, _| {
        let status = if method == "POST" {
            StatusCode::TEMPORARY_REDIRECT
        } else {
            StatusCode::FOUND
        };
        (status, [(axum::http::header::LOCATION, target.clone())]).into_response()
    })
    .await;
    let ws = workspace(&url);
    for (action, with, status) in [
        (
            "send",
            serde_json::json!({"what": "moved", "note": "private"}),
            307,
        ),
        ("fetch", serde_json::json!({"what": "moved"}), 302),
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
