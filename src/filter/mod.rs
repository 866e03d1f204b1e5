//! The filter language (`grammar/filter.ebnf`; `docs/architecture.md` §4 The
//! query path and §7 Filter semantics): parsing with
//! positioned errors, binding against field types and param definitions, and
//! the reference evaluator that defines what a filter means.
//!
//! Owns: syntax, the AST, canonical `Display`, binding, and per-object
//! evaluation. Must not: read storage or indexes. The index module answers the
//! same bound filters with bitmaps and is tested against [`Bound::matches`].
//!
//! Layout: `parse` (nom parser for the triple/boolean form, the
//! query-string form and drpcli argument words), `display` (canonical text and
//! error rendering), `bind` (literal conversion, type checks, regex
//! compilation) and `eval` (the reference evaluator). Limits: inputs over
//! [`MAX_INPUT_LEN`] bytes are [`FilterErrorKind::TooLong`]; nesting of
//! parentheses and `Not` deeper than [`MAX_DEPTH`] is
//! [`FilterErrorKind::TooDeep`]. No input makes any of this panic or overflow
//! the stack (fuzzed: `fuzz/`, target `filter_parse`).

use std::net::IpAddr;

use regex::Regex;
use serde_json::{Map, Value};

use crate::model::Kind;

mod bind;
mod display;
mod eval;
mod parse;

/// Longest accepted filter text, in bytes (for `from_args`, the joined words).
pub const MAX_INPUT_LEN: usize = 16 * 1024;

/// Deepest accepted nesting of parentheses and `Not`.
pub const MAX_DEPTH: usize = 64;

/// A byte range in the filter's source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// Object fields a filter can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `Name` (string).
    Name,
    /// `Uuid` (UUID, machines only).
    Uuid,
    /// `Description` (string).
    Description,
    /// `Address` (IP address, machines only).
    Address,
    /// `Workflow` (string, machines only).
    Workflow,
    /// `Runnable` (boolean, machines only).
    Runnable,
}

/// What a predicate looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A field.
    Field(Field),
    /// The machine's profile list (a set).
    Profiles,
    /// The set of effective param names.
    ParamNames,
    /// The effective value of one param (`Params.NAME` or a bare param name).
    Param(String),
    /// The set of Meta keys.
    MetaKeys,
    /// The Meta value at KEY.
    Meta(String),
}

/// Operators, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Equal / holds all.
    Eq,
    /// Not Eq.
    Ne,
    /// Less than.
    Lt,
    /// Less or equal.
    Lte,
    /// Greater than.
    Gt,
    /// Greater or equal.
    Gte,
    /// Any of a list.
    In,
    /// None of a list.
    Nin,
    /// RE2 regular expression.
    Re,
    /// Inclusive range.
    Between,
    /// Not Between.
    Except,
}

/// A literal as written: its text and whether it was double-quoted.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    /// The unescaped text.
    pub text: String,
    /// True when written as a JSON string (`"true"`): then it only matches strings.
    pub quoted: bool,
    /// Where it was.
    pub span: Span,
}

/// One `KEY OP VALUE` triple.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// What it looks at.
    pub key: Key,
    /// The operator.
    pub op: Op,
    /// The value(s): one for most operators, a list for In/Nin and set keys,
    /// two for Between/Except.
    pub values: Vec<Literal>,
    /// The whole triple.
    pub span: Span,
}

/// The parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// All must hold (juxtaposition, `And`, `&`).
    And(Vec<Expr>),
    /// Any must hold.
    Or(Vec<Expr>),
    /// Must not hold.
    Not(Box<Expr>),
    /// A triple.
    Pred(Predicate),
}

