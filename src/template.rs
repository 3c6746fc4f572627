//! Templates: handlebars over `trigger`, `steps`, `connection` and `env`, with the helpers
//! users need for mapping data between APIs.
//!
//! Three decisions shape this module. Output is never HTML-escaped (`Smith & Sons` arrives
//! as written). A template that is exactly one expression keeps the value's JSON type (a
//! number stays a number, an array an array), so `{{trigger.tags}}` sends a list. And
//! rendering is forgiving (a field missing from one item renders as nothing) while
//! `references` lets the recipe compiler be strict about every name a template uses.
//! Templates are parsed once, at compile time; rendering reuses the parsed form.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, Renderable, ScopedJson};
use serde_json::{Map, Value};

mod budget;

/// The roots a template may name.
pub const ROOTS: &[&str] = &["trigger", "steps", "connection", "env", "ids", "lookups", "item", "from", "input"];

/// A parsed template, ready to render many times.
#[derive(Debug, Clone)]
pub struct CompiledTemplate {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// No expressions: the text itself.
    Literal(String),
    /// Exactly `{{a.b.c}}`: the value at that path, with its type.
    Path(Vec<String>),
    /// Exactly one helper expression: its value, with its type.
    Typed(Arc<Template>),
    /// Anything else: text.
    Text(Arc<Template>),
}

/// A name a template uses: `trigger.emailAddresses.0.address` as segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub segments: Vec<String>,
    /// As written in the template.
    pub raw: String,
}

/// Why a template does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub message: String,
    /// Line and column inside the template text, when known (1-based).
    pub line: Option<usize>,
    pub col: Option<usize>,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

static REGISTRY: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut hb = Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.set_strict_mode(false);
    for (name, f) in HELPERS {
        hb.register_helper(name, Box::new(ValueHelper(*f)));
    }
    // Replaces the built-in: every iteration is charged to the render's work budget.
    hb.register_helper("each", Box::new(budget::BudgetedEach));
    hb
});

impl CompiledTemplate {
    /// Parses `source`. Unknown helpers are reported here, not at run time.
    pub fn compile(source: &str) -> Result<CompiledTemplate, TemplateError> {
        if !source.contains("{{") {
            return Ok(CompiledTemplate { source: source.to_owned(), kind: Kind::Literal(source.to_owned()) });
        }
        // Before the parser sees it: the parser and the renderer recurse once per level.
        check_nesting(source)?;
        let parsed = Template::compile(source).map_err(|e| match plain_syntax_error(source) {
            // The plain message names its own place; the parser's is where it gave up.
            Some(message) => TemplateError { message, line: None, col: None },
            None => TemplateError {
                message: format!("template does not parse: {}", first_line(&e.reason().to_string())),
                line: e.pos().map(|p| p.0),
                col: e.pos().map(|p| p.1),
            },
        })?;
        check_helpers(&parsed.elements)?;
        let kind = match single_expression(&parsed) {
            Some(SingleExpression::Path(segments)) => Kind::Path(segments),
            Some(SingleExpression::Helper(inner)) => {
                // The expression as the user wrote it, when it can be cut out (rewriting it
                // from the parse loses literals such as 1e20); a wrapper that still does not
                // parse falls back to text rather than showing the internal helper.
                let written = source.trim().strip_prefix("{{").and_then(|s| s.strip_suffix("}}"));
                let inner = written.map(|s| s.trim_matches('~').trim().to_owned()).unwrap_or(inner);
                match Template::compile(&format!("{{{{__typed ({inner})}}}}")) {
                    Ok(t) => Kind::Typed(Arc::new(t)),
                    Err(_) => Kind::Text(Arc::new(parsed)),
                }
            }
            None => Kind::Text(Arc::new(parsed)),
        };
        Ok(CompiledTemplate { source: source.to_owned(), kind })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders against `context` (an object with trigger, steps, connection, env).
    pub fn render(&self, context: &Context) -> Result<Value, String> {
        match &self.kind {
            Kind::Literal(text) => Ok(Value::String(text.clone())),
            Kind::Path(segments) => Ok(lookup(context.data(), segments).cloned().unwrap_or(Value::Null)),
            Kind::Typed(t) => {
                let text = render_text(t, context)?;
                serde_json::from_str(&text).map_err(|e| format!("internal: typed render gave {text:?}: {e}"))
            }
            Kind::Text(t) => render_text(t, context).map(Value::String),
        }
    }

    /// Renders to a string (filters, conditions).
    pub fn render_string(&self, context: &Context) -> Result<String, String> {
        Ok(match self.render(context)? {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }

    /// Every path the template names outside block contexts that change `this`
    /// (`#each`, `#with`), where relative names refer to the block's item instead.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        match &self.kind {
            Kind::Literal(_) => {}
            Kind::Path(segments) => out.push(Reference { segments: segments.clone(), raw: segments.join(".") }),
            Kind::Typed(_) | Kind::Text(_) => {
                if let Ok(t) = Template::compile(&self.source) {
                    collect_references(&t.elements, false, &mut out);
                }
            }
        }
        out
    }
}

/// A context for rendering, built once per step.
pub fn context(value: Value) -> Context {
    // `Context::from` takes the value as it is; `Context::wraps` would serialize it again.
    Context::from(value)
}

/// Is a rendered filter or `if` true? Empty, `false`, `0` and `null` (any case, trimmed) are false.
pub fn truthy(rendered: &str) -> bool {
    let t = rendered.trim().to_ascii_lowercase();
    !(t.is_empty() || t == "false" || t == "0" || t == "null")
}

fn render_text(t: &Template, context: &Context) -> Result<String, String> {
    // A helper that panics (a bug here or in a crate beneath) fails this render, not the
    // process: the step fails with a message and the run stays resumable.
    let render = std::panic::AssertUnwindSafe(|| {
        crate::limits::with_render_budget(|| {
            let mut rc = RenderContext::new(None);
            let mut out = budget::LimitedOutput::default();
            match t.render(&REGISTRY, context, &mut rc, &mut out) {
                Ok(()) => Ok(out.into_string()),
                Err(_) if out.overflowed => Err(format!(
                    "the template renders more than {} MiB; it is stopped there",
                    crate::limits::MAX_RENDERED_BYTES / (1024 * 1024)
                )),
                Err(_) if out.out_of_work => Err(crate::limits::WorkExceeded.to_string()),
                Err(e) => Err(render_error(&e)),
            }
        })
    });
    std::panic::catch_unwind(render).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("internal error while rendering (please report it): {what}"))
    })
}

