//! Templates: the only Handlebars registry, compiled template strings, and YAML trees of them.
//!
//! Owns compiling `{{ … }}` strings and rendering them against a JSON scope. A template that is
//! exactly one path expression (`{{ input.size }}`) keeps its JSON type and is evaluated without
//! Handlebars; anything else renders a string through Handlebars in strict mode with no HTML
//! escaping. Does not know about HTTP or state.

use std::cell::OnceCell;
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
    hb: OnceCell<handlebars::Context>,
}

impl Scope {
    /// Wraps a JSON object as a scope.
    pub fn new(value: Value) -> Scope {
        Scope {
            value,
            hb: OnceCell::new(),
        }
    }

    /// The JSON value.
    pub fn value(&self) -> &Value {
        &self.value
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
    /// Anything else: rendered to a string by Handlebars.
    Text(Box<handlebars::Template>, String),
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
    /// Compiles a template string, reporting a syntax error in words.
    pub fn compile(src: &str) -> Result<Template, String> {
        if !src.contains("{{") {
            return Ok(Template::Literal(src.to_string()));
        }
        if let Some(path) = single_path(src) {
            return Ok(Template::Path(path));
        }
        let tpl = handlebars::Template::compile(src).map_err(|e| {
            let mut reason = e.reason().to_string();
            if reason.starts_with("invalid handlebars syntax") {
                reason = "every `{{` needs a matching `}}`, and a block like `{{#if x}}` needs its argument and a closing `{{/if}}`".into();
            }
            match e.pos() {
                Some((l, c)) => format!("template syntax error at {l}:{c}: {reason}"),
                None => format!("template syntax error: {reason}"),
            }
        })?;
        Ok(Template::Text(Box::new(tpl), src.to_string()))
    }

    /// Renders to a JSON value. `Ok(None)` means a single-path template whose path is absent,
    /// which callers treat as "leave this field out".
    pub fn render(&self, scope: &Scope) -> Result<Option<Value>, RenderError> {
        match self {
            Template::Literal(s) => Ok(Some(Value::String(s.clone()))),
            Template::Path(p) => Ok(lookup(scope.value(), p).cloned()),
            Template::Text(t, src) => {
                let reg = registry();
                let mut rc = handlebars::RenderContext::new(None);
                t.renders(reg, scope.hb(), &mut rc)
                    .map(|s| Some(Value::String(s)))
                    .map_err(|e| RenderError(explain_render_error(&e, src, scope.value())))
            }
        }
    }

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
            Template::Text(_, src) => text_refs(src),
        }
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
    if matches!(inner, "true" | "false" | "null" | "this" | "else") {
        return None;
    }
    Some(inner.split('.').map(str::to_string).collect())
}

/// Paths read by a Handlebars template, found lexically: every identifier-like token inside
/// `{{ }}` that is not a helper name, keyword or literal.
fn text_refs(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end]
            .trim_start_matches(['#', '/', '~', '^', '{'])
            .trim();
        let mut tokens = inner
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .filter(|t| !t.is_empty());
        let first = tokens.next();
        let is_helper_call = inner.split_whitespace().count() > 1
            || first.is_some_and(|f| helpers::NAMES.contains(&f) || is_keyword(f));
        let candidates: Vec<&str> = if is_helper_call {
            tokens.collect()
        } else {
            first.into_iter().collect()
        };
        for t in candidates {
            if t.contains('=') || t.starts_with(['"', '\'', '@']) || is_keyword(t) {
                continue;
            }
            if t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-')
            {
                continue;
            }
            if helpers::NAMES.contains(&t) {
                continue;
            }
            out.push(t.split('.').map(str::to_string).collect());
        }
        rest = &after[end + 2..];
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
    let reason = e.reason().to_string();
    if let handlebars::RenderErrorReason::MissingVariable(Some(var)) = e.reason() {
        let (parent, _) = var.rsplit_once('.').unwrap_or(("", var));
        let parent_path: Vec<&str> = if parent.is_empty() {
            vec![]
        } else {
            parent.split('.').collect()
        };
        let available = match lookup(scope, &parent_path) {
            Some(Value::Object(m)) => m.keys().cloned().collect::<Vec<_>>().join(", "),
            _ => String::new(),
        };
        if available.is_empty() {
            return format!("`{var}` does not exist (in template `{src}`)");
        }
        return format!("`{var}` does not exist (in template `{src}`); available: {available}");
    }
    format!("{reason} (in template `{src}`)")
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
    pub fn compile(v: &serde_yaml::Value) -> (Tree, Vec<(String, String)>) {
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

fn compile_tree(v: &serde_yaml::Value, path: &str, errors: &mut Vec<(String, String)>) -> Tree {
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
                            errors.push((path.to_string(), "keys must be plain text".into()));
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
                errors.push((path.to_string(), e.to_string()));
                Tree::Value(Value::Null)
            }
        },
    }
}