/// What kind of mistake a filter has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterErrorKind {
    /// Anything else that does not fit the grammar.
    Syntax,
    /// Operator not one of the eleven.
    UnknownOperator,
    /// Operator with no value after it.
    MissingValue,
    /// `(` without `)` or the reverse.
    UnbalancedParen,
    /// Input left over after a complete filter.
    TrailingInput,
    /// A `Re` pattern that does not compile (or is too big).
    BadRegex,
    /// Between/Except without exactly two values, or a list where one value goes.
    Arity,
    /// A literal of the wrong type for a typed field or param schema.
    WrongType,
    /// An operator the key does not support (e.g. `Profiles Lt a`).
    UnsupportedOperator,
    /// A key the object kind does not have (e.g. `Address` on profiles).
    UnknownKey,
    /// Nesting deeper than the limit.
    TooDeep,
    /// Input longer than the limit.
    TooLong,
    /// Invalid text (bad escape, bad URL escape, not UTF-8).
    InvalidText,
}

/// A filter that did not parse or bind: where, what was expected, what was found.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    /// What went wrong.
    pub kind: FilterErrorKind,
    /// Byte offset into `input`.
    pub offset: usize,
    /// What the parser expected there.
    pub expected: String,
    /// What it found.
    pub found: String,
    /// The input, for rendering the caret.
    pub input: String,
}

impl std::error::Error for FilterError {}

/// A parsed filter. The empty filter matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// `None` for the empty filter.
    pub expr: Option<Expr>,
}

impl Filter {
    /// The filter that matches everything.
    pub fn all() -> Filter {
        Filter { expr: None }
    }
    /// Parses triples / boolean expressions (`grammar/filter.ebnf`).
    ///
    /// Empty or all-whitespace input is the empty filter. Error offsets are
    /// byte offsets into `input`.
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        parse::parse_text(input, None)
            .map(|expr| Filter { expr })
            .map_err(|e| e.into_error(input))
    }

    /// Parses drpcli's argument words, e.g.
    /// `["cluster/manager", "Eq", "false", "Profiles", "Eq", "example"]`,
    /// `["Name=fred"]` or a whole expression as one word
    /// `["Profiles Eq a And (x Eq 1 Or y Eq 2)"]`, possibly mixed.
    ///
    /// The words are joined with single spaces and parsed as [`Filter::parse`]
    /// does, except that a value position at the start of a word (or right
    /// after `KEY=` in a word) takes the whole word as one literal when the
    /// word is not already a value or list on its own (it has spaces, or
    /// parentheses as in `^(a|b)$`). A word that is a JSON string (`"true"`)
    /// is a quoted literal. Error offsets and [`FilterError::input`] refer to
    /// the joined text.
    pub fn from_args(args: &[String]) -> Result<Filter, FilterError> {
        let mut joined = String::new();
        let mut bounds = Vec::with_capacity(args.len());
        for (n, a) in args.iter().enumerate() {
            if n > 0 {
                joined.push(' ');
            }
            let start = joined.len();
            joined.push_str(a);
            bounds.push((start, joined.len()));
            if joined.len() > MAX_INPUT_LEN {
                break;
            }
        }
        parse::parse_text(&joined, Some(&bounds))
            .map(|expr| Filter { expr })
            .map_err(|e| e.into_error(&joined))
    }

    /// Parses DRP's API query string:
    /// `Name=Eq(fred)&Params.cluster/leader=Eq(true)&Profiles=In(a,b)`.
    ///
    /// `&` separates predicates (And); `KEY=VALUE` alone means Eq; a value of
    /// the form `Op(args)` names the operator; keys and values are URL-decoded
    /// (`%XX` and `+`) before `Op(...)` is recognised and the arguments are
    /// split on commas (only for In, Nin, Between, Except and the set keys
    /// Profiles/Params/Meta; other operators take everything inside the
    /// parentheses as one value). An argument that is a JSON string (`"a,b"`)
    /// is a quoted literal. A leading `?` is skipped; empty parts are ignored.
    /// Listing options (`limit`, `sort`, ...) are not recognised here: the
    /// caller removes them first. Offsets refer to the raw query text.
    pub fn from_query(query: &str) -> Result<Filter, FilterError> {
        parse::parse_query(query)
            .map(|expr| Filter { expr })
            .map_err(|e| e.into_error(query))
    }

    /// Both must hold (splicing a stored filter safely): an And of the two
    /// expressions, whatever they are; either empty gives the other. Top-level
    /// Ands are flattened, so splicing triples stays one flat And.
    pub fn and(self, other: Filter) -> Filter {
        let expr = match (self.expr, other.expr) {
            (None, e) | (e, None) => e,
            (Some(a), Some(b)) => {
                let mut items = Vec::new();
                for e in [a, b] {
                    match e {
                        Expr::And(v) if v.len() >= 2 => items.extend(v),
                        e => items.push(e),
                    }
                }
                Some(Expr::And(items))
            }
        };
        Filter { expr }
    }

    /// Checks against field types and param definitions; converts literals once.
    ///
    /// A filter does not remember its source text (it may be spliced from
    /// several), so a binding error is reported against the filter's
    /// canonical text (its `Display`): [`FilterError::input`] holds that text
    /// and the offset points into it, at the offending key, operator or
    /// literal. For a filter already written canonically the offsets are the
    /// source offsets.
    pub fn bind(&self, kind: Kind, types: &dyn ParamTypes) -> Result<Bound, FilterError> {
        let Some(expr) = &self.expr else {
            return Ok(Bound::All);
        };
        match bind::bind_expr(expr, kind, types) {
            Ok(b) => Ok(b),
            Err(first) => {
                let canon = self.to_string();
                if let Ok(Filter { expr: Some(e2) }) = Filter::parse(&canon) {
                    if let Err(e) = bind::bind_expr(&e2, kind, types) {
                        return Err(e.into_error(&canon));
                    }
                }
                Err(first.into_fallback_error(&canon))
            }
        }
    }

    /// The same filter with every span zeroed: compare ASTs with this.
    pub fn without_spans(&self) -> Filter {
        Filter {
            expr: self.expr.as_ref().map(Expr::without_spans),
        }
    }

    /// True for the empty filter (matches everything).
    pub fn is_all(&self) -> bool {
        self.expr.is_none()
    }
}

