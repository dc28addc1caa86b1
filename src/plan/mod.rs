//! Plan: turns `*Spec` values into validated, compiled objects the runtime uses.
//!
//! Owns every check that needs more than one field (template references, path parameters,
//! variants, durations, regions) and compiling templates. Every problem is pushed onto a list;
//! nothing stops at the first one. Runtime code takes `Connector`, `Trigger` and `Action`, never
//! a `*Spec`. Does no I/O beyond what the caller hands in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;

use crate::diag::{Diagnostic, LocationIndex};
use crate::spec::{self, *};
use crate::template::{Template, Tree};

pub mod api;
pub mod connection;
pub mod recipe;
pub use api::{
    Api, Cursor, ErrorRule, Field, FieldType, Granularity, Method, OAuth2Api, OnConflict, OnError,
    Pagination, SendIn,
};
pub use connection::{ConnId, ConnectionPlan, OAuthPlan, RetryPolicy, Secrets};
pub use recipe::{EmitDir, EmitTo, Recipe, Schedule, ScheduleKind, StartFrom, Step, StepAction};

/// Everything a run needs, compiled from the connector, config and recipe files: the one
/// composition root's input. Recipes and steps hold [`ConnId`]s into `connections`.
#[derive(Debug)]
pub struct Plan {
    /// Connectors by id.
    pub connectors: Vec<Arc<Connector>>,
    /// Connections, indexed by [`ConnId`].
    pub connections: Vec<Arc<ConnectionPlan>>,
    /// Recipe instances (a recipe for each of its connections), in file order.
    pub recipes: Vec<Arc<Recipe>>,
    /// Problems worth fixing that do not stop anything from running.
    pub warnings: Vec<Diagnostic>,
    /// Connections left out (problems in `sluice.yaml`, an environment variable not set),
    /// with the first reason.
    pub unavailable: Vec<(String, Diagnostic)>,
    /// Instances of recipes for several connections left out with their connection:
    /// `recipe@connection` and why (the recipe runs for its other connections).
    pub skipped: Vec<(String, String)>,
    /// Built with [`Secrets::Optional`]: environment variables that are not set.
    pub unset: Vec<Diagnostic>,
    /// How much run history is kept.
    pub retention: crate::history::Retention,
}

impl Plan {
    /// A connection by handle.
    pub fn connection(&self, id: ConnId) -> &Arc<ConnectionPlan> {
        &self.connections[id.0]
    }

    /// A connection by its name in `sluice.yaml`.
    pub fn connection_named(&self, name: &str) -> Option<&Arc<ConnectionPlan>> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// A recipe by id: its first instance.
    pub fn recipe(&self, id: &str) -> Option<&Arc<Recipe>> {
        self.recipes.iter().find(|r| r.id == id)
    }

    /// Every instance of recipe `id` (one per connection it runs for).
    pub fn instances<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Arc<Recipe>> + 'a {
        self.recipes.iter().filter(move |r| r.id == id)
    }
}

/// The files a [`Plan`] is built from, already read.
pub struct Sources<'a> {
    /// Compiled connectors.
    pub connectors: Vec<Arc<Connector>>,
    /// `sluice.yaml`: its path and text, `None` when there is none.
    pub config: Option<(PathBuf, String)>,
    /// Connection files (`--connections-dir`): path and text, one connection each, named by
    /// the file stem.
    pub connection_files: Vec<(PathBuf, String)>,
    /// Recipe files: path and text.
    pub recipes: Vec<(PathBuf, String)>,
    /// Environment lookups for `${env:…}`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Whether unset secrets are errors.
    pub secrets: Secrets,
}

/// Compiles connections and recipes against the connectors, gathering every problem as a
/// located diagnostic (warnings too). Fails when there is any error; a recipe id used by two
/// files is one.
pub fn build(src: Sources<'_>) -> Result<Plan, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut retention = crate::history::Retention::default();
    let mut config = None;
    if let Some((file, text)) = &src.config {
        let (parsed, problems) = spec::parse_config(file, text);
        diags.extend(problems);
        if let Some((c, index)) = parsed {
            if let Some(h) = &c.history {
                retention = build_retention(file, &index, h, &mut diags);
            }
            config = Some((file.as_path(), c, Arc::new(index)));
        }
    }
    let have_connections = config.is_some() || !src.connection_files.is_empty();
    let gathered = connection::gather(
        config.as_ref().map(|(f, c, i)| (*f, c, i.clone())),
        &src.connection_files,
    );
    let built =
        connection::build_connection_list(&gathered.sources, &src.connectors, src.env, src.secrets);
    // A connection with problems is left out (`unavailable`): an error for the recipes that
    // use it, not for the others. `validate` reports every problem. A connection file that
    // does not parse stops only the recipe instances that use it.
    diags.extend(built.problems.into_iter().filter(|d| !d.is_error()));
    diags.extend(gathered.problems.into_iter().filter(|d| !d.is_error()));
    let mut unavailable = built.unavailable;
    unavailable.extend(gathered.broken.iter().cloned());
    let table = have_connections.then(|| {
        let mut t = recipe::ConnectionTable::new();
        for s in &gathered.sources {
            let id = built.plans.iter().find(|b| b.name == s.name).map(|b| b.id);
            let why = unavailable
                .iter()
                .find(|(n, _)| *n == s.name)
                .map(|(_, d)| d.message.clone());
            t.insert(
                s.name.clone(),
                recipe::ConnEntry {
                    connector: Some(s.spec.connector.clone()),
                    labels: s.spec.labels.clone(),
                    id,
                    why,
                },
            );
        }
        for (name, d) in &gathered.broken {
            t.insert(
                name.clone(),
                recipe::ConnEntry {
                    connector: None,
                    labels: Vec::new(),
                    id: None,
                    why: Some(d.to_string().lines().next().unwrap_or_default().to_string()),
                },
            );
        }
        t
    });
    let unset = built.unset;
    let connections: Vec<Arc<ConnectionPlan>> = built.plans.into_iter().map(Arc::new).collect();
    let mut recipes: Vec<Arc<Recipe>> = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: std::collections::HashMap<String, PathBuf> = Default::default();
    for (file, text) in &src.recipes {
        match recipe::load_recipe(file, text, &src.connectors, table.as_ref()) {
            Ok(instances) => {
                skipped.extend(instances.skipped);
                let Some(id) = instances.recipes.first().map(|r| r.id.clone()) else {
                    continue; // every connection it names is left out (`skipped`)
                };
                if let Some(first) = seen.get(&id) {
                    diags.push(
                        Diagnostic::error(
                            file,
                            format!("recipe id `{id}` is also used by `{}`", first.display()),
                        )
                        .help("every recipe needs its own id: its state is kept under it"),
                    );
                    continue;
                }
                seen.insert(id, file.clone());
                for mut r in instances.recipes {
                    diags.append(&mut r.warnings);
                    recipes.push(Arc::new(r));
                }
            }
            Err(d) => diags.extend(d),
        }
    }
    let (errors, warnings): (Vec<_>, Vec<_>) = diags.into_iter().partition(Diagnostic::is_error);
    if !errors.is_empty() {
        let mut all = errors;
        all.extend(warnings);
        return Err(all);
    }
    Ok(Plan {
        connectors: src.connectors,
        connections,
        recipes,
        warnings,
        unavailable,
        skipped,
        unset,
        retention,
    })
}

