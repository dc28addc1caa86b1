//! Conformance: every request sluice sends and every simulator response, checked against
//! Intercom's official OpenAPI description 2.15 by Prism (issue 3).
//!
//! The chain is `sluice` → recorder → Prism (`proxy --errors`) → simulator, all on loopback.
//! Prism validates each request before forwarding it (a bad one is answered 422 and never reaches
//! the simulator) and each simulator response against the schema for its status (a bad one is
//! replaced by a 500 `…/prism/errors#VIOLATIONS` problem and listed in the `sl-violations`
//! header). The recorder keeps every exchange, so a violation is reported with Prism's message
//! even when sluice retries or the exit code alone would hide it. The recorder also flags request
//! body fields the description does not document, which Intercom rejects on some endpoints and
//! Prism would let through (the description's objects allow extra properties).
//!
//! The description is used as vendored, plus the narrow, commented entries of
//! `tests/fixtures/intercom-openapi/allowlist.yaml`. Prism comes from `tools/conformance`
//! (`npm ci --prefix tools/conformance`); without it these tests fail, they are never skipped.
//! This module owns the harness and the scenarios; it does not own the simulator's behaviour
//! (`intercom_actions`/`intercom_triggers` assert what the calls do).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use sluice::sim::{Kind, Sim, SimConfig, SimHandle};

use crate::util::{root, run_async, Run, Workspace, T0, TOKEN};

/// The vendored description, relative to the repository root.
const SPEC: &str = "tests/fixtures/intercom-openapi/api.intercom.io-2.15.yaml";
/// The allow-list applied to a copy of it.
const ALLOWLIST: &str = "tests/fixtures/intercom-openapi/allowlist.yaml";
/// Prism as installed by `npm ci --prefix tools/conformance`.
const PRISM: &str = "tools/conformance/node_modules/.bin/prism";
/// How long Prism may take to load the description and listen.
const PRISM_STARTUP: Duration = Duration::from_secs(90);

// ── The description and its allow-list ─────────────────────────────────────────────────────

/// One allow-list entry (see the file's header).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Allowance {
    pointer: String,
    /// Keys set on the node (the rest of it is kept).
    #[serde(default)]
    merge: Map<String, Value>,
    /// The node's new value, when keys must go (e.g. a wrong `format`).
    replace: Option<Value>,
    scope: String,
    reason: String,
}

/// The vendored description with the allow-list applied, as JSON.
fn patched_spec() -> Value {
    let text = std::fs::read_to_string(root().join(SPEC)).expect("the vendored description");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut spec = serde_json::to_value(yaml).unwrap();
    let list: Vec<Allowance> =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(ALLOWLIST)).unwrap())
            .expect("allowlist.yaml: a list of {pointer, merge | replace, scope, reason}");
    for a in &list {
        assert!(
            !a.reason.trim().is_empty() && !a.scope.trim().is_empty(),
            "allow-list entry {} needs a reason and a scope",
            a.pointer
        );
        let (parent, last) = a.pointer.rsplit_once('/').expect("pointer starts with /");
        let parent = spec
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("allow-list pointer {} does not exist", a.pointer));
        let node = parent
            .as_object_mut()
            .unwrap_or_else(|| panic!("allow-list pointer {}: parent is no object", a.pointer))
            .entry(last.replace("~1", "/").replace("~0", "~"))
            .or_insert_with(|| json!({}));
        let before = node.clone();
        if let Some(new) = &a.replace {
            *node = new.clone();
        }
        for (k, v) in &a.merge {
            node[k] = v.clone();
        }
        assert_ne!(
            before, *node,
            "allow-list entry {} changes nothing",
            a.pointer
        );
    }
    spec
}

/// Resolves local `$ref`s.
fn resolve<'a>(spec: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// Top-level property names a request body schema documents (through allOf/oneOf/anyOf).
fn documented_fields(spec: &Value, schema: &Value, out: &mut Vec<String>) {
    let s = resolve(spec, schema);
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        out.extend(props.keys().cloned());
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for sub in s.get(key).and_then(Value::as_array).into_iter().flatten() {
            documented_fields(spec, sub, out);
        }
    }
}

