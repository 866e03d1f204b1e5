//! Remote mode: every verb sent to `fleetkv serve` (`-E URL` / `$RS_ENDPOINT`),
//! with the same output and exit codes as on an embedded store; and the
//! `serve` subcommand's flags.
//!
//! Credentials: `-T TOKEN` / `$RS_TOKEN` (a JWT or the admin key, sent as
//! Bearer), or `-U USER -P PASS` / `$RS_KEY=USER:PASS` (basic auth).

use std::time::Duration;

use clap::Args;
use fleetkv::{Filter, Kind};
use serde_json::{json, Value};

mod events;
mod unix;

use super::cluster::ClusterVerb;
use super::leases::{self, LeaseVerb};
use super::waited;
use super::{
    escape, group_by_kinds, listing, loose_json, machines_only, parse_json, pretty, with_params,
    Ctx, Failure, ListArgs, MetaVerb, Out, Verb,
};

/// Flags that select remote mode.
#[derive(Args)]
pub struct RemoteArgs {
    /// Send every verb to this `fleetkv serve` URL instead of opening a store.
    #[arg(
        short = 'E',
        long,
        global = true,
        env = "RS_ENDPOINT",
        value_name = "URL"
    )]
    endpoint: Option<String>,
    /// User name for basic auth (with -P).
    #[arg(short = 'U', long, global = true, value_name = "USER")]
    username: Option<String>,
    /// Password for basic auth (with -U).
    #[arg(short = 'P', long, global = true, value_name = "PASS")]
    password: Option<String>,
    /// Trust this PEM CA certificate for an https endpoint (default: the
    /// public web roots).
    #[arg(long, global = true, env = "RS_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Seconds to wait for the server's answer.
    #[arg(long, global = true, default_value_t = 60.0, value_name = "SECONDS")]
    http_timeout: f64,
}

impl RemoteArgs {
    /// The client, when an endpoint is given.
    pub fn client(&self, token: Option<&str>) -> Out<Option<Remote>> {
        let Some(ep) = &self.endpoint else {
            return Ok(None);
        };
        let auth = match (token, &self.username, &self.password) {
            (Some(t), _, _) => Some(format!("Bearer {t}")),
            (None, Some(u), Some(p)) => Some(basic(&format!("{u}:{p}"))),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(Failure::input("-U and -P go together"))
            }
            (None, None, None) => std::env::var("RS_KEY").ok().map(|k| basic(&k)),
        };
        let timeout = Duration::try_from_secs_f64(self.http_timeout)
            .map_err(|_| Failure::input("--http-timeout: expected a non-negative number"))?;
        let tls = self.ca_cert.as_deref().map(tls_trusting).transpose()?;
        let mut remote = Remote {
            agent: ureq::Agent::new(),
            base: format!("{}/api/v3", ep.trim_end_matches('/')),
            socket: None,
            auth,
            timeout,
            tls,
            guards: Vec::new(),
        };
        remote.agent = remote.agent_builder().timeout(timeout).build();
        Ok(Some(remote))
    }
}

impl RemoteArgs {
    /// The server that owns store directory `dir`, through its Unix socket,
    /// when one is running: as `token` when given, else as the admin (the
    /// key in `dir`, which whoever may open the store can read).
    pub fn local(&self, dir: &std::path::Path, token: Option<&str>) -> Out<Option<Remote>> {
        let Some(socket) = unix::find(dir).map_err(Failure::input)? else {
            return Ok(None);
        };
        let auth = match token {
            Some(t) => format!("Bearer {t}"),
            None => {
                let key_file = dir.join(fleetkv::wire::ADMIN_KEY_FILE);
                let key = std::fs::read_to_string(&key_file).map_err(|e| Failure {
                    code: 6,
                    msg: format!(
                        "a server owns {} (socket {}), and its admin key {} cannot be read: {e}; give -T TOKEN",
                        dir.display(),
                        socket.display(),
                        key_file.display()
                    ),
                })?;
                format!("Bearer {}", key.trim())
            }
        };
        let timeout = Duration::try_from_secs_f64(self.http_timeout)
            .map_err(|_| Failure::input("--http-timeout: expected a non-negative number"))?;
        Ok(Some(Remote {
            agent: ureq::Agent::new(),
            base: format!("unix:{}", socket.display()),
            socket: Some(socket),
            auth: Some(auth),
            timeout,
            tls: None,
            guards: Vec::new(),
        }))
    }
}

