//! The `/api/v3` handlers and the OpenAPI document generated from them.
//!
//! One generic set of handlers serves `machines`, `profiles` and `params`
//! (the `{kind}` path segment). Reads call the store directly (µs-fast);
//! writes go through `App::write`, which moves durable (fsyncing) writes
//! off the async workers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::{Authenticator, Principal};
use super::coord;
use super::error::{ApiError, ApiErrorBody};
use super::extract::{
    Delete, Get, Listing, ParamSet, ParamsGet, ParamsPatch, Patch, Target, Update,
};
use super::leases::WriteGuards;
use crate::{Error, Filter, Kind, ListOptions, Machine, ParamDef, Profile, Store};

/// The header carrying a list's total count (before `offset`/`limit`).
pub const LIST_COUNT: &str = "x-drp-list-count";
/// The header carrying a param CAS's expected value (JSON, or `absent`).
pub const EXPECT: &str = "x-fleetkv-expect";

/// What the handlers share.
pub struct App {
    /// The one store.
    pub store: Store,
    /// Credentials and claims.
    pub auth: Authenticator,
    /// Writes fsync: run them on the blocking pool.
    pub durable: bool,
    /// Permits for long-poll waits and event streams.
    pub waiters: Arc<tokio::sync::Semaphore>,
    /// How many permits `waiters` started with (`--max-waiters`).
    pub max_waiters: usize,
    /// Renders `GET /metrics`; `None` when another recorder was installed
    /// in this process first.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Longest a long-poll wait may block (under the request timeout).
    pub max_wait: std::time::Duration,
    /// Set when the server stops: event streams end instead of holding the
    /// graceful stop open.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

pub(crate) type St = State<Arc<App>>;
pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

impl App {
    /// Runs a write: inline when it does not wait for the disk, else on the
    /// blocking pool.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        if !self.durable {
            return f(&self.store);
        }
        self.on_pool(f).await
    }

    /// Runs `f` on the blocking pool, so no async worker ever blocks.
    pub(crate) async fn on_pool<T: Send + 'static, E: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
    ) -> ApiResult<T>
    where
        ApiError: From<E>,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())
            })?
            .map_err(ApiError::from)
    }
}

/// The collections (`{kind}`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum Collection {
    Machines,
    Profiles,
    Params,
}

/// One RFC 6902 operation.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PatchOp {
    /// `add`, `remove`, `replace`, `move`, `copy` or `test`.
    #[schema(pattern = "^(add|remove|replace|move|copy|test)$")]
    op: String,
    /// JSON Pointer of the target.
    path: String,
    /// The value (add, replace, test).
    #[schema(value_type = Object)]
    value: Option<Value>,
    /// The source (move, copy).
    from: Option<String>,
}

/// Listing keys of the query string; every other key is a filter
/// (`Name=Eq(fred)&Params.cluster/leader=Eq(true)`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ListParams {
    /// Sort by this key.
    sort: Option<String>,
    /// Return at most this many.
    limit: Option<usize>,
    /// Skip this many.
    offset: Option<usize>,
    /// Reverse the order (`true`).
    reverse: Option<bool>,
    /// Leave these fields out (`Params,Meta`).
    slim: Option<String>,
    /// Return only these params (comma-separated).
    params: Option<String>,
    /// Effective params (`true`).
    aggregate: Option<bool>,
    /// Accepted for DRP's clients; no effect (secure params are stored as sent).
    decode: Option<bool>,
    /// fleetkv extension: a filter in fleetkv's text form (`Name Eq a Or Name Eq b`), ANDed with the others.
    filter: Option<String>,
    /// Machines and profiles, with `range-only=true`: answer how many match per
    /// distinct value of this key (a field, `Params.NAME`, `Meta.KEY`) instead of
    /// the objects, as `[{"Value": v, "Count": n}]`, from the indexes. Repeat it
    /// to split each group by the next key (`"Groups"`).
    #[serde(rename = "group-by")]
    group_by: Option<Vec<String>>,
    /// With `group-by`: counts only (`true`). Required: grouped objects are not served.
    #[serde(rename = "range-only")]
    range_only: Option<bool>,
}