/// Refuses what would make the parser or the renderer recurse without bound: blocks and
/// sub-expressions nested deeper than `MAX_TEMPLATE_NESTING`, and partials (`{{> p}}`,
/// `{{#*inline}}`), which templates here have no use for and which can call themselves.
/// A lexical pass: it counts `{{#`/`{{^` against `{{/`, and parentheses inside `{{ }}`
/// outside string literals, so it never misses a level (at worst it counts one too many).
fn check_nesting(source: &str) -> Result<(), TemplateError> {
    let max = crate::limits::MAX_TEMPLATE_NESTING;
    let bytes = source.as_bytes();
    let (mut line, mut col) = (1usize, 1usize);
    let mut blocks = 0usize;
    let mut i = 0;
    let err = |message: String, line: usize, col: usize| TemplateError { message, line: Some(line), col: Some(col) };
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{{") {
            let (start_line, start_col) = (line, col);
            let mut j = i + 2;
            while j < bytes.len() && bytes[j] == b'{' {
                j += 1;
            }
            while j < bytes.len() && bytes[j] == b'~' {
                j += 1;
            }
            let rest = &bytes[j..];
            if rest.starts_with(b">") || rest.starts_with(b"#>") || rest.starts_with(b"#*") || rest.starts_with(b"*") {
                return Err(err(
                    "partials and inline partials (`{{> name}}`, `{{#*inline}}`) are not supported in templates".into(),
                    start_line,
                    start_col,
                ));
            }
            if rest.starts_with(b"!") {
                // A comment: skip to its end without counting anything inside.
                let end = find(bytes, j, b"}}").unwrap_or(bytes.len());
                advance(&bytes[i..end], &mut line, &mut col);
                i = end;
                continue;
            }
            if rest.starts_with(b"#") || rest.starts_with(b"^") {
                blocks += 1;
            } else if rest.starts_with(b"/") {
                blocks = blocks.saturating_sub(1);
            }
            // Inside the mustache: parentheses, skipping string literals.
            let mut parens = 0usize;
            let mut k = j;
            let mut quote: Option<u8> = None;
            while k < bytes.len() {
                let b = bytes[k];
                match quote {
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if b == b'"' || b == b'\'' => quote = Some(b),
                    None if b == b'(' => parens += 1,
                    None if b == b')' => parens = parens.saturating_sub(1),
                    None if bytes[k..].starts_with(b"}}") => break,
                    None => {}
                }
                if blocks + parens > max {
                    advance(&bytes[i..k], &mut line, &mut col);
                    return Err(err(
                        format!("blocks and sub-expressions nest more than {max} deep; flatten the template"),
                        line,
                        col,
                    ));
                }
                k += 1;
            }
            if blocks > max {
                return Err(err(
                    format!("blocks and sub-expressions nest more than {max} deep; flatten the template"),
                    start_line,
                    start_col,
                ));
            }
            advance(&bytes[i..k], &mut line, &mut col);
            i = k;
            continue;
        }
        advance(&bytes[i..i + 1], &mut line, &mut col);
        i += 1;
    }
    Ok(())
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Moves a line/column past `text` (columns count characters, not bytes).
fn advance(text: &[u8], line: &mut usize, col: &mut usize) {
    for &b in text {
        if b == b'\n' {
            *line += 1;
            *col = 1;
        } else if b & 0xC0 != 0x80 {
            *col += 1;
        }
    }
}

/// Why a template does not parse, in plain words, for the mistakes people make: a tag left
/// open or closed with one brace, a block never closed or closed with another name. `None`
/// when it is none of these (the parser's own message is used then).
fn plain_syntax_error(source: &str) -> Option<String> {
    let at = |i: usize| {
        let before = &source[..i];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
        if line == 1 { format!("column {col}") } else { format!("line {line}, column {col}") }
    };
    let snippet = |t: &str| {
        let t = t.lines().next().unwrap_or_default();
        if t.chars().count() > 40 { format!("{}...", t.chars().take(40).collect::<String>()) } else { t.to_owned() }
    };
    // Tags, in order, each as (start, inside text).
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(open) = source[from..].find("{{").map(|i| from + i) {
        let body_start = open + 2 + usize::from(source[open + 2..].starts_with('{'));
        let next_open = source[body_start..].find("{{").map(|i| body_start + i).unwrap_or(source.len());
        match source[body_start..next_open].find("}}") {
            Some(close) => {
                tags.push((open, source[body_start..body_start + close].trim().to_owned()));
                from = body_start + close + 2;
            }
            None => {
                let text = &source[open..next_open];
                return Some(match text.rfind('}') {
                    Some(one) if one > 2 => format!(
                        "the tag `{}` at {} ends with a single `}}`: a tag ends with `}}}}`",
                        snippet(&text[..=one]),
                        at(open)
                    ),
                    _ => format!(
                        "the tag `{}` at {} is never closed: a `}}}}` is missing",
                        snippet(text.trim_end()),
                        at(open)
                    ),
                });
            }
        }
    }
    // Blocks: `{{#name ...}}` must be closed by `{{/name}}`, innermost first.
    let mut open_blocks: Vec<(usize, String)> = Vec::new();
    for (start, inside) in tags {
        let inside = inside.trim_start_matches('~').trim_end_matches('~').trim();
        let name = |t: &str| t.split_whitespace().next().unwrap_or_default().to_owned();
        if let Some(rest) = inside.strip_prefix('#') {
            open_blocks.push((start, name(rest)));
        } else if let Some(rest) = inside.strip_prefix('/') {
            let closing = name(rest);
            match open_blocks.pop() {
                Some((_, opened)) if opened == closing => {}
                Some((o, opened)) => {
                    return Some(format!(
                        "`{{{{/{closing}}}}}` at {} closes the block `{{{{#{opened}}}}}` opened at {}: \
                         close it with `{{{{/{opened}}}}}`",
                        at(start),
                        at(o)
                    ));
                }
                None => {
                    return Some(format!("`{{{{/{closing}}}}}` at {} closes a block that was never opened", at(start)));
                }
            }
        }
    }
    open_blocks.pop().map(|(start, opened)| {
        format!(
            "the block `{{{{#{opened} ...}}}}` at {} is never closed: add `{{{{/{opened}}}}}` after its content",
            at(start)
        )
    })
}

fn render_error(e: &RenderError) -> String {
    first_line(&e.reason().to_string())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// Follows `segments` through objects and arrays.
pub fn lookup<'v>(value: &'v Value, segments: &[String]) -> Option<&'v Value> {
    let mut cur = value;
    for s in segments {
        cur = match cur {
            Value::Object(m) => m.get(s)?,
            Value::Array(items) => items.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `a.b.[0].c`, `a/b`, `this.x` → segments; `None` for `../x` and `@index`-style names.
fn path_segments(raw: &str) -> Option<Vec<String>> {
    if raw.starts_with("..") || raw.starts_with('@') {
        return None;
    }
    let segs: Vec<String> = raw
        .split(['.', '/'])
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches('[').trim_end_matches(']').to_owned())
        .collect();
    let segs = match segs.first().map(String::as_str) {
        Some("this") => segs[1..].to_vec(),
        _ => segs,
    };
    Some(segs)
}

enum SingleExpression {
    Path(Vec<String>),
    /// The expression's text between `{{` and `}}`.
    Helper(String),
}

/// Whether the whole template is one `{{ ... }}` (surrounding whitespace allowed).
fn single_expression(t: &Template) -> Option<SingleExpression> {
    let meaningful: Vec<&TemplateElement> =
        t.elements.iter().filter(|e| !matches!(e, TemplateElement::RawString(s) if s.trim().is_empty())).collect();
    let [TemplateElement::Expression(h)] = meaningful.as_slice() else { return None };
    match (&h.name, h.params.is_empty() && h.hash.is_empty()) {
        (Parameter::Path(handlebars::Path::Relative((_, raw))), true) => path_segments(raw).map(SingleExpression::Path),
        (Parameter::Name(name), true) if !is_helper(name) => path_segments(name).map(SingleExpression::Path),
        (Parameter::Name(name), _) => {
            let args: Vec<String> = h.params.iter().map(param_source).collect::<Option<_>>()?;
            Some(SingleExpression::Helper(format!("{name} {}", args.join(" ")).trim().to_owned()))
        }
        _ => None,
    }
}

/// A parameter written back as template source.
fn param_source(p: &Parameter) -> Option<String> {
    match p {
        Parameter::Name(n) => Some(n.clone()),
        Parameter::Path(handlebars::Path::Relative((_, raw)))
        | Parameter::Path(handlebars::Path::Local((_, _, raw))) => Some(raw.clone()),
        Parameter::Literal(v) => Some(v.to_string()),
        Parameter::Subexpression(s) => match s.element.as_ref() {
            TemplateElement::Expression(h) => {
                let Parameter::Name(name) = &h.name else { return None };
                let args: Vec<String> = h.params.iter().map(param_source).collect::<Option<_>>()?;
                Some(format!("({name} {})", args.join(" ")))
            }
            _ => None,
        },
        _ => None,
    }
}

fn is_helper(name: &str) -> bool {
    HELPERS.iter().any(|(n, _)| *n == name) || BUILTIN_BLOCKS.contains(&name)
}

const BUILTIN_BLOCKS: &[&str] = &["if", "unless", "each", "with", "lookup", "log"];

/// Every helper a template calls must exist.
fn check_helpers(elements: &[TemplateElement]) -> Result<(), TemplateError> {
    for e in elements {
        if let TemplateElement::Expression(h) | TemplateElement::HelperBlock(h) | TemplateElement::HtmlExpression(h) = e
        {
            check_helper(h, matches!(e, TemplateElement::HelperBlock(_)))?;
        }
    }
    Ok(())
}

fn check_helper(h: &HelperTemplate, block: bool) -> Result<(), TemplateError> {
    if let Parameter::Name(name) = &h.name
        && (block || !h.params.is_empty() || !h.hash.is_empty())
        && !is_helper(name)
    {
        let names = HELPERS.iter().map(|(n, _)| *n).chain(BUILTIN_BLOCKS.iter().copied());
        return Err(TemplateError {
            message: format!("unknown helper `{name}`{}", crate::diagnostic::hint(name, names)),
            line: None,
            col: None,
        });
    }
    for p in &h.params {
        if let Parameter::Subexpression(s) = p
            && let TemplateElement::Expression(inner) = s.element.as_ref()
        {
            check_helper(inner, true)?;
        }
    }
    if let Some(t) = &h.template {
        check_helpers(&t.elements)?;
    }
    if let Some(t) = &h.inverse {
        check_helpers(&t.elements)?;
    }
    Ok(())
}

fn collect_references(elements: &[TemplateElement], in_scope_block: bool, out: &mut Vec<Reference>) {
    for e in elements {
        let (TemplateElement::Expression(h) | TemplateElement::HelperBlock(h) | TemplateElement::HtmlExpression(h)) = e
        else {
            continue;
        };
        let is_block = matches!(e, TemplateElement::HelperBlock(_));
        match &h.name {
            Parameter::Path(p) => push_path(p, in_scope_block, out),
            Parameter::Name(n) if h.params.is_empty() && !is_block && !is_helper(n) => {
                push_raw(n, in_scope_block, out);
            }
            _ => {}
        }
        for p in h.params.iter().chain(h.hash.values()) {
            collect_param(p, in_scope_block, out);
        }
        let changes_scope = is_block && matches!(&h.name, Parameter::Name(n) if n == "each" || n == "with");
        if let Some(t) = &h.template {
            collect_references(&t.elements, in_scope_block || changes_scope, out);
        }
        if let Some(t) = &h.inverse {
            collect_references(&t.elements, in_scope_block, out);
        }
    }
}

fn collect_param(p: &Parameter, in_scope_block: bool, out: &mut Vec<Reference>) {
    match p {
        Parameter::Path(path) => push_path(path, in_scope_block, out),
        Parameter::Subexpression(s) => {
            if let TemplateElement::Expression(h) = s.element.as_ref() {
                for p in h.params.iter().chain(h.hash.values()) {
                    collect_param(p, in_scope_block, out);
                }
            }
        }
        _ => {}
    }
}

fn push_path(p: &handlebars::Path, in_scope_block: bool, out: &mut Vec<Reference>) {
    if let handlebars::Path::Relative((_, raw)) = p {
        push_raw(raw, in_scope_block, out);
    }
}

fn push_raw(raw: &str, in_scope_block: bool, out: &mut Vec<Reference>) {
    let Some(segments) = path_segments(raw) else { return };
    let Some(first) = segments.first() else { return };
    // Inside #each / #with, names other than the roots belong to the block's item.
    if in_scope_block && !ROOTS.contains(&first.as_str()) {
        return;
    }
    out.push(Reference { segments, raw: raw.to_owned() });
}

// ---------------------------------------------------------------------------------------
// Helpers. Each takes its arguments as JSON values (a missing field is null) and returns a
// JSON value, so helpers nest and keep types.

type HelperFn = fn(&[Value]) -> Result<Value, String>;

struct ValueHelper(HelperFn);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let args: Vec<Value> = h.params().iter().map(|p| p.value().clone()).collect();
        let value = (self.0)(&args).map_err(|m| handlebars::RenderErrorReason::Other(format!("{}: {m}", h.name())))?;
        crate::limits::spend(1 + crate::limits::value_cost(&value))
            .map_err(|e| handlebars::RenderErrorReason::Other(e.to_string()))?;
        Ok(ScopedJson::Derived(value))
    }
}

