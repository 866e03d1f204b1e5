//! Canonical text for filters and caret rendering for errors.
//!
//! The canonical text of any AST the parsers produce parses back to the same
//! AST (spans aside). Rules: `KEY OP VALUES`, single spaces; `And`/`Or`
//! spelled out; an Or under an And, an And under an And (to keep the tree
//! shape), an Or under an Or and anything under `Not` are parenthesised; a
//! quoted literal is written as a JSON string; an unquoted literal is written
//! bare when it reads back as the same bare word, else as a JSON string (only
//! `from_query`/`from_args` make such literals, and for them quoting changes
//! nothing: their text is never a JSON number, boolean, array or object).
//! Degenerate trees print as equivalents: a one-element And/Or as its
//! element, the empty And as `()`, the empty Or as `Not ()`.

use std::fmt::{self, Write as _};

use super::parse::{is_bare_name, is_bare_param, is_bare_value};
use super::{Expr, Filter, FilterError, FilterErrorKind, Key, Literal, Op, Predicate};

fn write_json_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Field(x) => f.write_str(x.name()),
            Key::Profiles => f.write_str("Profiles"),
            Key::ParamNames => f.write_str("Params"),
            Key::MetaKeys => f.write_str("Meta"),
            Key::Param(n) if is_bare_param(n) => f.write_str(n),
            Key::Param(n) => {
                f.write_str("Params.")?;
                if is_bare_name(n) {
                    f.write_str(n)
                } else {
                    write_json_string(f, n)
                }
            }
            Key::Meta(n) => {
                f.write_str("Meta.")?;
                if is_bare_name(n) {
                    f.write_str(n)
                } else {
                    write_json_string(f, n)
                }
            }
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.quoted && is_bare_value(&self.text) {
            f.write_str(&self.text)
        } else {
            write_json_string(f, &self.text)
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.key, self.op)?;
        let sep = if matches!(self.op, Op::Between | Op::Except) {
            " "
        } else {
            ","
        };
        for (n, v) in self.values.iter().enumerate() {
            if n > 0 {
                f.write_str(sep)?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    AndChild,
    OrChild,
    NotChild,
}

fn fmt_expr(e: &Expr, f: &mut fmt::Formatter<'_>, ctx: Ctx) -> fmt::Result {
    match e {
        Expr::Pred(p) => {
            if ctx == Ctx::NotChild {
                write!(f, "({p})")
            } else {
                write!(f, "{p}")
            }
        }
        Expr::And(v) | Expr::Or(v) if v.len() == 1 => fmt_expr(&v[0], f, ctx),
        Expr::And(v) if v.is_empty() => f.write_str("()"),
        Expr::Or(v) if v.is_empty() => {
            if ctx == Ctx::NotChild {
                f.write_str("(Not ())")
            } else {
                f.write_str("Not ()")
            }
        }
        Expr::And(v) | Expr::Or(v) => {
            let (word, paren) = match e {
                Expr::And(_) => (" And ", matches!(ctx, Ctx::AndChild | Ctx::NotChild)),
                _ => (" Or ", ctx != Ctx::Top),
            };
            let child = if matches!(e, Expr::And(_)) {
                Ctx::AndChild
            } else {
                Ctx::OrChild
            };
            if paren {
                f.write_char('(')?;
            }
            for (n, x) in v.iter().enumerate() {
                if n > 0 {
                    f.write_str(word)?;
                }
                fmt_expr(x, f, child)?;
            }
            if paren {
                f.write_char(')')?;
            }
            Ok(())
        }
        Expr::Not(x) => {
            if ctx == Ctx::NotChild {
                f.write_char('(')?;
            }
            f.write_str("Not ")?;
            fmt_expr(x, f, Ctx::NotChild)?;
            if ctx == Ctx::NotChild {
                f.write_char(')')?;
            }
            Ok(())
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_expr(self, f, Ctx::Top)
    }
}

/// The canonical text: `Filter::parse` reads it back as the same AST (spans
/// aside). The empty filter is the empty string.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            None => Ok(()),
            Some(e) => fmt_expr(e, f, Ctx::Top),
        }
    }
}

impl FilterErrorKind {
    /// A short human description (`unknown operator`, `too deep`, ...).
    pub fn describe(self) -> &'static str {
        match self {
            FilterErrorKind::Syntax => "syntax error",
            FilterErrorKind::UnknownOperator => "unknown operator",
            FilterErrorKind::MissingValue => "missing value",
            FilterErrorKind::UnbalancedParen => "unbalanced parenthesis",
            FilterErrorKind::TrailingInput => "unexpected input after the filter",
            FilterErrorKind::BadRegex => "bad regular expression",
            FilterErrorKind::Arity => "wrong number of values",
            FilterErrorKind::WrongType => "value of the wrong type",
            FilterErrorKind::UnsupportedOperator => "unsupported operator",
            FilterErrorKind::UnknownKey => "unknown key",
            FilterErrorKind::TooDeep => "filter nested too deeply",
            FilterErrorKind::TooLong => "filter too long",
            FilterErrorKind::InvalidText => "invalid text",
        }
    }
}

impl fmt::Display for FilterErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Width of the input window shown around the offset, in chars each side.
const WINDOW: usize = 60;

impl FilterError {
    /// The one-line message: `unknown operator at byte 5: expected ..., found "Equals"`.
    pub fn message(&self) -> String {
        format!(
            "{} at byte {}: expected {}, found {}",
            self.kind, self.offset, self.expected, self.found
        )
    }

    /// The input line holding the offset (clipped around it when long) and a
    /// caret line under the offset; empty when there is no input.
    pub fn render(&self) -> String {
        let input = &self.input;
        if input.is_empty() {
            return String::new();
        }
        let off = super::parse::floor_boundary(input, self.offset);
        let line_start = input[..off].rfind('\n').map_or(0, |p| p + 1);
        let line_end = input[off..].find('\n').map_or(input.len(), |p| off + p);
        let before: Vec<(usize, char)> = input[line_start..off].char_indices().collect();
        let (from, cut_front) = if before.len() > WINDOW {
            (line_start + before[before.len() - WINDOW].0, true)
        } else {
            (line_start, false)
        };
        let to = match input[off..line_end].char_indices().nth(WINDOW) {
            Some((p, _)) => off + p,
            None => line_end,
        };
        let mut out = String::new();
        let mut caret = String::new();
        if cut_front {
            out.push_str("...");
            caret.push_str("   ");
        }
        for c in input[from..to].chars() {
            out.push(if c == '\r' { ' ' } else { c });
        }
        if to < line_end {
            out.push_str("...");
        }
        for c in input[from..off].chars() {
            caret.push(if c == '\t' { '\t' } else { ' ' });
        }
        caret.push('^');
        out.push('\n');
        out.push_str(&caret);
        out
    }
}

/// The message, then the input with a caret line under the offset.
impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())?;
        let r = self.render();
        if !r.is_empty() {
            write!(f, "\n  {}", r.replace('\n', "\n  "))?;
        }
        Ok(())
    }
}