/// `history:` of `sluice.yaml`: the defaults, with what it sets.
pub fn build_retention(
    file: &Path,
    index: &crate::diag::LocationIndex,
    h: &spec::HistorySpec,
    diags: &mut Vec<Diagnostic>,
) -> crate::history::Retention {
    let mut r = crate::history::Retention::default();
    if let Some(age) = &h.max_age {
        match parse_duration(age) {
            Ok(secs) if secs >= 60 => r.max_age_ms = secs.saturating_mul(1000),
            Ok(_) => diags.push(
                Diagnostic::error(file, "history.max_age must be at least a minute")
                    .at(index, "history.max_age"),
            ),
            Err(m) => diags.push(
                Diagnostic::error(file, format!("history.max_age: {m}"))
                    .at(index, "history.max_age"),
            ),
        }
    }
    for (field, v, slot) in [
        ("max_runs", h.max_runs, &mut r.max_runs),
        (
            "max_records_per_run",
            h.max_records_per_run,
            &mut r.max_records_per_run,
        ),
        ("max_total_runs", h.max_total_runs, &mut r.max_total_runs),
    ] {
        match v {
            Some(0) => diags.push(
                Diagnostic::error(file, format!("history.{field} must be at least 1"))
                    .at(index, &format!("history.{field}")),
            ),
            Some(n) => *slot = n,
            None => {}
        }
    }
    r
}

/// A compiled connector.
#[derive(Debug)]
pub struct Connector {
    /// Connector id.
    pub id: String,
    /// Regions, headers, rate limit, error body, error rules, timezone request.
    pub api: Api,
    /// Triggers in file order.
    pub triggers: IndexMap<String, Trigger>,
    /// Actions in file order.
    pub actions: IndexMap<String, Action>,
}

/// A compiled request.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path pieces: literal text and `{param}` names.
    pub path: Vec<PathPart>,
    /// Query parameters.
    pub query: Vec<(String, Template)>,
    /// JSON body.
    pub body: Option<Tree>,
}

/// A piece of a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    /// Literal text, sent as is.
    Lit(String),
    /// An input (or `item`) whose value is percent-encoded into the path.
    Param(String),
}

/// A compiled trigger.
#[derive(Debug)]
pub struct Trigger {
    /// Trigger id.
    pub id: String,
    /// Human name.
    pub title: String,
    /// What fires it.
    pub description: String,
    /// How the next page is asked for.
    pub pagination: Pagination,
    /// The page size offered to templates as `{{page_size}}`.
    pub page_size: Option<u32>,
    /// How the server compares and orders the cursor.
    pub cursor: Cursor,
    /// Options a recipe may set.
    pub options: IndexMap<String, Field>,
    /// Documented record fields.
    pub outputs: IndexMap<String, Field>,
    /// Error rules checked before the connector's.
    pub errors: Vec<ErrorRule>,
    /// The kind of record it watches, for `validate`.
    pub object: Option<String>,
    /// The first-page request.
    pub request: Request,
    /// Path to the records array.
    pub records: Vec<String>,
    /// Path to the record id.
    pub id_field: Vec<String>,
    /// Path to the cursor value.
    pub cursor_field: Vec<String>,
    /// Lookback in seconds.
    pub lookback_secs: i64,
    /// The dedupe key template.
    pub dedupe_key: KeyTemplate,
    /// The record's top-level fields the runtime reads (id, cursor, dedupe key): the only
    /// ones parsed out of a polled record before a template needs the rest.
    pub record_fields: Vec<String>,
    /// Most pages one poll may read: the pagination's `max_pages`, else `DEFAULT_MAX_PAGES`.
    pub max_pages: u64,
}

/// Pages one poll may read when the connector does not say. A backstop against an API that
/// never stops offering a next page: far above any real poll (10,000 pages of 50 records is
/// half a million records), and reached in minutes rather than never.
pub(crate) const DEFAULT_MAX_PAGES: u64 = 10_000;

