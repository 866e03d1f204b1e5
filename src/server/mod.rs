//! `fleetkv serve`: DRP's `/api/v3` subset over HTTP (`docs/architecture.md`
//! §14 Front ends).
//!
//! Owns: the HTTP surface (routes, DRP-shaped errors, limits, the OpenAPI
//! document), authentication of callers ([`auth`]) and the process around one
//! [`Store`] (start, graceful stop, flush). Must not: hold any data model
//! logic — every rule lives in the store; handlers only translate.
//!
//! Endpoints (all but `GET /api/v3/info` need credentials):
//!
//! | method | path | store call |
//! | --- | --- | --- |
//! | GET | `/api/v3/info` | health and version |
//! | GET | `/api/v3/openapi.json` | this API, generated from the code |
//! | GET, HEAD | `/api/v3/{kind}?FILTER&sort=&limit=&offset=&reverse=&slim=&params=&aggregate=&decode=` | list / count (`X-DRP-List-Count`) |
//! | POST | `/api/v3/{kind}` | create |
//! | GET, PUT, PATCH, DELETE | `/api/v3/{kind}/{id}` | get (`?aggregate=true`), replace, patch (JSON Patch or merge patch), delete |
//! | GET, PATCH, POST | `/api/v3/{kind}/{id}/params` | params (`?aggregate=true`), JSON Patch on the params map, replace them all |
//! | GET, POST, DELETE | `/api/v3/{kind}/{id}/params/{key…}` | get, set (CAS with `X-Fleetkv-Expect`), remove |
//! | | tokens, waits, election, workflow-all, render, events | the coordination verbs: see [`coord`] |
//! | GET | `/api/v3/check` | the server's indexes against a rebuild from the documents (admin key and users) |
//! | GET | `/metrics` | Prometheus text ([`metrics`]; claim `metrics/get/*`, or unauthenticated on `--metrics-listen`) |
//! | GET, POST | `/ui/…` | the operator's pages ([`ui`]; a login form and a session cookie) |
//!
//! Every API route is in the OpenAPI document; `tests/server.rs` fails when
//! one is missing from it. The UI's HTML pages are not API and are not in it.
//!
//! Resource exhaustion: a full disk is a 507 (`InsufficientStorage`) and the
//! server reopens its store by itself once space returns (`recover` below);
//! the accept loop (`listen`) outlives EMFILE and caps connections.
//!
//! Besides: the coordination verbs ([`coord`]), the cluster verbs
//! ([`cluster`]) and bulk import / export ([`transfer`]), each with its table.
//!
//! `{kind}` is `machines`, `profiles` or `params`. Path segments are
//! percent-decoded once (`params/my%2Fdata` names param `my/data`; a
//! machine or profile name cannot hold `/`); boolean query values take Go's
//! spellings (`True`, `1`, `f`…, see [`crate::wire`]), as DRP does.
//! Compare-and-set over
//! HTTP: a `PATCH` whose `test` operations fail is a 409 and writes nothing;
//! `POST …/params/KEY` with `X-Fleetkv-Expect: <JSON>` (or `absent`) sets the
//! param only if it holds that value.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod coord;
pub mod error;
mod extract;
pub mod leases;
mod listen;
pub mod metrics;
pub mod transfer;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::{Error, Options, Store};
use api::App;
use error::ApiError;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store directory (also holds `admin.key` and `users`).
    pub data: PathBuf,
    /// Address to listen on (`127.0.0.1:8092`; port 0 picks one).
    pub listen: String,
    /// Open the store with [`Options::durable`] (the default): a write is
    /// answered once it is on disk. `false` (`--no-fsync`) is unsafe.
    pub durable: bool,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest total size of the request's headers, in bytes.
    pub max_header_bytes: usize,
    /// Longest a request may take (waits are cut to fit; event streams
    /// are not requests that end).
    pub request_timeout: Duration,
    /// Most long-poll waits and event streams at once; more get 503.
    pub max_waiters: usize,
    /// Longest a client may take to send a request's headers (slowloris).
    pub header_timeout: Duration,
    /// Longest a response write may wait for the client to read; a client
    /// that stops reading (an event stream left open) is disconnected.
    pub write_timeout: Duration,
    /// Most open connections; further clients wait to be accepted.
    pub max_connections: usize,
    /// [`Options::stall_timeout`]: a storage call stalled this long answers
    /// 503 (and so does every later write).
    pub stall_timeout: Duration,
    /// [`Options::lock_timeout`]: how long the open waits for a store
    /// another process holds (a server restarting while the old one exits).
    pub lock_timeout: Duration,
    /// [`Options::max_lease_ttl`]: the longest lease TTL granted.
    pub max_lease_ttl: Duration,
    /// Serve HTTPS with this PEM certificate chain and PEM private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Also serve `GET /metrics` without credentials, over plain HTTP, on
    /// this address (`--metrics-listen`; port 0 picks one).
    pub metrics_listen: Option<String>,
    /// Keep the store on this etcd cluster (its members' client URLs,
    /// `--etcd`) instead of in `data`, which then holds only credentials;
    /// empty: the embedded store in `data`.
    #[cfg(feature = "etcd")]
    pub etcd: Vec<String>,
    /// The key prefix of the store in etcd (`--etcd-prefix`).
    #[cfg(feature = "etcd")]
    pub etcd_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("fleetkv.db"),
            listen: "127.0.0.1:8092".to_string(),
            durable: true,
            max_body_bytes: 4 << 20,
            max_header_bytes: 16 << 10,
            request_timeout: Duration::from_secs(30),
            max_waiters: 256,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            stall_timeout: crate::store::STALL_TIMEOUT,
            max_lease_ttl: Options::default().max_lease_ttl,
            lock_timeout: Options::default().lock_timeout,
            tls: None,
            metrics_listen: None,
            #[cfg(feature = "etcd")]
            etcd: Vec::new(),
            #[cfg(feature = "etcd")]
            etcd_prefix: crate::EtcdOptions::default().prefix,
        }
    }
}