/// A TLS client configuration trusting only the CA certificates in `ca`.
fn tls_trusting(ca: &std::path::Path) -> Out<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad =
        |e: &dyn std::fmt::Display| Failure::input(format!("--ca-cert {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// `fleetkv serve` flags.
#[cfg(feature = "server")]
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8092", value_name = "ADDR")]
    listen: String,
    /// Accepted for old scripts: writes are flushed before they are
    /// answered unless `--no-fsync` is given.
    #[arg(long, hide = true, conflicts_with = "no_fsync")]
    durable: bool,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Largest total size of a request's headers, in bytes.
    #[arg(long, default_value_t = 16 << 10, value_name = "BYTES")]
    max_header_bytes: usize,
    /// Longest a request may take, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    request_timeout: f64,
    /// Most long-poll waits and event streams served at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_waiters: usize,
    /// Longest a client may take to send a request's headers, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    header_timeout: f64,
    /// Longest a response may wait for a client to read, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    write_timeout: f64,
    /// Most open connections.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_connections: usize,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Also serve GET /metrics (Prometheus text) on this address, over
    /// plain HTTP and without credentials; keep it on loopback or a
    /// monitoring network. On --listen, /metrics needs the claim metrics/get/*.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// The longest lease TTL granted, in seconds.
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    max_lease_ttl: u64,
    /// Keep the store on this etcd cluster (comma-separated client URLs of
    /// its members, `http://host:2379`), shared with other fleetkv servers;
    /// the store directory then holds only credentials.
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The key prefix of the store in etcd (with --etcd).
    #[cfg(feature = "etcd")]
    #[arg(
        long,
        default_value = "/fleetkv/",
        value_name = "PREFIX",
        requires = "etcd"
    )]
    etcd_prefix: String,
    /// Add (or replace) a basic-auth user `NAME:PASS` in the store directory, then exit.
    #[arg(long, value_name = "NAME:PASS")]
    add_user: Option<String>,
}

#[cfg(feature = "server")]
impl ServeArgs {
    /// Runs the server (or adds a user) on store directory `data`; storage
    /// calls stalled for `stall_timeout` seconds answer 503.
    pub fn run(self, data: std::path::PathBuf, stall_timeout: f64, no_fsync: bool) -> Out {
        if let Some(nv) = &self.add_user {
            let (n, p) = nv
                .split_once(':')
                .ok_or_else(|| Failure::input("--add-user: expected NAME:PASS"))?;
            fleetkv::server::auth::add_user(&data, n, p)
                .map_err(|e| Failure::input(format!("--add-user: {e}")))?;
            eprintln!("fleetkv: user {n} saved");
            return Ok(());
        }
        let secs = |flag: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| Failure::input(format!("--{flag}: expected a positive number")))
        };
        fleetkv::server::run(fleetkv::server::Config {
            data,
            listen: self.listen,
            durable: !no_fsync,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            request_timeout: secs("request-timeout", self.request_timeout)?,
            max_waiters: self.max_waiters,
            header_timeout: secs("header-timeout", self.header_timeout)?,
            write_timeout: secs("write-timeout", self.write_timeout)?,
            max_connections: self.max_connections,
            stall_timeout: secs("stall-timeout", stall_timeout)?,
            tls: self.tls_cert.zip(self.tls_key),
            metrics_listen: self.metrics_listen,
            max_lease_ttl: Duration::from_secs(self.max_lease_ttl),
            #[cfg(feature = "etcd")]
            etcd: self.etcd,
            #[cfg(feature = "etcd")]
            etcd_prefix: self.etcd_prefix,
        })
        .map_err(|msg| Failure { code: 1, msg })
    }
}

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

