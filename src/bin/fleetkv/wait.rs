//! Waiting across processes on the embedded store: `watch`, `wait`, `await`
//! and `count --until`.
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

use fleetkv::{CountCondition, Filter, Kind, Store};
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
