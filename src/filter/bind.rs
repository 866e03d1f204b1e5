//! Binding: from the AST to [`Bound`], checking keys against the object kind,
//! literals against field types and param schema types, and compiling
//! regexes, once, before any object is looked at.
//!
//! Ne, Nin and Except become `Not` of the Eq, In and Between tests, so the
//! index and the evaluator only implement positive tests.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::parse::floor_boundary;
use super::{
    Bound, BoundPred, Expr, Field, FilterError, FilterErrorKind, Key, Literal, Op, Ordinal,
    ParamTypes, Predicate, Test,
};
use crate::model::Kind;

/// Compiled-size limit for `Re` patterns (and their lazy DFA).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Where a binding error points.
#[derive(Debug, Clone, Copy)]
enum Loc {
    /// At the predicate's key (its start).
    Key(usize),
    /// At the operator: the key's start and the key, to step over it.
    Op(usize),
    /// At a literal (its start).
    Lit(usize),
}

/// A binding error before it is placed in a text.
#[derive(Debug)]
pub(crate) struct BErr {
    kind: FilterErrorKind,
    loc: Loc,
    key_len: usize,
    expected: Cow<'static, str>,
    found: String,
}

impl BErr {
    /// Places the error in the canonical text the erring AST was parsed from.
    pub(crate) fn into_error(self, canon: &str) -> FilterError {
        let at = match self.loc {
            Loc::Key(s) | Loc::Lit(s) => s,
            // Canonical text is `KEY OP ...` with single spaces.
            Loc::Op(s) => s + self.key_len + 1,
        };
        self.place(canon, at)
    }

    /// When the canonical text does not reproduce the error (only for
    /// hand-built ASTs): the offset from the AST's own spans, clamped.
    pub(crate) fn into_fallback_error(self, canon: &str) -> FilterError {
        let at = match self.loc {
            Loc::Key(s) | Loc::Lit(s) | Loc::Op(s) => s,
        };
        self.place(canon, at)
    }

    fn place(self, canon: &str, at: usize) -> FilterError {
        FilterError {
            kind: self.kind,
            offset: floor_boundary(canon, at),
            expected: self.expected.into_owned(),
            found: self.found,
            input: canon.to_owned(),
        }
    }
}

type BResult<T> = Result<T, BErr>;

fn lit_err(kind: FilterErrorKind, lit: &Literal, expected: impl Into<Cow<'static, str>>) -> BErr {
    BErr {
        kind,
        loc: Loc::Lit(lit.span.start),
        key_len: 0,
        expected: expected.into(),
        found: found_text(lit),
    }
}

fn found_text(lit: &Literal) -> String {
    let mut t: String = lit.text.chars().take(60).collect();
    if t.len() < lit.text.len() {
        t.push_str("...");
    }
    if lit.quoted {
        format!("{t:?}")
    } else {
        t
    }
}

fn unsupported(p: &Predicate, why: &str) -> BErr {
    BErr {
        kind: FilterErrorKind::UnsupportedOperator,
        loc: Loc::Op(p.span.start),
        key_len: p.key.to_string().len(),
        expected: format!("an operator {} supports ({why})", p.key).into(),
        found: p.op.name().to_owned(),
    }
}

pub(crate) fn bind_expr(e: &Expr, kind: Kind, types: &dyn ParamTypes) -> BResult<Bound> {
    Ok(match e {
        Expr::And(v) => Bound::And(
            v.iter()
                .map(|x| bind_expr(x, kind, types))
                .collect::<BResult<_>>()?,
        ),
        Expr::Or(v) => Bound::Or(
            v.iter()
                .map(|x| bind_expr(x, kind, types))
                .collect::<BResult<_>>()?,
        ),
        Expr::Not(x) => Bound::Not(Box::new(bind_expr(x, kind, types)?)),
        Expr::Pred(p) => bind_pred(p, kind, types)?,
    })
}

