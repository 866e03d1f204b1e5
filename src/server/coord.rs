//! The coordination verbs over HTTP: profile tokens, long-poll waits
//! (`count --until`, machine waits), leader election, workflows on members,
//! template rendering, and the change events as server-sent events.
//!
//! Owns: these routes, their authorization and the bound on concurrent
//! waiters. Must not: implement waiting or election itself — it calls the
//! library ([`Store::count_wait`](crate::Store::count_wait),
//! [`Store::watch`](crate::Store::watch), [`Cluster::elect`], …) on the
//! blocking pool so that no async worker ever blocks.
//!
//! | method | path | what | claim |
//! |---|---|---|---|
//! | POST | `/api/v3/profiles/{id}/token?ttl=S` | a profile token (`{"Token"}`); through a token, expiring no later than it | admin or a user; a token needs `profiles/token/{id}` and claims covering the profile token's |
//! | GET | `/api/v3/wait/count?until=>=N&timeout=S&FILTER` | block until the machine count holds (`{"Count"}`; 408 on timeout) | `machines/list/*` |
//! | GET | `/api/v3/wait/machines/{id}?filter=F&timeout=S` | block until the machine matches (408 on timeout) | `machines/get/{id}` |
//! | POST | `/api/v3/clusters/{name}/elect?leaders=N` | elect leaders (the leaders' JSON) | `machines/update/*` |
//! | POST | `/api/v3/workflow-all` `{"Workflow","Filter","Meta"}` | start a workflow on every match (the report) | `machines/update/*` |
//! | POST | `/api/v3/machines/{id}/render` (text body) | render a Go template (text) | `machines/get/{id}` |
//! | GET | `/api/v3/events?kind=K&filter=F&from=REV` | events as SSE, id `REV.SEQ`, resumable with `Last-Event-ID` | `K/list/*` |
//! | GET | `/api/v3/watch/members?filter=F&members=true&from=REV` | a membership stream as SSE (`event: members`, id `REV`), resumable with `Last-Event-ID` | `machines/list/*` |
//!
//! Every one is in the OpenAPI document (`/api/v3/openapi.json`): each
//! handler carries its `#[utoipa::path]`, and the query, body and answer
//! shapes below are the schema types it names.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Extension;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use utoipa::{IntoParams, ToSchema};

use super::api::{check_id, listing, ok, to_value, url_decode, ApiResult, App, Collection, St};
use super::auth::Principal;
use super::error::{ApiError, ApiErrorBody};
use crate::template::{RenderContext, Template, TokenMinter};
use crate::{Cluster, CountCondition, Error, Filter, Kind, WorkflowReport};

// The OpenAPI shapes of the query strings and answers. The handlers read
// raw query strings (every key that is not theirs is a filter, as in
// listings) and build their answers with `json!`; these types only document
// them.

/// `?ttl=S`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct TokenParams {
    /// How long the token is good for, in seconds (default 3600). Through a
    /// bearer token, cut so that the new token expires no later than it.
    #[param(minimum = 0)]
    ttl: Option<f64>,
}

/// `{"Token"}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)]
pub(crate) struct TokenReply {
    /// A signed token (JWT) carrying the profile's claim.
    token: String,
}

/// The keys of `GET /api/v3/wait/count`; every other key is a filter
/// (`Profiles=Eq(c)`), as in a listing.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct CountWaitParams {
    /// The condition on the number of matching machines: `>= N`, `== N`
    /// (or `= N`) or `<= N`.
    #[param(pattern = "^(>=|<=|==|=) ?[0-9]{1,18}$", example = ">= 3")]
    until: String,
    /// Longest to wait, in seconds (default 30; cut to the server's
    /// `--request-timeout` less 0.5 s).
    #[param(minimum = 0)]
    timeout: Option<f64>,
    /// fleetkv extension: a filter in fleetkv's text form, ANDed with the others.
    filter: Option<String>,
}

/// `{"Count"}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)]
pub(crate) struct CountReply {
    /// The number of matching machines when the condition held.
    count: u64,
}

