//! `sluice validate` and `sluice connectors`: every problem at once, with file:line:col.

use crate::util::{root, run, sluice};

#[test]
fn shipped_connectors_validate() {
    let r = run({
        let mut c = sluice();
        c.args(["validate", "connectors/"]);
        c
    });
    r.assert_ok();
    assert!(
        r.stdout
            .contains("ok: 1 connector(s), 7 trigger(s), 23 action(s), 0 recipe(s) in 1 file(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn fixture_connector_validates() {
    let r = run({
        let mut c = sluice();
        c.args(["validate", "tests/fixtures/connectors"]);
        c
    });
    r.assert_ok();
}

#[test]
fn every_problem_in_a_broken_connector_is_reported_with_its_position() {
    let r = run({
        let mut c = sluice();
        c.args(["validate", "tests/fixtures/invalid_connectors/broken.yaml"]);
        c
    });
    assert_eq!(r.code, 1, "{}", r.stderr);
    let expected =
        std::fs::read_to_string(crate::util::root().join("tests/golden/broken_connector.expected"))
            .unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(
            crate::util::root().join("tests/golden/broken_connector.expected"),
            &r.stderr,
        )
        .unwrap();
        return;
    }
    assert_eq!(r.stderr, expected, "actual:\n{}", r.stderr);
}

#[test]
fn syntax_error_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "id: bad\ntitle: [unclosed\n").unwrap();
    let r = run({
        let mut c = sluice();
        c.arg("validate").arg(&f);
        c
    });
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("bad.yaml:") && r.stderr.contains("error: this is not valid YAML"),
        "{}",
        r.stderr
    );
}

