//! `fleetkv`: drpcli's verbs on an embedded fleetkv store.
//!
//! Every run opens the store (waiting, with jittered backoff, while another
//! process holds it), does one verb, flushes and exits. Results go to stdout,
//! errors to stderr as `Error: …`; exit codes follow `docs/architecture.md`
//! §14 (Exit codes).

/// Writes to stdout; a closed pipe (`fleetkv … | head`) is not an error.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// sled and serde_json allocate per document read and written; mimalloc
/// serves that pattern far better than the system allocator (see README →
/// Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod auth;
mod cluster;
mod leases;
mod remote;
mod render;
mod transfer;
mod wait;
mod words;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetkv::client::Client;
use fleetkv::{Error, Filter, Kind, ListOptions, Scoped, Store};
use serde_json::{json, Map, Value};

/// drpcli-compatible command-line tool for a fleetkv store.
#[derive(Parser)]
#[command(name = "fleetkv", version, about, allow_negative_numbers = true)]
struct Cli {
    /// Store directory.
    #[arg(long, global = true, env = "FLEETKV_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Reference: the object (update) or param value (set) as last seen.
    #[arg(short = 'r', long = "ref", global = true, value_name = "REF")]
    reference: Option<String>,
    /// Output format.
    #[arg(short = 'F', long, global = true, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// How long to wait for a store another process holds, in seconds.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECONDS")]
    lock_timeout: f64,
    /// How long a storage call (open, commit, flush) may make no progress
    /// before the command gives up with exit 5, in seconds.
    #[arg(
        long,
        global = true,
        env = "FLEETKV_STALL_TIMEOUT",
        default_value_t = 30.0,
        value_name = "SECONDS"
    )]
    stall_timeout: f64,
    /// UNSAFE: acknowledge writes before they are on disk. Faster, but a
    /// crash (of the process or the machine) can lose acknowledged writes
    /// from up to the last half second. Without it every write is flushed
    /// before it is acknowledged (concurrent writers share flushes).
    #[arg(long, global = true, env = "FLEETKV_NO_FSYNC")]
    no_fsync: bool,
    /// A token (`profiles token`): every verb is checked against its claims.
    #[arg(
        short = 'T',
        long,
        global = true,
        env = "RS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Say how the store is reached: opened here, or through the server
    /// that owns it (its Unix socket in the store directory).
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
    /// Machine writes (and `cluster campaign`): made under lease ID; what
    /// they set goes when the lease ends (`leases grant`).
    #[arg(long, global = true, value_name = "ID")]
    lease: Option<u64>,
    /// Machine writes: refused (exit 3) unless leadership TOKEN still holds
    /// (the `Token` of `cluster campaign`).
    #[arg(long, global = true, value_name = "TOKEN")]
    fence: Option<u64>,
    #[command(flatten)]
    remote: remote::RemoteArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Subcommand)]