const HELPERS: &[(&str, HelperFn)] = &[
    ("__typed", |a| Ok(Value::String(arg(a, 0).to_string()))),
    // text
    // `lower` of a list lowers each of its texts (tags, say).
    ("lower", |a| {
        Ok(match arg(a, 0) {
            Value::Array(v) => Value::Array(v.iter().map(|i| Value::String(text(i).to_lowercase())).collect()),
            v => Value::String(text(v).to_lowercase()),
        })
    }),
    ("upper", |a| Ok(Value::String(text(arg(a, 0)).to_uppercase()))),
    ("trim", |a| Ok(Value::String(text(arg(a, 0)).trim().to_owned()))),
    ("split", |a| {
        let sep = match arg(a, 1) {
            Value::Null => ",".to_owned(),
            v => text(v),
        };
        let t = text(arg(a, 0));
        Ok(Value::Array(
            t.split(sep.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ))
    }),
    ("join", |a| {
        let sep = match arg(a, 1) {
            Value::Null => ", ".to_owned(),
            v => text(v),
        };
        Ok(Value::String(items(arg(a, 0)).iter().map(text).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(&sep)))
    }),
    ("concat", |a| Ok(Value::String(a.iter().map(text).collect()))),
    ("replace", |a| Ok(Value::String(text(arg(a, 0)).replace(&text(arg(a, 1)), &text(arg(a, 2)))))),
    ("truncate", |a| {
        let n = number(arg(a, 1)).unwrap_or(0.0).max(0.0) as usize;
        Ok(Value::String(text(arg(a, 0)).chars().take(n).collect()))
    }),
    ("default", |a| Ok(a.iter().find(|v| !is_empty(v)).cloned().unwrap_or(Value::Null))),
    // arrays
    ("first", |a| Ok(items(arg(a, 0)).into_iter().next().unwrap_or(Value::Null))),
    ("last", |a| Ok(items(arg(a, 0)).into_iter().last().unwrap_or(Value::Null))),
    ("pluck", |a| {
        let path: Vec<String> = text(arg(a, 1)).split('.').map(str::to_owned).collect();
        Ok(Value::Array(
            items(arg(a, 0)).iter().filter_map(|i| lookup(i, &path).cloned()).filter(|v| !v.is_null()).collect(),
        ))
    }),
    ("find", |a| {
        let path: Vec<String> = text(arg(a, 1)).split('.').map(str::to_owned).collect();
        let want = arg(a, 2);
        Ok(items(arg(a, 0))
            .into_iter()
            .find(|i| lookup(i, &path).is_some_and(|v| loosely_equal(v, want)))
            .unwrap_or(Value::Null))
    }),
    ("get", |a| {
        let path: Vec<String> = text(arg(a, 1)).split('.').map(str::to_owned).collect();
        Ok(lookup(arg(a, 0), &path).cloned().unwrap_or(Value::Null))
    }),
    ("length", |a| {
        Ok(Value::from(match arg(a, 0) {
            Value::Array(v) => v.len(),
            Value::Object(m) => m.len(),
            Value::String(s) => s.chars().count(),
            Value::Null => 0,
            _ => 1,
        }))
    }),
    ("json", |a| Ok(Value::String(arg(a, 0).to_string()))),
    // parse_json text: the value a JSON text holds (null when empty or not JSON).
    ("parse_json", |a| Ok(serde_json::from_str(text(arg(a, 0)).trim()).unwrap_or(Value::Null))),
    // without list other: the items of list that are not in other.
    ("without", |a| {
        let other = items(arg(a, 1));
        Ok(Value::Array(items(arg(a, 0)).into_iter().filter(|i| !other.iter().any(|o| loosely_equal(i, o))).collect()))
    }),
    ("object", |a| {
        // object "key" value "key2" value2 ... : builds an object, leaving out empty values.
        let mut m = Map::new();
        for pair in a.chunks(2) {
            if let [k, v] = pair
                && !is_empty(v)
            {
                m.insert(text(k), v.clone());
            }
        }
        Ok(Value::Object(m))
    }),
    ("array", |a| Ok(Value::Array(a.iter().filter(|v| !is_empty(v)).cloned().collect()))),
    // append list value...: the list with the values added (empty ones left out).
    ("append", |a| {
        let mut out = items(arg(a, 0));
        out.extend(a.iter().skip(1).flat_map(items).filter(|v| !is_empty(v)));
        Ok(Value::Array(out))
    }),
    // prefer list "field" value: the same items, those whose field equals value first.
    ("prefer", |a| {
        let path: Vec<String> = text(arg(a, 1)).split('.').map(str::to_owned).collect();
        let want = arg(a, 2);
        let (mut first, rest): (Vec<Value>, Vec<Value>) =
            items(arg(a, 0)).into_iter().partition(|i| lookup(i, &path).is_some_and(|v| loosely_equal(v, want)));
        first.extend(rest);
        Ok(Value::Array(first))
    }),
    // numbers
    ("number", |a| {
        Ok(number(arg(a, 0)).and_then(serde_json::Number::from_f64).map(normalize_number).unwrap_or(Value::Null))
    }),
    ("add", |a| arithmetic(a, |x, y| x + y)),
    ("sub", |a| arithmetic(a, |x, y| x - y)),
    ("mul", |a| arithmetic(a, |x, y| x * y)),
    ("div", |a| {
        if number(arg(a, 1)) == Some(0.0) {
            return Err("division by zero".into());
        }
        arithmetic(a, |x, y| x / y)
    }),
    ("round", |a| {
        let digits = number(arg(a, 1)).unwrap_or(0.0) as i32;
        let f = 10f64.powi(digits);
        Ok(number(arg(a, 0))
            .map(|x| (x * f).round() / f)
            .and_then(serde_json::Number::from_f64)
            .map(normalize_number)
            .unwrap_or(Value::Null))
    }),
    // comparisons and logic, for filters and `if`
    ("eq", |a| Ok(Value::Bool(loosely_equal(arg(a, 0), arg(a, 1))))),
    ("ne", |a| Ok(Value::Bool(!loosely_equal(arg(a, 0), arg(a, 1))))),
    ("gt", |a| compare(a, |o| o.is_gt())),
    ("gte", |a| compare(a, |o| o.is_ge())),
    ("lt", |a| compare(a, |o| o.is_lt())),
    ("lte", |a| compare(a, |o| o.is_le())),
    ("and", |a| Ok(Value::Bool(!a.is_empty() && a.iter().all(|v| truthy(&text(v)))))),
    ("or", |a| Ok(Value::Bool(a.iter().any(|v| truthy(&text(v)))))),
    ("not", |a| Ok(Value::Bool(!truthy(&text(arg(a, 0)))))),
    ("contains", |a| {
        let needle = arg(a, 1);
        Ok(Value::Bool(match arg(a, 0) {
            Value::Array(v) => v.iter().any(|x| loosely_equal(x, needle)),
            Value::String(s) => s.contains(&text(needle)),
            _ => false,
        }))
    }),
    // dates
    ("date", |a| {
        let Some(dt) = parse_date(arg(a, 0)) else { return Ok(Value::Null) };
        format_date_checked(dt, arg(a, 1))
    }),
    ("date_add", |a| {
        let Some(dt) = parse_date(arg(a, 0)) else { return Ok(Value::Null) };
        let amount = number(arg(a, 1)).ok_or("the amount must be a number")?;
        let unit = text(arg(a, 2));
        let secs = match unit.trim_end_matches('s') {
            "second" | "" => 1.0,
            "minute" => 60.0,
            "hour" => 3_600.0,
            "day" => 86_400.0,
            "week" => 604_800.0,
            other => return Err(format!("unknown unit `{other}`; use seconds, minutes, hours, days or weeks")),
        };
        // Checked all the way: an amount past chrono's range (±262,000 years) is an error
        // for this step, not a panic of the process.
        let millis = amount * secs * 1000.0;
        let out_of_range = || format!("adding {amount} {unit} to {dt} leaves the supported date range");
        if !millis.is_finite() || millis.abs() >= i64::MAX as f64 {
            return Err(out_of_range());
        }
        let delta = ChronoDuration::try_milliseconds(millis as i64).ok_or_else(out_of_range)?;
        let dt = dt.checked_add_signed(delta).ok_or_else(out_of_range)?;
        format_date_checked(dt, arg(a, 3))
    }),
    ("now", |a| format_date_checked(Utc::now(), arg(a, 0))),
    // from_zone date time zone [format]: a wall-clock date and time in an IANA time zone
    // (Capsule's dueOn + dueTime in the owner's zone) as an instant, ISO 8601 in UTC by default.
    ("from_zone", |a| {
        let date = text(arg(a, 0));
        if date.trim().is_empty() {
            return Ok(Value::Null);
        }
        let zone = zone(arg(a, 2))?;
        let local = local_datetime(date.trim(), text(arg(a, 1)).trim())?;
        format_date_checked(from_local(zone, local), arg(a, 3))
    }),
    // to_zone date zone [format]: an instant shown on the wall clock of an IANA time zone,
    // ISO 8601 with that zone's offset by default.
    ("to_zone", |a| {
        let Some(dt) = parse_date(arg(a, 0)) else { return Ok(Value::Null) };
        let zone = zone(arg(a, 1))?;
        let local = dt.with_timezone(&zone);
        Ok(match arg(a, 2) {
            Value::Null => Value::String(local.to_rfc3339_opts(SecondsFormat::Secs, false)),
            f => {
                use std::fmt::Write as _;
                let mut out = String::new();
                write!(out, "{}", local.format(&text(f)))
                    .map_err(|_| format!("`{}` is not a valid date format", text(f)))?;
                Value::String(out)
            }
        })
    }),
    // countries and phones
    ("country", |a| Ok(country_code(&text(arg(a, 0))).map(|c| Value::String(c.to_owned())).unwrap_or(Value::Null))),
    ("e164", |a| Ok(e164(&text(arg(a, 0)), &text(arg(a, 1))).map(Value::String).unwrap_or(Value::Null))),
];

fn arg(a: &[Value], i: usize) -> &Value {
    a.get(i).unwrap_or(&Value::Null)
}

/// A value as text: strings bare, null empty, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// Whole numbers as integers, so `{{add 1 2}}` sends `3`, not `3.0`.
fn normalize_number(n: serde_json::Number) -> Value {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
        _ => Value::Number(n),
    }
}