/// `?aggregate=true`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AggregateParam {
    /// Effective params (own → profiles → global → default).
    aggregate: Option<bool>,
    /// Accepted for DRP's clients; no effect (secure params are stored as sent).
    decode: Option<bool>,
}

/// `GET /api/v3/info`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    /// Always `fleetkv`.
    id: String,
    /// The server's version.
    version: String,
    /// The store's revision.
    revision: u64,
}

/// `GET /api/v3/check`: what was checked.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct CheckReply {
    /// The revision the indexes and the documents agreed at.
    revision: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetkv",
        description = "DRP's /api/v3 subset: machines, profiles and params. \
        Authenticate with `Authorization: Bearer <admin key or token>` or basic auth. \
        Param compare-and-set: `POST .../params/{key}` with `X-Fleetkv-Expect: <JSON or absent>`; \
        object compare-and-set: `PATCH` with `test` operations. \
        Coordination: profile tokens, long-poll waits, leader election, workflows on many machines, \
        template rendering and the change events as server-sent events."
    ),
    paths(
        info,
        openapi,
        list,
        count,
        create,
        show,
        replace,
        patch,
        destroy,
        params,
        patch_params,
        replace_params,
        get_param,
        set_param,
        remove_param,
        super::transfer::export,
        super::transfer::import,
        super::cluster::cluster_init,
        super::cluster::cluster_members,
        super::cluster::cluster_count,
        super::cluster::cluster_add,
        super::cluster::cluster_remove,
        super::cluster::cluster_role,
        super::cluster::cluster_set_role,
        coord::token,
        coord::count_wait,
        coord::wait_machine,
        coord::elect,
        coord::workflow_all,
        coord::render,
        coord::events,
        super::leases::grant,
        super::leases::list,
        super::leases::show,
        super::leases::keep_alive,
        super::leases::revoke,
        super::leases::campaign,
        super::leases::resign,
        super::leases::leaders,
        coord::watch_members,
        super::metrics::scrape,
        check
    ),
    components(schemas(
        ApiErrorBody,
        PatchOp,
        Info,
        CheckReply,
        Collection,
        coord::TokenReply,
        super::leases::Grant,
        super::leases::LeaseBody,
        coord::CountReply,
        coord::WaitReply,
        coord::SseMessage,
        coord::WorkflowAll,
        crate::WorkflowReport,
        crate::cluster::WorkflowFailure
    ))
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// This document (OpenAPI 3.1), generated from the code.
#[utoipa::path(get, path = "/api/v3/openapi.json",
    responses((status = 200, description = "The OpenAPI document", body = Object),
        (status = 401, body = ApiErrorBody)))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// Health and version; the one unauthenticated call.
#[utoipa::path(get, path = "/api/v3/info", responses((status = 200, body = Info)))]
pub async fn info(State(app): St) -> Json<Info> {
    Json(Info {
        id: "fleetkv".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: app.store.revision(),
    })
}

/// Rebuilds this server's indexes from the stored documents and compares
/// them with the live ones ([`Store::verify_indexes`]): on several servers
/// over one etcd, each answers for its own indexes. It reads every
/// document, so only the admin key and users may ask.
#[utoipa::path(get, tag = "operations", path = "/api/v3/check",
    responses(
        (status = 200, body = CheckReply, description = "The indexes equal a rebuild from the documents"),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "A token: the check is for the admin key and users", body = ApiErrorBody),
        (status = 500, description = "The indexes differ from the documents (`Corrupt`, naming the difference)", body = ApiErrorBody),
        (status = 503, description = "Other servers kept writing while the check read; check again", body = ApiErrorBody)))]
pub async fn check(
    State(app): St,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<CheckReply>> {
    if let Principal::Token(_) = who {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the index check is for the admin key and users, not tokens",
        ));
    }
    app.on_pool(|store| {
        store.verify_indexes()?;
        Ok::<_, Error>(CheckReply {
            revision: store.revision(),
        })
    })
    .await
    .map(Json)
}

/// Jobs are created by rendering and read by Uuid: no collection route
/// reaches them ([`kind_of`] never yields [`Kind::Job`]).
/// The `X-Fleetkv-Lease` / `X-Fleetkv-Fence` of a write: machines only.
fn machine_guards(kind: Kind, headers: &HeaderMap) -> ApiResult<WriteGuards> {
    let g = WriteGuards::of(headers)?;
    if kind != Kind::Machine {
        g.only_machines()?;
    }
    Ok(g)
}

