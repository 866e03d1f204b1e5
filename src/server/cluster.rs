//! The cluster pattern over HTTP: initialize a cluster profile, add and
//! remove members, list and count them, read and set roles — the
//! `fleetkv cluster` verbs (election is `POST …/elect` in
//! [`super::coord`]).
//!
//! Owns: these routes and their authorization — the embedded CLI's, every
//! cluster verb needs `machines/update/*` (a cluster verb may write many
//! machines, and reads go through the same claim so that a token gets the
//! same answer in both modes). Must not: implement membership or roles —
//! every handler calls [`Cluster`] ([`Cluster::init`], [`Cluster::open`] and
//! its `add`, `remove`, `members`, `count`, `role`, `set_role`) on the
//! blocking pool; nor touch coord.rs's routes.
//!
//! | method | path | what | claim |
//! |---|---|---|---|
//! | POST | `/api/v3/clusters/{name}` `{"Filter"}` (optional) | create or complete the cluster profile (the profile) | `machines/update/*` |
//! | GET, HEAD | `/api/v3/clusters/{name}/members?FILTER&sort=&limit=…` | the members matching the extra filter / their count (`X-DRP-List-Count`) | `machines/update/*` |
//! | POST, DELETE | `/api/v3/clusters/{name}/members/{machine}` | add / remove a member (the machine) | `machines/update/*` |
//! | GET, PUT | `/api/v3/clusters/{name}/members/{machine}/role` | the role (`"leader"`) / set it (the machine) | `machines/update/*` |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::api::{
    check_id, count_header, json_body, listing, ok, to_value, ApiResult, App, ListParams, St, JSON,
};
use super::auth::Principal;
use super::error::{ApiError, ApiErrorBody};
use crate::{Cluster, Role};

/// The body of `POST /api/v3/clusters/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Init {
    /// The member filter (default `Profiles Eq NAME`; an existing one is kept).
    #[serde(rename = "Filter")]
    filter: Option<String>,
}

/// A role word.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum RoleWord {
    Manager,
    Leader,
    Worker,
}

/// Every cluster verb: `machines/update/*`, as on the embedded store.
fn authorize(app: &App, who: &Principal) -> ApiResult<()> {
    app.auth.authorize(who, "machines", "update", "")
}

/// Creates or completes cluster profile NAME and the `cluster/*` params
/// (idempotent); answers the profile.
#[utoipa::path(post, path = "/api/v3/clusters/{name}",
    params(("name" = String, Path, description = "The cluster (profile) name")),
    request_body(content = Init, content_type = "application/json",
        description = "Optional: an empty body keeps the stored filter (default `Profiles Eq NAME`)"),
    responses((status = 200, description = "The cluster profile", body = Object),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
        (status = 415, body = ApiErrorBody)))]
pub async fn cluster_init(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_id(&name)?;
    authorize(&app, &who)?;
    let filter = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let (doc, _) = json_body(&headers, &body, JSON)?;
        let init: Init = serde_json::from_value(doc)
            .map_err(|e| ApiError::bad_request(format!("cluster init body: {e}")))?;
        init.filter
    };
    let v = app
        .on_pool(move |s| {
            Cluster::init(s, &name, filter.as_deref())?;
            s.profiles().get(&name).map(to_value)
        })
        .await?;
    Ok(ok(StatusCode::OK, v))
}

/// The members, narrowed by the query's filter, with the listing keys.
#[utoipa::path(get, path = "/api/v3/clusters/{name}/members",
    params(("name" = String, Path, description = "The cluster (profile) name"), ListParams),
    responses(
        (status = 200, description = "The members; their total in X-DRP-List-Count", body = Vec<Object>,
            headers(("X-DRP-List-Count" = u64, description = "Members matching before offset/limit"))),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn cluster_members(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&name)?;
    authorize(&app, &who)?;
    let (filter, opts) = listing(q.as_deref().unwrap_or(""))?;
    let (n, items) = app
        .on_pool(move |s| {
            let c = Cluster::open(s, &name)?;
            let n = c.count(filter.clone())?;
            c.members(filter, &opts).map(|items| (n, items))
        })
        .await?;
    Ok((count_header(n), Json(Value::Array(items))).into_response())
}

