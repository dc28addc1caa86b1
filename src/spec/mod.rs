//! Spec: the serde shapes of connector files and `sluice.yaml`, and parsing them into those
//! shapes with located diagnostics.
//!
//! Owns reading YAML text into `*Spec` values and mapping serde errors to `Diagnostic`s with
//! file:line:col. Does not check meaning across fields or files; that is `plan`.

pub mod config;
pub mod connector;
pub mod recipe;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use crate::diag::{Diagnostic, LocationIndex};
pub use config::{ConfigSpec, ConnectionAuth, ConnectionSpec, HistorySpec, RetrySpec};
pub use connector::*;
pub use recipe::{
    ConnectionsSpec, OnErrorSpec, RecipeSpec, ScheduleSpec, StepSpec, TriggerRefSpec,
};

/// A parsed connector file.
#[derive(Debug, Clone)]
pub struct ConnectorSpec {
    /// Where it was read from.
    pub file: PathBuf,
    /// Field positions, for later diagnostics.
    pub index: LocationIndex,
    /// Everything but triggers and actions.
    pub header: ConnectorHeaderSpec,
    /// Trigger id → definition, in file order.
    pub triggers: IndexMap<String, TriggerSpec>,
    /// Action id → definition, in file order.
    pub actions: IndexMap<String, ActionSpec>,
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted by name.
pub fn yaml_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|f| matches!(f.extension().and_then(|s| s.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// The largest connector, recipe or config file sluice reads: 8 MiB. A recipe of 20,000 steps
/// is 1.4 MB; a bigger file is surely a mistake (a log or a dump), and refusing it before
/// parsing keeps memory bounded whatever is handed in.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Reads a YAML file as text: at most [`MAX_FILE_BYTES`] (no more is ever held in memory),
/// UTF-8 (a file that is not is one located diagnostic naming it, so the rest of a directory
/// is still checked), a leading byte-order mark dropped.
pub fn read_source(path: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let cannot = |e: std::io::Error| Diagnostic::error(path, format!("cannot read the file: {e}"));
    let f = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        return Err(too_large(path, size));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        }),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let before = &bytes[..valid];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            let mut d = Diagnostic::error(
                path,
                format!(
                    "the file is not UTF-8 text (byte 0x{:02x} here is not valid UTF-8)",
                    bytes[valid]
                ),
            )
            .help("save the file as UTF-8 (editors offer it under \"Save with encoding\")");
            d.span = Some((line, col));
            Err(d)
        }
    }
}

fn too_large(path: &Path, size: u64) -> Diagnostic {
    let mut d = Diagnostic::error(
        path,
        format!(
            "the file is {:.1} MiB; sluice reads connector, recipe and config files of at most {} MiB",
            size as f64 / (1 << 20) as f64,
            MAX_FILE_BYTES >> 20
        ),
    )
    .help("is this the right file? A recipe this large is better split into several recipes");
    d.span = Some((1, 1));
    d
}

/// Parses YAML text into a `serde_yaml::Value`, reporting a syntax error with its position.
/// Merge keys (`<<: *anchor`) are applied; a byte-order mark is ignored; a second document,
/// a repeated key and an oversized text are refused with their positions.
pub fn parse_yaml(file: &Path, text: &str) -> Result<serde_yaml::Value, Diagnostic> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(file, text.len() as u64));
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let msg = strip_loc(&e);
        let at = |span: Option<(usize, usize)>, message: String, help: &str| {
            let mut d = Diagnostic::error(file, message).help(help);
            d.span = Some(span.unwrap_or((1, 1)));
            d
        };
        if msg.contains("more than one document") {
            return at(
                LocationIndex::build(text).second_document(),
                "the file holds more than one YAML document (a second one starts here)".into(),
                "keep one definition per file: remove this `---` line and what follows, or move it to a file of its own",
            );
        }
        if msg.contains("duplicate entry with key") {
            let index = LocationIndex::build(text);
            if let Some((path, span)) = index.first_duplicate() {
                let key = path.rsplit('.').next().unwrap_or(path);
                return at(
                    Some(span),
                    format!("key `{key}` appears twice in the same mapping"),
                    "keep one of them: YAML allows each key once per mapping",
                );
            }
        }
        let mut d = Diagnostic::error(file, format!("this is not valid YAML: {msg}"))
            .help("check indentation and quoting around the position shown");
        d.span = e.location().map(|l| (l.line(), l.column()));
        d
    })?;
    value.apply_merge().map_err(|e| {
        let mut d = Diagnostic::error(
            file,
            format!("a merge key (`<<`) cannot be applied: {}", strip_loc(&e)),
        )
        .help("`<<:` takes an alias of a mapping (`<<: *defaults`) or a list of them");
        d.span = Some((1, 1));
        d
    })?;
    Ok(value)
}