#[test]
fn zero_limits_are_refused_with_their_position() {
    let fixture = crate::util::root().join("tests/fixtures/connectors/hostile.yaml");
    let text = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("max_pages: 5", "max_pages: 0")
        .replace(
            "default_region: local\n",
            "default_region: local\nmax_response_mb: 0\n",
        );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hostile.yaml");
    std::fs::write(&f, text).unwrap();
    let r = run({
        let mut c = sluice();
        c.arg("validate").arg(&f);
        c
    });
    assert_eq!(r.code, 1);
    for want in [
        "hostile.yaml:8:1: error: `max_response_mb` must be at least 1",
        "hostile.yaml:31:7: error: `max_pages` must be at least 1",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
}

#[test]
fn missing_path_cannot_run() {
    let r = run({
        let mut c = sluice();
        c.args(["validate", "no/such/dir"]);
        c
    });
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
}

#[test]
fn connectors_show_json_lists_exactly_the_seven_triggers_and_23_actions() {
    let r = run({
        let mut c = sluice();
        c.args(["connectors", "show", "intercom", "--json"]);
        c
    });
    r.assert_ok();
    let v = r.json();
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut triggers = ids("triggers");
    triggers.sort();
    assert_eq!(
        triggers,
        [
            "contact_updated",
            "conversation_updated",
            "new_contact",
            "new_conversation",
            "new_or_updated_company",
            "new_ticket",
            "ticket_updated"
        ]
    );
    let mut actions = ids("actions");
    actions.sort();
    assert_eq!(
        actions,
        [
            "add_contact_to_company",
            "add_note_to_contact",
            "assign_tags",
            "convert_conversation_to_ticket",
            "create_contact",
            "create_conversation",
            "create_event",
            "create_or_update_company",
            "create_tag",
            "create_ticket",
            "delete_company",
            "delete_conversation",
            "delete_tag",
            "delete_ticket",
            "find_company",
            "find_contact",
            "find_conversation",
            "find_ticket",
            "remove_tags",
            "update_company",
            "update_contact",
            "update_conversation",
            "update_ticket",
        ]
    );
    // Every input is documented with type, required flag and description.
    for a in v["actions"].as_array().unwrap() {
        for (name, input) in a["inputs"].as_object().unwrap() {
            assert!(
                input["type"].is_string() && input["required"].is_boolean(),
                "{name}"
            );
            assert!(
                !input["description"].as_str().unwrap().is_empty(),
                "{} input {name} has no description",
                a["id"]
            );
            assert!(
                input.get("example").is_some(),
                "{} input {name} has no example",
                a["id"]
            );
        }
        assert!(!a["description"].as_str().unwrap().is_empty());
    }
    assert_eq!(v["api_version"]["default"], "2.15");
    assert_eq!(v["regions"]["eu"], "https://api.eu.intercom.io");
}

#[test]
fn connectors_show_text_and_list() {
    let r = run({
        let mut c = sluice();
        c.args(["connectors", "show", "intercom"]);
        c
    });
    r.assert_ok();
    assert!(r.stdout.contains("intercom.assign_tags — Assign tags"));
    assert!(r.stdout.contains("tag_ids") && r.stdout.contains("required"));
    let r = run({
        let mut c = sluice();
        c.args(["connectors", "show", "intercon"]);
        c
    });
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `intercom`"), "{}", r.stderr);
    let r = run({
        let mut c = sluice();
        c.args(["connectors", "list"]);
        c
    });
    r.assert_ok();
    assert!(r.stdout.contains("intercom") && r.stdout.contains("7 triggers, 23 actions"));
}

/// `validate` over one file of `tests/fixtures/recipes/warnings/`, compared with its golden
/// file (`UPDATE_GOLDEN=1` rewrites it).
fn warnings_golden(name: &str) -> crate::util::Run {
    let file = format!("tests/fixtures/recipes/warnings/{name}.yaml");
    let r = run({
        let mut c = sluice();
        c.args([
            "--config",
            "tests/fixtures/recipes/sluice.yaml",
            "--connectors",
            "tests/fixtures/recipes/connectors",
            "validate",
            &file,
        ]);
        c
    });
    r.assert_ok();
    let golden = crate::util::root().join(format!("tests/golden/{name}.expected"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &r.stderr).unwrap();
    }
    assert_eq!(r.stderr, std::fs::read_to_string(golden).unwrap());
    r
}

#[test]
fn a_recipe_that_feeds_its_own_trigger_without_a_filter_is_warned() {
    let r = warnings_golden("note_on_every_update");
    assert!(r.stderr.contains("warning:"), "{}", r.stderr);
    let r = warnings_golden("note_on_every_update_filtered");
    assert_eq!(r.stderr, "");
}

#[test]
fn a_templated_emit_path_is_a_warning_with_help() {
    let r = warnings_golden("emit_templated_to");
    assert!(r.stdout.contains("1 recipe(s)"), "{}", r.stdout);
}

#[test]
fn a_token_written_in_the_config_is_a_warning_and_a_line_break_in_it_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    std::fs::write(
        dir.path().join("recipes/fixed.yaml"),
        "id: fixed\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 5m\nsteps:\n  - id: out\n    action: emit\n",
    )
    .unwrap();
    let validate = |config: &str| {
        std::fs::write(dir.path().join("sluice.yaml"), config).unwrap();
        run({
            let mut c = sluice();
            c.current_dir(dir.path()).args(["validate", "recipes"]);
            c
        })
    };
    // From the environment: nothing to say.
    let r = validate(
        "connections:\n  intercom:\n    connector: intercom\n    token: ${env:INTERCOM_TOKEN}\n",
    );
    r.assert_ok();
    assert_eq!(r.stderr, "");
    // Written in the file: a located warning with help; validation still passes.
    let r = validate("connections:\n  intercom:\n    connector: intercom\n    token: abc123\n");
    r.assert_ok();
    assert_eq!(
        r.stderr,
        "sluice.yaml:4:5: warning: connection `intercom` has its token written in the file\n  help: use `${env:NAME}` so the token is not in a file (e.g. `token: ${env:INTERCOM_TOKEN}`)\n"
    );
    assert!(!r.stderr.contains("abc123"));
    // A line break can never be sent in a header: an error, the token still not shown.
    let r = validate(
        "connections:\n  intercom:\n    connector: intercom\n    token: \"abc123\\r\\n\"\n",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("\nsluice.yaml:4:5: error: connection `intercom`: token: it contains a line break (CR or LF)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("abc123"));
}

#[test]
fn the_config_is_checked_without_recipes_and_recipe_ids_are_unique_across_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.yaml"),
        "connections:\n  intercom:\n    connector: intercom\n    region: mars\n    token: ${env:T}\n",
    )
    .unwrap();
    let r = run({
        let mut c = sluice();
        c.current_dir(dir.path())
            .arg("validate")
            .arg(root().join("connectors"));
        c
    });
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("sluice.yaml:4:5: error: connection `intercom`: region `mars`"),
        "{}",
        r.stderr
    );
    // The same id in two folders.
    std::fs::write(
        dir.path().join("sluice.yaml"),
        "connections:\n  intercom:\n    connector: intercom\n    token: ${env:T}\n",
    )
    .unwrap();
    let recipe = "id: twice\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 5m\nsteps:\n  - id: out\n    action: emit\n";
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("twice.yaml"), recipe).unwrap();
    }
    let r = run({
        let mut c = sluice();
        c.current_dir(dir.path()).args(["validate", "a", "b"]);
        c
    });
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("b/twice.yaml:1:1: error: recipe id `twice` is also used by `a/twice.yaml`"),
        "{}",
        r.stderr
    );
}

