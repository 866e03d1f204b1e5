//! DRP's wire conventions that the server and the CLI share, and the names
//! of the files in a store directory that both read.
//!
//! DRP is written in Go and parses its boolean query parameters with
//! `strconv.ParseBool`, so its clients spell booleans however their language
//! prints them: drpcli sends `true`, RackN's Python SDK sends `True`. One
//! parser here, so every place that reads a boolean word accepts the same
//! spellings and refuses the rest with the same message.

/// The Unix socket `fleetkv serve` listens on inside its store directory
/// (mode 0600); `fleetkv --data DIR …` talks through it to the server that
/// owns DIR.
pub const SOCKET_FILE: &str = "fleetkv.sock";

/// fleetkv's media type for a reference update (drpcli's `-r`) sent to
/// `PATCH /api/v3/{kind}/{id}`: `{"Reference": object as last seen,
/// "Desired": object wanted}`. The server decides it with the library's
/// reference update, so the embedded CLI and a remote one refuse and apply
/// exactly alike (RFC 6902 cannot test that a path is still absent).
pub const REFERENCE_UPDATE: &str = "application/vnd.fleetkv.reference+json";

/// The admin key's file name, inside the store directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// The spellings Go's `strconv.ParseBool` accepts, true ones first.
pub const BOOL_SPELLINGS: &str = "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False";

/// A boolean as Go's `strconv.ParseBool` reads it; `None` for anything else
/// (including the empty string and mixed case such as `tRUE`).
///
/// ```
/// use fleetkv::wire::parse_bool;
/// assert_eq!(parse_bool("True"), Some(true));
/// assert_eq!(parse_bool("0"), Some(false));
/// assert_eq!(parse_bool("yes"), None);
/// ```
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// [`parse_bool`], with an error naming `name` and the accepted spellings.
pub fn parse_bool_named(name: &str, text: &str) -> Result<bool, String> {
    parse_bool(text)
        .ok_or_else(|| format!("{name}={text:?}: not a boolean; expected one of {BOOL_SPELLINGS}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_spellings() {
        for t in BOOL_SPELLINGS.split(", ") {
            let want = matches!(t, "1" | "t" | "T" | "TRUE" | "true" | "True");
            assert_eq!(parse_bool(t), Some(want), "{t}");
        }
        for bad in ["", "yes", "no", "tRUE", "FaLse", "2", " true", "on"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
        let e = parse_bool_named("aggregate", "maybe").unwrap_err();
        assert!(
            e.contains("aggregate") && e.contains("True") && e.contains("F"),
            "{e}"
        );
    }
}
