//! `sluice schema`: the editor schemas (issue 14, point 7). Every shipped recipe validates
//! against the recipe schema; the invalid fixtures whose mistake is schema-level (a key, a
//! name, a type, an allowed value, a pattern) are rejected by it as by `sluice validate`.

use std::path::Path;

use serde_json::Value;

use crate::util::{root, run, sluice};

fn schema(args: &[&str]) -> Value {
    let r = run({
        let mut c = sluice();
        c.arg("schema").args(args);
        c
    });
    r.assert_ok();
    r.json()
}

/// A YAML file as JSON, the way an editor's schema validation sees it.
fn yaml_as_json(file: &Path) -> Value {
    let text = std::fs::read_to_string(file).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(v).unwrap()
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_recipe_validates_against_the_schema() {
    let s = schema(&[]);
    let v = jsonschema::validator_for(&s).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(root().join("recipes")).unwrap() {
        let f = e.unwrap().path();
        if f.extension().is_some_and(|x| x == "yaml") {
            let errs = errors(&v, &yaml_as_json(&f));
            assert!(errs.is_empty(), "{}: {errs:#?}", f.display());
            n += 1;
        }
    }
    assert!(n >= 10, "{n}");
    // A fixture recipe with a warning only (validate passes it) passes the schema too.
    let f = root().join("tests/fixtures/recipes/warnings/note_on_every_update.yaml");
    assert_eq!(errors(&v, &yaml_as_json(&f)), Vec::<String>::new());
}

#[test]
fn the_schema_rejects_the_schema_level_mistakes_validate_rejects() {
    let r = run({
        let mut c = sluice();
        c.args([
            "--connectors",
            "tests/fixtures/recipes/connectors",
            "schema",
        ]);
        c
    });
    r.assert_ok();
    let v = jsonschema::validator_for(&r.json()).unwrap();
    let dir = root().join("tests/fixtures/recipes/invalid");
    // Each of these breaks a rule the schema can state; `validate` rejects all of them (the
    // golden test checks that).
    for (name, why) in [
        ("unknown_recipe_key", "Additional properties"),
        ("unknown_step_key", "Additional properties"),
        ("unknown_key_hides_nothing", "Additional properties"),
        ("unknown_action", "is not one of"),
        ("unknown_trigger", "is not"),
        ("unknown_connector", "is not"),
        ("unknown_input", "Additional properties"),
        ("missing_required_input", "is a required property"),
        ("value_not_allowed", ""),
        ("number_for_text", "is not of type"),
        ("quoted_number", ""),
        ("text_for_boolean", ""),
        ("text_for_list", ""),
        ("bad_on_error", "not valid under any of the schemas"),
        ("schedule_missing", "not valid under any of the schemas"),
        ("schedule_both", "valid under more than one of the schemas"),
        ("bad_interval", "does not match"),
        ("step_id_not_snake_case", "does not match"),
        ("wrong_types", ""),
        ("bad_trigger_option", ""),
        ("require_any_missing", ""),
    ] {
        let doc = yaml_as_json(&dir.join(format!("{name}.yaml")));
        let errs = errors(&v, &doc);
        assert!(!errs.is_empty(), "{name}: the schema accepts it");
        assert!(
            errs.iter().any(|e| e.contains(why)),
            "{name}: no error with {why:?}: {errs:#?}"
        );
    }
    // Mistakes that need more than one file or a compiled template are `validate`'s alone;
    // the schema accepts those recipes (it is never stricter than validate).
    for name in [
        "unknown_record_field",
        "later_step_reference",
        "unknown_helper",
        "id_not_file_name",
    ] {
        let doc = yaml_as_json(&dir.join(format!("{name}.yaml")));
        assert_eq!(errors(&v, &doc), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn the_schema_completes_names_inputs_and_ids() {
    let s = schema(&[]);
    let defs = &s["$defs"];
    let actions = defs["StepSpec"]["properties"]["action"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(actions.len(), 24, "23 Intercom actions and emit");
    assert!(actions.contains(&"intercom.assign_tags".into()));
    assert_eq!(s["properties"]["id"]["pattern"], "^[a-z][a-z0-9_]*$");
    assert_eq!(
        defs["StepSpec"]["properties"]["id"]["pattern"],
        "^[a-z][a-z0-9_]*$"
    );
    // Each action's inputs: types, descriptions, required ones, closed.
    let assign = defs["StepSpec"]["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["if"]["properties"]["action"]["const"] == "intercom.assign_tags")
        .unwrap();
    let with = &assign["then"]["properties"]["with"];
    assert_eq!(with["additionalProperties"], false);
    assert!(with["required"]
        .as_array()
        .unwrap()
        .contains(&"tag_ids".into()));
    assert!(!with["properties"]["tag_ids"]["description"]
        .as_str()
        .unwrap()
        .is_empty());
    // The long trigger form is closed.
    let long = &defs["TriggerRefSpec"]["anyOf"][1];
    assert_eq!(long["additionalProperties"], false);
    assert_eq!(long["required"], serde_json::json!(["use"]));
    // Per connector: only its names.
    let r = run({
        let mut c = sluice();
        c.args([
            "--connectors",
            "tests/fixtures/recipes/connectors",
            "schema",
            "--connector",
            "tinyapi",
        ]);
        c
    });
    r.assert_ok();
    let tiny = r.json();
    let names = tiny["$defs"]["StepSpec"]["properties"]["action"]["enum"]
        .as_array()
        .unwrap();
    assert!(names
        .iter()
        .all(|n| n.as_str().unwrap().starts_with("tinyapi.") || n == "emit"));
    let r = run({
        let mut c = sluice();
        c.args(["schema", "--connector", "intercon"]);
        c
    });
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `intercom`"), "{}", r.stderr);
}

#[test]
fn the_config_schema_accepts_the_shipped_config_and_rejects_mistakes() {
    let s = schema(&["config"]);
    let v = jsonschema::validator_for(&s).unwrap();
    for f in ["sluice.yaml", "tests/fixtures/recipes/sluice.yaml"] {
        let errs = errors(&v, &yaml_as_json(&root().join(f)));
        // The fixture names a second connector the shipped connectors lack.
        if f == "sluice.yaml" {
            assert!(errs.is_empty(), "{f}: {errs:#?}");
        }
    }
    for (yaml, why) in [
        (
            "connections:\n  a:\n    connector: intercom\n    regoin: eu\n",
            "Additional properties",
        ),
        (
            "connections:\n  a:\n    connector: intercomm\n",
            "is not one of",
        ),
        (
            "connections:\n  a:\n    connector: intercom\n    region: mars\n",
            "is not one of",
        ),
        (
            "connections:\n  a:\n    connector: intercom\n    timeout_secs: soon\n",
            "is not of type",
        ),
    ] {
        let doc: Value =
            serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(yaml).unwrap()).unwrap();
        let errs = errors(&v, &doc);
        assert!(errs.iter().any(|e| e.contains(why)), "{yaml}: {errs:#?}");
    }
}