fn no_jobs() -> Error {
    Error::invalid("kind", "jobs and leases are not collections of objects")
}

pub(crate) fn kind_of(s: &str) -> ApiResult<Kind> {
    match s {
        "machines" => Ok(Kind::Machine),
        "profiles" => Ok(Kind::Profile),
        "params" => Ok(Kind::Param),
        _ => Err(ApiError::not_found(format!("no collection {s:?}"))),
    }
}

/// A machine or profile key from one (decoded) path segment: such a name
/// cannot hold a `/`, so an encoded slash (`%2F`) is refused here. Empty,
/// dot and non-UTF-8 segments never get this far (see [`check_segments`]).
pub(crate) fn check_id(id: &str) -> ApiResult<()> {
    if id.contains('/') {
        return Err(ApiError::bad_request(format!(
            "path segment {id:?}: a machine or profile name cannot hold '/'"
        ))
        .about("", id));
    }
    Ok(())
}

/// The key of a `{kind}` object: param definitions are named like the
/// params they define, so theirs may hold `/` (`/params/my%2Fdata`).
pub(crate) fn check_key_of(kind: Kind, id: &str) -> ApiResult<()> {
    match kind {
        Kind::Param => Ok(()),
        _ => check_id(id).map_err(|e| e.about(kind.plural(), id)),
    }
}

pub(crate) fn with_params(kind: Kind) -> ApiResult<()> {
    if kind == Kind::Param {
        return Err(ApiError::bad_request(
            "params (definitions) have no params: use machines or profiles",
        ));
    }
    Ok(())
}

pub(crate) fn to_value<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(crate) fn ok(status: StatusCode, v: Value) -> Response {
    (status, Json(v)).into_response()
}

/// Percent-decodes `s`, `+` as a space when `plus` (query strings, not
/// paths); the error gives the offset of a `%` without two hex digits.
fn unescape(s: &str, plus: bool) -> Result<Vec<u8>, usize> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(i)?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

/// Decodes a query-string part: `%XX` and `+`.
pub(crate) fn url_decode(s: &str) -> ApiResult<String> {
    let out =
        unescape(s, true).map_err(|i| ApiError::bad_request(format!("bad %-escape at {i}")))?;
    String::from_utf8(out).map_err(|_| ApiError::bad_request("query is not UTF-8"))
}

/// Checks the path after `/api/v3/`: each segment, percent-decoded once,
/// must be UTF-8 without NUL, and neither it nor any `/`-separated part of
/// it (`%2F` decodes to a slash: `params/my%2Fdata`) may be empty, `.` or
/// `..`. axum decodes the same segments once for `Path`; this refuses, with
/// a 400 naming the segment, what no handler could take. Whether a name may
/// hold `/` at all depends on its kind: see [`check_id`].
pub(crate) fn check_segments(path: &str) -> ApiResult<()> {
    for raw in path.split('/') {
        let bad = |why: String| {
            Err(ApiError::bad_request(format!("path segment {raw:?} {why}")).about("", raw))
        };
        if raw.is_empty() {
            return bad("is empty".to_string());
        }
        // Nothing to decode (the common case): checked as it is.
        if !raw.contains('%') {
            if matches!(raw, "." | "..") {
                return bad(format!("decodes to {raw:?}: an empty, . or .. name part"));
            }
            continue;
        }
        let text = match unescape(raw, false).map(String::from_utf8) {
            Err(i) => return bad(format!("has a bad %-escape at {i}")),
            Ok(Err(_)) => return bad("does not decode to UTF-8".to_string()),
            Ok(Ok(t)) => t,
        };
        if text.contains('\0') {
            return bad("decodes to a NUL".to_string());
        }
        if text.split('/').any(|p| matches!(p, "" | "." | "..")) {
            return bad(format!("decodes to {text:?}: an empty, . or .. name part"));
        }
    }
    Ok(())
}

/// A boolean query value, spelt as DRP's Go parser takes it (the Python
/// SDK sends `True`); a bare key (`?reverse`) is true, as before.
fn flag(key: &str, v: &str) -> ApiResult<bool> {
    if v.is_empty() {
        return Ok(true);
    }
    crate::wire::parse_bool_named(key, v).map_err(ApiError::bad_request)
}

