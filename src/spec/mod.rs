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
pub use config::{ConfigSpec, ConnectionSpec, HistorySpec, RetrySpec};
pub use connector::*;
pub use recipe::{OnErrorSpec, RecipeSpec, ScheduleSpec, StepSpec, TriggerRefSpec};

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

/// Parses YAML text into a `serde_yaml::Value`, reporting a syntax error with its position.
pub fn parse_yaml(file: &Path, text: &str) -> Result<serde_yaml::Value, Diagnostic> {
    serde_yaml::from_str(text).map_err(|e| {
        let mut d = Diagnostic::error(file, format!("this is not valid YAML: {}", strip_loc(&e)))
            .help("check indentation and quoting around the position shown");
        d.span = e.location().map(|l| (l.line(), l.column()));
        d
    })
}

/// Deserialises `value` (found at `path` in the file) as `T`, mapping any error to a diagnostic
/// placed at the offending field.
pub fn from_value<T: DeserializeOwned>(
    file: &Path,
    index: &LocationIndex,
    path: &str,
    value: serde_yaml::Value,
) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut at = path.to_string();
        for seg in e.path().iter() {
            use serde_path_to_error::Segment;
            let s = match seg {
                Segment::Seq { index } => index.to_string(),
                Segment::Map { key } => key.clone(),
                Segment::Enum { variant } => variant.clone(),
                Segment::Unknown => continue,
            };
            if !at.is_empty() {
                at.push('.');
            }
            at.push_str(&s);
        }
        let inner = strip_loc(e.inner());
        let help = serde_help(&inner);
        let mut d = Diagnostic::error(file, explain_serde(&inner)).at(index, &at);
        d.help = help;
        d
    })
}

/// Parses a connector file, reading each trigger and action separately so that every problem in
/// the file is reported, not only the first.
pub fn parse_connector(file: &Path, text: &str) -> (Option<ConnectorSpec>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let value = match parse_yaml(file, text) {
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let index = LocationIndex::build(text);
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
                    .at(&index, section),
            );
            continue;
        };
        for (k, v) in entries {
            let Some(name) = k.as_str().map(str::to_string) else {
                diags.push(
                    Diagnostic::error(file, format!("`{section}` keys must be plain names"))
                        .at(&index, section),
                );
                continue;
            };
            let path = format!("{section}.{name}");
            if is_trigger {
                match from_value::<TriggerSpec>(file, &index, &path, v) {
                    Ok(t) => {
                        triggers.insert(name, t);
                    }
                    Err(d) => diags.push(d),
                }
            } else {
                match from_value::<ActionSpec>(file, &index, &path, v) {
                    Ok(a) => {
                        actions.insert(name, a);
                    }
                    Err(d) => diags.push(d),
                }
            }
        }
    }
    let header = match from_value::<ConnectorHeaderSpec>(
        file,
        &index,
        "",
        serde_yaml::Value::Mapping(map),
    ) {
        Ok(h) => Some(h),
        Err(d) => {
            diags.push(d);
            None
        }
    };
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

/// Parses a recipe file, reading each step separately so every broken step is reported.
pub fn parse_recipe(file: &Path, text: &str) -> (Option<ParsedRecipe>, Vec<Diagnostic>) {
    let value = match parse_yaml(file, text) {
        Ok(v) => v,
        Err(d) => return (None, vec![d]),
    };
    let index = LocationIndex::build(text);
    let serde_yaml::Value::Mapping(mut map) = value else {
        let d = Diagnostic::error(file, "a recipe file must be a YAML mapping (key: value)")
            .at(&index, "")
            .help("start the file with `id: <recipe id>`");
        return (None, vec![d]);
    };
    let mut diags = Vec::new();
    let mut steps = Vec::new();
    match map.remove("steps") {
        Some(serde_yaml::Value::Sequence(items)) => {
            for (i, v) in items.into_iter().enumerate() {
                match from_value::<StepSpec>(file, &index, &format!("steps.{i}"), v) {
                    Ok(s) => steps.push(s),
                    Err(d) => diags.push(d),
                }
            }
        }
        Some(_) => diags.push(
            Diagnostic::error(file, "`steps` must be a list of steps")
                .at(&index, "steps")
                .help("write each step as `- id: …` on its own line under `steps:`"),
        ),
        None => diags.push(
            Diagnostic::error(file, "the recipe has no `steps`")
                .at(&index, "")
                .help("add `steps:` with at least one `- id: …, action: …` entry"),
        ),
    }
    map.insert("steps".into(), serde_yaml::Value::Sequence(vec![]));
    match from_value::<RecipeSpec>(file, &index, "", serde_yaml::Value::Mapping(map)) {
        Ok(mut spec) if diags.is_empty() => {
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
        Ok(_) => (None, diags),
        Err(d) => {
            diags.push(d);
            (None, diags)
        }
    }
}

/// Whether a YAML file looks like a connector (rather than a recipe): it has `triggers`,
/// `actions` or `regions` at the top.
pub fn looks_like_connector(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("triggers:") || l.starts_with("actions:") || l.starts_with("regions:")
    })
}

/// Parses `sluice.yaml`.
pub fn parse_config(file: &Path, text: &str) -> Result<(ConfigSpec, LocationIndex), Diagnostic> {
    let value = parse_yaml(file, text)?;
    let index = LocationIndex::build(text);
    if value.is_null() {
        return Ok((ConfigSpec::default(), index));
    }
    let spec = from_value(file, &index, "", value)?;
    Ok((spec, index))
}

/// Removes serde_yaml's " at line X column Y" suffix (positions are shown by the diagnostic).
fn strip_loc(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Rewrites serde's wording into a sentence a user can act on.
fn explain_serde(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let field = rest.split(',').next().unwrap_or(rest);
        return format!("unknown key {field}");
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("required key {rest} is missing");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let v = rest.split(',').next().unwrap_or(rest);
        return format!("unknown value {v}");
    }
    msg.to_string()
}

/// A `help:` line for common serde errors: the allowed keys or values, with a "did you mean".
fn serde_help(msg: &str) -> Option<String> {
    let (word, expected) = if let Some(rest) = msg.strip_prefix("unknown field `") {
        rest.split_once('`')?
    } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
        rest.split_once('`')?
    } else {
        return None;
    };
    let options: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
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
        assert_eq!(diags.len(), 2, "{diags:#?}");
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
        assert_eq!(diags[1].span, Some((13, 5)));
    }

    #[test]
    fn syntax_error_has_position() {
        let (_s, d) = parse_connector(Path::new("c.yaml"), "id: [\n");
        assert_eq!(d.len(), 1);
        assert!(d[0].span.is_some());
        assert!(d[0].message.starts_with("this is not valid YAML"));
    }
}
