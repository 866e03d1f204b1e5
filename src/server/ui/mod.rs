//! The operator's view at `/ui/`: log in, see each cluster's members and
//! counts change live, list machines with a filter.
//!
//! Owns: the `/ui` routes, the login/logout forms and their CSRF checks, the
//! live cluster stream (one store watch per open page) and the vendored
//! scripts (htmx and its SSE extension, 0BSD, with their licenses in
//! `vendor/`). Must not: write to the store (the UI only reads), bypass the
//! claims (every page asks [`Authenticator::authorize`](super::auth::Authenticator::authorize)
//! as the API does), or keep state beyond [`session::Sessions`].
//!
//! No JavaScript is built: pages are rendered on the server (`pages`);
//! htmx swaps the cluster page's live part with the HTML each event-stream
//! message carries (`sse-swap`), so nothing polls and nothing reloads.

mod pages;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::sse::Event as SseEvent;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::api::App;
use super::auth::Principal;
use super::error::ApiError;
use crate::cluster::Role;
use crate::{Cluster, Error, Filter, ListOptions};
use pages::{ClusterRow, ClusterView, MachineList, Member};
pub use session::Sessions;
use session::{
    cookie, random_token, same_token, set_cookie, Session, LOGIN_COOKIE, SESSION_COOKIE,
};

/// Machines per page of the machine list.
const PER_PAGE: usize = 50;
/// Most members a cluster page lists (the counts cover them all).
const MOST_SHOWN: usize = 500;

/// The UI's routes, over the API's state; `sessions` outlives requests.
pub(crate) fn routes(sessions: Arc<Sessions>) -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/clusters/{name}", get(cluster))
        .route("/ui/clusters/{name}/live", get(cluster_live))
        .route("/ui/machines", get(machines))
        .route("/ui/assets/{file}", get(asset))
        .layer(from_fn(page_headers))
        .layer(Extension(sessions))
}

/// No framing, no sniffing, scripts from this server only, no caching of
/// pages that hold fleet data.
async fn page_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

type Sess = Extension<Arc<Sessions>>;

/// The request's session: pages that need one take it as an argument, and a
/// request without one is redirected to the login form.
struct LoggedIn(Session);

impl<S: Send + Sync> FromRequestParts<S> for LoggedIn {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Redirect> {
        parts
            .extensions
            .get::<Arc<Sessions>>()
            .and_then(|sessions| sessions.of(&parts.headers))
            .map(LoggedIn)
            .ok_or_else(|| Redirect::to("/ui/login"))
    }
}

/// An error as a page, with the API's status for it.
fn error_page(csrf: Option<&str>, e: ApiError) -> Response {
    let message = e.messages().join("; ");
    (e.status(), Html(pages::error(csrf, &message).into_string())).into_response()
}

async fn index(State(app): State<Arc<App>>, LoggedIn(s): LoggedIn) -> Response {
    match cluster_rows(&app, &s.who) {
        Ok(rows) => Html(pages::clusters(&s.csrf, &rows).into_string()).into_response(),
        Err(e) => error_page(Some(&s.csrf), e),
    }
}

/// Profiles whose `cluster/profile` names themselves, with member counts.
fn cluster_rows(app: &App, who: &Principal) -> Result<Vec<ClusterRow>, ApiError> {
    app.auth.authorize(who, "profiles", "list", "")?;
    app.auth.authorize(who, "machines", "list", "")?;
    let mut rows = Vec::new();
    for p in app.store.profiles().list_all() {
        if p.params
            .get(crate::cluster::PROFILE_PARAM)
            .and_then(|v| v.as_str())
            != Some(&p.name)
        {
            continue;
        }
        let members = Cluster::open(&app.store, &p.name)?.count(Filter::all())?;
        rows.push(ClusterRow {
            name: p.name,
            members,
        });
    }
    Ok(rows)
}

