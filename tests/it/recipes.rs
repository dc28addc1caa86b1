//! Recipes through the CLI: golden diagnostics for invalid recipes, the shipped library
//! (validation, coverage of every trigger and action, a dry run of each against the simulator)
//! and the editor schema.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;
use sluice::sim::Kind;

use crate::util::{root, run, run_async, sluice, SimEnv};

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/recipes/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_invalid_recipe_gets_its_golden_diagnostics() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let files = fixtures();
    assert!(
        files.len() >= 25,
        "at least 25 distinct mistakes, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root()).unwrap();
        let mut c = sluice();
        c.args([
            "--config",
            "tests/fixtures/recipes/sluice.yaml",
            "--connectors",
            "tests/fixtures/recipes/connectors",
            "validate",
        ])
        .arg(rel);
        let r = run(c);
        let stem = f.file_stem().unwrap().to_str().unwrap();
        let golden = root().join(format!("tests/golden/recipes/{stem}.expected"));
        if update {
            std::fs::write(&golden, &r.stderr).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if r.code != 1 {
            failures.push(format!("{stem}: exit {} (want 1)\n{}", r.code, r.stderr));
        } else if r.stderr != expected {
            failures.push(format!(
                "{stem}:\n--- expected\n{expected}--- actual\n{}",
                r.stderr
            ));
        }
        // Every problem names file:line:col and says how to fix it.
        let first = r.stderr.lines().next().unwrap_or("");
        let prefix = format!("{}:", rel.display());
        if !first.starts_with(&prefix)
            || first
                .split(':')
                .nth(1)
                .is_none_or(|l| l.parse::<usize>().is_err())
        {
            failures.push(format!("{stem}: first line has no file:line:col: {first}"));
        }
        if !r.stderr.contains("help:") && stem != "invalid_yaml" {
            failures.push(format!("{stem}: no help line:\n{}", r.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn many_mistakes_are_all_reported_at_once() {
    let mut c = sluice();
    c.args([
        "--config",
        "tests/fixtures/recipes/sluice.yaml",
        "--connectors",
        "tests/fixtures/recipes/connectors",
        "validate",
        "tests/fixtures/recipes/invalid/many_mistakes.yaml",
    ]);
    let r = run(c);
    assert_eq!(r.code, 1);
    for needle in [
        "no connection `intercomm`",
        "no trigger `new_tiket`",
        "unknown unit `fortnights`",
        "no input `nmae`",
        "`tag` is used twice",
        "no action `asign_tags`",
        "no step `later`",
        "input `body` must be text",
        "required input `name`",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            r.stderr
        );
    }
}

fn shipped() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn shipped_recipes_validate() {
    let mut c = sluice();
    c.args(["validate", "recipes/"]);
    let r = run(c);
    r.assert_ok();
    assert!(
        r.stdout.contains(&format!("{} recipe(s)", shipped().len())),
        "{}",
        r.stdout
    );
    // Default paths: connectors/ and recipes/.
    let mut c = sluice();
    c.arg("validate");
    run(c).assert_ok();
}

#[test]
fn shipped_recipes_use_every_trigger_and_action() {
    let mut triggers = BTreeSet::new();
    let mut actions = BTreeSet::new();
    for f in shipped() {
        let y: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let t = &y["trigger"];
        triggers.insert(
            t.as_str()
                .or_else(|| t["use"].as_str())
                .unwrap()
                .to_string(),
        );
        for s in y["steps"].as_sequence().unwrap() {
            actions.insert(s["action"].as_str().unwrap().to_string());
        }
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=./recipe.schema.json\n"),
            "{} lacks the schema line",
            f.display()
        );
    }
    let mut c = sluice();
    c.args(["connectors", "show", "intercom", "--json"]);
    let v = run(c).json();
    let all = |k: &str| -> BTreeSet<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|t| format!("intercom.{}", t["id"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(
        all("triggers").difference(&triggers).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "triggers not used by any recipe"
    );
    assert_eq!(
        all("actions").difference(&actions).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "actions not used by any recipe"
    );
    assert_eq!(all("actions").len(), 23);
}

#[test]
fn schema_command_matches_the_shipped_schema_file() {
    let mut c = sluice();
    c.arg("schema");
    let r = run(c);
    r.assert_ok();
    let file = std::fs::read_to_string(root().join("recipes/recipe.schema.json")).unwrap();
    assert_eq!(
        r.stdout, file,
        "regenerate with `sluice schema > recipes/recipe.schema.json`"
    );
    let schema = r.json();
    assert_eq!(schema["additionalProperties"], false);
    for k in ["id", "trigger", "schedule", "steps"] {
        assert!(
            schema["required"].as_array().unwrap().contains(&json!(k)),
            "{k}"
        );
    }
    // One connection or several: exactly one of the two keys.
    assert_eq!(
        schema["oneOf"],
        json!([{"required": ["connection"]}, {"required": ["connections"]}])
    );
    assert!(
        schema["properties"]["start_from"].is_object()
            && schema["properties"]["filter"].is_object()
    );
}

#[test]
fn dry_run_renders_typed_inputs_and_mocked_outputs_without_sending() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("s.json");
    std::fs::write(&sample, json!({
        "record": {"id": "633", "ticket_id": "40", "ticket_attributes": {"_default_title_": "Pay & ship"}, "contacts": {"contacts": [{"id": "c/1"}]}},
        "steps": {"triage_tag": {"id": "81", "name": "needs-triage"}}
    }).to_string()).unwrap();
    let mut c = sluice();
    c.args([
        "--config",
        "tests/fixtures/recipes/sluice.yaml",
        "--connectors",
        "tests/fixtures/recipes/connectors",
        "test",
        "recipes/new_ticket_triage.yaml",
        "--json",
        "--sample",
    ])
    .arg(&sample);
    c.env("INTERCOM_TOKEN", "dry-run-secret");
    let r = run(c);
    r.assert_ok();
    let plan = r.json();
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["mocked_output"], true);
    assert_eq!(
        steps[1]["requests"][0]["url"],
        "https://api.intercom.io/tickets/633/tags"
    );
    assert_eq!(
        steps[1]["requests"][0]["body"],
        json!({"id": "81", "admin_id": "991267700"})
    );
    assert_eq!(
        steps[1]["requests"][0]["headers"]["Authorization"],
        "Bearer ***"
    );
    assert_eq!(
        steps[2]["requests"][0]["url"],
        "https://api.intercom.io/contacts/c%2F1/notes"
    );
    assert_eq!(
        steps[2]["requests"][0]["body"]["body"],
        "Opened ticket #40: Pay & ship"
    );
    assert!(!r.stdout.contains("dry-run-secret"));

    // A missing field is an error that names it and what exists.
    std::fs::write(
        &sample,
        json!({"id": "633", "contacts": {"contacts": []}}).to_string(),
    )
    .unwrap();
    let mut c = sluice();
    c.args([
        "--config",
        "tests/fixtures/recipes/sluice.yaml",
        "--connectors",
        "tests/fixtures/recipes/connectors",
        "test",
        "recipes/new_ticket_triage.yaml",
        "--sample",
    ])
    .arg(&sample);
    let r = run(c);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("`record.contacts.contacts.0` does not exist")
            || r.stderr.contains("record.contacts.contacts.0.id"),
        "{}",
        r.stderr
    );
}

/// Makes the newest record of each recipe's trigger one that passes its filter, so the dry run
/// shows every step.
fn prepare(env: &SimEnv, recipe: &str) {
    let sim = env.sim();
    let now = sim.now();
    let contact = sim.records(Kind::Contact)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let later = now + 1;
    sim.advance_clock(5);
    match recipe {
        "contact_email_normalise" => {
            sim.patch(
                Kind::Contact,
                &contact,
                json!({"email": "Mixed.Case@Example.com", "updated_at": later}),
            )
            .unwrap();
        }
        "new_contact_welcome" | "new_contact_backup" => {
            sim.create(Kind::Contact, json!({"email": format!("new{later}@example.com"), "role": "user", "name": "New User", "created_at": later, "updated_at": later})).unwrap();
        }
        "company_tidy" | "company_upgrade" | "closed_company_cleanup" => {
            let company = sim
                .records(Kind::Company)
                .into_iter()
                .find(|c| c["user_count"].as_i64().unwrap_or(0) > 0)
                .unwrap();
            let id = company["id"].as_str().unwrap();
            let patch = match recipe {
                "company_tidy" => {
                    json!({"industry": null, "custom_attributes": {"owner_contact_id": contact}, "updated_at": later})
                }
                "company_upgrade" => {
                    json!({"monthly_spend": 5000, "plan": {"type": "plan", "id": "1", "name": "Pro"}, "updated_at": later})
                }
                _ => {
                    json!({"plan": {"type": "plan", "id": "9", "name": "Closed"}, "updated_at": later})
                }
            };
            sim.patch(Kind::Company, id, patch).unwrap();
        }
        "new_ticket_triage" | "ticket_resolved_followup" | "test_ticket_cleanup" => {
            let t = sim.create(Kind::Ticket, json!({"ticket_type_id": "100", "contact_id": contact, "created_at": later, "updated_at": later})).unwrap();
            let id = t["id"].as_str().unwrap();
            let patch = match recipe {
                "ticket_resolved_followup" => {
                    json!({"ticket_state": {"type": "ticket_state", "id": "8573", "category": "resolved", "internal_label": "Resolved", "external_label": "Resolved"}, "open": true, "updated_at": later})
                }
                "test_ticket_cleanup" => {
                    json!({"ticket_attributes": {"_default_title_": " Test "}, "updated_at": later})
                }
                _ => json!({"updated_at": later}),
            };
            sim.patch(Kind::Ticket, id, patch).unwrap();
        }
        "conversation_to_ticket" | "spam_conversation_cleanup" | "closed_conversation_read" => {
            let c = sim
                .create(
                    Kind::Conversation,
                    json!({"contact_id": contact, "created_at": later, "updated_at": later}),
                )
                .unwrap();
            let id = c["id"].as_str().unwrap();
            let patch = match recipe {
                "spam_conversation_cleanup" => {
                    json!({"custom_attributes": {"issue_type": "Spam"}, "updated_at": later})
                }
                "closed_conversation_read" => {
                    json!({"state": "closed", "open": false, "read": false, "updated_at": later})
                }
                _ => json!({"updated_at": later}),
            };
            sim.patch(Kind::Conversation, id, patch).unwrap();
        }
        other => panic!("no set-up for recipe {other}: add one"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_recipe_dry_runs_against_the_simulator() {
    let cfg = sluice::sim::SimConfig {
        start_time: chrono::Utc::now().timestamp() - 60,
        ..SimEnv::config(30, 5, 5, 5)
    };
    let env = SimEnv::start(cfg).await;
    // Both connections of the shipped recipes point at the simulator.
    std::fs::write(
        env.ws.config(),
        format!(
            "connections:\n  intercom:\n    connector: intercom\n    base_url: {u}\n    token: ${{env:INTERCOM_TOKEN}}\n  intercom_backup:\n    connector: intercom\n    base_url: {u}\n    token: ${{env:INTERCOM_TOKEN}}\n",
            u = env.handle.base_url
        ),
    )
    .unwrap();
    for f in shipped() {
        let name = f.file_stem().unwrap().to_str().unwrap().to_string();
        prepare(&env, &name);
        let before = env
            .sim()
            .audit()
            .iter()
            .filter(|e| e.method != "GET" && !e.path.ends_with("/search"))
            .count();
        let path = f.to_str().unwrap().to_string();
        let r = run_async(env.cmd(&["test", &path, "--sample-from", "intercom", "--json"])).await;
        r.assert_ok();
        let plan = r.json();
        assert_eq!(
            plan["passes_filter"], true,
            "{name}: the prepared record should pass the filter:\n{}",
            r.stdout
        );
        let steps = plan["steps"].as_array().unwrap();
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert_eq!(
            steps.len(),
            yaml["steps"].as_sequence().unwrap().len(),
            "{name}"
        );
        for s in steps {
            assert!(
                s["skipped"].is_string() || !s["requests"].as_array().unwrap().is_empty(),
                "{name}: step {} rendered no request",
                s["step"]
            );
            for req in s["requests"].as_array().unwrap() {
                assert!(
                    req["url"]
                        .as_str()
                        .unwrap()
                        .starts_with(&env.handle.base_url),
                    "{name}: {req}"
                );
            }
        }
        // A dry run writes nothing: only reads (GET /me, searches, scrolls) reached the simulator.
        let after = env
            .sim()
            .audit()
            .iter()
            .filter(|e| e.method != "GET" && !e.path.ends_with("/search"))
            .count();
        assert_eq!(before, after, "{name}: a dry run must not send writes");
    }
}