mod helpers {
    //! The helper set. Handlebars 6 brings `eq ne gt gte lt lte and or not len lookup`.
    use handlebars::{
        Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext,
        RenderErrorReason,
    };
    use serde_json::Value;

    /// Names of registered helpers (built-in and ours), so reference checks skip them.
    pub const NAMES: &[&str] = &[
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "and",
        "or",
        "not",
        "len",
        "lookup",
        "default",
        "lowercase",
        "uppercase",
        "trim",
        "json",
    ];

    pub fn register(h: &mut Handlebars<'static>) {
        h.register_helper(
            "lowercase",
            Box::new(TextFn("lowercase", |s| s.to_lowercase())),
        );
        h.register_helper(
            "uppercase",
            Box::new(TextFn("uppercase", |s| s.to_uppercase())),
        );
        h.register_helper("trim", Box::new(TextFn("trim", |s| s.trim().to_string())));
        h.register_helper("json", Box::new(json));
        h.register_helper("default", Box::new(default));
    }

    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    fn param<'a>(
        h: &'a Helper,
        i: usize,
        name: &'static str,
    ) -> Result<&'a Value, RenderErrorReason> {
        h.param(i)
            .map(|p| p.value())
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, i))
    }

    /// A helper that maps its one argument's text to new text.
    struct TextFn(&'static str, fn(&str) -> String);

    impl HelperDef for TextFn {
        fn call<'reg: 'rc, 'rc>(
            &self,
            h: &Helper<'rc>,
            _: &'reg Handlebars<'reg>,
            _: &'rc Context,
            _: &mut RenderContext<'reg, 'rc>,
            out: &mut dyn Output,
        ) -> HelperResult {
            out.write(&(self.1)(&text(param(h, 0, self.0)?)))?;
            Ok(())
        }
    }

    fn json(
        h: &Helper,
        _: &Handlebars,
        _: &Context,
        _: &mut RenderContext,
        out: &mut dyn Output,
    ) -> HelperResult {
        out.write(&param(h, 0, "json")?.to_string())?;
        Ok(())
    }

    /// `{{default value fallback}}`: the fallback when value is missing, null or "".
    fn default(
        h: &Helper,
        _: &Handlebars,
        _: &Context,
        _: &mut RenderContext,
        out: &mut dyn Output,
    ) -> HelperResult {
        let v = h.param(0).map(|p| p.value()).unwrap_or(&Value::Null);
        let chosen = match v {
            Value::Null => param(h, 1, "default")?,
            Value::String(s) if s.is_empty() => param(h, 1, "default")?,
            other => other,
        };
        out.write(&text(chosen))?;
        Ok(())
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
    }

    #[test]
    fn refs_are_found() {
        let t = Template::compile("{{lowercase input.s}}-{{since}}").unwrap();
        assert_eq!(
            t.refs(),
            vec![vec!["input".to_string(), "s".into()], vec!["since".into()]]
        );
        assert!(Template::compile("{{#if x}").is_err() || Template::compile("{{#if x}}").is_err());
    }
}
