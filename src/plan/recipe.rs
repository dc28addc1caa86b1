//! Recipe plans: a recipe file checked against the connectors and `sluice.yaml`, with every
//! template compiled and every reference resolved.
//!
//! Owns the recipe checks behind `sluice validate` (unknown triggers, actions, inputs and
//! connections with "did you mean", missing inputs, literal types, references to later steps or
//! to fields a trigger does not produce, schedules, start dates, duplicate ids). Every problem
//! is collected; none stops the others.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono_tz::Tz;
use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::{
    type_matches, Action, Condition, ConnId, Connector, Field, FieldType, OnError, Trigger,
};
use crate::diag::{Diagnostic, LocationIndex};
use crate::spec::{self, ParsedRecipe};
use crate::template::{Template, Tree};

/// A compiled recipe.
#[derive(Debug)]
pub struct Recipe {
    /// Recipe id (the file stem).
    pub id: String,
    /// What it does.
    pub description: String,
    /// The connection of the trigger (its name in `sluice.yaml`).
    pub connection: String,
    /// The connection's handle in the plan.
    pub conn: ConnId,
    /// The recipe instance (`recipe@connection`): where its state lives.
    pub instance: String,
    /// Whether the file names this one connection (`connection:`), rather than several
    /// (`connections:`): only then is state kept under the bare recipe id by sluice versions
    /// before instances this instance's.
    pub single: bool,
    /// The trigger's connector.
    pub connector: Arc<Connector>,
    /// Trigger id within the connector.
    pub trigger_id: String,
    /// Trigger options.
    pub options: Map<String, Value>,
    /// When to poll.
    pub schedule: Schedule,
    /// Where the first run starts.
    pub start_from: StartFrom,
    /// Records for which this is false are skipped.
    pub filter: Option<Template>,
    /// Chains in flight at once.
    pub concurrency: usize,
    /// The chain of steps.
    pub steps: Vec<Step>,
    /// `recipe.*` as templates see it, built once.
    meta: Value,
    /// Problems worth fixing that do not stop it from running (shown by `validate`).
    pub warnings: Vec<Diagnostic>,
}

impl Recipe {
    /// The trigger.
    pub fn trigger(&self) -> &Trigger {
        &self.connector.triggers[&self.trigger_id]
    }

    /// `recipe.*` fields templates may read.
    pub fn metadata(&self) -> &Value {
        &self.meta
    }
}

/// When a recipe runs: its slots. Compiled once; the sidecar's scheduler asks it for the
/// next slot.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Every so often, or on a cron expression.
    pub kind: ScheduleKind,
    /// At most this long (ms) after each slot; each instance gets its own fixed offset.
    pub jitter_ms: u64,
}

/// The two kinds of schedule.
#[derive(Debug, Clone)]
pub enum ScheduleKind {
    /// Every so many seconds, slots aligned on whole multiples since the Unix epoch (so
    /// `every: 1h` runs on the hour).
    Every(u64),
    /// A cron expression (normalised to six fields, seconds first) in a time zone.
    Cron {
        /// The expression as normalised.
        expr: String,
        /// Its time zone.
        tz: Tz,
        /// The compiled expression.
        cron: Box<croner::Cron>,
    },
}

impl PartialEq for Schedule {
    fn eq(&self, o: &Schedule) -> bool {
        self.jitter_ms == o.jitter_ms
            && match (&self.kind, &o.kind) {
                (ScheduleKind::Every(a), ScheduleKind::Every(b)) => a == b,
                (
                    ScheduleKind::Cron {
                        expr: a, tz: ta, ..
                    },
                    ScheduleKind::Cron {
                        expr: b, tz: tb, ..
                    },
                ) => a == b && ta == tb,
                _ => false,
            }
    }
}

impl Schedule {
    /// The first slot strictly after `after_ms` (Unix milliseconds), without jitter; `None`
    /// when a cron expression has no later occurrence.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.kind {
            ScheduleKind::Every(secs) => {
                let p = (*secs as i64).saturating_mul(1000).max(1);
                Some((after_ms.div_euclid(p) + 1).saturating_mul(p))
            }
            ScheduleKind::Cron { tz, cron, .. } => {
                let t = chrono::DateTime::from_timestamp_millis(after_ms)?.with_timezone(tz);
                cron.find_next_occurrence(&t, false)
                    .ok()
                    .map(|d| d.timestamp_millis())
            }
        }
    }

    /// How the schedule reads, for people (`every 300s`, `cron 0 */5 * * * * (UTC)`).
    pub fn describe(&self) -> String {
        let base = match &self.kind {
            ScheduleKind::Every(s) => format!("every {s}s"),
            ScheduleKind::Cron { expr, tz, .. } => format!("cron {expr} ({tz})"),
        };
        if self.jitter_ms > 0 {
            format!("{base}, jitter {}ms", self.jitter_ms)
        } else {
            base
        }
    }
}

/// The longest `every`: a year (longer is surely a mistake, and slot arithmetic stays far
/// from overflow).
pub const MAX_EVERY_SECS: i64 = 366 * 86_400;

/// Where the first run of a recipe starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only records changed after the first run fire.
    Now,
    /// Records changed at or after this Unix time fire (backfill).
    At(i64),
}

/// What a step does.
#[derive(Debug)]
pub enum StepAction {
    /// A connector's action, sent over a connection.
    Http {
        /// The action's connector.
        connector: Arc<Connector>,
        /// Action id within the connector.
        action_id: String,
    },
    /// The built-in `emit`: write a value as one JSON line to stdout or a file.
    Emit {
        /// Where a templated `to` may write; `None` when `to` is fixed (or absent).
        dir: Option<EmitDir>,
    },
}

/// Where one `emit` line goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitTo {
    /// Standard output.
    Stdout,
    /// A file (appended to, created `0600`).
    File(PathBuf),
}

/// The directory a templated emit `to` must stay in: the directory of the template's literal
/// prefix (the text before its first `{{`, up to its last `/`; empty is the working
/// directory). The recipe author chose that directory; a record's values only choose names
/// inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitDir {
    dir: String,
}