/// The router over `app`, with every limit and the error shaping.
pub fn router(app: Arc<App>, config: &Config) -> Router {
    Router::new()
        .route("/api/v3/openapi.json", get(api::openapi))
        .route(
            "/api/v3/{kind}",
            get(api::list).head(api::count).post(api::create),
        )
        .route(
            "/api/v3/{kind}/{id}",
            get(api::show)
                .put(api::replace)
                .patch(api::patch)
                .delete(api::destroy),
        )
        .route("/api/v3/events", get(coord::events))
        .route("/api/v3/watch/members", get(coord::watch_members))
        .route("/api/v3/wait/count", get(coord::count_wait))
        .route("/api/v3/wait/machines/{id}", get(coord::wait_machine))
        .route("/api/v3/clusters/{name}/elect", post(coord::elect))
        .route("/api/v3/clusters/{name}/campaign", post(leases::campaign))
        .route("/api/v3/clusters/{name}/resign", post(leases::resign))
        .route("/api/v3/clusters/{name}/leaders", get(leases::leaders))
        .route("/api/v3/leases", get(leases::list).post(leases::grant))
        .route(
            "/api/v3/leases/{id}",
            get(leases::show).delete(leases::revoke),
        )
        .route("/api/v3/leases/{id}/keepalive", post(leases::keep_alive))
        .route("/api/v3/clusters/{name}", post(cluster::cluster_init))
        .route(
            "/api/v3/clusters/{name}/members",
            get(cluster::cluster_members).head(cluster::cluster_count),
        )
        .route(
            "/api/v3/clusters/{name}/members/{machine}",
            post(cluster::cluster_add).delete(cluster::cluster_remove),
        )
        .route(
            "/api/v3/clusters/{name}/members/{machine}/role",
            get(cluster::cluster_role).put(cluster::cluster_set_role),
        )
        .route("/api/v3/export", get(transfer::export))
        .route("/api/v3/import", post(transfer::import))
        .route("/metrics", get(metrics::scrape))
        .route("/api/v3/check", get(api::check))
        .route("/api/v3/workflow-all", post(coord::workflow_all))
        .route("/api/v3/machines/{id}/render", post(coord::render))
        .route("/api/v3/profiles/{id}/token", post(coord::token))
        .route(
            "/api/v3/{kind}/{id}/params",
            get(api::params)
                .patch(api::patch_params)
                .post(api::replace_params),
        )
        .route(
            "/api/v3/{kind}/{id}/params/{*key}",
            get(api::get_param)
                .post(api::set_param)
                .delete(api::remove_param),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(from_fn_with_state(app.clone(), gate))
        // Unauthenticated: health and version.
        .route("/api/v3/info", get(api::info))
        // The UI checks its own session cookie (see `ui`).
        .merge(ui::routes(Arc::new(ui::Sessions::default())))
        .layer(from_fn(read_body))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        // Outermost, so that every answer is counted and shaped (401, 413,
        // 408…); a layer on the router still sees the matched route
        // template. One layer for what every request passes: each layer
        // costs every request a service clone and a boxed future.
        .layer(from_fn_with_state(
            Arc::new(Front {
                requests: crate::telemetry::RequestRecorder::default(),
                max_headers: config.max_header_bytes,
                timeout: config.request_timeout,
            }),
            front,
        ))
        .with_state(app)
}

/// What [`front`] needs.
struct Front {
    requests: crate::telemetry::RequestRecorder,
    max_headers: usize,
    timeout: std::time::Duration,
}

/// Every request: counted and timed by route template and status
/// (`metrics`), refused when its headers are too large or its path has a
/// bad segment, given at most the request timeout (408), and answered in
/// DRP's error shape whatever refused it (see [`error::shape`]).
async fn front(State(front): State<Arc<Front>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = metrics::method_label(req.method());
    let is_head = req.method() == axum::http::Method::HEAD;
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = match refuse(&front, &req) {
        Some(refused) => refused,
        None => match tokio::time::timeout(front.timeout, next.run(req)).await {
            Ok(resp) => error::shape(resp, is_head).await,
            Err(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                format!(
                    "the request took longer than {:?} (--request-timeout)",
                    front.timeout
                ),
            )
            .into_response(),
        },
    };
    front.requests.record(
        method,
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// Why `req` is refused before it is read: headers over the limit, or a
/// path segment that is empty, `.`/`..` or badly escaped.
fn refuse(front: &Front, req: &Request) -> Option<Response> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > front.max_headers {
        return Some(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "TooLarge",
                format!(
                    "request headers are {size} bytes; the limit is {} (--max-header-bytes)",
                    front.max_headers
                ),
            )
            .into_response(),
        );
    }
    let path = req.uri().path().strip_prefix("/api/v3/")?;
    api::check_segments(path)
        .err()
        .map(IntoResponse::into_response)
}

/// The response header naming the store revision an answer was given at.
pub const REVISION_HEADER: &str = "x-fleetkv-revision";

/// Every API request (all but `/api/v3/info` and the UI): authenticated
/// (the principal goes in its extensions; a refusal is a 401), then its
/// revision parameters are served.
///
/// `?min_revision=N`: the request waits (up to the longest wait) until the
/// store's indexes have reached revision N — on a server sharing etcd with
/// others, until it has caught up with a write another server answered.
/// `?linearizable=true`: the request first catches up with everything the
/// engine holds now (one etcd read of the revision), so it sees every write
/// any server acknowledged before it arrived; without it a server answers
/// from its indexes as they are (current within the watch's delay). On a
/// store no other server writes it changes nothing: its indexes are always
/// current.
/// Every answer carries `X-Fleetkv-Revision`: the store's revision once
/// the answer was ready, so it covers a write the request made and
/// everything the answer read (a client passes it as `min_revision` to
/// another server to read its own write there).
async fn gate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    match app.auth.authenticate(req.headers()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
        }
        Err(e) => return e.into_response(),
    }
    const OURS: [&str; 2] = ["min_revision=", "linearizable="];
    let query = req.uri().query().unwrap_or("");
    let (mut min, mut linearizable) = (None, None);
    if query.contains(OURS[0]) || query.contains(OURS[1]) {
        // Handlers read unknown query keys as filters (DRP's `?Key=value`):
        // the parameters are this layer's, taken out of the request.
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            if let Some(v) = kv.strip_prefix(OURS[0]) {
                min.get_or_insert_with(|| v.to_string());
            } else if let Some(v) = kv.strip_prefix(OURS[1]) {
                linearizable.get_or_insert_with(|| v.to_string());
            } else {
                rest.push(kv);
            }
        }
        let uri = req.uri();
        let path = if rest.is_empty() {
            uri.path().to_string()
        } else {
            format!("{}?{}", uri.path(), rest.join("&"))
        };
        if let Ok(p) = path.parse::<axum::http::uri::PathAndQuery>() {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(p);
            if let Ok(u) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    if let Some(text) = linearizable {
        match crate::wire::parse_bool_named("linearizable", &text) {
            Ok(false) => {}
            Ok(true) => {
                let store = app.store.clone();
                match tokio::task::spawn_blocking(move || store.catch_up()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return ApiError::from(e).into_response(),
                    Err(e) => {
                        return ApiError::from(crate::Error::Storage(format!(
                            "catching up for a linearizable read: {e}"
                        )))
                        .into_response()
                    }
                }
            }
            Err(why) => {
                return ApiError::from(crate::Error::invalid("linearizable", why)).into_response()
            }
        }
    }
    if let Some(min) = min {
        let Ok(min) = min.parse::<u64>() else {
            return ApiError::from(crate::Error::invalid(
                "min_revision",
                format!("{min:?} is not a revision"),
            ))
            .into_response();
        };
        if app.store.revision_in_memory() < min {
            let (store, deadline) = (app.store.clone(), std::time::Instant::now() + app.max_wait);
            let waited =
                tokio::task::spawn_blocking(move || store.wait_for_revision(min, deadline)).await;
            match waited {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return ApiError::from(e).into_response(),
                Err(e) => {
                    return ApiError::from(crate::Error::Storage(format!(
                        "waiting for revision {min}: {e}"
                    )))
                    .into_response()
                }
            }
        }
    }
    let mut resp = next.run(req).await;
    // Not `revision()`: on a durable store that waits for the disk, which
    // an async worker must not do for a header.
    resp.headers_mut().insert(
        REVISION_HEADER,
        axum::http::HeaderValue::from(app.store.revision_in_memory()),
    );
    resp
}

