//! Leases and campaigns over HTTP: `/api/v3/leases…` (grant, keep-alive,
//! revoke, show, list), the `X-Fleetkv-Lease` / `X-Fleetkv-Fence` headers
//! of machine writes, and `/api/v3/clusters/{name}/campaign|resign|leaders`.
//!
//! Owns: these endpoints' shapes and claims (`leases/*` for leases,
//! `machines/update` for campaigns). Must not: keep lease time (the store
//! does) or decide what a write changes.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::Extension;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::api::{check_id, ok, to_value, ApiResult, St};
use super::auth::Principal;
use super::error::{ApiError, ApiErrorBody};
use crate::cluster::Cluster;
use crate::error::Error;
use crate::model::Kind;
use crate::store::{Machines, Objects, Store};

/// Header of a machine write made under a lease (its id).
pub(crate) const LEASE_HEADER: &str = "x-fleetkv-lease";
/// Header of a machine write that requires a leadership's fencing token.
pub(crate) const FENCE_HEADER: &str = "x-fleetkv-fence";

/// The lease and fence a machine write names in its headers.
#[derive(Clone, Copy, Default)]
pub(crate) struct WriteGuards {
    lease: Option<u64>,
    fence: Option<u64>,
}

impl WriteGuards {
    pub(crate) fn of(headers: &HeaderMap) -> ApiResult<WriteGuards> {
        let number = |name: &str| -> ApiResult<Option<u64>> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .map(Some)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("{name}: expected a whole number"))
                    }),
            }
        };
        Ok(WriteGuards {
            lease: number(LEASE_HEADER)?,
            fence: number(FENCE_HEADER)?,
        })
    }

    /// The collection of `kind` carrying them (a lease or fence on another
    /// kind's write is refused there).
    pub(crate) fn objects(self, s: &Store, kind: Kind) -> crate::Result<Objects<'_>> {
        Ok(s.objects(kind)?
            .with_lease(self.lease)
            .with_fence(self.fence.map(Cluster::fenced_by)))
    }

    /// The machines handle carrying them.
    pub(crate) fn machines(self, s: &Store) -> Machines<'_> {
        let mut m = s.machines();
        if let Some(l) = self.lease {
            m = m.with_lease(l);
        }
        if let Some(f) = self.fence {
            m = m.with_fence(Cluster::fenced_by(f));
        }
        m
    }

    /// Refuses them on a write they do not apply to (profiles, params).
    pub(crate) fn only_machines(self) -> ApiResult<()> {
        if self.lease.is_some() || self.fence.is_some() {
            return Err(ApiError::bad_request(
                "X-Fleetkv-Lease and X-Fleetkv-Fence apply to machine writes only",
            ));
        }
        Ok(())
    }
}

/// The body of `POST /api/v3/leases`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Seconds: each renewal moves the deadline this far ahead (1 to the
    /// server's `--max-lease-ttl`).
    #[serde(rename = "TTL")]
    #[schema(minimum = 1)]
    ttl: i64,
}

/// A lease.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LeaseBody {
    #[schema(rename = "ID")]
    id: u64,
    #[schema(rename = "TTL")]
    ttl: u64,
    /// Seconds left unless renewed.
    #[schema(rename = "Remaining")]
    remaining: f64,
    /// What it holds: `{Machine, Param|Meta, Value}` or `{Machine}` (the
    /// whole machine).
    #[schema(rename = "Holds", value_type = Vec<Object>)]
    holds: Vec<Value>,
}

fn lease_id(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("lease {s:?}: expected a lease id")))
}

/// Grants a lease.
#[utoipa::path(post, tag = "leases", path = "/api/v3/leases",
    request_body(content = Grant, content_type = "application/json"),
    responses((status = 201, body = LeaseBody), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody)))]
pub async fn grant(
    State(app): St,
    Extension(who): Extension<Principal>,
    body: axum::body::Bytes,
) -> ApiResult {
    app.auth.authorize(&who, "leases", "create", "")?;
    let g: Grant =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("lease: {e}")))?;
    let ttl = u64::try_from(g.ttl).map_err(|_| {
        ApiError::from(Error::Invalid {
            what: "lease TTL".into(),
            reason: format!("{} s is out of range: a TTL is at least 1 second", g.ttl),
        })
    })?;
    let lease = app.on_pool(move |s| s.leases().grant(ttl)).await?;
    Ok(ok(StatusCode::CREATED, to_value(lease)))
}

/// Every lease.
#[utoipa::path(get, tag = "leases", path = "/api/v3/leases",
    responses((status = 200, body = Vec<LeaseBody>), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody)))]
pub async fn list(State(app): St, Extension(who): Extension<Principal>) -> ApiResult {
    app.auth.authorize(&who, "leases", "list", "")?;
    Ok(ok(StatusCode::OK, to_value(app.store.leases().list())))
}

