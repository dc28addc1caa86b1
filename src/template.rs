//! Templates: the only Handlebars registry, compiled template strings, and YAML trees of them.
//!
//! Owns compiling `{{ … }}` strings and rendering them against a JSON scope. A template that is
//! exactly one path expression (`{{ input.size }}`) keeps its JSON type and is evaluated without
//! Handlebars; anything else renders a string through Handlebars in strict mode with no HTML
//! escaping. Does not know about HTTP or state.

use std::sync::OnceLock;

use handlebars::{Handlebars, Renderable};
use serde_json::{Map, Value};

/// The shared registry: strict mode, no escaping, sluice's helper set.
pub fn registry() -> &'static Handlebars<'static> {
    static REG: OnceLock<Handlebars<'static>> = OnceLock::new();
    REG.get_or_init(|| {
        #[allow(clippy::disallowed_methods)]
        let mut h = Handlebars::new();
        h.set_strict_mode(true);
        h.register_escape_fn(handlebars::no_escape);
        helpers::register(&mut h);
        h
    })
}

/// The data a template is rendered against, with its Handlebars form built at most once.
pub struct Scope {
    value: Value,
    hb: OnceLock<handlebars::Context>,
}

impl Scope {
    /// Wraps a JSON object as a scope.
    pub fn new(value: Value) -> Scope {
        Scope {
            value,
            hb: OnceLock::new(),
        }
    }

    /// The JSON value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The JSON value, for changing it (the Handlebars form is rebuilt when next needed).
    pub fn value_mut(&mut self) -> &mut Value {
        self.hb = OnceLock::new();
        &mut self.value
    }

    /// Takes the JSON value back.
    pub fn into_value(self) -> Value {
        self.value
    }

    fn hb(&self) -> &handlebars::Context {
        self.hb
            .get_or_init(|| handlebars::Context::from(self.value.clone()))
    }
}

/// A compiled template string.
#[derive(Debug, Clone)]
pub enum Template {
    /// No `{{`: the text itself.
    Literal(String),
    /// Exactly one path expression: the value at that path, JSON type kept.
    Path(Vec<String>),
    /// Exactly one helper expression (`{{default record.plan "free"}}`): its JSON value, type
    /// kept. Compiled as `{{json (…)}}` and parsed back.
    Expr(Box<handlebars::Template>, String),
    /// Anything else: rendered to a string by Handlebars.
    Text(Box<handlebars::Template>, String),
}