/// The description's path template matching a concrete path (`/contacts/abc` →
/// `/contacts/{contact_id}`); literal segments win over parameters.
fn match_path<'a>(spec: &'a Value, method: &str, path: &str) -> Option<(&'a str, &'a Value)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut best: Option<(usize, &str, &Value)> = None;
    for (tpl, item) in spec["paths"].as_object()? {
        let t: Vec<&str> = tpl.trim_matches('/').split('/').collect();
        if t.len() != segs.len() {
            continue;
        }
        let ok = t
            .iter()
            .zip(&segs)
            .all(|(a, b)| a.starts_with('{') || a == b);
        let literal = t.iter().filter(|a| !a.starts_with('{')).count();
        if ok && best.is_none_or(|(l, _, _)| literal > l) {
            if let Some(op) = item.get(method.to_ascii_lowercase()) {
                best = Some((literal, tpl, op));
            }
        }
    }
    best.map(|(_, t, op)| (t, op))
}

// ── The recorder between sluice and Prism ───────────────────────────────────────────────────

/// One request through the chain and Prism's answer.
#[derive(Clone, Debug)]
struct Exchange {
    method: String,
    path: String,
    request_body: String,
    status: u16,
    sl_violations: Option<String>,
    response_body: String,
}

/// The loopback proxy sluice talks to: forwards everything to Prism unchanged and keeps a copy
/// of each exchange.
struct Recorder {
    /// Prism's URL.
    upstream: String,
    client: reqwest::Client,
    log: Mutex<Vec<Exchange>>,
}

/// Hop-by-hop and framing headers the proxy sets itself.
fn hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive"
    )
}

/// Forwards one request to Prism and records it with Prism's answer.
async fn forward(State(rec): State<Arc<Recorder>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut rb = rec
        .client
        .request(parts.method.clone(), format!("{}{pq}", rec.upstream));
    for (k, v) in &parts.headers {
        if !hop_header(k) {
            rb = rb.header(k, v);
        }
    }
    if !bytes.is_empty() {
        rb = rb.body(bytes.clone());
    }
    let mut ex = Exchange {
        method: parts.method.to_string(),
        path: pq,
        request_body: String::from_utf8_lossy(&bytes).into_owned(),
        status: 0,
        sl_violations: None,
        response_body: String::new(),
    };
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(error) => {
            ex.response_body = format!("recorder could not reach Prism: {error}");
            rec.log.lock().unwrap().push(ex);
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            return r;
        }
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    ex.status = status.as_u16();
    ex.sl_violations = headers
        .get("sl-violations")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    ex.response_body = String::from_utf8_lossy(&body).into_owned();
    rec.log.lock().unwrap().push(ex);
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    for (k, v) in &headers {
        if !hop_header(k) {
            out.headers_mut().append(k, v.clone());
        }
    }
    out
}

// ── Prism ───────────────────────────────────────────────────────────────────────────────────