impl EmitDir {
    /// The directory of a `to` template's literal prefix.
    pub(crate) fn of(template: &str) -> EmitDir {
        let prefix = template.find("{{").map_or(template, |i| &template[..i]);
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
        EmitDir {
            dir: dir.to_string(),
        }
    }

    fn describe(&self) -> String {
        if self.dir.is_empty() {
            "the working directory".into()
        } else {
            format!("`{}`", self.dir)
        }
    }

    /// Checks a rendered `to` and returns the file to write: the directory joined with the
    /// normal components of the rest. The rest (what follows the directory) must not start a
    /// new root, hold a `..` component or a NUL, and must name something inside the directory
    /// (not the directory itself). Purely lexical: links inside the directory are the
    /// operator's.
    pub(crate) fn confine(&self, rendered: &str) -> Result<PathBuf, String> {
        use std::path::Component;
        let leaves = |why: &str| {
            format!(
                "`to` rendered to `{}`, which leaves {}; {why}",
                rendered.escape_debug(),
                self.describe()
            )
        };
        if rendered.contains('\0') {
            return Err(leaves("a file name cannot contain a NUL character"));
        }
        let Some(rest) = rendered.strip_prefix(self.dir.as_str()) else {
            return Err(leaves("it must start with the template's fixed part"));
        };
        let mut path = PathBuf::from(&self.dir);
        let mut named = false;
        for c in Path::new(rest).components() {
            match c {
                Component::Normal(n) => {
                    path.push(n);
                    named = true;
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(leaves(
                        "a record's values must not contain a `..` component",
                    ))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(leaves(
                        "a record's values must not start a new root (a leading `/`)",
                    ))
                }
            }
        }
        if !named {
            return Err(format!(
                "`to` rendered to `{}`, which names the directory {} itself, not a file in it",
                rendered.escape_debug(),
                self.describe()
            ));
        }
        Ok(path)
    }
}

/// Inputs of the built-in `emit` action.
pub const EMIT_INPUTS: &[&str] = &["value", "to"];

/// A compiled step.
#[derive(Debug)]
pub struct Step {
    /// Step id.
    pub id: String,
    /// Connection it uses (unused by `emit`): its name.
    pub connection: String,
    /// The connection's handle in the plan.
    pub conn: ConnId,
    /// What it does.
    pub kind: StepAction,
    /// Inputs as templates.
    pub with: Vec<(String, Tree)>,
    /// Run only when true.
    pub condition: Option<Template>,
    /// Run once per item of this list.
    pub for_each: Option<Template>,
    /// Failure policy.
    pub on_error: OnError,
    /// The inputs, when none of them is a template (rendered once, here).
    pub fixed_inputs: Option<Map<String, Value>>,
}

impl Step {
    /// The connector action, or `None` for `emit`.
    pub fn action(&self) -> Option<&Action> {
        match &self.kind {
            StepAction::Http {
                connector,
                action_id,
            } => Some(&connector.actions[action_id]),
            StepAction::Emit { .. } => None,
        }
    }

    /// `<connector>.<action>`, or `emit`.
    pub fn action_name(&self) -> String {
        match &self.kind {
            StepAction::Http {
                connector,
                action_id,
            } => format!("{}.{action_id}", connector.id),
            StepAction::Emit { .. } => "emit".into(),
        }
    }

    /// Whether running the step reads the template scope (`record`, `steps`, `recipe`). A step
    /// that does not, such as `emit` with fixed inputs, runs on the record's JSON text alone.
    pub fn needs_scope(&self) -> bool {
        self.condition.is_some() || self.for_each.is_some() || self.fixed_inputs.is_none()
    }

    /// Renders the step's inputs against a scope (`record`, `steps`, `recipe`, maybe `item`).
    /// Every referenced field must exist.
    pub fn render_inputs(
        &self,
        scope: &crate::template::Scope,
    ) -> Result<Map<String, Value>, String> {
        let mut m = Map::with_capacity(self.with.len());
        for (k, t) in &self.with {
            let v = t
                .render_strict(scope)
                .map_err(|e| format!("input `{k}`: {e}"))?;
            m.insert(k.clone(), v);
        }
        Ok(m)
    }

    /// Where an `emit` step writes, from its rendered inputs: `to` absent, `stdout` or `-` is
    /// standard output; a templated `to` must stay in its [`EmitDir`].
    pub fn emit_to(&self, input: &Map<String, Value>) -> Result<EmitTo, String> {
        let dir = match &self.kind {
            StepAction::Emit { dir } => dir.as_ref(),
            StepAction::Http { .. } => None,
        };
        match (input.get("to"), dir) {
            (None, _) => Ok(EmitTo::Stdout),
            (Some(Value::String(s)), _) if s == "stdout" || s == "-" => Ok(EmitTo::Stdout),
            (Some(Value::String(s)), None) => Ok(EmitTo::File(PathBuf::from(s))),
            (Some(Value::String(s)), Some(d)) => d.confine(s).map(EmitTo::File),
            (Some(other), _) => Err(format!(
                "`to` rendered to {other}, which is not a file path"
            )),
        }
    }

    /// Whether the step's output is a list (it runs per item, or its action does).
    pub fn outputs_list(&self) -> bool {
        self.for_each.is_some() || self.action().is_some_and(|a| a.for_each.is_some())
    }
}

/// The inputs' values when none is a template.
fn fixed_inputs(with: &[(String, Tree)]) -> Option<Map<String, Value>> {
    with.iter()
        .map(|(k, t)| Some((k.clone(), t.literal()?)))
        .collect()
}

/// The fields `recipe.*` offers.
const RECIPE_FIELDS: &[&str] = &["id", "description", "connection", "trigger"];

struct Cx<'a> {
    file: &'a Path,
    index: &'a LocationIndex,
    /// Errors: any of them stops the recipe from being built.
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn err(&mut self, path: &str, msg: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::error(self.file, msg).at(self.index, path);
        d.help = help;
        self.diags.push(d);
    }

    fn warn(&mut self, path: &str, msg: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::error(self.file, msg)
            .at(self.index, path)
            .warning();
        d.help = help;
        self.warnings.push(d);
    }
}

