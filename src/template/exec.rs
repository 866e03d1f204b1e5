//! The evaluator: walks a parsed template against a [`RenderContext`].

use std::cell::OnceCell;

use serde_json::Value;

use super::parse::{Func, Head, Method, Node, OpKind, Operand, Pipe};
use super::print::print;
use super::{RenderContext, Template, TemplateError, TemplateErrorKind as K, MAX_CALL_DEPTH};

/// A value during evaluation: the render context (dot at the top) or JSON.
#[derive(Clone)]
enum Val {
    Ctx,
    Json(Value),
}

fn truthy(v: &Val) -> bool {
    match v {
        Val::Ctx => true,
        Val::Json(j) => match j {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        },
    }
}

fn type_name(v: &Val) -> String {
    match v {
        Val::Ctx => "the render context".into(),
        Val::Json(j) => match j {
            Value::Null => "nil".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Number(n) => format!("number {n}"),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(_) => "an array".into(),
            Value::Object(_) => "an object".into(),
        },
    }
}

struct Exec<'c, 'a> {
    ctx: &'c RenderContext<'a>,
    machine: OnceCell<Value>,
    out: String,
    depth: usize,
}

type R<T> = Result<T, TemplateError>;

pub(crate) fn render(t: &Template, ctx: &RenderContext<'_>) -> R<String> {
    let mut ex = Exec {
        ctx,
        machine: OnceCell::new(),
        out: String::new(),
        depth: 0,
    };
    ex.nodes(t, &t.nodes, &Val::Ctx)?;
    Ok(ex.out)
}