/// A running Prism; killed on drop.
struct Prism {
    child: Child,
    log: PathBuf,
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prism in proxy mode with `--errors` in front of `upstream` and waits until it listens.
async fn start_prism(spec: &Path, upstream: &str, dir: &Path) -> (Prism, String) {
    let bin = root().join(PRISM);
    assert!(
        bin.exists(),
        "Prism is not installed ({} is missing): run `npm ci --prefix tools/conformance` \
         (the conformance check is never skipped)",
        bin.display()
    );
    let port = free_port();
    let log = dir.join("prism.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&bin)
        .args(["proxy"])
        .arg(spec)
        .arg(upstream)
        .args([
            "--errors",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        // Prism's dependencies would report installs; it must touch nothing but loopback.
        .env("SCARF_ANALYTICS", "false")
        .env("DO_NOT_TRACK", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn prism");
    let mut prism = Prism { child, log };
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        if let Some(status) = prism.child.try_wait().unwrap() {
            panic!(
                "Prism exited ({status}) before listening:\n{}",
                std::fs::read_to_string(&prism.log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < PRISM_STARTUP,
            "Prism did not listen within {PRISM_STARTUP:?}:\n{}",
            std::fs::read_to_string(&prism.log).unwrap_or_default()
        );
        // Bounded readiness poll of a child process: no simulator clock applies here.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (prism, format!("http://127.0.0.1:{port}"))
}

// ── The whole chain ─────────────────────────────────────────────────────────────────────────

/// Simulator, Prism, recorder and a workspace whose `intercom` connection goes through them.
struct Chain {
    handle: SimHandle,
    ws: Workspace,
    /// The recorder's URL: where sluice (or a raw client) sends requests.
    base_url: String,
    spec: Value,
    recorder: Arc<Recorder>,
    _prism: Prism,
    _stop: tokio::sync::oneshot::Sender<()>,
    /// Exchanges already checked by [`Chain::violations`].
    seen: Mutex<usize>,
}

impl Chain {
    async fn start(config: SimConfig) -> Chain {
        let handle = Sim::start(config).await.expect("start simulator");
        let ws = Workspace::new("");
        let spec = patched_spec();
        let spec_path = ws.path().join("intercom-2.15-patched.json");
        std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let (prism, prism_url) = start_prism(&spec_path, &handle.base_url, ws.path()).await;
        let recorder = Arc::new(Recorder {
            upstream: prism_url,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            log: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(recorder.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        std::fs::write(
            ws.config(),
            format!(
                "connections:\n  intercom:\n    connector: intercom\n    base_url: http://{addr}\n    token: ${{env:INTERCOM_TOKEN}}\n    retry: {{max_attempts: 1, base_delay_ms: 5, max_delay_ms: 20, max_rate_limit_waits: 0}}\n    max_clock_skew: 3650d\n"
            ),
        )
        .unwrap();
        Chain {
            handle,
            ws,
            base_url: format!("http://{addr}"),
            spec,
            recorder,
            _prism: prism,
            _stop: tx,
            seen: Mutex::new(0),
        }
    }

    fn sim(&self) -> &Sim {
        &self.handle.sim
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ws.sluice(args);
        c.env("INTERCOM_TOKEN", TOKEN);
        c
    }

    async fn call(&self, action: &str, with: &Value) -> Run {
        let a = format!("intercom.{action}");
        let w = with.to_string();
        run_async(self.cmd(&["call", &a, "--connection", "intercom", "--with", &w])).await
    }

    async fn poll(&self, trigger: &str, since: i64) -> Run {
        let t = format!("intercom.{trigger}");
        let s = since.to_string();
        run_async(self.cmd(&["poll", &t, "--connection", "intercom", "--since", &s])).await
    }

    /// Every exchange so far.
    fn exchanges(&self) -> Vec<Exchange> {
        self.recorder.log.lock().unwrap().clone()
    }

    /// Violations in the exchanges since the last call, one readable paragraph each.
    fn violations(&self) -> Vec<String> {
        let log = self.exchanges();
        let mut seen = self.seen.lock().unwrap();
        let new = &log[*seen..];
        *seen = log.len();
        new.iter().filter_map(|e| self.check(e)).collect()
    }

    /// What is wrong with one exchange, if anything.
    fn check(&self, e: &Exchange) -> Option<String> {
        let mut problems = Vec::new();
        if let Some(v) = &e.sl_violations {
            problems.push(format!("Prism sl-violations: {v}"));
        }
        let body: Value = serde_json::from_str(&e.response_body).unwrap_or(Value::Null);
        if let Some(t) = body["type"].as_str() {
            if t.starts_with("https://stoplight.io/prism/errors#") {
                problems.push(format!(
                    "Prism {} {}: {} {}",
                    body["status"], t, body["title"], body["validation"]
                ));
            }
        }
        if e.status == 0 || e.status == 502 {
            problems.push(format!("no answer through Prism: {}", e.response_body));
        }
        if let Some(extra) = self.undocumented_fields(e) {
            problems.push(extra);
        }
        (!problems.is_empty()).then(|| {
            format!(
                "{} {}\n  request body: {}\n  status: {}\n  {}",
                e.method,
                e.path,
                e.request_body,
                e.status,
                problems.join("\n  ")
            )
        })
    }

    /// Request body fields the description does not document for this operation.
    fn undocumented_fields(&self, e: &Exchange) -> Option<String> {
        let body: Value = serde_json::from_str(&e.request_body).ok()?;
        let path = e.path.split('?').next().unwrap_or("");
        let Some((tpl, op)) = match_path(&self.spec, &e.method, path) else {
            return Some(format!("{} {path} is not in the description", e.method));
        };
        let schema = op.pointer("/requestBody/content/application~1json/schema")?;
        let mut known = Vec::new();
        documented_fields(&self.spec, schema, &mut known);
        let extra: Vec<&String> = body
            .as_object()?
            .keys()
            .filter(|k| !known.contains(k))
            .collect();
        (!extra.is_empty()).then(|| {
            format!(
                "request body fields {extra:?} are not documented for {} {tpl} (documented: {known:?})",
                e.method
            )
        })
    }
}

/// Collects failures of a scenario so one run reports all of them.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    /// Records what `chain` saw for step `what` (whose run must have `want_ok`).
    fn step(&mut self, chain: &Chain, what: &str, run: &Run, want_ok: bool) {
        let v = chain.violations();
        for x in &v {
            self.0.push(format!("{what}: {x}"));
        }
        if want_ok && run.code != 0 && v.is_empty() {
            self.0.push(format!(
                "{what}: exit {}\n  stdout: {}\n  stderr: {}",
                run.code, run.stdout, run.stderr
            ));
        }
    }

    fn assert_clean(&self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} conformance violation(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// The `id` of an object; a failed step's missing output gives a placeholder so the scenario
/// goes on and the report lists every violation, not only the first.
fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or("missing-id").to_string()
}

fn config(contacts: usize, companies: usize, tickets: usize, conversations: usize) -> SimConfig {
    SimConfig {
        seed: 7,
        contacts,
        companies,
        tickets,
        conversations,
        start_time: T0,
        frozen_clock: true,
        ..SimConfig::default()
    }
}

// ── Scenarios ───────────────────────────────────────────────────────────────────────────────

/// Runs one action and records what the chain saw; returns its output (Null on failure).
async fn act(chain: &Chain, report: &mut Report, action: &str, label: &str, with: Value) -> Value {
    let run = chain.call(action, &with).await;
    report.step(chain, &format!("{action} ({label}) {with}"), &run, true);
    if run.code == 0 {
        serde_json::from_str(&run.stdout).unwrap_or(Value::Null)
    } else {
        Value::Null
    }
}

/// All 23 actions, each once with only its required inputs (every variant and every
/// `require_any` alternative) and once with every optional input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_all_actions_required_and_optional_inputs() {
    let started = Instant::now();
    let chain = Chain::start(config(6, 3, 3, 4)).await;
    let sim = chain.sim();
    let admin = id(&sim.records(Kind::Admin)[0]);
    let admin_int: i64 = admin.parse().unwrap();
    let types = sim.records(Kind::TicketType);
    let customer_type = types
        .iter()
        .find(|t| t["category"] == "Customer")
        .expect("a Customer ticket type");
    let customer_type_id = id(customer_type);
    let state_id = id(&customer_type["ticket_states"]["data"][1]);
    let user = sim
        .records(Kind::Contact)
        .into_iter()
        .find(|c| c["role"] == "user")
        .expect("a seeded user");
    let user_id = id(&user);
    let convs: Vec<String> = sim.records(Kind::Conversation).iter().map(id).collect();
    let tags: Vec<String> = sim.records(Kind::Tag).iter().map(id).collect();
    let r = &mut Report::default();
    let c = &chain;

    // Companies.
    let cmin = id(&act(
        c,
        r,
        "create_or_update_company",
        "required",
        json!({"company_id": "conf-min"}),
    )
    .await);
    let cfull = id(&act(c, r, "create_or_update_company", "all", json!({
        "company_id": "conf-full", "name": "Conformance Ltd", "plan": "Pro", "size": 40,
        "website": "https://conformance.example", "industry": "Manufacturing",
        "custom_attributes": {"region": "EMEA"}, "remote_created_at": 1_700_000_000, "monthly_spend": 250,
    })).await);
    act(c, r, "update_company", "required", json!({"id": cmin})).await;
    act(
        c,
        r,
        "update_company",
        "all",
        json!({
            "id": cfull, "name": "Conformance Group", "plan": "Enterprise", "size": 45,
            "website": "https://group.example", "industry": "Logistics",
            "custom_attributes": {"region": "APAC"}, "monthly_spend": 300,
        }),
    )
    .await;
    act(c, r, "find_company", "by id", json!({"id": cfull})).await;
    act(
        c,
        r,
        "find_company",
        "by company_id",
        json!({"company_id": "conf-full"}),
    )
    .await;
    act(
        c,
        r,
        "find_company",
        "by name",
        json!({"name": "Conformance Group"}),
    )
    .await;
    act(
        c,
        r,
        "add_contact_to_company",
        "required = all",
        json!({"contact_id": user_id, "company_id": cfull}),
    )
    .await;

    // Contacts.
    act(
        c,
        r,
        "create_contact",
        "required: email",
        json!({"email": "min@example.com"}),
    )
    .await;
    act(
        c,
        r,
        "create_contact",
        "required: external_id",
        json!({"external_id": "usr_conf_min"}),
    )
    .await;
    act(
        c,
        r,
        "create_contact",
        "required: role",
        json!({"role": "lead"}),
    )
    .await;
    let full = act(
        c,
        r,
        "create_contact",
        "all",
        json!({
            "role": "user", "external_id": "usr_conf_full", "email": "full@example.com",
            "phone": "+353871234567", "name": "Joe Bloggs", "avatar": "https://example.com/joe.png",
            "signed_up_at": 1_734_537_424, "last_seen_at": 1_734_537_500, "owner_id": admin_int,
            "unsubscribed_from_emails": false, "custom_attributes": {"plan_tier": "pro"},
        }),
    )
    .await;
    let contact = id(&full);
    act(c, r, "update_contact", "required", json!({"id": contact})).await;
    act(c, r, "update_contact", "all", json!({
        "id": contact, "role": "user", "external_id": "usr_conf_full2", "email": "full2@example.com",
        "phone": "+353871234568", "name": "Joe B. Bloggs", "avatar": "https://example.com/joe2.png",
        "signed_up_at": 1_734_537_425, "last_seen_at": 1_734_537_600, "owner_id": admin_int,
        "unsubscribed_from_emails": true, "custom_attributes": {"plan_tier": "team"},
    })).await;
    act(c, r, "find_contact", "by id", json!({"id": contact})).await;
    act(
        c,
        r,
        "find_contact",
        "by external_id",
        json!({"external_id": "usr_conf_full2"}),
    )
    .await;
    act(
        c,
        r,
        "find_contact",
        "by email",
        json!({"email": "full2@example.com"}),
    )
    .await;
    act(
        c,
        r,
        "add_note_to_contact",
        "required",
        json!({"contact_id": contact, "body": "Called about the renewal & pricing"}),
    )
    .await;
    act(
        c,
        r,
        "add_note_to_contact",
        "all",
        json!({"contact_id": contact, "body": "Follow-up <b>done</b>", "admin_id": admin}),
    )
    .await;

    // Tickets.
    act(
        c,
        r,
        "create_ticket",
        "required: contact_id",
        json!({"ticket_type_id": customer_type_id, "contact_id": user_id}),
    )
    .await;
    act(
        c,
        r,
        "create_ticket",
        "required: contact_external_id",
        json!({"ticket_type_id": customer_type_id, "contact_external_id": "usr_conf_full2"}),
    )
    .await;
    act(
        c,
        r,
        "create_ticket",
        "required: contact_email",
        json!({"ticket_type_id": customer_type_id, "contact_email": "new-from-ticket@example.com"}),
    )
    .await;
    let ticket = id(&act(c, r, "create_ticket", "all", json!({
        "ticket_type_id": customer_type_id, "contact_id": contact,
        "ticket_attributes": {"_default_title_": "Checkout broken", "_default_description_": "500 on pay"},
        "company_id": cfull, "created_at": T0 - 60, "conversation_to_link_id": convs[0],
        "admin_assignee_id": admin, "team_assignee_id": "0", "skip_notifications": true,
    })).await);
    // All three contact identifiers at once: the first wins, one key is sent (a oneOf).
    act(
        c,
        r,
        "create_ticket",
        "every contact identifier",
        json!({"ticket_type_id": customer_type_id, "contact_id": user_id, "contact_external_id": "usr_conf_full2", "contact_email": "full2@example.com"}),
    )
    .await;
    act(c, r, "update_ticket", "required", json!({"id": ticket})).await;
    act(
        c,
        r,
        "update_ticket",
        "all",
        json!({
            "id": ticket, "ticket_attributes": {"_default_title_": "Checkout fixed"},
            "ticket_state_id": state_id, "company_id": cfull, "open": true, "is_shared": true,
            "snoozed_until": T0 + 86_400, "admin_id": admin_int, "assignee_id": admin,
            "skip_notifications": false,
        }),
    )
    .await;
    act(c, r, "find_ticket", "required = all", json!({"id": ticket})).await;
    act(
        c,
        r,
        "convert_conversation_to_ticket",
        "required",
        json!({"conversation_id": convs[1], "ticket_type_id": customer_type_id}),
    )
    .await;
    act(c, r, "convert_conversation_to_ticket", "all", json!({"conversation_id": convs[2], "ticket_type_id": customer_type_id, "attributes": {"_default_title_": "From chat"}})).await;

    // Conversations.
    act(c, r, "create_conversation", "required", json!({"contact_id": user_id, "contact_type": "user", "body": "I need help with my invoice"})).await;
    let msg = act(c, r, "create_conversation", "all", json!({
        "contact_id": user_id, "contact_type": "user", "body": "Invoice question", "subject": "Invoice",
        "attachment_urls": ["https://example.com/a.png"], "created_at": T0 - 30,
    })).await;
    let conv = msg["conversation_id"]
        .as_str()
        .map_or_else(|| convs[3].clone(), str::to_string);
    act(c, r, "update_conversation", "required", json!({"id": conv})).await;
    act(c, r, "update_conversation", "all", json!({"id": conv, "read": true, "title": "Billing question", "custom_attributes": {"issue_type": "Billing"}, "company_id": cfull})).await;
    act(c, r, "find_conversation", "required", json!({"id": conv})).await;
    act(
        c,
        r,
        "find_conversation",
        "all",
        json!({"id": conv, "display_as": "plaintext"}),
    )
    .await;

    // Tags: every target, with and without the optional admin_id where it is optional.
    let tag = id(&act(
        c,
        r,
        "create_tag",
        "required",
        json!({"name": "Conformance"}),
    )
    .await);
    act(
        c,
        r,
        "create_tag",
        "all: tag companies",
        json!({"name": "Conformance", "companies": [{"id": cfull}, {"company_id": "conf-min"}]}),
    )
    .await;
    act(
        c,
        r,
        "create_tag",
        "all: untag a company",
        json!({"name": "Conformance", "companies": [{"id": cfull, "untag": true}]}),
    )
    .await;
    let two = json!([tags[0], tag]);
    act(
        c,
        r,
        "assign_tags",
        "contact, required",
        json!({"target": "contact", "target_id": contact, "tag_ids": two}),
    )
    .await;
    act(
        c,
        r,
        "assign_tags",
        "contact, all",
        json!({"target": "contact", "target_id": contact, "tag_ids": two, "admin_id": admin}),
    )
    .await;
    act(
        c,
        r,
        "assign_tags",
        "conversation",
        json!({"target": "conversation", "target_id": conv, "tag_ids": two, "admin_id": admin}),
    )
    .await;
    act(
        c,
        r,
        "assign_tags",
        "ticket",
        json!({"target": "ticket", "target_id": ticket, "tag_ids": two, "admin_id": admin}),
    )
    .await;
    act(
        c,
        r,
        "remove_tags",
        "contact, required",
        json!({"target": "contact", "target_id": contact, "tag_ids": [tags[0]]}),
    )
    .await;
    act(
        c,
        r,
        "remove_tags",
        "contact, all",
        json!({"target": "contact", "target_id": contact, "tag_ids": [tag], "admin_id": admin}),
    )
    .await;
    act(
        c,
        r,
        "remove_tags",
        "conversation",
        json!({"target": "conversation", "target_id": conv, "tag_ids": two, "admin_id": admin}),
    )
    .await;
    act(
        c,
        r,
        "remove_tags",
        "ticket",
        json!({"target": "ticket", "target_id": ticket, "tag_ids": two, "admin_id": admin}),
    )
    .await;

    // Events.
    act(
        c,
        r,
        "create_event",
        "required: user_id",
        json!({"event_name": "placed-order", "created_at": T0, "user_id": "usr_conf_full2"}),
    )
    .await;
    act(
        c,
        r,
        "create_event",
        "required: contact_id",
        json!({"event_name": "placed-order", "created_at": T0 + 1, "contact_id": contact}),
    )
    .await;
    act(
        c,
        r,
        "create_event",
        "required: email",
        json!({"event_name": "placed-order", "created_at": T0 + 2, "email": "full2@example.com"}),
    )
    .await;
    act(c, r, "create_event", "all", json!({"event_name": "placed-order", "created_at": T0 + 3, "user_id": "usr_conf_full2", "contact_id": contact, "email": "full2@example.com", "metadata": {"order_id": "A-1", "amount": 42}})).await;

    // Deletes last: they remove what the steps above used.
    act(c, r, "delete_tag", "required = all", json!({"id": tag})).await;
    act(
        c,
        r,
        "delete_ticket",
        "required = all",
        json!({"id": ticket}),
    )
    .await;
    act(
        c,
        r,
        "delete_conversation",
        "required = all",
        json!({"id": conv}),
    )
    .await;
    act(
        c,
        r,
        "delete_company",
        "required = all",
        json!({"id": cmin}),
    )
    .await;

    // Every action ran through Prism (the connector defines exactly these 23).
    let ran: std::collections::BTreeSet<&str> = [
        "create_or_update_company",
        "update_company",
        "find_company",
        "delete_company",
        "add_contact_to_company",
        "create_contact",
        "update_contact",
        "find_contact",
        "add_note_to_contact",
        "create_ticket",
        "update_ticket",
        "find_ticket",
        "delete_ticket",
        "convert_conversation_to_ticket",
        "create_conversation",
        "update_conversation",
        "find_conversation",
        "delete_conversation",
        "create_tag",
        "assign_tags",
        "remove_tags",
        "delete_tag",
        "create_event",
    ]
    .into();
    assert_eq!(ran.len(), 23);
    r.assert_clean("actions");
    let n = chain.exchanges().len();
    assert!(n >= 57, "only {n} requests went through Prism");
    eprintln!(
        "conformance: {n} action requests checked in {:?}",
        started.elapsed()
    );
}

/// Records per trigger: more than one page of 150 (and several scroll pages of 50).
const MANY: i64 = 160;

/// All 7 triggers over more than one page each, including the contact search's widening to
/// whole local days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_all_triggers_first_and_following_pages() {
    let started = Instant::now();
    let chain = Chain::start(config(3, 0, 0, 0)).await;
    let sim = chain.sim();
    // 16:00 in Dublin at T0, so `since` is an hour into the afternoon: mid local day.
    let since = T0 - 3600;
    for i in 0..MANY {
        let ts = since + 600 + i;
        let company = sim
            .create(Kind::Company, json!({"name": format!("Pager {i}"), "company_id": format!("pager-{i}"), "created_at": ts, "updated_at": ts}))
            .unwrap();
        // Companies without contacts are not listed by Intercom: give each one.
        sim.create(Kind::Contact, json!({"role": "user", "email": format!("pager{i}@example.com"), "created_at": ts, "updated_at": ts, "company_ids": [id(&company)]}))
            .unwrap();
        sim.create(Kind::Ticket, json!({"created_at": ts, "updated_at": ts}))
            .unwrap();
        sim.create(
            Kind::Conversation,
            json!({"created_at": ts, "updated_at": ts}),
        )
        .unwrap();
    }
    // Earlier the same local day: the widened contact search returns them, sluice drops them.
    let early = (0..3)
        .map(|i| {
            let ts = since - 5 * 3600 + i;
            id(&sim
                .create(
                    Kind::Contact,
                    json!({"role": "lead", "created_at": ts, "updated_at": ts}),
                )
                .unwrap())
        })
        .collect::<Vec<_>>();

    let r = &mut Report::default();
    for (trigger, path) in [
        ("new_contact", "/contacts/search"),
        ("contact_updated", "/contacts/search"),
        ("new_or_updated_company", "/companies/scroll"),
        ("new_ticket", "/tickets/search"),
        ("ticket_updated", "/tickets/search"),
        ("new_conversation", "/conversations/search"),
        ("conversation_updated", "/conversations/search"),
    ] {
        let before = chain.exchanges().len();
        let run = chain.poll(trigger, since).await;
        let pages: Vec<Exchange> = chain.exchanges()[before..]
            .iter()
            .filter(|e| e.path.split('?').next() == Some(path))
            .cloned()
            .collect();
        r.step(
            &chain,
            &format!("poll {trigger} --since {since}"),
            &run,
            true,
        );
        if run.code != 0 {
            continue;
        }
        let ids: Vec<String> = run.json_lines().iter().map(id).collect();
        assert!(
            ids.len() as i64 >= MANY,
            "{trigger}: {} records, want at least {MANY}",
            ids.len()
        );
        // A following page was asked for with the previous page's cursor.
        let follow = pages
            .iter()
            .skip(1)
            .filter(|e| {
                e.path.contains("scroll_param=") || e.request_body.contains("\"starting_after\"")
            })
            .count();
        assert!(follow >= 1, "{trigger}: no following page in {pages:#?}");
        if path == "/contacts/search" {
            assert!(
                early.iter().all(|e| !ids.contains(e)),
                "{trigger}: records before since were not dropped"
            );
            // Last second of the previous local day (Dublin, UTC+1 in July).
            let body: Value = serde_json::from_str(&pages[0].request_body).unwrap();
            let sent = &body["query"]["value"];
            let sent = sent
                .as_i64()
                .or_else(|| sent.as_str().and_then(|s| s.parse().ok()));
            assert_eq!(sent, Some(T0 - 16 * 3600 - 1), "{trigger}: widened value");
        }
    }
    r.assert_clean("triggers");
    eprintln!(
        "conformance: {} trigger requests checked in {:?}",
        chain.exchanges().len(),
        started.elapsed()
    );
}

/// The check bites: a request Intercom would reject (a contact with none of email,
/// external_id or role) is reported with Prism's message and never reaches the simulator, and a
/// simulator response that breaks the schema is reported too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_reports_malformed_request_and_response() {
    let chain = Chain::start(config(2, 0, 0, 0)).await;
    // sluice refuses this input itself, so send it raw through the same chain.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .post(format!("{}/contacts", chain.base_url))
        .bearer_auth(TOKEN)
        .header("Accept", "application/json")
        .header("Intercom-Version", "2.15")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let v = chain.violations();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(
        v[0].contains("UNPROCESSABLE_ENTITY")
            && v[0].contains("Request body must have required property 'email'"),
        "{}",
        v[0]
    );
    assert!(
        chain.sim().audit().iter().all(|e| e.path != "/contacts"),
        "Prism must not forward an invalid request"
    );

    // An undocumented body field is reported even though Prism lets it through.
    let run = chain
        .call("find_contact", &json!({"email": "nobody@example.com"}))
        .await;
    assert_eq!(run.code, 1, "nothing is found: {}", run.stderr);
    assert!(chain.violations().is_empty(), "`sort` is allow-listed");
    let resp = client
        .post(format!("{}/contacts/search", chain.base_url))
        .bearer_auth(TOKEN)
        .header("Accept", "application/json")
        .header("Intercom-Version", "2.15")
        .json(&json!({"query": {"field": "email", "operator": "=", "value": "a@b.c"}, "order": "asc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v = chain.violations();
    assert!(
        v.len() == 1 && v[0].contains("request body fields [\"order\"] are not documented"),
        "{v:#?}"
    );

    // A response violation: a contact whose `created_at` is no integer.
    let contact = id(&chain.sim().records(Kind::Contact)[0]);
    chain
        .sim()
        .patch(Kind::Contact, &contact, json!({"created_at": "yesterday"}))
        .unwrap();
    let run = chain.call("find_contact", &json!({"id": contact})).await;
    assert_ne!(run.code, 0);
    let v = chain.violations();
    assert!(
        !v.is_empty()
            && v.iter().all(|x| x.contains("VIOLATIONS")
                && x.contains("Response body property created_at must be integer")),
        "{v:#?}"
    );
}