fn suggest<'a>(word: &str, options: impl IntoIterator<Item = &'a str> + Clone) -> String {
    match spec::did_you_mean(word, options.clone()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => {
            let all: Vec<&str> = options.into_iter().collect();
            if all.is_empty() {
                "there is nothing to choose from".into()
            } else {
                format!("choose one of: {}", all.join(", "))
            }
        }
    }
}

/// What templates of one place may read, for reference checks.
///
/// Everything is borrowed: a scope is made per step, and copying the earlier steps into each
/// made validation quadratic in the number of steps (issue 14).
struct RefScope<'a> {
    record_fields: Option<&'a BTreeSet<String>>,
    /// Earlier steps: id → (declared output fields, output is a list).
    steps: &'a IndexMap<String, (BTreeSet<String>, bool)>,
    /// Later steps (for a better message; searched only when a reference is wrong).
    later: &'a [spec::StepSpec],
    item: bool,
    trigger_name: &'a str,
}

fn check_refs(cx: &mut Cx, path: &str, tpl: &Template, scope: &RefScope) {
    let mut roots = vec!["record", "steps", "recipe"];
    if scope.item {
        roots.push("item");
    }
    for r in tpl.refs() {
        let Some(root) = r.first().map(String::as_str) else {
            continue;
        };
        match root {
            "record" => {
                if let (Some(fields), Some(f)) = (scope.record_fields, r.get(1)) {
                    if !fields.contains(f.as_str()) {
                        cx.err(
                            path,
                            format!(
                                "`record.{f}` is not a field of trigger `{}`",
                                scope.trigger_name
                            ),
                            Some(format!(
                                "{} (see `sluice connectors show`)",
                                suggest(f, fields.iter().map(String::as_str))
                            )),
                        );
                    }
                }
            }
            "steps" => {
                let Some(id) = r.get(1) else {
                    cx.err(
                        path,
                        "`steps` must be followed by a step id, e.g. `steps.find_contact.id`",
                        None,
                    );
                    continue;
                };
                match scope.steps.get(id.as_str()) {
                    Some((fields, list)) => {
                        if let Some(f) = r.get(2) {
                            let index_ok = *list && f.parse::<usize>().is_ok();
                            if !index_ok && !fields.is_empty() && !fields.contains(f.as_str()) {
                                cx.err(
                                    path,
                                    format!("`steps.{id}.{f}` is not an output of step `{id}`"),
                                    Some(suggest(f, fields.iter().map(String::as_str))),
                                );
                            }
                        }
                    }
                    None if scope.later.iter().any(|s| s.id == *id) => cx.err(
                        path,
                        format!("step `{id}` runs later, so its output does not exist yet here"),
                        Some("a step can only use the outputs of steps above it; move it up or change the reference".into()),
                    ),
                    None => cx.err(
                        path,
                        format!("there is no step `{id}` before this one"),
                        Some(suggest(id, scope.steps.keys().map(String::as_str))),
                    ),
                }
            }
            "recipe" => {
                if let Some(f) = r.get(1) {
                    if !RECIPE_FIELDS.contains(&f.as_str()) {
                        cx.err(
                            path,
                            format!("`recipe.{f}` does not exist"),
                            Some(suggest(f, RECIPE_FIELDS.iter().copied())),
                        );
                    }
                }
            }
            "item" if scope.item => {}
            other => {
                let help = if other == "item" {
                    "`item` exists only in steps with `for_each`".to_string()
                } else {
                    format!(
                        "{}; templates here read `record.…`, `steps.<id>.…` and `recipe.…`",
                        suggest(other, roots.iter().copied())
                    )
                };
                cx.err(
                    path,
                    format!(
                        "template refers to `{}`, which does not exist here",
                        r.join(".")
                    ),
                    Some(help),
                );
            }
        }
    }
}

fn compile_template(cx: &mut Cx, path: &str, src: &str, scope: &RefScope) -> Option<Template> {
    match Template::compile(src) {
        Ok(t) => {
            check_refs(cx, path, &t, scope);
            Some(t)
        }
        Err(e) => {
            let help = e.help.clone().unwrap_or_else(|| {
                "templates look like `{{record.email}}` or `{{default record.name \"friend\"}}`"
                    .into()
            });
            cx.err(path, e, Some(help));
            None
        }
    }
}

/// A step input's value compiled as a tree of templates: each template's syntax error and
/// unknown reference reported at its place under `path`.
fn compile_tree(cx: &mut Cx, path: &str, v: &serde_yaml::Value, scope: &RefScope) -> Tree {
    let at = |p: &str| {
        if p.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{p}")
        }
    };
    let (tree, errs) = Tree::compile(v);
    for (p, e) in errs {
        let help = e
            .help
            .clone()
            .unwrap_or_else(|| "templates look like `{{record.email}}`".into());
        cx.err(&at(&p), e, Some(help));
    }
    for (p, t) in tree.templates() {
        check_refs(cx, &at(&p), t, scope);
    }
    tree
}

/// Parses `start_from`.
pub fn parse_start_from(s: &str) -> Result<StartFrom, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(StartFrom::Now);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = d.and_hms_opt(0, 0, 0) {
            return Ok(StartFrom::At(dt.and_utc().timestamp()));
        }
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| StartFrom::At(d.timestamp()))
        .map_err(|_| format!("`{s}` is not `now`, a date like `2026-11-01` or a time like `2026-11-01T09:00:00Z`"))
}