fn number(key: &str, v: &str) -> ApiResult<usize> {
    v.parse()
        .map_err(|_| ApiError::bad_request(format!("{key}={v}: expected a number")))
}

fn csv(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The filter and listing options of a list/count query string. Listing
/// keys are blanked out in place so that filter error offsets still point
/// into the text the client sent.
pub(crate) fn listing(query: &str) -> ApiResult<(Filter, ListOptions)> {
    let mut opts = ListOptions::default();
    let mut rest = query.as_bytes().to_vec();
    let mut extra: Option<Filter> = None;
    let mut at = 0;
    for part in query.split('&') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = url_decode(k)?;
        let listing_key = matches!(
            key.as_str(),
            "sort"
                | "limit"
                | "offset"
                | "reverse"
                | "slim"
                | "params"
                | "aggregate"
                | "decode"
                | "filter"
                | "group-by"
                | "range-only"
        );
        if listing_key {
            let v = url_decode(v)?;
            match key.as_str() {
                "sort" => opts.sort = Some(v),
                "limit" => opts.limit = Some(number(&key, &v)?),
                "offset" => opts.offset = number(&key, &v)?,
                "reverse" => opts.reverse = flag(&key, &v)?,
                "aggregate" => opts.aggregate = flag(&key, &v)?,
                // Secure params are stored as sent: always "decoded".
                "decode" => {
                    flag(&key, &v)?;
                }
                "slim" => opts.slim = csv(&v),
                "params" => opts.params = Some(csv(&v)),
                // Read by `grouping`; only checked here.
                "group-by" => {}
                "range-only" => {
                    flag(&key, &v)?;
                }
                _ => {
                    let f = Filter::parse(&v).map_err(Error::from)?;
                    extra = Some(match extra {
                        Some(e) => e.and(f),
                        None => f,
                    });
                }
            }
            rest[at..at + part.len()].fill(b'&');
        }
        at += part.len() + 1;
    }
    let rest = String::from_utf8(rest).map_err(|_| ApiError::bad_request("query is not UTF-8"))?;
    let mut filter = Filter::from_query(&rest).map_err(Error::from)?;
    if let Some(e) = extra {
        filter = filter.and(e);
    }
    Ok((filter, opts))
}

/// DRP's `group-by` keys (repeatable) when the query asks for counts per
/// value (`range-only=true`). Grouped objects (`group-by` alone) are not
/// served: a 400 says so.
pub(crate) fn grouping(query: &str) -> ApiResult<Option<Vec<String>>> {
    let (mut by, mut range_only) = (Vec::new(), false);
    for part in query.split('&') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match url_decode(k)?.as_str() {
            "group-by" => by.push(url_decode(v)?),
            "range-only" => range_only = flag("range-only", &url_decode(v)?)?,
            _ => {}
        }
    }
    match (by.is_empty(), range_only) {
        (true, false) => Ok(None),
        (false, true) => Ok(Some(by)),
        (true, true) => Err(ApiError::bad_request(
            "range-only=true counts the groups of group-by: give group-by=KEY",
        )),
        (false, false) => Err(ApiError::bad_request(
            "group-by answers counts per value only: add range-only=true \
             (fleetkv does not return objects grouped by value)",
        )),
    }
}

pub(crate) fn count_header(n: u64) -> [(HeaderName, HeaderValue); 1] {
    [(HeaderName::from_static(LIST_COUNT), HeaderValue::from(n))]
}

