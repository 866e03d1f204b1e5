//! Go-template rendering of task text against a machine, and job snapshots
//! (`docs/architecture.md` §11 Templates and jobs; issue #7 part 7).
//!
//! Owns: a parser and evaluator for the subset of Go's `text/template` that
//! DRP task templates use (grammar in `grammar/template.ebnf`), positioned
//! [`TemplateError`]s, the [`TokenMinter`] seam through which
//! `.GenerateProfileToken` asks for a token, and [`Job`] records (written
//! through the store's write path, see `jobs.rs`). Must not: mint or verify
//! tokens (the auth module does), write machines, profiles or params, or
//! reach the storage engine other than through the store.
//!
//! # Why a hand-written nom parser rather than a crate
//!
//! `gtmpl` (the Rust port of `text/template`) takes custom functions as plain
//! `fn(&[Value]) -> Result<Value, String>` pointers, so `.Param` cannot reach
//! the machine's params or the token minter without global state, and its
//! errors are strings without byte offsets, so it cannot give the
//! line:column/expected/found errors required here. The subset is small, so
//! fleetkv parses it with nom 8 primitives (as the filter language does) and
//! checks everything static at parse time: unknown functions and methods,
//! argument counts, unmatched `end`/`else`, unclosed `if`s.
//!
//! # The subset
//!
//! Text is copied verbatim; `{{- ` and ` -}}` trim the whitespace (space, tab,
//! CR, LF) before and after an action, as in Go. Actions:
//!
//! * `{{ pipeline }}` prints the value: strings as they are, numbers as Go
//!   prints a `float64` (`7200`, `1.5`, `1e+06`: DRP decodes params into
//!   `interface{}`), booleans as `true`/`false`, null as `<no value>`,
//!   objects and arrays as Go's `json.Marshal` would (compact, sorted keys).
//! * `{{ if p }}…{{ else if q }}…{{ else }}…{{ end }}`, with Go's truthiness:
//!   false, 0, "", null, empty objects and arrays are false.
//! * `{{ template "name" pipeline }}` runs a named template with dot set to
//!   the pipeline (nil when omitted); recursion is limited to
//!   [`MAX_CALL_DEPTH`] calls.
//! * `{{/* comment */}}`.
//!
//! A pipeline is one command (no `|` chaining, no variables): operands are
//! `.`, field chains (`.Machine.Name`, `.Machine.Uuid`, `.Machine.Address`,
//! `.Machine.Workflow`, any field of the machine's DRP JSON), string
//! literals (`"…"` with Go escapes, or raw `` `…` ``), numbers, `true`,
//! `false`, `nil` and parenthesised pipelines. Commands: the methods
//! `.Param "k"`, `.ParamExists "k"`, `.GenerateProfileToken profile ttl`
//! and the functions `not`, `and`, `or` (short-circuit), `eq`, `ne` (numbers
//! compare by value, unlike Go's stricter `eq`). `range`, `with`, `define`,
//! `block` and pipes are reported as unsupported.
//!
//! `.Param "k"` for a param with no effective value is an error
//! ([`TemplateErrorKind::NoValue`]) rather than Go's `<no value>`: a task
//! script that silently receives the text `<no value>` fails later and
//! further away. Guard with `.ParamExists`, which is true when the machine has
//! an effective value (own, profile, global or a definition's default).

mod exec;
mod jobs;
mod parse;
mod print;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::Machine;

/// Nesting limit for `if` blocks and parentheses in one template.
pub const MAX_NESTING: usize = 64;
/// Limit on nested `{{ template }}` calls while rendering.
pub const MAX_CALL_DEPTH: usize = 64;

/// Mints the profile tokens `.GenerateProfileToken` prints. Implemented by the
/// store's auth module: the owner's `Store` mints any profile token; a
/// `Scoped` handle (a template rendered by a token holder) only under the
/// minting rule — the `profiles/token/NAME` claim, claims its own cover, and
/// an expiry no later than its own, however long `ttl_secs`. Tests and tools
/// may supply their own.
pub trait TokenMinter {
    /// A token granting read and update of `profile` for `ttl_secs` seconds
    /// (a minter may cut the ttl; see above).
    fn profile_token(&self, profile: &str, ttl_secs: u64) -> crate::Result<String>;
}

/// A parsed template. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Template {
    name: Arc<str>,
    source: Arc<str>,
    nodes: Arc<[parse::Node]>,
}

/// What a template is rendered against.
#[derive(Clone, Copy)]
pub struct RenderContext<'a> {
    /// The machine (`.Machine.*`).
    pub machine: &'a Machine,
    /// Its effective params at the moment of rendering.
    pub params: &'a Map<String, Value>,
    /// Templates `{{ template "name" . }}` can call, by name.
    pub templates: &'a [Template],
    /// Where `.GenerateProfileToken` gets its tokens.
    pub minter: &'a dyn TokenMinter,
}

