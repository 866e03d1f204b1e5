//! `machines render ID FILE|-`: a Go template rendered against the machine's
//! effective params now, printed verbatim. Template errors exit 2.

use fleetkv::{Error, RenderContext, Store, Template, TemplateError, TokenMinter};

use crate::{Failure, Out};

/// The token minter `.GenerateProfileToken` uses: the one place to swap in
/// the store's own (`impl TokenMinter for Store`) once profile tokens land.
fn minter(_store: &Store) -> impl TokenMinter {
    Unavailable
}

/// Refuses every request: profile tokens are not implemented yet. Only
/// templates that call `.GenerateProfileToken` see this.
struct Unavailable;

impl TokenMinter for Unavailable {
    fn profile_token(&self, _profile: &str, _ttl_secs: u64) -> fleetkv::Result<String> {
        Err(Error::Invalid {
            what: "GenerateProfileToken".into(),
            reason: "token minting not available".into(),
        })
    }
}

fn failure(e: TemplateError) -> Failure {
    Failure::input(e.to_string())
}

/// Renders `text` (read from `file`, which names it in errors) for machine `id`.
pub fn render(s: &Store, id: &str, file: &str, text: &str) -> Out {
    let name = if file == "-" { "stdin" } else { file };
    let t = Template::parse(name, text).map_err(failure)?;
    let machine = s.machines().get(id)?;
    let params = s.machines().params(id, true)?;
    let minter = minter(s);
    let out = t
        .render(&RenderContext {
            machine: &machine,
            params: &params,
            templates: std::slice::from_ref(&t),
            minter: &minter,
        })
        .map_err(failure)?;
    out!("{out}");
    Ok(())
}
