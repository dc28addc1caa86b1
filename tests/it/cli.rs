//! CLI faces not covered elsewhere: `sluice sim`, connection settings (region, API version,
//! environment secrets) and argument errors.

use crate::util::{run, sluice, SimProcess, Workspace};

#[test]
fn sim_command_serves_intercom_on_loopback() {
    let sim = SimProcess::start(&["--seed", "3", "--contacts", "4", "--frozen-clock"]);
    let url = sim.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (me, denied) = rt.block_on(async {
        let c = reqwest::Client::builder().build().unwrap();
        let me: serde_json::Value = c
            .get(format!("{url}/me"))
            .bearer_auth("sim-token")
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let denied = c
            .get(format!("{url}/me"))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .status();
        (me, denied)
    });
    drop(sim);
    assert_eq!(me["app"]["timezone"], "Europe/Dublin");
    assert_eq!(denied.as_u16(), 401);
}

#[test]
fn region_and_api_version_come_from_the_connection() {
    let ws = Workspace::new(
        "connections:\n  eu:\n    connector: intercom\n    region: eu\n    api_version: \"2.14\"\n    token: ${env:EU_TOKEN}\n",
    );
    let mut c = ws.sluice(&[
        "call",
        "intercom.find_ticket",
        "--connection",
        "eu",
        "--with",
        r#"{"id":"a/b"}"#,
        "--dry-run",
    ]);
    c.env("EU_TOKEN", "eu-secret-value");
    let r = run(c);
    r.assert_ok();
    let v = r.json();
    assert_eq!(v["url"], "https://api.eu.intercom.io/tickets/a%2Fb");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["headers"]["Intercom-Version"], "2.14");
    assert!(!r.stdout.contains("eu-secret-value"));
}

#[test]
fn missing_secret_names_the_variable_and_cannot_run() {
    let ws = Workspace::new(
        "connections:\n  x:\n    connector: intercom\n    token: ${env:SLUICE_TEST_UNSET_TOKEN}\n",
    );
    let r = run(ws.sluice(&[
        "call",
        "intercom.find_ticket",
        "--connection",
        "x",
        "--with",
        r#"{"id":"1"}"#,
    ]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("environment variable `SLUICE_TEST_UNSET_TOKEN` is not set"),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_names_get_suggestions() {
    let ws = Workspace::new("connections:\n  main:\n    connector: intercom\n    region: mars\n");
    let r = run(ws.sluice(&["call", "intercom.create_contakt", "--connection", "main"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("did you mean `create_contact`"),
        "{}",
        r.stderr
    );
    let r = run(ws.sluice(&["poll", "intercom.new_contact", "--connection", "mian"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no connection `mian`") && r.stderr.contains("did you mean `main`"),
        "{}",
        r.stderr
    );
    let r = run(ws.sluice(&["poll", "intercom.new_contact", "--connection", "main"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("region `mars` is not one of"),
        "{}",
        r.stderr
    );
    let r = run(ws.sluice(&[
        "call",
        "intercom.find_ticket",
        "--connection",
        "main",
        "--with",
        "[1]",
    ]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--with must be a JSON object"),
        "{}",
        r.stderr
    );
    let r = run(ws.sluice(&[
        "poll",
        "intercom.new_contact",
        "--connection",
        "main",
        "--since",
        "yesterday",
    ]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--since `yesterday` is not"),
        "{}",
        r.stderr
    );
    let mut c = sluice();
    c.arg("frobnicate");
    let r = run(c);
    assert_eq!(r.code, 2);
}

#[test]
fn bad_config_file_is_located() {
    let ws = Workspace::new("connections:\n  main:\n    connecter: intercom\n");
    let r = run(ws.sluice(&[
        "call",
        "intercom.find_ticket",
        "--connection",
        "main",
        "--with",
        r#"{"id":"1"}"#,
    ]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("sluice.yaml:3:5: error: unknown key `connecter`"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_line_break_is_a_configuration_error_and_nothing_is_sent() {
    let env = crate::util::SimEnv::start(crate::util::SimEnv::config(1, 0, 0, 0)).await;
    let mut c = env.cmd(&[
        "call",
        "intercom.find_contact",
        "--connection",
        "intercom",
        "--with",
        r#"{"id":"1"}"#,
    ]);
    // As a token read from a file with its trailing newline ends up.
    c.env("INTERCOM_TOKEN", format!("{}\r\n", crate::util::TOKEN));
    let r = crate::util::run_async(c).await;
    assert_eq!(r.code, 2, "a configuration error: {}", r.stderr);
    assert!(
        r.stderr.contains("connection `intercom`")
            && r.stderr
                .contains("token: it contains a line break (CR or LF)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(crate::util::TOKEN), "{}", r.stderr);
    assert!(!r.stderr.contains("attempts"), "not retried: {}", r.stderr);
    assert!(env.sim().audit().is_empty(), "nothing is sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_built_fails_at_once_without_retries() {
    let env = crate::util::SimEnv::start(crate::util::SimEnv::config(1, 0, 0, 0)).await;
    // A header value reqwest refuses, from a setting checked nowhere earlier.
    let config = std::fs::read_to_string(env.ws.config()).unwrap();
    std::fs::write(
        env.ws.config(),
        config.replace(
            "connector: intercom\n",
            "connector: intercom\n    api_version: \"2.15\\n\"\n",
        ),
    )
    .unwrap();
    let r = env
        .call("find_contact", serde_json::json!({"id": "1"}))
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("(fatal): the request could not be built"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("attempts"), "not retried: {}", r.stderr);
    assert!(env.sim().audit().is_empty(), "nothing is sent");
}