/// Why a template does not compile: a sentence, and how to fix it when there is more to say
/// than "templates look like `{{record.email}}`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl TemplateError {
    fn new(message: impl Into<String>) -> TemplateError {
        TemplateError {
            message: message.into(),
            help: None,
        }
    }

    fn with_help(message: impl Into<String>, help: impl Into<String>) -> TemplateError {
        TemplateError {
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<TemplateError> for String {
    fn from(e: TemplateError) -> String {
        e.message
    }
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError(pub String);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RenderError {}

impl Template {
    /// Compiles a template string, reporting a syntax error in words. Every helper call is
    /// checked against the helper table (name, number of arguments, a literal `date` format
    /// or time zone), so what compiles here does not fail at run time for those reasons.
    pub fn compile(src: &str) -> Result<Template, TemplateError> {
        if !src.contains("{{") {
            return Ok(Template::Literal(src.to_string()));
        }
        if let Some(path) = single_path(src) {
            return Ok(Template::Path(path));
        }
        // A single expression is parsed once, inside `json (…)` (the typed form); a syntax
        // error is reported from the text as written.
        if let Some(inner) = single_expression(src) {
            if let Ok(typed) = compile_hb(&format!("{{{{json ({inner})}}}}")) {
                check::template(&typed)?;
                return Ok(Template::Expr(Box::new(typed), src.to_string()));
            }
        }
        let tpl = compile_hb(src)?;
        check::template(&tpl)?;
        Ok(Template::Text(Box::new(tpl), src.to_string()))
    }

    /// Renders to a JSON value. `Ok(None)` means a single-path template whose path is absent,
    /// which callers treat as "leave this field out" (connector bodies) or as an error naming
    /// the field (recipe inputs, see [`Template::render_required`]).
    pub fn render(&self, scope: &Scope) -> Result<Option<Value>, RenderError> {
        match self {
            Template::Literal(s) => Ok(Some(Value::String(s.clone()))),
            Template::Path(p) => Ok(lookup(scope.value(), p).cloned()),
            Template::Expr(t, src) => {
                let text = render_hb(t, src, scope)?;
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| RenderError(format!("`{src}` did not produce a value: {e}")))
            }
            Template::Text(t, src) => render_hb(t, src, scope).map(|s| Some(Value::String(s))),
        }
    }

    /// As [`Template::render`], but an absent field is an error naming it and the fields that
    /// do exist (strict mode for recipe templates).
    pub fn render_required(&self, scope: &Scope) -> Result<Value, RenderError> {
        match self.render(scope)? {
            Some(v) => Ok(v),
            None => {
                let path = match self {
                    Template::Path(p) => p.join("."),
                    _ => String::new(),
                };
                Err(RenderError(missing_message(
                    &path,
                    self.source(),
                    scope.value(),
                )))
            }
        }
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        match self {
            Template::Literal(s) => s,
            Template::Path(_) => "",
            Template::Expr(_, s) | Template::Text(_, s) => s,
        }
    }

    /// Renders a condition: false, null, 0, "", "false", empty lists and objects are false;
    /// everything else is true. An absent field is an error.
    pub fn truthy(&self, scope: &Scope) -> Result<bool, RenderError> {
        Ok(match self.render_required(scope)? {
            Value::Null => false,
            Value::Bool(b) => b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => {
                let t = s.trim();
                !(t.is_empty() || t == "false" || t == "0" || t == "null")
            }
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })
    }
}

fn compile_hb(src: &str) -> Result<handlebars::Template, TemplateError> {
    handlebars::Template::compile(src).map_err(|e| {
        let mut reason = e.reason().to_string();
        if reason.starts_with("invalid handlebars syntax") {
            reason = "every `{{` needs a matching `}}`, and a block like `{{#if x}}` needs its argument and a closing `{{/if}}`".into();
        }
        TemplateError::new(match e.pos() {
            Some((l, c)) => format!("template syntax error at {l}:{c}: {reason}"),
            None => format!("template syntax error: {reason}"),
        })
    })
}

mod check {
    //! Checks a compiled Handlebars template against the helper table: every call (also in
    //! sub-expressions and block bodies) names a helper sluice has, with an argument count it
    //! takes; `date`'s format and time zone, when written literally, are valid.
    use handlebars::template::{HelperTemplate, Parameter, TemplateElement};

    use super::{helpers, TemplateError};

    pub(super) fn template(t: &handlebars::Template) -> Result<(), TemplateError> {
        t.elements.iter().try_for_each(element)
    }

    fn element(e: &TemplateElement) -> Result<(), TemplateError> {
        match e {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => call(h, false),
            TemplateElement::HelperBlock(h) => call(h, true),
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_) => Err(TemplateError::with_help(
                "partials (`{{> …}}`) and decorators (`{{* …}}`) are not supported",
                "write the text out, or use a helper",
            )),
            // Text, comments (and anything a later Handlebars adds) call nothing.
            _ => Ok(()),
        }
    }

    fn param(p: &Parameter) -> Result<(), TemplateError> {
        match p {
            Parameter::Subexpression(sub) => match sub.element.as_ref() {
                // `(helper args…)`: always a call.
                TemplateElement::Expression(h) => call_named(h, false, true),
                other => element(other),
            },
            _ => Ok(()),
        }
    }

    fn call(h: &HelperTemplate, block: bool) -> Result<(), TemplateError> {
        call_named(h, block, false)
    }

    fn call_named(h: &HelperTemplate, block: bool, sub: bool) -> Result<(), TemplateError> {
        let name = match &h.name {
            Parameter::Subexpression(_) => {
                return Err(TemplateError::new(
                    "a helper name cannot be computed; write the helper's name",
                ))
            }
            other => other.as_name().unwrap_or_default(),
        };
        let is_call = block || sub || !h.params.is_empty() || !h.hash.is_empty();
        if is_call {
            let Some(sig) = helpers::signature(name) else {
                // `{{x}}` alone is a path; `(x)` alone may be too.
                if sub && h.params.is_empty() && h.hash.is_empty() {
                    return Ok(());
                }
                let help = match crate::spec::did_you_mean(name, helpers::names()) {
                    Some(best) => format!("did you mean `{best}`? (`{}`)", helpers::usage(best)),
                    None => format!(
                        "the helpers are: {}",
                        helpers::names().collect::<Vec<_>>().join(", ")
                    ),
                };
                return Err(TemplateError::with_help(
                    format!("there is no helper `{name}`"),
                    help,
                ));
            };
            if sig.block != block && sig.block {
                return Err(TemplateError::with_help(
                    format!("`{name}` is a block: write `{{{{#{name} …}}}}…{{{{/{name}}}}}`"),
                    format!("e.g. `{}`", sig.usage),
                ));
            }
            let n = h.params.len();
            if n < sig.min || sig.max.is_some_and(|m| n > m) {
                let takes = match sig.max {
                    Some(m) if m == sig.min => format!("{m}"),
                    Some(m) => format!("{} to {m}", sig.min),
                    None => format!("at least {}", sig.min),
                };
                let noun = if takes == "1" {
                    "argument"
                } else {
                    "arguments"
                };
                return Err(TemplateError::with_help(
                    format!(
                        "`{name}` takes {takes} {noun}, but {n} {} given",
                        if n == 1 { "is" } else { "are" }
                    ),
                    format!("write `{}`", sig.usage),
                ));
            }
            if let Some(k) = h.hash.keys().next() {
                return Err(TemplateError::with_help(
                    format!("`{name}` takes no `{k}=…` option"),
                    format!("write `{}`", sig.usage),
                ));
            }
            if name == "date" {
                date_literals(&h.params)?;
            }
        }
        for p in &h.params {
            param(p)?;
        }
        for p in h.hash.values() {
            param(p)?;
        }
        for t in [&h.template, &h.inverse].into_iter().flatten() {
            template(t)?;
        }
        Ok(())
    }

    /// `{{date ts "FORMAT" "ZONE"}}`: a literal format and zone are checked now.
    fn date_literals(params: &[Parameter]) -> Result<(), TemplateError> {
        if let Some(Parameter::Literal(serde_json::Value::String(fmt))) = params.get(1) {
            helpers::check_date_format(fmt).map_err(|m| {
                TemplateError::with_help(m, "e.g. `{{date record.created_at \"%Y-%m-%d %H:%M\"}}`")
            })?;
        }
        if let Some(Parameter::Literal(serde_json::Value::String(tz))) = params.get(2) {
            helpers::check_time_zone(tz).map_err(|m| {
                TemplateError::with_help(
                    m,
                    "use an IANA name such as `Europe/Paris`, `America/New_York` or `UTC`",
                )
            })?;
        }
        Ok(())
    }
}

fn render_hb(t: &handlebars::Template, src: &str, scope: &Scope) -> Result<String, RenderError> {
    let reg = registry();
    let mut rc = handlebars::RenderContext::new(None);
    t.renders(reg, scope.hb(), &mut rc)
        .map_err(|e| RenderError(explain_render_error(&e, src, scope.value())))
}

impl Template {
    /// Renders to text (numbers and booleans as written in JSON; absent → `None`).
    pub fn render_string(&self, scope: &Scope) -> Result<Option<String>, RenderError> {
        Ok(self.render(scope)?.map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        }))
    }

    /// The root names (first path segment) this template reads, e.g. `input` or `since`.
    pub fn refs(&self) -> Vec<Vec<String>> {
        match self {
            Template::Literal(_) => vec![],
            Template::Path(p) => vec![p.clone()],
            Template::Expr(_, src) | Template::Text(_, src) => text_refs(src),
        }
    }
}