/// Refuses (and removes) mapping keys that are not text anywhere in `value`: `1:`, `true:`,
/// `[a, b]:`. serde would read a number key as a field *index*, silently.
fn take_non_text_keys(
    file: &Path,
    index: &LocationIndex,
    path: &str,
    value: &mut serde_yaml::Value,
    diags: &mut Vec<Diagnostic>,
) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match value {
        serde_yaml::Value::Mapping(m) => {
            let bad: Vec<serde_yaml::Value> =
                m.keys().filter(|k| !k.is_string()).cloned().collect();
            for k in bad {
                m.remove(&k);
                let shown = match &k {
                    serde_yaml::Value::Null => "~".to_string(),
                    serde_yaml::Value::Bool(b) => b.to_string(),
                    serde_yaml::Value::Number(n) => n.to_string(),
                    _ => "?".to_string(),
                };
                let (message, help) = if shown == "?" {
                    (
                        "a key must be text, not a list or a mapping".to_string(),
                        "write a plain name before the `:`".to_string(),
                    )
                } else {
                    (
                        format!(
                            "key `{shown}` is not text (YAML reads it as a {})",
                            yaml_kind(&k)
                        ),
                        format!("put it in quotes if it is meant as a name: `'{shown}': …`"),
                    )
                };
                diags.push(
                    Diagnostic::error(file, message)
                        .at(index, &join(&shown))
                        .help(help),
                );
            }
            for (k, v) in m.iter_mut() {
                if let Some(k) = k.as_str() {
                    take_non_text_keys(file, index, &join(k), v, diags);
                }
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                take_non_text_keys(file, index, &join(&i.to_string()), v, diags);
            }
        }
        serde_yaml::Value::Tagged(t) => take_non_text_keys(file, index, path, &mut t.value, diags),
        _ => {}
    }
}

fn yaml_kind(v: &serde_yaml::Value) -> &'static str {
    match v {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "boolean",
        serde_yaml::Value::Number(_) => "number",
        serde_yaml::Value::String(_) => "text",
        serde_yaml::Value::Sequence(_) => "list",
        serde_yaml::Value::Mapping(_) => "mapping",
        serde_yaml::Value::Tagged(_) => "tagged value",
    }
}

/// A diagnostic for an empty or comment-only file, at 1:1.
fn empty_file(file: &Path, text: &str, what: &str, first_key: &str) -> Diagnostic {
    let only_comments = text.lines().any(|l| l.trim_start().starts_with('#'));
    let msg = if only_comments {
        format!("the file holds only comments; a {what} file needs its definition")
    } else {
        format!("the file is empty; a {what} file needs its definition")
    };
    Diagnostic::error(file, msg)
        .at(&LocationIndex::default(), "")
        .help(format!("start with `{first_key}`"))
}