impl Template {
    /// Parses `text`; `name` is what `{{ template "name" }}` calls it by and
    /// what errors report.
    pub fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
        let nodes = parse::parse(text).map_err(|e| e.into_error(name, text))?;
        Ok(Template {
            name: name.into(),
            source: text.into(),
            nodes: nodes.into(),
        })
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders against `ctx`, with dot set to the render context.
    pub fn render(&self, ctx: &RenderContext<'_>) -> Result<String, TemplateError> {
        exec::render(self, ctx)
    }
}

/// A job: the text of its templates rendered once, at creation, against the
/// machine's effective params at store revision `revision`. Later changes do
/// not alter it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id (v4).
    #[serde(rename = "Uuid")]
    pub uuid: Uuid,
    /// The machine it was rendered for.
    #[serde(rename = "Machine")]
    pub machine: Uuid,
    /// The store revision the params were read at.
    #[serde(rename = "Revision")]
    pub revision: u64,
    /// The rendered text of the entry template.
    #[serde(rename = "Rendered")]
    pub rendered: String,
    /// When it was created (RFC 3339, UTC).
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
}

/// The ways a template can fail to parse or render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateErrorKind {
    /// `{{` with no `}}` after it.
    UnclosedAction,
    /// A string literal with no closing quote.
    UnterminatedString,
    /// Something other than what the grammar allows here.
    Syntax,
    /// A function or method that does not exist.
    UnknownFunction,
    /// A field that the value does not have.
    UnknownField,
    /// Too few or too many arguments.
    ArgumentCount,
    /// A value of the wrong type (argument, field access, printing).
    WrongType,
    /// `{{ template "x" }}` of a template not in the set.
    UnknownTemplate,
    /// `{{ end }}` or `{{ else }}` with no open `if`.
    Unmatched,
    /// An `if` with no `{{ end }}`.
    UnclosedIf,
    /// Valid Go, outside fleetkv's subset (`range`, pipes, variables…).
    Unsupported,
    /// `.Param "k"` where the machine has no effective value for `k`.
    NoValue,
    /// The token minter failed.
    TokenMinting,
    /// Nesting or template recursion beyond the limits.
    TooDeep,
}

impl TemplateErrorKind {
    fn describe(self) -> &'static str {
        use TemplateErrorKind::*;
        match self {
            UnclosedAction => "unclosed action",
            UnterminatedString => "unterminated string",
            Syntax => "syntax error",
            UnknownFunction => "unknown function",
            UnknownField => "unknown field",
            ArgumentCount => "wrong number of arguments",
            WrongType => "wrong type",
            UnknownTemplate => "unknown template",
            Unmatched => "unmatched keyword",
            UnclosedIf => "unclosed if",
            Unsupported => "unsupported construct",
            NoValue => "param has no value",
            TokenMinting => "token minting failed",
            TooDeep => "nested too deeply",
        }
    }
}

impl fmt::Display for TemplateErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A positioned parse or render error. `Display` shows
/// `name:line:column: kind: expected …, found …` and the line with a caret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TemplateError {
    /// What went wrong.
    pub kind: TemplateErrorKind,
    /// 1-based line of the offset.
    pub line: usize,
    /// 1-based column (in chars) of the offset.
    pub column: usize,
    /// Byte offset into the template text.
    pub offset: usize,
    /// What was expected there.
    pub expected: String,
    /// What was found there.
    pub found: String,
    /// The template the offset is in.
    pub template_name: String,
    /// The offending line, for the caret display (boxed: keeps the error
    /// under clippy's `result_large_err` bound).
    line_text: Box<str>,
}

impl TemplateError {
    pub(crate) fn at(
        kind: TemplateErrorKind,
        name: &str,
        text: &str,
        offset: usize,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> TemplateError {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let start = text[..offset].rfind('\n').map_or(0, |p| p + 1);
        let end = text[offset..].find('\n').map_or(text.len(), |p| offset + p);
        TemplateError {
            kind,
            line: text[..offset].matches('\n').count() + 1,
            column: text[start..offset].chars().count() + 1,
            offset,
            expected: expected.into(),
            found: found.into(),
            template_name: name.to_string(),
            line_text: text[start..end].trim_end_matches('\r').into(),
        }
    }

    /// The text of the line the offset is on.
    pub fn source_line(&self) -> &str {
        &self.line_text
    }
}

impl From<TemplateError> for crate::Error {
    fn from(e: TemplateError) -> Self {
        crate::Error::Template(Box::new(e))
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "template {}:{}:{} (byte {}): {}: expected {}, found {}",
            self.template_name,
            self.line,
            self.column,
            self.offset,
            self.kind,
            self.expected,
            self.found
        )?;
        if !self.line_text.is_empty() {
            let pad: String = self
                .line_text
                .chars()
                .take(self.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n  {}\n  {pad}^", self.line_text)?;
        }
        Ok(())
    }
}