/// Lists objects matching the query-string filter.
#[utoipa::path(get, path = "/api/v3/{kind}",
    params(("kind" = Collection, Path, description = "machines, profiles or params"), ListParams),
    responses(
        (status = 200, description = "The matching objects (with group-by and range-only: the count per value, [{\"Value\": v, \"Count\": n}]); the total in X-DRP-List-Count", body = Vec<Object>,
            headers(("X-DRP-List-Count" = u64, description = "Matches before offset/limit"))),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub(crate) async fn list(
    State(app): St,
    Listing { kind }: Listing,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let q = q.as_deref().unwrap_or("");
    let (filter, opts) = listing(q)?;
    let objects = app.store.objects(kind)?;
    if let Some(by) = grouping(q)? {
        if kind == Kind::Param {
            return Err(ApiError::bad_request(
                "group-by counts machines and profiles, not params",
            ));
        }
        let groups = objects.group_count(&filter, &by)?;
        let n = groups.iter().map(|g| g.count).sum();
        return Ok((count_header(n), Json(groups)).into_response());
    }
    let (n, items) = objects.list_counted(&filter, &opts)?;
    Ok((count_header(n), Json(Value::Array(items))).into_response())
}

/// Counts objects matching the filter: headers only, from the indexes.
#[utoipa::path(head, path = "/api/v3/{kind}",
    params(("kind" = Collection, Path, description = "machines, profiles or params"), ListParams),
    responses(
        (status = 200, description = "The count in X-DRP-List-Count",
            headers(("X-DRP-List-Count" = u64, description = "Matches"))),
        (status = 400), (status = 401), (status = 404)))]
pub(crate) async fn count(
    State(app): St,
    Listing { kind }: Listing,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (filter, _) = listing(q.as_deref().unwrap_or(""))?;
    let n = app.store.objects(kind)?.count(&filter)?;
    Ok((count_header(n), ()).into_response())
}

/// A JSON body, after checking the content type against `allowed` (a
/// missing content type is taken as JSON).
pub(crate) fn json_body(
    headers: &HeaderMap,
    body: &Bytes,
    allowed: &[&str],
) -> ApiResult<(Value, String)> {
    let ct = match headers.get(header::CONTENT_TYPE) {
        None => "application/json".to_string(),
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::media_type("Content-Type is not text"))?
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    };
    if !allowed.contains(&ct.as_str()) {
        return Err(ApiError::media_type(format!(
            "Content-Type {ct:?}: expected {}",
            allowed.join(" or ")
        )));
    }
    let v = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    Ok((v, ct))
}

fn decode<T: serde::de::DeserializeOwned>(kind: Kind, doc: Value) -> ApiResult<T> {
    if !doc.is_object() {
        return Err(ApiError::bad_request(format!(
            "{kind}: expected a JSON object"
        )));
    }
    serde_json::from_value(doc).map_err(|e| ApiError::bad_request(format!("{kind} JSON: {e}")))
}

pub(crate) const JSON: &[&str] = &["application/json"];

/// Creates an object. A token needs `create` on the new object's Name (or,
/// for a machine, on the Uuid it is created with).
#[utoipa::path(post, path = "/api/v3/{kind}",
    params(("kind" = Collection, Path, description = "machines, profiles or params")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 201, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody),
        (status = 415, body = ApiErrorBody)))]
pub async fn create(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = kind_of(&kind)?;
    let (doc, _) = json_body(&headers, &body, JSON)?;
    // Decoded before the claims check: as a scoped handle's `create`, a
    // token is judged on the new object's Name (or a machine's Uuid).
    let new = match kind {
        Kind::Machine => New::Machine(decode(kind, doc)?),
        Kind::Profile => New::Profile(decode(kind, doc)?),
        Kind::Param => New::Param(decode(kind, doc)?),
        Kind::Job | Kind::Lease => Err(no_jobs())?,
    };
    let (name, uuid) = match &new {
        New::Machine(m) => (m.name.as_str(), Some(&m.uuid)),
        New::Profile(p) => (p.name.as_str(), None),
        New::Param(d) => (d.name.as_str(), None),
    };
    app.auth.authorize_new(&who, kind.plural(), name, uuid)?;
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| {
            Ok(match new {
                New::Machine(m) => to_value(guards.machines(s).create(m)?),
                New::Profile(p) => to_value(s.profiles().create(p)?),
                New::Param(d) => to_value(s.params().create(d)?),
            })
        })
        .await?;
    Ok(ok(StatusCode::CREATED, v))
}

/// A decoded object for `create`.
enum New {
    Machine(Machine),
    Profile(Profile),
    Param(ParamDef),
}

fn get_obj(s: &Store, kind: Kind, id: &str) -> ApiResult<Value> {
    Ok(s.objects(kind)?.get(id)?)
}