/// Percent-encodes a path segment (`keep_slash`: a param name's `/` stays).
fn enc(s: &str, keep_slash: bool) -> String {
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

/// A connection to `fleetkv serve`.
pub struct Remote {
    agent: ureq::Agent,
    base: String,
    /// The server's Unix socket (`fleetkv --data DIR` while a server owns
    /// DIR); requests go there instead of through `agent`.
    socket: Option<std::path::PathBuf>,
    auth: Option<String>,
    /// `--http-timeout`.
    timeout: Duration,
    /// `--ca-cert`: the roots every agent trusts.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `--lease` / `--fence` as headers on every request (the server
    /// applies them to machine writes).
    guards: Vec<(&'static str, String)>,
}

/// What came back: the body and the list count header.
struct Answer {
    body: Value,
    count: Option<u64>,
}

impl Remote {
    /// Sends `--lease` / `--fence` with every request.
    pub fn guard_writes(&mut self, lease: Option<u64>, fence: Option<u64>) {
        if let Some(l) = lease {
            self.guards.push(("X-Fleetkv-Lease", l.to_string()));
        }
        if let Some(f) = fence {
            self.guards.push(("X-Fleetkv-Fence", f.to_string()));
        }
    }

    /// An agent builder trusting `--ca-cert` when given.
    pub(super) fn agent_builder(&self) -> ureq::AgentBuilder {
        let b = ureq::AgentBuilder::new();
        match &self.tls {
            Some(tls) => b.tls_config(tls.clone()),
            None => b,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
        headers: &[(&str, String)],
    ) -> Out<Answer> {
        let body = body.map(|(ct, b)| (ct, b.to_string()));
        self.request(&self.agent, method, path, body, headers)
            .map_err(|(_, f)| f)
    }

    /// One request through `agent`; a failure keeps the HTTP status it
    /// came with (`None`: the server was not reached).
    fn request(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, String)],
    ) -> Result<Answer, (Option<u16>, Failure)> {
        let url = format!("{}{path}", self.base);
        if self.socket.is_some() {
            let (count, text) = self.over_socket(method, path, body, headers)?;
            return Ok(Answer {
                body: parse_answer(&url, &text).map_err(|f| (None, f))?,
                count,
            });
        }
        let mut r = agent.request(method, &url);
        if let Some(a) = &self.auth {
            r = r.set("Authorization", a);
        }
        for (k, v) in headers.iter().chain(&self.guards) {
            r = r.set(k, v);
        }
        let res = match &body {
            Some((ct, b)) => r.set("Content-Type", ct).send_string(b),
            None => r.call(),
        };
        match res {
            Ok(resp) => {
                let count = resp.header("X-DRP-List-Count").and_then(|c| c.parse().ok());
                let text = body_text(resp).map_err(|e| (None, unreachable(&url, &e)))?;
                let body = parse_answer(&url, &text).map_err(|f| (None, f))?;
                Ok(Answer { body, count })
            }
            Err(ureq::Error::Status(code, resp)) => Err((
                Some(code),
                status_failure(&url, code, &resp.into_string().unwrap_or_default()),
            )),
            Err(ureq::Error::Transport(t)) => Err((None, transport(&url, &t))),
        }
    }

    /// One request through the Unix socket: the list count and the answer's
    /// text, or the failure its status maps to.
    fn over_socket(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, String)],
    ) -> Result<(Option<u64>, String), (Option<u16>, Failure)> {
        let Some(socket) = &self.socket else {
            return Err((None, Failure::other("no server socket")));
        };
        let url = format!("{}{path}", self.base);
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .chain(&self.guards)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        if let Some(a) = &self.auth {
            all.push(("Authorization", a));
        }
        if let Some((ct, _)) = &body {
            all.push(("Content-Type", ct));
        }
        let target = format!("/api/v3{path}");
        let reply = unix::send(
            socket,
            self.timeout,
            method,
            &target,
            &all,
            body.as_ref().map(|(_, b)| b.as_bytes()),
        )
        .map_err(|e| (None, unreachable(&url, &e)))?;
        let count = reply
            .header("x-drp-list-count")
            .and_then(|c| c.parse().ok());
        let status = reply.status;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { reply.body }, &mut text)
            .map_err(|e| (None, unreachable(&url, &e)))?;
        if status >= 400 {
            return Err((Some(status), status_failure(&url, status, &text)));
        }
        Ok((count, text))
    }

    /// Repeats a server-side wait (each cut to the server's request
    /// timeout) until it answers or `seconds` pass (exit 5).
    fn long_poll(&self, path: &str, seconds: f64) -> Out<Value> {
        let deadline = std::time::Instant::now()
            + Duration::try_from_secs_f64(seconds)
                .map_err(|_| Failure::input(format!("{seconds}: expected seconds")))?;
        loop {
            let left = deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_secs_f64();
            match self.call("GET", &format!("{path}&timeout={left:.3}"), None, &[]) {
                Err(f) if f.code == 5 && left > 0.0 && std::time::Instant::now() < deadline => {
                    continue
                }
                Err(f) if f.code == 5 => return Err(Failure::timeout()),
                other => return other.map(|a| a.body),
            }
        }
    }

    /// POSTs a text body and returns the text answer.
    fn post_text(&self, path: &str, text: &str) -> Out<String> {
        if self.socket.is_some() {
            let body = Some(("text/plain; charset=utf-8", text.to_string()));
            return self
                .over_socket("POST", path, body, &[])
                .map(|(_, text)| text)
                .map_err(|(_, f)| f);
        }
        let url = format!("{}{path}", self.base);
        let mut r = self
            .agent
            .post(&url)
            .set("Content-Type", "text/plain; charset=utf-8");
        if let Some(a) = &self.auth {
            r = r.set("Authorization", a);
        }
        match r.send_string(text) {
            Ok(resp) => body_text(resp).map_err(|e| unreachable(&url, &e)),
            Err(ureq::Error::Status(..)) => {
                // Re-issue through `call` for the DRP error mapping.
                self.call(
                    "POST",
                    path,
                    Some(("text/plain", &Value::String(text.into()))),
                    &[],
                )
                .map(|_| String::new())
            }
            Err(ureq::Error::Transport(t)) => Err(transport(&url, &t)),
        }
    }

    /// `cluster elect NAME --leaders N` on the server.
    pub fn elect(&self, ctx: &Ctx, name: &str, leaders: usize) -> Out {
        let a = self.call(
            "POST",
            &format!("/clusters/{}/elect?leaders={leaders}", enc(name, false)),
            None,
            &[],
        )?;
        ctx.print(&a.body, Some(Kind::Machine));
        Ok(())
    }

    /// `HEAD path`: the count the server puts in `X-DRP-List-Count`.
    fn count(&self, path: &str) -> Out<u64> {
        self.call("HEAD", path, None, &[])?
            .count
            .ok_or_else(|| garbage(path, "no X-DRP-List-Count header in the answer"))
    }

    fn get(&self, path: &str) -> Out<Value> {
        Ok(self.call("GET", path, None, &[])?.body)
    }

    fn merge(&self, path: &str, doc: &Value) -> Out<Value> {
        Ok(self
            .call(
                "PATCH",
                path,
                Some(("application/merge-patch+json", doc)),
                &[],
            )?
            .body)
    }

    fn patch(&self, path: &str, ops: &Value) -> Out<Value> {
        Ok(self
            .call(
                "PATCH",
                path,
                Some(("application/json-patch+json", ops)),
                &[],
            )?
            .body)
    }

    /// Runs one verb on the server.
    pub fn verb(&self, ctx: &Ctx, kind: Kind, verb: Verb, input: Option<String>) -> Out {
        let input = input.unwrap_or_default();
        let show = |v: Value| {
            ctx.print(&v, Some(kind));
            Ok(())
        };
        if !matches!(verb, Verb::Update { .. } | Verb::Set { .. }) {
            ctx.no_ref("this verb (only update and set take it)")?;
        }
        let coll = format!("/{}", kind.plural());
        let obj = |id: &str| format!("{coll}/{}", enc(id, false));
        let param = |id: &str, key: &str| format!("{}/params/{}", obj(id), enc(key, true));
        match verb {
            Verb::Create { .. } => {
                let t = input.trim();
                let doc = if t.starts_with(['{', '[', '"']) {
                    parse_json(&format!("{kind} JSON"), t)?
                } else if t.is_empty() {
                    return Err(Failure::input(format!(
                        "create needs a {kind} JSON object or a name"
                    )));
                } else {
                    json!({ "Name": t })
                };
                show(
                    self.call("POST", &coll, Some(("application/json", &doc)), &[])?
                        .body,
                )
            }
            Verb::Show { id } => show(self.get(&obj(&id))?),
            Verb::Exists { id } => self.get(&obj(&id)).map(drop),
            Verb::Destroy { id } => {
                self.call("DELETE", &obj(&id), None, &[])?;
                outln!("Deleted {kind} {id}");
                Ok(())
            }
            Verb::List(args) => show(self.get(&format!("{coll}{}", query(kind, &args)?))?),
            Verb::Count(args) if !args.group_by.is_empty() => {
                if !matches!(kind, Kind::Machine | Kind::Profile) {
                    return Err(group_by_kinds());
                }
                if args.until.is_some() {
                    return Err(Failure::input(
                        "count takes --until or --group-by, not both",
                    ));
                }
                show(self.get(&format!("{coll}{}", query(kind, &args)?))?)
            }
            Verb::Count(args) if args.until.is_some() => {
                if kind != Kind::Machine {
                    return Err(Failure::input("count --until counts machines"));
                }
                let (filter, _) = listing(kind, &args)?;
                let until = args.until.as_deref().unwrap_or_default();
                until.parse::<fleetkv::CountCondition>()?;
                let path = format!(
                    "/wait/count?until={}&filter={}",
                    enc(until, false),
                    enc(&filter_text(&filter), false)
                );
                let body = self.long_poll(&path, args.timeout)?;
                let n = body["Count"]
                    .as_u64()
                    .ok_or_else(|| garbage(&path, "no Count in the answer"))?;
                outln!("{n}");
                Ok(())
            }
            Verb::Count(args) => {
                outln!("{}", self.count(&format!("{coll}{}", query(kind, &args)?))?);
                Ok(())
            }
            Verb::Update { id, .. } => {
                let merge = parse_json("update JSON", &input)?;
                match &ctx.reference {
                    None => show(self.merge(&obj(&id), &merge)?),
                    Some(r) => {
                        let reference = parse_json("-r reference object", r)?;
                        if !reference.is_object() {
                            return Err(Failure::input(
                                "-r reference object: expected a JSON object",
                            ));
                        }
                        show(self.patch(&obj(&id), &reference_patch(&reference, &merge))?)
                    }
                }
            }
            Verb::Patch { id, .. } => {
                let ops = parse_json("patch", &input)?;
                show(self.patch(&obj(&id), &ops)?)
            }
            Verb::Set { id, key, value, .. } => {
                with_params(kind, "set")?;
                let value = loose_json(&value);
                let expect: Vec<(&str, String)> = match ctx.reference.as_deref().map(loose_json) {
                    None => vec![],
                    Some(Value::Null) => vec![("X-Fleetkv-Expect", "absent".to_string())],
                    Some(v) => vec![("X-Fleetkv-Expect", v.to_string())],
                };
                let a = self.call(
                    "POST",
                    &param(&id, &key),
                    Some(("application/json", &value)),
                    &expect,
                )?;
                outln!("{}", pretty(&a.body));
                Ok(())
            }
            Verb::Get {
                id, key, aggregate, ..
            } => {
                with_params(kind, "get")?;
                let q = if aggregate { "?aggregate=true" } else { "" };
                outln!(
                    "{}",
                    pretty(&self.get(&format!("{}{q}", param(&id, &key)))?)
                );
                Ok(())
            }
            Verb::Params { id, aggregate } => {
                with_params(kind, "params")?;
                let q = if aggregate { "?aggregate=true" } else { "" };
                outln!("{}", pretty(&self.get(&format!("{}/params{q}", obj(&id)))?));
                Ok(())
            }
            Verb::Remove { id, key, .. } => {
                with_params(kind, "remove")?;
                let a = self.call("DELETE", &param(&id, &key), None, &[])?;
                outln!("{}", pretty(&a.body));
                Ok(())
            }
            Verb::Addprofile { id, profile } => {
                machines_only(kind, "addprofile")?;
                show(self.profile_edit(&obj(&id), &profile, true)?)
            }
            Verb::Removeprofile { id, profile } => {
                machines_only(kind, "removeprofile")?;
                show(self.profile_edit(&obj(&id), &profile, false)?)
            }
            Verb::Workflow { id, workflow } => {
                machines_only(kind, "workflow")?;
                show(self.merge(&obj(&id), &json!({ "Workflow": workflow }))?)
            }
            Verb::Meta { verb } => {
                with_params(kind, "meta")?;
                let (id, merge) = match verb {
                    MetaVerb::Get { id, key, .. } => {
                        let o = self.get(&obj(&id))?;
                        let v = o.pointer(&format!("/Meta/{}", escape(&key)));
                        outln!("{}", pretty(v.unwrap_or(&Value::Null)));
                        return Ok(());
                    }
                    MetaVerb::Set { id, key, value, .. } => (id, json!({ "Meta": { key: value } })),
                    MetaVerb::Remove { id, key, .. } => (id, json!({ "Meta": { key: null } })),
                };
                show(self.merge(&obj(&id), &merge)?)
            }
            Verb::Token { id, ttl, claims } => {
                super::auth::profiles_only(kind)?;
                if !claims.is_empty() {
                    return Err(Failure::input("--claims needs an embedded store (drop -E)"));
                }
                let a = self.call("POST", &format!("{}/token?ttl={ttl}", obj(&id)), None, &[])?;
                outln!("{}", a.body["Token"].as_str().unwrap_or_default());
                Ok(())
            }
            Verb::Render { id, .. } => {
                out!(
                    "{}",
                    self.post_text(&format!("{}/render", obj(&id)), &input)?
                );
                Ok(())
            }
            Verb::WorkflowAll(args) => {
                let (workflow, words, meta) = args.parts()?;
                let filter = Filter::from_args(&words)?;
                let body =
                    json!({ "Workflow": workflow, "Filter": filter_text(&filter), "Meta": meta });
                ctx.print(
                    &self
                        .call(
                            "POST",
                            "/workflow-all",
                            Some(("application/json", &body)),
                            &[],
                        )?
                        .body,
                    None,
                );
                Ok(())
            }
            Verb::Wait {
                id,
                field,
                value,
                timeout,
            } => {
                let f = Filter::from_args(&[field, "Eq".into(), value])?;
                let path = format!(
                    "/wait/machines/{}?filter={}",
                    enc(&id, false),
                    enc(&filter_text(&f), false)
                );
                waited(self.long_poll(&path, timeout.unwrap_or(3600.0)).map(drop))
            }
            Verb::Await { id, expr, timeout } => {
                let f = Filter::from_args(&expr)?;
                let path = format!(
                    "/wait/machines/{}?filter={}",
                    enc(&id, false),
                    enc(&filter_text(&f), false)
                );
                waited(self.long_poll(&path, timeout.unwrap_or(3600.0)).map(drop))
            }
        }
    }

    /// Adds or removes one profile with a `test`-guarded patch.
    fn profile_edit(&self, path: &str, profile: &str, add: bool) -> Out<Value> {
        let m = self.get(path)?;
        let old = m.get("Profiles").cloned().unwrap_or(json!([]));
        let mut profiles: Vec<Value> = old.as_array().cloned().unwrap_or_default();
        let has = profiles.iter().any(|p| p == profile);
        match (add, has) {
            (true, false) => profiles.push(json!(profile)),
            (false, true) => profiles.retain(|p| p != profile),
            _ => return Ok(m),
        }
        let ops = json!([
            { "op": "test", "path": "/Profiles", "value": old },
            { "op": "replace", "path": "/Profiles", "value": profiles },
        ]);
        self.patch(path, &ops)
    }
}

