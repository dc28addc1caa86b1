//! Path parameters are opaque single segments: every path parameter of every action of the
//! shipped Intercom connector, given hostile values through `sluice call` against the
//! simulator. Dot segments and empty values are refused before anything is sent; every other
//! value arrives as exactly one encoded segment, and `--dry-run` shows that same path.

use std::process::Command;

use serde_json::{json, Map, Value};
use sluice::plan::{Condition, PathPart};

use crate::util::{root, Run, SimEnv};

/// Values no id can take: refused with an input error, nothing sent.
const REFUSED: &[&str] = &[".", "..", ""];
/// Values sent as one encoded segment, with their encoding.
const ENCODED: &[(&str, &str)] = &[
    ("/", "%2F"),
    ("?", "%3F"),
    ("#", "%23"),
    ("%2e%2e", "%252e%252e"),
];

/// One path parameter of one variant of one action, with inputs that pick that variant.
struct Case {
    action: String,
    method: &'static str,
    param: String,
    path: Vec<PathPart>,
    /// Valid inputs (examples) selecting the variant; `for_each` lists have one item.
    inputs: Map<String, Value>,
    for_each: Option<String>,
    /// Whether the parameter's declared type is text (others fail type checks instead).
    text: bool,
}

impl Case {
    /// The inputs with `value` as the parameter.
    fn with(&self, value: &str) -> Value {
        let mut m = self.inputs.clone();
        match (self.param.as_str(), &self.for_each) {
            ("item", Some(list)) => m.insert(list.clone(), json!([value])),
            _ => m.insert(self.param.clone(), json!(value)),
        };
        Value::Object(m)
    }

    /// The path that must be sent when the parameter's encoded form is `encoded`.
    fn expected_path(&self, encoded: &str) -> String {
        let mut out = String::new();
        for part in &self.path {
            match part {
                PathPart::Lit(s) => out.push_str(s),
                PathPart::Param(p) if *p == self.param => out.push_str(encoded),
                PathPart::Param(p) => {
                    let v = match (p.as_str(), &self.for_each) {
                        ("item", Some(list)) => &self.inputs[list][0],
                        _ => &self.inputs[p],
                    };
                    let v = v
                        .as_str()
                        .unwrap_or_else(|| panic!("{}: {p} is {v}", self.action));
                    assert!(
                        v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                        "{}: example `{v}` of `{p}` needs encoding; pick a plain example",
                        self.action
                    );
                    out.push_str(v);
                }
            }
        }
        out
    }

    fn label(&self, value: &str) -> String {
        format!("{} {} = {value:?}", self.action, self.param)
    }
}

/// Every (action, variant, path parameter) of the shipped connector.
fn cases() -> Vec<Case> {
    let file = root().join("connectors/intercom.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let connector = sluice::plan::load_connector_text(&file, &text).unwrap();
    let mut out = Vec::new();
    for (id, action) in &connector.actions {
        let spec = action;
        let example = |name: &str| -> Value {
            let f = &spec.inputs[name];
            let ex = f
                .example
                .clone()
                .unwrap_or_else(|| panic!("{id}: input `{name}` has no example"));
            match (&spec.for_each, ex) {
                // One request per call: the list keeps its first item.
                (Some(list), Value::Array(a)) if list == name => json!([a[0]]),
                (_, ex) => ex,
            }
        };
        for variant in &action.variants {
            let mut inputs = Map::new();
            for (name, f) in &spec.inputs {
                if f.required {
                    inputs.insert(name.clone(), example(name));
                }
            }
            match &variant.when {
                Some(Condition::Present(n)) => {
                    inputs.insert(n.clone(), example(n));
                }
                Some(Condition::Equals(n, v)) => {
                    inputs.insert(n.clone(), v.clone());
                }
                None => {}
            }
            for r in &variant.requires {
                inputs.insert(r.clone(), example(r));
            }
            if !spec.require_any.is_empty()
                && !spec.require_any.iter().any(|k| inputs.contains_key(k))
            {
                let first = &spec.require_any[0];
                inputs.insert(first.clone(), example(first));
            }
            for part in &variant.request.path {
                let PathPart::Param(param) = part else {
                    continue;
                };
                let ty = match (param.as_str(), &spec.for_each) {
                    ("item", Some(list)) => spec.inputs[list].items,
                    _ => Some(spec.inputs[param].ty),
                };
                out.push(Case {
                    action: id.clone(),
                    method: sluice::http::method_str(variant.request.method),
                    param: param.clone(),
                    path: variant.request.path.clone(),
                    inputs: inputs.clone(),
                    for_each: spec.for_each.clone(),
                    text: ty == Some(sluice::plan::FieldType::String),
                });
            }
        }
    }
    out
}

/// Runs commands four at a time.
async fn run_all(cmds: Vec<Command>) -> Vec<Run> {
    tokio::task::spawn_blocking(move || {
        let cmds: Vec<std::sync::Mutex<Option<Command>>> = cmds
            .into_iter()
            .map(|c| std::sync::Mutex::new(Some(c)))
            .collect();
        let runs: Vec<std::sync::Mutex<Option<Run>>> =
            cmds.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(slot) = cmds.get(i) else { break };
                    let c = slot.lock().unwrap().take().unwrap();
                    *runs[i].lock().unwrap() = Some(crate::util::run(c));
                });
            }
        });
        runs.into_iter()
            .map(|r| r.into_inner().unwrap().unwrap())
            .collect()
    })
    .await
    .unwrap()
}