async fn login_form() -> Response {
    let csrf = random_token();
    (
        [(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, Some(&csrf)))],
        Html(pages::login(&csrf, None).into_string()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    credential: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(app): State<Arc<App>>,
    Extension(sessions): Sess,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(&expected, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            Html(
                pages::error(
                    None,
                    "the login form expired or came from elsewhere: open /ui/login again",
                )
                .into_string(),
            ),
        )
            .into_response();
    }
    let who = app.auth.login(&form.credential).and_then(|who| {
        // A token is checked now, not at its first page.
        if let Principal::Token(t) = &who {
            app.store.verify_token(t).map_err(ApiError::from)?;
        }
        Ok(who)
    });
    match who {
        Ok(who) => {
            let id = sessions.start(who);
            let mut r = Redirect::to("/ui/").into_response();
            let h = r.headers_mut();
            for c in [
                set_cookie(SESSION_COOKIE, Some(&id)),
                set_cookie(LOGIN_COOKIE, None),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Err(e) => {
            let csrf = random_token();
            (
                StatusCode::UNAUTHORIZED,
                [(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, Some(&csrf)))],
                Html(pages::login(&csrf, Some(&e.messages().join("; "))).into_string()),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    Extension(sessions): Sess,
    LoggedIn(s): LoggedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !same_token(&s.csrf, &form.csrf) {
        return error_page(
            Some(&s.csrf),
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "the form's CSRF token is wrong",
            ),
        );
    }
    sessions.end(&headers);
    (
        [(header::SET_COOKIE, set_cookie(SESSION_COOKIE, None))],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

/// What a cluster page shows, read now under `who`'s claims.
fn cluster_view(app: &App, who: &Principal, name: &str) -> Result<ClusterView, ApiError> {
    app.auth.authorize(who, "profiles", "get", name)?;
    app.auth.authorize(who, "machines", "list", "")?;
    let c = Cluster::open(&app.store, name)?;
    let count = |text: &str| -> Result<u64, ApiError> {
        Ok(c.count(Filter::parse(text).map_err(Error::from)?)?)
    };
    let members = c.count(Filter::all())?;
    let leaders = count("cluster/leader Eq true")?;
    let managers = count("cluster/manager Eq true")?;
    let workflows = app
        .store
        .machines()
        .group_count(&c.member_filter(Filter::all())?, &["Workflow".into()])?
        .into_iter()
        .map(|g| (g.value.as_str().unwrap_or_default().to_string(), g.count))
        .collect();
    let opts = ListOptions {
        aggregate: true,
        limit: Some(MOST_SHOWN),
        sort: Some("Name".into()),
        ..ListOptions::default()
    };
    let shown = c
        .members(Filter::all(), &opts)?
        .into_iter()
        .map(|m| Member {
            name: text(&m["Name"]),
            uuid: text(&m["Uuid"]),
            role: m["Params"].as_object().map_or(Role::Worker, Role::of),
            workflow: text(&m["Workflow"]),
            icon: m["Meta"]["icon"].as_str().map(str::to_string),
        })
        .collect();
    Ok(ClusterView {
        name: name.to_string(),
        members,
        leaders,
        managers,
        workflows,
        shown,
        revision: app.store.revision(),
    })
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

async fn cluster(
    State(app): State<Arc<App>>,
    LoggedIn(s): LoggedIn,
    Path(name): Path<String>,
) -> Response {
    match cluster_view(&app, &s.who, &name) {
        Ok(view) => Html(pages::cluster(&s.csrf, &view).into_string()).into_response(),
        Err(e) => error_page(Some(&s.csrf), e),
    }
}

/// The cluster page's live part as a server-sent event stream: the current
/// view at once, then a new one after each batch of store changes. Holds a
/// waiter permit like `/api/v3/events`; a browser that stops reading is
/// dropped by the connection's write timeout like any stalled client.
async fn cluster_live(
    State(app): State<Arc<App>>,
    Extension(sessions): Sess,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(s) = sessions.of(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in at /ui/login").into_response();
    };
    if let Err(e) = cluster_view(&app, &s.who, &name) {
        return error_page(Some(&s.csrf), e);
    }
    let mut watch = match app.store.watch(None, None, None) {
        Ok(w) => w,
        Err(e) => return error_page(Some(&s.csrf), e.into()),
    };
    let permit = match app.waiter() {
        Ok(p) => p,
        Err(e) => return error_page(Some(&s.csrf), e),
    };
    let (tx, rx) = mpsc::channel::<SseEvent>(8);
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _open = crate::telemetry::OpenStream::open();
        loop {
            // The claims are asked again for every view: a token can expire.
            let ev = match cluster_view(&app2, &s.who, &name) {
                Ok(view) => SseEvent::default()
                    .event("cluster")
                    .data(pages::cluster_live(&view).into_string()),
                Err(e) => {
                    let _ = tx.blocking_send(
                        SseEvent::default()
                            .event("error")
                            .data(e.messages().join("; ")),
                    );
                    return;
                }
            };
            if tx.blocking_send(ev).is_err() {
                return;
            }
            // Wait for a change; then take what else arrives within 50 ms, so
            // a burst of writes costs one render.
            loop {
                match watch.next_timeout(Duration::from_secs(15)) {
                    Ok(Some(_)) => break,
                    Ok(None) if tx.is_closed() => return,
                    Ok(None) => continue,
                    Err(_) => return,
                }
            }
            while let Ok(Some(_)) = watch.next_timeout(Duration::from_millis(50)) {}
        }
    });
    app.event_stream(rx)
}

async fn machines(
    State(app): State<Arc<App>>,
    LoggedIn(s): LoggedIn,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = app.auth.authorize(&s.who, "machines", "list", "") {
        return error_page(Some(&s.csrf), e);
    }
    let text = q.get("filter").map(|f| f.trim()).unwrap_or("");
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut list = MachineList {
        filter: text,
        problem: None,
        rows: Vec::new(),
        total: 0,
        page,
        per_page: PER_PAGE,
    };
    let prepared = if text.is_empty() {
        Ok(Filter::all())
    } else {
        Filter::parse(text).map_err(Error::from)
    }
    .and_then(|f| app.store.machines().prepare(&f));
    match prepared {
        Ok(query) => {
            list.total = app.store.machines().count_query(&query);
            let opts = ListOptions {
                offset: page.saturating_mul(PER_PAGE),
                limit: Some(PER_PAGE),
                slim: vec!["Params".into()],
                ..ListOptions::default()
            };
            match app.store.machines().list_query(&query, &opts) {
                Ok(rows) => list.rows = rows,
                Err(e) => return error_page(Some(&s.csrf), e.into()),
            }
        }
        Err(Error::Filter(fe)) => list.problem = Some((fe.message(), fe.render())),
        Err(e) => return error_page(Some(&s.csrf), e.into()),
    }
    Html(pages::machines(&s.csrf, &list).into_string()).into_response()
}

/// The vendored scripts, embedded in the binary.
async fn asset(Path(file): Path<String>) -> Response {
    let body: &'static [u8] = match format!("/ui/assets/{file}").as_str() {
        pages::HTMX_JS => include_bytes!("vendor/htmx-2.0.11.min.js"),
        pages::SSE_JS => include_bytes!("vendor/htmx-ext-sse-2.2.4.min.js"),
        _ => return (StatusCode::NOT_FOUND, Html("no such asset")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Versioned names: a new version is a new path.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}
