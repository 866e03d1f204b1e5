//! The store: machines, profiles and param definitions kept durably in a
//! storage engine (sled by default), written atomically, and indexed in
//! memory.
//!
//! Owns: revisions, the write pipeline (resolve → modify a copy → validate
//! against every other object → one atomic batch and the matching index
//! change, under one lock), object addressing, effective params, listing and
//! counting. Must not: parse filters (see [`crate::filter`]) or evaluate them
//! on bitmaps (see `crate::index`), or reach an engine other than through
//! `backend::Backend`.
//!
//! # Files
//! - `backend` — the storage boundary: the trait and its batch;
//!   `sled_backend` and `memory_backend` implement it; `fault_backend`
//!   (tests only) fails and tears commits and flushes on purpose.
//! - `layout` — key layout and record codec.
//! - `stall` — the storage thread bounding every blocking engine call.
//! - `open` — [`Options`], [`Store`], opening, a new store's first write.
//! - `snapshot` — what a clean close leaves for counting without opening
//!   the engine ([`Snapshot`]).
//! - `rebuild` — the in-memory state from the records; index verification;
//!   `check` — the operator's integrity check and repair.
//! - `state` — the in-memory state, addressing, cross-object checks, index
//!   entries.
//! - `write` — the write pipeline; `changelog` — the log's part of a write;
//!   `group_commit` — what is on disk, and waiting for it.
//! - `etcd_backend` (feature `etcd`) — the engine on an etcd cluster shared
//!   by several servers; `follow` — catching up with the other servers'
//!   writes.
//! - `list` — listing, queries, shaping.
//! - `view` — the state at one revision, read-locked, for the membership
//!   streams (`crate::watch`).
//! - `metered` — writes recorded by kind and outcome, the scrape-time
//!   gauges ([`crate::telemetry`]).
//! - `leases` — leases, what they hold, the guards a machine write can
//!   carry; `lease_clock` — lease deadlines, their expiry and filing.
//! - `machines`, `profiles`, `params` — one handle per object kind;
//!   `bulk` — definitions, profiles and machines in one write (imports);
//!   `objects` — the three handles behind one kind-generic JSON surface;
//!   `patch` — the document update operations they share;
//!   `machine_doc` — a machine record read and spliced as bytes, for a
//!   one-param write.
//!
//! # Dense ids
//! Machines get a dense `u32` id on create, persisted as their record key, and
//! never reused: ids are the default listing order (creation order), and a
//! reused id would let a stale id from a caller name a different machine.
//! 4 billion creates are the limit. Profiles are few and all in memory; their
//! ids are assigned at open in name order and are not persisted.
//!
//! # Concurrency
//! Writers are serialized by one mutex; each holds the state's write lock only
//! for the engine's commit and the index change, so readers see either all of a
//! write or none of it, and a writer reads its own write when it returns.

mod backend;
mod bulk;
mod changelog;
mod check;
mod checkpoint;
#[cfg(feature = "etcd")]
mod etcd_backend;
#[cfg(test)]
mod fault_backend;
mod follow;
mod group_commit;
mod layout;
mod lease_clock;
mod leases;
mod list;
mod machine_doc;
mod machines;
mod memory_backend;
mod metered;
mod objects;
mod open;
mod params;
mod patch;
mod profiles;
mod rebuild;
mod sled_backend;
mod snapshot;
mod stall;
mod state;
mod view;
mod write;

pub use crate::index::GroupCount;
pub use bulk::{Bulk, BulkError};
pub use check::CheckReport;
pub use checkpoint::Recovery;
#[cfg(feature = "etcd")]
pub use etcd_backend::EtcdOptions;
pub use leases::{Fence, Held, Lease, LeaseId, Leases};
pub use list::{ListOptions, Query};
pub use machines::Machines;
pub use objects::Objects;
pub use open::{Options, Store, STALL_TIMEOUT};
pub use params::Params;
pub use profiles::Profiles;
pub use snapshot::Snapshot;

#[cfg(test)]
pub(crate) use layout::log_key;
pub(crate) use layout::{job_key, log_position, show_key};
#[cfg(any(feature = "server", feature = "client"))]
pub(crate) use patch::not_a_patch;
pub(crate) use state::MachineAddr;
pub(crate) use view::StateView;