/// `{{helper args…}}` alone (not a block, comment, partial or `else`) → `helper args…`.
fn single_expression(src: &str) -> Option<&str> {
    let t = src.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.starts_with('{') {
        return None;
    }
    let inner = inner.trim_matches('~').trim();
    if inner.is_empty() || inner.starts_with(['#', '/', '^', '!', '>', '&']) || inner == "else" {
        return None;
    }
    Some(inner)
}

fn missing_message(path: &str, src: &str, scope: &Value) -> String {
    let (parent, _) = path.rsplit_once('.').unwrap_or(("", path));
    let parent_path: Vec<&str> = if parent.is_empty() {
        vec![]
    } else {
        parent.split('.').collect()
    };
    let available = match lookup(scope, &parent_path) {
        Some(Value::Object(m)) => m.keys().cloned().collect::<Vec<_>>().join(", "),
        _ => String::new(),
    };
    let what = if src.is_empty() {
        format!("`{path}` does not exist")
    } else {
        format!("`{path}` does not exist (in template `{src}`)")
    };
    if available.is_empty() {
        what
    } else {
        format!("{what}; available: {available}")
    }
}

/// `{{ a.b.c }}` (with optional spaces) → `["a","b","c"]`; `None` for anything else.
fn single_path(src: &str) -> Option<Vec<String>> {
    let inner = src.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    if inner.is_empty() || inner.contains("{{") || inner.contains("}}") {
        return None;
    }
    if !inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        || inner.starts_with(['.', '-'])
        || inner.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return None;
    }
    // Literals and keywords are not paths.
    if matches!(inner, "true" | "false" | "null" | "this" | "else")
        || helpers::signature(inner).is_some()
    {
        return None;
    }
    Some(inner.split('.').map(str::to_string).collect())
}

