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
//! | POST | `/api/v3/import?kind=K` | load an array (of kind K, else detected) or an export object; answers how many objects were written | `{machines,profiles,params}/{create,update}/*` |

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
    /// The kind of a plain array (detected from its fields otherwise); not
    /// with an export object.
    #[param(inline)]
    kind: Option<ImportKind>,
}

/// A refused import as a DRP error: the shape's a 400; a refused object's
/// status is the store error's, its message the CLI's (`import machines #3: …`).
fn import_error(e: ImportError) -> ApiError {
    let msg = e.to_string();
    match e {
        ImportError::Shape(_) => ApiError::bad_request(msg),
        ImportError::Object { source, .. } | ImportError::Store(source) => {
            ApiError::from(source).with_message(msg)
        }
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
/// import` does): the shape is checked before anything is written; objects
/// are then written params, profiles, machines, each replacing the object
/// with its key; the first refused object stops the import (the ones before
/// it stay). Answers how many objects were written.
#[utoipa::path(post, path = "/api/v3/import",
    params(ImportParams),
    request_body(content = Object, content_type = "application/json",
        description = "An array of objects of one kind, or {\"params\":[…],\"profiles\":[…],\"machines\":[…]}"),
    responses(
        (status = 200, description = "How many objects were written", body = u64),
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
            ("kind", other) => {
                return Err(ApiError::bad_request(format!(
                    "kind {other:?}: expected machines, profiles or params"
                )))
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query key {other:?} (expected kind)"
                )))
            }
        }
    }
    let (doc, _) = json_body(&headers, &body, JSON)?;
    let n = app
        .on_pool(move |s| crate::transfer::import(s, doc, kind).map_err(import_error))
        .await?;
    Ok(ok(StatusCode::OK, json!(n)))
}