/// Reads the request body to its end before routing. A handler that takes
/// no body (GET, DELETE) would drop it unread, and hyper then closes the
/// connection unless the body's bytes happen to have arrived already: DRP's
/// clients send `{}` with every DELETE, so their next request on that
/// kept-alive connection failed. Bodies are bounded by the limit layers
/// outside this one (an excess is a 413 here, as in a handler).
async fn read_body(req: Request, next: Next) -> Response {
    if axum::body::HttpBody::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let whole = Request::from_parts(parts.clone(), body);
    match Bytes::from_request(whole, &()).await {
        Ok(b) => next.run(Request::from_parts(parts, Body::from(b))).await,
        Err(e) => e.into_response(),
    }
}

/// The store `config` names: on etcd (`--etcd`) or in its directory.
fn open_store(config: &Config) -> Result<Store, String> {
    let options = Options {
        durable: config.durable,
        stall_timeout: config.stall_timeout,
        lock_timeout: config.lock_timeout,
        max_lease_ttl: config.max_lease_ttl,
        ..Options::default()
    };
    #[cfg(feature = "etcd")]
    if !config.etcd.is_empty() {
        std::fs::create_dir_all(&config.data)
            .map_err(|e| format!("cannot create {}: {e}", config.data.display()))?;
        let etcd = crate::EtcdOptions {
            prefix: config.etcd_prefix.clone(),
            ..crate::EtcdOptions::default()
        };
        return Store::open_etcd(&config.etcd, etcd, options).map_err(|e| {
            format!(
                "cannot open the store in etcd ({}, prefix {}): {e}",
                config.etcd.join(","),
                config.etcd_prefix
            )
        });
    }
    Store::open_with(&config.data, options)
        .map_err(|e| format!("cannot open store {}: {e}", config.data.display()))
}