/// Paths read by a Handlebars template, found lexically: every identifier-like token inside
/// `{{ }}` that is not a helper name, keyword, literal or `key=` hash name.
fn text_refs(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end]
            .trim_start_matches(['#', '/', '~', '^', '{', '!', '>'])
            .trim();
        let tokens = tokenize(inner);
        // In `helper a b` the first token is the helper; `(helper a)` likewise.
        let mut prev_open = true;
        for t in &tokens {
            let tok = t.as_str();
            let is_head = prev_open;
            prev_open = tok == "(";
            if tok == "(" || tok == ")" || tok.starts_with(['"', '\'']) || tok.contains('=') {
                continue;
            }
            if is_head && (helpers::signature(tok).is_some() || is_keyword(tok)) {
                continue;
            }
            if is_keyword(tok) || tok.starts_with('@') || tok.starts_with("..") {
                continue;
            }
            if tok
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-')
            {
                continue;
            }
            if is_head && tokens.len() > 1 && tokens[1] != ")" {
                // An unknown helper name: Handlebars reports it when rendering.
                continue;
            }
            out.push(tok.split('.').map(str::to_string).collect());
        }
        rest = &after[end + 2..];
    }
    out
}

/// Splits the inside of a mustache into tokens: quoted strings stay whole, parentheses stand
/// alone.
fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                    out.push(std::mem::take(&mut cur));
                }
            }
            None if c == '"' || c == '\'' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                quote = Some(c);
                cur.push(c);
            }
            None if c == '(' || c == ')' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_keyword(t: &str) -> bool {
    matches!(
        t,
        "if" | "unless" | "each" | "with" | "else" | "this" | "true" | "false" | "null" | "lookup"
    )
}

/// The value at a dotted path; array items are addressed by index (`data.0`).
pub fn lookup<'a, S: AsRef<str>>(v: &'a Value, path: &[S]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path {
        let seg = seg.as_ref();
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    if cur.is_null() && path.is_empty() {
        return None;
    }
    Some(cur)
}

/// The value at a dotted path string (`pages.next.starting_after`); empty path = the value.
pub fn lookup_str<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    lookup(v, &path.split('.').collect::<Vec<_>>())
}

fn explain_render_error(e: &handlebars::RenderError, src: &str, scope: &Value) -> String {
    if let handlebars::RenderErrorReason::MissingVariable(Some(var)) = e.reason() {
        return missing_message(var, src, scope);
    }
    format!("{} (in template `{src}`)", e.reason())
}

/// A YAML value whose string leaves are templates.
#[derive(Debug, Clone)]
pub enum Tree {
    /// A non-string leaf, kept as is.
    Value(Value),
    /// A string leaf.
    Template(Template),
    /// A mapping, in file order.
    Map(Vec<(String, Tree)>),
    /// A sequence.
    List(Vec<Tree>),
}

impl Tree {
    /// Compiles every string leaf of a YAML value. Errors name the dotted path of the leaf;
    /// the tree holds every leaf that did compile, so callers can check those too.
    pub fn compile(v: &serde_yaml::Value) -> (Tree, Vec<(String, TemplateError)>) {
        let mut errors = Vec::new();
        let tree = compile_tree(v, "", &mut errors);
        (tree, errors)
    }

    /// Renders the tree. Leaves whose single path is absent are left out, and so are maps and
    /// lists that end up empty because of that, so optional inputs never send `""` or `null`.
    pub fn render(&self, scope: &Scope) -> Result<Option<Value>, RenderError> {
        match self {
            Tree::Value(v) => Ok(Some(v.clone())),
            Tree::Template(t) => t.render(scope),
            Tree::Map(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, t) in entries {
                    if let Some(v) = t.render(scope)? {
                        m.insert(k.clone(), v);
                    }
                }
                Ok((!m.is_empty() || entries.is_empty()).then_some(Value::Object(m)))
            }
            Tree::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for t in items {
                    if let Some(v) = t.render(scope)? {
                        out.push(v);
                    }
                }
                Ok((!out.is_empty() || items.is_empty()).then_some(Value::Array(out)))
            }
        }
    }

    /// Renders the tree where every field must exist (recipe inputs): a reference to an absent
    /// field is an error naming it and the fields that exist.
    pub fn render_strict(&self, scope: &Scope) -> Result<Value, RenderError> {
        match self {
            Tree::Value(v) => Ok(v.clone()),
            Tree::Template(t) => t.render_required(scope),
            Tree::Map(entries) => {
                let mut m = Map::with_capacity(entries.len());
                for (k, t) in entries {
                    m.insert(k.clone(), t.render_strict(scope)?);
                }
                Ok(Value::Object(m))
            }
            Tree::List(items) => items
                .iter()
                .map(|t| t.render_strict(scope))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }

    /// The tree's value when it has no templates at all (a literal), else `None`.
    pub fn literal(&self) -> Option<Value> {
        match self {
            Tree::Value(v) => Some(v.clone()),
            Tree::Template(Template::Literal(s)) => Some(Value::String(s.clone())),
            Tree::Template(_) => None,
            Tree::Map(entries) => entries
                .iter()
                .map(|(k, t)| t.literal().map(|v| (k.clone(), v)))
                .collect::<Option<Map<String, Value>>>()
                .map(Value::Object),
            Tree::List(items) => items
                .iter()
                .map(Tree::literal)
                .collect::<Option<Vec<_>>>()
                .map(Value::Array),
        }
    }

    /// Every template in the tree with its dotted path.
    pub fn templates(&self) -> Vec<(String, &Template)> {
        let mut out = Vec::new();
        collect_templates(self, String::new(), &mut out);
        out
    }
}