fn check_key(p: &Predicate, kind: Kind) -> BResult<()> {
    if kind == Kind::Machine {
        return Ok(());
    }
    let machine_only = matches!(
        p.key,
        Key::Field(Field::Uuid | Field::Address | Field::Workflow | Field::Runnable)
            | Key::Profiles
    );
    if machine_only {
        return Err(BErr {
            kind: FilterErrorKind::UnknownKey,
            loc: Loc::Key(p.span.start),
            key_len: 0,
            expected: format!(
                "a key {}s have (Name, Description, Params, Params.NAME, Meta, Meta.KEY or a param name)",
                kind
            )
            .into(),
            found: p.key.to_string(),
        });
    }
    Ok(())
}

/// Compiled patterns, shared by every bind in the process: compiling costs
/// tens of microseconds (about 40 µs for `^node-00[0-4]`, more than the
/// count it serves on a small fleet), and clients repeat their filters. A
/// `Regex` clone shares the compiled program. Bounded by [`REGEX_CACHE`]
/// entries; when full it starts over (no recency bookkeeping on the hot
/// path).
static COMPILED: std::sync::LazyLock<parking_lot::Mutex<HashMap<String, Regex>>> =
    std::sync::LazyLock::new(Default::default);

/// How many compiled patterns [`COMPILED`] keeps.
const REGEX_CACHE: usize = 256;

fn compile(lit: &Literal) -> BResult<Regex> {
    if let Some(re) = COMPILED.lock().get(&lit.text) {
        return Ok(re.clone());
    }
    let re = compile_uncached(lit)?;
    let mut cache = COMPILED.lock();
    if cache.len() >= REGEX_CACHE {
        cache.clear();
    }
    cache.insert(lit.text.clone(), re.clone());
    Ok(re)
}

fn compile_uncached(lit: &Literal) -> BResult<Regex> {
    RegexBuilder::new(&lit.text)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let why = match &e {
                regex::Error::CompiledTooBig(_) => {
                    "a pattern that compiles to at most 1 MiB".to_owned()
                }
                other => {
                    let msg = other.to_string();
                    let last = msg
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                        .trim_start_matches("error: ")
                        .to_owned();
                    format!("a valid regular expression (this one has: {last})")
                }
            };
            lit_err(FilterErrorKind::BadRegex, lit, why)
        })
}

fn first(p: &Predicate) -> BResult<&Literal> {
    p.values.first().ok_or_else(|| BErr {
        kind: FilterErrorKind::MissingValue,
        loc: Loc::Key(p.span.start),
        key_len: 0,
        expected: format!("a value after {}", p.op).into(),
        found: "no value".to_owned(),
    })
}

fn two(p: &Predicate) -> BResult<(&Literal, &Literal)> {
    match p.values.as_slice() {
        [a, b] => Ok((a, b)),
        _ => Err(BErr {
            kind: FilterErrorKind::Arity,
            loc: Loc::Key(p.span.start),
            key_len: 0,
            expected: format!("exactly two values for {}", p.op).into(),
            found: format!("{} values", p.values.len()),
        }),
    }
}

/// Wraps the positive test; Ne/Nin/Except negate it.
fn finish(p: &Predicate, test: Test) -> Bound {
    let b = Bound::Pred(BoundPred {
        key: p.key.clone(),
        test,
    });
    match p.op {
        Op::Ne | Op::Nin | Op::Except => Bound::Not(Box::new(b)),
        _ => b,
    }
}

