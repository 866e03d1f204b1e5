//! [`Http`]: the [`Client`] of a remote `fleetkv serve` — DRP's `/api/v3`
//! over TCP (ureq), TLS (rustls, trusting the roots given) or the server's
//! Unix socket ([`super::unix`]).
//!
//! Owns: paths, query strings and headers of each call, and reading an
//! answer back into the crate's types: a DRP error body becomes the typed
//! [`Error`] the store raised when the server's message is exactly that
//! variant's (not found, already exists, conflict, timeout), else
//! [`Error::Server`] with the server's message; a server that cannot be
//! reached or answers garbage is [`Error::Transport`]. Must not: decide
//! anything the server decides (a reference update is sent whole, see
//! [`crate::wire::REFERENCE_UPDATE`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{unix, Client};
use crate::cluster::{Leadership, Role};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::model::Kind;
use crate::store::{Lease, LeaseId, ListOptions};
use crate::watch::CountCondition;
use crate::GroupCount;

/// An answer: the body (JSON; `Null` when empty) and the list count header.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The body.
    pub body: Value,
    /// `X-DRP-List-Count`, when sent.
    pub count: Option<u64>,
}

/// A connection to a `fleetkv serve`.
///
/// ```no_run
/// use fleetkv::client::{Client, Http};
/// use fleetkv::Kind;
/// let server = Http::new("http://127.0.0.1:8092").bearer("TOKEN");
/// let lease = server.grant_lease(10)?;
/// let me = server.clone().with_lease(Some(lease.id));
/// me.set_param(Kind::Machine, "Name:node-1", "agent/alive", None, true.into())?;
/// server.keep_alive(lease.id)?;
/// # Ok::<(), fleetkv::Error>(())
/// ```
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    base: String,
    socket: Option<PathBuf>,
    auth: Option<String>,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `X-Fleetkv-Lease` / `X-Fleetkv-Fence` sent with every request.
    guards: Vec<(&'static str, String)>,
}

impl Http {
    /// The server at `endpoint` (`http://host:port` or `https://…`).
    pub fn new(endpoint: &str) -> Http {
        Http {
            agent: ureq::Agent::new(),
            base: format!("{}/api/v3", endpoint.trim_end_matches('/')),
            socket: None,
            auth: None,
            timeout: Duration::from_secs(60),
            tls: None,
            guards: Vec::new(),
        }
        .with_timeout(Duration::from_secs(60))
    }

    /// The server listening on Unix socket `socket` (see [`unix::find`]).
    pub fn over_socket(socket: PathBuf) -> Http {
        Http {
            base: format!("unix:{}", socket.display()),
            socket: Some(socket),
            ..Http::new("http://localhost")
        }
    }

    /// Authenticates with a bearer token (a token, or the admin key).
    pub fn bearer(mut self, token: &str) -> Http {
        self.auth = Some(format!("Bearer {token}"));
        self
    }

    /// Authenticates with basic auth (`user:password`).
    pub fn basic(mut self, user_pass: &str) -> Http {
        self.auth = Some(basic(user_pass));
        self
    }