/// Parses a schedule.
pub fn parse_schedule(s: &spec::ScheduleSpec) -> Result<Schedule, (String, &'static str)> {
    let jitter_ms = match &s.jitter {
        None => 0,
        Some(j) => {
            let secs = super::parse_duration(j).map_err(|m| (m, "jitter"))?;
            if !(0..=86_400).contains(&secs) {
                return Err(("the jitter must be between 0s and 1d".into(), "jitter"));
            }
            secs as u64 * 1000
        }
    };
    if s.timezone.is_some() && s.cron.is_none() {
        return Err((
            "`timezone` applies to `cron` only (an `every` interval runs the same in every zone)"
                .into(),
            "timezone",
        ));
    }
    let kind = match (&s.every, &s.cron) {
        (Some(e), None) => {
            let secs = super::parse_duration(e).map_err(|m| (m, "every"))?;
            if secs < 1 {
                return Err(("the interval must be at least one second".into(), "every"));
            }
            if secs > MAX_EVERY_SECS {
                return Err((
                    format!("the interval `{e}` is longer than a year; use `cron` for rare runs"),
                    "every",
                ));
            }
            ScheduleKind::Every(secs as u64)
        }
        (None, Some(c)) => {
            let fields = c.split_whitespace().count();
            let parser = croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build();
            if !(5..=6).contains(&fields) {
                return Err((format!("cron `{c}` has {fields} fields; write five (minute hour day month weekday) or six (seconds first)"), "cron"));
            }
            let cron = parser
                .parse(c)
                .map_err(|e| (format!("cron `{c}` is not valid: {e}"), "cron"))?;
            let tz = match &s.timezone {
                None => Tz::UTC,
                Some(name) => name.parse::<Tz>().map_err(|_| {
                    (
                        format!("`{name}` is not an IANA time zone (like `Europe/Paris` or `UTC`)"),
                        "timezone",
                    )
                })?,
            };
            let expr = if fields == 5 {
                format!("0 {c}")
            } else {
                c.clone()
            };
            let schedule = Schedule {
                kind: ScheduleKind::Cron {
                    expr,
                    tz,
                    cron: Box::new(cron),
                },
                jitter_ms,
            };
            // An expression that never matches (`0 0 30 2 *`) would never run.
            if schedule
                .next_after(chrono::Utc::now().timestamp_millis())
                .is_none()
            {
                return Err((format!("cron `{c}` never matches a date"), "cron"));
            }
            return Ok(schedule);
        }
        (Some(_), Some(_)) => return Err(("give either `every` or `cron`, not both".into(), "")),
        (None, None) => {
            return Err((
                "say how often to run: `every: 5m` or `cron: \"*/5 * * * *\"`".into(),
                "",
            ))
        }
    };
    Ok(Schedule { kind, jitter_ms })
}

/// The connections a recipe runs for, each with the field path that names it; `Err`: the
/// located problems (no connection named, both keys given, an empty list, a name twice, a
/// label no connection carries).
fn targets(
    cx: &mut Cx,
    spec: &spec::RecipeSpec,
    conns: Option<&ConnectionTable>,
) -> Vec<(String, String)> {
    match (&spec.connection, &spec.connections) {
        (Some(c), None) => vec![(c.clone(), "connection".into())],
        (Some(_), Some(_)) => {
            cx.err(
                "connections",
                "give either `connection` (one) or `connections` (several), not both",
                Some("e.g. `connections: [acme, globex]` alone".into()),
            );
            vec![]
        }
        (None, None) => {
            cx.err(
                "",
                "the recipe names no connection",
                Some(
                    "add `connection: <name>`, or `connections: [a, b]` or `connections: {label: <label>}` to run it for several"
                        .into(),
                ),
            );
            vec![]
        }
        (None, Some(spec::ConnectionsSpec::Names(names))) => {
            if names.is_empty() {
                cx.err(
                    "connections",
                    "`connections` is empty: the recipe would run for no connection",
                    Some("name at least one connection".into()),
                );
            }
            let mut out: Vec<(String, String)> = Vec::new();
            for (i, n) in names.iter().enumerate() {
                if out.iter().any(|(o, _)| o == n) {
                    cx.err(
                        &format!("connections.{i}"),
                        format!("connection `{n}` is named twice"),
                        Some("each connection runs the recipe once: name it once".into()),
                    );
                    continue;
                }
                out.push((n.clone(), format!("connections.{i}")));
            }
            out
        }
        (None, Some(spec::ConnectionsSpec::Label { label })) => {
            let Some(conns) = conns else {
                cx.err(
                    "connections.label",
                    format!("connections with label `{label}` cannot be found: there is no config file or connection file"),
                    Some("create `sluice.yaml` with a `connections:` section, or pass `--connections-dir DIR`".into()),
                );
                return vec![];
            };
            let out: Vec<(String, String)> = conns
                .iter()
                .filter(|(_, e)| e.labels.iter().any(|l| l == label))
                .map(|(n, _)| (n.clone(), "connections.label".to_string()))
                .collect();
            if out.is_empty() {
                let mut known: Vec<&str> = conns
                    .values()
                    .flat_map(|e| e.labels.iter().map(String::as_str))
                    .collect();
                known.sort_unstable();
                known.dedup();
                let help = if known.is_empty() {
                    format!("no connection has labels: give one `labels: [{label}]`")
                } else {
                    suggest(label, known.iter().copied())
                };
                cx.err(
                    "connections.label",
                    format!("no connection has label `{label}`"),
                    Some(help),
                );
            }
            out
        }
    }
}