/// The keys of `GET /api/v3/wait/machines/{id}`; every other key is a
/// filter, as in a listing.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct WaitMachineParams {
    /// The filter the machine must match, in fleetkv's text form
    /// (`Workflow Eq done`); ANDed with any query-string filter keys.
    filter: Option<String>,
    /// Longest to wait, in seconds (default 30; cut to the server's
    /// `--request-timeout` less 0.5 s).
    #[param(minimum = 0)]
    timeout: Option<f64>,
}

/// One server-sent event as a client's SSE parser hands it on (`id:`,
/// `event:` and `data:` lines); what `data` holds is in each endpoint's
/// description.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SseMessage {
    /// The resume point (`Last-Event-ID`).
    id: Option<String>,
    /// The event's name (`change`, `members`, `leaders`, `error`).
    event: Option<String>,
    /// The payload: JSON, or an error's message.
    data: String,
}

/// `{"Status"}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)]
pub(crate) struct WaitReply {
    /// Always `complete`: the machine matches.
    #[schema(pattern = "^complete$", example = "complete")]
    status: String,
}

/// `?leaders=N`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ElectParams {
    /// How many leaders the cluster should have (default 1).
    leaders: Option<usize>,
}

/// The keys of `GET /api/v3/events`; every other key is a filter, as in a
/// listing.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct EventsParams {
    /// Only events of this collection (default: all three).
    kind: Option<Collection>,
    /// Start at this revision (inclusive; default: the next write). Older
    /// than the log keeps is a 400 `Compacted`.
    from: Option<u64>,
    /// fleetkv extension: a filter in fleetkv's text form; an event is sent
    /// when its object matches before or after the write.
    filter: Option<String>,
}

/// Splits `keys` out of a query string; the rest stays a filter query.
fn take(query: &str, keys: &[&str]) -> ApiResult<(HashMap<String, String>, String)> {
    let mut found = HashMap::new();
    let mut rest = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = url_decode(k)?;
        if keys.contains(&key.as_str()) {
            found.insert(key, url_decode(v)?);
        } else {
            rest.push(part);
        }
    }
    Ok((found, rest.join("&")))
}

fn seconds(v: Option<&String>, default: f64) -> ApiResult<Duration> {
    let s = match v {
        Some(v) => v
            .parse::<f64>()
            .map_err(|_| ApiError::bad_request(format!("timeout {v:?}: expected seconds")))?,
        None => default,
    };
    Duration::try_from_secs_f64(s)
        .map_err(|_| ApiError::bad_request(format!("timeout {s}: expected seconds")))
}

impl App {
    /// A stream of what `next` yields (each call waits up to the timeout it
    /// is given; `Ok(None)`: nothing yet), each item sent as the event
    /// `event` makes of it (`None`: skipped), as the answer. Runs on the
    /// blocking pool holding `permit`; an error is sent as an `error` event
    /// and ends the stream; a client that left ends it on the next send or
    /// idle check.
    pub(crate) fn follow<T>(
        &self,
        permit: OwnedSemaphorePermit,
        mut next: impl FnMut(Duration) -> crate::Result<Option<T>> + Send + 'static,
        event: impl Fn(T) -> Option<SseEvent> + Send + 'static,
    ) -> axum::response::Response {
        let (tx, rx) = mpsc::channel::<SseEvent>(64);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _open = crate::telemetry::OpenStream::open();
            loop {
                let ev = match next(Duration::from_secs(15)) {
                    Ok(Some(item)) => match event(item) {
                        Some(ev) => ev,
                        None => continue,
                    },
                    // Idle: a closed client is noticed on the next send.
                    Ok(None) if tx.is_closed() => return,
                    Ok(None) => continue,
                    Err(e) => {
                        let error = SseEvent::default().event("error").data(e.to_string());
                        let _ = tx.blocking_send(error);
                        return;
                    }
                };
                // Blocks while a slow client's buffer is full; ends when it leaves.
                if tx.blocking_send(ev).is_err() {
                    return;
                }
            }
        });
        self.event_stream(rx)
    }

    /// The server-sent events a producer sends on `rx`, as the answer: with
    /// keep-alives, ended when the producer stops or the server does.
    pub(crate) fn event_stream(&self, rx: mpsc::Receiver<SseEvent>) -> axum::response::Response {
        let mut stopping = self.stopping.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
        })
        .take_until(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    pub(crate) fn waiter(&self) -> ApiResult<OwnedSemaphorePermit> {
        self.waiters.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "too many waiting clients; try again",
            )
        })
    }
}

