//! Waiting across processes on the embedded store: `watch`, `wait`, `await`,
//! `count --until` and `machines watch-count`.
//!
//! sled lets one process hold a store, so a waiting process must not keep it
//! open. Each check opens the store, asks, and releases it; between checks
//! the process sleeps on filesystem notifications (inotify, via `notify`) for
//! the store's directory, so it wakes on the write that may satisfy it. A
//! write that lands while a check runs is caught by comparing the revision
//! before and after; a re-check every second is the safety net for
//! notifications a filesystem does not deliver.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetkv::{CountCondition, Filter, Kind, MemberOptions, MemberWatch, Store};
use notify::{RecursiveMode, Watcher};

use super::{open_store, Failure, Open, Out};

/// Longest sleep between checks when no notification arrives.
const SAFETY_RECHECK: Duration = Duration::from_secs(1);

/// Runs `check` with the store opened afresh each time until it returns a
/// value, or `timeout` passes (exit code 5).
pub(crate) fn until<T>(
    data: &Path,
    open: Open,
    timeout: Duration,
    mut check: impl FnMut(&Store) -> Out<Option<T>>,
) -> Out<T> {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .map_err(|e| Failure::other(format!("cannot watch {}: {e}", data.display())))?;
    let watching = data.exists() && watcher.watch(data, RecursiveMode::Recursive).is_ok();
    loop {
        let seen = {
            let store = open_store(data, open)?;
            if let Some(v) = check(&store)? {
                return Ok(v);
            }
            store.revision()
        };
        // Our own open and close touch the files too: drain what they caused,
        // then make sure nobody wrote while we looked.
        while rx.try_recv().is_ok() {}
        if open_store(data, open)?.revision() != seen {
            continue;
        }
        while rx.try_recv().is_ok() {}
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::timeout());
        }
        let nap = if watching {
            left.min(SAFETY_RECHECK)
        } else {
            left.min(Duration::from_millis(50))
        };
        let _ = rx.recv_timeout(nap);
    }
}

/// `count --until COND --timeout S`: prints the count once it satisfies COND.
pub(crate) fn count_until(
    data: &Path,
    open: Open,
    kind: Kind,
    filter: &Filter,
    condition: &str,
    timeout: Duration,
) -> Out<u64> {
    let cond: CountCondition = condition.parse()?;
    if kind != Kind::Machine {
        return Err(Failure::input("count --until counts machines"));
    }
    until(data, open, timeout, |s| {
        let n = s.machines().count(filter)?;
        Ok(cond.holds(n).then_some(n))
    })
}

/// `wait ID FIELD VALUE` / `await ID EXPR…`: returns once machine ID matches.
pub(crate) fn machine(
    data: &Path,
    open: Open,
    id: &str,
    filter: &Filter,
    timeout: Duration,
) -> Out<()> {
    until(data, open, timeout, |s| {
        let uuid = s.machines().get(id)?.uuid.to_string();
        let me = Filter::parse(&format!("Uuid Eq {uuid}"))?.and(filter.clone());
        Ok((s.machines().count(&me)? == 1).then_some(()))
    })
}

/// `watch KIND [FILTER] [--from REV]`: prints events as JSON lines, forever
/// (or until `timeout`).
pub(crate) fn watch(
    data: &Path,
    open: Open,
    kind: Kind,
    filter: Option<Filter>,
    from: Option<u64>,
    timeout: Option<Duration>,
) -> Out<()> {
    let mut next = from;
    let result = until(data, open, timeout.unwrap_or(Duration::MAX / 4), |s| {
        let start = next.unwrap_or(s.revision() + 1);
        let mut w = s.watch(Some(kind), filter.clone(), Some(start))?;
        while let Some(e) = w.poll()? {
            outln!("{}", serde_json::to_string(&e).unwrap_or_default());
        }
        next = Some(w.next_revision());
        Ok(None::<()>)
    });
    match result {
        Err(f) if f.code == 5 && timeout.is_some() => Ok(()),
        other => other,
    }
}

/// `machines watch-count FILTER… [--members] [--from REV] [--timeout S]`.
#[derive(clap::Args)]
pub(crate) struct WatchCountArgs {
    /// Filter words (the machines to follow).
    pub(crate) words: Vec<String>,
    /// Put the members (`[{"Uuid","Name"}]`) in the first message.
    #[arg(long)]
    pub(crate) members: bool,
    /// Resume after this revision (the `Revision` of the last line seen):
    /// no snapshot first.
    #[arg(long, value_name = "REV")]
    pub(crate) from: Option<u64>,
    /// Stop after this many seconds (exit 0).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) timeout: Option<f64>,
}

impl WatchCountArgs {
    /// The filter and the timeout; machines only.
    pub(crate) fn parse(&self, kind: Kind) -> Out<(Filter, Option<Duration>)> {
        if kind != Kind::Machine {
            return Err(Failure::input("watch-count follows machines"));
        }
        let timeout = self.timeout.map(super::seconds).transpose()?;
        Ok((Filter::from_args(&self.words)?, timeout))
    }
}

/// `machines watch-count`: prints each message as a JSON line, forever (or
/// until `--timeout`). One stream lives across the checks: each opens the
/// store afresh and moves the stream to it (dense ids persist, so its set
/// carries over), so the lines are those one long-lived stream would print
/// — what a server sends.
pub(crate) fn watch_members(data: &Path, open: Open, kind: Kind, args: &WatchCountArgs) -> Out<()> {
    let (filter, timeout) = args.parse(kind)?;
    let mut stream: Option<MemberWatch> = None;
    let result = until(data, open, timeout.unwrap_or(Duration::MAX / 4), |s| {
        let w = match &mut stream {
            Some(w) => {
                w.reattach(s)?;
                w
            }
            None => stream.insert(s.watch_members_with(
                &filter,
                MemberOptions {
                    from: args.from,
                    members: args.members,
                    compacted_is_error: true,
                },
            )?),
        };
        while let Some(m) = w.poll()? {
            outln!("{}", serde_json::to_string(&m).unwrap_or_default());
        }
        // The store is closed after each check: the stream must not hold it.
        w.detach();
        Ok(None::<()>)
    });
    match result {
        Err(f) if f.code == 5 && timeout.is_some() => Ok(()),
        other => other,
    }
}