/// Builds a recipe against the connectors and the configured connections (`None`: neither
/// `sluice.yaml` nor connection files): one [`Recipe`] per connection it runs for, each its own
/// instance. An instance whose connection is left out of the plan (an environment variable
/// not set, a broken connection file) is not built when the recipe runs for several (the
/// connection is reported); with `connection:` it is an error, as it always was.
pub fn build_recipe(
    parsed: &ParsedRecipe,
    connectors: &[Arc<Connector>],
    conns: Option<&ConnectionTable>,
) -> Result<Instances, Vec<Diagnostic>> {
    let mut cx = Cx {
        file: &parsed.file,
        index: &parsed.index,
        diags: Vec::new(),
        warnings: Vec::new(),
    };
    let single = parsed.spec.connection.is_some();
    let targets = targets(&mut cx, &parsed.spec, conns);
    let mut diags = cx.diags;
    let mut warnings = cx.warnings;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let no_conns = ConnectionTable::new();
    for (name, path) in &targets {
        if !single {
            let entry = conns.unwrap_or(&no_conns).get(name);
            if let Some(e) = entry.filter(|e| e.id.is_none()) {
                let why = e.why.clone().unwrap_or_else(|| "it has problems".into());
                skipped.push((
                    instance_name(&parsed.spec.id, name),
                    format!("connection `{name}` cannot be used: {why}"),
                ));
                continue;
            }
        }
        match build_instance(parsed, connectors, conns, name, path, single) {
            Ok(mut r) => {
                if out.is_empty() {
                    warnings.append(&mut r.warnings);
                } else {
                    r.warnings.clear();
                }
                out.push(r);
            }
            Err(d) => {
                // The same problem in every instance is reported once.
                for x in d {
                    if !diags.contains(&x) && !warnings.contains(&x) {
                        if x.is_error() {
                            diags.push(x);
                        } else {
                            warnings.push(x);
                        }
                    }
                }
            }
        }
    }
    if diags.is_empty() {
        if let Some(first) = out.first_mut() {
            first.warnings = warnings;
        }
        Ok(Instances {
            recipes: out,
            skipped,
        })
    } else {
        diags.extend(warnings);
        Err(diags)
    }
}

/// A recipe file's instances: one per connection it runs for.
#[derive(Debug, Default)]
pub struct Instances {
    /// The instances built, in the order their connections are named (or defined, for a
    /// label); the first carries the file's warnings.
    pub recipes: Vec<Recipe>,
    /// Instances not built because their connection is left out of the plan (a recipe for
    /// several connections runs for the others): `recipe@connection` and why.
    pub skipped: Vec<(String, String)>,
}

