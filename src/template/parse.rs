//! The parser: text and actions into a tree of [`Node`]s.
//!
//! nom 8 primitives over `&str`; offsets come from the length of the
//! remaining input. Errors are committed: the first thing that is wrong is
//! reported where it is. Blocks are built with an explicit stack and
//! parentheses are depth-limited, so hostile input cannot overflow the stack.

use std::borrow::Cow;

use nom::branch::alt;
use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::{char as ch, digit0, digit1, multispace0, one_of};
use nom::combinator::{opt, recognize};
use nom::sequence::pair;
use nom::Parser;
use serde_json::Value;

use super::{TemplateError, TemplateErrorKind as K, MAX_NESTING};

type NomErr<'a> = nom::error::Error<&'a str>;

/// A node of a parsed template.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Text, already trimmed by adjacent trim markers.
    Text(String),
    /// `{{ pipeline }}`.
    Print(Pipe),
    /// `{{ if }}…{{ else if }}…{{ else }}…{{ end }}`.
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    /// `{{ template "name" pipeline }}`; `pos` is the name's offset.
    Call {
        pos: usize,
        name: String,
        arg: Option<Pipe>,
    },
}

/// One command: a head and its arguments.
#[derive(Debug, Clone)]
pub(crate) struct Pipe {
    pub pos: usize,
    pub head: Head,
    pub args: Vec<Operand>,
}

#[derive(Debug, Clone)]
pub(crate) enum Head {
    Method(Method),
    Func(Func),
    Operand(Operand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Param,
    ParamExists,
    GenerateProfileToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Not,
    And,
    Or,
    Eq,
    Ne,
}

#[derive(Debug, Clone)]
pub(crate) struct Operand {
    pub pos: usize,
    pub kind: OpKind,
}

#[derive(Debug, Clone)]
pub(crate) enum OpKind {
    Dot,
    /// `.A.B`: each segment with its offset.
    Field(Vec<(usize, String)>),
    Lit(Value),
    Pipe(Box<Pipe>),
}

impl Method {
    fn from_name(s: &str) -> Option<Method> {
        Some(match s {
            "Param" => Method::Param,
            "ParamExists" => Method::ParamExists,
            "GenerateProfileToken" => Method::GenerateProfileToken,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::Param => "Param",
            Method::ParamExists => "ParamExists",
            Method::GenerateProfileToken => "GenerateProfileToken",
        }
    }

    fn arity(self) -> (usize, usize, &'static str) {
        match self {
            Method::Param | Method::ParamExists => (1, 1, "1 argument (a param name)"),
            Method::GenerateProfileToken => (2, 2, "2 arguments (a profile and a ttl in seconds)"),
        }
    }
}

impl Func {
    fn from_name(s: &str) -> Option<Func> {
        Some(match s {
            "not" => Func::Not,
            "and" => Func::And,
            "or" => Func::Or,
            "eq" => Func::Eq,
            "ne" => Func::Ne,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Not => "not",
            Func::And => "and",
            Func::Or => "or",
            Func::Eq => "eq",
            Func::Ne => "ne",
        }
    }

    fn arity(self) -> (usize, usize, &'static str) {
        match self {
            Func::Not => (1, 1, "1 argument"),
            Func::And | Func::Or => (1, usize::MAX, "at least 1 argument"),
            Func::Eq => (2, usize::MAX, "at least 2 arguments"),
            Func::Ne => (2, 2, "2 arguments"),
        }
    }
}

const METHODS: &str = "a method (.Param, .ParamExists, .GenerateProfileToken)";
const FUNCS: &str = "a function (not, and, or, eq, ne)";
const UNSUPPORTED_KW: [&str; 6] = ["range", "with", "define", "block", "break", "continue"];

/// A committed parse failure at a byte offset.
#[derive(Debug)]
pub(crate) struct PErr {
    kind: K,
    at: usize,
    expected: Cow<'static, str>,
    found: String,
}

impl PErr {
    pub(crate) fn into_error(self, name: &str, text: &str) -> TemplateError {
        TemplateError::at(self.kind, name, text, self.at, self.expected, self.found)
    }
}

type PResult<'a, T> = Result<(&'a str, T), PErr>;

/// Whitespace Go's trim markers remove.
fn is_trim_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ws(s: &str) -> &str {
    multispace0::<_, NomErr>(s).map_or(s, |(r, _)| r)
}

fn ident(s: &str) -> Option<(&str, &str)> {
    recognize(pair(
        take_while1::<_, _, NomErr>(is_ident_start),
        take_while(is_ident_char),
    ))
    .parse(s)
    .ok()
}

/// What the input holds at `s`, for error messages.
fn found(s: &str) -> String {
    if s.is_empty() {
        return "end of input".into();
    }
    if s.starts_with("}}") {
        return "\"}}\"".into();
    }
    let end = s
        .char_indices()
        .find(|&(i, c)| i > 0 && (c.is_whitespace() || matches!(c, '(' | ')' | '}')))
        .map_or(s.len(), |(i, _)| i);
    let tok: String = s[..end].chars().take(24).collect();
    format!("{tok:?}")
}

/// An open block while parsing: the root or an `if`.
struct Frame {
    pos: usize,
    nodes: Vec<Node>,
    branches: Vec<(Pipe, Vec<Node>)>,
    cond: Option<Pipe>,
    in_else: bool,
}

impl Frame {
    fn new(pos: usize, cond: Option<Pipe>) -> Frame {
        Frame {
            pos,
            nodes: Vec::new(),
            branches: Vec::new(),
            cond,
            in_else: false,
        }
    }
}

/// What an action turned out to be.
enum Action {
    Comment,
    Print(Pipe),
    If(Pipe),
    ElseIf(Pipe),
    Else,
    End,
    Call(usize, String, Option<Pipe>),
}

struct P<'a> {
    src: &'a str,
    depth: usize,
}

/// Parses a whole template.
pub(crate) fn parse(src: &str) -> Result<Vec<Node>, PErr> {
    P { src, depth: 0 }.template()
}

impl<'a> P<'a> {
    fn off(&self, rest: &str) -> usize {
        self.src.len() - rest.len()
    }