fn collect_templates<'a>(t: &'a Tree, path: String, out: &mut Vec<(String, &'a Template)>) {
    match t {
        Tree::Value(_) => {}
        Tree::Template(tpl) => out.push((path, tpl)),
        Tree::Map(entries) => {
            for (k, v) in entries {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                collect_templates(v, p, out);
            }
        }
        Tree::List(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_templates(v, format!("{path}.{i}"), out);
            }
        }
    }
}

fn compile_tree(
    v: &serde_yaml::Value,
    path: &str,
    errors: &mut Vec<(String, TemplateError)>,
) -> Tree {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        serde_yaml::Value::String(s) => match Template::compile(s) {
            Ok(t) => Tree::Template(t),
            Err(e) => {
                errors.push((path.to_string(), e));
                Tree::Value(Value::Null)
            }
        },
        serde_yaml::Value::Mapping(m) => {
            let mut entries = Vec::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => match serde_json::to_value(other) {
                        Ok(Value::String(s)) => s,
                        Ok(other) => other.to_string(),
                        Err(_) => {
                            errors.push((
                                path.to_string(),
                                TemplateError::new("keys must be plain text"),
                            ));
                            continue;
                        }
                    },
                };
                let child = compile_tree(v, &join(&key), errors);
                entries.push((key, child));
            }
            Tree::Map(entries)
        }
        serde_yaml::Value::Sequence(items) => Tree::List(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_tree(v, &join(&i.to_string()), errors))
                .collect(),
        ),
        serde_yaml::Value::Tagged(t) => compile_tree(&t.value, path, errors),
        other => match serde_json::to_value(other) {
            Ok(v) => Tree::Value(v),
            Err(e) => {
                errors.push((path.to_string(), TemplateError::new(e.to_string())));
                Tree::Value(Value::Null)
            }
        },
    }
}

mod helpers {
    //! The helper set. Handlebars 6 brings `eq ne gt gte lt lte and or not len lookup if unless
    //! each with`. Ours return JSON values (so `{{first record.tags}}` keeps its type) and, like
    //! strict mode, refuse a missing argument, except `default`, whose job is to replace one.
    use handlebars::{
        Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
        ScopedJson,
    };
    use serde_json::Value;

    /// A helper: its name and the arguments it takes. The one table both the checker
    /// (`validate`) and the registry (`run`) read.
    pub struct Signature {
        /// The name.
        pub name: &'static str,
        /// Fewest arguments.
        pub min: usize,
        /// Most arguments (`None`: any number).
        pub max: Option<usize>,
        /// Whether it is a block (`{{#if x}}…{{/if}}`).
        pub block: bool,
        /// How it is written.
        pub usage: &'static str,
    }

    const fn sig(
        name: &'static str,
        min: usize,
        max: Option<usize>,
        block: bool,
        usage: &'static str,
    ) -> Signature {
        Signature {
            name,
            min,
            max,
            block,
            usage,
        }
    }

    /// Every helper a template may call: Handlebars' built-ins sluice documents, then ours.
    pub const HELPERS: &[Signature] = &[
        sig("if", 1, Some(1), true, "{{#if cond}}…{{else}}…{{/if}}"),
        sig("unless", 1, Some(1), true, "{{#unless cond}}…{{/unless}}"),
        sig("each", 1, Some(1), true, "{{#each list}}{{this}}{{/each}}"),
        sig(
            "with",
            1,
            Some(1),
            true,
            "{{#with record.owner}}{{name}}{{/with}}",
        ),
        sig("eq", 2, Some(2), false, "{{eq a b}}"),
        sig("ne", 2, Some(2), false, "{{ne a b}}"),
        sig("gt", 2, Some(2), false, "{{gt a b}}"),
        sig("gte", 2, Some(2), false, "{{gte a b}}"),
        sig("lt", 2, Some(2), false, "{{lt a b}}"),
        sig("lte", 2, Some(2), false, "{{lte a b}}"),
        sig("and", 2, None, false, "{{and a b}}"),
        sig("or", 2, None, false, "{{or a b}}"),
        sig("not", 1, Some(1), false, "{{not a}}"),
        sig("len", 1, Some(1), false, "{{len list}}"),
        sig("lookup", 2, Some(2), false, "{{lookup object \"key\"}}"),
        sig("default", 2, Some(2), false, "{{default value fallback}}"),
        sig("lowercase", 1, Some(1), false, "{{lowercase text}}"),
        sig("uppercase", 1, Some(1), false, "{{uppercase text}}"),
        sig("trim", 1, Some(1), false, "{{trim text}}"),
        sig("json", 1, Some(1), false, "{{json value}}"),
        sig("join", 2, Some(2), false, "{{join list \", \"}}"),
        sig("concat", 1, None, false, "{{concat a b …}}"),
        sig("first", 1, Some(1), false, "{{first list}}"),
        sig(
            "date",
            2,
            Some(3),
            false,
            "{{date timestamp \"%Y-%m-%d\" \"Europe/Paris\"}}",
        ),
        sig("now", 0, Some(0), false, "{{now}}"),
    ];