    /// Waits at most `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Http {
        self.timeout = timeout;
        self.agent = self.agent_builder().timeout(timeout).build();
        self
    }

    /// Trusts only the CA certificates of `tls` for `https`.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Http {
        self.tls = Some(tls);
        let timeout = self.timeout;
        self.with_timeout(timeout)
    }

    /// Machine writes are made under lease `lease` (the server refuses it
    /// on other writes).
    pub fn with_lease(mut self, lease: Option<LeaseId>) -> Http {
        self.guards.retain(|(k, _)| *k != "X-Fleetkv-Lease");
        if let Some(l) = lease {
            self.guards.push(("X-Fleetkv-Lease", l.to_string()));
        }
        self
    }

    /// Machine writes require leadership token `fence`.
    pub fn with_fence(mut self, fence: Option<u64>) -> Http {
        self.guards.retain(|(k, _)| *k != "X-Fleetkv-Fence");
        if let Some(f) = fence {
            self.guards.push(("X-Fleetkv-Fence", f.to_string()));
        }
        self
    }

    /// `…/api/v3` (or `unix:PATH` over a socket).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The Unix socket, when talking through one.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The `Authorization` header sent.
    pub fn authorization(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// The answer timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An agent builder trusting the configured roots (for callers that
    /// need their own timeouts, such as event streams).
    pub fn agent_builder(&self) -> ureq::AgentBuilder {
        let b = ureq::AgentBuilder::new();
        match &self.tls {
            Some(tls) => b.tls_config(tls.clone()),
            None => b,
        }
    }

    /// One request: `path` under `/api/v3`, an optional `(content type,
    /// body)`, extra headers. An error answer is the error it stands for.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
        headers: &[(&str, String)],
    ) -> Result<Answer> {
        let body = body.map(|(ct, b)| (ct, b.to_string()));
        self.call_on(&self.agent, method, path, body, headers)
    }

    /// [`call`](Self::call) through `agent` (its own timeouts and pooling;
    /// over a Unix socket it is not used), with a body already encoded.
    pub fn call_on(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, String)],
    ) -> Result<Answer> {
        let (status, count, text) = self.send(agent, method, path, body, headers)?;
        let url = format!("{}{path}", self.base);
        if status >= 400 {
            return Err(error_answer(&url, status, &text));
        }
        Ok(Answer {
            body: parse_answer(&url, &text)?,
            count,
        })
    }

    /// POSTs a text body (a template) and returns the text answer.
    pub fn post_text(&self, path: &str, text: &str) -> Result<String> {
        let body = Some(("text/plain; charset=utf-8", text.to_string()));
        let (status, _, answer) = self.send(&self.agent, "POST", path, body, &[])?;
        if status >= 400 {
            return Err(error_answer(
                &format!("{}{path}", self.base),
                status,
                &answer,
            ));
        }
        Ok(answer)
    }

    /// (status, list count, body text).
    fn send(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, String)],
    ) -> Result<(u16, Option<u64>, String)> {
        let url = format!("{}{path}", self.base);
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .chain(&self.guards)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        if let Some(a) = &self.auth {
            all.push(("Authorization", a));
        }
        if let Some(socket) = &self.socket {
            if let Some((ct, _)) = &body {
                all.push(("Content-Type", ct));
            }
            let reply = unix::send(
                socket,
                self.timeout,
                method,
                &format!("/api/v3{path}"),
                &all,
                body.as_ref().map(|(_, b)| b.as_bytes()),
            )
            .map_err(|e| unreachable(&url, &e))?;
            let count = reply
                .header("x-drp-list-count")
                .and_then(|c| c.parse().ok());
            let status = reply.status;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut { reply.body }, &mut text)
                .map_err(|e| unreachable(&url, &e))?;
            return Ok((status, count, text));
        }
        let mut r = agent.request(method, &url);
        for (k, v) in all {
            r = r.set(k, v);
        }
        let res = match &body {
            Some((ct, b)) => r.set("Content-Type", ct).send_string(b),
            None => r.call(),
        };
        let resp = match res {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => return Err(transport(&url, &t)),
        };
        let status = resp.status();
        let count = resp.header("X-DRP-List-Count").and_then(|c| c.parse().ok());
        // Read whole (ureq's `into_string` stops at 10 MB; an export is more).
        let mut text = String::new();
        std::io::Read::read_to_string(&mut resp.into_reader(), &mut text)
            .map_err(|e| unreachable(&url, &e))?;
        Ok((status, count, text))
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self.call("GET", path, None, &[])?.body)
    }

    /// `HEAD path`: the count the server puts in `X-DRP-List-Count`.
    fn head_count(&self, path: &str) -> Result<u64> {
        self.call("HEAD", path, None, &[])?
            .count
            .ok_or_else(|| Error::Transport {
                message: format!(
                    "{}{path}: no X-DRP-List-Count header in the answer; is this a fleetkv server?",
                    self.base
                ),
                timed_out: false,
            })
    }

    /// A server-side wait, repeated (each is cut to the server's request
    /// timeout) until it answers or `timeout` passes.
    fn long_poll(&self, path: &str, timeout: Duration) -> Result<Value> {
        self.long_poll_on("GET", path, timeout)
    }

    fn long_poll_on(&self, method: &str, path: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let sep = if path.contains('?') { '&' } else { '?' };
            let at = format!("{path}{sep}timeout={:.3}", left.as_secs_f64());
            match self.call(method, &at, None, &[]) {
                Err(Error::Timeout) if Instant::now() < deadline => continue,
                Err(Error::Server { status, .. })
                    if matches!(status, 503 | 504) && Instant::now() < deadline =>
                {
                    continue
                }
                Err(Error::Timeout | Error::Server { .. }) if Instant::now() >= deadline => {
                    return Err(Error::Timeout)
                }
                other => return other.map(|a| a.body),
            }
        }
    }
}

