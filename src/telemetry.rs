//! What fleetkv measures, recorded through the [`metrics`] facade.
//!
//! Owns: every metric's name, type, labels and help text ([`describe`]),
//! and the helpers that record them, so that a name is spelled once. Must
//! not: install a recorder or render an exposition format — the facade is
//! a no-op until the application installs one: `fleetkv serve` installs
//! the Prometheus recorder (`GET /metrics`); an embedding application may
//! install any other and call [`observe_store`] before it exports.
//!
//! Labels never carry caller data: routes are axum's route templates
//! (`/api/v3/{kind}/{id}`), never the requested path; kinds and outcomes
//! come from fixed lists. So no object name, param value or credential can
//! reach an exported series, and the number of series is bounded.
//!
//! Counters and histograms are recorded as things happen; the figures that
//! are cheap to read off the store (revision, object counts, index memory,
//! change-log length) are gauges set by [`observe_store`] when someone
//! asks, not maintained on every write.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use parking_lot::RwLock;

use crate::error::Error;
use crate::Store;

/// Requests answered, by `method`, `route` (the route template, or
/// `unmatched`) and `status`. Counter.
pub const HTTP_REQUESTS: &str = "fleetkv_http_requests_total";
/// Time to answer a request (to its response head; an event stream's
/// lifetime is not counted), labelled as [`HTTP_REQUESTS`]. Histogram.
pub const HTTP_DURATION: &str = "fleetkv_http_request_duration_seconds";
/// Store writes, by `kind` ([`WriteKind`]) and `outcome` (`ok`, `conflict`,
/// `invalid`, `error`). Counter.
pub const WRITES: &str = "fleetkv_writes_total";
/// Time a write took, waiting for the writer lock included, labelled as
/// [`WRITES`]. Histogram.
pub const WRITE_DURATION: &str = "fleetkv_write_duration_seconds";
/// Time a [`Store::flush`] took (every write of a durable store flushes).
/// Histogram.
pub const FSYNC_DURATION: &str = "fleetkv_fsync_duration_seconds";
/// Time the last [`Store::open`] took: the engine and the indexes, from a
/// checkpoint or a rebuild. Gauge.
pub const OPEN_DURATION: &str = "fleetkv_open_duration_seconds";
/// Time an index checkpoint took: encoding, the engine flush and the file.
/// Histogram.
pub const CHECKPOINT_DURATION: &str = "fleetkv_checkpoint_duration_seconds";
/// The store revision: the number of the last write. Gauge.
pub const REVISION: &str = "fleetkv_store_revision";
/// Objects held, by `kind` (`machines`, `profiles`, `params`). Gauge.
pub const OBJECTS: &str = "fleetkv_objects";
/// Estimated heap bytes of the in-memory indexes, by `kind` (`machines`,
/// `profiles`). Gauge.
pub const INDEX_BYTES: &str = "fleetkv_index_memory_bytes";
/// Change events kept in the persisted change log. Gauge.
pub const CHANGELOG_EVENTS: &str = "fleetkv_changelog_events";
/// Long-poll waits and event streams holding a waiter slot. Gauge.
pub const WAITERS_OPEN: &str = "fleetkv_waiters_open";
/// The most waiter slots (`--max-waiters`). Gauge.
pub const WAITERS_LIMIT: &str = "fleetkv_waiters_limit";
/// Event streams open. Gauge.
pub const EVENT_STREAMS_OPEN: &str = "fleetkv_event_streams_open";
/// How many revisions the store was ahead of an event when an event stream
/// handed it on: how far the stream's watch lags the writes. Histogram.
pub const WATCH_LAG: &str = "fleetkv_watch_lag_revisions";

/// Histogram buckets for durations, in seconds: 50 µs to 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets for [`WATCH_LAG`], in revisions.
pub const LAG_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0];

/// What a store write changed: the `kind` label of [`WRITES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A machine (its fields, params or profiles).
    Machine,
    /// A profile.
    Profile,
    /// A param definition.
    Param,
    /// An import: definitions, profiles and machines, or many machines,
    /// in one write.
    Bulk,
    /// A job record (template rendering).
    Job,
    /// A lease granted, revoked or expired (with what it held).
    Lease,
}

impl WriteKind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WriteKind::Machine => "machine",
            WriteKind::Profile => "profile",
            WriteKind::Param => "param",
            WriteKind::Bulk => "bulk",
            WriteKind::Job => "job",
            WriteKind::Lease => "lease",
        }
    }
}

/// The `outcome` label of a write's result: `conflict` for a lost race or
/// a name taken (HTTP 409), `invalid` for input the store refused (4xx),
/// `error` for the store failing (5xx).
pub fn outcome<T>(r: &Result<T, Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(
            Error::Conflict { .. }
            | Error::RevisionMismatch { .. }
            | Error::AlreadyExists { .. }
            | Error::InUse { .. },
        ) => "conflict",
        Err(
            Error::NotFound { .. }
            | Error::Invalid { .. }
            | Error::Schema { .. }
            | Error::Filter(_)
            | Error::Template(_)
            | Error::Compacted { .. }
            | Error::Auth(_),
        ) => "invalid",
        Err(_) => "error",
    }
}