fn arithmetic(a: &[Value], f: fn(f64, f64) -> f64) -> Result<Value, String> {
    match (number(arg(a, 0)), number(arg(a, 1))) {
        (Some(x), Some(y)) => Ok(serde_json::Number::from_f64(f(x, y)).map(normalize_number).unwrap_or(Value::Null)),
        _ => Ok(Value::Null),
    }
}

fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), _) | (_, Value::Number(_)) => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        _ => text(a) == text(b),
    }
}

fn compare(a: &[Value], ok: fn(std::cmp::Ordering) -> bool) -> Result<Value, String> {
    let (x, y) = (arg(a, 0), arg(a, 1));
    let ord = match (number(x), number(y)) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => Some(text(x).cmp(&text(y))),
    };
    Ok(Value::Bool(ord.is_some_and(ok)))
}

/// ISO 8601 / RFC 3339, `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`, or epoch milliseconds.
pub fn parse_date(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => n.as_i64().and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return None;
            }
            if s.bytes().all(|b| b.is_ascii_digit()) && s.len() >= 10 {
                return s.parse::<i64>().ok().and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            }
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .ok()
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok().map(|n| n.and_utc()))
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").ok().map(|n| n.and_utc()))
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").ok().map(|n| n.and_utc()))
                .or_else(|| {
                    NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|n| n.and_utc())
                })
        }
        _ => None,
    }
}