/// A workspace with the shipped connectors' `sluice.yaml` shape and a recipe directory.
fn recipe_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.yaml"), config).unwrap();
    std::fs::create_dir(dir.path().join("recipes")).unwrap();
    dir
}

const CONFIG: &str =
    "connections:\n  intercom:\n    connector: intercom\n    token: ${env:INTERCOM_TOKEN}\n";

fn recipe(id: &str, extra: &str) -> String {
    format!(
        "id: {id}\nconnection: intercom\ntrigger: intercom.new_contact\nschedule:\n  every: 5m\n{extra}steps:\n  - id: out\n    action: emit\n"
    )
}

fn validate_in(dir: &std::path::Path, args: &[&str]) -> crate::util::Run {
    run({
        let mut c = sluice();
        c.current_dir(dir)
            .arg("--connectors")
            .arg(root().join("connectors"))
            .arg("validate")
            .args(args);
        c
    })
}

#[test]
fn issue_14_a_file_that_is_not_utf8_is_named_and_the_others_are_still_checked() {
    let dir = recipe_dir(CONFIG);
    let mut latin1 = b"id: caf".to_vec();
    latin1.push(0xe9); // `é` in Latin-1
    latin1.extend_from_slice(b"\n");
    std::fs::write(dir.path().join("recipes/cafe.yaml"), latin1).unwrap();
    std::fs::write(
        dir.path().join("recipes/other.yaml"),
        recipe("other", "concurrency: 0\n"),
    )
    .unwrap();
    let r = validate_in(dir.path(), &["recipes"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "recipes/cafe.yaml:1:8: error: the file is not UTF-8 text (byte 0xe9 here is not valid UTF-8)\n  help: save the file as UTF-8"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("recipes/other.yaml:6:1: error: concurrency 0 is outside 1 to 256"),
        "{}",
        r.stderr
    );
}

#[test]
fn issue_14_a_huge_file_is_refused_with_its_size_without_reading_it_all() {
    let dir = recipe_dir(CONFIG);
    let mut text = recipe("huge", "");
    text.push_str(&"# padding padding padding padding padding padding padding\n".repeat(170_000));
    std::fs::write(dir.path().join("recipes/huge.yaml"), &text).unwrap();
    assert!(text.len() > 9 << 20);
    let r = validate_in(dir.path(), &["recipes"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "recipes/huge.yaml:1:1: error: the file is 9.4 MiB; sluice reads connector, recipe and config files of at most 8 MiB"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn issue_14_a_byte_order_mark_and_merge_keys_are_accepted() {
    let dir = recipe_dir(CONFIG);
    let text = "\u{feff}id: merged\nconnection: intercom\ntrigger: intercom.new_contact\nschedule: &every\n  every: 5m\nsteps:\n  - &step\n    id: out\n    action: emit\n  - <<: *step\n    id: again\n";
    std::fs::write(dir.path().join("recipes/merged.yaml"), text).unwrap();
    let r = validate_in(dir.path(), &["recipes"]);
    r.assert_ok();
    assert!(r.stdout.contains("1 recipe(s)"), "{}", r.stdout);
    // A merge of something that is not a mapping is refused in words.
    std::fs::write(
        dir.path().join("recipes/merged.yaml"),
        text.replace("<<: *step", "<<: 5"),
    )
    .unwrap();
    let r = validate_in(dir.path(), &["recipes"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("error: a merge key (`<<`) cannot be applied")
            && !r.stderr.contains("did you mean"),
        "{}",
        r.stderr
    );
}

#[test]
fn issue_14_a_connections_unknown_connector_is_reported_in_the_config_not_on_the_recipe() {
    let dir = recipe_dir(
        "connections:\n  intercom:\n    connector: intercomm\n    token: ${env:INTERCOM_TOKEN}\n    timeout_secs: 0\n",
    );
    std::fs::write(dir.path().join("recipes/one.yaml"), recipe("one", "")).unwrap();
    let r = validate_in(dir.path(), &["recipes"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "sluice.yaml:3:5: error: connection `intercom` names connector `intercomm`, which is not loaded\n  help: did you mean `intercom`?\n1 error(s) in 1 file(s)\n"
    );
    // Every problem of the file in one pass: an unknown key does not hide a bad region.
    std::fs::write(
        dir.path().join("sluice.yaml"),
        "connections:\n  a:\n    connector: intercom\n    regoin: eu\n  b:\n    connector: intercom\n    region: mars\n    timeout_secs: 0\n",
    )
    .unwrap();
    let r = validate_in(dir.path(), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        "sluice.yaml:4:5: error: unknown key `regoin`\n  help: did you mean `region`?",
        "sluice.yaml:7:5: error: connection `b`: region `mars` is not one of connector `intercom`'s regions",
        "sluice.yaml:8:5: error: connection `b`: `timeout_secs` 0 is outside 1 to 600",
    ] {
        assert!(r.stderr.contains(want), "{want}\n{}", r.stderr);
    }
}

#[test]
fn issue_14_deny_warnings_fails_on_warnings() {
    let dir = recipe_dir("connections:\n  intercom:\n    connector: intercom\n    token: abc\n");
    std::fs::write(dir.path().join("recipes/one.yaml"), recipe("one", "")).unwrap();
    let r = validate_in(dir.path(), &["recipes"]);
    r.assert_ok();
    assert!(r
        .stderr
        .contains("warning: connection `intercom` has its token written"));
    let r = validate_in(dir.path(), &["--deny-warnings", "recipes"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .ends_with("1 warning(s), denied by --deny-warnings\n"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}

#[test]
fn issue_14_page_sizes_of_zero_are_refused() {
    let fixture = root().join("tests/fixtures/connectors/tinyapi.yaml");
    let text = std::fs::read_to_string(fixture).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tinyapi.yaml");
    let zero = regex_free_replace(&text, "page_size: ", "page_size: 0 #");
    std::fs::write(&f, zero).unwrap();
    let r = run({
        let mut c = sluice();
        c.arg("validate").arg(&f);
        c
    });
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "error: `page_size` must be at least 1: a page of 0 records never ends a poll"
        ),
        "{}",
        r.stderr
    );
}

/// Replaces the first occurrence only.
fn regex_free_replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?}");
    text.replacen(from, to, 1)
}