/// Shows one object (`aggregate=true`: a machine or profile with its
/// effective params).
#[utoipa::path(get, path = "/api/v3/{kind}/{id}",
    params(("kind" = Collection, Path, description = "machines, profiles or params"),
        ("id" = String, Path, description = "Uuid, Name:…, Key:… or name"), AggregateParam),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub(crate) async fn show(
    State(app): St,
    Target { kind, id, .. }: Target<Get>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let aggregate = aggregate_of(q.as_deref())? && kind != Kind::Param;
    let mut v = get_obj(&app.store, kind, &id)?;
    if aggregate {
        // Two reads, as DRP's own aggregate is computed apart from the
        // object; a write in between shows in the params only.
        v["Params"] = Value::Object(params_of(&app.store, kind, &id, true)?);
    }
    Ok(ok(StatusCode::OK, v))
}

/// Replaces one object.
#[utoipa::path(put, path = "/api/v3/{kind}/{id}",
    params(("kind" = Collection, Path, description = "machines, profiles or params"), ("id" = String, Path)),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 415, body = ApiErrorBody)))]
pub(crate) async fn replace(
    State(app): St,
    Target { kind, id, .. }: Target<Update>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (doc, _) = json_body(&headers, &body, JSON)?;
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| {
            Ok(match kind {
                Kind::Machine => to_value(guards.machines(s).replace(&id, decode(kind, doc)?)?),
                Kind::Profile => to_value(s.profiles().replace(&id, decode(kind, doc)?)?),
                Kind::Param => to_value(s.params().replace(&id, decode(kind, doc)?)?),
                Kind::Job | Kind::Lease => Err(no_jobs())?,
            })
        })
        .await?;
    Ok(ok(StatusCode::OK, v))
}

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/json",
    crate::wire::REFERENCE_UPDATE,
];

fn apply_patch(
    s: &Store,
    kind: Kind,
    id: &str,
    doc: &Value,
    merge: bool,
    guards: WriteGuards,
) -> ApiResult<Value> {
    let objects = guards.objects(s, kind)?;
    Ok(match merge {
        false => objects.patch(id, doc)?,
        true => objects.merge(id, doc)?,
    })
}

/// Patches one object: an RFC 6902 array (`application/json-patch+json`;
/// its `test` operations make it a compare-and-set) or a merge patch
/// (`application/merge-patch+json`). With `application/json` an array is a
/// JSON Patch and an object a merge patch. fleetkv extension: with
/// `application/vnd.fleetkv.reference+json`, `{"Reference", "Desired"}` is
/// a reference update (drpcli's `-r`): every path that differs between them
/// must still hold the reference's value, or still be absent (409 if not).
#[utoipa::path(patch, path = "/api/v3/{kind}/{id}",
    params(("kind" = Collection, Path, description = "machines, profiles or params"), ("id" = String, Path)),
    request_body(content = Vec<PatchOp>, content_type = "application/json-patch+json"),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 415, body = ApiErrorBody)))]
pub(crate) async fn patch(
    State(app): St,
    Target { kind, id, .. }: Target<Patch>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (doc, ct) = json_body(&headers, &body, PATCH_TYPES)?;
    if ct == crate::wire::REFERENCE_UPDATE {
        let part = |name: &str| match doc.get(name) {
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            _ => Err(ApiError::bad_request(format!(
                "reference update: {name} must be a JSON object"
            ))),
        };
        let (reference, desired) = (part("Reference")?, part("Desired")?);
        let guards = machine_guards(kind, &headers)?;
        let v = app
            .write(move |s| {
                Ok(guards
                    .objects(s, kind)?
                    .update_from(&id, &reference, &desired)?)
            })
            .await?;
        return Ok(ok(StatusCode::OK, v));
    }
    let merge = match ct.as_str() {
        "application/merge-patch+json" => true,
        "application/json-patch+json" => false,
        _ => doc.is_object(),
    };
    if !merge && !doc.is_array() {
        return Err(crate::store::not_a_patch(&doc).into());
    }
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| apply_patch(s, kind, &id, &doc, merge, guards))
        .await?;
    Ok(ok(StatusCode::OK, v))
}

/// Deletes one object; answers it as it was.
#[utoipa::path(delete, path = "/api/v3/{kind}/{id}",
    params(("kind" = Collection, Path, description = "machines, profiles or params"), ("id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(crate) async fn destroy(
    State(app): St,
    Target { kind, id, .. }: Target<Delete>,
    headers: HeaderMap,
) -> ApiResult {
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| Ok(guards.objects(s, kind)?.delete(&id)?))
        .await?;
    Ok(ok(StatusCode::OK, v))
}