/// Mints a profile token, good for `ttl` seconds: the admin (or a user) may
/// mint one for any profile, for any ttl. A token caller needs the claim
/// `profiles/token/{id}` and claims covering the profile token's
/// (`profiles/get,update,patch,param-set/{id}`), and the new token expires
/// no later than the caller's own: a longer `ttl` is cut to it.
#[utoipa::path(post, tag = "coordination", path = "/api/v3/profiles/{id}/token",
    params(("id" = String, Path, description = "The profile's Name"), TokenParams),
    responses(
        (status = 200, description = "The token", body = TokenReply),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn token(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&id)?;
    let (opts, _) = take(q.as_deref().unwrap_or(""), &["ttl"])?;
    let ttl = seconds(opts.get("ttl"), 3600.0)?;
    // The admin key and users are the root of trust; a token mints only
    // under the library's rule (`profiles/token/{id}`, claims covered,
    // expiry no later than its own).
    let token = match &who {
        Principal::Token(t) => app.store.with_token(t)?.generate_profile_token(&id, ttl)?,
        _ => app.store.generate_profile_token(&id, ttl)?,
    };
    Ok(ok(StatusCode::OK, json!({ "Token": token })))
}

/// Long poll: blocks until the number of machines matching the filter
/// satisfies `until`, waking on the write that satisfies it.
#[utoipa::path(get, tag = "coordination", path = "/api/v3/wait/count",
    params(CountWaitParams),
    responses(
        (status = 200, description = "The condition holds", body = CountReply),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
        (status = 408, description = "The condition did not hold within the timeout", body = ApiErrorBody),
        (status = 503, description = "Too many waiting clients (--max-waiters)", body = ApiErrorBody)))]
pub async fn count_wait(
    State(app): St,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    app.auth.authorize(&who, "machines", "list", "")?;
    let (opts, rest) = take(q.as_deref().unwrap_or(""), &["until", "timeout"])?;
    let until: CountCondition = opts
        .get("until")
        .ok_or_else(|| ApiError::bad_request("until is required (>= N, == N or <= N)"))?
        .parse()?;
    let timeout = seconds(opts.get("timeout"), 30.0)?.min(app.max_wait);
    let (filter, _) = listing(&rest)?;
    let _permit = app.waiter()?;
    let n = app
        .on_pool(move |s| s.count_wait(&filter, until, timeout))
        .await?;
    Ok(ok(StatusCode::OK, json!({ "Count": n })))
}

/// Long poll: blocks until the machine matches the filter.
#[utoipa::path(get, tag = "coordination", path = "/api/v3/wait/machines/{id}",
    params(("id" = String, Path, description = "Uuid, Name:… or name"), WaitMachineParams),
    responses(
        (status = 200, description = "The machine matches", body = WaitReply),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody),
        (status = 404, description = "No such machine (or it was deleted while waiting)", body = ApiErrorBody),
        (status = 408, description = "It did not match within the timeout", body = ApiErrorBody),
        (status = 503, description = "Too many waiting clients (--max-waiters)", body = ApiErrorBody)))]
pub async fn wait_machine(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&id)?;
    app.auth.authorize(&who, "machines", "get", &id)?;
    let (opts, rest) = take(q.as_deref().unwrap_or(""), &["timeout"])?;
    let timeout = seconds(opts.get("timeout"), 30.0)?.min(app.max_wait);
    let (filter, _) = listing(&rest)?;
    let _permit = app.waiter()?;
    app.on_pool(move |s| s.wait_machine(&id, &filter, timeout))
        .await?;
    Ok(ok(StatusCode::OK, json!({ "Status": "complete" })))
}