fn err(
    t: &Template,
    kind: K,
    pos: usize,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> TemplateError {
    TemplateError::at(kind, &t.name, &t.source, pos, expected, found)
}

impl Exec<'_, '_> {
    fn nodes(&mut self, t: &Template, nodes: &[Node], dot: &Val) -> R<()> {
        for n in nodes {
            match n {
                Node::Text(s) => self.out.push_str(s),
                Node::Print(p) => match self.pipe(t, p, dot)? {
                    Val::Json(v) => print(&v, &mut self.out),
                    Val::Ctx => {
                        return Err(err(
                            t,
                            K::WrongType,
                            p.pos,
                            "a printable value",
                            "the render context",
                        ))
                    }
                },
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = None;
                    for (cond, body) in branches {
                        if truthy(&self.pipe(t, cond, dot)?) {
                            taken = Some(body);
                            break;
                        }
                    }
                    self.nodes(t, taken.unwrap_or(otherwise), dot)?;
                }
                Node::Call { pos, name, arg } => {
                    let Some(target) = self.ctx.templates.iter().find(|x| x.name() == name) else {
                        let known: Vec<&str> =
                            self.ctx.templates.iter().map(Template::name).collect();
                        return Err(err(
                            t,
                            K::UnknownTemplate,
                            *pos,
                            format!("one of the job's templates ({})", known.join(", ")),
                            format!("{name:?}"),
                        ));
                    };
                    if self.depth >= MAX_CALL_DEPTH {
                        return Err(err(
                            t,
                            K::TooDeep,
                            *pos,
                            "at most 64 nested template calls",
                            format!("{name:?} called again"),
                        ));
                    }
                    let d = match arg {
                        Some(p) => self.pipe(t, p, dot)?,
                        None => Val::Json(Value::Null),
                    };
                    self.depth += 1;
                    self.nodes(target, &target.nodes, &d)?;
                    self.depth -= 1;
                }
            }
        }
        Ok(())
    }

    fn pipe(&mut self, t: &Template, p: &Pipe, dot: &Val) -> R<Val> {
        match &p.head {
            Head::Operand(o) => self.operand(t, o, dot),
            Head::Method(m) => self.method(t, p, *m, dot),
            Head::Func(f) => self.func(t, p, *f, dot),
        }
    }

    fn operand(&mut self, t: &Template, o: &Operand, dot: &Val) -> R<Val> {
        match &o.kind {
            OpKind::Dot => Ok(dot.clone()),
            OpKind::Lit(v) => Ok(Val::Json(v.clone())),
            OpKind::Pipe(p) => self.pipe(t, p, dot),
            OpKind::Field(segs) => {
                let mut cur = dot.clone();
                for (pos, name) in segs {
                    cur = match cur {
                        Val::Ctx if name == "Machine" => Val::Json(self.machine_json().clone()),
                        Val::Ctx => {
                            return Err(err(
                                t,
                                K::UnknownField,
                                *pos,
                                "a field of the render context (Machine)",
                                name.clone(),
                            ))
                        }
                        Val::Json(Value::Object(mut m)) => match m.shift_remove(name.as_str()) {
                            Some(v) => Val::Json(v),
                            None => {
                                let mut keys: Vec<&String> = m.keys().collect();
                                keys.sort();
                                let keys: Vec<&str> =
                                    keys.into_iter().map(String::as_str).collect();
                                return Err(err(
                                    t,
                                    K::UnknownField,
                                    *pos,
                                    format!("one of its fields ({})", keys.join(", ")),
                                    name.clone(),
                                ));
                            }
                        },
                        other => {
                            return Err(err(
                                t,
                                K::WrongType,
                                *pos,
                                format!("an object with field {name}"),
                                type_name(&other),
                            ))
                        }
                    };
                }
                Ok(cur)
            }
        }
    }

    fn machine_json(&self) -> &Value {
        self.machine
            .get_or_init(|| serde_json::to_value(self.ctx.machine).unwrap_or(Value::Null))
    }

    fn string_arg(&mut self, t: &Template, o: &Operand, dot: &Val, what: &str) -> R<String> {
        match self.operand(t, o, dot)? {
            Val::Json(Value::String(s)) => Ok(s),
            other => Err(err(
                t,
                K::WrongType,
                o.pos,
                format!("a string ({what})"),
                type_name(&other),
            )),
        }
    }

    fn method(&mut self, t: &Template, p: &Pipe, m: Method, dot: &Val) -> R<Val> {
        if !matches!(dot, Val::Ctx) {
            return Err(err(
                t,
                K::WrongType,
                p.pos,
                format!(
                    "dot to be the render context for .{} (pass \".\" to the template)",
                    m.name()
                ),
                type_name(dot),
            ));
        }
        let key = self.string_arg(t, &p.args[0], dot, "a param name")?;
        let params = self.ctx.params;
        Ok(Val::Json(match m {
            Method::ParamExists => Value::Bool(params.contains_key(&key)),
            Method::Param => match params.get(&key) {
                Some(v) => v.clone(),
                None => {
                    return Err(err(
                        t,
                        K::NoValue,
                        p.args[0].pos,
                        format!("param {key} to have a value (guard it with .ParamExists)"),
                        format!("param {key} has no value"),
                    ))
                }
            },
            Method::GenerateProfileToken => {
                let o = &p.args[1];
                let ttl = match self.operand(t, o, dot)? {
                    Val::Json(Value::Number(n)) => n.as_u64().or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64)
                            .map(|f| f as u64)
                    }),
                    _ => None,
                };
                let Some(ttl) = ttl else {
                    let found = type_name(&self.operand(t, o, dot)?);
                    return Err(err(
                        t,
                        K::WrongType,
                        o.pos,
                        "a whole number of seconds (the token's ttl)",
                        found,
                    ));
                };
                match self.ctx.minter.profile_token(&key, ttl) {
                    Ok(tok) => Value::String(tok),
                    Err(e) => {
                        return Err(err(
                            t,
                            K::TokenMinting,
                            p.pos,
                            format!("a token for profile {key}"),
                            e.to_string(),
                        ))
                    }
                }
            }
        }))
    }

    fn func(&mut self, t: &Template, p: &Pipe, f: Func, dot: &Val) -> R<Val> {
        match f {
            Func::Not => Ok(Val::Json(Value::Bool(!truthy(
                &self.operand(t, &p.args[0], dot)?,
            )))),
            Func::And | Func::Or => {
                let mut last = Val::Json(Value::Null);
                for o in &p.args {
                    last = self.operand(t, o, dot)?;
                    if truthy(&last) == (f == Func::Or) {
                        break;
                    }
                }
                Ok(last)
            }
            Func::Eq | Func::Ne => {
                let a = self.comparable(t, &p.args[0], dot)?;
                let mut any = false;
                for o in &p.args[1..] {
                    let b = self.comparable(t, o, dot)?;
                    any |= match (&a, &b) {
                        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
                        _ => a == b,
                    };
                }
                Ok(Val::Json(Value::Bool(any == (f == Func::Eq))))
            }
        }
    }

    fn comparable(&mut self, t: &Template, o: &Operand, dot: &Val) -> R<Value> {
        match self.operand(t, o, dot)? {
            Val::Json(v) if !v.is_object() && !v.is_array() => Ok(v),
            other => Err(err(
                t,
                K::WrongType,
                o.pos,
                "a comparable value (string, number, bool or nil)",
                type_name(&other),
            )),
        }
    }
}