/// Largest body one import request carries: a bigger document goes in
/// parts of whole objects (the server's `--max-body-bytes` is 4 MiB by
/// default); a part the server still finds too large (413) is halved.
const IMPORT_PART_BYTES: usize = 1 << 20;

impl Remote {
    /// `export` on the server: `GET /api/v3/export`.
    pub fn export(&self, ctx: &Ctx) -> Out {
        ctx.print(&self.get("/export")?, None);
        Ok(())
    }

    /// `import` on the server: `POST /api/v3/import`; prints how many
    /// objects were written. A document the server takes in one request is
    /// imported all or nothing there. A larger one is read and checked here
    /// (shape, kind, decoding, unique Names: [`fleetkv::transfer::read`]),
    /// then checked against the store part by part (`?check=true`, each part
    /// sent with the document's definitions and profiles when they fit, so
    /// references between parts are checked too) before any part is
    /// written; a part that then fails to write stops the import with the
    /// count of objects committed, as the embedded CLI reports it.
    pub fn import(&self, doc: Value, kind: Option<Kind>) -> Out {
        // A fresh connection per part: a server refusing a body (413)
        // may close the connection without reading it.
        let agent = self
            .agent_builder()
            .timeout(self.timeout)
            .max_idle_connections(0)
            .build();
        let text = doc.to_string();
        if text.len() <= IMPORT_PART_BYTES {
            let q = kind.map(|k| format!("?kind={}", k.plural()));
            let path = format!("/import{}", q.unwrap_or_default());
            match self.request(&agent, "POST", &path, Some(("application/json", text)), &[]) {
                Ok(a) => {
                    outln!("{}", a.body.as_u64().unwrap_or(0));
                    return Ok(());
                }
                // Too large for this server: in parts, if it has parts.
                Err((Some(413), f)) if fleetkv::transfer::groups(doc.clone(), kind).is_err() => {
                    return Err(too_large(Some(413), f))
                }
                Err((Some(413), _)) => {}
                Err((status, f)) => return Err(too_large(status, f)),
            }
        }
        let total = fleetkv::transfer::read(doc.clone(), kind)?.len();
        let groups = fleetkv::transfer::groups(doc, kind)?;
        // Checked first, all of it; then written.
        let [(_, params), (_, profiles), (_, machines)] = &groups;
        let context = json!({ "params": params, "profiles": profiles });
        let with_context = context.to_string().len() <= IMPORT_PART_BYTES / 2
            && match self.check_with(&agent, &context, machines) {
                Ok(()) => true,
                Err((Some(413), _)) => false,
                Err((_, f)) => return Err(f),
            };
        if !with_context {
            for (kind, items) in &groups {
                self.in_parts(&agent, *kind, items, true)
                    .map_err(|(_, f)| f)?;
            }
        }
        let mut n = 0;
        for (kind, items) in &groups {
            match self.in_parts(&agent, *kind, items, false) {
                Ok(k) => n += k,
                Err((k, f)) if n + k == 0 => return Err(f),
                Err((k, f)) => {
                    return Err(Failure {
                        msg: fleetkv::transfer::partial(n + k, total, f.msg),
                        ..f
                    })
                }
            }
        }
        outln!("{n}");
        Ok(())
    }