/// Builds the instance of a recipe for connection `connection` (named at `conn_path`).
fn build_instance(
    parsed: &ParsedRecipe,
    connectors: &[Arc<Connector>],
    conns: Option<&ConnectionTable>,
    connection: &str,
    conn_path: &str,
    single: bool,
) -> Result<Recipe, Vec<Diagnostic>> {
    let spec = &parsed.spec;
    let mut cx = Cx {
        file: &parsed.file,
        index: &parsed.index,
        diags: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(stem) = parsed.file.file_stem().and_then(|s| s.to_str()) {
        if stem != spec.id {
            cx.err(
                "id",
                format!(
                    "recipe id `{}` differs from the file name `{stem}`",
                    spec.id
                ),
                Some(format!(
                    "set `id: {stem}` or rename the file to `{}.yaml`",
                    spec.id
                )),
            );
        }
    }
    if !is_snake(&spec.id) {
        cx.err(
            "id",
            format!(
                "recipe id `{}` must be snake_case (lowercase letters, digits, `_`)",
                spec.id
            ),
            Some(format!(
                "for example `{}` (and name the file the same)",
                to_snake(&spec.id)
            )),
        );
    }

    // Connection.
    let recipe_conn = connection_connector(&mut cx, conn_path, connection, conns);
    let conn_connector = recipe_conn.as_ref().and_then(|(c, _)| c.clone());

    // Trigger.
    let trigger_path = if matches!(spec.trigger, spec::TriggerRefSpec::Full { .. }) {
        "trigger.use"
    } else {
        "trigger"
    };
    let trigger = resolve(&mut cx, trigger_path, spec.trigger.name(), connectors, true);
    let mut options = Map::new();
    if let Some((c, tid)) = &trigger {
        for (k, v) in spec.trigger.options() {
            options.insert(k, v);
        }
        if let Err(m) = crate::action::check_fields("option", &c.triggers[tid].options, &options) {
            cx.err(
                "trigger.with",
                m,
                Some(format!("see `sluice connectors show {}`", c.id)),
            );
        }
        if let Some(cc) = &conn_connector {
            if *cc != c.id {
                cx.err(
                    conn_path,
                    format!(
                        "connection `{connection}` is for connector `{cc}`, but the trigger is from `{}`",
                        c.id
                    ),
                    Some(format!("use a connection of connector `{}`", c.id)),
                );
            }
        }
    }

    let schedule = match parse_schedule(&spec.schedule) {
        Ok(s) => Some(s),
        Err((m, field)) => {
            let path = if field.is_empty() {
                "schedule".to_string()
            } else {
                format!("schedule.{field}")
            };
            cx.err(
                &path,
                m,
                Some("examples: `every: 5m`, `cron: \"*/10 * * * *\"` with `timezone: Europe/Paris`, `jitter: 30s`".into()),
            );
            None
        }
    };
    let start_from = match spec
        .start_from
        .as_deref()
        .map(parse_start_from)
        .unwrap_or(Ok(StartFrom::Now))
    {
        Ok(StartFrom::At(t)) if t > chrono::Utc::now().timestamp() => {
            cx.err(
                "start_from",
                format!(
                    "`start_from` {} is in the future: the recipe would skip every change until then",
                    spec.start_from.as_deref().unwrap_or_default().trim()
                ),
                Some("leave it out (or write `now`) to start with new changes, or give a past date to backfill from".into()),
            );
            StartFrom::Now
        }
        Ok(s) => s,
        Err(m) => {
            cx.err(
                "start_from",
                m,
                Some("leave it out (or write `now`) to start with new changes only".into()),
            );
            StartFrom::Now
        }
    };

    let trigger_name = spec.trigger.name().to_string();
    let record_fields: Option<BTreeSet<String>> = trigger.as_ref().and_then(|(c, t)| {
        let outs = &c.triggers[t].outputs;
        (!outs.is_empty()).then(|| outs.keys().cloned().collect())
    });
    // The kind of record the trigger watches, when it fires on every change (its dedupe key
    // includes the cursor field): an action changing that kind feeds the trigger.
    let watched: Option<String> = trigger.as_ref().and_then(|(c, t)| {
        let t = &c.triggers[t];
        let per_change = t
            .dedupe_key
            .field_heads()
            .any(|h| Some(h) == t.cursor_field.first().map(String::as_str));
        per_change.then(|| t.object.clone()).flatten()
    });
    let no_steps = IndexMap::new();
    let filter = spec.filter.as_deref().and_then(|f| {
        let scope = RefScope {
            record_fields: record_fields.as_ref(),
            steps: &no_steps,
            later: &spec.steps,
            item: false,
            trigger_name: &trigger_name,
        };
        compile_template(&mut cx, "filter", f, &scope)
    });

    if spec.steps.is_empty() {
        cx.err(
            "steps",
            "the recipe has no steps",
            Some("add at least one step with `id` and `action`".into()),
        );
    }
    let mut steps = Vec::new();
    let mut earlier: IndexMap<String, (BTreeSet<String>, bool)> = IndexMap::new();
    for (i, s) in spec.steps.iter().enumerate() {
        let base = format!("steps.{i}");
        if !is_snake(&s.id) {
            cx.err(
                &format!("{base}.id"),
                format!(
                    "step id `{}` must be snake_case (lowercase letters, digits, `_`)",
                    s.id
                ),
                Some(format!("for example `{}`", to_snake(&s.id))),
            );
        }
        if earlier.contains_key(&s.id) {
            cx.err(
                &format!("{base}.id"),
                format!("step id `{}` is used twice", s.id),
                Some("give every step its own id".into()),
            );
        }
        let scope_plain = RefScope {
            record_fields: record_fields.as_ref(),
            steps: &earlier,
            later: &spec.steps[i + 1..],
            item: false,
            trigger_name: &trigger_name,
        };
        let condition = s
            .condition
            .as_deref()
            .and_then(|c| compile_template(&mut cx, &format!("{base}.if"), c, &scope_plain));
        let for_each = s
            .for_each
            .as_deref()
            .and_then(|c| compile_template(&mut cx, &format!("{base}.for_each"), c, &scope_plain));
        let scope_with = RefScope {
            item: s.for_each.is_some(),
            ..scope_plain
        };

        let step_conn = s
            .connection
            .clone()
            .unwrap_or_else(|| connection.to_string());
        let recipe_conn_id = recipe_conn.as_ref().map(|(_, id)| *id);
        if s.action == "emit" {
            let mut with = Vec::new();
            let mut emit_dir = None;
            for (k, v) in &s.with {
                let path = format!("{base}.with.{k}");
                if !EMIT_INPUTS.contains(&k.as_str()) {
                    cx.err(
                        &path,
                        format!("`emit` has no input `{k}`"),
                        Some(suggest(k, EMIT_INPUTS.iter().copied())),
                    );
                    continue;
                }
                let tree = compile_tree(&mut cx, &path, v, &scope_with);
                if k == "to" {
                    match v.as_str() {
                        None => cx.err(
                            &path,
                            "`to` must be `stdout` or a file path",
                            Some("e.g. `to: out/records.jsonl`".into()),
                        ),
                        Some(src) if tree.literal().is_none() => {
                            let d = EmitDir::of(src);
                            cx.warn(
                                &path,
                                "`to` is a template, so each record's values choose the file it is written to",
                                Some(format!(
                                    "records can only write inside {} (a value with `..` or a leading `/` fails the step); use a fixed path such as `out/records.jsonl` where you can",
                                    d.describe()
                                )),
                            );
                            emit_dir = Some(d);
                        }
                        Some(_) => {}
                    }
                }
                with.push((k.clone(), tree));
            }
            earlier.insert(s.id.clone(), (BTreeSet::new(), s.for_each.is_some()));
            if let (true, Some(conn)) = (cx.diags.is_empty(), recipe_conn_id) {
                steps.push(Step {
                    id: s.id.clone(),
                    connection: step_conn,
                    conn,
                    kind: StepAction::Emit { dir: emit_dir },
                    fixed_inputs: fixed_inputs(&with),
                    with,
                    condition,
                    for_each,
                    on_error: s.on_error.into(),
                });
            }
            continue;
        }
        let step_conn_resolved = match &s.connection {
            Some(c) => connection_connector(&mut cx, &format!("{base}.connection"), c, conns),
            None => recipe_conn.clone(),
        };
        let step_conn_connector = step_conn_resolved.as_ref().and_then(|(c, _)| c.clone());
        let action = resolve(
            &mut cx,
            &format!("{base}.action"),
            &s.action,
            connectors,
            false,
        );
        let mut with = Vec::new();
        let mut outputs = (BTreeSet::new(), s.for_each.is_some());
        if let Some((c, aid)) = &action {
            let a = &c.actions[aid];
            if let Some((object, (tc, tid))) = watched.as_ref().zip(trigger.as_ref()) {
                if spec.filter.is_none() && a.changes.contains(object) {
                    cx.warn(
                        &format!("{base}.action"),
                        format!(
                            "`{}` changes the {object} records that `{}.{tid}` watches, and the recipe has no `filter`: what each run writes fires the recipe again on the next run",
                            s.action, tc.id
                        ),
                        Some("add a `filter` that is false once the record has been handled (e.g. a tag or attribute this recipe sets), or watch a trigger that fires on new records only".into()),
                    );
                }
            }
            outputs = (
                a.outputs.keys().cloned().collect(),
                s.for_each.is_some() || a.for_each.is_some(),
            );
            if let Some(cc) = &step_conn_connector {
                if *cc != c.id {
                    cx.err(&format!("{base}.action"), format!("action `{}` is from connector `{}`, but connection `{step_conn}` is for `{cc}`", s.action, c.id), Some(format!("add `connection:` with a connection of connector `{}` to this step", c.id)));
                }
            }
            with = check_inputs(&mut cx, &base, s, a, &scope_with);
        }
        if let Some((c, aid)) = &action {
            earlier.insert(s.id.clone(), outputs);
            if let (true, Some((_, conn))) = (cx.diags.is_empty(), &step_conn_resolved) {
                steps.push(Step {
                    id: s.id.clone(),
                    connection: step_conn,
                    conn: *conn,
                    kind: StepAction::Http {
                        connector: c.clone(),
                        action_id: aid.clone(),
                    },
                    fixed_inputs: fixed_inputs(&with),
                    with,
                    condition,
                    for_each,
                    on_error: s.on_error.into(),
                });
            }
        } else {
            earlier.insert(s.id.clone(), (BTreeSet::new(), false));
        }
    }

    let concurrency = spec
        .concurrency
        .unwrap_or(crate::engine::DEFAULT_CONCURRENCY);
    if !(1..=256).contains(&concurrency) {
        cx.err(
            "concurrency",
            format!("concurrency {concurrency} is outside 1 to 256"),
            Some("the number of records whose steps may run at once, e.g. `concurrency: 8`".into()),
        );
    }
    match (cx.diags.is_empty(), trigger, schedule, recipe_conn) {
        (true, Some((connector, trigger_id)), Some(schedule), Some((_, conn))) => Ok(Recipe {
            conn,
            meta: serde_json::json!({
                "id": spec.id,
                "description": spec.description,
                "connection": connection,
                "trigger": format!("{}.{}", connector.id, trigger_id),
            }),
            id: spec.id.clone(),
            instance: instance_name(&spec.id, connection),
            single,
            description: spec.description.clone(),
            connection: connection.to_string(),
            connector,
            trigger_id,
            options,
            schedule,
            start_from,
            filter,
            concurrency,
            steps,
            warnings: cx.warnings,
        }),
        _ => {
            let mut all = cx.diags;
            all.extend(cx.warnings);
            Err(all)
        }
    }
}

/// The name of a recipe instance: the recipe run for one connection.
pub fn instance_name(recipe: &str, connection: &str) -> String {
    format!("{recipe}@{connection}")
}

/// Whether a state namespace belongs to recipe `id`: its instances, or the recipe id itself
/// (the namespace of sluice versions before instances).
pub fn instance_of(ns: &str, id: &str) -> bool {
    ns == id
        || ns
            .strip_prefix(id)
            .is_some_and(|rest| rest.starts_with('@'))
}

/// `Tag-It` → `tag_it`.
fn to_snake(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let t = out.trim_matches('_').to_string();
    if t.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        format!("s_{t}")
    } else {
        t
    }
}