/// Registers every metric's help text and unit with the installed recorder.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to its response head)."
    );
    describe_counter!(WRITES, "Store writes, by kind and outcome.");
    describe_histogram!(
        WRITE_DURATION,
        Unit::Seconds,
        "Time a store write took, the wait for the writer lock included."
    );
    describe_histogram!(
        FSYNC_DURATION,
        Unit::Seconds,
        "Time a flush of the storage engine to disk took."
    );
    describe_gauge!(
        OPEN_DURATION,
        Unit::Seconds,
        "Time the last store open took (engine and indexes)."
    );
    describe_histogram!(
        CHECKPOINT_DURATION,
        Unit::Seconds,
        "Time an index checkpoint took (encode, flush, write)."
    );
    describe_gauge!(
        REVISION,
        "The store revision: the number of the last write."
    );
    describe_gauge!(OBJECTS, "Objects held, by kind.");
    describe_gauge!(
        INDEX_BYTES,
        Unit::Bytes,
        "Estimated heap bytes of the in-memory indexes, by kind."
    );
    describe_gauge!(
        CHANGELOG_EVENTS,
        "Change events kept in the persisted change log."
    );
    describe_gauge!(
        WAITERS_OPEN,
        "Long-poll waits and event streams holding a waiter slot."
    );
    describe_gauge!(WAITERS_LIMIT, "The most waiter slots (--max-waiters).");
    describe_gauge!(EVENT_STREAMS_OPEN, "Event streams open.");
    describe_histogram!(
        WATCH_LAG,
        "Revisions the store was ahead of an event when an event stream handed it on."
    );
}

/// Records HTTP requests ([`HTTP_REQUESTS`], [`HTTP_DURATION`]), keeping
/// each series' handles: the recorder's registry is searched (labels built,
/// hashed, compared) once per series, not once per request. The handles
/// belong to the recorder in force when they were taken, so they are kept
/// with that recorder's address and taken again when another one is in
/// force: an application may install its recorder after building the router.
#[derive(Default)]
pub struct RequestRecorder {
    series: RwLock<SeriesHandles>,
}

/// The recorder the handles came from (its address), and by route, then
/// `(method, status)`, the handles: a route answers few of those.
type SeriesHandles = (usize, HashMap<Box<str>, Vec<RequestSeries>>);