    /// The helper called `name`.
    pub fn signature(name: &str) -> Option<&'static Signature> {
        HELPERS.iter().find(|s| s.name == name)
    }

    /// Every helper's name.
    pub fn names() -> impl Iterator<Item = &'static str> + Clone {
        HELPERS.iter().map(|s| s.name)
    }

    /// How helper `name` is written.
    pub fn usage(name: &str) -> &'static str {
        signature(name).map_or("", |s| s.usage)
    }

    /// Checks a `date` format: strftime codes only.
    pub fn check_date_format(fmt: &str) -> Result<Vec<chrono::format::Item<'_>>, String> {
        let items: Vec<chrono::format::Item> = chrono::format::StrftimeItems::new(fmt).collect();
        if items.contains(&chrono::format::Item::Error) {
            return Err(format!(
                "`{fmt}` is not a valid date format (use strftime codes such as %Y-%m-%d)"
            ));
        }
        Ok(items)
    }

    /// Checks a time zone name: IANA.
    pub fn check_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
        name.parse()
            .map_err(|_| format!("`{name}` is not an IANA time zone name"))
    }

    type Fun = fn(&[Value]) -> Result<Value, String>;

    /// A helper computing a JSON value from its arguments.
    struct ValueFn {
        name: &'static str,
        /// Fewest arguments.
        min: usize,
        /// Most arguments.
        max: Option<usize>,
        /// Whether a missing (not merely null) argument is allowed.
        lenient: bool,
        f: Fun,
    }

    impl HelperDef for ValueFn {
        fn call_inner<'reg: 'rc, 'rc>(
            &self,
            h: &Helper<'rc>,
            r: &'reg Handlebars<'reg>,
            _: &'rc Context,
            _: &mut RenderContext<'reg, 'rc>,
        ) -> Result<ScopedJson<'rc>, RenderError> {
            let mut args = Vec::with_capacity(h.params().len());
            for p in h.params() {
                if r.strict_mode() && p.is_value_missing() && !self.lenient {
                    return Err(
                        RenderErrorReason::MissingVariable(p.relative_path().cloned()).into(),
                    );
                }
                args.push(p.value().clone());
            }
            if args.len() < self.min || self.max.is_some_and(|m| args.len() > m) {
                return Err(RenderErrorReason::Other(format!(
                    "`{}` does not take {} argument(s): write `{}`",
                    self.name,
                    args.len(),
                    usage(self.name)
                ))
                .into());
            }
            (self.f)(&args)
                .map(ScopedJson::Derived)
                .map_err(|m| RenderErrorReason::Other(format!("`{}`: {m}", self.name)).into())
        }
    }

    pub fn register(h: &mut Handlebars<'static>) {
        let mut add = |name: &'static str, lenient: bool, f: Fun| {
            let sig = signature(name).expect("invariant: every registered helper is in HELPERS");
            h.register_helper(
                name,
                Box::new(ValueFn {
                    name,
                    min: sig.min,
                    max: sig.max,
                    lenient,
                    f,
                }),
            );
        };
        add("lowercase", false, |a| {
            Ok(text(&a[0]).to_lowercase().into())
        });
        add("uppercase", false, |a| {
            Ok(text(&a[0]).to_uppercase().into())
        });
        add("trim", false, |a| Ok(text(&a[0]).trim().into()));
        add("json", false, |a| Ok(a[0].to_string().into()));
        add("default", true, |a| {
            Ok(match &a[0] {
                Value::Null => a[1].clone(),
                Value::String(s) if s.is_empty() => a[1].clone(),
                other => other.clone(),
            })
        });
        add("concat", false, |a| {
            Ok(a.iter().map(text).collect::<String>().into())
        });
        add("join", false, |a| match &a[0] {
            Value::Array(items) => Ok(items
                .iter()
                .map(text)
                .collect::<Vec<_>>()
                .join(&text(&a[1]))
                .into()),
            other => Err(format!("the first argument must be a list, not {other}")),
        });
        add("first", false, |a| match &a[0] {
            Value::Array(items) => Ok(items.first().cloned().unwrap_or(Value::Null)),
            other => Err(format!("the argument must be a list, not {other}")),
        });
        add("now", false, |_| Ok(chrono::Utc::now().timestamp().into()));
        // `{{date ts "%Y-%m-%d"}}`, optionally with an IANA timezone: `{{date ts "%H:%M" "Europe/Dublin"}}`.
        add("date", false, |a| {
            let ts = match &a[0] {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("{} is not a Unix timestamp in seconds", a[0]))?;
            let fmt = text(&a[1]);
            let utc = chrono::DateTime::from_timestamp(ts, 0)
                .ok_or_else(|| format!("{ts} is out of range"))?;
            let items = check_date_format(&fmt)?;
            Ok(match a.get(2) {
                Some(tz) => {
                    let tz = check_time_zone(&text(tz))?;
                    utc.with_timezone(&tz)
                        .format_with_items(items.into_iter())
                        .to_string()
                }
                None => utc.format_with_items(items.into_iter()).to_string(),
            }
            .into())
        });
    }

    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope::new(json!({"input": {"n": 5, "s": "a&b", "o": {"k": true}}, "since": 10}))
    }

    #[test]
    fn single_path_keeps_type_and_absent_is_none() {
        let s = scope();
        let t = Template::compile("{{ input.n }}").unwrap();
        assert_eq!(t.render(&s).unwrap(), Some(json!(5)));
        let t = Template::compile("{{input.o}}").unwrap();
        assert_eq!(t.render(&s).unwrap(), Some(json!({"k": true})));
        let t = Template::compile("{{ input.missing }}").unwrap();
        assert_eq!(t.render(&s).unwrap(), None);
    }

    #[test]
    fn text_is_strict_and_unescaped() {
        let s = scope();
        let t = Template::compile("x={{input.s}}").unwrap();
        assert_eq!(t.render(&s).unwrap(), Some(json!("x=a&b")));
        let t = Template::compile("x={{input.nope}}").unwrap();
        let err = t.render(&s).unwrap_err().0;
        assert!(err.contains("input.nope"), "{err}");
        assert!(
            err.contains("available: n, s, o") || err.contains("available: "),
            "{err}"
        );
    }

    #[test]
    fn tree_drops_absent_optional_leaves() {
        let y: serde_yaml::Value = serde_yaml::from_str(
            "a: '{{input.n}}'\nb: '{{input.none}}'\nc: {d: '{{input.none}}'}\ne: [1, '{{since}}']\n",
        )
        .unwrap();
        let (tree, errors) = Tree::compile(&y);
        assert!(errors.is_empty());
        assert_eq!(
            tree.render(&scope()).unwrap(),
            Some(json!({"a": 5, "e": [1, 10]}))
        );
    }

    #[test]
    fn helpers_render() {
        let s = Scope::new(json!({"a": " MiXed ", "n": null, "o": {"k": [1, "&"]}}));
        let r = |src: &str| Template::compile(src).unwrap().render(&s).unwrap().unwrap();
        assert_eq!(
            r("{{lowercase a}}|{{uppercase a}}|{{trim a}}"),
            json!(" mixed | MIXED |MiXed")
        );
        assert_eq!(r("x{{default n \"none\"}}"), json!("xnone"));
        assert_eq!(r("{{json o}}!"), json!("{\"k\":[1,\"&\"]}!"));
        // A single helper expression keeps its JSON type.
        assert_eq!(r("{{first o.k}}"), json!(1));
        assert_eq!(r("{{default n 5}}"), json!(5));
        assert_eq!(r("{{default missing \"x\"}}"), json!("x"));
        assert_eq!(r("{{eq (first o.k) 1}}"), json!(true));
        assert_eq!(r("{{concat \"a\" 1 true}}"), json!("a1true"));
        assert_eq!(r("{{join o.k \", \"}}"), json!("1, &"));
        assert_eq!(
            r("{{date 1783695600 \"%Y-%m-%d %H:%M\"}}"),
            json!("2026-07-10 15:00")
        );
        assert_eq!(
            r("{{date 1783695600 \"%H:%M\" \"Europe/Dublin\"}}"),
            json!("16:00")
        );
        assert!(r("{{now}}").as_i64().unwrap() > 1_700_000_000);
        assert_eq!(r("{{len o.k}}"), json!(2));
        assert_eq!(r("{{gte (len o.k) 2}}"), json!(true));
        assert_eq!(r("{{lookup o \"k\"}}"), json!([1, "&"]));
        // Missing arguments are errors (strict), except for `default`.
        let e = Template::compile("{{lowercase nope}}")
            .unwrap()
            .render(&s)
            .unwrap_err();
        assert!(e.0.contains("`nope` does not exist"), "{e}");
        let e = Template::compile("{{date a \"%Y\"}}")
            .unwrap()
            .render(&s)
            .unwrap_err();
        assert!(e.0.contains("not a Unix timestamp"), "{e}");
    }

    #[test]
    fn helper_calls_are_checked_when_compiling() {
        let err = |src: &str| Template::compile(src).unwrap_err();
        let e = err("{{lowercse record.id}}");
        assert_eq!(e.message, "there is no helper `lowercse`");
        assert_eq!(
            e.help.as_deref(),
            Some("did you mean `lowercase`? (`{{lowercase text}}`)")
        );
        // Nested in a sub-expression and in a block body.
        assert_eq!(
            err("{{eq (lowercse a) \"x\"}}").message,
            "there is no helper `lowercse`"
        );
        assert_eq!(
            err("{{#if x}}{{nope y}}{{else}}b{{/if}}").message,
            "there is no helper `nope`"
        );
        assert_eq!(
            err("a {{default x}}").message,
            "`default` takes 2 arguments, but 1 is given"
        );
        assert_eq!(
            err("{{default x}}").help.as_deref(),
            Some("write `{{default value fallback}}`")
        );
        assert_eq!(
            err("{{eq x}}").message,
            "`eq` takes 2 arguments, but 1 is given"
        );
        assert_eq!(
            err("{{lowercase record.id \"x\"}}").message,
            "`lowercase` takes 1 argument, but 2 are given"
        );
        assert_eq!(
            err("{{date 1 \"%Y\" \"x\" \"y\"}}").message,
            "`date` takes 2 to 3 arguments, but 4 are given"
        );
        assert_eq!(
            err("{{join (first x)}}").message,
            "`join` takes 2 arguments, but 1 is given"
        );
        assert_eq!(
            err("{{date record.at \"%Y-%Q\"}}").message,
            "`%Y-%Q` is not a valid date format (use strftime codes such as %Y-%m-%d)"
        );
        assert_eq!(
            err("{{date record.at \"%H\" \"Mars/Olympus\"}}").message,
            "`Mars/Olympus` is not an IANA time zone name"
        );
        assert!(err("{{lowercase x key=1}}")
            .message
            .contains("no `key=…` option"));
        assert!(err("{{> partial}}").message.contains("partials"));
        // What the checker passes renders.
        let s = Scope::new(json!({"a": "X", "n": null, "l": [1, 2], "t": 0}));
        for ok in [
            "{{or (eq a \"X\") (not n)}}",
            "{{and a (gt (len l) 1)}}",
            "{{#each l}}{{this}}{{/each}}",
            "{{#if a}}{{lowercase a}}{{else}}{{now}}{{/if}}",
            "{{date t \"%Y\" \"Europe/Paris\"}}",
            "{{concat a \"-\" (first l)}}",
            "{{default n (lookup l 0)}}",
        ] {
            let t = Template::compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            t.render(&s).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn conditions_and_required_paths() {
        let s = Scope::new(json!({"record": {"role": "user", "n": 0, "tags": []}}));
        let t = |src: &str| Template::compile(src).unwrap().truthy(&s).unwrap();
        assert!(t("{{eq record.role \"user\"}}"));
        assert!(!t("{{record.n}}"));
        assert!(!t("{{record.tags}}"));
        assert!(t("{{or (eq record.role \"lead\") (not record.n)}}"));
        let e = Template::compile("{{record.email}}")
            .unwrap()
            .render_required(&s)
            .unwrap_err();
        assert_eq!(
            e.0,
            "`record.email` does not exist; available: n, role, tags"
        );
    }

    #[test]
    fn refs_are_found() {
        let t = Template::compile("{{lowercase input.s}}-{{since}}").unwrap();
        assert_eq!(
            t.refs(),
            vec![vec!["input".to_string(), "s".into()], vec!["since".into()]]
        );
        let t = Template::compile(
            r#"{{default record.title "A b (c)"}} {{#if (eq x.y 'q r')}}{{z}}{{/if}}"#,
        )
        .unwrap();
        let refs: Vec<String> = t.refs().iter().map(|r| r.join(".")).collect();
        assert_eq!(refs, ["record.title", "x.y", "z"]);
        // An unclosed block is a syntax error with a readable reason.
        let e = Template::compile("{{#if x}}yes").unwrap_err();
        assert!(e.message.contains("template syntax error"), "{e}");
    }
}