/// An IANA time zone named by a template value.
fn zone(v: &Value) -> Result<chrono_tz::Tz, String> {
    let name = text(v);
    let name = name.trim();
    if name.is_empty() {
        return Err("no time zone given (an IANA name such as America/New_York)".into());
    }
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("unknown time zone `{name}`; use an IANA name such as Europe/London"))
}

/// A wall-clock date (`2026-03-08`) and time (`09:30`, `09:30:00`, or empty for midnight),
/// or a date and time in one (`2026-03-08T09:30:00`).
fn local_datetime(date: &str, time: &str) -> Result<NaiveDateTime, String> {
    let bad = || format!("`{date}` `{time}` is not a date (YYYY-MM-DD) and time (HH:MM or HH:MM:SS)");
    if time.is_empty() {
        if let Ok(d) = NaiveDate::parse_from_str(date, "%Y-%m-%d") {
            return d.and_hms_opt(0, 0, 0).ok_or_else(bad);
        }
        for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
            if let Ok(n) = NaiveDateTime::parse_from_str(date, f) {
                return Ok(n);
            }
        }
        return Err(bad());
    }
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    let clock = chrono::NaiveTime::parse_from_str(time, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(time, "%H:%M"))
        .map_err(|_| bad())?;
    Ok(day.and_time(clock))
}