fn bind_pred(p: &Predicate, kind: Kind, types: &dyn ParamTypes) -> BResult<Bound> {
    check_key(p, kind)?;
    if p.key.is_set() {
        let names = || p.values.iter().map(|l| l.text.clone()).collect();
        let test = match p.op {
            Op::Eq | Op::Ne => Test::HasAll(names()),
            Op::In | Op::Nin => Test::HasAny(names()),
            Op::Re => Test::AnyMatches(compile(first(p)?)?),
            _ => return Err(unsupported(p, "a set takes Eq, Ne, In, Nin and Re")),
        };
        return Ok(finish(p, test));
    }
    let scalar: &dyn Scalar = match &p.key {
        Key::Field(Field::Runnable) => &RunnableT,
        Key::Field(Field::Uuid) => &UuidT,
        Key::Field(Field::Address) => &AddressT,
        Key::Field(_) | Key::Meta(_) => &StringT,
        Key::Param(name) => &ParamT {
            name,
            ty: types.schema_type(name),
        },
        // Set keys were handled above.
        Key::Profiles | Key::ParamNames | Key::MetaKeys => &StringT,
    };
    let test = match p.op {
        Op::Eq | Op::Ne | Op::In | Op::Nin => {
            let mut alts = Vec::with_capacity(p.values.len() + 1);
            for l in &p.values {
                scalar.alternatives(l, &mut alts)?;
            }
            Test::Equals(alts)
        }
        Op::Lt | Op::Lte => Test::Less(scalar.ordinal(p, first(p)?)?, p.op == Op::Lte),
        Op::Gt | Op::Gte => Test::Greater(scalar.ordinal(p, first(p)?)?, p.op == Op::Gte),
        Op::Between | Op::Except => {
            let (lo, hi) = two(p)?;
            Test::Between(scalar.ordinal(p, lo)?, scalar.ordinal(p, hi)?)
        }
        Op::Re => {
            scalar.regex_ok(p)?;
            Test::Matches(compile(first(p)?)?)
        }
    };
    Ok(finish(p, test))
}

/// How one kind of scalar key converts literals.
trait Scalar {
    fn alternatives(&self, l: &Literal, out: &mut Vec<Value>) -> BResult<()>;
    fn ordinal(&self, p: &Predicate, l: &Literal) -> BResult<Ordinal>;
    fn regex_ok(&self, _p: &Predicate) -> BResult<()> {
        Ok(())
    }
}

fn text_ordinal(text: String) -> Ordinal {
    Ordinal {
        num: None,
        text: Some(text),
        ip: None,
    }
}

struct StringT;
impl Scalar for StringT {
    fn alternatives(&self, l: &Literal, out: &mut Vec<Value>) -> BResult<()> {
        out.push(Value::String(l.text.clone()));
        Ok(())
    }
    fn ordinal(&self, _p: &Predicate, l: &Literal) -> BResult<Ordinal> {
        Ok(text_ordinal(l.text.clone()))
    }
}

struct RunnableT;
impl Scalar for RunnableT {
    fn alternatives(&self, l: &Literal, out: &mut Vec<Value>) -> BResult<()> {
        match l.text.as_str() {
            "true" => out.push(Value::Bool(true)),
            "false" => out.push(Value::Bool(false)),
            _ => {
                return Err(lit_err(
                    FilterErrorKind::WrongType,
                    l,
                    "true or false (Runnable is a boolean)",
                ))
            }
        }
        Ok(())
    }
    fn ordinal(&self, p: &Predicate, _l: &Literal) -> BResult<Ordinal> {
        Err(unsupported(p, "Runnable is a boolean: Eq, Ne, In, Nin"))
    }
    fn regex_ok(&self, p: &Predicate) -> BResult<()> {
        Err(unsupported(p, "Runnable is a boolean: Eq, Ne, In, Nin"))
    }
}

struct UuidT;
impl UuidT {
    fn canonical(l: &Literal) -> BResult<String> {
        uuid::Uuid::parse_str(l.text.trim())
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| lit_err(FilterErrorKind::WrongType, l, "a UUID (Uuid is a UUID)"))
    }
}
impl Scalar for UuidT {
    fn alternatives(&self, l: &Literal, out: &mut Vec<Value>) -> BResult<()> {
        out.push(Value::String(Self::canonical(l)?));
        Ok(())
    }
    fn ordinal(&self, _p: &Predicate, l: &Literal) -> BResult<Ordinal> {
        Ok(text_ordinal(Self::canonical(l)?))
    }
}