impl Expr {
    /// The same expression with every span zeroed.
    pub fn without_spans(&self) -> Expr {
        match self {
            Expr::And(v) => Expr::And(v.iter().map(Expr::without_spans).collect()),
            Expr::Or(v) => Expr::Or(v.iter().map(Expr::without_spans).collect()),
            Expr::Not(e) => Expr::Not(Box::new(e.without_spans())),
            Expr::Pred(p) => Expr::Pred(Predicate {
                key: p.key.clone(),
                op: p.op,
                values: p
                    .values
                    .iter()
                    .map(|l| Literal {
                        text: l.text.clone(),
                        quoted: l.quoted,
                        span: Span::default(),
                    })
                    .collect(),
                span: Span::default(),
            }),
        }
    }
}

impl Key {
    /// True for the set-valued keys (`Profiles`, `Params`, `Meta`), whose
    /// values are lists and whose tests are HasAll/HasAny/AnyMatches.
    pub fn is_set(&self) -> bool {
        matches!(self, Key::Profiles | Key::ParamNames | Key::MetaKeys)
    }
}

impl Field {
    /// The field's DRP name (`Name`, `Uuid`, ...), as written in filters and
    /// as the key in an object's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Field::Name => "Name",
            Field::Uuid => "Uuid",
            Field::Description => "Description",
            Field::Address => "Address",
            Field::Workflow => "Workflow",
            Field::Runnable => "Runnable",
        }
    }

    /// The field named exactly `name` (case-sensitive, as DRP).
    pub fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "Name" => Field::Name,
            "Uuid" => Field::Uuid,
            "Description" => Field::Description,
            "Address" => Field::Address,
            "Workflow" => Field::Workflow,
            "Runnable" => Field::Runnable,
            _ => return None,
        })
    }
}