    /// Checks `machines` in parts, each sent with `context` (the document's
    /// definitions and profiles) as an export object (`?check=true`). A 413
    /// for one machine with its context says the context is too large.
    fn check_with(
        &self,
        agent: &ureq::Agent,
        context: &Value,
        machines: &[Value],
    ) -> Result<(), (Option<u16>, Failure)> {
        let room = IMPORT_PART_BYTES - context.to_string().len();
        let parts = split(machines, room);
        if parts.is_empty() {
            return self.check_part(agent, context, &[], 0);
        }
        for (start, end) in parts {
            self.check_part(agent, context, &machines[start..end], start)?;
        }
        Ok(())
    }

    fn check_part(
        &self,
        agent: &ureq::Agent,
        context: &Value,
        items: &[Value],
        base: usize,
    ) -> Result<(), (Option<u16>, Failure)> {
        let mut body = context.clone();
        body["machines"] = Value::Array(items.to_vec());
        let path = "/import?check=true";
        match self.request(
            agent,
            "POST",
            path,
            Some(("application/json", body.to_string())),
            &[],
        ) {
            Ok(_) => Ok(()),
            Err((Some(413), _)) if items.len() > 1 => {
                let half = items.len() / 2;
                self.check_part(agent, context, &items[..half], base)?;
                self.check_part(agent, context, &items[half..], base + half)
            }
            Err((status, f)) => Err((
                status,
                Failure {
                    msg: shift_index(&f.msg, Kind::Machine, base),
                    ..f
                },
            )),
        }
    }