/// Deserialises `value` (found at `path` in the file) as `T`, reporting every problem serde
/// finds, each placed at its field: a key that does not belong is removed and the rest read
/// again, so one unknown key hides nothing; a value of the wrong type is reported and removed
/// too, so the other fields are still checked. `T` is returned only when nothing but unknown
/// keys was wrong (checks that build on a half-read value would only add noise).
pub fn from_value<T: DeserializeOwned>(
    file: &Path,
    index: &LocationIndex,
    path: &str,
    mut value: serde_yaml::Value,
) -> (Option<T>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut complete = true;
    // Fields removed because their value was wrong: their "missing" error says nothing new.
    let mut removed: Vec<String> = Vec::new();
    // Every round removes one entry, so this ends; the bound is a backstop.
    for _ in 0..1000 {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(t) => return (complete.then_some(t), diags),
            Err(e) => e,
        };
        let mut segs: Vec<String> = Vec::new();
        for seg in e.path().iter() {
            use serde_path_to_error::Segment;
            match seg {
                Segment::Seq { index } => segs.push(index.to_string()),
                Segment::Map { key } => segs.push(key.clone()),
                Segment::Enum { .. } | Segment::Unknown => {}
            }
        }
        let rel = segs.join(".");
        let at = match (path.is_empty(), rel.is_empty()) {
            (true, _) => rel.clone(),
            (false, true) => path.to_string(),
            (false, false) => format!("{path}.{rel}"),
        };
        let inner = strip_loc(e.inner());
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            let full = if rel.is_empty() {
                field.to_string()
            } else {
                format!("{rel}.{field}")
            };
            if !removed.contains(&full) {
                diags.push(
                    Diagnostic::error(file, format!("required key `{field}` is missing"))
                        .at(index, &at)
                        .help(format!("add `{field}:` here")),
                );
            }
            return (None, diags);
        }
        let (message, help) = explain_serde(&inner, segs.last().map(String::as_str));
        let mut d = Diagnostic::error(file, message).at(index, &at);
        d.help = help;
        diags.push(d);
        if inner.starts_with("unknown field") && fix_typo(&mut value, &segs, &inner).is_some() {
            continue;
        }
        // Remove the innermost mapping entry on the path (list items stay, so the indexes
        // of later errors still point at the right item).
        let mut k = segs.len();
        while k > 0 && !remove_key(&mut value, &segs[..k]) {
            k -= 1;
        }
        if k == 0 {
            return (None, diags);
        }
        if !inner.starts_with("unknown field") {
            complete = false;
            removed.push(segs[..k].join("."));
        }
    }
    (None, diags)
}