fn is_snake(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What recipes may name as connections, by name.
pub type ConnectionTable = IndexMap<String, ConnEntry>;

/// A connection as recipes see it.
#[derive(Debug, Clone)]
pub struct ConnEntry {
    /// The connector it speaks; `None` when that connector is not loaded (reported in
    /// `sluice.yaml`: recipes naming the connection are checked without it).
    pub connector: Option<String>,
    /// Its labels.
    pub labels: Vec<String>,
    /// Its handle, when it compiled.
    pub id: Option<ConnId>,
    /// Why it could not be opened, when that is not a problem of the file (an environment
    /// variable is not set).
    pub why: Option<String>,
}

/// Checks a connection name against the configured connections; returns its connector id
/// (when known) and handle.
fn connection_connector(
    cx: &mut Cx,
    path: &str,
    name: &str,
    conns: Option<&ConnectionTable>,
) -> Option<(Option<String>, ConnId)> {
    let Some(conns) = conns else {
        cx.err(
            path,
            format!("connection `{name}` cannot be checked: there is no config file"),
            Some(
                "create `sluice.yaml` with a `connections:` section, or pass `--config FILE`"
                    .into(),
            ),
        );
        return None;
    };
    match conns.get(name) {
        Some(ConnEntry {
            connector,
            id: Some(id),
            ..
        }) => Some((connector.clone(), *id)),
        Some(ConnEntry { why: Some(why), .. }) => {
            cx.err(
                path,
                format!("connection `{name}` cannot be used: {why}"),
                None,
            );
            None
        }
        Some(ConnEntry { .. }) => {
            cx.err(
                path,
                format!("connection `{name}` cannot be used: the config file has problems with it"),
                Some("run `sluice validate` and fix the connection in the config file".into()),
            );
            None
        }
        None => {
            cx.err(
                path,
                format!("there is no connection `{name}` in the config file"),
                Some(suggest(name, conns.keys().map(String::as_str))),
            );
            None
        }
    }
}

/// Resolves `connector.name` to a trigger (or action).
fn resolve(
    cx: &mut Cx,
    path: &str,
    r: &str,
    connectors: &[Arc<Connector>],
    trigger: bool,
) -> Option<(Arc<Connector>, String)> {
    let what = if trigger { "trigger" } else { "action" };
    let Some((cid, name)) = r.split_once('.') else {
        let example = if trigger {
            "intercom.new_ticket"
        } else {
            "intercom.assign_tags"
        };
        cx.err(
            path,
            format!("`{r}` must be written `<connector>.<{what}>`"),
            Some(format!("for example `{example}`")),
        );
        return None;
    };
    let Some(c) = connectors.iter().find(|c| c.id == cid) else {
        cx.err(
            path,
            format!("there is no connector `{cid}`"),
            Some(suggest(cid, connectors.iter().map(|c| c.id.as_str()))),
        );
        return None;
    };
    let names: Vec<&str> = if trigger {
        c.triggers.keys().map(String::as_str).collect()
    } else {
        c.actions.keys().map(String::as_str).collect()
    };
    if !names.contains(&name) {
        cx.err(
            path,
            format!("connector `{cid}` has no {what} `{name}`"),
            Some(format!(
                "{} (see `sluice connectors show {cid}`)",
                suggest(name, names.iter().copied())
            )),
        );
        return None;
    }
    Some((c.clone(), name.to_string()))
}

fn describe_type(f: &Field) -> &'static str {
    crate::action::type_name(f.ty)
}

