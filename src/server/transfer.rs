//! Bulk transfer over HTTP: the whole store out as one export object, an
//! export object or an array of one kind in — what `fleetkv export` and
//! `fleetkv import` do on an embedded store.
//!
//! Owns: these two routes and their authorization (the CLI's: every scope's
//! `list` to export, every scope's `create` and `update` to import). Must
//! not: read or write objects itself — both call [`crate::transfer`], the
//! code the embedded CLI runs, on the blocking pool; so the shape checks,
//! the writing order, idempotence and where a refused import stops are the
//! same in both modes. A body over `--max-body-bytes` is a 413 before
//! anything is read; the CLI sends large documents in parts.
//!
//! | method | path | what | claim |
//! |---|---|---|---|
//! | GET | `/api/v3/export` | `{"params":[…],"profiles":[…],"machines":[…]}` | `{machines,profiles,params}/list/*` |
//! | POST | `/api/v3/import?kind=K&check=B` | load an array (of kind K, else detected with certainty or refused) or an export object, all or nothing; answers how many objects were written (with `check`: checks only) | `{machines,profiles,params}/{create,update}/*` |

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::api::{json_body, ok, url_decode, ApiResult, St, JSON};
use super::auth::Principal;
use super::error::{ApiError, ApiErrorBody};
use crate::auth::SCOPES;
use crate::transfer::ImportError;
use crate::Kind;

/// The kind of an imported plain array.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum ImportKind {
    Machines,
    Profiles,
    Params,
}

/// `POST /api/v3/import` query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ImportParams {
    /// The kind of a plain array; not with an export object. Without it, an
    /// array is taken only when every element certainly is of one kind (a
    /// field only machines have, such as Uuid, or only definitions have:
    /// Schema, Secure), else refused with a 400 naming the element; an array
    /// of profiles needs it.
    #[param(inline)]
    kind: Option<ImportKind>,
    /// Check the document against the store as the import would, and write
    /// nothing (Go booleans: `true`, `1`, `T`, …); answers how many objects
    /// it holds. The CLI's remote mode checks a document too large for one
    /// request this way, part by part, before it writes any.
    check: Option<bool>,
}

/// A refused import as a DRP error: the shape's a 400; a refused object's
/// status is the store error's, its message the CLI's (`import machines #3: …`).
fn import_error(e: ImportError) -> ApiError {
    let msg = e.to_string();
    match e {
        ImportError::Shape(_) | ImportError::Undetected { .. } => ApiError::bad_request(msg),
        ImportError::Object { source, .. } | ImportError::Store(source) => {
            ApiError::from(source).with_message(msg)
        }
        ImportError::Partial { source, .. } => import_error(*source).with_message(msg),
    }
}

/// Everything, as one object of three arrays (what `fleetkv export` prints).
#[utoipa::path(get, path = "/api/v3/export",
    responses(
        (status = 200, description = "{\"params\":[…],\"profiles\":[…],\"machines\":[…]}", body = Object),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody)))]
pub async fn export(State(app): St, Extension(who): Extension<Principal>) -> ApiResult {
    for scope in SCOPES {
        app.auth.authorize(&who, scope, "list", "")?;
    }
    let v = app.on_pool(crate::transfer::export).await?;
    Ok(ok(StatusCode::OK, v))
}

/// Loads a JSON array of one kind or an export object (what `fleetkv
/// import` does), all or nothing: the whole document is checked first (its
/// shape, the kind of a plain array — never guessed —, every object, Names
/// unique, profiles and schemas from the store or the document) and the
/// first problem refuses it with nothing written; it is then written params,
/// profiles, machines, each replacing the object with its key, as one
/// atomic write (up to 10,000 objects; a larger document in writes of
/// 10,000, and a failed write says how many objects are in the store —
/// importing again resumes). Answers how many objects were written.
#[utoipa::path(post, path = "/api/v3/import",
    params(ImportParams),
    request_body(content = Object, content_type = "application/json",
        description = "An array of objects of one kind, or {\"params\":[…],\"profiles\":[…],\"machines\":[…]}"),
    responses(
        (status = 200, description = "How many objects were written (with check=true: how many the document holds; nothing written)", body = u64),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
        (status = 415, body = ApiErrorBody)))]
pub async fn import(
    State(app): St,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    for scope in SCOPES {
        for action in ["create", "update"] {
            app.auth.authorize(&who, scope, action, "")?;
        }
    }
    let mut kind = None;
    let mut check = false;
    for part in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match (url_decode(k)?.as_str(), url_decode(v)?.as_str()) {
            ("kind", "machines") => kind = Some(Kind::Machine),
            ("kind", "profiles") => kind = Some(Kind::Profile),
            ("kind", "params") => kind = Some(Kind::Param),
            ("check", v) => {
                check = crate::wire::parse_bool_named("check", v).map_err(ApiError::bad_request)?
            }
            ("kind", other) => {
                return Err(ApiError::bad_request(format!(
                    "kind {other:?}: expected machines, profiles or params"
                )))
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query key {other:?} (expected kind, check)"
                )))
            }
        }
    }
    let (doc, _) = json_body(&headers, &body, JSON)?;
    let n = app
        .on_pool(move |s| {
            match check {
                true => crate::transfer::check(s, doc, kind),
                false => crate::transfer::import(s, doc, kind),
            }
            .map_err(import_error)
        })
        .await?;
    Ok(ok(StatusCode::OK, json!(n)))
}
