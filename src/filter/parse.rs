//! The parsers: triples and boolean expressions (also used for drpcli words)
//! and the DRP query-string form.
//!
//! Built from nom 8 primitives over `&str`; offsets are computed from the
//! length of the remaining input (no `nom_locate`). Once a construct is
//! recognised (a key, an operator, a `(`), errors are committed: the parser
//! reports the first thing that is wrong, where it is, instead of
//! backtracking into a vaguer message. Recursion is bounded by
//! [`MAX_DEPTH`]; the bracket scanner in bare words is iterative.

use std::borrow::Cow;

use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::char as ch;
use nom::Parser;

use super::{
    Expr, FilterError, FilterErrorKind, Key, Literal, Op, Predicate, Span, MAX_DEPTH, MAX_INPUT_LEN,
};

type NomErr<'a> = nom::error::Error<&'a str>;

/// Internal error: a committed parse failure at a byte offset.
#[derive(Debug)]
pub(crate) struct PErr {
    pub kind: FilterErrorKind,
    pub at: usize,
    pub expected: Cow<'static, str>,
    pub found: String,
}

impl PErr {
    pub(crate) fn into_error(self, input: &str) -> FilterError {
        FilterError {
            kind: self.kind,
            offset: floor_boundary(input, self.at),
            expected: self.expected.into_owned(),
            found: self.found,
            input: input.to_owned(),
        }
    }
}

type PResult<'a, T> = Result<(&'a str, T), PErr>;

pub(crate) const OPS_EXPECTED: &str =
    "an operator (Eq, Ne, Lt, Lte, Gt, Gte, In, Nin, Re, Between, Except)";

/// The largest char boundary at or below `at` (clamped to the text).
pub(crate) fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Characters of keys and operator words: letters, digits, `/ - _ .`.
pub(crate) fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '/' | '-' | '_' | '.')
}

/// Characters a bare value may hold outside bracket groups.
fn is_plain(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '(' | ')' | ',' | '"')
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kw {
    And,
    Or,
    Not,
}

pub(crate) fn keyword(word: &str) -> Option<Kw> {
    if word.eq_ignore_ascii_case("and") {
        Some(Kw::And)
    } else if word.eq_ignore_ascii_case("or") {
        Some(Kw::Or)
    } else if word.eq_ignore_ascii_case("not") {
        Some(Kw::Not)
    } else {
        None
    }
}

fn ws(i: &str) -> &str {
    match take_while::<_, _, NomErr>(char::is_whitespace).parse(i) {
        Ok((rest, _)) => rest,
        Err(_) => i,
    }
}

/// A run of key characters (possibly empty).
fn key_word(i: &str) -> (&str, &str) {
    match take_while::<_, _, NomErr>(is_key_char).parse(i) {
        Ok((rest, w)) => (rest, w),
        Err(_) => (i, ""),
    }
}

/// The keyword at the start of `i`, if the whole word is one.
fn peek_keyword(i: &str) -> Option<(Kw, &str)> {
    let (rest, w) = key_word(i);
    keyword(w).map(|k| (k, rest))
}

/// Describes what is at the start of `i` for error messages.
pub(crate) fn describe(i: &str) -> String {
    let Some(c) = i.chars().next() else {
        return "end of input".to_owned();
    };
    if c.is_whitespace() {
        return format!("{c:?}");
    }
    let end = if is_key_char(c) {
        i.find(|c: char| !is_key_char(c)).unwrap_or(i.len())
    } else if is_plain(c) && !c.is_ascii_punctuation() {
        i.find(|c: char| !is_plain(c)).unwrap_or(i.len())
    } else {
        // Punctuation: just the one character, in backticks.
        return format!("`{c}`");
    };
    let word = &i[..end];
    if word.len() > 40 {
        return format!("{}...", &word[..floor_boundary(word, 40)]);
    }
    word.to_owned()
}