    fn err(&self, kind: K, at: &str, expected: impl Into<Cow<'static, str>>) -> PErr {
        PErr {
            kind,
            at: self.off(at),
            expected: expected.into(),
            found: found(at),
        }
    }

    fn template(&mut self) -> Result<Vec<Node>, PErr> {
        let mut frames = vec![Frame::new(0, None)];
        let mut rest = self.src;
        let mut trim_next = false;
        loop {
            let (mut text, action) = match rest.find("{{") {
                Some(i) => (&rest[..i], Some(&rest[i..])),
                None => (rest, None),
            };
            if trim_next {
                text = text.trim_start_matches(is_trim_ws);
            }
            let Some(act) = action else {
                push_text(&mut frames, text);
                break;
            };
            let mut inner = &act[2..];
            if let Some(r) = inner.strip_prefix('-') {
                if r.starts_with(is_trim_ws) {
                    text = text.trim_end_matches(is_trim_ws);
                    inner = r;
                }
            }
            push_text(&mut frames, text);
            let (r, action) = self.action(act, inner, &frames)?;
            let (r, trim) = self.close(act, r)?;
            trim_next = trim;
            rest = r;
            self.apply(&mut frames, act, action)?;
        }
        if frames.len() > 1 {
            let pos = frames.last().map_or(0, |f| f.pos);
            return Err(PErr {
                kind: K::UnclosedIf,
                at: pos,
                expected: "{{ end }}".into(),
                found: "end of input".into(),
            });
        }
        Ok(frames.pop().map(|f| f.nodes).unwrap_or_default())
    }

    /// Folds one action into the open blocks.
    fn apply(&self, frames: &mut Vec<Frame>, act: &str, action: Action) -> Result<(), PErr> {
        let unmatched = |what: &'static str| PErr {
            kind: K::Unmatched,
            at: self.off(act),
            expected: "text or an action outside any block; no {{ if }} is open".into(),
            found: what.into(),
        };
        let frame_count = frames.len();
        let Some(top) = frames.last_mut() else {
            return Ok(());
        };
        match action {
            Action::Comment => {}
            Action::Print(p) => top.nodes.push(Node::Print(p)),
            Action::Call(pos, name, arg) => top.nodes.push(Node::Call { pos, name, arg }),
            Action::If(p) => {
                if frame_count > MAX_NESTING {
                    return Err(self.err(K::TooDeep, act, "at most 64 nested blocks"));
                }
                frames.push(Frame::new(self.off(act), Some(p)));
            }
            Action::Else | Action::ElseIf(_) => {
                if frame_count == 1 {
                    return Err(unmatched("{{ else }}"));
                }
                if top.in_else {
                    return Err(PErr {
                        kind: K::Syntax,
                        at: self.off(act),
                        expected: "{{ end }} (this if already has its {{ else }})".into(),
                        found: "{{ else }}".into(),
                    });
                }
                if let Some(c) = top.cond.take() {
                    top.branches.push((c, std::mem::take(&mut top.nodes)));
                }
                match action {
                    Action::ElseIf(p) => top.cond = Some(p),
                    _ => top.in_else = true,
                }
            }
            Action::End => {
                if frame_count == 1 {
                    return Err(unmatched("{{ end }}"));
                }
                let Some(mut f) = frames.pop() else {
                    return Ok(());
                };
                let otherwise = if f.in_else {
                    std::mem::take(&mut f.nodes)
                } else {
                    if let Some(c) = f.cond.take() {
                        f.branches.push((c, std::mem::take(&mut f.nodes)));
                    }
                    Vec::new()
                };
                if let Some(parent) = frames.last_mut() {
                    parent.nodes.push(Node::If {
                        branches: f.branches,
                        otherwise,
                    });
                }
            }
        }
        Ok(())
    }