/// A compiled action.
#[derive(Debug)]
pub struct Action {
    /// Action id.
    pub id: String,
    /// Human name.
    pub title: String,
    /// What it does.
    pub description: String,
    /// Typed inputs.
    pub inputs: IndexMap<String, Field>,
    /// At least one of these inputs must be given.
    pub require_any: Vec<String>,
    /// The array input sent one request per item, if any.
    pub for_each: Option<String>,
    /// Documented output fields.
    pub outputs: IndexMap<String, Field>,
    /// Error rules checked before the connector's.
    pub errors: Vec<ErrorRule>,
    /// A `conflict` resolved to the existing object.
    pub on_conflict: Option<OnConflict>,
    /// Kinds of record it changes (side effects included), for `validate`.
    pub changes: Vec<String>,
    /// Ways to perform it (one when the spec has a single `request`).
    pub variants: Vec<Variant>,
    /// Whether a request whose answer was lost may be sent again as is.
    pub retry_safe: RetrySafe,
    /// For a create that is not: how to look for the earlier attempt first.
    pub find_earlier: Option<FindEarlier>,
}

/// Whether an action's request whose answer was lost may be sent again as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySafe {
    /// Always (reads, updates, deletes, upserts).
    Always,
    /// Never (a plain create).
    Never,
    /// When one of these inputs is given (a natural key).
    WhenAny(Vec<String>),
}

impl RetrySafe {
    fn only_if(self, yes: bool) -> RetrySafe {
        if yes {
            self
        } else {
            RetrySafe::Never
        }
    }

    /// Whether it is safe for these inputs.
    pub fn holds_for(&self, input: &serde_json::Map<String, Value>) -> bool {
        match self {
            RetrySafe::Always => true,
            RetrySafe::Never => false,
            RetrySafe::WhenAny(names) => names
                .iter()
                .any(|n| input.get(n).is_some_and(|v| !v.is_null())),
        }
    }
}

/// How to look for an earlier attempt of a create whose answer was lost.
#[derive(Debug)]
pub struct FindEarlier {
    /// The listing request.
    pub request: Request,
    /// Path to the candidates.
    pub records: Vec<String>,
    /// Candidate field path and the template of the value it must have.
    pub matches: Vec<(Vec<String>, Template)>,
    /// Path to a candidate's creation time.
    pub created_field: Option<Vec<String>>,
}

/// One compiled way to perform an action.
#[derive(Debug)]
pub struct Variant {
    /// When it applies (`None`: always).
    pub when: Option<Condition>,
    /// Inputs it additionally requires.
    pub requires: Vec<String>,
    /// The request.
    pub request: Request,
    /// Output path.
    pub output: Vec<String>,
}

/// A compiled variant condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The input is given (and not null).
    Present(String),
    /// The input equals the value.
    Equals(String, Value),
}

/// A key made of literal text and record field references: `{{id}}:{{updated_at}}`.
///
/// Deliberately not Handlebars: it is evaluated for every polled record, so it is a list of
/// pieces walked without allocation beyond the result.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    parts: Vec<KeyPart>,
}

#[derive(Debug, Clone)]
enum KeyPart {
    Lit(String),
    Field(Vec<String>),
}