/// Makes sure the cluster has `leaders` leaders among its non-manager
/// members (idempotent); answers the leaders.
#[utoipa::path(post, tag = "coordination", path = "/api/v3/clusters/{name}/elect",
    params(("name" = String, Path, description = "The cluster (its profile's Name)"), ElectParams),
    responses(
        (status = 200, description = "The leaders (machines)", body = Vec<Object>),
        (status = 400, description = "Not a cluster, or more leaders than eligible members", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, description = "The members kept changing under the election", body = ApiErrorBody)))]
pub async fn elect(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_id(&name)?;
    app.auth.authorize(&who, "machines", "update", "")?;
    let (opts, _) = take(q.as_deref().unwrap_or(""), &["leaders"])?;
    let n: usize = match opts.get("leaders") {
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("leaders {v:?}: expected a count")))?,
        None => 1,
    };
    let leaders = app
        .on_pool(move |s| Cluster::open(s, &name)?.elect(n))
        .await?;
    Ok(ok(StatusCode::OK, to_value(leaders)))
}

/// The body of `POST /api/v3/workflow-all`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowAll {
    /// The workflow to start (not empty).
    #[serde(rename = "Workflow")]
    workflow: String,
    /// The machines, in fleetkv's filter text form (`Profiles Eq c`); one
    /// that selects every machine is refused.
    #[serde(rename = "Filter")]
    filter: String,
    /// Meta entries to set along with the workflow.
    #[serde(rename = "Meta", default)]
    meta: HashMap<String, String>,
}

/// Starts a workflow on every machine the filter selects: one atomic merge
/// per machine; machines already in it (with that meta) are left alone.
#[utoipa::path(post, tag = "coordination", path = "/api/v3/workflow-all",
    request_body(content = WorkflowAll, content_type = "application/json"),
    responses(
        (status = 200, description = "What was done, machine by machine", body = WorkflowReport),
        (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody),
        (status = 403, body = ApiErrorBody), (status = 413, body = ApiErrorBody)))]
pub async fn workflow_all(
    State(app): St,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult {
    app.auth.authorize(&who, "machines", "update", "")?;
    let req: WorkflowAll = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("workflow-all body: {e}")))?;
    let filter = Filter::parse(&req.filter).map_err(Error::from)?;
    if filter.is_all() {
        return Err(ApiError::bad_request(
            "workflow-all needs a filter: it would reach every machine",
        ));
    }
    let meta: Vec<(String, String)> = req.meta.into_iter().collect();
    let report = app
        .on_pool(move |s| crate::start_workflow(s, &filter, &req.workflow, &meta))
        .await?;
    Ok(ok(StatusCode::OK, to_value(report)))
}

/// Renders a Go template (the body) for one machine, with its effective
/// params. For a token caller, `.GenerateProfileToken` mints under the
/// token rule of `POST /profiles/{id}/token` (`profiles/token/{id}`, claims
/// covered, expiry no later than the caller's).
#[utoipa::path(post, tag = "coordination", path = "/api/v3/machines/{id}/render",
    params(("id" = String, Path, description = "Uuid, Name:… or name")),
    request_body(content = String, content_type = "text/plain", description = "The template text"),
    responses(
        (status = 200, description = "The rendered text", body = String, content_type = "text/plain"),
        (status = 400, description = "The template does not parse or render", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody), (status = 413, body = ApiErrorBody)))]