fn check_inputs(
    cx: &mut Cx,
    base: &str,
    s: &spec::StepSpec,
    a: &Action,
    scope: &RefScope,
) -> Vec<(String, Tree)> {
    let inputs = &a.inputs;
    let mut out = Vec::new();
    let mut literals: Map<String, Value> = Map::new();
    for (k, v) in &s.with {
        let path = format!("{base}.with.{k}");
        let Some(field) = inputs.get(k) else {
            cx.err(
                &path,
                format!("action `{}` has no input `{k}`", s.action),
                Some(suggest(k, inputs.keys().map(String::as_str))),
            );
            continue;
        };
        let tree = compile_tree(cx, &path, v, scope);
        if let Some(lit) = tree.literal() {
            check_literal(cx, &path, k, field, &lit);
            literals.insert(k.clone(), lit);
        }
        out.push((k.clone(), tree));
    }
    for (k, f) in inputs {
        if f.required && !s.with.contains_key(k) {
            let ex = f
                .example
                .as_ref()
                .map(|e| format!(" (e.g. `{k}: {e}`)"))
                .unwrap_or_default();
            cx.err(
                &format!("{base}.with"),
                format!("required input `{k}` of `{}` is missing", s.action),
                Some(format!(
                    "add `{k}:` under `with:` — {}{ex}",
                    describe_type(f)
                )),
            );
        }
    }
    if !a.require_any.is_empty() && !a.require_any.iter().any(|k| s.with.contains_key(k)) {
        cx.err(
            &format!("{base}.with"),
            format!(
                "`{}` needs at least one of `{}`",
                s.action,
                a.require_any.join("`, `")
            ),
            Some(format!(
                "add one of them under `with:`, e.g. `{}: …`",
                a.require_any[0]
            )),
        );
    }
    // A variant chosen by a literal value may require more inputs.
    for v in &a.variants {
        if let Some(Condition::Equals(input, value)) = &v.when {
            if literals.get(input) == Some(value) {
                for r in &v.requires {
                    if !s.with.contains_key(r) {
                        cx.err(
                            &format!("{base}.with"),
                            format!("input `{r}` is required when `{input}` is {value}"),
                            Some(format!("add `{r}:` under `with:`")),
                        );
                    }
                }
            }
        }
    }
    out
}

fn check_literal(cx: &mut Cx, path: &str, k: &str, f: &Field, v: &Value) {
    if v.is_null() {
        return;
    }
    if !type_matches(f.ty, v) {
        let hint = match (f.ty, v) {
            (FieldType::Integer | FieldType::Number | FieldType::Timestamp, Value::String(s))
                if s.trim().parse::<f64>().is_ok() =>
            {
                format!("remove the quotes: `{k}: {}`", s.trim())
            }
            (FieldType::String, Value::Number(n)) => {
                format!("put it in quotes: `{k}: \"{n}\"`")
            }
            (FieldType::Boolean, Value::String(s)) if matches!(s.as_str(), "true" | "false") => {
                format!("remove the quotes: `{k}: {s}`")
            }
            (FieldType::Array, _) => format!("write a list: `{k}: [a, b]`"),
            _ => format!("`{k}` takes {}", describe_type(f)),
        };
        cx.err(
            path,
            format!(
                "input `{k}` must be {}, but {v} was given",
                describe_type(f)
            ),
            Some(hint),
        );
        return;
    }
    if let Some(allowed) = &f.allowed {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            let best = v
                .as_str()
                .and_then(|w| spec::did_you_mean(w, allowed.iter().filter_map(Value::as_str)));
            let help = match best {
                Some(b) => format!("did you mean `{b}`?"),
                None => format!("write one of: {}", list.join(", ")),
            };
            cx.err(
                path,
                format!(
                    "input `{k}` must be one of {}, but {v} was given",
                    list.join(", ")
                ),
                Some(help),
            );
        }
    }
}

/// Reads, parses and builds one recipe file: its instances.
pub fn load_recipe(
    file: &Path,
    text: &str,
    connectors: &[Arc<Connector>],
    conns: Option<&ConnectionTable>,
) -> Result<Instances, Vec<Diagnostic>> {
    let (parsed, mut diags) = spec::parse_recipe(file, text);
    match parsed {
        Some(p) => match build_recipe(&p, connectors, conns) {
            Ok(r) if diags.is_empty() => Ok(r),
            Ok(_) => Err(diags),
            Err(more) => {
                diags.extend(more);
                Err(diags)
            }
        },
        None => Err(diags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_dir_is_the_literal_prefix_directory() {
        assert_eq!(EmitDir::of("out/{{record.id}}.jsonl").dir, "out/");
        assert_eq!(EmitDir::of("out/x-{{record.id}}/{{a}}").dir, "out/");
        assert_eq!(EmitDir::of("/var/out/{{a}}").dir, "/var/out/");
        assert_eq!(EmitDir::of("{{a}}.jsonl").dir, "");
        assert_eq!(EmitDir::of("out{{a}}").dir, "");
    }

    #[test]
    fn a_rendered_emit_path_stays_in_its_directory() {
        let out = EmitDir::of("out/{{record.id}}.jsonl");
        assert_eq!(out.confine("out/a.jsonl"), Ok(PathBuf::from("out/a.jsonl")));
        assert_eq!(
            out.confine("out/./a/./b.jsonl"),
            Ok(PathBuf::from("out/a/b.jsonl"))
        );
        for bad in [
            "out/../x.jsonl",
            "out/a/../../x.jsonl",
            "out//etc/x.jsonl",
            "out/a\0b.jsonl",
            "out/",
            "out/.",
            "elsewhere/a.jsonl",
        ] {
            let e = out.confine(bad).unwrap_err();
            assert!(e.contains("`out/`"), "{bad:?}: {e}");
        }
        assert!(out
            .confine("out/../x.jsonl")
            .unwrap_err()
            .starts_with("`to` rendered to `out/../x.jsonl`, which leaves `out/`;"));
        let here = EmitDir::of("{{record.id}}.jsonl");
        assert_eq!(here.confine("a.jsonl"), Ok(PathBuf::from("a.jsonl")));
        for bad in ["/etc/x.jsonl", "../x.jsonl", "..", ""] {
            let e = here.confine(bad).unwrap_err();
            assert!(e.contains("the working directory"), "{bad:?}: {e}");
        }
        let abs = EmitDir::of("/var/out/{{record.id}}");
        assert_eq!(abs.confine("/var/out/a"), Ok(PathBuf::from("/var/out/a")));
        assert!(abs.confine("/var/out/../a").is_err());
    }
}