/// Scans a bracket group starting at `start` (`[` or `{`) to its matching
/// closer, skipping JSON strings. Returns the index just past it.
fn bracket_group(i: &str, start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    for (k, c) in i[start..].char_indices() {
        if in_str {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => depth += 1,
            ']' | '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(start + k + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A bare value: plain characters and bracket groups (`[1, 2]`, `{"a":1}`,
/// `a{1,3}`). `Err(index)` names an unclosed bracket.
pub(crate) fn bare(i: &str) -> Result<(&str, &str), usize> {
    let mut p = 0;
    while let Some(c) = i[p..].chars().next() {
        if c == '[' || c == '{' {
            p = bracket_group(i, p).ok_or(p)?;
        } else if is_plain(c) {
            p += c.len_utf8();
        } else {
            break;
        }
    }
    Ok((&i[p..], &i[..p]))
}

/// Whether `text` can be written as an unquoted value and read back as the
/// same unquoted literal.
pub(crate) fn is_bare_value(text: &str) -> bool {
    !text.is_empty() && keyword(text).is_none() && matches!(bare(text), Ok(("", _)))
}

/// Whether `name` can be written as a bare key and read back as a param name.
pub(crate) fn is_bare_param(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(is_key_char)
        && keyword(name).is_none()
        && matches!(classify_key(name), Some(Key::Param(n)) if n == name)
}

/// Whether `name` can follow `Params.`/`Meta.` unquoted.
pub(crate) fn is_bare_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(is_key_char)
}

/// The key a word names (`None`: `Params.`/`Meta.` with nothing after).
pub(crate) fn classify_key(w: &str) -> Option<Key> {
    if let Some(f) = super::Field::from_name(w) {
        return Some(Key::Field(f));
    }
    Some(match w {
        "Profiles" => Key::Profiles,
        "Params" => Key::ParamNames,
        "Meta" => Key::MetaKeys,
        _ => {
            if let Some(n) = w.strip_prefix("Params.") {
                if n.is_empty() {
                    return None;
                }
                Key::Param(n.to_owned())
            } else if let Some(n) = w.strip_prefix("Meta.") {
                if n.is_empty() {
                    return None;
                }
                Key::Meta(n.to_owned())
            } else {
                Key::Param(w.to_owned())
            }
        }
    })
}

/// The value-count rule shared by both syntaxes. `Err(index)` is the value
/// that is one too many (or `values.len()` when one is missing).
pub(crate) fn check_arity(key: &Key, op: Op, n: usize) -> Result<(), (usize, &'static str)> {
    match op {
        Op::Between | Op::Except => {
            if n == 2 {
                Ok(())
            } else {
                Err((n.min(2), "exactly two values (low and high)"))
            }
        }
        Op::In | Op::Nin => Ok(()),
        Op::Re => {
            if n == 1 {
                Ok(())
            } else {
                Err((1, "one regular expression (quote it if it has commas)"))
            }
        }
        _ if key.is_set() => Ok(()),
        _ => {
            if n == 1 {
                Ok(())
            } else {
                Err((
                    1,
                    "one value (use In for a list, or quote a value with commas)",
                ))
            }
        }
    }
}

struct P<'a, 'b> {
    src: &'a str,
    args: Option<&'b [(usize, usize)]>,
    depth: usize,
}

/// Parses the triple / boolean form; `args` are word bounds for `from_args`.
pub(crate) fn parse_text(src: &str, args: Option<&[(usize, usize)]>) -> Result<Option<Expr>, PErr> {
    if src.len() > MAX_INPUT_LEN {
        return Err(PErr {
            kind: FilterErrorKind::TooLong,
            at: MAX_INPUT_LEN,
            expected: format!("at most {MAX_INPUT_LEN} bytes").into(),
            found: format!("{} bytes", src.len()),
        });
    }
    let mut p = P {
        src,
        args,
        depth: 0,
    };
    let i = ws(src);
    if i.is_empty() {
        return Ok(None);
    }
    let (rest, e) = p.or_expr(i)?;
    let rest = ws(rest);
    if rest.starts_with(')') {
        return Err(p.err(
            FilterErrorKind::UnbalancedParen,
            rest,
            "end of input (this `)` closes no `(`)",
        ));
    }
    if !rest.is_empty() {
        return Err(p.err(FilterErrorKind::TrailingInput, rest, "end of input"));
    }
    Ok(Some(e))
}

impl<'a> P<'a, '_> {
    fn off(&self, rest: &str) -> usize {
        self.src.len() - rest.len()
    }

    fn err(&self, kind: FilterErrorKind, at: &str, expected: impl Into<Cow<'static, str>>) -> PErr {
        PErr {
            kind,
            at: self.off(at),
            expected: expected.into(),
            found: describe(at),
        }
    }

    fn deeper(&mut self, at: &str) -> Result<(), PErr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PErr {
                kind: FilterErrorKind::TooDeep,
                at: self.off(at),
                expected: format!("at most {MAX_DEPTH} nested parentheses or Nots").into(),
                found: "deeper nesting".to_owned(),
            });
        }
        Ok(())
    }

    fn or_expr(&mut self, i: &'a str) -> PResult<'a, Expr> {
        let (mut i, first) = self.and_expr(i)?;
        let mut first = Some(first);
        let mut items: Vec<Expr> = Vec::new();
        while let Some((Kw::Or, after)) = peek_keyword(ws(i)) {
            let (r, e) = self.and_expr_after(after, "Or")?;
            items.extend(first.take());
            items.push(e);
            i = r;
        }
        match first {
            Some(f) => Ok((i, f)),
            None => Ok((i, Expr::Or(items))),
        }
    }

    fn and_expr_after(&mut self, i: &'a str, after: &'static str) -> PResult<'a, Expr> {
        let j = ws(i);
        if !self.starts_unary(j) {
            return Err(self.err(
                FilterErrorKind::Syntax,
                j,
                format!("a predicate, `(` or Not after {after}"),
            ));
        }
        self.and_expr(j)
    }

    fn starts_unary(&self, j: &str) -> bool {
        match j.chars().next() {
            Some('(') => true,
            Some(c) if is_key_char(c) => !matches!(peek_keyword(j), Some((Kw::And | Kw::Or, _))),
            _ => false,
        }
    }

    fn and_expr(&mut self, i: &'a str) -> PResult<'a, Expr> {
        let (mut i, first) = self.unary(i)?;
        let mut first = Some(first);
        let mut items: Vec<Expr> = Vec::new();
        loop {
            let j = ws(i);
            if j.is_empty() || j.starts_with(')') {
                break;
            }
            let next = match peek_keyword(j) {
                Some((Kw::Or, _)) => break,
                Some((Kw::And, after)) => {
                    let k = ws(after);
                    if !self.starts_unary(k) {
                        return Err(self.err(
                            FilterErrorKind::Syntax,
                            k,
                            "a predicate, `(` or Not after And",
                        ));
                    }
                    k
                }
                _ => {
                    if !self.starts_unary(j) {
                        let kind = if self.depth == 0 {
                            FilterErrorKind::TrailingInput
                        } else {
                            FilterErrorKind::Syntax
                        };
                        return Err(self.err(
                            kind,
                            j,
                            "And, Or, another predicate, `)` or end of input",
                        ));
                    }
                    j
                }
            };
            let (r, e) = self.unary(next)?;
            if let Some(f) = first.take() {
                items.reserve(4);
                items.push(f);
            }
            items.push(e);
            i = r;
        }
        match first {
            Some(f) => Ok((i, f)),
            None => Ok((i, Expr::And(items))),
        }
    }

    fn unary(&mut self, i: &'a str) -> PResult<'a, Expr> {
        let i = ws(i);
        if let Ok((after, _)) = ch::<_, NomErr>('(').parse(i) {
            self.deeper(i)?;
            let j = ws(after);
            let (r, e) = if let Some(r) = j.strip_prefix(')') {
                // `()` is the empty And: it holds for everything.
                (r, Expr::And(Vec::new()))
            } else {
                let (r, e) = self.or_expr(j)?;
                let r = ws(r);
                match r.strip_prefix(')') {
                    Some(r) => (r, e),
                    None => {
                        let open = self.off(i);
                        return Err(self.err(
                            FilterErrorKind::UnbalancedParen,
                            r,
                            format!("`)` to close the `(` at byte {open}"),
                        ));
                    }
                }
            };
            self.depth -= 1;
            return Ok((r, e));
        }
        match peek_keyword(i) {
            Some((Kw::Not, after)) => {
                self.deeper(i)?;
                let j = ws(after);
                if !self.starts_unary(j) {
                    return Err(self.err(
                        FilterErrorKind::Syntax,
                        j,
                        "a predicate or `(` after Not",
                    ));
                }
                let (r, e) = self.unary(j)?;
                self.depth -= 1;
                Ok((r, Expr::Not(Box::new(e))))
            }
            Some(_) => Err(self.err(FilterErrorKind::Syntax, i, "a predicate, `(` or Not")),
            None => {
                if i.starts_with(')') {
                    return Err(self.err(
                        FilterErrorKind::UnbalancedParen,
                        i,
                        "a predicate, `(` or Not (this `)` closes nothing)",
                    ));
                }
                self.predicate(i)
            }
        }
    }

    fn key(&self, i: &'a str) -> PResult<'a, Key> {
        let Ok((rest, w)) = take_while1::<_, _, NomErr>(is_key_char).parse(i) else {
            return Err(self.err(
                FilterErrorKind::Syntax,
                i,
                "a key (a field, Profiles, Params, Meta or a param name)",
            ));
        };
        if w == "Params." || w == "Meta." {
            if rest.starts_with('"') {
                let (r, name) = self.quoted(rest)?;
                let key = if w == "Params." {
                    Key::Param(name)
                } else {
                    Key::Meta(name)
                };
                return Ok((r, key));
            }
            return Err(self.err(
                FilterErrorKind::Syntax,
                rest,
                format!("a name after {w} (letters, digits, / - _ . or a quoted string)"),
            ));
        }
        match classify_key(w) {
            Some(k) => Ok((rest, k)),
            None => Err(self.err(FilterErrorKind::Syntax, rest, "a name")),
        }
    }

    fn predicate(&mut self, i: &'a str) -> PResult<'a, Expr> {
        let start = self.off(i);
        let (r, key) = self.key(i)?;
        let j = ws(r);
        let (r, op) = if let Some(r) = j.strip_prefix('=') {
            (r, Op::Eq)
        } else {
            let (r, w) = key_word(j);
            match Op::from_name(w) {
                Some(op) => (r, op),
                None => {
                    return Err(self.err(FilterErrorKind::UnknownOperator, j, OPS_EXPECTED));
                }
            }
        };
        let (r, values) = self.values(r, &key, op)?;
        Ok((
            r,
            Expr::Pred(Predicate {
                key,
                op,
                values,
                span: Span {
                    start,
                    end: self.off(r),
                },
            }),
        ))
    }

    fn values(&mut self, i: &'a str, key: &Key, op: Op) -> PResult<'a, Vec<Literal>> {
        let (mut r, mut vals) = self.value_list(i, op)?;
        if matches!(op, Op::Between | Op::Except) && vals.len() == 1 {
            let j = ws(r);
            let missing = j.is_empty()
                || j.starts_with(')')
                || j.starts_with('(')
                || peek_keyword(j).is_some();
            if missing {
                return Err(self.err(
                    FilterErrorKind::Arity,
                    j,
                    format!(
                        "a second value: {} takes exactly two values (low and high)",
                        op.name()
                    ),
                ));
            }
            let (r2, more) = self.value_list(j, op)?;
            vals.extend(more);
            r = r2;
        }
        if let Err((n, what)) = check_arity(key, op, vals.len()) {
            let at = vals.get(n).map_or(self.off(r), |l| l.span.start);
            return Err(PErr {
                kind: FilterErrorKind::Arity,
                at,
                expected: format!("{what} for {} {}", key_label(key), op.name()).into(),
                found: format!("{} values", vals.len()),
            });
        }
        Ok((r, vals))
    }

    /// A comma-separated list of values (at least one).
    fn value_list(&mut self, i: &'a str, op: Op) -> PResult<'a, Vec<Literal>> {
        if let Some(found) = self.empty_word(i) {
            return Ok(found);
        }
        let j = ws(i);
        if let Some(found) = self.whole_word(j, op) {
            return Ok(found);
        }
        self.value_list_plain(j, op)
    }

    fn value_list_plain(&mut self, i: &'a str, op: Op) -> PResult<'a, Vec<Literal>> {
        let (mut r, first) = self.value(i, op)?;
        let mut vals = vec![first];
        loop {
            let j = ws(r);
            match j.strip_prefix(',') {
                Some(after) => {
                    let (r2, v) = self.value(ws(after), op)?;
                    vals.push(v);
                    r = r2;
                }
                None => break,
            }
        }
        Ok((r, vals))
    }

    /// `from_args`: an empty word in value position is the empty string.
    fn empty_word(&self, i: &'a str) -> Option<(&'a str, Vec<Literal>)> {
        let args = self.args?;
        let p = self.off(i);
        let q = if i.starts_with(' ') { p + 1 } else { p };
        let &(s, e) = args.iter().find(|&&(s, e)| s == q && e == q)?;
        let lit = Literal {
            text: String::new(),
            quoted: false,
            span: Span { start: s, end: e },
        };
        Some((&self.src[e..], vec![lit]))
    }

    /// `from_args`: at the start of a word (or right after `KEY=`), a word
    /// that is not a value list on its own is one literal.
    fn whole_word(&mut self, j: &'a str, op: Op) -> Option<(&'a str, Vec<Literal>)> {
        let args = self.args?;
        let p = self.off(j);
        let &(s, e) = args.iter().find(|&&(s, e)| s <= p && p <= e)?;
        let at_start = p == s || (p > s && self.src.as_bytes().get(p - 1) == Some(&b'='));
        if !at_start {
            return None;
        }
        if p < e {
            if let Ok((r, vals)) = self.value_list_plain(j, op) {
                let used = self.off(r);
                if used <= e && self.src[used..e].chars().all(|c| c == ')') {
                    return Some((r, vals));
                }
            }
        }
        let word = &self.src[p..e];
        let span = Span { start: p, end: e };
        let lit = if word.starts_with('"') {
            match self.quoted(word) {
                Ok(("", text)) => Literal {
                    text,
                    quoted: true,
                    span,
                },
                _ => Literal {
                    text: word.to_owned(),
                    quoted: false,
                    span,
                },
            }
        } else {
            Literal {
                text: word.to_owned(),
                quoted: false,
                span,
            }
        };
        Some((&self.src[e..], vec![lit]))
    }

    fn value(&self, i: &'a str, op: Op) -> PResult<'a, Literal> {
        let start = self.off(i);
        if i.starts_with('"') {
            let (r, text) = self.quoted(i)?;
            return Ok((
                r,
                Literal {
                    text,
                    quoted: true,
                    span: Span {
                        start,
                        end: self.off(r),
                    },
                },
            ));
        }
        let (r, text) = match bare(i) {
            Ok(x) => x,
            Err(at) => {
                let closer = if i[at..].starts_with('[') { "]" } else { "}" };
                return Err(PErr {
                    kind: FilterErrorKind::Syntax,
                    at: start + at,
                    expected: format!("a `{closer}` closing this bracket (or quote the value)")
                        .into(),
                    found: "end of input".to_owned(),
                });
            }
        };
        if text.is_empty() {
            return Err(self.err(
                FilterErrorKind::MissingValue,
                i,
                format!("a value after {}", op.name()),
            ));
        }
        if keyword(text).is_some() {
            return Err(self.err(
                FilterErrorKind::MissingValue,
                i,
                format!(
                    "a value after {} (write \"{text}\" to use it as a value)",
                    op.name()
                ),
            ));
        }
        Ok((
            r,
            Literal {
                text: text.to_owned(),
                quoted: false,
                span: Span {
                    start,
                    end: self.off(r),
                },
            },
        ))
    }

    /// A double-quoted JSON string at the start of `i`.
    fn quoted(&self, i: &'a str) -> PResult<'a, String> {
        let start = self.off(i);
        quoted_string(i).map_err(|(kind, at, expected, found)| PErr {
            kind,
            at: start + at,
            expected: expected.into(),
            found,
        })
    }
}

type QErr = (FilterErrorKind, usize, &'static str, String);

/// Decodes the JSON string at the start of `i` (which starts with `"`).
/// Returns the rest and the text; errors are relative to `i`.
pub(crate) fn quoted_string(i: &str) -> Result<(&str, String), QErr> {
    let b = i.as_bytes();
    let mut k = 1;
    let mut escaped = false;
    while k < b.len() {
        match b[k] {
            b'\\' => {
                escaped = true;
                k += 2;
            }
            b'"' => break,
            _ => k += 1,
        }
    }
    if k >= b.len() {
        return Err((
            FilterErrorKind::Syntax,
            i.len(),
            "a `\"` closing the string",
            "end of input".to_owned(),
        ));
    }
    let rest = &i[k + 1..];
    if !escaped {
        let body = &i[1..k];
        if let Some(p) = body.find(|c: char| (c as u32) < 0x20) {
            return Err((
                FilterErrorKind::InvalidText,
                1 + p,
                "a string without control characters (escape them: \\n, \\t, \\u0000)",
                describe(&body[p..]),
            ));
        }
        return Ok((rest, body.to_owned()));
    }
    match serde_json::from_str::<String>(&i[..=k]) {
        Ok(s) => Ok((rest, s)),
        Err(e) => {
            let at = if e.line() <= 1 {
                e.column().saturating_sub(1).min(k)
            } else {
                0
            };
            let at = floor_boundary(i, at);
            Err((
                FilterErrorKind::InvalidText,
                at,
                "a valid JSON string escape",
                {
                    let msg = e.to_string();
                    match msg.find(" at line ") {
                        Some(k) => msg[..k].to_owned(),
                        None => msg,
                    }
                },
            ))
        }
    }
}

fn key_label(key: &Key) -> String {
    key.to_string()
}

// ---------------------------------------------------------------------------
// Query-string form.

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// URL-decodes `raw` (which starts at `base` in the query); returns the text
/// and, per decoded byte, its raw offset (plus one entry for the end).
fn url_decode(raw: &str, base: usize) -> Result<(String, Vec<usize>), PErr> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut map = Vec::with_capacity(b.len() + 1);
    let mut k = 0;
    while k < b.len() {
        match b[k] {
            b'%' => {
                let hi = b.get(k + 1).copied().and_then(hex);
                let lo = b.get(k + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi * 16 + lo);
                        map.push(base + k);
                        k += 3;
                    }
                    _ => {
                        return Err(PErr {
                            kind: FilterErrorKind::InvalidText,
                            at: base + k,
                            expected: "a URL escape: % and two hex digits".into(),
                            found: describe(&raw[k..]),
                        })
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                map.push(base + k);
                k += 1;
            }
            c => {
                out.push(c);
                map.push(base + k);
                k += 1;
            }
        }
    }
    map.push(base + b.len());
    match String::from_utf8(out) {
        Ok(s) => Ok((s, map)),
        Err(e) => {
            let bad = e.utf8_error().valid_up_to();
            Err(PErr {
                kind: FilterErrorKind::InvalidText,
                at: map.get(bad).copied().unwrap_or(base),
                expected: "URL escapes that decode to UTF-8".into(),
                found: "invalid UTF-8".to_owned(),
            })
        }
    }
}

/// Splits on commas outside double-quoted strings; returns byte ranges.
fn split_commas(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_str = false;
    let mut esc = false;
    for (k, c) in s.char_indices() {
        if in_str {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            ',' => {
                out.push((start, k));
                start = k + 1;
            }
            _ => {}
        }
    }
    out.push((start, s.len()));
    out
}

/// Parses DRP's query-string form.
pub(crate) fn parse_query(q: &str) -> Result<Option<Expr>, PErr> {
    if q.len() > MAX_INPUT_LEN {
        return Err(PErr {
            kind: FilterErrorKind::TooLong,
            at: MAX_INPUT_LEN,
            expected: format!("at most {MAX_INPUT_LEN} bytes").into(),
            found: format!("{} bytes", q.len()),
        });
    }
    let (body, mut pos) = match q.strip_prefix('?') {
        Some(b) => (b, 1),
        None => (q, 0),
    };
    let mut preds = Vec::new();
    for part in body.split('&') {
        let start = pos;
        pos += part.len() + 1;
        if part.is_empty() {
            continue;
        }
        preds.push(Expr::Pred(query_part(part, start)?));
    }
    Ok(match preds.len() {
        0 => None,
        1 => preds.pop(),
        _ => Some(Expr::And(preds)),
    })
}

fn query_part(part: &str, start: usize) -> Result<Predicate, PErr> {
    let Some(eq) = part.find('=') else {
        return Err(PErr {
            kind: FilterErrorKind::MissingValue,
            at: start + part.len(),
            expected: "`=` and a value after the key (KEY=VALUE or KEY=Op(VALUE))".into(),
            found: "end of the parameter".to_owned(),
        });
    };
    let (key_text, _) = url_decode(&part[..eq], start)?;
    let key = match classify_key(&key_text) {
        Some(k) if !key_text.is_empty() => k,
        _ => {
            return Err(PErr {
                kind: FilterErrorKind::Syntax,
                at: start + eq,
                expected: "a key (a field, Profiles, Params, Meta or a param name)".into(),
                found: if key_text.is_empty() {
                    "an empty key".to_owned()
                } else {
                    key_text
                },
            })
        }
    };
    let vbase = start + eq + 1;
    let (val, map) = url_decode(&part[eq + 1..], vbase)?;
    let at = |k: usize| map.get(k).copied().unwrap_or(vbase);

    let op_form = val.find('(').filter(|&p| {
        p > 0 && val.ends_with(')') && val[..p].bytes().all(|b| b.is_ascii_alphabetic())
    });
    let (op, inner, inner_at) = match op_form {
        Some(p) => match Op::from_name(&val[..p]) {
            Some(op) => (op, &val[p + 1..val.len() - 1], p + 1),
            None => {
                return Err(PErr {
                    kind: FilterErrorKind::UnknownOperator,
                    at: vbase,
                    expected: OPS_EXPECTED.into(),
                    found: val[..p].to_owned(),
                })
            }
        },
        None => (Op::Eq, val.as_str(), 0),
    };
    let split = match op {
        Op::Re => false,
        Op::In | Op::Nin | Op::Between | Op::Except => true,
        _ => key.is_set(),
    };
    let ranges = if split {
        split_commas(inner)
    } else {
        vec![(0, inner.len())]
    };
    let mut values = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        let text = &inner[s..e];
        let span = Span {
            start: at(inner_at + s),
            end: at(inner_at + e),
        };
        let lit = if text.starts_with('"') {
            match quoted_string(text) {
                Ok(("", t)) => Literal {
                    text: t,
                    quoted: true,
                    span,
                },
                Ok((_, _)) => {
                    return Err(PErr {
                        kind: FilterErrorKind::Syntax,
                        at: span.start,
                        expected: "one JSON string per value".into(),
                        found: describe(text),
                    })
                }
                Err((kind, k, expected, found)) => {
                    return Err(PErr {
                        kind,
                        at: at(inner_at + s + k),
                        expected: expected.into(),
                        found,
                    })
                }
            }
        } else {
            Literal {
                text: text.to_owned(),
                quoted: false,
                span,
            }
        };
        values.push(lit);
    }
    if let Err((n, what)) = check_arity(&key, op, values.len()) {
        return Err(PErr {
            kind: FilterErrorKind::Arity,
            at: values.get(n).map_or(start + part.len(), |l| l.span.start),
            expected: format!("{what} for {} {}", key_label(&key), op.name()).into(),
            found: format!("{} values", values.len()),
        });
    }
    Ok(Predicate {
        key,
        op,
        values,
        span: Span {
            start,
            end: start + part.len(),
        },
    })
}
