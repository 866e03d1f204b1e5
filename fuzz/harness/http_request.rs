//! The server's request handling in process (shared by the `http_request`
//! fuzz target and `tests/fuzz_http_request.rs`, which replays the seeds on
//! stable).
//!
//! An input is a few requests: a method, a path built from a known route
//! prefix and fuzzed segments, a query of known keys with fuzzed values (or
//! raw text), credentials, a content type, other headers, and a body (a
//! DRP-shaped object, a patch, or raw bytes). Each goes through
//! `fleetkv::server::router` with `tower::ServiceExt::oneshot` on a fresh
//! in-memory store. Checked: nothing panics; every non-2xx answer with a
//! body is DRP's JSON error with `Code` equal to the status; no 500; after
//! the input, the store's indexes equal a rebuild (`verify_indexes`).
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use fleetkv::server::api::App;
use fleetkv::server::auth::Authenticator;
use fleetkv::server::{router, Config};
use fleetkv::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Most requests an input sends, segments in a path, query pairs, headers
/// and patch ops: keeps an execution cheap.
const MAX_REQS: usize = 4;
const MAX_PARTS: usize = 4;
/// The admin key written to the credentials directory.
const ADMIN_KEY: &str = "fuzz-admin-key";
/// Largest body the router takes (small, so that 413 is reachable).
const MAX_BODY: usize = 256;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Meth {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Meth {
    fn m(self) -> Method {
        match self {
            Meth::Get => Method::GET,
            Meth::Head => Method::HEAD,
            Meth::Post => Method::POST,
            Meth::Put => Method::PUT,
            Meth::Patch => Method::PATCH,
            Meth::Delete => Method::DELETE,
            Meth::Options => Method::OPTIONS,
        }
    }
}

/// Route prefixes (`/api/v3/events` is left out: its answer is an endless
/// stream).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Prefix {
    Machines,
    Profiles,
    Params,
    Info,
    OpenApi,
    WaitCount,
    WaitMachines,
    Clusters,
    Export,
    Import,
    Metrics,
    WorkflowAll,
    Root,
    ApiV3,
    Jobs,
}

