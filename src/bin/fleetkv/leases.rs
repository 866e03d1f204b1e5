//! `fleetkv leases …`: grant, keep alive, revoke, show and list leases on
//! an embedded store ([`fleetkv::Leases`]); the remote forms are in
//! `remote.rs`.

use std::time::Duration;

use clap::Subcommand;
use fleetkv::client::Client;
use fleetkv::{Error, Lease};

use super::{to_value, Ctx, Failure, Out};

/// The lease verbs.
#[derive(Subcommand)]
pub enum LeaseVerb {
    /// Grant a lease of TTL seconds; prints it (its `ID` goes to `--lease`).
    Grant {
        /// Seconds: each renewal moves the deadline this far ahead.
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        ttl: i64,
    },
    /// Renew lease ID at a third of its TTL until it is gone (exit 4) or the
    /// process is stopped; prints the lease once. With `--once`, renew once.
    Keepalive {
        id: u64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// End lease ID now: what it holds goes in the same write.
    Revoke { id: u64 },
    /// Show lease ID.
    Show { id: u64 },
    /// List every lease.
    List,
}

/// A TTL from the command line: whole seconds, at least 1.
pub fn ttl(ttl: i64) -> Out<u64> {
    u64::try_from(ttl).ok().filter(|t| *t > 0).ok_or_else(|| {
        Failure::from(Error::Invalid {
            what: "lease TTL".into(),
            reason: format!("{ttl} s is out of range: a TTL is at least 1 second"),
        })
    })
}

/// Renews with `renew` at a third of the TTL until it fails; prints the
/// lease after the first renewal.
pub fn keep_alive(ctx: &Ctx, once: bool, mut renew: impl FnMut() -> Out<Lease>) -> Out {
    let first = renew()?;
    ctx.print(&to_value(&first), None);
    if once {
        return Ok(());
    }
    let every = Duration::from_millis((first.ttl * 1000 / 3).max(100));
    loop {
        std::thread::sleep(every);
        renew()?;
    }
}

/// Runs one lease verb through a client, embedded or remote.
pub fn run(ctx: &Ctx, c: &dyn Client, verb: LeaseVerb) -> Out {
    let show = |l: Lease| {
        ctx.print(&to_value(l), None);
        Ok(())
    };
    match verb {
        LeaseVerb::Grant { ttl: t } => show(c.grant_lease(ttl(t)?)?),
        LeaseVerb::Keepalive { id, once } => keep_alive(ctx, once, || Ok(c.keep_alive(id)?)),
        LeaseVerb::Revoke { id } => show(c.revoke_lease(id)?),
        LeaseVerb::Show { id } => show(c.lease(id)?),
        LeaseVerb::List => {
            ctx.print(&to_value(c.leases()?), None);
            Ok(())
        }
    }
}