    /// Sends `items` of `kind` in parts under [`IMPORT_PART_BYTES`], to be
    /// checked (`check`) or written; returns how many were written, or the
    /// failure with how many of them were written before it.
    fn in_parts(
        &self,
        agent: &ureq::Agent,
        kind: Kind,
        items: &[Value],
        check: bool,
    ) -> Result<usize, (usize, Failure)> {
        let mut n = 0;
        for (start, end) in split(items, IMPORT_PART_BYTES) {
            n += self
                .import_items(agent, kind, &items[start..end], start, check)
                .map_err(|(k, f)| (n + k, f))?;
        }
        Ok(n)
    }

    /// Sends `items` (objects `base…` of their kind) as one part; halves it
    /// while the server answers 413. A failure comes with how many of
    /// `items` were written before it.
    fn import_items(
        &self,
        agent: &ureq::Agent,
        kind: Kind,
        items: &[Value],
        base: usize,
        check: bool,
    ) -> Result<usize, (usize, Failure)> {
        let mut path = format!("/import?kind={}", kind.plural());
        if check {
            path.push_str("&check=true");
        }
        let body = Value::Array(items.to_vec()).to_string();
        match self.request(agent, "POST", &path, Some(("application/json", body)), &[]) {
            Ok(_) if check => Ok(0),
            Ok(a) => Ok(a.body.as_u64().unwrap_or(0) as usize),
            Err((Some(413), _)) if items.len() > 1 => {
                let half = items.len() / 2;
                let first = self.import_items(agent, kind, &items[..half], base, check)?;
                let second = self
                    .import_items(agent, kind, &items[half..], base + half, check)
                    .map_err(|(k, f)| (first + k, f))?;
                Ok(first + second)
            }
            Err((status, f)) => Err((
                0,
                too_large(
                    status,
                    Failure {
                        msg: shift_index(&f.msg, kind, base),
                        ..f
                    },
                ),
            )),
        }
    }