impl Prefix {
    fn s(self) -> &'static str {
        match self {
            Prefix::Machines => "/api/v3/machines",
            Prefix::Profiles => "/api/v3/profiles",
            Prefix::Params => "/api/v3/params",
            Prefix::Info => "/api/v3/info",
            Prefix::OpenApi => "/api/v3/openapi.json",
            Prefix::WaitCount => "/api/v3/wait/count",
            Prefix::WaitMachines => "/api/v3/wait/machines",
            Prefix::Clusters => "/api/v3/clusters",
            Prefix::Export => "/api/v3/export",
            Prefix::Import => "/api/v3/import",
            Prefix::Metrics => "/metrics",
            Prefix::WorkflowAll => "/api/v3/workflow-all",
            Prefix::Root => "",
            Prefix::ApiV3 => "/api/v3",
            Prefix::Jobs => "/api/v3/jobs",
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Seg {
    M0,
    M1,
    P0,
    Global,
    Flag,
    SlashKey,
    Params,
    Token,
    Render,
    Members,
    Role,
    Elect,
    Uuid,
    NameM0,
    Raw(String),
}

impl Seg {
    fn s(&self) -> &str {
        match self {
            Seg::M0 => "m0",
            Seg::M1 => "m1",
            Seg::P0 => "p0",
            Seg::Global => "global",
            Seg::Flag => "flag",
            Seg::SlashKey => "c%2Fx",
            Seg::Params => "params",
            Seg::Token => "token",
            Seg::Render => "render",
            Seg::Members => "members",
            Seg::Role => "role",
            Seg::Elect => "elect",
            Seg::Uuid => "Uuid:3e7031fe-3062-45f1-835c-92541bc9cbd3",
            Seg::NameM0 => "Name:m0",
            Seg::Raw(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum QKey {
    Name,
    Flag,
    Filter,
    Limit,
    Offset,
    Sort,
    Reverse,
    Slim,
    Params,
    Aggregate,
    Decode,
    Until,
    Timeout,
    Profiles,
}

impl QKey {
    fn s(self) -> &'static str {
        [
            "Name",
            "flag",
            "filter",
            "limit",
            "offset",
            "sort",
            "reverse",
            "slim",
            "params",
            "aggregate",
            "decode",
            "until",
            "timeout",
            "Profiles",
        ][self as usize]
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum QVal {
    EqTrue,
    EqM0,
    One,
    Zero,
    True,
    Name,
    AtLeastOne,
    Re,
    Raw(String),
}

impl QVal {
    fn s(&self) -> &str {
        match self {
            QVal::EqTrue => "Eq(true)",
            QVal::EqM0 => "Eq(m0)",
            QVal::One => "1",
            QVal::Zero => "0",
            QVal::True => "true",
            QVal::Name => "Name",
            QVal::AtLeastOne => ">=1",
            QVal::Re => "Re(%5Em)",
            QVal::Raw(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Query {
    None,
    Pairs(Vec<(QKey, QVal)>),
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Auth {
    Admin,
    BasicAdmin,
    None,
    WrongBearer,
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Ctype {
    None,
    Json,
    MergePatch,
    JsonPatch,
    Text,
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Hdr {
    Expect(JVal),
    ExpectAbsent,
    LastEventId(String),
    Raw(String, String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum JVal {
    True,
    False,
    One,
    X,
    Null,
    Obj,
    P0,
    Ip,
}

impl JVal {
    fn v(self) -> Value {
        match self {
            JVal::True => json!(true),
            JVal::False => json!(false),
            JVal::One => json!(1),
            JVal::X => json!("x"),
            JVal::Null => Value::Null,
            JVal::Obj => json!({"k": 1}),
            JVal::P0 => json!("p0"),
            JVal::Ip => json!("10.0.0.1"),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum JKey {
    Name,
    Params,
    Profiles,
    Meta,
    Address,
    Schema,
    Uuid,
    Revision,
    Flag,
    Runnable,
}

impl JKey {
    fn s(self) -> &'static str {
        [
            "Name", "Params", "Profiles", "Meta", "Address", "Schema", "Uuid", "Revision", "flag",
            "Runnable",
        ][self as usize]
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum JBody {
    Machine {
        name: Seg,
        profiles: Vec<Seg>,
        flag: Option<JVal>,
    },
    Profile {
        name: Seg,
        flag: Option<JVal>,
    },
    ParamDef {
        name: Seg,
        ty: u8,
    },
    /// RFC 6902 ops: (op, path key, value).
    Patch(Vec<(u8, JKey, JVal)>),
    /// A one-member object: `{key: value}`.
    Object(JKey, JVal),
    /// `{"Params": {"flag": value}}`.
    Params(JVal),
    Value(JVal),
    Array(Vec<JVal>),
}

impl JBody {
    fn v(&self) -> Value {
        match self {
            JBody::Machine {
                name,
                profiles,
                flag,
            } => {
                let mut m = json!({"Name": name.s(), "Profiles": profiles.iter().take(MAX_PARTS).map(Seg::s).collect::<Vec<_>>()});
                if let Some(f) = flag {
                    m["Params"] = json!({"flag": f.v()});
                }
                m
            }
            JBody::Profile { name, flag } => {
                let mut p = json!({"Name": name.s()});
                if let Some(f) = flag {
                    p["Params"] = json!({"flag": f.v()});
                }
                p
            }
            JBody::ParamDef { name, ty } => {
                let t = ["boolean", "string", "number", "bogus"][*ty as usize % 4];
                json!({"Name": name.s(), "Schema": {"type": t}})
            }
            JBody::Patch(ops) => Value::Array(
                ops.iter()
                    .take(MAX_PARTS)
                    .map(|(op, k, v)| {
                        let op =
                            ["add", "remove", "replace", "test", "move", "copy"][*op as usize % 6];
                        let path = match k {
                            JKey::Flag => "/Params/flag".to_string(),
                            k => format!("/{}", k.s()),
                        };
                        json!({"op": op, "path": path, "value": v.v(), "from": "/Params/flag"})
                    })
                    .collect(),
            ),
            JBody::Object(k, v) => json!({k.s(): v.v()}),
            JBody::Params(v) => json!({"Params": {"flag": v.v()}}),
            JBody::Value(v) => v.v(),
            JBody::Array(vs) => Value::Array(vs.iter().take(MAX_PARTS).map(|v| v.v()).collect()),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum BodyIn {
    Empty,
    Json(JBody),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Req {
    pub method: Meth,
    pub prefix: Prefix,
    pub segs: Vec<Seg>,
    pub query: Query,
    pub auth: Auth,
    pub ctype: Ctype,
    pub headers: Vec<Hdr>,
    pub body: BodyIn,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub reqs: Vec<Req>,
}

/// The credentials directory (an admin key, no users): one per process.
static CREDS: OnceLock<std::path::PathBuf> = OnceLock::new();

fn creds_dir() -> &'static std::path::Path {
    CREDS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fleetkv-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("credentials directory");
        std::fs::write(dir.join("admin.key"), format!("{ADMIN_KEY}\n")).expect("admin key");
        dir
    })
}

/// Removes the credentials directory, if this process made one: a replay
/// of the seeds ends, a fuzzer's run does not (it leaves one directory).
#[allow(dead_code)]
pub fn remove_creds_dir() {
    if let Some(dir) = CREDS.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn config() -> Config {
    Config {
        max_body_bytes: MAX_BODY,
        max_header_bytes: 512,
        request_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

/// A fresh store and the app around it, as `server::run` builds them, but
/// in memory, without a recorder and with waits that do not wait.
fn app() -> Arc<App> {
    let store = Store::in_memory().expect("in-memory store");
    let (auth, _) = Authenticator::load(store.clone(), creds_dir()).expect("credentials");
    Arc::new(App {
        store,
        auth,
        durable: false,
        waiters: Arc::new(tokio::sync::Semaphore::new(4)),
        max_waiters: 4,
        metrics: None,
        max_wait: Duration::ZERO,
        stopping: tokio::sync::watch::Sender::new(false),
    })
}

fn build(r: &Req) -> Option<Request<Body>> {
    let mut uri = r.prefix.s().to_string();
    for s in r.segs.iter().take(MAX_PARTS) {
        uri.push('/');
        uri.push_str(s.s());
    }
    if uri.is_empty() {
        uri.push('/');
    }
    match &r.query {
        Query::None => {}
        Query::Pairs(ps) => {
            let q: Vec<String> = ps
                .iter()
                .take(MAX_PARTS)
                .map(|(k, v)| format!("{}={}", k.s(), v.s()))
                .collect();
            uri.push('?');
            uri.push_str(&q.join("&"));
        }
        Query::Raw(q) => {
            uri.push('?');
            uri.push_str(q);
        }
    }
    let mut b = Request::builder().method(r.method.m()).uri(uri);
    let auth = match &r.auth {
        Auth::Admin => Some(format!("Bearer {ADMIN_KEY}")),
        // base64("admin:fuzz-admin-key")
        Auth::BasicAdmin => Some("Basic YWRtaW46ZnV6ei1hZG1pbi1rZXk=".to_string()),
        Auth::None => None,
        Auth::WrongBearer => Some("Bearer x.y.z".to_string()),
        Auth::Raw(s) => Some(s.clone()),
    };
    if let Some(a) = auth.and_then(|a| HeaderValue::from_str(&a).ok()) {
        b = b.header(header::AUTHORIZATION, a);
    }
    let ct = match &r.ctype {
        Ctype::None => None,
        Ctype::Json => Some("application/json"),
        Ctype::MergePatch => Some("application/merge-patch+json"),
        Ctype::JsonPatch => Some("application/json-patch+json"),
        Ctype::Text => Some("text/plain"),
        Ctype::Raw(s) => Some(s.as_str()),
    };
    if let Some(v) = ct.and_then(|c| HeaderValue::from_str(c).ok()) {
        b = b.header(header::CONTENT_TYPE, v);
    }
    for h in r.headers.iter().take(MAX_PARTS) {
        let (name, value) = match h {
            Hdr::Expect(v) => ("x-fleetkv-expect".to_string(), v.v().to_string()),
            Hdr::ExpectAbsent => ("x-fleetkv-expect".to_string(), "absent".to_string()),
            Hdr::LastEventId(v) => ("last-event-id".to_string(), v.clone()),
            Hdr::Raw(n, v) => (n.clone(), v.clone()),
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            b = b.header(n, v);
        }
    }
    let body = match &r.body {
        BodyIn::Empty => Body::empty(),
        BodyIn::Json(j) => Body::from(j.v().to_string()),
        BodyIn::Raw(bytes) => Body::from(bytes.clone()),
    };
    b.body(body).ok()
}

/// Checks one answer: DRP's error shape on every non-2xx body, no 500.
async fn check(what: &str, resp: axum::response::Response) {
    let status = resp.status();
    let stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    assert!(
        status != axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: 500"
    );
    if status.is_success() || stream {
        return;
    }
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the {status} body: {e}"));
    if body.is_empty() {
        return;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{what}: {status} with a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(v["Code"], json!(status.as_u16()), "{what}: {status}: {v}");
    for k in ["Model", "Key", "Type"] {
        assert!(v[k].is_string(), "{what}: {status}: {k} in {v}");
    }
    assert!(
        v["Messages"][0].is_string(),
        "{what}: {status}: Messages in {v}"
    );
}

/// Runs one input: its requests in order on one fresh store.
pub fn run(input: &Input) {
    let app = app();
    let r = router(app.clone(), &config());
    runtime().block_on(async {
        for req in input.reqs.iter().take(MAX_REQS) {
            let Some(http) = build(req) else { continue };
            let what = format!("{} {}", http.method(), http.uri());
            let resp = r.clone().oneshot(http).await.unwrap_or_else(|e| match e {});
            check(&what, resp).await;
        }
    });
    app.store
        .verify_indexes()
        .unwrap_or_else(|e| panic!("indexes after the input: {e}"));
}
