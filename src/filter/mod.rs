//! The filter language (DESIGN.md §3, `grammar/filter.ebnf`): parsing with
//! positioned errors, binding against field types and param definitions, and
//! the reference evaluator that defines what a filter means.
//!
//! Owns: syntax, the AST, canonical `Display`, binding, and per-object
//! evaluation. Must not: read storage or indexes. The index module answers the
//! same bound filters with bitmaps and is tested against [`Bound::matches`].
//!
//! CONTRACT STUB — the filter helper replaces the bodies; the public names and
//! shapes below are what the store and index code rely on.

use std::fmt;
use std::net::IpAddr;

use regex::Regex;
use serde_json::{Map, Value};

use crate::model::Kind;

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

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter error at byte {}: expected {}, found {}",
            self.offset, self.expected, self.found
        )
    }
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
    /// Parses triples / boolean expressions.
    pub fn parse(_input: &str) -> Result<Filter, FilterError> {
        unimplemented!()
    }
    /// Parses drpcli's argument words.
    pub fn from_args(_args: &[String]) -> Result<Filter, FilterError> {
        unimplemented!()
    }
    /// Parses DRP's API query string.
    pub fn from_query(_query: &str) -> Result<Filter, FilterError> {
        unimplemented!()
    }
    /// Both must hold (splicing a stored filter safely).
    pub fn and(self, _other: Filter) -> Filter {
        unimplemented!()
    }
    /// Checks against field types and param definitions; converts literals once.
    pub fn bind(&self, _kind: Kind, _types: &dyn ParamTypes) -> Result<Bound, FilterError> {
        unimplemented!()
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
    pub fn matches_scalar(&self, _v: &Value) -> bool {
        unimplemented!()
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
    /// The reference evaluator.
    pub fn matches(&self, _s: &Subject<'_>) -> bool {
        unimplemented!()
    }
}
