//! The crate's one error type.
//!
//! Owns: every way a fleetkv call can fail, shaped so that callers (and the
//! CLI's exit codes) can tell "someone else won" ([`Error::Conflict`]) from
//! "you sent something wrong" ([`Error::Invalid`], [`Error::Filter`]) from
//! "it is not there" ([`Error::NotFound`]). Must not: format for a particular
//! front end; the CLI and server map variants to exit codes and statuses.

use serde_json::Value;

use crate::auth::AuthError;
use crate::filter::FilterError;
use crate::model::Kind;
use crate::template::TemplateError;

/// Result alias used throughout fleetkv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fleetkv.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist.
    #[error("{kind} {key} not found")]
    NotFound {
        /// What kind of object was looked up.
        kind: Kind,
        /// The key or address that was asked for.
        key: String,
    },
    /// An object with that key or name exists already.
    #[error("{kind} {key} already exists")]
    AlreadyExists {
        /// The kind of the colliding object.
        kind: Kind,
        /// The key or Name that collides.
        key: String,
    },
    /// A compare-and-swap precondition did not hold: somebody else changed the
    /// object first. Nothing was written.
    #[error(
        "conflict at {path}: expected {}, found {}",
        show(expected),
        show(actual)
    )]
    Conflict {
        /// JSON Pointer of the value that was tested.
        path: String,
        /// What the caller expected (`None`: expected absent). Boxed to keep
        /// `Result<T, Error>` small.
        expected: Option<Box<Value>>,
        /// What the store holds (`None`: absent).
        actual: Option<Box<Value>>,
    },
    /// The input is malformed or breaks a rule of the data model. Nothing was
    /// written.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Where the problem is (a field, a patch op, a param name...).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A param value does not fit its definition's schema.
    #[error("param {param}: value does not match its schema: {reason}")]
    Schema {
        /// The param's name.
        param: String,
        /// The validator's explanation.
        reason: String,
    },
    /// A profile is still named by machines and cannot be deleted.
    #[error("profile {profile} is in use by machines: {}{}", machines.join(", "), if *more > 0 { format!(" and {more} more") } else { String::new() })]
    InUse {
        /// The profile that was to be deleted.
        profile: String,
        /// Names of (up to a few of) the machines that hold it.
        machines: Vec<String>,
        /// How many more machines hold it beyond those listed.
        more: u64,
    },
    /// A filter did not parse or bind. Renders with a caret under the input.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A stored record could not be decoded.
    #[error("corrupt record at key {key}: {reason}")]
    Corrupt {
        /// The storage key of the record.
        key: String,
        /// What failed.
        reason: String,
    },
    /// A watch asked for events older than the change log keeps.
    #[error("revision {requested} is compacted: the oldest kept is {oldest}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still in the log.
        oldest: u64,
    },
    /// A wait ran out of time.
    #[error("timeout")]
    Timeout,
    /// A template did not parse or render. Renders with a caret under the
    /// offending line. Boxed to keep `Result<T, Error>` small.
    #[error(transparent)]
    Template(#[from] Box<TemplateError>),
    /// A token was refused: forged, tampered, expired, not yet valid, or
    /// without a claim for the request. Nothing was read or written.
    #[error("token refused: {0}")]
    Auth(#[from] AuthError),
    /// The storage engine failed; the engine's own message.
    #[error("storage: {0}")]
    Storage(String),
    /// The disk (or the user's quota) is full: the engine's own message. A
    /// store that met it refuses writes until it is reopened
    /// ([`Store::recover`](crate::Store::recover)); reads go on.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// Another handle held the store for the whole
    /// [`Options::lock_timeout`](crate::Options::lock_timeout) (an embedded
    /// store has one process at a time); the engine's message names the
    /// store. Nothing was opened.
    #[error("store busy: {0}")]
    Busy(String),
    /// A fleetkv server answered an error that has no variant of its own
    /// here (a client of [`crate::client::Http`]); `message` is the
    /// server's, as the embedded store would have said it.
    #[error("{message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// DRP's error `Type` (`Invalid`, `InUse`, `Forbidden`, ...).
        typ: String,
        /// The server's main message.
        message: String,
    },
    /// The server could not be reached, or its answer was not a fleetkv
    /// server's. Whether a write it carried happened is unknown.
    #[error("{message}")]
    Transport {
        /// What failed, naming the server.
        message: String,
        /// The connection or the answer timed out.
        timed_out: bool,
    },
    /// A commit expected the store at revision `expected` and found it at
    /// `actual`: another writer committed first. Nothing was written.
    #[error("revision conflict: the write expected revision {expected}, the store is at {actual}")]
    RevisionMismatch {
        /// The revision the write was prepared against.
        expected: u64,
        /// The store's revision when it was committed.
        actual: u64,
    },
    /// The storage engine made no progress on `op` for `after` (the store's
    /// stall limit, [`Options::stall_timeout`](crate::Options::stall_timeout)).
    /// The store refuses every further call: whether the stuck write lands
    /// is unknown until the store is reopened by a new process.
    #[error(
        "storage stalled: {op} made no progress for {:.1} s; the store refuses further calls until it is reopened",
        after.as_secs_f64()
    )]
    Stalled {
        /// What was stuck: `open`, `commit`, `flush`.
        op: String,
        /// How long the call was waited for.
        after: std::time::Duration,
    },
    /// A shared storage engine (etcd) could not be reached or answered no
    /// request within its deadline: nothing was read or written. The store
    /// answers again by itself once the engine returns.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A commit to a shared engine (etcd) got no answer (a timeout, a lost
    /// connection): the write may or may not have been applied. Not a
    /// conflict and not a success: read the object back to know.
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
}

fn show(v: &Option<Box<Value>>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "absent".to_string(),
    }
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(kind: Kind, key: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            key: key.into(),
        }
    }
}
