#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod cluster;
pub mod error;
pub mod filter;
pub(crate) mod index;
pub mod model;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod telemetry;
pub mod template;
#[doc(hidden)]
pub mod timing;
pub mod transfer;
pub mod watch;
pub mod wire;

pub use auth::{AuthError, Claim, Scoped, TokenClaims};
pub use cluster::{
    start_workflow, Cluster, LeaderWatch, Leaders, Leadership, Role, WorkflowReport,
};
pub use error::{Error, Result};
pub use filter::Filter;
pub use model::{Kind, Machine, ParamDef, Profile, GLOBAL_PROFILE};
#[cfg(feature = "etcd")]
pub use store::EtcdOptions;
pub use store::{
    Fence, GroupCount, Held, Lease, LeaseId, Leases, ListOptions, Objects, Options, Query,
    Recovery, Snapshot, Store,
};
pub use template::{Job, RenderContext, Template, TemplateError, TemplateErrorKind, TokenMinter};
pub use watch::{
    Action, CountCondition, Event, Member, MemberOptions, MemberWatch, Membership, Watch,
};