/// Opens the store, prepares credentials (printing a new admin key once to
/// stderr), listens, and serves until SIGINT/SIGTERM; then finishes in-flight
/// requests, flushes and returns.
pub fn run(config: Config) -> Result<(), String> {
    // Before the open, so that its duration is recorded.
    let recorder = metrics::recorder();
    let store = open_store(&config)?;
    let (auth, created) = auth::Authenticator::load(store.clone(), &config.data)
        .map_err(|e| format!("admin key in {}: {e}", config.data.display()))?;
    if let Some(key) = created {
        eprintln!(
            "fleetkv: new admin key (saved to {}, shown only now): {key}",
            config.data.join(auth::ADMIN_KEY_FILE).display()
        );
    }
    let app = Arc::new(App {
        store: store.clone(),
        auth,
        durable: config.durable,
        waiters: Arc::new(tokio::sync::Semaphore::new(config.max_waiters)),
        max_waiters: config.max_waiters,
        metrics: recorder.clone(),
        max_wait: config
            .request_timeout
            .saturating_sub(Duration::from_millis(500)),
        stopping: tokio::sync::watch::Sender::new(false),
    });
    let tls = match &config.tls {
        Some((cert, key)) => Some(listen::tls_acceptor(cert, key)?),
        None => None,
    };
    let limits = listen::ConnLimits {
        header_timeout: config.header_timeout,
        write_timeout: config.write_timeout,
        // Twice the DRP-shaped limit: the middleware answers moderate excess
        // with a 431 body; hyper cuts a flood off before buffering it.
        max_head_bytes: config.max_header_bytes.saturating_mul(2),
        max_connections: config.max_connections,
        grace: config.request_timeout,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let metrics_server = match &config.metrics_listen {
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| format!("cannot listen on {at} (--metrics-listen): {e}"))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| format!("cannot listen on {at} (--metrics-listen): {e}"))?;
                eprintln!("fleetkv: metrics on http://{addr}/metrics");
                let mut stopping = app.stopping.subscribe();
                let stop = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                Some(tokio::spawn(listen::serve(
                    listen::Listener::Tcp(listener),
                    None,
                    metrics::open_router(app.clone()),
                    limits.clone(),
                    stop,
                )))
            }
            None => None,
        };
        tokio::spawn(recover(store.clone()));
        if let Some(handle) = recorder {
            // Histograms buffer every observation until drained.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(metrics::UPKEEP);
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // The CLI on this store directory talks through the socket (plain
        // HTTP, the same credentials). It is a convenience: a directory
        // whose path is too long for a socket still gets its server.
        let socket = match listen::bind_socket(&config.data)? {
            Ok((listener, path)) => {
                let mut stopping = app.stopping.subscribe();
                let stop = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                let serving = tokio::spawn(listen::serve(
                    listen::Listener::Unix(listener),
                    None,
                    router(app.clone(), &config),
                    limits.clone(),
                    stop,
                ));
                Some((path, serving))
            }
            Err(why) => {
                eprintln!("fleetkv: no Unix socket for the CLI: {why}");
                None
            }
        };
        eprintln!("fleetkv: listening on {scheme}://{addr}");
        let stop = {
            let app = app.clone();
            async move {
                stop_signal().await;
                app.stopping.send_replace(true);
            }
        };
        listen::serve(
            listen::Listener::Tcp(listener),
            tls,
            router(app, &config),
            limits,
            stop,
        )
        .await;
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        if let Some((path, serving)) = socket {
            let _ = serving.await;
            let _ = std::fs::remove_file(path);
        }
        Ok::<_, String>(())
    })?;
    store.flush().map_err(|e| format!("flush: {e}"))?;
    // Event-stream threads notice their closed client within a poll; nothing
    // they hold needs waiting for once the store is flushed.
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("fleetkv: stopped");
    Ok(())
}