/// The instant a wall-clock time names in `zone`. In the hour skipped when clocks go forward
/// the time does not exist: it is read as the same number of minutes past the change (02:30
/// becomes 03:30), as calendars do. In the hour repeated when clocks go back, the earlier of
/// the two instants is taken.
fn from_local(zone: chrono_tz::Tz, local: NaiveDateTime) -> DateTime<Utc> {
    use chrono::LocalResult;
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(early, _) => early.with_timezone(&Utc),
        LocalResult::None => {
            // Read it with the offset in force just before the gap.
            let before = zone.offset_from_utc_datetime(&(local - ChronoDuration::hours(12)));
            let offset = chrono::Offset::fix(&before);
            (local - ChronoDuration::seconds(i64::from(offset.local_minus_utc()))).and_utc()
        }
    }
}

/// ISO 8601 by default; `epoch_ms` and `epoch` give numbers; anything else is a strftime format.
fn format_date(dt: DateTime<Utc>, format: &Value) -> Value {
    match format {
        Value::Null => Value::String(dt.to_rfc3339_opts(SecondsFormat::Millis, true)),
        Value::String(f) if f == "epoch_ms" => Value::from(dt.timestamp_millis()),
        Value::String(f) if f == "epoch" => Value::from(dt.timestamp()),
        Value::String(f) => {
            use std::fmt::Write as _;
            let mut out = String::new();
            match write!(out, "{}", dt.format(f)) {
                Ok(()) => Value::String(out),
                Err(_) => Value::Null,
            }
        }
        _ => Value::String(dt.to_rfc3339_opts(SecondsFormat::Millis, true)),
    }
}

/// `format_date`, with a format chrono cannot render reported instead of rendering nothing.
fn format_date_checked(dt: DateTime<Utc>, format: &Value) -> Result<Value, String> {
    match (format_date(dt, format), format) {
        (Value::Null, Value::String(f)) => Err(format!(
            "`{f}` is not a date format chrono can render (see https://docs.rs/chrono/latest/chrono/format/strftime/)"
        )),
        (v, _) => Ok(v),
    }
}