    /// Expects `}}` or ` -}}`; returns the rest and whether to trim after.
    fn close(&self, act: &'a str, r: &'a str) -> PResult<'a, bool> {
        let s = ws(r);
        if let Some(rest) = s.strip_prefix("-}}") {
            if s.len() < r.len() {
                return Ok((rest, true));
            }
        }
        if let Some(rest) = s.strip_prefix("}}") {
            return Ok((rest, false));
        }
        if !s.contains("}}") {
            return Err(PErr {
                kind: K::UnclosedAction,
                at: self.off(act),
                expected: "\"}}\" to close the action opened here".into(),
                found: "end of input".into(),
            });
        }
        if s.starts_with('|') {
            return Err(self.err(K::Unsupported, s, "\"}}\" (pipes are not supported)"));
        }
        Err(self.err(K::Syntax, s, "\"}}\""))
    }

    /// The body of an action, after `{{` and its trim marker.
    fn action(&mut self, act: &'a str, inner: &'a str, frames: &[Frame]) -> PResult<'a, Action> {
        let s = ws(inner);
        if let Some(c) = s.strip_prefix("/*") {
            return match c.find("*/") {
                Some(i) => Ok((&c[i + 2..], Action::Comment)),
                None => Err(PErr {
                    kind: K::UnclosedAction,
                    at: self.off(act),
                    expected: "\"*/\" to close the comment".into(),
                    found: "end of input".into(),
                }),
            };
        }
        let Some((r, word)) = ident(s) else {
            if self.at_close(s) {
                return Err(self.err(
                    K::Syntax,
                    s,
                    "a pipeline or a keyword (if, else, end, template)",
                ));
            }
            let (r, p) = self.pipeline(s)?;
            return Ok((r, Action::Print(p)));
        };
        match word {
            "if" => {
                let (r, p) = self.required_pipeline(r, "a condition after if")?;
                Ok((r, Action::If(p)))
            }
            "else" => {
                let t = ws(r);
                match ident(t) {
                    Some((r2, "if")) if frames.len() > 1 => {
                        let (r, p) = self.required_pipeline(r2, "a condition after else if")?;
                        Ok((r, Action::ElseIf(p)))
                    }
                    _ => Ok((r, Action::Else)),
                }
            }
            "end" => Ok((r, Action::End)),
            "template" => {
                let t = ws(r);
                let pos = self.off(t);
                let (r, name) = match t.chars().next() {
                    Some('"' | '`') => self.string(t)?,
                    _ => return Err(self.err(K::Syntax, t, "a template name in quotes")),
                };
                let arg = if self.at_close(ws(r)) {
                    None
                } else {
                    Some(self.pipeline(r)?)
                };
                match arg {
                    Some((r, p)) => Ok((r, Action::Call(pos, name, Some(p)))),
                    None => Ok((r, Action::Call(pos, name, None))),
                }
            }
            w if UNSUPPORTED_KW.contains(&w) => Err(self.err(
                K::Unsupported,
                s,
                "if, else, end, template or a pipeline (range, with, define and block are not supported)",
            )),
            _ => {
                let (r, p) = self.pipeline(s)?;
                Ok((r, Action::Print(p)))
            }
        }
    }

    /// Whether `s` (after whitespace) ends the action or a parenthesis.
    fn at_close(&self, s: &str) -> bool {
        s.is_empty() || s.starts_with("}}") || s.starts_with("-}}") || s.starts_with(')')
    }

    fn required_pipeline(&mut self, r: &'a str, what: &'static str) -> PResult<'a, Pipe> {
        let t = ws(r);
        if self.at_close(t) {
            return Err(self.err(K::Syntax, t, what));
        }
        self.pipeline(t)
    }

    /// One command: a head, then operands up to `}}`, ` -}}` or `)`.
    fn pipeline(&mut self, r: &'a str) -> PResult<'a, Pipe> {
        let s = ws(r);
        let pos = self.off(s);
        let (mut r, head) = self.head(s)?;
        let mut args = Vec::new();
        loop {
            let t = ws(r);
            if t.is_empty()
                || t.starts_with("}}")
                || t.starts_with(')')
                || t.starts_with('|')
                || (t.starts_with("-}}") && t.len() < r.len())
            {
                break;
            }
            let (rest, o) = self.operand(t)?;
            args.push(o);
            r = rest;
        }
        let (min, max, want, name, at) = match &head {
            Head::Method(m) => {
                let (a, b, w) = m.arity();
                (a, b, w, format!(".{}", m.name()), pos)
            }
            Head::Func(f) => {
                let (a, b, w) = f.arity();
                (a, b, w, f.name().to_string(), pos)
            }
            Head::Operand(_) => (0, 0, "no arguments", String::new(), pos),
        };
        if args.len() < min || args.len() > max {
            let found = format!(
                "{} argument{}",
                args.len(),
                if args.len() == 1 { "" } else { "s" }
            );
            let expected: Cow<'static, str> = if name.is_empty() {
                "no arguments after a value that is not a function or method".into()
            } else {
                format!("{name} to take {want}").into()
            };
            return Err(PErr {
                kind: K::ArgumentCount,
                at,
                expected,
                found,
            });
        }
        Ok((r, Pipe { pos, head, args }))
    }

    /// The first word of a command: a method, a function or an operand.
    fn head(&mut self, s: &'a str) -> PResult<'a, Head> {
        if let Some(t) = s.strip_prefix('.') {
            if let Some((r, name)) = ident(t) {
                if !r.starts_with('.') {
                    if let Some(m) = Method::from_name(name) {
                        return Ok((r, Head::Method(m)));
                    }
                    if takes_args(r) {
                        return Err(self.err(K::UnknownFunction, s, METHODS));
                    }
                }
            }
        }
        if let Some((r, name)) = ident(s) {
            if let Some(f) = Func::from_name(name) {
                return Ok((r, Head::Func(f)));
            }
        }
        let (r, o) = self.operand(s)?;
        Ok((r, Head::Operand(o)))
    }

    fn operand(&mut self, s: &'a str) -> PResult<'a, Operand> {
        let pos = self.off(s);
        let op = |r: &'a str, kind| Ok((r, Operand { pos, kind }));
        let Some(c) = s.chars().next() else {
            return Err(self.err(K::Syntax, s, "an operand"));
        };
        match c {
            '.' => {
                let mut segs = Vec::new();
                let mut r = s;
                while let Some(t) = r.strip_prefix('.') {
                    let Some((rest, name)) = ident(t) else { break };
                    if let Some(m) = Method::from_name(name).filter(|_| segs.is_empty()) {
                        return Err(PErr {
                            kind: K::ArgumentCount,
                            at: self.off(r),
                            expected: format!(
                                ".{} to take {} (put the call in parentheses)",
                                m.name(),
                                m.arity().2
                            )
                            .into(),
                            found: "0 arguments".into(),
                        });
                    }
                    segs.push((self.off(t), name.to_string()));
                    r = rest;
                }
                if segs.is_empty() {
                    let r = &s[1..];
                    if r.starts_with(|c: char| c.is_ascii_digit()) {
                        return self.number(s);
                    }
                    return op(r, OpKind::Dot);
                }
                if let Some(t) = r.strip_prefix('.') {
                    return Err(self.err(K::Syntax, t, "a field name after \".\""));
                }
                op(r, OpKind::Field(segs))
            }
            '"' | '`' => {
                let (r, v) = self.string(s)?;
                op(r, OpKind::Lit(Value::String(v)))
            }
            '(' => {
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    return Err(self.err(K::TooDeep, s, "at most 64 nested parentheses"));
                }
                let inner = ws(&s[1..]);
                if inner.starts_with(')') || inner.is_empty() || inner.starts_with("}}") {
                    return Err(self.err(K::Syntax, inner, "a pipeline inside the parentheses"));
                }
                let (r, p) = self.pipeline(inner)?;
                self.depth -= 1;
                let t = ws(r);
                match t.strip_prefix(')') {
                    Some(r) => op(r, OpKind::Pipe(Box::new(p))),
                    None if t.starts_with('|') => {
                        Err(self.err(K::Unsupported, t, "\")\" (pipes are not supported)"))
                    }
                    None => Err(self.err(K::Syntax, t, "\")\"")),
                }
            }
            '$' => Err(self.err(
                K::Unsupported,
                s,
                "an operand (variables are not supported)",
            )),
            c if c.is_ascii_digit() || c == '-' || c == '+' => self.number(s),
            c if is_ident_start(c) => {
                let (r, name) = ident(s).unwrap_or((s, ""));
                match name {
                    "true" => op(r, OpKind::Lit(Value::Bool(true))),
                    "false" => op(r, OpKind::Lit(Value::Bool(false))),
                    "nil" => op(r, OpKind::Lit(Value::Null)),
                    _ => match Func::from_name(name) {
                        Some(f) => Err(PErr {
                            kind: K::ArgumentCount,
                            at: pos,
                            expected: format!(
                                "{} to take {} (put the call in parentheses)",
                                f.name(),
                                f.arity().2
                            )
                            .into(),
                            found: "0 arguments".into(),
                        }),
                        None => Err(self.err(K::UnknownFunction, s, FUNCS)),
                    },
                }
            }
            _ => Err(self.err(K::Syntax, s, "an operand")),
        }
    }

    fn number(&self, s: &'a str) -> PResult<'a, Operand> {
        let pos = self.off(s);
        let num = recognize((
            opt(one_of::<_, _, NomErr>("+-")),
            alt((
                recognize(pair(digit1, opt(pair(ch('.'), digit0)))),
                recognize(pair(ch('.'), digit1)),
            )),
            opt((one_of("eE"), opt(one_of("+-")), digit1)),
        ))
        .parse(s);
        let bad = || self.err(K::Syntax, s, "a number");
        let Ok((r, text)) = num else {
            return Err(bad());
        };
        if r.starts_with(|c: char| is_ident_char(c) || c == '.') {
            return Err(bad());
        }
        let v = if text.contains(['.', 'e', 'E']) {
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
        } else {
            text.trim_start_matches('+')
                .parse::<i64>()
                .ok()
                .map(Into::into)
        };
        match v {
            Some(n) => Ok((
                r,
                Operand {
                    pos,
                    kind: OpKind::Lit(Value::Number(n)),
                },
            )),
            None => Err(bad()),
        }
    }

    /// A quoted (`"…"` with Go escapes) or raw (`` `…` ``) string.
    fn string(&self, s: &'a str) -> PResult<'a, String> {
        let unterminated = || PErr {
            kind: K::UnterminatedString,
            at: self.off(s),
            expected: "a closing quote".into(),
            found: "end of line".into(),
        };
        if let Some(t) = s.strip_prefix('`') {
            return match t.find('`') {
                Some(i) => Ok((&t[i + 1..], t[..i].to_string())),
                None => Err(PErr {
                    found: "end of input".into(),
                    ..unterminated()
                }),
            };
        }
        let Some(t) = s.strip_prefix('"') else {
            return Err(unterminated());
        };
        let mut out = String::new();
        let mut it = t.char_indices();
        while let Some((i, c)) = it.next() {
            match c {
                '"' => return Ok((&t[i + 1..], out)),
                '\n' => return Err(unterminated()),
                '\\' => {
                    let Some((j, e)) = it.next() else {
                        return Err(unterminated());
                    };
                    let simple = match e {
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        '\\' => Some('\\'),
                        '"' => Some('"'),
                        '\'' => Some('\''),
                        'a' => Some('\u{7}'),
                        'b' => Some('\u{8}'),
                        'f' => Some('\u{c}'),
                        'v' => Some('\u{b}'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        continue;
                    }
                    let width = match e {
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        _ => 0,
                    };
                    let hex = t
                        .get(j + 1..j + 1 + width)
                        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                    let c = hex
                        .filter(|_| width > 0)
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32);
                    match c {
                        Some(c) => {
                            out.push(c);
                            for _ in 0..width {
                                it.next();
                            }
                        }
                        None => {
                            return Err(PErr {
                                kind: K::Syntax,
                                at: self.off(&t[i..]),
                                expected: "an escape (\\n \\t \\\\ \\\" \\xHH \\uHHHH …)".into(),
                                found: found(&t[i..]),
                            })
                        }
                    }
                }
                _ => out.push(c),
            }
        }
        Err(PErr {
            found: "end of input".into(),
            ..unterminated()
        })
    }
}

/// Whether a command word is followed by arguments (not by the action's end).
fn takes_args(r: &str) -> bool {
    let t = ws(r);
    t.len() < r.len()
        && !(t.is_empty() || t.starts_with("}}") || t.starts_with(')') || t.starts_with("-}}"))
}

fn push_text(frames: &mut [Frame], text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(f) = frames.last_mut() {
        f.nodes.push(Node::Text(text.to_string()));
    }
}
