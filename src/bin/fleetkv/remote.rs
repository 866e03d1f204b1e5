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

use fleetkv::client::{enc, unix, Answer, Http};
use fleetkv::Error;

use super::cluster::ClusterVerb;
use super::leases::{self, LeaseVerb};
use super::{Ctx, Failure, Out, Verb};

/// Largest body one import request carries: a bigger document goes in
/// parts of whole objects (the server's `--max-body-bytes` is 4 MiB by
/// default); a part the server still finds too large (413) is halved.
const IMPORT_PART_BYTES: usize = 1 << 20;

/// The HTTP status an error answer came with (`None`: none came).
fn status_of(e: &Error) -> Option<u16> {
    match e {
        Error::Server { status, .. } => Some(*status),
        Error::NotFound { .. } => Some(404),
        Error::AlreadyExists { .. } | Error::Conflict { .. } => Some(409),
        Error::Timeout => Some(408),
        _ => None,
    }
}

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
        let timeout = Duration::try_from_secs_f64(self.http_timeout)
            .map_err(|_| Failure::input("--http-timeout: expected a non-negative number"))?;
        let mut http = Http::new(ep).with_timeout(timeout);
        if let Some(ca) = &self.ca_cert {
            http = http.with_tls(tls_trusting(ca)?);
        }
        http = match (token, &self.username, &self.password) {
            (Some(t), _, _) => http.bearer(t),
            (None, Some(u), Some(p)) => http.basic(&format!("{u}:{p}")),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(Failure::input("-U and -P go together"))
            }
            (None, None, None) => match std::env::var("RS_KEY") {
                Ok(k) => http.basic(&k),
                Err(_) => http,
            },
        };
        Ok(Some(Remote { http }))
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
        let token = match token {
            Some(t) => t.to_string(),
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
                key.trim().to_string()
            }
        };
        let timeout = Duration::try_from_secs_f64(self.http_timeout)
            .map_err(|_| Failure::input("--http-timeout: expected a non-negative number"))?;
        let http = Http::over_socket(socket)
            .with_timeout(timeout)
            .bearer(&token);
        Ok(Some(Remote { http }))
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
    /// Runs the server (or adds a user) on store directory `data`, opened
    /// as `open` says (storage calls stalled for its stall timeout answer
    /// 503).
    pub fn run(self, data: std::path::PathBuf, open: super::Open) -> Out {
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
            durable: !open.no_fsync,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            request_timeout: secs("request-timeout", self.request_timeout)?,
            max_waiters: self.max_waiters,
            header_timeout: secs("header-timeout", self.header_timeout)?,
            write_timeout: secs("write-timeout", self.write_timeout)?,
            max_connections: self.max_connections,
            stall_timeout: secs("stall-timeout", open.stall_timeout)?,
            lock_timeout: Duration::try_from_secs_f64(open.lock_timeout)
                .map_err(|_| Failure::input("--lock-timeout: expected a non-negative number"))?,
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

/// A connection to `fleetkv serve`: the library's [`Http`] client, and
/// the verbs only a server answers this way (import in parts, export,
/// events, cluster, leases).
pub struct Remote {
    http: Http,
}

impl Remote {
    /// Sends `--lease` / `--fence` with every request.
    pub fn guard_writes(&mut self, lease: Option<u64>, fence: Option<u64>) {
        self.http = self.http.clone().with_lease(lease).with_fence(fence);
    }

    /// An agent builder trusting `--ca-cert` when given.
    pub(super) fn agent_builder(&self) -> ureq::AgentBuilder {
        self.http.agent_builder()
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
        headers: &[(&str, String)],
    ) -> Out<Answer> {
        Ok(self.http.call(method, path, body, headers)?)
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
        self.http
            .call_on(agent, method, path, body, headers)
            .map_err(|e| (status_of(&e), Failure::from(e)))
    }

    fn get(&self, path: &str) -> Out<Value> {
        Ok(self.call("GET", path, None, &[])?.body)
    }

    /// Runs one verb on the server.
    pub fn verb(&self, ctx: &Ctx, kind: Kind, verb: Verb, input: Option<String>) -> Out {
        let input = input.unwrap_or_default();
        let obj = |id: &str| format!("/{}/{}", kind.plural(), enc(id, false));
        match verb {
            Verb::Token { id, ttl, claims } => {
                ctx.no_ref("token")?;
                super::auth::profiles_only(kind)?;
                if !claims.is_empty() {
                    return Err(Failure::input("--claims needs an embedded store (drop -E)"));
                }
                let a = self.call("POST", &format!("{}/token?ttl={ttl}", obj(&id)), None, &[])?;
                outln!("{}", a.body["Token"].as_str().unwrap_or_default());
                Ok(())
            }
            Verb::Render { id, .. } => {
                ctx.no_ref("render")?;
                out!(
                    "{}",
                    self.http
                        .post_text(&format!("{}/render", obj(&id)), &input)?
                );
                Ok(())
            }
            Verb::WorkflowAll(args) => {
                ctx.no_ref("workflow-all")?;
                let (workflow, words, meta) = args.parts()?;
                let filter = Filter::from_args(&words)?;
                let body =
                    json!({ "Workflow": workflow, "Filter": filter_text(&filter), "Meta": meta });
                let a = self.call(
                    "POST",
                    "/workflow-all",
                    Some(("application/json", &body)),
                    &[],
                )?;
                ctx.print(&a.body, None);
                Ok(())
            }
            Verb::WatchCount(args) => {
                let (filter, timeout) = args.parse(kind)?;
                self.watch_members(&filter, args.members, args.from, timeout)
            }
            verb => ctx.verb(&self.http, kind, verb, Some(input)),
        }
    }
}

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
            .timeout(self.http.timeout())
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

    /// The cluster verbs on the server: `observe` is an event stream; the
    /// rest are the client's calls.
    pub fn cluster(&self, ctx: &Ctx, verb: ClusterVerb) -> Out {
        match verb {
            ClusterVerb::Observe { name, timeout } => {
                self.observe(&format!("/clusters/{}/leaders", enc(&name, false)), timeout)
            }
            verb => super::cluster::run(ctx, &self.http, verb),
        }
    }

    /// `leases …` on the server.
    pub fn leases(&self, ctx: &Ctx, verb: LeaseVerb) -> Out {
        leases::run(ctx, &self.http, verb)
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

/// A DRP error answer (its text) as a failure with the matching exit code.
fn status_failure(url: &str, code: u16, text: &str) -> Failure {
    Failure::from(fleetkv::client::error_answer(url, code, text))
}

fn transport(url: &str, t: &ureq::Transport) -> Failure {
    Failure::from(fleetkv::client::transport(url, t))
}

fn unreachable(url: &str, e: &std::io::Error) -> Failure {
    Failure::from(fleetkv::client::unreachable(url, e))
}

fn filter_text(f: &Filter) -> String {
    f.to_string()
}

/// drpcli's reference update as one JSON Patch: for every path that differs
/// between the reference and the desired object, a `test` of the reference's
/// value (or, where the reference has none, of its nearest parent) and then
/// the change. `Revision` takes no part.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_part_indexes() {
        assert_eq!(
            shift_index("import machines #3: bad", Kind::Machine, 10),
            "import machines #13: bad"
        );
        assert_eq!(shift_index("other", Kind::Machine, 10), "other");
    }
}