    /// The cluster verbs on the server (`/api/v3/clusters/{name}/…`).
    pub fn cluster(&self, ctx: &Ctx, verb: ClusterVerb) -> Out {
        let show = |v: Value| {
            ctx.print(&v, Some(Kind::Machine));
            Ok(())
        };
        let at = |name: &str| format!("/clusters/{}", enc(name, false));
        let member = |name: &str, m: &str| format!("{}/members/{}", at(name), enc(m, false));
        match verb {
            ClusterVerb::Init { name, filter } => {
                let body = match filter {
                    Some(f) => json!({ "Filter": f }),
                    None => json!({}),
                };
                let a = self.call("POST", &at(&name), Some(("application/json", &body)), &[])?;
                ctx.print(&a.body, Some(Kind::Profile));
                Ok(())
            }
            ClusterVerb::Add { name, machine } => {
                show(self.call("POST", &member(&name, &machine), None, &[])?.body)
            }
            ClusterVerb::Remove { name, machine } => show(
                self.call("DELETE", &member(&name, &machine), None, &[])?
                    .body,
            ),
            ClusterVerb::Members { name, list } => {
                let q = query(Kind::Machine, &list)?;
                show(self.get(&format!("{}/members{q}", at(&name)))?)
            }
            ClusterVerb::Count { name, list } => {
                let q = query(Kind::Machine, &list)?;
                outln!("{}", self.count(&format!("{}/members{q}", at(&name)))?);
                Ok(())
            }
            ClusterVerb::Role {
                name,
                machine,
                role,
            } => {
                let path = format!("{}/role", member(&name, &machine));
                let Some(role) = role else {
                    return show(self.get(&path)?);
                };
                let word = json!(fleetkv::Role::from(role));
                show(
                    self.call("PUT", &path, Some(("application/json", &word)), &[])?
                        .body,
                )
            }
            ClusterVerb::Elect { name, leaders } => self.elect(ctx, &name, leaders),
            ClusterVerb::Campaign {
                name,
                machine,
                leaders,
                timeout,
            } => {
                let lease = ctx
                    .lease
                    .ok_or_else(|| Failure::input("campaign needs --lease ID"))?;
                let path = format!(
                    "{}/campaign?machine={}&lease={lease}&leaders={leaders}",
                    at(&name),
                    enc(&machine, false)
                );
                let won = self.long_poll_post(&path, timeout)?;
                ctx.print(&won, None);
                Ok(())
            }
            ClusterVerb::Resign { name, machine } => show(
                self.call(
                    "POST",
                    &format!("{}/resign?machine={}", at(&name), enc(&machine, false)),
                    None,
                    &[],
                )?
                .body,
            ),
            ClusterVerb::Observe { name, timeout } => {
                self.observe(&format!("{}/leaders", at(&name)), timeout)
            }
        }
    }

    /// `leases …` on the server.
    pub fn leases(&self, ctx: &Ctx, verb: LeaseVerb) -> Out {
        let show = |v: Value| {
            ctx.print(&v, None);
            Ok(())
        };
        match verb {
            LeaseVerb::Grant { ttl } => {
                let body = json!({ "TTL": leases::ttl(ttl)? });
                show(
                    self.call("POST", "/leases", Some(("application/json", &body)), &[])?
                        .body,
                )
            }
            LeaseVerb::Keepalive { id, once } => leases::keep_alive(ctx, once, || {
                let a = self.call("POST", &format!("/leases/{id}/keepalive"), None, &[])?;
                serde_json::from_value(a.body)
                    .map_err(|e| garbage("/leases", &format!("not a lease: {e}")))
            }),
            LeaseVerb::Revoke { id } => show(
                self.call("DELETE", &format!("/leases/{id}"), None, &[])?
                    .body,
            ),
            LeaseVerb::Show { id } => show(self.get(&format!("/leases/{id}"))?),
            LeaseVerb::List => show(self.get("/leases")?),
        }
    }

    /// A blocking POST the server cuts to its request timeout, repeated
    /// until it answers or `seconds` pass (exit 5).
    fn long_poll_post(&self, path: &str, seconds: f64) -> Out<Value> {
        let deadline = std::time::Instant::now()
            + Duration::try_from_secs_f64(seconds)
                .map_err(|_| Failure::input(format!("{seconds}: expected seconds")))?;
        loop {
            let left = deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_secs_f64();
            match self.call("POST", &format!("{path}&timeout={left:.3}"), None, &[]) {
                Err(f) if f.code == 5 && std::time::Instant::now() < deadline => continue,
                Err(f) if f.code == 5 => return Err(Failure::timeout()),
                other => return other.map(|a| a.body),
            }
        }
    }
}

/// `items` as ranges whose JSON fits in `room` bytes (at least one object
/// each).
fn split(items: &[Value], room: usize) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut size = 2;
        while end < items.len() {
            let len = items[end].to_string().len() + 1;
            if end > start && size + len > room {
                break;
            }
            size += len;
            end += 1;
        }
        parts.push((start, end));
        start = end;
    }
    parts
}

/// A 413 names the limit to raise.
fn too_large(status: Option<u16>, f: Failure) -> Failure {
    match status {
        Some(413) => Failure {
            msg: format!(
                "import: {} (the server's --max-body-bytes is too small for one object)",
                f.msg
            ),
            ..f
        },
        _ => f,
    }
}