impl KeyTemplate {
    /// Compiles a key template; only plain field references are allowed inside `{{ }}`.
    pub fn compile(src: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(KeyPart::Lit(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` without `}}}}` in `{src}`"))?;
            let field = after[..end].trim();
            if field.is_empty()
                || !field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(format!(
                    "`{{{{{field}}}}}` is not a plain field reference; a dedupe key may only contain record fields like `{{{{id}}}}`"
                ));
            }
            parts.push(KeyPart::Field(
                field.split('.').map(str::to_string).collect(),
            ));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(KeyPart::Lit(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, KeyPart::Field(_))) {
            return Err("a dedupe key must refer to at least one record field".into());
        }
        Ok(KeyTemplate { parts })
    }

    /// The top-level record fields the key refers to.
    pub fn field_heads(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            KeyPart::Field(path) => path.first().map(String::as_str),
            KeyPart::Lit(_) => None,
        })
    }

    /// Renders the key for a record, or names the missing field.
    pub fn render(&self, record: &Value) -> Result<String, String> {
        let mut out = String::with_capacity(32);
        for p in &self.parts {
            match p {
                KeyPart::Lit(s) => out.push_str(s),
                KeyPart::Field(path) => match crate::template::lookup(record, path) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Number(n)) => {
                        use std::fmt::Write;
                        let _ = write!(out, "{n}");
                    }
                    Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
                    _ => return Err(format!("the record has no `{}`", path.join("."))),
                },
            }
        }
        Ok(out)
    }
}

/// Parses a duration such as `90s`, `10m`, `2h`, `1d` into seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; write e.g. `30s`, `10m`, `2h` or `1d`"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("`{s}` does not start with a whole number"));
    }
    // Only digits by construction: a number that does not parse is too large.
    let n: i64 = num.parse().map_err(|_| format!("`{s}` is far too large"))?;
    let mult = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        other => {
            return Err(format!(
            "unknown unit `{other}` in `{s}`; use s, m, h or d (or seconds, minutes, hours, days)"
        ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is far too large"))
}

struct Ctx<'a> {
    file: &'a Path,
    index: &'a LocationIndex,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, msg: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::error(self.file, msg).at(self.index, path);
        d.help = help;
        self.diags.push(d);
    }
}

/// Builds a connector from its spec, returning every problem found.
pub fn build_connector(spec: &ConnectorSpec) -> Result<Connector, Vec<Diagnostic>> {
    let mut cx = Ctx {
        file: &spec.file,
        index: &spec.index,
        diags: Vec::new(),
    };
    let h = &spec.header;
    if let Some(stem) = spec.file.file_stem().and_then(|s| s.to_str()) {
        if stem != h.id && spec.file.extension().is_some() {
            cx.err(
                "id",
                format!(
                    "connector id `{}` differs from the file name `{stem}`",
                    h.id
                ),
                Some(format!(
                    "rename the file to `{}.yaml` or set `id: {stem}`",
                    h.id
                )),
            );
        }
    }
    check_snake(&mut cx, "id", &h.id, "connector id");
    if !h.regions.contains_key(&h.default_region) {
        cx.err(
            "default_region",
            format!(
                "default region `{}` is not listed under `regions`",
                h.default_region
            ),
            Some(format!(
                "use one of: {}",
                h.regions.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        );
    }
    for (name, url) in &h.regions {
        check_url(&mut cx, &format!("regions.{name}"), url);
    }
    if h.auth.is_empty() {
        cx.err(
            "auth",
            "the connector lists no way to authenticate",
            Some("add `- kind: bearer`".into()),
        );
    }
    for (i, a) in h.auth.iter().enumerate() {
        if let AuthSpec::Oauth2AuthorizationCode {
            authorize_url,
            token_url,
            regions,
            ..
        } = a
        {
            check_url(&mut cx, &format!("auth.{i}.authorize_url"), authorize_url);
            check_url(&mut cx, &format!("auth.{i}.token_url"), token_url);
            for (r, urls) in regions {
                if !h.regions.contains_key(r) {
                    cx.err(
                        &format!("auth.{i}.regions.{r}"),
                        format!("`{r}` is not one of the connector's regions"),
                        None,
                    );
                }
                check_url(
                    &mut cx,
                    &format!("auth.{i}.regions.{r}.authorize_url"),
                    &urls.authorize_url,
                );
                check_url(
                    &mut cx,
                    &format!("auth.{i}.regions.{r}.token_url"),
                    &urls.token_url,
                );
            }
        }
    }
    check_rules(&mut cx, "errors", &h.errors);
    if let Some(rl) = &h.rate_limit {
        if let Some(w) = &rl.window {
            match parse_duration(w) {
                Err(m) => cx.err("rate_limit.window", m, Some("e.g. `window: 10s`".into())),
                Ok(secs) if !(1..=86_400).contains(&secs) => cx.err(
                    "rate_limit.window",
                    format!("`{w}` is outside 1s to 1d"),
                    Some("e.g. `window: 10s`".into()),
                ),
                Ok(_) => {}
            }
        }
        if rl.limit == Some(0) {
            cx.err(
                "rate_limit.limit",
                "`limit` must be at least 1",
                Some("the calls the API allows per window, e.g. `limit: 166`".into()),
            );
        }
    }
    if h.max_response_mb == Some(0) {
        cx.err(
            "max_response_mb",
            "`max_response_mb` must be at least 1",
            Some(format!(
                "leave it out for the default of {} MiB",
                connection::DEFAULT_MAX_RESPONSE_MB
            )),
        );
    }

    let mut triggers = IndexMap::new();
    for (id, t) in &spec.triggers {
        if let Some(t) = build_trigger(&mut cx, id, t) {
            triggers.insert(id.clone(), t);
        }
    }
    let mut actions = IndexMap::new();
    for (id, a) in &spec.actions {
        if let Some(a) = build_action(&mut cx, id, a) {
            actions.insert(id.clone(), a);
        }
    }
    for (id, a) in &spec.actions {
        if let Some(oc) = &a.on_conflict {
            let path = format!("actions.{id}.on_conflict");
            match spec.actions.get(&oc.then) {
                None => cx.err(
                    &format!("{path}.then"),
                    format!(
                        "`then` names `{}`, which is not an action of this connector",
                        oc.then
                    ),
                    None,
                ),
                Some(t) if !t.inputs.contains_key(&oc.input) => cx.err(
                    &format!("{path}.input"),
                    format!("action `{}` has no input `{}`", oc.then, oc.input),
                    None,
                ),
                Some(_) => {}
            }
            if oc.id_after.is_empty() {
                cx.err(
                    &format!("{path}.id_after"),
                    "`id_after` must not be empty",
                    None,
                );
            }
        }
    }
    if cx.diags.is_empty() {
        Ok(Connector {
            id: h.id.clone(),
            api: api::api(h),
            triggers,
            actions,
        })
    } else {
        Err(cx.diags)
    }
}

fn check_snake(cx: &mut Ctx, path: &str, s: &str, what: &str) {
    let ok = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        cx.err(
            path,
            format!("{what} `{s}` must be snake_case (lowercase letters, digits, `_`)"),
            None,
        );
    }
}

fn check_url(cx: &mut Ctx, path: &str, url: &str) {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        cx.err(
            path,
            format!("`{url}` is not an http(s) URL"),
            Some("write the full URL, e.g. `https://api.example.com`".into()),
        );
    }
}

fn check_rules(cx: &mut Ctx, path: &str, rules: &[ErrorRuleSpec]) {
    for (i, r) in rules.iter().enumerate() {
        if r.status.is_empty() {
            cx.err(
                &format!("{path}.{i}.status"),
                "an error rule needs at least one status",
                None,
            );
        }
        for s in &r.status {
            if !(100..=599).contains(s) {
                cx.err(
                    &format!("{path}.{i}.status"),
                    format!("{s} is not an HTTP status"),
                    None,
                );
            }
        }
        if let Some(d) = &r.retry_for {
            let at = format!("{path}.{i}.retry_for");
            match parse_duration(d) {
                Err(m) => cx.err(&at, m, Some("e.g. `retry_for: 90s`".into())),
                Ok(secs) if !(1..=3600).contains(&secs) => cx.err(
                    &at,
                    format!("`{d}` is outside 1s to 1h"),
                    Some("e.g. `retry_for: 90s`".into()),
                ),
                Ok(_) if r.class != FailureClassSpec::Retryable => cx.err(
                    &at,
                    "`retry_for` only applies to rules of class `retryable`",
                    None,
                ),
                Ok(_) => {}
            }
        }
    }
}

/// What a template may refer to, for reference checks.
struct Scope<'a> {
    roots: &'a [&'a str],
    /// Root name → allowed children (`input` → input names); roots not listed take any child.
    children: Vec<(&'a str, BTreeSet<String>)>,
}