fn params_of(
    s: &Store,
    kind: Kind,
    id: &str,
    aggregate: bool,
) -> ApiResult<serde_json::Map<String, Value>> {
    Ok(s.objects(kind)?.params(id, aggregate)?)
}

/// An object's params (`aggregate=true`: the effective ones).
#[utoipa::path(get, path = "/api/v3/{kind}/{id}/params",
    params(("kind" = Collection, Path, description = "machines or profiles"), ("id" = String, Path), AggregateParam),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub(crate) async fn params(
    State(app): St,
    Target { kind, id, .. }: Target<ParamsGet>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let aggregate = aggregate_of(q.as_deref())?;
    let v = params_of(&app.store, kind, &id, aggregate)?;
    Ok(ok(StatusCode::OK, Value::Object(v)))
}

/// `?aggregate=` of a one-object read. `decode` is checked like every DRP
/// boolean but changes nothing (secure params are stored as sent); other
/// keys (`commented`, `reduced`…) are ignored.
fn aggregate_of(q: Option<&str>) -> ApiResult<bool> {
    let mut out = false;
    for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match url_decode(k)?.as_str() {
            "aggregate" => out = flag("aggregate", &url_decode(v)?)?,
            "decode" => {
                flag("decode", &url_decode(v)?)?;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Prefixes each operation's `path` and `from` with `/Params`.
fn under_params(ops: Value) -> ApiResult<Value> {
    let Value::Array(ops) = ops else {
        return Err(crate::store::not_a_patch(&ops).into());
    };
    ops.into_iter()
        .map(|mut op| {
            let o = op
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("a patch operation is an object"))?;
            for field in ["path", "from"] {
                match o.get(field) {
                    None => {}
                    Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => {
                        let p = format!("/Params{p}");
                        o.insert(field.to_string(), Value::String(p));
                    }
                    Some(_) => {
                        return Err(ApiError::bad_request(format!(
                            "patch {field}: expected a JSON Pointer"
                        )))
                    }
                }
            }
            Ok(op)
        })
        .collect::<ApiResult<Vec<Value>>>()
        .map(Value::Array)
}

/// RFC 6902 on the params map, atomically; answers the params after it.
#[utoipa::path(patch, path = "/api/v3/{kind}/{id}/params",
    params(("kind" = Collection, Path, description = "machines or profiles"), ("id" = String, Path)),
    request_body(content = Vec<PatchOp>, content_type = "application/json-patch+json"),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 415, body = ApiErrorBody)))]
pub(crate) async fn patch_params(
    State(app): St,
    Target { kind, id, .. }: Target<ParamsPatch>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (doc, _) = json_body(
        &headers,
        &body,
        &["application/json-patch+json", "application/json"],
    )?;
    let ops = under_params(doc)?;
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| apply_patch(s, kind, &id, &ops, false, guards))
        .await?;
    Ok(ok(
        StatusCode::OK,
        v.get("Params").cloned().unwrap_or(json!({})),
    ))
}

/// Replaces all of the object's params with the posted object (DRP's `POST
/// …/params`), in one write; answers the params after it. Needs the
/// `param-set` claim, like setting or removing one param.
#[utoipa::path(post, path = "/api/v3/{kind}/{id}/params",
    params(("kind" = Collection, Path, description = "machines or profiles"), ("id" = String, Path)),
    request_body(content = Object, description = "Every param the object is to hold", content_type = "application/json"),
    responses((status = 200, description = "The params now held", body = Object), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody), (status = 415, body = ApiErrorBody)))]
pub(crate) async fn replace_params(
    State(app): St,
    Target { kind, id, .. }: Target<ParamSet>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (doc, _) = json_body(&headers, &body, JSON)?;
    if !doc.is_object() {
        return Err(ApiError::bad_request("params: expected a JSON object"));
    }
    // One JSON Patch op: the store checks every value against its schema
    // and writes the whole map atomically, as for any other patch.
    let ops = json!([{"op": "add", "path": "/Params", "value": doc}]);
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| apply_patch(s, kind, &id, &ops, false, guards))
        .await?;
    Ok(ok(
        StatusCode::OK,
        v.get("Params").cloned().unwrap_or(json!({})),
    ))
}