fn call(env: &SimEnv, case: &Case, value: &str, dry_run: bool) -> Command {
    let action = format!("intercom.{}", case.action);
    let with = case.with(value).to_string();
    let mut args = vec!["call", &action, "--connection", "intercom", "--with", &with];
    if dry_run {
        args.push("--dry-run");
    }
    env.cmd(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_parameter_is_one_opaque_segment_or_refused() {
    let cases = cases();
    // The connector has path parameters in plain, `for_each` and variant requests.
    assert!(
        cases.len() >= 20,
        "only {} path parameters found",
        cases.len()
    );
    for needed in [
        ("remove_tags", "target_id"),
        ("remove_tags", "item"),
        ("find_contact", "external_id"),
    ] {
        assert!(
            cases
                .iter()
                .any(|c| (c.action.as_str(), c.param.as_str()) == needed),
            "{needed:?}"
        );
    }
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;

    // The inputs are valid: with plain values each case sends its variant's path.
    let plain: Vec<Command> = cases.iter().map(|c| call(&env, c, "x1", true)).collect();
    for (c, r) in cases.iter().zip(run_all(plain).await) {
        r.assert_ok();
        let want = format!("{}{}", env.handle.base_url, c.expected_path("x1"));
        let url = r.json()["url"].as_str().unwrap().to_string();
        assert!(
            url == want || url.starts_with(&format!("{want}?")),
            "{}: {url} is not {want}",
            c.label("x1")
        );
    }

    // Dot segments and empty values: an input error, exit 1, nothing sent.
    let mut refused = Vec::new();
    let mut cmds = Vec::new();
    for c in &cases {
        for v in REFUSED {
            refused.push((c, *v));
            cmds.push(call(&env, c, v, false));
        }
    }
    for ((c, v), r) in refused.iter().zip(run_all(cmds).await) {
        assert_eq!(r.code, 1, "{}: {}", c.label(v), r.stderr);
        let want = match (*v, c.text) {
            (_, false) => "invalid input".to_string(),
            ("", true) => format!("path parameter `{}` is empty", c.param),
            (v, true) => format!(
                "path parameter `{}` is `{v}`, which would change the request's path; an id is never `.` or `..`",
                c.param
            ),
        };
        assert!(r.stderr.contains(&want), "{}: {}", c.label(v), r.stderr);
    }
    assert!(
        env.audit().is_empty(),
        "refused calls reached the API: {:?}",
        env.audit()
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect::<Vec<_>>()
    );

    // Everything else: one encoded segment, on the wire and in `--dry-run` alike.
    let mut sent = Vec::new();
    let (mut dry, mut real) = (Vec::new(), Vec::new());
    for c in cases.iter().filter(|c| c.text) {
        for (v, enc) in ENCODED {
            sent.push((c, *v, c.expected_path(enc)));
            dry.push(call(&env, c, v, true));
            real.push(call(&env, c, v, false));
        }
    }
    for ((c, v, path), r) in sent.iter().zip(run_all(dry).await) {
        r.assert_ok();
        let url = r.json()["url"].as_str().unwrap().to_string();
        let shown = url
            .strip_prefix(&env.handle.base_url)
            .unwrap_or_else(|| panic!("{url}"));
        let shown = shown.split_once('?').map_or(shown, |(p, _)| p);
        assert_eq!(shown, path, "{}: --dry-run", c.label(v));
    }
    assert!(env.audit().is_empty(), "a dry run sent a request");
    let runs = run_all(real).await;
    // Each call sent exactly one request, to exactly the encoded path (the simulator records
    // the raw request path). Calls ran concurrently, so the log is compared as a multiset.
    let mut want: Vec<String> = sent
        .iter()
        .map(|(c, _, path)| format!("{} {path}", c.method))
        .collect();
    let mut got: Vec<String> = env
        .audit()
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    for ((c, v, _), r) in sent.iter().zip(runs) {
        assert_eq!(
            r.code,
            1,
            "{}: nothing has that id: {}",
            c.label(v),
            r.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_the_url_that_is_sent_query_included() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let with = json!({"name": "Acme Ltd & Co/?#%2e ü+"}).to_string();
    let args = [
        "call",
        "intercom.find_company",
        "--connection",
        "intercom",
        "--with",
        &with,
    ];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let shown = crate::util::run_async(env.cmd(&dry)).await;
    shown.assert_ok();
    crate::util::run_async(env.cmd(&args)).await;
    let sent = env.audit();
    assert_eq!(sent.len(), 1);
    let wire = format!(
        "{}{}?{}",
        env.handle.base_url,
        sent[0].path,
        sent[0].query.as_deref().unwrap_or_default()
    );
    assert_eq!(shown.json()["url"], wire.as_str());
}
