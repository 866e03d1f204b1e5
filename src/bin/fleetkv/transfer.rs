//! `import` and `export`: drpcli's list output in, everything out. The work
//! is [`fleetkv::transfer`]'s (the server's `/api/v3/import` and `/export`
//! call the same functions); this adds the progress bar and exit codes.

use std::io::IsTerminal;

use clap::ValueEnum;
use fleetkv::transfer::ImportError;
use fleetkv::{Kind, Store};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::{Failure, Out};

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
    Ok(fleetkv::transfer::export(s)?)
}

impl From<ImportError> for Failure {
    fn from(e: ImportError) -> Self {
        // Bad input is 2; a refused object or a failed write exits as its
        // cause would (5 for a stall, busy store or timeout, …).
        let code = e.cause().map_or(2, Failure::from_error_code);
        Failure {
            code,
            msg: e.to_string(),
        }
    }
}

/// Loads an export object or an array of one kind; an object whose key
/// exists already is replaced. Returns how many objects were written.
pub fn import(s: &Store, doc: Value, kind: Option<KindArg>) -> Out<usize> {
    let mut bar: Option<ProgressBar> = None;
    let mut started = false;
    let n = fleetkv::transfer::import_with(s, doc, kind.map(Kind::from), |kind, done, total| {
        if !started {
            started = true;
            if total >= BAR_FROM && std::io::stderr().is_terminal() {
                let b = ProgressBar::new(total as u64);
                if let Ok(st) =
                    ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec}")
                {
                    b.set_style(st.progress_chars("=> "));
                }
                bar = Some(b);
            }
        }
        if let Some(b) = &bar {
            b.set_message(kind.plural());
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(n)
}