pub async fn render(
    State(app): St,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    check_id(&id)?;
    app.auth.authorize(&who, "machines", "get", &id)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("template is not UTF-8"))?;
    let template = Template::parse("request", &text).map_err(Error::from)?;
    let store = &app.store;
    let machine = store.machines().get(&id)?;
    let params = store.machines().params(&id, true)?;
    // A token caller mints only under the library's minting rule.
    let scoped = match &who {
        Principal::Token(t) => Some(store.with_token(t)?),
        _ => None,
    };
    let minter: &dyn TokenMinter = match &scoped {
        Some(s) => s,
        None => store,
    };
    let out = template
        .render(&RenderContext {
            machine: &machine,
            params: &params,
            templates: std::slice::from_ref(&template),
            minter,
        })
        .map_err(Error::from)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// The change events as server-sent events; the stream does not end.
#[utoipa::path(get, tag = "coordination", path = "/api/v3/events",
    params(EventsParams,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume right after this event (`REV.SEQ`, the `id` of the last event seen); overrides `from`")),
    responses(
        (status = 200, content_type = "text/event-stream", body = SseMessage,
            description = "An endless `text/event-stream`. Each change is one event: `id: REV.SEQ` (the write's revision and the change's position in it), `event: change`, and `data:` the event as JSON: `{\"Revision\",\"Seq\",\"Kind\",\"Key\",\"Action\",\"Object\",\"Previous\"}` (`Kind` is machines, profiles or params; `Action` create, update or delete; `Previous`, the object before the write, on updates and deletes). If the watch fails (e.g. the log was compacted past it) an `event: error` whose data is the message ends the stream. Idle streams get keep-alive comments. Reconnect with `Last-Event-ID` to resume without a gap or a repeat."),
        (status = 400, description = "Bad kind or from, or from is compacted or in the future", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 503, description = "Too many waiting clients (--max-waiters)", body = ApiErrorBody)))]
pub async fn events(
    State(app): St,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (opts, rest) = take(q.as_deref().unwrap_or(""), &["kind", "from"])?;
    let kind = match opts.get("kind").map(String::as_str) {
        None | Some("") => None,
        Some("machines") => Some(Kind::Machine),
        Some("profiles") => Some(Kind::Profile),
        Some("params") => Some(Kind::Param),
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "kind {k:?}: expected machines, profiles or params"
            )))
        }
    };
    for k in [Kind::Machine, Kind::Profile, Kind::Param] {
        if kind.is_none_or(|want| want == k) {
            app.auth.authorize(&who, k.plural(), "list", "")?;
        }
    }
    let (filter, _) = listing(&rest)?;
    let filter = (!filter.is_all()).then_some(filter);
    // Resume after the last event the client saw, else `from`.
    let last = last_event_id(&headers);
    let from = match (last, opts.get("from")) {
        (Some((rev, _)), _) => Some(rev),
        (None, Some(f)) => Some(
            f.parse()
                .map_err(|_| ApiError::bad_request(format!("from {f:?}: expected a revision")))?,
        ),
        (None, None) => None,
    };
    let mut watch = app.store.watch(kind, filter, from)?;
    let permit = app.waiter()?;
    let store = app.store.clone();
    Ok(app.follow(
        permit,
        move |wait| watch.next_timeout(wait),
        move |next| {
            // Jobs hold rendered templates (minted tokens among them) and no
            // claim covers them: the stream carries the three collections.
            if next.kind == Kind::Job || last.is_some_and(|seen| (next.revision, next.seq) <= seen)
            {
                return None;
            }
            crate::telemetry::record_watch_lag(store.revision().saturating_sub(next.revision));
            let data = serde_json::to_string(&next).unwrap_or_default();
            Some(
                SseEvent::default()
                    .id(format!("{}.{}", next.revision, next.seq))
                    .event("change")
                    .data(data),
            )
        },
    ))
}

/// The keys of `GET /api/v3/watch/members`; every other key is a filter,
/// as in a listing.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct MembersParams {
    /// Resume after this revision (the `Revision` of the last message
    /// seen): no snapshot first. Older than the log keeps is a 400
    /// `Compacted` (a `Last-Event-ID` that old gets a `Reset` snapshot).
    from: Option<u64>,
    /// Put the members (`[{"Uuid","Name"}]`) in snapshot messages.
    members: Option<bool>,
    /// fleetkv extension: a filter in fleetkv's text form, ANDed with the others.
    filter: Option<String>,
}