impl Op {
    /// All eleven operators.
    pub const ALL: [Op; 11] = [
        Op::Eq,
        Op::Ne,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::Nin,
        Op::Re,
        Op::Between,
        Op::Except,
    ];

    /// The canonical spelling (`Eq`, `Between`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "Eq",
            Op::Ne => "Ne",
            Op::Lt => "Lt",
            Op::Lte => "Lte",
            Op::Gt => "Gt",
            Op::Gte => "Gte",
            Op::In => "In",
            Op::Nin => "Nin",
            Op::Re => "Re",
            Op::Between => "Between",
            Op::Except => "Except",
        }
    }

    /// The operator spelled `word`, case-insensitively.
    pub fn from_name(word: &str) -> Option<Op> {
        Op::ALL
            .into_iter()
            .find(|op| op.name().eq_ignore_ascii_case(word))
    }
}

/// The param schema types binding needs.
pub trait ParamTypes {
    /// The schema `type` of param `name` (`"boolean"`, `"number"`, ...), if defined.
    fn schema_type(&self, name: &str) -> Option<&str>;
}

/// A value usable in ordered comparisons, in every type the literal could be.
#[derive(Debug, Clone, PartialEq)]
pub struct Ordinal {
    /// As a number, if the literal is one (and unquoted).
    pub num: Option<f64>,
    /// As a string (always, unless the key is typed otherwise).
    pub text: Option<String>,
    /// As an IP address (Address field only).
    pub ip: Option<IpAddr>,
}

/// A positive test; Ne/Nin/Except bind to `Not` of Eq/In/Between.
#[derive(Debug, Clone)]
pub enum Test {
    /// Scalar keys: the stored value equals one of these (numbers by value).
    Equals(Vec<Value>),
    /// Scalar keys: stored < / <= bound, same type only.
    Less(Ordinal, bool),
    /// Scalar keys: stored > / >= bound, same type only.
    Greater(Ordinal, bool),
    /// Scalar keys: lo <= stored <= hi, same type only.
    Between(Ordinal, Ordinal),
    /// Scalar keys: a string value matches.
    Matches(Regex),
    /// Set keys: holds every one.
    HasAll(Vec<String>),
    /// Set keys: holds at least one.
    HasAny(Vec<String>),
    /// Set keys: some element matches.
    AnyMatches(Regex),
}

impl Test {
    /// Whether one stored scalar value passes (scalar tests only; false for set tests).
    pub fn matches_scalar(&self, v: &Value) -> bool {
        eval::matches_scalar(self, v)
    }

    /// Whether a set of names passes (set tests only; false for scalar tests).
    pub fn matches_set<'s>(&self, set: impl IntoIterator<Item = &'s str> + Clone) -> bool {
        eval::matches_set(self, set)
    }
}

/// A bound predicate.
#[derive(Debug, Clone)]
pub struct BoundPred {
    /// What it looks at.
    pub key: Key,
    /// The positive test.
    pub test: Test,
}

/// A bound filter: what the index and the reference evaluator execute.
#[derive(Debug, Clone)]
pub enum Bound {
    /// Matches everything (the empty filter).
    All,
    /// Intersection.
    And(Vec<Bound>),
    /// Union.
    Or(Vec<Bound>),
    /// Complement within the kind's objects.
    Not(Box<Bound>),
    /// A predicate.
    Pred(BoundPred),
}

/// What the reference evaluator looks at: the object's JSON and its effective
/// params (own → profiles → global → default for machines; own → default for
/// profiles).
pub struct Subject<'a> {
    /// The object as JSON (fields, `Profiles`, `Meta`).
    pub doc: &'a Map<String, Value>,
    /// Effective params, defaults included.
    pub params: &'a Map<String, Value>,
}

impl Bound {
    /// The reference evaluator: whether the subject passes. This is the
    /// definition the bitmap index is tested against.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        eval::matches(self, s)
    }
}

#[cfg(test)]
mod tests;