fn check_refs(cx: &mut Ctx, path: &str, tpl: &Template, scope: &Scope) {
    for r in tpl.refs() {
        let Some(root) = r.first() else { continue };
        if !scope.roots.contains(&root.as_str()) {
            let help = spec::did_you_mean(root, scope.roots.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| format!("templates here can use: {}", scope.roots.join(", ")));
            cx.err(
                path,
                format!(
                    "template refers to `{}`, which does not exist here",
                    r.join(".")
                ),
                Some(help),
            );
            continue;
        }
        if let Some((_, allowed)) = scope.children.iter().find(|(n, _)| *n == root) {
            match r.get(1) {
                Some(child) if !allowed.contains(child) => {
                    let help = spec::did_you_mean(child, allowed.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{root}.{s}`?"))
                        .unwrap_or_else(|| {
                            format!(
                                "declare it under `{}` or use one of: {}",
                                if *root == "input" {
                                    "inputs"
                                } else {
                                    "options"
                                },
                                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                            )
                        });
                    cx.err(
                        path,
                        format!("template refers to `{root}.{child}`, which is not declared"),
                        Some(help),
                    );
                }
                _ => {}
            }
        }
    }
}

fn build_request(
    cx: &mut Ctx,
    path: &str,
    spec: &RequestSpec,
    scope: &Scope,
    path_params: &BTreeSet<String>,
) -> Option<Request> {
    let before = cx.diags.len();
    // Path: literal pieces and {param}s.
    let mut parts = Vec::new();
    let mut rest = spec.path.as_str();
    if !rest.starts_with('/') {
        cx.err(
            &format!("{path}.path"),
            format!("path `{rest}` must start with `/`"),
            None,
        );
    }
    while let Some(i) = rest.find('{') {
        if i > 0 {
            parts.push(PathPart::Lit(rest[..i].to_string()));
        }
        let Some(end) = rest[i..].find('}') else {
            cx.err(
                &format!("{path}.path"),
                format!("`{{` without `}}` in path `{}`", spec.path),
                None,
            );
            break;
        };
        let name = rest[i + 1..i + end].trim().to_string();
        if !path_params.contains(&name) {
            let help = spec::did_you_mean(&name, path_params.iter().map(String::as_str))
                .map(|s| format!("did you mean `{{{s}}}`?"))
                .unwrap_or_else(|| "path parameters must name a declared input".into());
            cx.err(
                &format!("{path}.path"),
                format!("path parameter `{{{name}}}` is not a declared input"),
                Some(help),
            );
        }
        parts.push(PathPart::Param(name));
        rest = &rest[i + end + 1..];
    }
    if !rest.is_empty() {
        parts.push(PathPart::Lit(rest.to_string()));
    }
    if rest.contains('}') {
        cx.err(&format!("{path}.path"), "unbalanced `}` in path", None);
    }
    let mut query = Vec::new();
    for (k, v) in &spec.query {
        let qpath = format!("{path}.query.{k}");
        match Template::compile(v) {
            Ok(t) => {
                check_refs(cx, &qpath, &t, scope);
                query.push((k.clone(), t));
            }
            Err(e) => {
                let help = e.help.clone();
                cx.err(&qpath, e, help)
            }
        }
    }
    let body = match &spec.body {
        None => None,
        Some(b) => {
            if !b.is_mapping() {
                cx.err(
                    &format!("{path}.body"),
                    "a request body must be a YAML mapping whose leaves may be templates",
                    Some("never write JSON inside a string; write the keys as YAML".into()),
                );
            }
            let (tree, errs) = Tree::compile(b);
            for (p, e) in errs {
                let help = e.help.clone();
                cx.err(&format!("{path}.body.{p}"), e, help);
            }
            for (p, t) in tree.templates() {
                check_refs(cx, &format!("{path}.body.{p}"), t, scope);
            }
            Some(tree)
        }
    };
    if spec.method == MethodSpec::Get && spec.body.is_some() {
        cx.err(
            &format!("{path}.body"),
            "a GET request cannot have a body",
            Some("move the fields to `query`".into()),
        );
    }
    (cx.diags.len() == before).then_some(Request {
        method: spec.method.into(),
        path: parts,
        query,
        body,
    })
}

fn split_path(p: &str) -> Vec<String> {
    if p.is_empty() {
        vec![]
    } else {
        p.split('.').map(str::to_string).collect()
    }
}

fn check_field(cx: &mut Ctx, path: &str, f: &FieldSpec) {
    let ok = |v: &Value| type_matches(f.ty.into(), v);
    if let Some(ex) = &f.example {
        if !ok(ex) {
            cx.err(
                &format!("{path}.example"),
                format!("example {ex} is not of type {:?}", f.ty).to_lowercase(),
                None,
            );
        }
    }
    if let Some(allowed) = &f.allowed {
        for v in allowed {
            if !ok(v) {
                cx.err(
                    &format!("{path}.enum"),
                    format!("allowed value {v} is not of type {:?}", f.ty).to_lowercase(),
                    None,
                );
            }
        }
    }
    if f.items.is_some() && f.ty != FieldTypeSpec::Array {
        cx.err(
            &format!("{path}.items"),
            "`items` only applies to `type: array`",
            None,
        );
    }
}

/// Whether a JSON value fits a declared field type.
pub fn type_matches(ty: FieldType, v: &Value) -> bool {
    match ty {
        FieldType::String => v.is_string(),
        FieldType::Integer | FieldType::Timestamp => v.is_i64() || v.is_u64(),
        FieldType::Number => v.is_number(),
        FieldType::Boolean => v.is_boolean(),
        FieldType::Object => v.is_object(),
        FieldType::Array => v.is_array(),
        FieldType::Any => true,
    }
}

fn build_trigger(cx: &mut Ctx, id: &str, t: &TriggerSpec) -> Option<Trigger> {
    let before = cx.diags.len();
    let base = format!("triggers.{id}");
    check_snake(cx, &base, id, "trigger id");
    let options: BTreeSet<String> = t.options.keys().cloned().collect();
    for (name, f) in &t.options {
        check_field(cx, &format!("{base}.options.{name}"), f);
    }
    let scope = Scope {
        roots: &["since", "page_size", "options"],
        children: vec![("options", options.clone())],
    };
    let request = build_request(cx, &format!("{base}.request"), &t.request, &scope, &options);
    let (page_size, max) = t.pagination.page_sizes();
    for (field, v) in [("page_size", page_size), ("max_page_size", max)] {
        if v == Some(0) {
            cx.err(
                &format!("{base}.pagination.{field}"),
                format!("`{field}` must be at least 1: a page of 0 records never ends a poll"),
                Some("give the number of records a page holds, e.g. `page_size: 50`".into()),
            );
        }
    }
    if let (Some(p), Some(m)) = (page_size, max) {
        if p > m {
            cx.err(
                &format!("{base}.pagination.page_size"),
                format!("page size {p} is above the API's maximum of {m}"),
                Some(format!("use at most {m}")),
            );
        }
    }
    if t.pagination.max_pages() == Some(0) {
        cx.err(
            &format!("{base}.pagination.max_pages"),
            "`max_pages` must be at least 1",
            Some(format!(
                "leave it out for the default of {DEFAULT_MAX_PAGES} pages"
            )),
        );
    }
    if let PaginationSpec::Cursor {
        send_in: SendInSpec::Body,
        ..
    } = &t.pagination
    {
        if t.request.body.is_none() {
            cx.err(
                &format!("{base}.pagination.send_in"),
                "the cursor goes in the body, but the request has no body",
                None,
            );
        }
    }
    if t.kind == TriggerKindSpec::Search && t.cursor.sort == SortSpec::None {
        cx.err(
            &format!("{base}.cursor.sort"),
            "a search trigger must return records in cursor order (`sort: ascending`)",
            Some(
                "sort on the server, or use `kind: scan` which sorts after reading every page"
                    .into(),
            ),
        );
    }
    let lookback_secs = match parse_duration(&t.lookback) {
        Ok(s) => s,
        Err(e) => {
            cx.err(&format!("{base}.lookback"), e, None);
            0
        }
    };
    let dedupe_key = match KeyTemplate::compile(&t.dedupe_key) {
        Ok(k) => Some(k),
        Err(e) => {
            cx.err(&format!("{base}.dedupe_key"), e, None);
            None
        }
    };
    for (name, f) in &t.outputs {
        check_field(cx, &format!("{base}.outputs.{name}"), f);
    }
    check_rules(cx, &format!("{base}.errors"), &t.errors);
    if cx.diags.len() != before {
        return None;
    }
    let dedupe_key = dedupe_key?;
    let id_field = split_path(&t.id_field);
    let cursor_field = split_path(&t.cursor.field);
    let mut record_fields: Vec<String> = Vec::new();
    for head in [id_field.first(), cursor_field.first()]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(dedupe_key.field_heads())
    {
        if !record_fields.iter().any(|f| f == head) {
            record_fields.push(head.to_string());
        }
    }
    let (pagination, page_size) = api::pagination(&t.pagination);
    Some(Trigger {
        id: id.to_string(),
        title: t.title.clone(),
        description: t.description.clone(),
        pagination,
        page_size,
        cursor: api::cursor(&t.cursor),
        options: api::fields(&t.options),
        outputs: api::fields(&t.outputs),
        errors: api::error_rules(&t.errors),
        object: t.object.clone(),
        request: request?,
        records: split_path(&t.records),
        id_field,
        cursor_field,
        lookback_secs,
        dedupe_key,
        record_fields,
        max_pages: t.pagination.max_pages().unwrap_or(DEFAULT_MAX_PAGES),
    })
}

fn build_action(cx: &mut Ctx, id: &str, a: &ActionSpec) -> Option<Action> {
    let before = cx.diags.len();
    let base = format!("actions.{id}");
    check_snake(cx, &base, id, "action id");
    let inputs: BTreeSet<String> = a.inputs.keys().cloned().collect();
    for (name, f) in &a.inputs {
        check_snake(cx, &format!("{base}.inputs.{name}"), name, "input name");
        check_field(cx, &format!("{base}.inputs.{name}"), f);
    }
    for r in &a.require_any {
        if !inputs.contains(r) {
            cx.err(
                &format!("{base}.require_any"),
                format!("`require_any` names `{r}`, which is not a declared input"),
                None,
            );
        }
    }
    let mut path_params = inputs.clone();
    let mut roots = vec!["input"];
    if let Some(fe) = &a.for_each {
        match a.inputs.get(fe) {
            Some(f) if f.ty == FieldTypeSpec::Array => {}
            Some(_) => cx.err(
                &format!("{base}.for_each"),
                format!("`for_each` input `{fe}` must be `type: array`"),
                None,
            ),
            None => cx.err(
                &format!("{base}.for_each"),
                format!("`for_each` names `{fe}`, which is not a declared input"),
                None,
            ),
        }
        path_params.insert("item".into());
        roots.push("item");
    }
    let scope = Scope {
        roots: &roots,
        children: vec![("input", inputs.clone())],
    };
    let mut variants = Vec::new();
    match (&a.request, a.variants.is_empty()) {
        (Some(r), true) => {
            if let Some(req) =
                build_request(cx, &format!("{base}.request"), r, &scope, &path_params)
            {
                variants.push(Variant {
                    when: None,
                    requires: vec![],
                    request: req,
                    output: split_path(&a.output),
                });
            }
        }
        (None, false) => {
            for (i, v) in a.variants.iter().enumerate() {
                let vpath = format!("{base}.variants.{i}");
                let cond = match (&v.when.present, &v.when.input, &v.when.equals) {
                    (Some(p), None, None) => Some(Condition::Present(p.clone())),
                    (None, Some(i), Some(e)) => Some(Condition::Equals(i.clone(), e.clone())),
                    _ => {
                        cx.err(
                            &format!("{vpath}.when"),
                            "`when` takes either `present: <input>` or `input: <input>` with `equals: <value>`",
                            None,
                        );
                        None
                    }
                };
                let named = match &cond {
                    Some(Condition::Present(n)) | Some(Condition::Equals(n, _)) => n.clone(),
                    None => continue,
                };
                if !inputs.contains(&named) {
                    cx.err(
                        &format!("{vpath}.when"),
                        format!("`when` names `{named}`, which is not a declared input"),
                        None,
                    );
                }
                if let Some(Condition::Equals(input, value)) = &cond {
                    if let Some(allowed) = a.inputs.get(input).and_then(|f| f.allowed.as_ref()) {
                        if !allowed.contains(value) {
                            cx.err(
                                &format!("{vpath}.when"),
                                format!("{value} is not an allowed value of `{input}`"),
                                None,
                            );
                        }
                    }
                }
                for r in &v.requires {
                    if !inputs.contains(r) {
                        cx.err(
                            &format!("{vpath}.requires"),
                            format!("`requires` names `{r}`, which is not a declared input"),
                            None,
                        );
                    }
                }
                if let Some(req) = build_request(
                    cx,
                    &format!("{vpath}.request"),
                    &v.request,
                    &scope,
                    &path_params,
                ) {
                    variants.push(Variant {
                        when: cond,
                        requires: v.requires.clone(),
                        request: req,
                        output: split_path(v.output.as_deref().unwrap_or(&a.output)),
                    });
                }
            }
        }
        (Some(_), false) => cx.err(
            &base,
            "an action has either `request` or `variants`, not both",
            None,
        ),
        (None, true) => cx.err(
            &base,
            "the action has no `request`",
            Some("add `request:` with method and path".into()),
        ),
    }
    for (name, f) in &a.outputs {
        check_field(cx, &format!("{base}.outputs.{name}"), f);
    }
    check_rules(cx, &format!("{base}.errors"), &a.errors);
    let by_method = variants
        .iter()
        .all(|v| matches!(v.request.method, Method::Get | Method::Put | Method::Delete));
    let retry_safe = match &a.retry_safe {
        None => RetrySafe::Always.only_if(by_method),
        Some(RetrySafeSpec::Flag(b)) => RetrySafe::Always.only_if(*b),
        Some(RetrySafeSpec::WhenAny { when_any }) => {
            for n in when_any {
                if !inputs.contains(n) {
                    cx.err(
                        &format!("{base}.retry_safe.when_any"),
                        format!("`{n}` is not a declared input"),
                        None,
                    );
                }
            }
            RetrySafe::WhenAny(when_any.clone())
        }
    };
    let find_earlier = a.find_earlier.as_ref().and_then(|f| {
        let fpath = format!("{base}.find_earlier");
        if retry_safe == RetrySafe::Always {
            cx.err(
                &fpath,
                "`find_earlier` is for actions that are not safe to repeat",
                Some("remove it, or set `retry_safe: false`".into()),
            );
        }
        if f.request.method != MethodSpec::Get && f.request.method != MethodSpec::Post {
            cx.err(
                &format!("{fpath}.request.method"),
                "the lookup must be a GET (or a POST search)",
                None,
            );
        }
        if a.for_each.is_some() {
            cx.err(
                &fpath,
                "`find_earlier` cannot be used with `for_each`",
                Some("declare the action `retry_safe: true` if repeating it is harmless".into()),
            );
        }
        if f.matches.is_empty() {
            cx.err(
                &format!("{fpath}.match"),
                "name at least one field that must equal what was sent",
                Some("e.g. `match: {body: \"{{input.body}}\"}`".into()),
            );
        }
        let mut matches = Vec::new();
        for (field, src) in &f.matches {
            let at = format!("{fpath}.match.{field}");
            match Template::compile(src) {
                Ok(t) => {
                    check_refs(cx, &at, &t, &scope);
                    matches.push((split_path(field), t));
                }
                Err(e) => {
                    let help = e.help.clone();
                    cx.err(&at, e, help)
                }
            }
        }
        let request = build_request(
            cx,
            &format!("{fpath}.request"),
            &f.request,
            &scope,
            &path_params,
        )?;
        Some(FindEarlier {
            request,
            records: split_path(&f.records),
            matches,
            created_field: f.created_field.as_deref().map(split_path),
        })
    });
    (cx.diags.len() == before).then(|| Action {
        id: id.to_string(),
        title: a.title.clone(),
        description: a.description.clone(),
        inputs: api::fields(&a.inputs),
        require_any: a.require_any.clone(),
        for_each: a.for_each.clone(),
        outputs: api::fields(&a.outputs),
        errors: api::error_rules(&a.errors),
        on_conflict: a.on_conflict.as_ref().map(|o| OnConflict {
            id_after: o.id_after.clone(),
            then: o.then.clone(),
            input: o.input.clone(),
        }),
        changes: a.changes.clone(),
        variants,
        retry_safe,
        find_earlier,
    })
}

