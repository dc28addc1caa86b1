//! CLI conventions (issue 14): output into a closed pipe, `--json` on every command that
//! prints data, the run reports on stdout, dead-letter ids and their human view, argument and
//! file errors, `--fail-on-dead-letters`, shell completions, one entry of the reference.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::json;
use sluice::sim::Kind;

use crate::util::{golden, run, run_async, sluice, SimEnv, Workspace, T0};

/// Starts `c` with stdout piped, reads one line and closes the pipe, as `| head -n 1` does;
/// returns the exit code and stderr.
fn read_one_line_then_close(mut c: std::process::Command) -> (i32, String, String) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
        // Dropped here: the pipe's read end is closed.
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        first,
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // More than a pipe holds (64 KiB), so the writer meets the closed pipe.
    let mut full = sluice();
    full.args(["connectors", "show", "intercom"]);
    assert!(run(full).stdout.len() > 65_536, "output too small to test");
    let mut c = sluice();
    c.args(["connectors", "show", "intercom"]);
    let (code, stderr, first) = read_one_line_then_close(c);
    assert_eq!(first, "Intercom (intercom)\n");
    assert_eq!((code, stderr.as_str()), (0, ""), "no panic, no message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_into_a_closed_pipe_ends_quietly() {
    let env = SimEnv::start(SimEnv::config(600, 0, 0, 0)).await;
    let c = env.cmd(&[
        "poll",
        "intercom.new_contact",
        "--connection",
        "intercom",
        "--since",
        "0",
    ]);
    let (code, stderr, first) = tokio::task::spawn_blocking(move || read_one_line_then_close(c))
        .await
        .unwrap();
    assert!(first.starts_with('{'), "{first}");
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn an_invalid_log_filter_is_a_usage_error() {
    for bad in ["verbose", "sluice=loud", ""] {
        let mut c = sluice();
        c.args(["--log", bad, "connectors", "list"]);
        let r = run(c);
        assert_eq!(r.code, 2, "--log {bad:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with(&format!("error: --log `{bad}`")),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
    let mut c = sluice();
    c.env("SLUICE_LOG", "chatty").args(["connectors", "list"]);
    assert_eq!(run(c).code, 2, "SLUICE_LOG is checked too");
    for good in ["debug", "sluice=debug,warn", "WARN"] {
        let mut c = sluice();
        c.args(["--log", good, "connectors", "list"]);
        run(c).assert_ok();
    }
}

#[test]
fn a_config_file_given_but_missing_is_named() {
    for args in [
        &["validate"][..],
        &["run", "--once"],
        &["call", "intercom.find_contact", "--connection", "intercom"],
    ] {
        let mut c = sluice();
        c.args(["--config", "missing.yaml"]).args(args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("the config file `missing.yaml` does not exist"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // The default `sluice.yaml` may be absent, until a connection is needed.
    let dir = tempfile::tempdir().unwrap();
    let mut c = sluice();
    c.current_dir(dir.path()).args(["connectors", "list"]);
    run(c).assert_ok();
    let mut c = sluice();
    c.current_dir(dir.path())
        .args(["call", "intercom.find_contact", "--connection", "intercom"]);
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("no connection `intercom`: the config file `sluice.yaml` does not exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn resetting_a_recipe_without_state_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sluice();
    c.arg("--state-dir")
        .arg(dir.path())
        .args(["state", "reset", "--recipe", "no_such_recipe"]);
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "error: recipe `no_such_recipe` has no state to reset (see `sluice state show`)\n"
    );
}

#[test]
fn connectors_list_and_call_speak_json() {
    let mut c = sluice();
    c.args(["connectors", "list", "--json"]);
    let r = run(c);
    r.assert_ok();
    let v = r.json();
    assert_eq!(v[0]["id"], "intercom");
    assert!(v[0]["actions"]
        .as_array()
        .unwrap()
        .contains(&json!("create_contact")));
    assert!(v[0]["triggers"]
        .as_array()
        .unwrap()
        .contains(&json!("new_ticket")));

    let ws =
        Workspace::new("connections:\n  main:\n    connector: intercom\n    token: ${env:T}\n");
    let mut c = ws.sluice(&[
        "call",
        "intercom.find_contact",
        "--connection",
        "main",
        "--with",
        r#"{"id":"1"}"#,
        "--dry-run",
        "--json",
    ]);
    c.env("T", "secret-value");
    let r = run(c);
    r.assert_ok();
    assert_eq!(r.stdout.lines().count(), 1, "one line: {}", r.stdout);
    assert_eq!(r.json()["method"], "GET");
    assert!(!r.stdout.contains("secret-value"));
}

#[test]
fn one_entry_of_the_connector_reference() {
    let mut c = sluice();
    c.args(["connectors", "show", "intercom.create_tag"]);
    let r = run(c);
    r.assert_ok();
    golden("connectors_show_create_tag", &r.stdout);
    let mut c = sluice();
    c.args(["connectors", "show", "intercom.ticket_updated", "--json"]);
    let r = run(c);
    r.assert_ok();
    let v = r.json();
    assert_eq!(v["id"], "ticket_updated");
    assert!(v["outputs"]["tags"].is_object(), "{v}");
    let mut c = sluice();
    c.args(["connectors", "show", "intercom.create_tagg"]);
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("did you mean `intercom.create_tag`?"),
        "{}",
        r.stderr
    );
}

#[test]
fn shell_completions() {
    for (shell, marker) in [
        ("bash", "complete -F _sluice"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let mut c = sluice();
        c.args(["completions", shell]);
        let r = run(c);
        r.assert_ok();
        assert!(r.stdout.contains(marker), "{shell}: {}", &r.stdout[..200]);
        for word in ["dead-letters", "fail-on-dead-letters", "completions"] {
            assert!(r.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let mut c = sluice();
    c.args(["completions", "tcsh"]);
    assert_eq!(run(c).code, 2);
}

/// A recipe whose step fails for good for every new contact (no contact `0`).
const FAILS: &str = "id: fails\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: rename\n    action: intercom.update_contact\n    with:\n      id: \"0\"\n      name: \"{{record.email}}\"\n";

fn new_contact(env: &SimEnv, email: &str, ts: i64) {
    env.sim()
        .create(
            Kind::Contact,
            json!({"email": email, "role": "user", "created_at": ts, "updated_at": ts}),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_count_up_read_well_and_can_fail_a_run() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.write_recipe(FAILS);
    for i in 0..3 {
        new_contact(&env, &format!("c{i}@x.io"), T0 - 300 + i);
    }
    // A run with dead letters succeeds by default…
    let (r, reps) = env.run_once_in(None).await;
    r.assert_ok();
    assert_eq!(reps["fails"]["dead_letters"], 3);
    let list = env
        .sluice_in(&["dead-letters", "list", "--json"], None)
        .await;
    list.assert_ok();
    let ids: Vec<u64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "ids count up from 1");
    assert_eq!(list.json()[0]["failed_step"], "rename");

    // …and fails with --fail-on-dead-letters; ids go on after a dropped letter and a reopen.
    let dropped = env.sluice_in(&["dead-letters", "drop", "3"], None).await;
    dropped.assert_ok();
    new_contact(&env, "c3@x.io", T0 - 100);
    let r = env
        .sluice_in(&["run", "--once", "--fail-on-dead-letters"], None)
        .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("error: the run created 1 dead letter(s) (--fail-on-dead-letters)"),
        "{}",
        r.stderr
    );
    let r = env
        .sluice_in(&["run", "--once", "--fail-on-dead-letters"], None)
        .await;
    r.assert_ok();
    let list = env.sluice_in(&["dead-letters", "list"], None).await;
    let ids: Vec<&str> = list
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "4"], "{}", list.stdout);

    // `show` for people: what failed, the request, the record, what to do next.
    let show = env.sluice_in(&["dead-letters", "show", "4"], None).await;
    show.assert_ok();
    for want in [
        "dead letter 4\n",
        "  recipe      fails@intercom\n",
        "  step        rename\n",
        "  class       fatal\n",
        "  request     PUT /contacts/0 -> 404\n",
        "  done before none (replay starts at the first step)\n",
        "\"email\": \"c3@x.io\"",
        "next: `sluice dead-letters replay 4` runs it again from step `rename`",
    ] {
        assert!(show.stdout.contains(want), "{want:?} in\n{}", show.stdout);
    }
    assert!(!show.stdout.contains(crate::util::TOKEN));
    let json = env
        .sluice_in(&["dead-letters", "show", "4", "--json"], None)
        .await;
    assert_eq!(json.json()["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_follow_the_emitted_lines_on_stdout() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.write_recipe("id: out\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{record.email}}\"\n");
    new_contact(&env, "a@x.io", T0 - 10);
    let r = run_async({
        let mut c = env.cmd(&["run", "--once", "--json"]);
        c.arg("--recipes")
            .arg(env.ws.path().join("recipes"))
            .arg("--state-dir")
            .arg(env.ws.path().join("state"));
        c
    })
    .await;
    r.assert_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert_eq!(lines[0], "\"a@x.io\"");
    let reps: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(reps[0]["fired"], 1);
    assert!(
        !r.stderr.contains("\"fired\""),
        "not on stderr: {}",
        r.stderr
    );
}

#[test]
fn filters_on_a_tickets_tags_and_company_validate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tagged.yaml");
    let recipe = |filter: &str| {
        format!("id: tagged\nconnection: intercom\ntrigger: intercom.ticket_updated\nschedule:\n  every: 5m\nfilter: \"{filter}\"\nsteps:\n  - id: out\n    action: emit\n")
    };
    let validate = || {
        let mut c = sluice();
        c.arg("validate").arg(&file);
        run(c)
    };
    std::fs::write(
        &file,
        recipe("{{#if record.tags.tags}}{{record.company_id}}{{/if}}"),
    )
    .unwrap();
    let r = validate();
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::write(&file, recipe("{{record.tagz}}")).unwrap();
    let r = validate();
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("`record.tagz` is not a field of trigger `intercom.ticket_updated`"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_from_takes_a_record_that_passes_the_filter_or_the_one_named() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    let recipe = "id: vip\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nfilter: '{{eq record.name \"VIP\"}}'\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{record.email}}\"\n";
    env.write_recipe(recipe);
    let file = env.ws.path().join("recipes/vip.yaml");
    let file = file.to_str().unwrap();
    let mk = |email: &str, name: &str, ts: i64| {
        let c = env
            .sim()
            .create(
                Kind::Contact,
                json!({"email": email, "name": name, "role": "user", "created_at": ts, "updated_at": ts}),
            )
            .unwrap();
        c["id"].as_str().unwrap().to_string()
    };
    let vip = mk("vip@x.io", "VIP", T0 - 300);
    let newest = mk("plain@x.io", "Plain", T0 - 60);
    // The newest record fails the filter: the newest one that passes is shown.
    let r = run_async(env.cmd(&["test", file, "--sample-from", "intercom"])).await;
    r.assert_ok();
    assert!(
        r.stdout.contains(&format!("record {vip}")) && r.stdout.contains("emit to stdout"),
        "{}",
        r.stdout
    );
    // `--record` names one.
    let r = run_async(env.cmd(&[
        "test",
        file,
        "--sample-from",
        "intercom",
        "--record",
        &newest,
    ]))
    .await;
    r.assert_ok();
    assert!(
        r.stdout.contains(&format!("record {newest}"))
            && r.stdout.contains("filter: false for this record"),
        "{}",
        r.stdout
    );
    let r = run_async(env.cmd(&[
        "test",
        file,
        "--sample-from",
        "intercom",
        "--record",
        "nope",
    ]))
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no record `nope`"), "{}", r.stderr);
}

/// A sidecar's environment (`SLUICE_LISTEN`, …) does not stop `run --once` beside it; the
/// same options on `run --once`'s command line are a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_ignores_the_sidecars_environment_but_not_its_options() {
    let env = SimEnv::start(SimEnv::config(0, 0, 0, 0)).await;
    env.write_recipe("id: out\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 1m\nstart_from: \"2026-07-01\"\nsteps:\n  - id: out\n    action: emit\n    with:\n      value: \"{{record.email}}\"\n");
    new_contact(&env, "a@x.io", T0 - 10);
    let once = |extra: &[&str]| {
        let mut c = env.cmd(&["run", "--once", "--json"]);
        c.args(extra)
            .arg("--recipes")
            .arg(env.ws.path().join("recipes"))
            .arg("--state-dir")
            .arg(env.ws.path().join("state"));
        c
    };
    let mut c = once(&[]);
    c.env("SLUICE_LISTEN", "0.0.0.0:1")
        .env("SLUICE_PUBLIC_URL", "https://sluice.example.com")
        .env("SLUICE_SHUTDOWN_TIMEOUT", "5s")
        .env("SLUICE_MAX_CYCLES", "3");
    let r = run_async(c).await;
    r.assert_ok();
    assert!(r.stdout.starts_with("\"a@x.io\""), "{}", r.stdout);
    for flag in [
        ["--listen", "127.0.0.1:1"],
        ["--public-url", "https://sluice.example.com"],
        ["--shutdown-timeout", "5s"],
        ["--max-cycles", "3"],
    ] {
        let r = run_async(once(&flag)).await;
        assert_eq!(r.code, 2, "{flag:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("'--once' cannot be used with '{}'", flag[0])),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("Usage: sluice run"), "{}", r.stderr);
    }
}