struct RequestSeries {
    method: &'static str,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// The address of the recorder in force on this thread: the same for as
/// long as the same recorder is (a global one, once set, stays for good).
fn recorder_in_force() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

impl RequestRecorder {
    /// Records one request. `route` must be a route template or a fixed
    /// word, never a requested path.
    pub fn record(&self, method: &'static str, route: &str, status: u16, took: Duration) {
        let record = |s: &RequestSeries| {
            s.requests.increment(1);
            s.duration.record(took.as_secs_f64());
        };
        let find = |v: &[RequestSeries]| {
            v.iter()
                .position(|s| s.status == status && s.method == method)
        };
        let recorder = recorder_in_force();
        {
            let series = self.series.read();
            if series.0 == recorder {
                if let Some(i) = series.1.get(route).and_then(|v| find(v)) {
                    return record(&series.1[route][i]);
                }
            }
        }
        let mut series = self.series.write();
        if series.0 != recorder {
            *series = (recorder, HashMap::new());
        }
        let v = series.1.entry(route.into()).or_default();
        let i = find(v).unwrap_or_else(|| {
            let labels = [
                ("method", method.to_string()),
                ("route", route.to_string()),
                ("status", status.to_string()),
            ];
            v.push(RequestSeries {
                method,
                status,
                requests: metrics::counter!(HTTP_REQUESTS, &labels),
                duration: metrics::histogram!(HTTP_DURATION, &labels),
            });
            v.len() - 1
        });
        record(&v[i]);
    }
}

/// Records one store write and how it ended.
pub fn record_write<T>(kind: WriteKind, result: &Result<T, Error>, took: Duration) {
    let labels = [("kind", kind.label()), ("outcome", outcome(result))];
    metrics::counter!(WRITES, &labels).increment(1);
    metrics::histogram!(WRITE_DURATION, &labels).record(took.as_secs_f64());
}

/// Records one engine flush.
pub fn record_fsync(took: Duration) {
    metrics::histogram!(FSYNC_DURATION).record(took.as_secs_f64());
}

/// Records a store open.
pub fn record_open(took: Duration) {
    metrics::gauge!(OPEN_DURATION).set(took.as_secs_f64());
}

/// Records an index checkpoint.
pub fn record_checkpoint(took: Duration) {
    metrics::histogram!(CHECKPOINT_DURATION).record(took.as_secs_f64());
}

/// Records how far behind the store an event stream's event was.
pub fn record_watch_lag(revisions: u64) {
    metrics::histogram!(WATCH_LAG).record(revisions as f64);
}

/// Calls `record` with the time from its creation to its drop: one line
/// times a whole block, whichever way the block is left.
#[must_use = "the time is recorded when the guard drops"]
pub struct Timed {
    started: Instant,
    record: fn(Duration),
}

impl Timed {
    /// Starts timing for `record` (e.g. [`record_fsync`]).
    pub fn start(record: fn(Duration)) -> Timed {
        Timed {
            started: Instant::now(),
            record,
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        (self.record)(self.started.elapsed());
    }
}

/// An open event stream for [`EVENT_STREAMS_OPEN`]: counted while alive.
#[must_use = "the stream is counted while the guard lives"]
pub struct OpenStream(());

impl OpenStream {
    /// Counts a stream as open until the guard drops.
    pub fn open() -> OpenStream {
        metrics::gauge!(EVENT_STREAMS_OPEN).increment(1.0);
        OpenStream(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(EVENT_STREAMS_OPEN).decrement(1.0);
    }
}

/// Sets the server's waiter gauges: slots in use and the limit.
pub fn observe_waiters(open: usize, limit: usize) {
    metrics::gauge!(WAITERS_OPEN).set(open as f64);
    metrics::gauge!(WAITERS_LIMIT).set(limit as f64);
}

/// Sets the store's gauges ([`REVISION`], [`OBJECTS`], [`INDEX_BYTES`],
/// [`CHANGELOG_EVENTS`]) from its current state; call it before each
/// export.
///
/// Measuring the indexes walks every distinct indexed value under the
/// state's read lock (writers wait): about 25 ms at 100,000 machines in a
/// release build. So [`INDEX_BYTES`] is measured again only once the time
/// since the last measure is 100 times what that one took — the walk holds
/// the lock at most 1% of the time, however often the store is scraped —
/// and keeps its last value in between.
pub fn observe_store(store: &Store) {
    let g = store.gauges();
    metrics::gauge!(REVISION).set(g.revision as f64);
    for (kind, n) in [
        ("machines", g.machines),
        ("profiles", g.profiles),
        ("params", g.params),
    ] {
        metrics::gauge!(OBJECTS, "kind" => kind).set(n as f64);
    }
    metrics::gauge!(CHANGELOG_EVENTS).set(g.log_len as f64);
    if index_measure_due(Instant::now()) {
        let started = Instant::now();
        let (machines, profiles) = store.index_bytes();
        note_index_measure(started, started.elapsed());
        metrics::gauge!(INDEX_BYTES, "kind" => "machines").set(machines as f64);
        metrics::gauge!(INDEX_BYTES, "kind" => "profiles").set(profiles as f64);
    }
}

/// When the last index measure started and how long it took. One per
/// process, as the gauges are.
static LAST_INDEX_MEASURE: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

/// Time since the last measure over its duration, at least.
const INDEX_MEASURE_SPACING: u32 = 100;

fn index_measure_due(now: Instant) -> bool {
    let last = *LAST_INDEX_MEASURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    last.is_none_or(|(at, took)| now.duration_since(at) >= took * INDEX_MEASURE_SPACING)
}

fn note_index_measure(at: Instant, took: Duration) {
    *LAST_INDEX_MEASURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some((at, took));
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Key, KeyName, Metadata, SharedString};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counts every counter increment, whatever its key.
    #[derive(Default)]
    struct CountingRecorder(Arc<AtomicU64>);

    impl metrics::Recorder for CountingRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> metrics::Counter {
            metrics::Counter::from_arc(Arc::clone(&self.0))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn requests_recorded_before_a_recorder_is_installed_do_not_blind_it() {
        let requests = RequestRecorder::default();
        // No recorder yet: the facade hands out no-op handles.
        requests.record("GET", "/api/v3/machines", 200, Duration::ZERO);
        let counting = CountingRecorder::default();
        metrics::with_local_recorder(&counting, || {
            requests.record("GET", "/api/v3/machines", 200, Duration::ZERO);
            requests.record("GET", "/api/v3/machines", 200, Duration::ZERO);
        });
        assert_eq!(counting.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome::<()>(&Ok(())), "ok");
        assert_eq!(
            outcome::<()>(&Err(Error::RevisionMismatch {
                expected: 1,
                actual: 2
            })),
            "conflict"
        );
        assert_eq!(
            outcome::<()>(&Err(Error::Invalid {
                what: "Name".into(),
                reason: "empty".into()
            })),
            "invalid"
        );
        assert_eq!(outcome::<()>(&Err(Error::Timeout)), "error");
    }
}