/// Counts the members matching the query's filter: headers only.
#[utoipa::path(head, path = "/api/v3/clusters/{name}/members",
    params(("name" = String, Path, description = "The cluster (profile) name"), ListParams),
    responses(
        (status = 200, description = "The count in X-DRP-List-Count",
            headers(("X-DRP-List-Count" = u64, description = "Members matching"))),
        (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn cluster_count(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&name)?;
    authorize(&app, &who)?;
    let (filter, _) = listing(q.as_deref().unwrap_or(""))?;
    let n = app
        .on_pool(move |s| Cluster::open(s, &name)?.count(filter))
        .await?;
    Ok((count_header(n), ()).into_response())
}

/// Adds the cluster profile to a machine; answers the machine.
#[utoipa::path(post, path = "/api/v3/clusters/{name}/members/{machine}",
    params(("name" = String, Path, description = "The cluster (profile) name"),
        ("machine" = String, Path, description = "Uuid, Name:…, Key:… or name")),
    responses((status = 200, description = "The machine", body = Object),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody)))]
pub async fn cluster_add(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path((name, machine)): Path<(String, String)>,
) -> ApiResult {
    membership(app, who, name, machine, true).await
}

/// Removes the cluster profile from a machine; answers the machine.
#[utoipa::path(delete, path = "/api/v3/clusters/{name}/members/{machine}",
    params(("name" = String, Path, description = "The cluster (profile) name"),
        ("machine" = String, Path, description = "Uuid, Name:…, Key:… or name")),
    responses((status = 200, description = "The machine", body = Object),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody)))]
pub async fn cluster_remove(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path((name, machine)): Path<(String, String)>,
) -> ApiResult {
    membership(app, who, name, machine, false).await
}

/// Adds (`join`) or removes the cluster profile; answers the machine.
async fn membership(
    app: Arc<App>,
    who: Principal,
    name: String,
    machine: String,
    join: bool,
) -> ApiResult {
    check_id(&name)?;
    check_id(&machine)?;
    authorize(&app, &who)?;
    let m = app
        .on_pool(move |s| {
            let c = Cluster::open(s, &name)?;
            if join {
                c.add(&machine)
            } else {
                c.remove(&machine)
            }
        })
        .await?;
    Ok(ok(StatusCode::OK, to_value(m)))
}

/// A member's role: `"manager"`, `"leader"` or `"worker"`.
#[utoipa::path(get, path = "/api/v3/clusters/{name}/members/{machine}/role",
    params(("name" = String, Path, description = "The cluster (profile) name"),
        ("machine" = String, Path, description = "Uuid, Name:…, Key:… or name")),
    responses((status = 200, description = "The role", body = RoleWord),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn cluster_role(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path((name, machine)): Path<(String, String)>,
) -> ApiResult {
    check_id(&name)?;
    check_id(&machine)?;
    authorize(&app, &who)?;
    let role = app
        .on_pool(move |s| Cluster::open(s, &name)?.role(&machine))
        .await?;
    Ok(ok(StatusCode::OK, json!(role)))
}

/// Sets a member's role (the body: `"manager"`, `"leader"` or `"worker"`)
/// in one write; answers the machine.
#[utoipa::path(put, path = "/api/v3/clusters/{name}/members/{machine}/role",
    params(("name" = String, Path, description = "The cluster (profile) name"),
        ("machine" = String, Path, description = "Uuid, Name:…, Key:… or name")),
    request_body(content = RoleWord, content_type = "application/json"),
    responses((status = 200, description = "The machine", body = Object),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
        (status = 415, body = ApiErrorBody)))]
pub async fn cluster_set_role(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path((name, machine)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_id(&name)?;
    check_id(&machine)?;
    authorize(&app, &who)?;
    let (doc, _) = json_body(&headers, &body, JSON)?;
    let role: Role = doc
        .as_str()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "role: expected \"manager\", \"leader\" or \"worker\", found {doc}"
            ))
        })?
        .parse()?;
    let m = app
        .on_pool(move |s| Cluster::open(s, &name)?.set_role(&machine, role))
        .await?;
    Ok(ok(StatusCode::OK, to_value(m)))
}
