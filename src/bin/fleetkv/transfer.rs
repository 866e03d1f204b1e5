//! `import` and `export`: drpcli's list output in, everything out.

use std::io::IsTerminal;

use clap::ValueEnum;
use fleetkv::{Kind, Machine, ParamDef, Profile, Store};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::{decode, Failure, Out};

/// Objects written between flushes (and progress updates).
const BATCH: usize = 500;
/// Fewer objects than this get no progress bar.
const BAR_FROM: usize = 2000;

/// `--kind` of an imported array.
#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Machines,
    Profiles,
    Params,
}

/// Everything, as one object of three arrays.
pub fn export(s: &Store) -> Out<Value> {
    let machines = s.machines().list_all()?;
    Ok(json!({
        "params": s.params().list_all(),
        "profiles": s.profiles().list_all(),
        "machines": machines,
    }))
}

/// Loads an export object or an array of one kind; an object whose key
/// exists already is replaced. Returns how many objects were written.
pub fn import(s: &Store, doc: Value, kind: Option<KindArg>) -> Out<usize> {
    let mut groups: [(Kind, Vec<Value>); 3] = [
        (Kind::Param, Vec::new()),
        (Kind::Profile, Vec::new()),
        (Kind::Machine, Vec::new()),
    ];
    match doc {
        Value::Array(items) => {
            let k = match kind {
                Some(KindArg::Machines) => Kind::Machine,
                Some(KindArg::Profiles) => Kind::Profile,
                Some(KindArg::Params) => Kind::Param,
                None => detect(&items),
            };
            for g in &mut groups {
                if g.0 == k {
                    g.1 = items;
                    break;
                }
            }
        }
        Value::Object(mut o) => {
            if kind.is_some() {
                return Err(Failure::input(
                    "--kind applies to a plain array, not an export object",
                ));
            }
            if let Some(k) = o
                .keys()
                .find(|k| !["params", "profiles", "machines"].contains(&k.as_str()))
            {
                return Err(Failure::input(format!(
                    "import: unknown key {k:?} (expected params, profiles, machines)"
                )));
            }
            for g in &mut groups {
                match o.remove(g.0.plural()) {
                    Some(Value::Array(a)) => g.1 = a,
                    Some(other) => {
                        return Err(Failure::input(format!(
                            "import: {} must be an array, found {other}",
                            g.0.plural()
                        )))
                    }
                    None => {}
                }
            }
        }
        other => {
            return Err(Failure::input(format!(
                "import: expected a JSON array or an export object, found {}",
                short(&other)
            )))
        }
    }
    let total: usize = groups.iter().map(|g| g.1.len()).sum();
    let bar = (total >= BAR_FROM && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(total as u64);
        if let Ok(st) = ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec}") {
            b.set_style(st.progress_chars("=> "));
        }
        b
    });
    let mut done = 0;
    for (kind, items) in groups {
        if let Some(b) = &bar {
            b.set_message(kind.plural());
        }
        for (n, chunk) in items.chunks(BATCH).enumerate() {
            for (i, item) in chunk.iter().enumerate() {
                upsert(s, kind, item.clone()).map_err(|f| Failure {
                    msg: format!("import {} #{}: {}", kind.plural(), n * BATCH + i, f.msg),
                    ..f
                })?;
            }
            s.flush()?;
            done += chunk.len();
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(done)
}

/// `Uuid`/`Profiles`/`Address`/`Runnable` → machines, `Schema` → params,
/// else profiles.
fn detect(items: &[Value]) -> Kind {
    let has = |f: &str| items.iter().any(|v| v.get(f).is_some());
    if ["Uuid", "Profiles", "Address", "Runnable"]
        .iter()
        .any(|f| has(f))
    {
        Kind::Machine
    } else if has("Schema") {
        Kind::Param
    } else {
        Kind::Profile
    }
}

fn upsert(s: &Store, kind: Kind, doc: Value) -> Out<()> {
    let name = doc
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match kind {
        Kind::Param => {
            let d: ParamDef = decode(kind, doc)?;
            if s.params().exists(&name) {
                s.params().replace(&name, d)?;
            } else {
                s.params().create(d)?;
            }
        }
        Kind::Profile => {
            let p: Profile = decode(kind, doc)?;
            if s.profiles().exists(&name) {
                s.profiles().replace(&name, p)?;
            } else {
                s.profiles().create(p)?;
            }
        }
        Kind::Machine => {
            let m: Machine = decode(kind, doc)?;
            let addr = if m.uuid.is_nil() {
                format!("Name:{name}")
            } else {
                m.uuid.to_string()
            };
            if s.machines().exists(&addr)? {
                s.machines().replace(&addr, m)?;
            } else {
                s.machines().create(m)?;
            }
        }
    }
    Ok(())
}

fn short(v: &Value) -> String {
    let t = v.to_string();
    match t.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t,
    }
}