/// A membership stream as server-sent events: the filter's count (and
/// members) now, then one message per write that moves a machine in or
/// out (`Store::watch_members`).
#[utoipa::path(get, tag = "coordination", path = "/api/v3/watch/members",
    params(MembersParams,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this message (its `id`, a revision); overrides `from`")),
    responses(
        (status = 200, content_type = "text/event-stream", body = SseMessage,
            description = "An endless `text/event-stream` of `event: members` messages, `id:` the message's revision, `data:` `{\"Revision\",\"Count\",\"Joined\":[{\"Uuid\",\"Name\"}],\"Left\":[…]}`. The first (unless resuming) has `\"Snapshot\": true` (and `Members` when asked); a resume that cannot be told exactly (a profile or definition written since, a compacted log) starts with a snapshot marked `\"Reset\": true`; a message that sums up several revisions (a profile or definition write while the stream was behind) has `\"Coalesced\": true`. If the stream fails (the filter no longer binds after a definition change) an `event: error` whose data is the message ends it. Idle streams get keep-alive comments."),
        (status = 400, description = "Bad filter or from, or from is compacted or in the future", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
        (status = 503, description = "Too many waiting clients (--max-waiters)", body = ApiErrorBody)))]
pub async fn watch_members(
    State(app): St,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    // Tokens carry no filter of their own: `machines/list/*` is what any
    // listing of machines needs.
    app.auth.authorize(&who, "machines", "list", "")?;
    let (opts, rest) = take(q.as_deref().unwrap_or(""), &["from", "members"])?;
    let (filter, _) = listing(&rest)?;
    // A bare `?members` asks for them; otherwise Go's spellings, as DRP.
    let members = match opts.get("members").map(String::as_str) {
        None => false,
        Some("") => true,
        Some(v) => crate::wire::parse_bool_named("members", v).map_err(ApiError::bad_request)?,
    };
    let last = last_event_id(&headers).map(|(rev, _)| rev);
    let from = match opts.get("from") {
        Some(f) => Some(
            f.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("from {f:?}: expected a revision")))?,
        ),
        None => None,
    };
    let options = crate::MemberOptions {
        from: last.or(from),
        members,
        // An explicit `from` is answered as `/api/v3/events` answers it; a
        // reconnecting client is better served by a reset snapshot.
        compacted_is_error: last.is_none(),
    };
    let mut watch = app.store.watch_members_with(&filter, options)?;
    let permit = app.waiter()?;
    Ok(app.follow(
        permit,
        move |wait| watch.next_timeout(wait),
        |next| {
            let data = serde_json::to_string(&next).unwrap_or_default();
            Some(
                SseEvent::default()
                    .id(next.revision.to_string())
                    .event("members")
                    .data(data),
            )
        },
    ))
}

/// Where a reconnecting SSE client resumes: its `Last-Event-ID`, `REV.SEQ`
/// (a change event) or `REV` (a membership stream's, or every change of
/// that revision seen), as `(REV, SEQ)`. Anything else is no resume point,
/// as a client sends back whatever id it last got.
fn last_event_id(headers: &HeaderMap) -> Option<(u64, u32)> {
    let id = headers.get("last-event-id")?.to_str().ok()?.trim();
    match id.split_once('.') {
        Some((rev, seq)) => Some((rev.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_of_both_streams_are_read_alike() {
        let with = |id: &str| {
            let mut h = HeaderMap::new();
            h.insert("last-event-id", id.parse().unwrap());
            last_event_id(&h)
        };
        assert_eq!(with("120.3"), Some((120, 3)));
        assert_eq!(with("120"), Some((120, u32::MAX)));
        assert_eq!(with(" 7 "), Some((7, u32::MAX)));
        for bad in ["", "x", "120.x", "-1", "1.2.3"] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(last_event_id(&HeaderMap::new()), None);
    }
}