/// The Intercom connector shipped inside the binary, used when no connectors directory is
/// found or given.
pub const BUILTIN_INTERCOM: &str = include_str!("../../connectors/intercom.yaml");

/// The connectors of `dir`, or the built-in Intercom connector when there is none.
pub fn load_connectors_from(dir: Option<&Path>) -> Result<Vec<Arc<Connector>>, Vec<Diagnostic>> {
    match dir {
        Some(d) => load_connectors_dir(d),
        None => load_connector_text(Path::new("<built-in>/intercom.yaml"), BUILTIN_INTERCOM)
            .map(|c| vec![Arc::new(c)]),
    }
}

/// Reads and builds every connector file (`*.yaml`) in a directory.
pub fn load_connectors_dir(dir: &Path) -> Result<Vec<Arc<Connector>>, Vec<Diagnostic>> {
    let files = spec::yaml_files_in(dir).map_err(|e| {
        vec![Diagnostic::error(
            dir,
            format!("cannot read the connectors directory: {e}"),
        )]
    })?;
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match load_connector_text(&f, &text) {
                Ok(c) => out.push(Arc::new(c)),
                Err(d) => diags.extend(d),
            },
            Err(e) => diags.push(Diagnostic::error(&f, format!("cannot read the file: {e}"))),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// Parses and builds one connector from its text.
pub fn load_connector_text(file: &Path, text: &str) -> Result<Connector, Vec<Diagnostic>> {
    let (spec, mut diags) = spec::parse_connector(file, text);
    match spec {
        Some(spec) => match build_connector(&spec) {
            Ok(c) if diags.is_empty() => Ok(c),
            Ok(_) => Err(diags),
            Err(more) => {
                diags.extend(more);
                Err(diags)
            }
        },
        None => Err(diags),
    }
}

impl Request {
    /// Renders the request against `scope`. Path parameters are looked up as `item` or under
    /// `param_root` (`input` for actions, `options` for triggers) and always percent-encoded.
    pub fn render(
        &self,
        scope: &crate::template::Scope,
        param_root: &str,
    ) -> Result<crate::http::HttpRequest, String> {
        let mut path = String::new();
        for p in &self.path {
            match p {
                PathPart::Lit(s) => path.push_str(s),
                PathPart::Param(name) => {
                    let v = if name == "item" {
                        crate::template::lookup(scope.value(), &["item"])
                    } else {
                        crate::template::lookup(scope.value(), &[param_root, name.as_str()])
                    };
                    let text = match v {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(other) => {
                            return Err(format!(
                                "path parameter `{name}` must be text or a number, not {other}"
                            ))
                        }
                        None => return Err(format!("path parameter `{name}` has no value")),
                    };
                    check_segment(name, &text)?;
                    path.extend(percent_encoding::utf8_percent_encode(&text, PATH_SEGMENT));
                }
            }
        }
        let mut query = Vec::with_capacity(self.query.len());
        for (k, t) in &self.query {
            if let Some(v) = t.render_string(scope).map_err(|e| e.to_string())? {
                query.push((k.clone(), v));
            }
        }
        let body = match &self.body {
            Some(t) => Some(
                t.render(scope)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_else(|| Value::Object(Default::default())),
            ),
            None => None,
        };
        Ok(crate::http::HttpRequest {
            method: self.method,
            path,
            query,
            body,
        })
    }
}

/// Refuses a path-parameter value that cannot be sent as one opaque segment: empty, `.` or
/// `..`. Encoding does not help with the dot segments: URL parsers (WHATWG, so reqwest's)
/// remove `.`, `..`, `%2e` and `.%2E` segments alike, so `/contacts/{id}/tags` with `id: ..`
/// would reach `/tags`. Every other value is safe once encoded with [`PATH_SEGMENT`].
fn check_segment(name: &str, text: &str) -> Result<(), String> {
    match text {
        "" => Err(format!("path parameter `{name}` is empty")),
        "." | ".." => Err(format!(
            "path parameter `{name}` is `{text}`, which would change the request's path; an id is never `.` or `..`"
        )),
        _ => Ok(()),
    }
}

/// Everything but RFC 3986's unreserved characters (ASCII letters, digits, `-`, `.`, `_`,
/// `~`) is encoded, and every non-ASCII byte is too, so a value is always exactly one segment:
/// `/`, `\` (a separator to WHATWG parsers), `?`, `#`, `;` and `%` are encoded (a literal
/// `%2e` becomes `%252e`, which no parser decodes to a dot). Unencoded characters can form a
/// dot segment only as `.` or `..`, which [`check_segment`] refuses.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_template_renders_fields() {
        let k = KeyTemplate::compile("{{id}}:{{updated_at}}").unwrap();
        assert_eq!(
            k.render(&json!({"id": "a", "updated_at": 5})).unwrap(),
            "a:5"
        );
        assert!(k
            .render(&json!({"id": "a"}))
            .unwrap_err()
            .contains("updated_at"));
        assert!(KeyTemplate::compile("static").is_err());
        assert!(KeyTemplate::compile("{{lowercase id}}").is_err());
    }

    #[test]
    fn path_parameters_are_one_opaque_segment() {
        let req = Request {
            method: Method::Delete,
            path: vec![
                PathPart::Lit("/contacts/".into()),
                PathPart::Param("id".into()),
                PathPart::Lit("/tags".into()),
            ],
            query: vec![],
            body: None,
        };
        let render = |id: &str| {
            let scope = crate::template::Scope::new(json!({"input": {"id": id}}));
            req.render(&scope, "input").map(|r| r.path)
        };
        for bad in ["", ".", ".."] {
            assert!(render(bad).unwrap_err().contains("`id`"), "{bad:?}");
        }
        assert!(render("..")
            .unwrap_err()
            .contains("is `..`, which would change the request's path"));
        for (value, sent) in [
            ("/", "/contacts/%2F/tags"),
            ("?", "/contacts/%3F/tags"),
            ("#", "/contacts/%23/tags"),
            ("\\", "/contacts/%5C/tags"),
            ("%2e%2e", "/contacts/%252e%252e/tags"),
            (".%2E", "/contacts/.%252E/tags"),
            ("...", "/contacts/.../tags"),
            ("a.b-c_d~e", "/contacts/a.b-c_d~e/tags"),
            ("é", "/contacts/%C3%A9/tags"),
        ] {
            assert_eq!(render(value).unwrap(), sent, "{value:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_duration("5 minutes"), Ok(300));
        assert_eq!(parse_duration("2 hrs"), Ok(7200));
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err("`99999999999999999999s` is far too large".into())
        );
        assert_eq!(
            parse_duration("9223372036854775807d"),
            Err("`9223372036854775807d` is far too large".into())
        );
    }
}