enum Cmd {
    /// Machines (ID: a Uuid, `Uuid:…`, `Key:…`, `Name:…` or a bare name).
    Machines {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Profiles (ID: the name).
    Profiles {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Param definitions (ID: the name).
    Params {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Load a JSON array of one kind, or an export object, from FILE or `-`:
    /// all or nothing (up to 10,000 objects in one write; see docs §13).
    Import {
        /// The file, or `-` for stdin.
        file: String,
        /// The kind of a plain array. Without it an array is taken only when
        /// every element certainly is of one kind (a field only machines have,
        /// such as Uuid, or only definitions have: Schema); profiles need it.
        #[arg(long, value_enum)]
        kind: Option<transfer::KindArg>,
    },
    /// Write everything as `{"params":[…],"profiles":[…],"machines":[…]}`.
    Export,
    /// Print change events as JSON lines: `watch machines|profiles|params [FILTER…] [--from REV]`.
    Watch {
        /// The kind to watch.
        #[arg(value_enum)]
        kind: transfer::KindArg,
        /// Filter words: events for objects matching before or after the write.
        words: Vec<String>,
        /// First revision to print (default: the next write).
        #[arg(long, value_name = "REV")]
        from: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Leases: `grant --ttl S`, `keepalive ID`, `revoke ID`, `show ID`, `list`.
    Leases {
        #[command(subcommand)]
        verb: leases::LeaseVerb,
    },
    /// The cluster pattern: a cluster profile, members, roles, elections.
    Cluster {
        #[command(subcommand)]
        verb: cluster::ClusterVerb,
    },
    /// Serve the store over HTTP (DRP's /api/v3 subset).
    #[cfg(feature = "server")]
    Serve(remote::ServeArgs),
    /// Check the store directory: records, index checkpoint, indexes against
    /// a rebuild, change log. Exits 1 on any damage.
    Check {
        /// Replace a checkpoint that was refused or disagrees with the
        /// documents by one written from a rebuild.
        #[arg(long)]
        repair: bool,
    },
}

impl Cmd {
    /// Whether a server that owns the store may answer for it (`serve` is
    /// the server; `check` needs the store to itself).
    fn uses_a_server(&self) -> bool {
        match self {
            #[cfg(feature = "server")]
            Cmd::Serve(_) => false,
            Cmd::Check { .. } => false,
            _ => true,
        }
    }
}

#[derive(Subcommand)]
enum Verb {
    /// Create from JSON, a bare name, or `-` (stdin).
    Create { input: String },
    /// `wait ID FIELD VALUE [TIMEOUT]`: until the machine's FIELD (or param) equals VALUE; prints `complete` or `timeout`.
    Wait {
        id: String,
        field: String,
        value: String,
        /// Seconds (default 3600).
        timeout: Option<f64>,
    },
    /// `await ID EXPR… [--timeout S]`: until the machine matches the filter; prints `complete` or `timeout`.
    Await {
        id: String,
        #[arg(required = true)]
        expr: Vec<String>,
        /// Seconds (default 3600).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Show one object.
    Show { id: String },
    /// Exit 0 if it exists, 4 if not.
    Exists { id: String },
    /// Delete one object.
    Destroy { id: String },
    /// List objects matching filter words.
    List(ListArgs),
    /// Count objects matching filter words.
    Count(ListArgs),
    /// Merge JSON into an object (with -r: a reference update).
    Update { id: String, input: String },
    /// Apply an RFC 6902 JSON Patch (an array of operations).
    Patch { id: String, input: String },
    /// `set ID param KEY to VALUE` (with -r: compare-and-set).
    Set {
        id: String,
        #[arg(value_parser = ["param"])]
        param: String,
        key: String,
        #[arg(value_parser = ["to"])]
        to: String,
        value: String,
    },
    /// `get ID param KEY`: the param's value, `null` if none.
    Get {
        id: String,
        #[arg(value_parser = ["param"])]
        param: String,
        key: String,
        /// Effective value (own → profiles → global → default).
        #[arg(long)]
        aggregate: bool,
    },
    /// The object's params.
    Params {
        id: String,
        /// Effective params (own → profiles → global → default).
        #[arg(long)]
        aggregate: bool,
    },
    /// `remove ID param KEY`.
    Remove {
        id: String,
        #[arg(value_parser = ["param"])]
        param: String,
        key: String,
    },
    /// Add a profile to a machine.
    Addprofile { id: String, profile: String },
    /// Remove a profile from a machine.
    Removeprofile { id: String, profile: String },
    /// Set a machine's workflow.
    Workflow { id: String, workflow: String },
    /// Render a Go template from FILE (or `-`: stdin) against a machine's
    /// effective params.
    Render { id: String, file: String },
    /// `profiles token NAME`: print a token for the profile (DRP's GenerateProfileToken).
    Token {
        id: String,
        /// Lifetime in seconds. Through a token (`-T`), which needs
        /// `profiles/token/NAME`, cut so it ends no later than that token.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        ttl: u64,
        /// Extra claims (`machines/*/*`); through a token, only ones it holds.
        #[arg(long, num_args = 1.., value_name = "SCOPE/ACTION/SPECIFIC")]
        claims: Vec<String>,
    },
    /// Set a workflow (and meta) on every machine the filter selects.
    WorkflowAll(cluster::WorkflowAllArgs),
    /// `machines watch-count FILTER… [--members] [--from REV]`: the count
    /// now, then a JSON line per write that moves a machine in or out.
    WatchCount(wait::WatchCountArgs),
    /// Meta annotations.
    Meta {
        #[command(subcommand)]
        verb: MetaVerb,
    },
}

#[derive(Subcommand)]
enum MetaVerb {
    /// `meta set ID key K to V`.
    Set {
        id: String,
        #[arg(value_parser = ["key"])]
        key_word: String,
        key: String,
        #[arg(value_parser = ["to"])]
        to: String,
        value: String,
    },
    /// `meta get ID key K`: the value, `null` if none.
    Get {
        id: String,
        #[arg(value_parser = ["key"])]
        key_word: String,
        key: String,
    },
    /// `meta remove ID key K`.
    Remove {
        id: String,
        #[arg(value_parser = ["key"])]
        key_word: String,
        key: String,
    },
}

#[derive(Args)]
struct ListArgs {
    /// Filter words, with drpcli's `sort KEY`, `limit N`, `offset N`, `reverse` mixed in.
    words: Vec<String>,
    /// Return at most N.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Skip N.
    #[arg(long, value_name = "N")]
    offset: Option<usize>,
    /// Leave these fields out (`Params,Meta`).
    #[arg(long, value_name = "FIELDS")]
    slim: Option<String>,
    /// Return only these params.
    #[arg(long, value_name = "NAMES")]
    params: Option<String>,
    /// Show effective params.
    #[arg(long)]
    aggregate: bool,
    /// `count` only: block until the count satisfies `>= N`, `== N` or `<= N`.
    #[arg(long, value_name = "COND")]
    until: Option<String>,
    /// `count` only: count per distinct value of KEY (a field, `Params.NAME`,
    /// `Meta.KEY`) from the indexes, as `[{"Value": v, "Count": n}]`; repeat
    /// to split each group by the next key.
    #[arg(long = "group-by", value_name = "KEY")]
    group_by: Vec<String>,
    /// With `--until`: give up after this many seconds (exit 5).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600.0)]
    timeout: f64,
}

/// A failure with its exit code (`docs/architecture.md` §14, Exit codes).
pub struct Failure {
    code: u8,
    msg: String,
}

impl Failure {
    /// Bad input: exit 2.
    pub fn input(msg: impl Into<String>) -> Self {
        Failure {
            code: 2,
            msg: msg.into(),
        }
    }
}

impl Failure {
    /// A wait ran out of time: exit 5.
    pub fn timeout() -> Self {
        Failure {
            code: 5,
            msg: "timeout".into(),
        }
    }

    /// Anything else: exit 1.
    pub fn other(msg: impl Into<String>) -> Self {
        Failure {
            code: 1,
            msg: msg.into(),
        }
    }
}

/// drpcli's wait output: `complete`, or `timeout` with exit code 5.
fn waited(r: Out) -> Out {
    match r {
        Ok(()) => {
            outln!("complete");
            Ok(())
        }
        Err(f) if f.code == 5 => {
            outln!("timeout");
            Err(f)
        }
        Err(f) => Err(f),
    }
}

fn seconds(s: f64) -> Out<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Failure::input(format!("{s}: expected a non-negative number of seconds")))
}

impl From<fleetkv::filter::FilterError> for Failure {
    fn from(e: fleetkv::filter::FilterError) -> Self {
        Error::from(e).into()
    }
}

impl From<transfer::KindArg> for Kind {
    fn from(k: transfer::KindArg) -> Self {
        match k {
            transfer::KindArg::Machines => Kind::Machine,
            transfer::KindArg::Profiles => Kind::Profile,
            transfer::KindArg::Params => Kind::Param,
        }
    }
}

impl Failure {
    /// The exit code of a library error.
    pub fn from_error_code(e: &Error) -> u8 {
        match e {
            Error::NotFound { .. } => 4,
            Error::Auth(_) => 6,
            Error::Conflict { .. } | Error::RevisionMismatch { .. } => 3,
            Error::Invalid { .. }
            | Error::Schema { .. }
            | Error::Filter(_)
            | Error::AlreadyExists { .. }
            | Error::InUse { .. }
            | Error::Compacted { .. }
            | Error::Template(_) => 2,
            Error::Timeout
            | Error::Stalled { .. }
            | Error::Busy(_)
            | Error::Unavailable(_)
            | Error::OutcomeUnknown(_) => 5,
            // A server's answer without a variant of its own: by its status.
            Error::Server { status, typ, .. } => match status {
                400 | 413 | 415 | 431 => 2,
                401 | 403 => 6,
                404 => 4,
                409 if typ == "Conflict" => 3,
                409 => 2,
                408 | 503 | 504 => 5,
                _ => 1,
            },
            Error::Transport {
                timed_out: true, ..
            } => 5,
            _ => 1,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: Failure::from_error_code(&e),
            msg: e.to_string(),
        }
    }
}

type Out<T = ()> = Result<T, Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            eprint!("Error: {}", text.strip_prefix("error: ").unwrap_or(&text));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("Error: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Out {
    let data = cli
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from("fleetkv.db"));
    let ctx = Ctx {
        format: cli.format,
        reference: cli.reference.clone(),
        lease: cli.lease,
        fence: cli.fence,
    };
    let guarded = matches!(cli.cmd, Cmd::Machines { .. })
        || matches!(
            cli.cmd,
            Cmd::Cluster {
                verb: cluster::ClusterVerb::Campaign { .. }
            }
        ) && cli.fence.is_none();
    if (cli.lease.is_some() || cli.fence.is_some()) && !guarded {
        return Err(Failure::input(
            "--lease and --fence go with machine writes (and --lease with cluster campaign)",
        ));
    }
    let mut remote = cli.remote.client(cli.token.as_deref())?;
    if remote.is_none() && cli.cmd.uses_a_server() {
        // A server that owns the store answers for it: its socket is in
        // the store directory (a stale one is removed).
        remote = cli.remote.local(&data, cli.token.as_deref())?;
        if cli.verbose {
            match &remote {
                Some(_) => eprintln!(
                    "fleetkv: a server owns {}: talking to it through {}",
                    data.display(),
                    data.join(fleetkv::wire::SOCKET_FILE).display()
                ),
                None => eprintln!("fleetkv: opening the store in {}", data.display()),
            }
        }
    }
    if let Some(r) = &mut remote {
        r.guard_writes(cli.lease, cli.fence);
    }
    let open = cli.open();
    let (kind, verb) = match cli.cmd {
        #[cfg(feature = "server")]
        Cmd::Serve(args) => return args.run(data, open),
        Cmd::Check { repair } => return check(&data, open, repair),
        Cmd::Machines { verb } => (Kind::Machine, verb),
        Cmd::Profiles { verb } => (Kind::Profile, verb),
        Cmd::Params { verb } => (Kind::Param, verb),
        Cmd::Import { file, kind } if remote.is_some() => {
            ctx.no_ref("import")?;
            let doc = parse_json(&format!("import file {file}"), &read_file(&file)?)?;
            return match &remote {
                Some(r) => r.import(doc, kind.map(Kind::from)),
                None => Ok(()),
            };
        }
        Cmd::Export if remote.is_some() => {
            ctx.no_ref("export")?;
            return match &remote {
                Some(r) => r.export(&ctx),
                None => Ok(()),
            };
        }
        Cmd::Leases { verb } => {
            ctx.no_ref("leases")?;
            if let Some(r) = &remote {
                return r.leases(&ctx, verb);
            }
            return with_store(&data, open, |s| {
                leases::run(&ctx, &auth::access(s, cli.token.as_deref())?, verb)
            });
        }
        Cmd::Cluster { verb } if remote.is_some() => {
            ctx.no_ref("cluster")?;
            return match &remote {
                Some(r) => r.cluster(&ctx, verb),
                None => Ok(()),
            };
        }
        Cmd::Import { file, kind } => {
            ctx.no_ref("import")?;
            let doc = parse_json(&format!("import file {file}"), &read_file(&file)?)?;
            return with_store(&data, open, |s| {
                auth::check_bulk(&auth::access(s, cli.token.as_deref())?, true)?;
                transfer::import(s, doc, kind).map(|n| outln!("{}", json!(n)))
            });
        }
        Cmd::Cluster { verb } => {
            ctx.no_ref("cluster")?;
            // Cluster verbs write many machines: a token needs machines/update/*.
            return with_store(&data, open, |s| {
                let scoped = auth::access(s, cli.token.as_deref())?;
                match verb {
                    cluster::ClusterVerb::Observe { name, timeout } => {
                        let store = scoped.authorize("machines", "list", "*")?;
                        cluster::observe(store, &name, timeout)
                    }
                    verb => cluster::run(&ctx, &scoped, verb),
                }
            });
        }
        Cmd::Export => {
            ctx.no_ref("export")?;
            return with_store(&data, open, |s| {
                auth::check_bulk(&auth::access(s, cli.token.as_deref())?, false)?;
                ctx.print(&transfer::export(s)?, None);
                Ok(())
            });
        }
        Cmd::Watch {
            kind,
            words,
            from,
            timeout,
        } => {
            let filter = (!words.is_empty())
                .then(|| Filter::from_args(&words))
                .transpose()?;
            let timeout = timeout.map(seconds).transpose()?;
            if let Some(r) = &remote {
                return r.watch(kind.into(), filter, from, timeout);
            }
            return wait::watch(&data, open, kind.into(), filter, from, timeout);
        }
    };
    // Waits release the store between checks (remote waits are long-polls).
    match &verb {
        _ if remote.is_some() => {}
        Verb::Wait {
            id,
            field,
            value,
            timeout,
        } => {
            let words = [field.clone(), "Eq".into(), value.clone()];
            let f = Filter::from_args(&words)?;
            return waited(wait::machine(
                &data,
                open,
                id,
                &f,
                seconds(timeout.unwrap_or(3600.0))?,
            ));
        }
        Verb::WatchCount(args) => return wait::watch_members(&data, open, kind, args),
        Verb::Await { id, expr, timeout } => {
            let f = Filter::from_args(expr)?;
            return waited(wait::machine(
                &data,
                open,
                id,
                &f,
                seconds(timeout.unwrap_or(3600.0))?,
            ));
        }
        Verb::Count(args) if args.until.is_some() => {
            if !args.group_by.is_empty() {
                return Err(Failure::input(
                    "count takes --until or --group-by, not both",
                ));
            }
            let (filter, _) = listing(kind, args)?;
            let until = args.until.as_deref().unwrap_or_default();
            let n = wait::count_until(&data, open, kind, &filter, until, seconds(args.timeout)?)?;
            outln!("{n}");
            return Ok(());
        }
        _ => {}
    }
    // Read stdin and parse inputs before taking the store.
    let input = match &verb {
        Verb::Create { input } | Verb::Update { input, .. } | Verb::Patch { input, .. } => {
            Some(read_input(input)?)
        }
        Verb::Render { file, .. } => Some(read_file(file)?),
        _ => None,
    };
    if let Some(r) = remote {
        return r.verb(&ctx, kind, verb, input);
    }
    let token = cli.token.as_deref();
    if let Verb::Token { id, ttl, claims } = &verb {
        ctx.no_ref("token")?;
        return with_store(&data, open, |s| {
            auth::mint(s, token, kind, id, *ttl, claims)
        });
    }
    if let (Verb::Count(args), Kind::Machine, None, None) = (&verb, kind, token, &ctx.reference) {
        if ctx.count_from_snapshot(&data, args)? {
            return Ok(());
        }
    }
    with_store(&data, open, |s| {
        let fence = ctx.fence.map(fleetkv::Cluster::fenced_by);
        let s = auth::access(s, token)?.machine_writes(ctx.lease, fence);
        ctx.local_verb(&s, kind, verb, input)
    })
}

/// Output format and the `-r` reference.
struct Ctx {
    format: Format,
    reference: Option<String>,
    /// `--lease`, `--fence`.
    lease: Option<u64>,
    fence: Option<u64>,
}

impl Ctx {
    fn no_ref(&self, verb: &str) -> Out {
        match self.reference {
            Some(_) => Err(Failure::input(format!("-r/--ref is not used by {verb}"))),
            None => Ok(()),
        }
    }

    fn print(&self, v: &Value, kind: Option<Kind>) {
        match (self.format, kind) {
            (Format::Table, Some(k)) if v.is_object() || v.is_array() => {
                out!("{}", table(k, v))
            }
            _ => outln!(
                "{}",
                serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
            ),
        }
    }

    /// `machines count` (and `--group-by`) answered from the snapshot the
    /// last clean close left, without opening the store; `false` when
    /// there is no usable one (the store is open elsewhere, or changed) and
    /// the store must be opened. The owner's answer: callers with a token
    /// open the store, which checks it.
    fn count_from_snapshot(&self, data: &Path, args: &ListArgs) -> Out<bool> {
        let Ok(Some(snap)) = fleetkv::Snapshot::open(data) else {
            return Ok(false);
        };
        let (filter, _) = listing(Kind::Machine, args)?;
        if args.group_by.is_empty() {
            let Ok(n) = snap.count(&filter) else {
                return Ok(false);
            };
            outln!("{n}");
        } else {
            let Ok(groups) = snap.group_count(&filter, &args.group_by) else {
                return Ok(false);
            };
            self.print(&to_value(groups), Some(Kind::Machine));
        }
        Ok(true)
    }

    /// An embedded store's verb: what only a local store does (rendering,
    /// workflow-all), else the verb every client answers ([`Ctx::verb`]).
    fn local_verb(&self, s: &Scoped, kind: Kind, verb: Verb, input: Option<String>) -> Out {
        match verb {
            Verb::WorkflowAll(args) => {
                self.no_ref("workflow-all")?;
                machines_only(kind, "workflow-all")?;
                cluster::workflow_all(self, s.authorize("machines", "update", "*")?, args)
            }
            Verb::Render { id, file } => {
                self.no_ref("render")?;
                machines_only(kind, "render")?;
                render::render(s, &id, &file, &input.unwrap_or_default())
            }
            Verb::Token { .. } => Err(Failure::input("token is handled before the store opens")),
            // Waits never hold the store: `run` handles them before opening it.
            Verb::Wait { .. } | Verb::Await { .. } | Verb::WatchCount(_) => {
                Err(Failure::other("wait needs the store released"))
            }
            verb => self.verb(s, kind, verb, input),
        }
    }

    /// One verb through a client, embedded or remote: the same calls, the
    /// same output, the same exit codes.
    fn verb(&self, c: &dyn Client, kind: Kind, verb: Verb, input: Option<String>) -> Out {
        let input = input.unwrap_or_default();
        let show = |v: Value| {
            self.print(&v, Some(kind));
            Ok(())
        };
        if !matches!(verb, Verb::Update { .. } | Verb::Set { .. }) {
            self.no_ref("this verb (only update and set take it)")?;
        }
        match verb {
            Verb::Create { .. } => show(create(c, kind, &input)?),
            Verb::Show { id } => show(c.get(kind, &id)?),
            Verb::Exists { id } => match c.exists(kind, &id)? {
                true => Ok(()),
                false => Err(Error::NotFound { kind, key: id }.into()),
            },
            Verb::Destroy { id } => {
                c.delete(kind, &id)?;
                outln!("Deleted {kind} {id}");
                Ok(())
            }
            Verb::List(args) => {
                let (filter, opts) = listing(kind, &args)?;
                show(Value::Array(c.list(kind, &filter, &opts)?))
            }
            Verb::Count(args) if !args.group_by.is_empty() => {
                if kind == Kind::Param {
                    return Err(group_by_kinds());
                }
                if args.until.is_some() {
                    return Err(Failure::input(
                        "count takes --until or --group-by, not both",
                    ));
                }
                let (filter, _) = listing(kind, &args)?;
                show(to_value(c.group_count(kind, &filter, &args.group_by)?))
            }
            Verb::Count(args) if args.until.is_some() => {
                if kind != Kind::Machine {
                    return Err(Failure::input("count --until counts machines"));
                }
                let (filter, _) = listing(kind, &args)?;
                let until = args.until.as_deref().unwrap_or_default().parse()?;
                outln!("{}", c.count_wait(&filter, until, seconds(args.timeout)?)?);
                Ok(())
            }
            Verb::Count(args) => {
                let (filter, _) = listing(kind, &args)?;
                outln!("{}", c.count(kind, &filter)?);
                Ok(())
            }
            Verb::Update { id, .. } => {
                let merge = parse_json("update JSON", &input)?;
                let out = match &self.reference {
                    None => c.merge(kind, &id, &merge)?,
                    Some(r) => {
                        let reference = parse_json("-r reference object", r)?;
                        if !reference.is_object() {
                            return Err(Failure::input(
                                "-r reference object: expected a JSON object",
                            ));
                        }
                        let mut desired = reference.clone();
                        json_patch::merge(&mut desired, &merge);
                        c.update_from(kind, &id, &reference, &desired)?
                    }
                };
                show(out)
            }
            Verb::Patch { id, .. } => {
                let ops = parse_json("patch", &input)?;
                show(c.patch(kind, &id, &ops)?)
            }
            Verb::Set { id, key, value, .. } => {
                with_params(kind, "set")?;
                let value = loose_json(&value);
                let expected = self.reference.as_deref().map(loose_json);
                let expected = expected.as_ref().map(|v| Some(v).filter(|v| !v.is_null()));
                outln!(
                    "{}",
                    pretty(&c.set_param(kind, &id, &key, expected, value)?)
                );
                Ok(())
            }
            Verb::Get {
                id, key, aggregate, ..
            } => {
                with_params(kind, "get")?;
                let v = c.get_param(kind, &id, &key, aggregate)?;
                outln!("{}", pretty(&v.unwrap_or(Value::Null)));
                Ok(())
            }
            Verb::Params { id, aggregate } => {
                with_params(kind, "params")?;
                let v = c.params(kind, &id, aggregate)?;
                outln!("{}", pretty(&Value::Object(v)));
                Ok(())
            }
            Verb::Remove { id, key, .. } => {
                with_params(kind, "remove")?;
                let v = c.remove_param(kind, &id, &key)?;
                outln!("{}", pretty(&v.unwrap_or(Value::Null)));
                Ok(())
            }
            Verb::Addprofile { id, profile } => {
                machines_only(kind, "addprofile")?;
                show(profile_edit(c, &id, &profile, true)?)
            }
            Verb::Removeprofile { id, profile } => {
                machines_only(kind, "removeprofile")?;
                show(profile_edit(c, &id, &profile, false)?)
            }
            Verb::Workflow { id, workflow } => {
                machines_only(kind, "workflow")?;
                show(c.merge(kind, &id, &json!({ "Workflow": workflow }))?)
            }
            Verb::Meta { verb } => {
                with_params(kind, "meta")?;
                let (id, merge) = match verb {
                    MetaVerb::Get { id, key, .. } => {
                        let obj = c.get(kind, &id)?;
                        let v = obj.pointer(&format!("/Meta/{}", escape(&key)));
                        outln!("{}", pretty(v.unwrap_or(&Value::Null)));
                        return Ok(());
                    }
                    MetaVerb::Set { id, key, value, .. } => (id, json!({ "Meta": { key: value } })),
                    MetaVerb::Remove { id, key, .. } => (id, json!({ "Meta": { key: null } })),
                };
                show(c.merge(kind, &id, &merge)?)
            }
            Verb::Wait {
                id,
                field,
                value,
                timeout,
            } => {
                let f = Filter::from_args(&[field, "Eq".into(), value])?;
                waited(
                    c.wait_machine(&id, &f, seconds(timeout.unwrap_or(3600.0))?)
                        .map_err(Failure::from),
                )
            }
            Verb::Await { id, expr, timeout } => {
                let f = Filter::from_args(&expr)?;
                waited(
                    c.wait_machine(&id, &f, seconds(timeout.unwrap_or(3600.0))?)
                        .map_err(Failure::from),
                )
            }
            Verb::WorkflowAll(_)
            | Verb::Render { .. }
            | Verb::Token { .. }
            | Verb::WatchCount(_) => Err(Failure::other(
                "this verb is answered by the store's own front end",
            )),
        }
    }
}

/// `fleetkv check`: one line per finding on stdout, damage first.
fn check(data: &Path, open: Open, repair: bool) -> Out {
    let options = fleetkv::Options {
        durable: !open.no_fsync,
        ..fleetkv::Options::default()
    };
    let report = Store::check(data, options, repair)?;
    for line in &report.damage {
        println!("damage: {line}");
    }
    for line in &report.passed {
        println!("ok: {line}");
    }
    // A repair rebuilds the indexes and their checkpoint, nothing else.
    let repaired = report.passed.iter().any(|l| l.starts_with("repaired:"));
    let left = report
        .damage
        .iter()
        .filter(|d| !(repaired && (d.starts_with("checkpoint:") || d.starts_with("indexes:"))))
        .count();
    match left {
        0 => Ok(()),
        n => Err(Failure {
            code: 1,
            msg: format!("store {}: {n} finding(s) of damage", data.display()),
        }),
    }
}

/// Opens the store (waiting while another process holds it), runs `f`,
/// flushes and closes.
fn with_store(data: &Path, open: Open, f: impl FnOnce(&Store) -> Out) -> Out {
    let store = open_store(data, open)?;
    f(&store)?;
    store.flush()?;
    Ok(())
}

/// How to open the embedded store (`--lock-timeout`, `--stall-timeout`).
#[derive(Clone, Copy)]
pub(crate) struct Open {
    lock_timeout: f64,
    stall_timeout: f64,
    no_fsync: bool,
}

impl Cli {
    fn open(&self) -> Open {
        Open {
            lock_timeout: self.lock_timeout,
            stall_timeout: self.stall_timeout,
            no_fsync: self.no_fsync,
        }
    }
}

fn open_store(data: &Path, open: Open) -> Out<Store> {
    let secs = |flag: &str, v: f64| {
        Duration::try_from_secs_f64(v).map_err(|_| {
            Failure::input(format!(
                "{flag} {v}: expected a non-negative number of seconds"
            ))
        })
    };
    let options = fleetkv::Options {
        stall_timeout: secs("--stall-timeout", open.stall_timeout)?,
        lock_timeout: secs("--lock-timeout", open.lock_timeout)?,
        durable: !open.no_fsync,
        ..fleetkv::Options::default()
    };
    Store::open_with(data, options).map_err(|e| Failure {
        code: Failure::from_error_code(&e),
        msg: format!("cannot open store {}: {e}", data.display()),
    })
}

/// The argument itself, or stdin for `-`.
fn read_input(arg: &str) -> Out<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::input(format!("reading stdin: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Failure::input(format!("stdin is not UTF-8: {e}")))
}

/// Reads a file for import (`-`: stdin).
pub fn read_file(arg: &str) -> Out<String> {
    if arg == "-" {
        return read_input(arg);
    }
    std::fs::read_to_string(arg).map_err(|e| Failure::input(format!("reading {arg}: {e}")))
}

fn parse_json(what: &str, text: &str) -> Out<Value> {
    serde_json::from_str(text).map_err(|e| {
        Failure::input(format!(
            "{what} is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// VALUE and REF words: JSON when they parse as JSON, else a plain string.
fn loose_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON Pointer token.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Jobs are created by rendering and read by Uuid: no command reaches them
/// as a collection (the kind of a command is never [`Kind::Job`]).
fn with_params(kind: Kind, verb: &str) -> Out<Kind> {
    match kind {
        Kind::Param => Err(Failure::input(format!(
            "params (definitions) have no {verb}: use machines or profiles"
        ))),
        k => Ok(k),
    }
}

fn machines_only(kind: Kind, verb: &str) -> Out {
    match kind {
        Kind::Machine => Ok(()),
        k => Err(Failure::input(format!(
            "{verb} is a machines verb, not one for {}",
            k.plural()
        ))),
    }
}

/// `create JSON|NAME`: JSON when it looks like JSON, else a bare name.
fn create(c: &dyn Client, kind: Kind, input: &str) -> Out<Value> {
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
    // The document is checked as its kind first, for the CLI's wording.
    match kind {
        Kind::Machine => drop(decode::<fleetkv::Machine>(kind, doc.clone())?),
        Kind::Profile => drop(decode::<fleetkv::Profile>(kind, doc.clone())?),
        _ => drop(decode::<fleetkv::ParamDef>(kind, doc.clone())?),
    }
    Ok(c.create(kind, doc)?)
}

/// A JSON object as a model type, with the error naming the kind.
pub fn decode<T: serde::de::DeserializeOwned>(kind: Kind, doc: Value) -> Out<T> {
    if !doc.is_object() {
        return Err(Failure::input(format!(
            "{kind}: expected a JSON object, found {doc}"
        )));
    }
    serde_json::from_value(doc).map_err(|e| Failure::input(format!("{kind} JSON: {e}")))
}

/// Adds or removes one profile in one atomic patch (guarded by a `test`).
fn profile_edit(c: &dyn Client, id: &str, profile: &str, add: bool) -> Out<Value> {
    let m = c.get(Kind::Machine, id)?;
    let current = m.get("Profiles").cloned().unwrap_or(json!([]));
    let mut profiles: Vec<String> = serde_json::from_value(current.clone()).unwrap_or_default();
    let has = profiles.iter().any(|p| p == profile);
    match (add, has) {
        (true, false) => profiles.push(profile.to_string()),
        (false, true) => profiles.retain(|p| p != profile),
        _ => return Ok(m),
    }
    let ops = json!([
        { "op": "test", "path": "/Profiles", "value": current },
        { "op": "replace", "path": "/Profiles", "value": profiles },
    ]);
    Ok(c.patch(Kind::Machine, id, &ops)?)
}

/// `--group-by` on a kind without group counts.
fn group_by_kinds() -> Failure {
    Failure::input("--group-by counts machines and profiles")
}

/// The filter and listing options a `list`/`count` line gives.
fn listing(kind: Kind, args: &ListArgs) -> Out<(Filter, ListOptions)> {
    let mut opts = ListOptions {
        limit: args.limit,
        offset: args.offset.unwrap_or(0),
        aggregate: args.aggregate,
        slim: args.slim.as_deref().map(words::csv).unwrap_or_default(),
        params: args.params.as_deref().map(words::csv),
        ..ListOptions::default()
    };
    let filter_words = words::split(&args.words, &mut opts).map_err(Failure::input)?;
    let filter = if filter_words.is_empty() {
        Filter::all()
    } else if kind == Kind::Param {
        return Err(Failure::input(format!(
            "params list takes no filter words (found {:?}); it lists every definition",
            filter_words.join(" ")
        )));
    } else {
        Filter::from_args(&filter_words).map_err(Error::from)?
    };
    Ok((filter, opts))
}

/// `-F table`: Name/Uuid/Workflow for machines, Name/Description otherwise.
fn table(kind: Kind, v: &Value) -> String {
    let rows: Vec<&Map<String, Value>> = match v {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(o) => vec![o],
        _ => Vec::new(),
    };
    let cols: &[&str] = match kind {
        Kind::Machine => &["Name", "Uuid", "Workflow"],
        _ => &["Name", "Description"],
    };
    let cell = |r: &Map<String, Value>, c: &str| match r.get(c) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).chars().count())
                .fold(c.len(), usize::max)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(cols.iter().map(|c| c.to_string()).collect());
    for r in &rows {
        out += &line(cols.iter().map(|c| cell(r, c)).collect());
    }
    out
}