/// One lease.
#[utoipa::path(get, tag = "leases", path = "/api/v3/leases/{id}",
    params(("id" = u64, Path)),
    responses((status = 200, body = LeaseBody), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub async fn show(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = lease_id(&id)?;
    app.auth.authorize(&who, "leases", "get", "")?;
    Ok(ok(StatusCode::OK, to_value(app.store.leases().get(id)?)))
}

/// Renews a lease: its deadline moves a TTL ahead (not a store write). An
/// ended or unknown lease is 404, never revived.
#[utoipa::path(post, tag = "leases", path = "/api/v3/leases/{id}/keepalive",
    params(("id" = u64, Path)),
    responses((status = 200, body = LeaseBody), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub async fn keep_alive(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = lease_id(&id)?;
    app.auth.authorize(&who, "leases", "update", "")?;
    Ok(ok(
        StatusCode::OK,
        to_value(app.store.leases().keep_alive(id)?),
    ))
}

/// Revokes a lease: what it holds goes in the same write. Answers the lease
/// as it was.
#[utoipa::path(delete, tag = "leases", path = "/api/v3/leases/{id}",
    params(("id" = u64, Path)),
    responses((status = 200, body = LeaseBody), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub async fn revoke(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = lease_id(&id)?;
    app.auth.authorize(&who, "leases", "delete", "")?;
    let ended = app.on_pool(move |s| s.leases().revoke(id)).await?;
    Ok(ok(StatusCode::OK, to_value(ended)))
}

/// `?machine=M&lease=L&leaders=N&timeout=S`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CampaignParams {
    /// The member (Uuid, Name:… or name).
    machine: String,
    /// The lease that holds the leadership.
    lease: u64,
    /// How many leader slots the cluster has (default 1).
    leaders: Option<usize>,
    /// Longest to wait for a slot, in seconds (default 30; cut to the
    /// server's request timeout less 0.5 s).
    timeout: Option<f64>,
}

/// Blocks until the member holds a leader slot under its lease; answers
/// its leadership and fencing token (`Token`).
#[utoipa::path(post, tag = "coordination", path = "/api/v3/clusters/{name}/campaign",
    params(("name" = String, Path, description = "The cluster"), CampaignParams),
    responses((status = 200, description = "{Name, Uuid, Token}", body = Object),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
        (status = 404, description = "No such cluster, machine or lease", body = ApiErrorBody),
        (status = 408, description = "No slot within the timeout", body = ApiErrorBody),
        (status = 503, description = "Too many waiting clients", body = ApiErrorBody)))]
pub async fn campaign(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&name)?;
    let p: CampaignParams = serde_urlencoded(q.as_deref())?;
    app.auth.authorize(&who, "machines", "update", &p.machine)?;
    let timeout = Duration::try_from_secs_f64(p.timeout.unwrap_or(30.0))
        .map_err(|_| ApiError::bad_request("timeout: expected seconds"))?
        .min(app.max_wait);
    let _permit = app.waiter()?;
    let won = app
        .on_pool(move |s| {
            Cluster::open(s, &name)?.campaign(&p.machine, p.lease, p.leaders.unwrap_or(1), timeout)
        })
        .await?;
    Ok(ok(StatusCode::OK, to_value(won)))
}

/// `?machine=M`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResignParams {
    /// The member (Uuid, Name:… or name).
    machine: String,
}

/// Gives up a member's leadership (role and token) in one write; answers
/// the machine.
#[utoipa::path(post, tag = "coordination", path = "/api/v3/clusters/{name}/resign",
    params(("name" = String, Path, description = "The cluster"), ResignParams),
    responses((status = 200, body = Object), (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody)))]
pub async fn resign(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&name)?;
    let p: ResignParams = serde_urlencoded(q.as_deref())?;
    app.auth.authorize(&who, "machines", "update", &p.machine)?;
    let m = app
        .on_pool(move |s| Cluster::open(s, &name)?.resign(&p.machine))
        .await?;
    Ok(ok(StatusCode::OK, to_value(m)))
}

/// The leaders now (`{Revision, Leaders}`), or with `Accept:
/// text/event-stream` a stream of them: the current set, then the newest set
/// after each change (`id` = revision).
#[utoipa::path(get, tag = "coordination", path = "/api/v3/clusters/{name}/leaders",
    params(("name" = String, Path, description = "The cluster")),
    responses((status = 200, description = "{Revision, Leaders: [{Name, Uuid, Token}]}, or an SSE stream of them", body = Object),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody)))]
pub async fn leaders(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    check_id(&name)?;
    app.auth.authorize(&who, "machines", "list", "")?;
    let cluster = Cluster::open(&app.store, &name)?;
    let stream = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !stream {
        return Ok(ok(StatusCode::OK, to_value(cluster.leaderships()?)));
    }
    let permit = app.waiter()?;
    let mut watch = cluster.observe();
    Ok(app.follow(
        permit,
        move |wait| watch.next_timeout(wait),
        |l| {
            Some(
                SseEvent::default()
                    .id(l.revision.to_string())
                    .event("leaders")
                    .data(serde_json::to_string(&l).unwrap_or_default()),
            )
        },
    ))
}

/// A query string as `T` (serde_urlencoded through axum's Query).
fn serde_urlencoded<T: serde::de::DeserializeOwned>(q: Option<&str>) -> ApiResult<T> {
    let uri: axum::http::Uri = format!("/?{}", q.unwrap_or(""))
        .parse()
        .map_err(|_| ApiError::bad_request("bad query string"))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}
