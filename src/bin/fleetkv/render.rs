//! `machines render ID FILE|-`: a Go template rendered against the machine's
//! effective params now, printed verbatim. Template errors exit 2.

use fleetkv::{RenderContext, Scoped, Template, TemplateError};

use crate::{Failure, Out};

fn failure(e: TemplateError) -> Failure {
    Failure::input(e.to_string())
}

/// Renders `text` (read from `file`, which names it in errors) for machine `id`.
pub fn render(s: &Scoped<'_>, id: &str, file: &str, text: &str) -> Out {
    let name = if file == "-" { "stdin" } else { file };
    let t = Template::parse(name, text).map_err(failure)?;
    let machine = s.machines().get(id)?;
    let params = s.machines().params(id, true)?;
    let out = t
        .render(&RenderContext {
            machine: &machine,
            params: &params,
            templates: std::slice::from_ref(&t),
            minter: s,
        })
        .map_err(failure)?;
    out!("{out}");
    Ok(())
}
