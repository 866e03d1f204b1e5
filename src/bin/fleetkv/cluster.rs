//! `fleetkv cluster …` and `fleetkv machines workflow-all …`: the cluster
//! pattern's verbs on [`fleetkv::Cluster`] and [`fleetkv::start_workflow`].

use clap::{Args, Subcommand, ValueEnum};
use fleetkv::client::Client;
use fleetkv::{Cluster, Error, Filter, Kind, Role, Store};
use serde_json::{json, Value};

use std::time::Duration;

use super::{listing, seconds, to_value, Ctx, Failure, ListArgs, Out};

/// The cluster verbs.
#[derive(Subcommand)]
pub enum ClusterVerb {
    /// Create or complete cluster profile NAME and the `cluster/*` params.
    Init {
        name: String,
        /// The member filter (default `Profiles Eq NAME`).
        #[arg(long, value_name = "FILTER")]
        filter: Option<String>,
    },
    /// Add the cluster profile to MACHINE.
    Add { name: String, machine: String },
    /// Remove the cluster profile from MACHINE.
    Remove { name: String, machine: String },
    /// List the members, narrowed by extra filter words.
    Members {
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Count the members, narrowed by extra filter words.
    Count {
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a member's role, or set it.
    Role {
        name: String,
        machine: String,
        role: Option<RoleArg>,
    },
    /// Make sure N non-manager members are leaders (random, atomic,
    /// idempotent); prints the leaders.
    Elect {
        name: String,
        /// How many leaders.
        #[arg(long, default_value_t = 1, value_name = "N")]
        leaders: usize,
    },
    /// `campaign NAME MACHINE --lease ID`: block until MACHINE holds one of
    /// N leader slots under the lease; prints its leadership and fencing
    /// token (`Token`, for `--fence`). The slot is released when the lease
    /// ends.
    Campaign {
        name: String,
        machine: String,
        /// How many leader slots.
        #[arg(long, default_value_t = 1, value_name = "N")]
        leaders: usize,
        /// Give up after this many seconds (exit 5).
        #[arg(long, default_value_t = 3600.0, value_name = "SECONDS")]
        timeout: f64,
    },
    /// Give up MACHINE's leadership (role and token).
    Resign { name: String, machine: String },
    /// Print the leaders as a JSON line now and after each change.
    Observe {
        name: String,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
}

/// A role word.
#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// `cluster/manager` true.
    Manager,
    /// `cluster/leader` true.
    Leader,
    /// Neither.
    Worker,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Manager => Role::Manager,
            RoleArg::Leader => Role::Leader,
            RoleArg::Worker => Role::Worker,
        }
    }
}

/// `machines workflow-all WORKFLOW FILTER… [--meta KEY=VALUE]…`.
#[derive(Args)]
pub struct WorkflowAllArgs {
    /// The workflow to set.
    workflow: String,
    /// Filter words selecting the machines (required).
    #[arg(required = true)]
    words: Vec<String>,
    /// Also set Meta KEY to VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
}

impl WorkflowAllArgs {
    /// (workflow, filter words, meta) with `--meta` parsed.
    pub fn parts(self) -> Out<(String, Vec<String>, serde_json::Map<String, Value>)> {
        let mut meta = serde_json::Map::new();
        for kv in &self.meta {
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    meta.insert(k.to_string(), Value::String(v.to_string()));
                }
                _ => return Err(Failure::input(format!("--meta {kv:?}: expected KEY=VALUE"))),
            }
        }
        Ok((self.workflow, self.words, meta))
    }
}

/// Runs one cluster verb through a client, embedded or remote (`observe`
/// is a stream: the caller answers it).
pub fn run(ctx: &Ctx, c: &dyn Client, verb: ClusterVerb) -> Out {
    let show = |v: Value| {
        ctx.print(&v, Some(Kind::Machine));
        Ok(())
    };
    match verb {
        ClusterVerb::Init { name, filter } => {
            ctx.print(
                &c.cluster_init(&name, filter.as_deref())?,
                Some(Kind::Profile),
            );
            Ok(())
        }
        ClusterVerb::Add { name, machine } => show(c.cluster_add(&name, &machine)?),
        ClusterVerb::Remove { name, machine } => show(c.cluster_remove(&name, &machine)?),
        ClusterVerb::Members { name, list } => {
            let (extra, opts) = listing(Kind::Machine, &list)?;
            show(Value::Array(c.cluster_members(&name, &extra, &opts)?))
        }
        ClusterVerb::Count { name, list } => {
            let (extra, _) = listing(Kind::Machine, &list)?;
            outln!("{}", c.cluster_count(&name, &extra)?);
            Ok(())
        }
        ClusterVerb::Role {
            name,
            machine,
            role,
        } => match role {
            None => show(json!(c.cluster_role(&name, &machine)?)),
            Some(role) => show(c.cluster_set_role(&name, &machine, role.into())?),
        },
        ClusterVerb::Elect { name, leaders } => show(Value::Array(c.elect(&name, leaders)?)),
        ClusterVerb::Campaign {
            name,
            machine,
            leaders,
            timeout,
        } => {
            let lease = ctx
                .lease
                .ok_or_else(|| Failure::input("campaign needs --lease ID"))?;
            let won = c.campaign(&name, &machine, lease, leaders, seconds(timeout)?)?;
            ctx.print(&to_value(won), None);
            Ok(())
        }
        ClusterVerb::Resign { name, machine } => show(c.resign(&name, &machine)?),
        ClusterVerb::Observe { .. } => Err(Failure::other("observe is a stream")),
    }
}

/// `cluster observe NAME` on an embedded store.
pub fn observe(s: &Store, name: &str, timeout: Option<f64>) -> Out {
    let mut watch = Cluster::open(s, name)?.observe();
    let end = timeout
        .map(|t| seconds(t).map(|d| std::time::Instant::now() + d))
        .transpose()?;
    loop {
        let left = end.map_or(Duration::from_secs(3600), |e| {
            e.saturating_duration_since(std::time::Instant::now())
        });
        if let Some(l) = watch.next_timeout(left)? {
            outln!("{}", serde_json::to_string(&l).unwrap_or_default());
        }
        if end.is_some_and(|e| std::time::Instant::now() >= e) {
            return Ok(());
        }
    }
}

/// `machines workflow-all`: prints the report as JSON.
pub fn workflow_all(ctx: &Ctx, s: &Store, args: WorkflowAllArgs) -> Out {
    let meta = args
        .meta
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Failure::input(format!("--meta {kv:?}: expected KEY=VALUE"))),
        })
        .collect::<Out<Vec<_>>>()?;
    let filter = Filter::from_args(&args.words).map_err(Error::from)?;
    let report = fleetkv::start_workflow(s, &filter, &args.workflow, &meta)?;
    ctx.print(&to_value(report), None);
    Ok(())
}