/// `import machines #3: …` of a part starting at object `base` → `#base+3`.
fn shift_index(msg: &str, kind: Kind, base: usize) -> String {
    let prefix = format!("import {} #", kind.plural());
    let Some(rest) = msg.strip_prefix(&prefix) else {
        return msg.to_string();
    };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    match rest[..digits].parse::<usize>() {
        Ok(i) => format!("{prefix}{}{}", i + base, &rest[digits..]),
        Err(_) => msg.to_string(),
    }
}

/// The whole answer as text. Unlike `Response::into_string`, which stops at
/// 10 MB, this reads an export of a million machines.
fn body_text(resp: ureq::Response) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text)?;
    Ok(text)
}

/// An answer's JSON (`null` when empty).
fn parse_answer(url: &str, text: &str) -> Out<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|_| Failure {
        code: 1,
        msg: format!("{url}: the server's answer is not JSON; is this a fleetkv server?"),
    })
}

/// A DRP error answer (its text) as a failure with the matching exit code.
fn status_failure(url: &str, code: u16, text: &str) -> Failure {
    let err: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let typ = err.get("Type").and_then(Value::as_str).unwrap_or("");
    let msg = err
        .pointer("/Messages/0")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| format!("{url}: HTTP {code} {}", text.trim()));
    let code = match code {
        400 | 413 | 415 | 431 => 2,
        401 | 403 => 6,
        404 => 4,
        409 if typ == "Conflict" => 3,
        409 => 2,
        408 | 503 | 504 => 5,
        _ => 1,
    };
    Failure { code, msg }
}

/// An answer that is not what a fleetkv server sends.
fn garbage(path: &str, what: &str) -> Failure {
    Failure {
        code: 1,
        msg: format!("{path}: {what}; is this a fleetkv server?"),
    }
}

fn transport(url: &str, t: &ureq::Transport) -> Failure {
    use std::error::Error as _;
    let mut what = t.kind().to_string();
    if let Some(m) = t.message() {
        what = format!("{what}: {m}");
    }
    match t.source().and_then(|e| e.downcast_ref::<std::io::Error>()) {
        Some(io) => {
            what = format!("{what}: {io}");
            failure(url, &what, timed_out(io))
        }
        None => failure(url, &what, false),
    }
}

/// Reading the answer failed.
fn unreachable(url: &str, e: &std::io::Error) -> Failure {
    failure(url, &e.to_string(), timed_out(e))
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Exit 5 for a timeout, as a local wait's timeout; 1 otherwise.
fn failure(url: &str, what: &str, timed_out: bool) -> Failure {
    Failure {
        code: if timed_out { 5 } else { 1 },
        msg: format!(
            "cannot reach the server at {url}: {what}{}",
            if timed_out { " (timed out)" } else { "" }
        ),
    }
}

/// The list/count query string: listing keys plus the filter in fleetkv's
/// text form (parsed here first, so a bad filter fails as it does embedded).
fn query(kind: Kind, args: &ListArgs) -> Out<String> {
    let (filter, opts) = listing(kind, args)?;
    let mut q: Vec<String> = Vec::new();
    if !filter.is_all() {
        q.push(format!("filter={}", enc(&filter_text(&filter), false)));
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
    for key in &args.group_by {
        q.push(format!("group-by={}", enc(key, false)));
    }
    if !args.group_by.is_empty() {
        q.push("range-only=true".into());
    }
    Ok(if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    })
}

fn filter_text(f: &Filter) -> String {
    f.to_string()
}

/// drpcli's reference update as one JSON Patch: for every path that differs
/// between the reference and the desired object, a `test` of the reference's
/// value (or, where the reference has none, of its nearest parent) and then
/// the change. `Revision` takes no part.
fn reference_patch(reference: &Value, merge: &Value) -> Value {
    let mut reference = reference.clone();
    if let Value::Object(m) = &mut reference {
        m.remove("Revision");
    }
    let mut desired = reference.clone();
    json_patch::merge(&mut desired, merge);
    if let Value::Object(m) = &mut desired {
        m.remove("Revision");
    }
    let diff = json_patch::diff(&reference, &desired);
    let mut ops = Vec::new();
    for op in diff.iter() {
        let mut path = op.path().to_string();
        loop {
            if let Some(v) = reference.pointer(&path) {
                ops.push(json!({ "op": "test", "path": path, "value": v }));
                break;
            }
            match path.rfind('/') {
                Some(i) => path.truncate(i),
                None => break,
            }
        }
    }
    if let Ok(Value::Array(changes)) = serde_json::to_value(&diff) {
        ops.extend(changes);
    }
    Value::Array(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header() {
        assert_eq!(basic("admin:key"), "Basic YWRtaW46a2V5");
        assert_eq!(basic("a"), "Basic YQ==");
    }

    #[test]
    fn shifts_part_indexes() {
        assert_eq!(
            shift_index("import machines #3: bad", Kind::Machine, 10),
            "import machines #13: bad"
        );
        assert_eq!(shift_index("other", Kind::Machine, 10), "other");
    }

    #[test]
    fn encodes() {
        assert_eq!(enc("a/b c", true), "a/b%20c");
        assert_eq!(enc("a/b", false), "a%2Fb");
    }
}