/// How often the server looks whether its store has failed, and the
/// shortest wait between two reopen attempts.
const RECOVER_TICK: Duration = Duration::from_millis(250);
/// The longest wait between two reopen attempts while they keep failing.
const RECOVER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Brings the store back after a failed flush or commit (a full disk, an
/// I/O error), without a restart.
///
/// The store refuses writes once the engine failed, because what the engine
/// buffered is unknown after an I/O error; only a reopen from disk may
/// decide what stands (the fsync lesson). So this task watches
/// [`Store::failure`] and calls [`Store::recover`] — which probes for free
/// space and only then closes the engine and opens it again from its
/// directory, like a restart — first at once, then with a backoff doubling
/// up to [`RECOVER_BACKOFF_MAX`] while the disk stays full. Meanwhile reads
/// are answered from the failed engine and writes get 507 (full disk) or
/// 500. The store is the same handle throughout (every clone — the router's,
/// the authenticator's, open event streams' — sees the reopened engine), so
/// nothing in the server is swapped.
async fn recover(store: Store) {
    let mut wait = RECOVER_TICK;
    let mut reported = false;
    loop {
        tokio::time::sleep(wait).await;
        let Some(why) = store.failure() else {
            wait = RECOVER_TICK;
            reported = false;
            continue;
        };
        if !reported {
            eprintln!("fleetkv: the store refuses writes ({why}); reopening it once the disk takes writes again");
            reported = true;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.recover()).await {
            Ok(Ok(_)) => {
                wait = RECOVER_TICK;
                reported = false;
            }
            Ok(Err(Error::Stalled { .. })) | Err(_) => return, // only a restart helps
            Ok(Err(_)) => wait = (wait * 2).min(RECOVER_BACKOFF_MAX),
        }
    }
}

async fn stop_signal() {
    let int = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = int.await;
                    return;
                }
            };
        tokio::select! {
            _ = int => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = int.await;
}