/// The mapping that holds the entry at `segs` (keys and list indexes on the way).
fn parent_mapping<'v>(
    v: &'v mut serde_yaml::Value,
    segs: &[String],
) -> Option<&'v mut serde_yaml::Mapping> {
    let (_, parents) = segs.split_last()?;
    let mut cur = v;
    for s in parents {
        cur = match cur {
            serde_yaml::Value::Mapping(m) => m.get_mut(s.as_str())?,
            serde_yaml::Value::Sequence(items) => items.get_mut(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match cur {
        serde_yaml::Value::Mapping(m) => Some(m),
        _ => None,
    }
}

/// Removes the mapping entry at `segs` from `v`.
fn remove_key(v: &mut serde_yaml::Value, segs: &[String]) -> bool {
    let Some(last) = segs.last() else {
        return false;
    };
    parent_mapping(v, segs).is_some_and(|m| m.remove(last.as_str()).is_some())
}

/// For an unknown key that is a likely typo of an allowed key the mapping lacks (`wiht` for
/// `with`): renames it, so the checks that follow read what was meant. Returns the new name.
fn fix_typo(v: &mut serde_yaml::Value, segs: &[String], msg: &str) -> Option<String> {
    let (word, options) = unknown_word(msg)?;
    let best = did_you_mean(word, options.iter().copied())?;
    let m = parent_mapping(v, segs)?;
    if m.contains_key(best) {
        return None;
    }
    let value = m.remove(segs.last()?.as_str())?;
    m.insert(best.into(), value);
    Some(best.to_string())
}

/// Parses a connector file, reading each trigger and action separately so that every problem in
/// the file is reported, not only the first.
pub fn parse_connector(file: &Path, text: &str) -> (Option<ConnectorSpec>, Vec<Diagnostic>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut diags = Vec::new();
    let mut value = match parse_yaml(file, text) {
        Ok(serde_yaml::Value::Null) => {
            return (
                None,
                vec![empty_file(file, text, "connector", "id: <connector id>")],
            )
        }
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let index = LocationIndex::build(text);
    take_non_text_keys(file, &index, "", &mut value, &mut diags);
    let serde_yaml::Value::Mapping(mut map) = value else {
        let d = Diagnostic::error(file, "a connector file must be a YAML mapping (key: value)")
            .at(&index, "")
            .help("start the file with `id: <connector id>`");
        return (None, vec![d]);
    };
    let mut triggers = IndexMap::new();
    let mut actions = IndexMap::new();
    for (section, is_trigger) in [("triggers", true), ("actions", false)] {
        let Some(v) = map.remove(section) else {
            diags.push(
                Diagnostic::error(file, format!("the connector has no `{section}` section"))
                    .at(&index, "")
                    .help(format!("add `{section}:` with at least one entry")),
            );
            continue;
        };
        let serde_yaml::Value::Mapping(entries) = v else {
            diags.push(
                Diagnostic::error(file, format!("`{section}` must map ids to definitions"))
                    .at(&index, section)
                    .help(format!(
                        "write each entry as `<id>:` indented under `{section}:`"
                    )),
            );
            continue;
        };
        for (k, v) in entries {
            let Some(name) = k.as_str().map(str::to_string) else {
                continue; // reported by `take_non_text_keys`
            };
            let path = format!("{section}.{name}");
            if is_trigger {
                let (t, d) = from_value::<TriggerSpec>(file, &index, &path, v);
                diags.extend(d);
                if let Some(t) = t {
                    triggers.insert(name, t);
                }
            } else {
                let (a, d) = from_value::<ActionSpec>(file, &index, &path, v);
                diags.extend(d);
                if let Some(a) = a {
                    actions.insert(name, a);
                }
            }
        }
    }
    let (header, d) =
        from_value::<ConnectorHeaderSpec>(file, &index, "", serde_yaml::Value::Mapping(map));
    diags.extend(d);
    // An entry that did not parse is left out (and reported); the others are still checked:
    // they do not refer to each other the way a recipe's steps do.
    let spec = header.map(|header| ConnectorSpec {
        file: file.to_path_buf(),
        index,
        header,
        triggers,
        actions,
    });
    (spec, diags)
}

/// A parsed recipe file with its positions.
#[derive(Debug, Clone)]
pub struct ParsedRecipe {
    /// Where it was read from.
    pub file: PathBuf,
    /// Field positions.
    pub index: LocationIndex,
    /// The recipe.
    pub spec: RecipeSpec,
}

/// Parses a recipe file, reading each step separately so every broken step is reported. The
/// recipe is returned (for the checks of `plan`) when what was wrong were keys that do not
/// belong, which are reported and left out.
pub fn parse_recipe(file: &Path, text: &str) -> (Option<ParsedRecipe>, Vec<Diagnostic>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut value = match parse_yaml(file, text) {
        Ok(serde_yaml::Value::Null) => {
            return (
                None,
                vec![empty_file(file, text, "recipe", "id: <recipe id>")],
            )
        }
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let index = LocationIndex::build(text);
    let mut diags = Vec::new();
    take_non_text_keys(file, &index, "", &mut value, &mut diags);
    let serde_yaml::Value::Mapping(mut map) = value else {
        let d = Diagnostic::error(file, "a recipe file must be a YAML mapping (key: value)")
            .at(&index, "")
            .help("start the file with `id: <recipe id>`");
        return (None, vec![d]);
    };
    let mut steps = Vec::new();
    let mut complete = diags.is_empty();
    match map.remove("steps") {
        Some(serde_yaml::Value::Sequence(items)) => {
            for (i, v) in items.into_iter().enumerate() {
                let (s, d) = from_value::<StepSpec>(file, &index, &format!("steps.{i}"), v);
                diags.extend(d);
                match s {
                    Some(s) => steps.push(s),
                    None => complete = false,
                }
            }
        }
        Some(_) => {
            complete = false;
            diags.push(
                Diagnostic::error(file, "`steps` must be a list of steps")
                    .at(&index, "steps")
                    .help("write each step as `- id: …` on its own line under `steps:`"),
            )
        }
        None => {
            complete = false;
            diags.push(
                Diagnostic::error(file, "the recipe has no `steps`")
                    .at(&index, "")
                    .help("add `steps:` with at least one `- id: …, action: …` entry"),
            )
        }
    }
    map.insert("steps".into(), serde_yaml::Value::Sequence(vec![]));
    let (spec, d) = from_value::<RecipeSpec>(file, &index, "", serde_yaml::Value::Mapping(map));
    diags.extend(d);
    match spec {
        Some(mut spec) if complete => {
            spec.steps = steps;
            (
                Some(ParsedRecipe {
                    file: file.to_path_buf(),
                    index,
                    spec,
                }),
                diags,
            )
        }
        _ => (None, diags),
    }
}

/// Whether a YAML file looks like a connector (rather than a recipe): it has `triggers`,
/// `actions` or `regions` at the top.
pub fn looks_like_connector(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("triggers:") || l.starts_with("actions:") || l.starts_with("regions:")
    })
}

/// Parses `sluice.yaml` (an empty file is a configuration without connections). The spec is
/// returned, with every problem found, when what was wrong were keys that do not belong.
pub fn parse_config(
    file: &Path,
    text: &str,
) -> (Option<(ConfigSpec, LocationIndex)>, Vec<Diagnostic>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut value = match parse_yaml(file, text) {
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let index = LocationIndex::build(text);
    if value.is_null() {
        return (Some((ConfigSpec::default(), index)), vec![]);
    }
    let mut diags = Vec::new();
    take_non_text_keys(file, &index, "", &mut value, &mut diags);
    let (spec, d) = from_value::<ConfigSpec>(file, &index, "", value);
    diags.extend(d);
    (spec.map(|s| (s, index)), diags)
}

/// Parses a connection file (`<connections dir>/<name>.yaml`): one connection, the fields of
/// a `sluice.yaml` connection.
pub fn parse_connection_file(
    file: &Path,
    text: &str,
) -> (Option<(ConnectionSpec, LocationIndex)>, Vec<Diagnostic>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut value = match parse_yaml(file, text) {
        Ok(serde_yaml::Value::Null) => {
            return (
                None,
                vec![empty_file(file, text, "connection", "connector: intercom")],
            )
        }
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let index = LocationIndex::build(text);
    let mut diags = Vec::new();
    take_non_text_keys(file, &index, "", &mut value, &mut diags);
    let (spec, d) = from_value::<ConnectionSpec>(file, &index, "", value);
    diags.extend(d);
    (spec.map(|s| (s, index)), diags)
}

/// Removes serde_yaml's " at line X column Y" suffix (positions are shown by the diagnostic).
fn strip_loc(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Rewrites serde's wording into a sentence a user can act on, with a `help:` line: no Rust
/// type names (`u32`, `ScheduleSpec`), the allowed keys or values with a "did you mean".
fn explain_serde(msg: &str, field: Option<&str>) -> (String, Option<String>) {
    let name = match field {
        Some(f) if f.parse::<usize>().is_err() => format!("`{f}`"),
        Some(i) => format!("item {i}"),
        None => "this".to_string(),
    };
    let key = field
        .filter(|f| f.parse::<usize>().is_err())
        .unwrap_or("key");
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let field = rest.split(',').next().unwrap_or(rest);
        return (format!("unknown key {field}"), serde_help(msg));
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let v = rest.split(',').next().unwrap_or(rest);
        return (format!("{name} cannot be {v}"), serde_help(msg));
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let (want, help) = plain_expected(expected, key);
            return (
                format!("{name} must be {want}, not {}", plain_found(found)),
                Some(help),
            );
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let (want, help) = plain_expected(expected, key);
            let range = match expected {
                "u8" => " from 0 to 255",
                "u16" => " from 0 to 65535",
                "u32" => " from 0 to 4294967295",
                "u64" | "usize" => " of 0 or more",
                _ => "",
            };
            return (
                format!("{name} must be {want}{range}, not {}", plain_found(found)),
                Some(help),
            );
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid length ") {
        return (
            format!("{name} has the wrong number of items ({rest})"),
            Some("see the reference for what this list takes".into()),
        );
    }
    (msg.to_string(), None)
}

/// What serde found, in words: `string "x"` → `text ("x")`, `integer `5`` → `the number 5`.
fn plain_found(found: &str) -> String {
    let tick = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = found.strip_prefix("string ") {
        format!("the text {s}")
    } else if let Some(n) = found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
    {
        format!("the number {}", tick(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        format!("`{}`", tick(b))
    } else {
        match found {
            "sequence" => "a list".into(),
            "map" => "a mapping".into(),
            "unit value" | "null" => "empty".into(),
            other => other.to_string(),
        }
    }
}

/// What serde expected, in words, and a `help:` line showing how to write it.
fn plain_expected(expected: &str, key: &str) -> (String, String) {
    let whole = matches!(
        expected,
        "u8" | "u16"
            | "u32"
            | "u64"
            | "u128"
            | "usize"
            | "i8"
            | "i16"
            | "i32"
            | "i64"
            | "i128"
            | "isize"
    );
    if whole {
        return (
            "a whole number".into(),
            format!("write the number without quotes, e.g. `{key}: 5`"),
        );
    }
    match expected {
        "f32" | "f64" => (
            "a number".into(),
            format!("write the number without quotes, e.g. `{key}: 0.5`"),
        ),
        "a string" | "string" => (
            "text".into(),
            format!("put the value in quotes, e.g. `{key}: \"…\"`"),
        ),
        "a boolean" => (
            "`true` or `false`".into(),
            format!("write `{key}: true` or `{key}: false`"),
        ),
        "a sequence" => (
            "a list".into(),
            format!("write `{key}: [a, b]`, or one `- item` per line under `{key}:`"),
        ),
        "struct ScheduleSpec" => (
            "a mapping with `every` or `cron`".into(),
            "write `schedule:` and, indented on the next line, `every: 5m` (or `cron: \"*/5 * * * *\"`)".into(),
        ),
        "struct StepSpec" => (
            "a step (a mapping with `id` and `action`)".into(),
            "write each step as `- id: …` with `action: …` on the line below".into(),
        ),
        other if other == "a map" || other.starts_with("struct ") || other.contains("map") => (
            "a mapping (`key: value` lines)".into(),
            format!("write `{key}:` and its keys indented on the lines below"),
        ),
        other if other.contains("enum") => (
            "one word from the allowed values".into(),
            "see the reference (`sluice connectors show`, recipes/README.md) for the values".into(),
        ),
        other => (
            other.to_string(),
            format!("see recipes/README.md for how to write `{key}`"),
        ),
    }
}

/// The word of an "unknown field/variant" error and the allowed ones.
fn unknown_word(msg: &str) -> Option<(&str, Vec<&str>)> {
    let (word, expected) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        rest.split_once('`')?
    } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
        rest.split_once('`')?
    } else {
        return None;
    };
    let options = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    Some((word, options))
}

/// A `help:` line for an unknown key or value: the allowed ones, with a "did you mean".
fn serde_help(msg: &str) -> Option<String> {
    let (word, options) = unknown_word(msg)?;
    if options.is_empty() {
        return Some("remove it".into());
    }
    Some(match did_you_mean(word, options.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? (allowed: {})", options.join(", ")),
        None => format!("allowed: {}", options.join(", ")),
    })
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str =
        "id: t\ntitle: T\nregions: {us: 'http://x'}\ndefault_region: us\nauth: [{kind: bearer}]\n";

    #[test]
    fn every_broken_entry_is_reported() {
        let text = format!(
            "{MINI}triggers:\n  a:\n    titel: x\nactions:\n  b:\n    title: B\n    description: d\n    methd: GET\n"
        );
        let (_spec, diags) = parse_connector(Path::new("c.yaml"), &text);
        // The typo is read as what it meant (`title`), so the trigger's missing keys are
        // reported too; the action's unknown key is reported as well.
        assert_eq!(diags.len(), 3, "{diags:#?}");
        assert_eq!(diags[0].span, Some((8, 5)));
        assert!(
            diags[0].message.contains("unknown key `titel`"),
            "{}",
            diags[0]
        );
        assert!(diags[0]
            .help
            .as_deref()
            .unwrap()
            .contains("did you mean `title`"));
        assert_eq!(diags[1].message, "required key `description` is missing");
        assert_eq!(diags[1].span, Some((7, 3)));
        assert!(diags[2].message.contains("unknown key `methd`"));
        assert_eq!(diags[2].span, Some((13, 5)));
    }

    #[test]
    fn syntax_error_has_position() {
        let (_s, d) = parse_connector(Path::new("c.yaml"), "id: [\n");
        assert_eq!(d.len(), 1);
        assert!(d[0].span.is_some());
        assert!(d[0].message.starts_with("this is not valid YAML"));
    }
}