/// One param's value (`null` when unset).
#[utoipa::path(get, path = "/api/v3/{kind}/{id}/params/{key}",
    params(("kind" = Collection, Path, description = "machines or profiles"), ("id" = String, Path),
        ("key" = String, Path, description = "The param name; may contain /"), AggregateParam),
    responses((status = 200, description = "The value (any JSON; `null` when unset)", body = Value), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub(crate) async fn get_param(
    State(app): St,
    Target { kind, id, key, .. }: Target<ParamsGet>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let aggregate = aggregate_of(q.as_deref())?;
    let v = params_of(&app.store, kind, &id, aggregate)?.shift_remove(&key);
    Ok(ok(StatusCode::OK, v.unwrap_or(Value::Null)))
}

/// Sets one param to the JSON body. With `X-Fleetkv-Expect: <JSON>` (or
/// `absent`; `null` means absent too) it is a compare-and-set: 409 unless the
/// param's own value (or its default) is the expected one.
#[utoipa::path(post, path = "/api/v3/{kind}/{id}/params/{key}",
    params(("kind" = Collection, Path, description = "machines or profiles"), ("id" = String, Path),
        ("key" = String, Path, description = "The param name; may contain /"),
        ("X-Fleetkv-Expect" = Option<String>, Header, description = "Compare-and-set: the expected value as JSON, or absent")),
    request_body(content = Value, description = "The value: any JSON", content_type = "application/json"),
    responses((status = 200, description = "The value set", body = Value), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 415, body = ApiErrorBody)))]
pub(crate) async fn set_param(
    State(app): St,
    Target { kind, id, key, .. }: Target<ParamSet>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (value, _) = json_body(&headers, &body, JSON)?;
    let expect = match headers.get(EXPECT) {
        None => None,
        Some(h) => {
            let t = h
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Fleetkv-Expect is not text"))?
                .trim();
            Some(match t {
                "absent" => None,
                t => match serde_json::from_str::<Value>(t) {
                    Ok(Value::Null) => None,
                    Ok(v) => Some(v),
                    Err(e) => {
                        return Err(ApiError::bad_request(format!(
                            "X-Fleetkv-Expect: expected JSON or absent: {e}"
                        )))
                    }
                },
            })
        }
    };
    let out = value.clone();
    let guards = machine_guards(kind, &headers)?;
    app.write(move |s| {
        let expect = expect.as_ref().map(Option::as_ref);
        guards
            .objects(s, kind)?
            .set_param_value(&id, &key, expect, value)?;
        Ok(())
    })
    .await?;
    Ok(ok(StatusCode::OK, out))
}

/// Removes one param; answers its old value (`null` if it had none).
#[utoipa::path(delete, path = "/api/v3/{kind}/{id}/params/{key}",
    params(("kind" = Collection, Path, description = "machines or profiles"), ("id" = String, Path),
        ("key" = String, Path, description = "The param name; may contain /")),
    responses((status = 200, description = "The old value (`null` if it had none)", body = Value), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub(crate) async fn remove_param(
    State(app): St,
    Target { kind, id, key, .. }: Target<ParamSet>,
    headers: HeaderMap,
) -> ApiResult {
    let guards = machine_guards(kind, &headers)?;
    let v = app
        .write(move |s| Ok(guards.objects(s, kind)?.remove_param(&id, &key)?))
        .await?;
    Ok(ok(StatusCode::OK, v.unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keys_are_blanked() {
        let (f, o) = listing("limit=5&Name=Eq(fred)&slim=Params,Meta&reverse").unwrap();
        assert_eq!(o.limit, Some(5));
        assert!(o.reverse);
        assert_eq!(o.slim, vec!["Params", "Meta"]);
        assert!(!f.is_all());
        assert!(listing("limit=x").is_err());
        assert!(listing("Name=Foo(x)").is_err());
    }

    #[test]
    fn params_ops_are_prefixed() {
        let v = under_params(json!([{"op": "test", "path": "/a~1b", "value": 1}])).unwrap();
        assert_eq!(v[0]["path"], "/Params/a~1b");
        assert!(under_params(json!({})).is_err());
    }
}
