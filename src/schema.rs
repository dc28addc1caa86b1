//! JSON Schemas for editors (yaml-language-server): recipe files, completed from the loaded
//! connectors, and `sluice.yaml`.
//!
//! Owns turning the serde shapes' generated schemas (schemars, from `spec`) into schemas that
//! complete what matters: trigger and action names as enums, each trigger's options and each
//! action's `with:` inputs with their types, descriptions and allowed values, ids with their
//! pattern, closed mappings. Does not decide what is valid: `plan` does, and a test keeps the
//! schema from rejecting what `sluice validate` accepts.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::plan::{Connector, Field, FieldType};
use crate::spec;

/// Recipe and step ids: snake_case, as `plan` requires.
pub const ID_PATTERN: &str = "^[a-z][a-z0-9_]*$";

/// A duration as `plan::parse_duration` reads it: a whole number and a unit.
pub const DURATION_PATTERN: &str =
    "^\\s*[0-9]+\\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days)\\s*$";

/// A string holding `{{`: a template, accepted wherever a value of another type is, since its
/// type is known only when it renders.
fn template() -> Value {
    json!({"type": "string", "pattern": "\\{\\{", "description": "A template, e.g. `{{record.email}}`."})
}

/// The schema of one typed field (an action input or a trigger option).
fn field(f: &Field) -> Value {
    let mut typed = match f.ty {
        FieldType::String => json!({"type": "string"}),
        FieldType::Integer | FieldType::Timestamp => json!({"type": "integer"}),
        FieldType::Number => json!({"type": "number"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::Object => json!({"type": "object"}),
        FieldType::Array => json!({"type": "array"}),
        FieldType::Any => json!({}),
    };
    if let Some(allowed) = &f.allowed {
        typed["enum"] = json!(allowed);
    }
    let mut out = match (f.ty, &f.allowed) {
        (FieldType::Any, _) => json!({}),
        // Any text is a valid template too.
        (FieldType::String, None) => typed,
        _ => json!({"anyOf": [typed, template()]}),
    };
    let mut description = f.description.clone();
    if f.ty == FieldType::Timestamp {
        description.push_str(" (Unix seconds)");
    }
    out["description"] = json!(description);
    if let Some(e) = &f.example {
        out["examples"] = json!([e]);
    }
    out
}

/// A closed mapping of typed fields.
fn fields(fs: &indexmap::IndexMap<String, Field>, description: &str) -> Value {
    let properties: Map<String, Value> = fs.iter().map(|(k, f)| (k.clone(), field(f))).collect();
    let required: Vec<&String> = fs
        .iter()
        .filter(|(_, f)| f.required)
        .map(|(k, _)| k)
        .collect();
    let mut s = json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

/// `if <key> is <name> then <then>`.
fn when(key: &str, name: &str, then: Value) -> Value {
    json!({
        "if": {"properties": {key: {"const": name}}, "required": [key]},
        "then": then,
    })
}

/// The JSON Schema of recipe files, completed from `connectors`.
pub fn recipe(connectors: &[Arc<Connector>]) -> Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(spec::RecipeSpec)).unwrap_or_default();
    schema["properties"]["id"]["pattern"] = json!(ID_PATTERN);
    // One connection, or several: exactly one of the two keys.
    schema["oneOf"] = json!([{"required": ["connection"]}, {"required": ["connections"]}]);
    let defs = &mut schema["$defs"];
    defs["StepSpec"]["properties"]["id"]["pattern"] = json!(ID_PATTERN);
    // A schedule is `every` or `cron`, one of them; `timezone` is for `cron`; durations are
    // what `plan::parse_duration` reads.
    let schedule = &mut defs["ScheduleSpec"];
    schedule["oneOf"] = json!([{"required": ["every"]}, {"required": ["cron"]}]);
    schedule["dependentRequired"] = json!({"timezone": ["cron"]});
    for k in ["every", "jitter"] {
        schedule["properties"][k]["pattern"] = json!(DURATION_PATTERN);
    }

    // Triggers: the short form (a name) or the long one (`use` and `with`), closed.
    let mut triggers = Vec::new();
    let mut options = Vec::new();
    for c in connectors {
        for (id, t) in &c.triggers {
            let name = format!("{}.{id}", c.id);
            options.push(when(
                "use",
                &name,
                json!({"properties": {"with": fields(&t.options, &format!("Options of `{name}`."))}}),
            ));
            triggers.push(name);
        }
    }
    let description = defs["TriggerRefSpec"]["description"].clone();
    defs["TriggerRefSpec"] = json!({
        "description": description,
        "anyOf": [
            {"type": "string", "enum": triggers, "description": "`<connector>.<trigger>`"},
            {
                "type": "object",
                "properties": {
                    "use": {"type": "string", "enum": triggers, "description": "`<connector>.<trigger>`"},
                    "with": {"type": "object", "description": "Trigger options."},
                },
                "required": ["use"],
                "additionalProperties": false,
                "allOf": options,
            }
        ]
    });

    // Actions: names, and each one's `with:` inputs.
    let mut actions = Vec::new();
    let mut inputs = Vec::new();
    for c in connectors {
        for (id, a) in &c.actions {
            let name = format!("{}.{id}", c.id);
            let mut with = fields(&a.inputs, &format!("Inputs of `{name}`: {}", a.title));
            if let Some(obj) = with.as_object_mut() {
                // A step may leave every input of one group out when the action says so.
                if !a.require_any.is_empty() {
                    let any: Vec<Value> = a
                        .require_any
                        .iter()
                        .map(|k| json!({"required": [k]}))
                        .collect();
                    obj.insert("anyOf".into(), json!(any));
                }
            }
            inputs.push(when("action", &name, json!({"properties": {"with": with}})));
            actions.push(json!(name));
        }
    }
    actions.push(json!("emit"));
    inputs.push(when(
        "action",
        "emit",
        json!({"properties": {"with": {
            "type": "object",
            "description": "Inputs of `emit`.",
            "properties": {
                "value": {"description": "What to write (default: the record)."},
                "to": {"type": "string", "description": "`stdout` (default), or a file path (JSON lines)."},
            },
            "additionalProperties": false,
        }}}),
    ));
    let step = &mut defs["StepSpec"];
    step["properties"]["action"]["enum"] = json!(actions);
    step["allOf"] = json!(inputs);
    schema
}

/// The JSON Schema of `sluice.yaml`, with the connectors and regions of `connectors`.
pub fn config(connectors: &[Arc<Connector>]) -> Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(spec::ConfigSpec)).unwrap_or_default();
    let ids: Vec<&str> = connectors.iter().map(|c| c.id.as_str()).collect();
    let conn = &mut schema["$defs"]["ConnectionSpec"];
    conn["properties"]["connector"]["enum"] = json!(ids);
    conn["allOf"] = json!(connectors
        .iter()
        .map(|c| {
            let regions: Vec<&String> = c.api.regions.keys().collect();
            when(
                "connector",
                &c.id,
                json!({"properties": {"region": {"enum": regions}}}),
            )
        })
        .collect::<Vec<_>>());
    schema
}

/// Pretty JSON text of a schema.
pub fn to_text(schema: &Value) -> String {
    serde_json::to_string_pretty(schema).unwrap_or_default()
}