struct AddressT;
impl AddressT {
    fn ip(l: &Literal) -> BResult<IpAddr> {
        l.text.trim().parse::<IpAddr>().map_err(|_| {
            lit_err(
                FilterErrorKind::WrongType,
                l,
                "an IP address (Address is an IP address)",
            )
        })
    }
}
impl Scalar for AddressT {
    fn alternatives(&self, l: &Literal, out: &mut Vec<Value>) -> BResult<()> {
        out.push(Value::String(Self::ip(l)?.to_string()));
        Ok(())
    }
    fn ordinal(&self, _p: &Predicate, l: &Literal) -> BResult<Ordinal> {
        Ok(Ordinal {
            num: None,
            text: None,
            ip: Some(Self::ip(l)?),
        })
    }
}

/// An unquoted literal's JSON reading: a number, boolean, null, array or
/// object (not a string: those are the text itself).
pub(crate) fn json_of(l: &Literal) -> Option<Value> {
    if l.quoted {
        return None;
    }
    let t = l.text.as_str();
    let first = *t.as_bytes().first()?;
    let last = *t.as_bytes().last()?;
    if !matches!(first, b'-' | b'0'..=b'9' | b't' | b'f' | b'n' | b'[' | b'{')
        || last.is_ascii_whitespace()
    {
        return None;
    }
    serde_json::from_str::<Value>(t)
        .ok()
        .filter(|v| !v.is_string())
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

struct ParamT<'a> {
    name: &'a str,
    ty: Option<&'a str>,
}
impl ParamT<'_> {
    fn wrong(&self, l: &Literal, ty: &str) -> BErr {
        let article = if matches!(ty.as_bytes().first(), Some(b'a' | b'i' | b'o')) {
            "an"
        } else {
            "a"
        };
        lit_err(
            FilterErrorKind::WrongType,
            l,
            format!("{article} {ty} (param {} is {ty})", self.name),
        )
    }
}
impl Scalar for ParamT<'_> {
    fn alternatives(&self, l: &Literal, out: &mut Vec<Value>) -> BResult<()> {
        let before = out.len();
        if let Some(v) = json_of(l) {
            out.push(v);
        }
        out.push(Value::String(l.text.clone()));
        if let Some(ty) = self.ty {
            let mut k = before;
            while k < out.len() {
                if type_ok(ty, &out[k]) {
                    k += 1;
                } else {
                    out.remove(k);
                }
            }
            if out.len() == before {
                return Err(self.wrong(l, ty));
            }
        }
        Ok(())
    }
    fn ordinal(&self, p: &Predicate, l: &Literal) -> BResult<Ordinal> {
        let num = json_of(l).and_then(|v| v.as_f64());
        match self.ty {
            Some(ty @ ("number" | "integer")) => match num {
                Some(n) => Ok(Ordinal {
                    num: Some(n),
                    text: None,
                    ip: None,
                }),
                None => Err(self.wrong(l, ty)),
            },
            Some("string") => Ok(text_ordinal(l.text.clone())),
            Some(ty @ ("boolean" | "null" | "array" | "object")) => Err(unsupported(
                p,
                &format!("param {} is {ty}: only Eq, Ne, In, Nin", self.name),
            )),
            _ => Ok(Ordinal {
                num,
                text: Some(l.text.clone()),
                ip: None,
            }),
        }
    }
    fn regex_ok(&self, p: &Predicate) -> BResult<()> {
        match self.ty {
            Some(ty @ ("number" | "integer" | "boolean" | "null" | "array" | "object")) => {
                Err(unsupported(
                    p,
                    &format!("param {} is {ty}: Re matches strings only", self.name),
                ))
            }
            _ => Ok(()),
        }
    }
}