/// A phone number in E.164, read in the given country (ISO code or English name) when it
/// has no `+` prefix. None when it is not a valid number.
pub fn e164(raw: &str, country: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    // A number written with its country code stands on its own; the region would only make
    // the parser strip a trunk prefix that is not there.
    let region = if raw.starts_with('+') {
        None
    } else {
        crate::template::country_code(country).and_then(|c| c.parse::<phonenumber::country::Id>().ok())
    };
    let parsed = phonenumber::parse(region, raw).ok()?;
    if !phonenumber::is_valid(&parsed) {
        return None;
    }
    Some(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// ISO 3166 alpha-2 code for a code or a common English country name.
pub fn country_code(name: &str) -> Option<&'static str> {
    let n = name.trim().to_ascii_lowercase();
    if n.is_empty() {
        return None;
    }
    COUNTRIES
        .iter()
        .find(|(code, names)| code.eq_ignore_ascii_case(&n) || names.iter().any(|x| *x == n))
        .map(|(code, _)| *code)
}

const COUNTRIES: &[(&str, &[&str])] = &[
    ("US", &["united states", "united states of america", "usa", "u.s.a.", "u.s."]),
    ("GB", &["united kingdom", "uk", "great britain", "england", "scotland", "wales", "northern ireland"]),
    ("IE", &["ireland"]),
    ("CA", &["canada"]),
    ("AU", &["australia"]),
    ("NZ", &["new zealand"]),
    ("DE", &["germany", "deutschland"]),
    ("FR", &["france"]),
    ("ES", &["spain", "españa"]),
    ("IT", &["italy", "italia"]),
    ("NL", &["netherlands", "the netherlands", "holland"]),
    ("BE", &["belgium"]),
    ("CH", &["switzerland"]),
    ("AT", &["austria"]),
    ("SE", &["sweden"]),
    ("NO", &["norway"]),
    ("DK", &["denmark"]),
    ("FI", &["finland"]),
    ("PL", &["poland"]),
    ("PT", &["portugal"]),
    ("CZ", &["czech republic", "czechia"]),
    ("GR", &["greece"]),
    ("IS", &["iceland"]),
    ("MX", &["mexico", "méxico"]),
    ("BR", &["brazil", "brasil"]),
    ("AR", &["argentina"]),
    ("CL", &["chile"]),
    ("CO", &["colombia"]),
    ("IN", &["india"]),
    ("JP", &["japan"]),
    ("CN", &["china"]),
    ("KR", &["south korea", "korea, republic of", "republic of korea"]),
    ("SG", &["singapore"]),
    ("HK", &["hong kong"]),
    ("ZA", &["south africa"]),
    ("NG", &["nigeria"]),
    ("KE", &["kenya"]),
    ("AE", &["united arab emirates", "uae"]),
    ("IL", &["israel"]),
    ("TR", &["turkey", "türkiye"]),
    ("PH", &["philippines"]),
    ("MY", &["malaysia"]),
    ("ID", &["indonesia"]),
    ("TH", &["thailand"]),
    ("VN", &["vietnam", "viet nam"]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, ctx: Value) -> Value {
        CompiledTemplate::compile(t).unwrap().render(&context(ctx)).unwrap()
    }

    #[test]
    fn one_expression_keeps_its_type() {
        let ctx = json!({"trigger": {"n": 42, "tags": ["a", "b"], "o": {"x": 1}}});
        assert_eq!(render("{{trigger.n}}", ctx.clone()), json!(42));
        assert_eq!(render(" {{trigger.tags}} ", ctx.clone()), json!(["a", "b"]));
        assert_eq!(render("{{trigger.o}}", ctx.clone()), json!({"x": 1}));
        assert_eq!(render("{{split \"a, b,,c\" \",\"}}", ctx.clone()), json!(["a", "b", "c"]));
        assert_eq!(render("{{add trigger.n 1}}", ctx.clone()), json!(43));
        assert_eq!(render("n={{trigger.n}}", ctx), json!("n=42"));
    }

    #[test]
    fn wall_clock_times_in_a_zone_become_instants_across_dst() {
        let at = |date: &str, time: &str, zone: &str| {
            let ctx = json!({"trigger": {"d": date, "t": time, "z": zone}});
            render("{{from_zone trigger.d trigger.t trigger.z}}", ctx)
        };
        // New York: EST (-05:00) until 2026-03-08 02:00, EDT (-04:00) until 2026-11-01 02:00.
        assert_eq!(at("2026-03-06", "09:30", "America/New_York"), json!("2026-03-06T14:30:00.000Z"));
        assert_eq!(at("2026-03-09", "09:30:00", "America/New_York"), json!("2026-03-09T13:30:00.000Z"));
        assert_eq!(at("2026-11-02", "09:30", "America/New_York"), json!("2026-11-02T14:30:00.000Z"));
        // Kolkata keeps +05:30 all year, half an hour off the whole hours.
        assert_eq!(at("2026-03-09", "09:30", "Asia/Kolkata"), json!("2026-03-09T04:00:00.000Z"));
        assert_eq!(at("2026-07-01", "00:15", "Asia/Kolkata"), json!("2026-06-30T18:45:00.000Z"));
        // 02:30 does not exist on the morning clocks go forward: read as 03:30 EDT.
        assert_eq!(at("2026-03-08", "02:30", "America/New_York"), json!("2026-03-08T07:30:00.000Z"));
        // 01:30 happens twice on the morning clocks go back: the first (EDT) is taken.
        assert_eq!(at("2026-11-01", "01:30", "America/New_York"), json!("2026-11-01T05:30:00.000Z"));
        // No time: midnight; no date: nothing.
        assert_eq!(at("2026-01-15", "", "Europe/London"), json!("2026-01-15T00:00:00.000Z"));
        assert_eq!(at("", "09:30", "Europe/London"), Value::Null);
        // Shown back on the wall clock, with the offset of that date.
        let ctx = json!({"trigger": {"at": "2026-03-09T13:30:00Z"}});
        assert_eq!(render("{{to_zone trigger.at \"America/New_York\"}}", ctx), json!("2026-03-09T09:30:00-04:00"));
    }

    #[test]
    fn zone_mistakes_fail_with_a_message() {
        let render_err =
            |t: &str| CompiledTemplate::compile(t).unwrap().render(&context(json!({"trigger": {}}))).unwrap_err();
        assert!(
            render_err("{{from_zone \"2026-03-09\" \"09:30\" \"Mars/Olympus\"}}")
                .contains("unknown time zone `Mars/Olympus`")
        );
        assert!(render_err("{{from_zone \"2026-03-09\" \"09:30\" trigger.none}}").contains("no time zone given"));
        assert!(render_err("{{from_zone \"09/03/2026\" \"9.30\" \"UTC\"}}").contains("is not a date"));
    }

    #[test]
    fn lists_of_tags_compare_and_remember() {
        let ctx = json!({"trigger": {"now": ["vip", "Customer"], "was": "[\"customer\",\"old\",\"capsule\"]"}});
        assert_eq!(render("{{lower trigger.now}}", ctx.clone()), json!(["vip", "customer"]));
        assert_eq!(
            render("{{without (parse_json trigger.was) (lower trigger.now)}}", ctx.clone()),
            json!(["old", "capsule"])
        );
        assert_eq!(render("{{parse_json \"\"}}", ctx.clone()), Value::Null);
        assert_eq!(render("{{without trigger.none trigger.now}}", ctx), json!([]));
    }

    #[test]
    fn never_escapes_html() {
        let ctx = json!({"trigger": {"name": "Smith & Sons <ltd>"}});
        assert_eq!(render("{{trigger.name}}", ctx.clone()), json!("Smith & Sons <ltd>"));
        assert_eq!(render("Co: {{trigger.name}}", ctx), json!("Co: Smith & Sons <ltd>"));
    }

    #[test]
    fn missing_fields_render_as_nothing() {
        let ctx = json!({"trigger": {}});
        assert_eq!(render("{{trigger.missing.deep}}", ctx.clone()), Value::Null);
        assert_eq!(render("x{{trigger.missing}}y", ctx.clone()), json!("xy"));
        assert_eq!(render("{{lower trigger.missing}}", ctx), json!(""));
    }

    #[test]
    fn array_indexes_and_helpers_for_mapping() {
        let ctx = json!({"trigger": {"emails": [{"address": "A@X.COM", "type": "work"}, {"address": "b@y.com", "type": "home"}]}});
        assert_eq!(render("{{lower trigger.emails.[0].address}}", ctx.clone()), json!("a@x.com"));
        assert_eq!(render("{{trigger.emails.[1].address}}", ctx.clone()), json!("b@y.com"));
        assert_eq!(render("{{pluck trigger.emails \"address\"}}", ctx.clone()), json!(["A@X.COM", "b@y.com"]));
        assert_eq!(
            render("{{get (find trigger.emails \"type\" \"home\") \"address\"}}", ctx.clone()),
            json!("b@y.com")
        );
        assert_eq!(render("{{first (pluck trigger.emails \"address\")}}", ctx.clone()), json!("A@X.COM"));
        assert_eq!(render("{{default trigger.none \"fallback\"}}", ctx.clone()), json!("fallback"));
        assert_eq!(
            render("{{get (first (prefer trigger.emails \"type\" \"home\")) \"address\"}}", ctx.clone()),
            json!("b@y.com")
        );
        assert_eq!(
            render("{{append (pluck trigger.emails \"type\") \"capsule\"}}", ctx),
            json!(["work", "home", "capsule"])
        );
        assert_eq!(render("{{country \"United Kingdom\"}}", json!({})), json!("GB"));
    }

    #[test]
    fn dates_and_phones() {
        let ctx = json!({"trigger": {"due": "2026-03-01", "ms": 1767225600000i64}});
        assert_eq!(render("{{date trigger.due}}", ctx.clone()), json!("2026-03-01T00:00:00.000Z"));
        assert_eq!(render("{{date trigger.ms \"%Y-%m-%d\"}}", ctx.clone()), json!("2026-01-01"));
        assert_eq!(render("{{date_add trigger.due 2 \"days\" \"%Y-%m-%d\"}}", ctx.clone()), json!("2026-03-03"));
        assert_eq!(render("{{date trigger.due \"epoch_ms\"}}", ctx), json!(1772323200000i64));
        assert_eq!(e164("020 7946 0018", "United Kingdom").as_deref(), Some("+442079460018"));
        assert_eq!(e164("(415) 555-2671", "US").as_deref(), Some("+14155552671"));
        assert_eq!(e164("+49 30 901820", "").as_deref(), Some("+4930901820"));
        assert_eq!(e164("not a phone", "US"), None);
        assert_eq!(e164("+44 131 496 0835", "United States").as_deref(), Some("+441314960835"));
    }

    #[test]
    fn truthiness_of_filters() {
        for t in ["", "  ", "false", "FALSE", "0", "null", " Null "] {
            assert!(!truthy(t), "{t:?}");
        }
        for t in ["true", "yes", "1", "x"] {
            assert!(truthy(t), "{t:?}");
        }
    }

    #[test]
    fn references_are_collected_and_unknown_helpers_rejected() {
        let t = CompiledTemplate::compile(
            "{{#if trigger.a}}{{lower steps.contact.contact.id}}{{/if}}{{#each trigger.items}}{{name}}{{/each}}",
        )
        .unwrap();
        let refs: Vec<String> = t.references().into_iter().map(|r| r.segments.join(".")).collect();
        assert_eq!(refs, vec!["trigger.a", "steps.contact.contact.id", "trigger.items"]);
        let err = CompiledTemplate::compile("{{lowr trigger.a}}").unwrap_err();
        assert!(err.message.contains("unknown helper `lowr` (did you mean `lower`?)"), "{}", err.message);
        assert!(CompiledTemplate::compile("{{#if trigger.a}}").is_err());
    }

    #[test]
    fn syntax_errors_are_told_in_plain_words() {
        let message = |t: &str| CompiledTemplate::compile(t).unwrap_err().message;
        assert_eq!(
            message("Hi {{trigger.firstName}"),
            "the tag `{{trigger.firstName}` at column 4 ends with a single `}`: a tag ends with `}}`"
        );
        assert_eq!(
            message("Hi {{trigger.firstName and more"),
            "the tag `{{trigger.firstName and more` at column 4 is never closed: a `}}` is missing"
        );
        assert_eq!(
            message("{{#if trigger.a}}yes"),
            "the block `{{#if ...}}` at column 1 is never closed: add `{{/if}}` after its content"
        );
        assert_eq!(
            message("{{#if a}}\n{{#each b}}x{{/if}}"),
            "`{{/if}}` at line 2, column 13 closes the block `{{#each}}` opened at line 2, column 1: close it with `{{/each}}`"
        );
        // Not one of these: the parser's message, with its position.
        let err = CompiledTemplate::compile("{{a b=}}").unwrap_err();
        assert!(err.message.starts_with("template does not parse"), "{}", err.message);
        assert!(err.col.is_some());
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, ctx: Value) -> Result<Value, String> {
        CompiledTemplate::compile(t).map_err(|e| e.message)?.render(&context(ctx))
    }

    #[test]
    fn a_date_helper_that_overflows_fails_the_render_instead_of_panicking() {
        let ctx = json!({"trigger": {"updatedAt": "2026-01-01T00:00:00Z"}});
        for t in [
            "{{date_add trigger.updatedAt 100000000 \"days\"}}",
            "{{date_add trigger.updatedAt -100000000 \"weeks\"}}",
            "{{date_add trigger.updatedAt 100000000000000000000000 \"seconds\"}}",
            "x {{date_add trigger.updatedAt 100000000 \"days\"}}",
        ] {
            let err = render(t, ctx.clone()).unwrap_err();
            assert!(err.contains("leaves the supported date range"), "{t}: {err}");
        }
    }

    #[test]
    fn deep_nesting_and_partials_are_refused_at_compile_time_with_a_place() {
        let helpers = format!("{{{{{}trigger.a{}}}}}", "lower (".repeat(5000), ")".repeat(5000));
        let e = CompiledTemplate::compile(&helpers).unwrap_err();
        assert!(e.message.contains("nest more than 32 deep"), "{}", e.message);
        assert_eq!((e.line, e.col), (Some(1), Some(9 + 7 * 32)), "placed at the 33rd `(`");
        let ifs = format!("{}x{}", "{{#if trigger.a}}\n".repeat(20_000), "{{/if}}".repeat(20_000));
        let e = CompiledTemplate::compile(&ifs).unwrap_err();
        assert!(e.message.contains("nest more than 32 deep"), "{}", e.message);
        assert_eq!(e.line, Some(33));
        for t in ["{{#*inline \"p\"}}x{{> p}}{{/inline}}{{> p}}", "a {{> p}}", "{{#> layout}}x{{/layout}}"] {
            let e = CompiledTemplate::compile(t).unwrap_err();
            assert!(e.message.contains("partials"), "{t}: {}", e.message);
        }
        // Parentheses and braces inside string literals and comments are not nesting.
        let fine = format!("{{{{concat \"{}\" trigger.a}}}}{{{{!-- {} --}}}}", "(".repeat(100), "{{#if".repeat(100));
        assert!(CompiledTemplate::compile(&fine).is_ok());
        let deep_enough = format!("{{{{{}trigger.a{}}}}}", "lower (".repeat(31), ")".repeat(31));
        assert!(CompiledTemplate::compile(&deep_enough).is_ok());
    }

    #[test]
    fn runaway_rendering_is_stopped_with_a_message() {
        let list = (0..20).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let ctx = json!({"trigger": {"list": list}});
        let nested =
            format!("{}{{{{this}}}}{}", "{{#each (split @root.trigger.list)}}".repeat(8), "{{/each}}".repeat(8));
        let err = render(&nested, ctx.clone()).unwrap_err();
        assert!(err.contains("too much work") || err.contains("MiB"), "{err}");
        // Loops whose body writes nothing are charged too.
        let silent = format!("{}{}", "{{#each (split @root.trigger.list)}}".repeat(8), "{{/each}}".repeat(8));
        let err = render(&silent, ctx.clone()).unwrap_err();
        assert!(err.contains("too much work"), "{err}");
        // A helper building a value larger than the whole budget.
        let big = json!({"trigger": {"s": "x".repeat(5_000_000)}});
        let err = render("{{length (concat trigger.s trigger.s)}}", big).unwrap_err();
        assert!(err.contains("too much work"), "{err}");
        // Ordinary loops still work, with @index and @last.
        let ok =
            render("{{#each (split \"a,b\")}}{{@index}}{{this}}{{#unless @last}};{{/unless}}{{/each}}", ctx).unwrap();
        assert_eq!(ok, json!("0a;1b"));
    }

    #[test]
    fn each_over_objects_and_block_params_behaves_as_before() {
        let ctx = json!({"trigger": {"o": {"a": 1, "b": 2}, "l": [{"n": "x"}, {"n": "y"}], "e": []}});
        assert_eq!(render("{{#each trigger.o}}{{@key}}={{this}},{{/each}}", ctx.clone()).unwrap(), json!("a=1,b=2,"));
        assert_eq!(
            render("{{#each trigger.l as |item i|}}{{i}}:{{item.n}} {{/each}}", ctx.clone()).unwrap(),
            json!("0:x 1:y ")
        );
        assert_eq!(render("{{#each trigger.l}}{{n}}{{@first}}{{/each}}", ctx.clone()).unwrap(), json!("xtrueyfalse"));
        assert_eq!(render("{{#each trigger.e}}x{{else}}none{{/each}}", ctx).unwrap(), json!("none"));
    }

    #[test]
    fn date_errors_are_said_in_the_users_terms() {
        let err = render("{{date \"2026-01-01\" \"%Q\"}}", json!({})).unwrap_err();
        assert!(err.contains("`%Q` is not a date format"), "{err}");
        let out = render("{{date 99999999999999999999}}", json!({}));
        let text = format!("{out:?}");
        assert!(!text.contains("__typed"), "{text}");
    }
}