fn obj(kind: Kind, id: &str) -> String {
    format!("/{}/{}", kind.plural(), enc(id, false))
}

fn param(kind: Kind, id: &str, key: &str) -> String {
    format!("{}/params/{}", obj(kind, id), enc(key, true))
}

fn aggregate_q(aggregate: bool) -> &'static str {
    if aggregate {
        "?aggregate=true"
    } else {
        ""
    }
}

/// A list or count query: the listing keys and the filter in its text form.
fn query(filter: &Filter, opts: &ListOptions, group_by: &[String]) -> String {
    let mut q: Vec<String> = Vec::new();
    if !filter.is_all() {
        q.push(format!("filter={}", enc(&filter.to_string(), false)));
    }
    if let Some(s) = &opts.sort {
        q.push(format!("sort={}", enc(s, false)));
    }
    if let Some(l) = opts.limit {
        q.push(format!("limit={l}"));
    }
    if opts.offset > 0 {
        q.push(format!("offset={}", opts.offset));
    }
    if opts.reverse {
        q.push("reverse=true".into());
    }
    if !opts.slim.is_empty() {
        q.push(format!("slim={}", enc(&opts.slim.join(","), false)));
    }
    if let Some(p) = &opts.params {
        q.push(format!("params={}", enc(&p.join(","), false)));
    }
    if opts.aggregate {
        q.push("aggregate=true".into());
    }
    for key in group_by {
        q.push(format!("group-by={}", enc(key, false)));
    }
    if !group_by.is_empty() {
        q.push("range-only=true".into());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn decode<T: serde::de::DeserializeOwned>(url: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Transport {
        message: format!("{url}: unexpected answer ({e}); is this a fleetkv server?"),
        timed_out: false,
    })
}

impl Client for Http {
    fn get(&self, kind: Kind, id: &str) -> Result<Value> {
        self.get_json(&obj(kind, id))
    }

    fn exists(&self, kind: Kind, id: &str) -> Result<bool> {
        match self.get_json(&obj(kind, id)) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create(&self, kind: Kind, doc: Value) -> Result<Value> {
        let path = format!("/{}", kind.plural());
        Ok(self
            .call("POST", &path, Some(("application/json", &doc)), &[])?
            .body)
    }

    fn replace(&self, kind: Kind, id: &str, doc: Value) -> Result<Value> {
        Ok(self
            .call("PUT", &obj(kind, id), Some(("application/json", &doc)), &[])?
            .body)
    }

    fn merge(&self, kind: Kind, id: &str, merge: &Value) -> Result<Value> {
        let body = Some(("application/merge-patch+json", merge));
        Ok(self.call("PATCH", &obj(kind, id), body, &[])?.body)
    }

    fn patch(&self, kind: Kind, id: &str, ops: &Value) -> Result<Value> {
        if !ops.is_array() {
            return Err(crate::store::not_a_patch(ops));
        }
        let body = Some(("application/json-patch+json", ops));
        Ok(self.call("PATCH", &obj(kind, id), body, &[])?.body)
    }

    fn update_from(
        &self,
        kind: Kind,
        id: &str,
        reference: &Value,
        desired: &Value,
    ) -> Result<Value> {
        let body = json!({ "Reference": reference, "Desired": desired });
        let body = Some((crate::wire::REFERENCE_UPDATE, &body));
        Ok(self.call("PATCH", &obj(kind, id), body, &[])?.body)
    }

    fn delete(&self, kind: Kind, id: &str) -> Result<Value> {
        Ok(self.call("DELETE", &obj(kind, id), None, &[])?.body)
    }

    fn list(&self, kind: Kind, filter: &Filter, opts: &ListOptions) -> Result<Vec<Value>> {
        let path = format!("/{}{}", kind.plural(), query(filter, opts, &[]));
        decode(&path, self.get_json(&path)?)
    }

    fn count(&self, kind: Kind, filter: &Filter) -> Result<u64> {
        let path = format!(
            "/{}{}",
            kind.plural(),
            query(filter, &ListOptions::default(), &[])
        );
        self.head_count(&path)
    }

    fn group_count(&self, kind: Kind, filter: &Filter, by: &[String]) -> Result<Vec<GroupCount>> {
        let path = format!(
            "/{}{}",
            kind.plural(),
            query(filter, &ListOptions::default(), by)
        );
        decode(&path, self.get_json(&path)?)
    }

    fn params(&self, kind: Kind, id: &str, aggregate: bool) -> Result<Map<String, Value>> {
        let path = format!("{}/params{}", obj(kind, id), aggregate_q(aggregate));
        decode(&path, self.get_json(&path)?)
    }

    fn get_param(&self, kind: Kind, id: &str, key: &str, aggregate: bool) -> Result<Option<Value>> {
        let v = self.get_json(&format!(
            "{}{}",
            param(kind, id, key),
            aggregate_q(aggregate)
        ))?;
        Ok((!v.is_null()).then_some(v))
    }

    fn set_param(
        &self,
        kind: Kind,
        id: &str,
        key: &str,
        expected: Option<Option<&Value>>,
        value: Value,
    ) -> Result<Value> {
        let expect: Vec<(&str, String)> = match expected {
            None => vec![],
            Some(None) => vec![("X-Fleetkv-Expect", "absent".into())],
            Some(Some(v)) => vec![("X-Fleetkv-Expect", v.to_string())],
        };
        let body = Some(("application/json", &value));
        Ok(self
            .call("POST", &param(kind, id, key), body, &expect)?
            .body)
    }

    fn remove_param(&self, kind: Kind, id: &str, key: &str) -> Result<Option<Value>> {
        let v = self.call("DELETE", &param(kind, id, key), None, &[])?.body;
        Ok((!v.is_null()).then_some(v))
    }

    fn wait_machine(&self, id: &str, filter: &Filter, timeout: Duration) -> Result<()> {
        let path = format!(
            "/wait/machines/{}?filter={}",
            enc(id, false),
            enc(&filter.to_string(), false)
        );
        self.long_poll(&path, timeout).map(drop)
    }

    fn count_wait(&self, filter: &Filter, until: CountCondition, timeout: Duration) -> Result<u64> {
        let path = format!(
            "/wait/count?until={}&filter={}",
            enc(&until.to_string(), false),
            enc(&filter.to_string(), false)
        );
        let body = self.long_poll(&path, timeout)?;
        body["Count"].as_u64().ok_or_else(|| Error::Transport {
            message: format!("{path}: no Count in the answer; is this a fleetkv server?"),
            timed_out: false,
        })
    }

    fn grant_lease(&self, ttl: u64) -> Result<Lease> {
        let body = json!({ "TTL": ttl });
        let a = self.call("POST", "/leases", Some(("application/json", &body)), &[])?;
        decode("/leases", a.body)
    }

    fn keep_alive(&self, id: LeaseId) -> Result<Lease> {
        let path = format!("/leases/{id}/keepalive");
        decode(&path, self.call("POST", &path, None, &[])?.body)
    }

    fn revoke_lease(&self, id: LeaseId) -> Result<Lease> {
        let path = format!("/leases/{id}");
        decode(&path, self.call("DELETE", &path, None, &[])?.body)
    }

    fn lease(&self, id: LeaseId) -> Result<Lease> {
        let path = format!("/leases/{id}");
        decode(&path, self.get_json(&path)?)
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        decode("/leases", self.get_json("/leases")?)
    }

    fn cluster_init(&self, name: &str, filter: Option<&str>) -> Result<Value> {
        let body = match filter {
            Some(f) => json!({ "Filter": f }),
            None => json!({}),
        };
        let body = Some(("application/json", &body));
        Ok(self.call("POST", &cluster(name), body, &[])?.body)
    }

    fn cluster_add(&self, name: &str, machine: &str) -> Result<Value> {
        Ok(self.call("POST", &member(name, machine), None, &[])?.body)
    }

    fn cluster_remove(&self, name: &str, machine: &str) -> Result<Value> {
        Ok(self.call("DELETE", &member(name, machine), None, &[])?.body)
    }

    fn cluster_members(
        &self,
        name: &str,
        extra: &Filter,
        opts: &ListOptions,
    ) -> Result<Vec<Value>> {
        let path = format!("{}/members{}", cluster(name), query(extra, opts, &[]));
        decode(&path, self.get_json(&path)?)
    }

    fn cluster_count(&self, name: &str, extra: &Filter) -> Result<u64> {
        let path = format!(
            "{}/members{}",
            cluster(name),
            query(extra, &ListOptions::default(), &[])
        );
        self.head_count(&path)
    }

    fn cluster_role(&self, name: &str, machine: &str) -> Result<Role> {
        let path = format!("{}/role", member(name, machine));
        decode(&path, self.get_json(&path)?)
    }

    fn cluster_set_role(&self, name: &str, machine: &str, role: Role) -> Result<Value> {
        let path = format!("{}/role", member(name, machine));
        let word = json!(role);
        Ok(self
            .call("PUT", &path, Some(("application/json", &word)), &[])?
            .body)
    }

    fn elect(&self, name: &str, leaders: usize) -> Result<Vec<Value>> {
        let path = format!("{}/elect?leaders={leaders}", cluster(name));
        decode(&path, self.call("POST", &path, None, &[])?.body)
    }

    fn campaign(
        &self,
        name: &str,
        machine: &str,
        lease: LeaseId,
        leaders: usize,
        timeout: Duration,
    ) -> Result<Leadership> {
        let path = format!(
            "{}/campaign?machine={}&lease={lease}&leaders={leaders}",
            cluster(name),
            enc(machine, false)
        );
        decode(&path, self.long_poll_on("POST", &path, timeout)?)
    }

    fn resign(&self, name: &str, machine: &str) -> Result<Value> {
        let path = format!("{}/resign?machine={}", cluster(name), enc(machine, false));
        Ok(self.call("POST", &path, None, &[])?.body)
    }
}

fn cluster(name: &str) -> String {
    format!("/clusters/{}", enc(name, false))
}

fn member(name: &str, machine: &str) -> String {
    format!("{}/members/{}", cluster(name), enc(machine, false))
}

/// Percent-encodes a path segment or query value (`/` kept with
/// `keep_slash`, for param names in paths).
pub fn enc(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Basic base64(user:pass)`.
fn basic(user_pass: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("Basic ");
    for c in user_pass.as_bytes().chunks(3) {
        let n = c.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - c.len()));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn parse_answer(url: &str, text: &str) -> Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|_| Error::Transport {
        message: format!("{url}: the server's answer is not JSON; is this a fleetkv server?"),
        timed_out: false,
    })
}

/// A DRP error answer (`status`, body `text`, from `url`) as the error the
/// store raised: the typed variant when the server's message is exactly
/// that variant's, else [`Error::Server`]. For callers that read answers
/// themselves (event streams).
pub fn error_answer(url: &str, status: u16, text: &str) -> Error {
    let err: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let typ = err.get("Type").and_then(Value::as_str).unwrap_or("");
    let messages: Vec<&str> = err
        .get("Messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(message) = messages.first().map(|m| m.to_string()) else {
        return Error::Server {
            status,
            typ: typ.to_string(),
            message: format!("{url}: HTTP {status} {}", text.trim()),
        };
    };
    let kind = || serde_json::from_value::<Kind>(err.get("Model").cloned().unwrap_or_default());
    let key = || {
        err.get("Key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let typed = match (status, typ) {
        (404, "NotFound") => kind().ok().map(|kind| Error::NotFound { kind, key: key() }),
        (409, "AlreadyExists") => kind()
            .ok()
            .map(|kind| Error::AlreadyExists { kind, key: key() }),
        (409, "Conflict") => {
            let field = |name: &str| {
                messages
                    .iter()
                    .find_map(|m| m.strip_prefix(name))
                    .map(str::to_string)
            };
            let value = |v: Option<String>| match v.as_deref() {
                None | Some("absent") => None,
                Some(t) => serde_json::from_str::<Value>(t).ok().map(Box::new),
            };
            field("path: ").map(|path| Error::Conflict {
                path,
                expected: value(field("expected: ")),
                actual: value(field("actual: ")),
            })
        }
        (408, "Timeout") => Some(Error::Timeout),
        _ => None,
    };
    match typed {
        // Only when it reads exactly as the server's message: a client
        // says what the store said.
        Some(e) if e.to_string() == message => e,
        _ => Error::Server {
            status,
            typ: typ.to_string(),
            message,
        },
    }
}

/// A ureq transport failure of a request to `url`.
pub fn transport(url: &str, t: &ureq::Transport) -> Error {
    use std::error::Error as _;
    let mut what = t.kind().to_string();
    if let Some(m) = t.message() {
        what = format!("{what}: {m}");
    }
    match t.source().and_then(|e| e.downcast_ref::<std::io::Error>()) {
        Some(io) => {
            what = format!("{what}: {io}");
            unreached(url, &what, timed_out(io))
        }
        None => unreached(url, &what, false),
    }
}

/// An I/O failure talking to `url`.
pub fn unreachable(url: &str, e: &std::io::Error) -> Error {
    unreached(url, &e.to_string(), timed_out(e))
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn unreached(url: &str, what: &str, timed_out: bool) -> Error {
    Error::Transport {
        message: format!(
            "cannot reach the server at {url}: {what}{}",
            if timed_out { " (timed out)" } else { "" }
        ),
        timed_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_and_encoding() {
        assert_eq!(basic("admin:key"), "Basic YWRtaW46a2V5");
        assert_eq!(basic("a"), "Basic YQ==");
        assert_eq!(enc("my/data x", false), "my%2Fdata%20x");
        assert_eq!(enc("my/data", true), "my/data");
    }

    #[test]
    fn error_answers_come_back_typed_only_when_they_read_the_same() {
        let e = Error::not_found(Kind::Machine, "ghost");
        let body = json!({"Model": "machines", "Key": "ghost", "Type": "NotFound",
            "Messages": [e.to_string()], "Code": 404});
        assert!(matches!(
            error_answer("u", 404, &body.to_string()),
            Error::NotFound { kind: Kind::Machine, ref key } if key == "ghost"
        ));
        let c = Error::Conflict {
            path: "/Params/x".into(),
            expected: Some(Box::new(json!(1))),
            actual: None,
        };
        let body = json!({"Model": "", "Key": "", "Type": "Conflict", "Code": 409,
            "Messages": [c.to_string(), "path: /Params/x", "expected: 1", "actual: absent"]});
        let back = error_answer("u", 409, &body.to_string());
        assert!(matches!(back, Error::Conflict { .. }), "{back:?}");
        assert_eq!(back.to_string(), c.to_string());
        // The router's own 404 is not a store's NotFound.
        let body = json!({"Model": "", "Key": "", "Type": "NotFound",
            "Messages": ["no such endpoint"], "Code": 404});
        assert!(matches!(
            error_answer("u", 404, &body.to_string()),
            Error::Server { status: 404, .. }
        ));
        assert!(matches!(
            error_answer("u", 502, "<html>"),
            Error::Server { status: 502, .. }
        ));
    }
}
