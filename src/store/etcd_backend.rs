//! The engine on an etcd cluster (feature `etcd`): several fleetkv stores —
//! in several servers — share one key space under a prefix.
//!
//! Owns: every use of the `etcd-client` crate — connecting, the mapping of a
//! [`Batch`] onto one etcd `Txn`, the request limits, turning etcd's errors
//! into ours, and the doorbell ([`EtcdBackend::doorbell`]) that tells a
//! store another server wrote. Must not: know what the records mean, or
//! bring a store's indexes forward (the store's follower does, see
//! `super::follow`).
//!
//! # Key layout
//! Every fleetkv key (`super::layout`) is stored as `prefix + key`, the
//! prefix (`/fleetkv/` by default) chosen per cluster of servers. One more
//! key, `prefix + "s:format"`, names the layout ([`FORMAT`]); it is written
//! in the first commit. A prefix holding keys without it (written by
//! something else), or naming another format, is refused at open and the
//! keys are reported, never read as fleetkv's.
//!
//! # Revisions and the compare-and-swap
//! A fleetkv write is one etcd transaction, so it is one etcd revision. The
//! fleetkv revision stays the dense counter under `s:rev` (the change log,
//! watches and `X-Fleetkv-Revision` speak it); the transaction compares the
//! value of `s:rev` with the batch's expected revision (or, for the first
//! write, that the key does not exist) and sets it to the new one. Every
//! fleetkv write moves `s:rev`, so this one compare is exactly the compare
//! of the `mod_revision`s of every key the write read: any write committed
//! since the writer's state — to any key — fails it. It is stronger than a
//! per-key compare (two writes to unrelated machines also conflict), which
//! fleetkv needs anyway: the change log's keys, the dense machine ids
//! (`s:next`) and the log's length are shared by every write. A JSON Patch
//! `test`, a `-r` reference and a param CAS are checked against the state
//! at the expected revision, so each is exactly this one transaction. A
//! transaction whose compare fails answers, in its `else` branch, the
//! stored revision: [`Error::RevisionMismatch`], and the store catches up
//! and plans the write again.
//!
//! # Limits: refused, not split
//! etcd refuses a request over `--max-request-bytes` (1.5 MiB by default)
//! and a transaction of more than `--max-txn-ops` operations (128). A write
//! needs one operation per object it writes, one per change-log record (up
//! to 6 KiB of events), one per trimmed record and three of its own (`s:rev`, `s:logn`, and `s:format` on
//! the first). A write over either limit is refused before it is sent, with
//! [`Error::Invalid`] naming both numbers. It is not split: two
//! transactions are two revisions, and another server would see (and could
//! act on) half of one write — the atomicity the store promises. Imports of
//! more than a few dozen machines must therefore be sent in parts (or the
//! cluster run with larger limits, given here as [`EtcdOptions`]); a staged
//! commit that keeps one revision is future work.
//!
//! # Faults
//! Every call runs on the backend's own small tokio runtime with a deadline
//! ([`EtcdOptions::request_timeout`]); the caller's thread waits on a
//! channel, so the backend may be called from anywhere, an async worker
//! included. A read that fails is [`Error::Unavailable`]. A commit whose
//! answer never came (a timeout, a lost connection, no leader) is
//! [`Error::OutcomeUnknown`]: it may have been applied — never reported as
//! a conflict or as success. The store then takes no shortcut: its next
//! write or its follower reads `s:rev` and the log, and an applied write is
//! applied to memory as another server's would be. Requests require a
//! leader (etcd's `hasleader` metadata), so a member cut off from the
//! quorum answers at once with an error instead of stale data; reads are
//! linearizable (etcd's default), never served from a lagging member.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::backend::{Backend, Batch, Scan};
use super::layout::{show_key, REV_KEY};
use crate::error::{Error, Result};

/// The layout marker's key (under the prefix) and value.
pub(crate) const FORMAT_KEY: &[u8] = b"s:format";
/// This build's layout under a prefix.
pub(crate) const FORMAT: &[u8] = b"fleetkv-etcd-1";

/// Entries one scan request reads.
const PAGE: i64 = 256;

/// Bytes per operation a transaction request spends besides its key and
/// value (protobuf framing, the op's tag); generous on purpose.
const OP_OVERHEAD: usize = 32;

/// How the backend talks to etcd, and the cluster's limits.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// The prefix every key is stored under (`/fleetkv/` by default).
    pub prefix: String,
    /// The longest a request (or a connection attempt) may take.
    pub request_timeout: Duration,
    /// The cluster's `--max-txn-ops` (128 by default).
    pub max_txn_ops: usize,
    /// The cluster's `--max-request-bytes` (1.5 MiB by default).
    pub max_request_bytes: usize,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            prefix: "/fleetkv/".into(),
            request_timeout: Duration::from_secs(5),
            max_txn_ops: 128,
            max_request_bytes: 3 * 512 * 1024,
        }
    }
}

/// A fleetkv key space in an etcd cluster.
pub(crate) struct EtcdBackend {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: Vec<u8>,
    options: EtcdOptions,
    endpoints: String,
}

/// The key after every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

/// An etcd error on a read: the cluster could not answer.
fn unavailable(endpoints: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("etcd at {endpoints}: {what}: {e}"))
}

/// Whether etcd certainly did not apply a request that failed with `status`
/// (it was refused on its face, before the raft log).
fn refused_on_its_face(status: &etcd_client::Error) -> Option<Error> {
    let etcd_client::Error::GRpcStatus(s) = status else {
        return None;
    };
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            Some(Error::invalid(
                "write",
                format!("etcd refused the transaction: {}", s.message()),
            ))
        }
        Code::ResourceExhausted => Some(Error::StorageFull(format!("etcd: {}", s.message()))),
        Code::PermissionDenied | Code::Unauthenticated => Some(Error::Storage(format!(
            "etcd refused access: {}",
            s.message()
        ))),
        _ => None,
    }
}

fn decode_rev(bytes: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
        Error::Corrupt {
            key: "s:rev".into(),
            reason: "not 8 bytes".into(),
        }
    })?))
}

impl EtcdBackend {
    /// Connects to the cluster at `endpoints` (`http://host:port`, any
    /// member) and checks what the prefix holds: nothing, or a fleetkv
    /// store of this layout. Unreachable: [`Error::Unavailable`]; a prefix
    /// holding something else: [`Error::Corrupt`] naming a key.
    pub(crate) fn connect(endpoints: &[String], options: EtcdOptions) -> Result<EtcdBackend> {
        let shown = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(Error::invalid("etcd endpoints", "none given"));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleetkv-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Storage(format!("starting the etcd client's runtime: {e}")))?;
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.request_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(5), options.request_timeout)
            .with_require_leader(true);
        let eps = endpoints.to_vec();
        let timeout = options.request_timeout;
        let client = rt
            .block_on(async move {
                tokio::time::timeout(timeout, Client::connect(eps, Some(connect))).await
            })
            .map_err(|_| unavailable(&shown, "connecting", "timed out"))?
            .map_err(|e| unavailable(&shown, "connecting", e))?;
        let backend = EtcdBackend {
            rt: Some(rt),
            client,
            prefix: options.prefix.clone().into_bytes(),
            options,
            endpoints: shown,
        };
        backend.check_prefix()?;
        Ok(backend)
    }

    /// Refuses a prefix whose keys fleetkv did not write.
    fn check_prefix(&self) -> Result<()> {
        let format = self.get(FORMAT_KEY)?;
        match format.as_deref() {
            Some(f) if f == FORMAT => return Ok(()),
            Some(f) => {
                return Err(Error::Corrupt {
                    key: format!("{}s:format", self.options.prefix),
                    reason: format!(
                        "the prefix holds a store of layout {:?}; this build reads {:?}",
                        String::from_utf8_lossy(f),
                        String::from_utf8_lossy(FORMAT)
                    ),
                })
            }
            None => {}
        }
        if let Some(first) = self.scan(b"", b"").next() {
            let (key, _) = first?;
            return Err(Error::Corrupt {
                key: format!("{}{}", self.options.prefix, show_key(&key)),
                reason: "the prefix holds keys fleetkv did not write (no s:format marker); \
                         choose another --etcd-prefix or clear it"
                    .into(),
            });
        }
        Ok(())
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| Error::Storage("the etcd client is closed".into()))
    }

    /// Runs `fut` on the backend's runtime under the request deadline and
    /// waits for it on this thread. `Err(None)`: the deadline passed.
    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    ) -> std::result::Result<T, Option<etcd_client::Error>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let timeout = self.options.request_timeout;
        let Ok(rt) = self.rt() else {
            return Err(None);
        };
        rt.spawn(async move {
            let r = tokio::time::timeout(timeout, fut).await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(r)) => r.map_err(Some),
            _ => Err(None),
        }
    }

    /// A read through [`call`](Self::call), failures as [`Error::Unavailable`].
    fn read<T: Send + 'static>(
        &self,
        what: &str,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T> {
        self.call(fut).map_err(|e| match e {
            Some(e) => unavailable(&self.endpoints, what, e),
            None => unavailable(
                &self.endpoints,
                what,
                "no answer within the request timeout",
            ),
        })
    }

    /// The etcd revision and fleetkv revision now (one linearizable read).
    pub(crate) fn revisions(&self) -> Result<(i64, u64)> {
        let mut kv = self.client.kv_client();
        let key = self.full(REV_KEY);
        let resp = self.read(
            "reading the revision",
            async move { kv.get(key, None).await },
        )?;
        let etcd_rev = resp.header().map_or(0, |h| h.revision());
        let rev = match resp.kvs().first() {
            Some(kv) => decode_rev(kv.value())?,
            None => 0,
        };
        Ok((etcd_rev, rev))
    }

    /// Rings (sends on `ring`) whenever another writer may have moved the
    /// store: an etcd watch on the revision key from etcd revision `from`,
    /// with progress notifications. Returns when the watch ends (cancelled,
    /// compacted, the connection lost) or `alive` says stop; the caller
    /// reads the store's revision and calls again. A compacted start
    /// revision is not an error here: the store reads its own change log,
    /// which etcd's compaction does not touch, so a new watch from the
    /// present is all it needs.
    pub(crate) fn doorbell(
        &self,
        from: i64,
        ring: &dyn Fn(i64),
        alive: &dyn Fn() -> bool,
    ) -> Result<()> {
        let rt = self.rt()?;
        let mut client = self.client.watch_client();
        let key = self.full(REV_KEY);
        let mut options = WatchOptions::new().with_progress_notify();
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let timeout = self.options.request_timeout;
        let (_watcher, mut stream) = rt
            .block_on(async {
                tokio::time::timeout(timeout, client.watch(key, Some(options))).await
            })
            .map_err(|_| unavailable(&self.endpoints, "watching", "timed out"))?
            .map_err(|e| unavailable(&self.endpoints, "watching", e))?;
        while alive() {
            let msg = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(500), stream.message()).await
            });
            match msg {
                // Quiet: check `alive`, and let the caller's poll run.
                Err(_) => ring(0),
                Ok(Ok(Some(resp))) => {
                    if resp.canceled() || resp.compact_revision() > 0 {
                        return Ok(());
                    }
                    let rev = resp.header().map_or(0, |h| h.revision());
                    ring(rev);
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(unavailable(&self.endpoints, "watching", e)),
            }
        }
        Ok(())
    }

    /// Grants an etcd lease of `ttl` seconds: the deadline of a fleetkv
    /// lease on a shared store, kept by etcd's leader for every server.
    pub(crate) fn grant_lease(&self, ttl: u64) -> Result<i64> {
        let mut leases = self.client.lease_client();
        let ttl = i64::try_from(ttl).map_err(|_| Error::invalid("lease TTL", "too large"))?;
        let resp = self.read(
            "granting a lease",
            async move { leases.grant(ttl, None).await },
        )?;
        Ok(resp.id())
    }

    /// Renews etcd lease `id` once; `false` when it has ended (expired or
    /// revoked: etcd never revives one).
    pub(crate) fn keep_lease(&self, id: i64) -> Result<bool> {
        let mut leases = self.client.lease_client();
        // etcd-client sends one renewal and reads its answer before it
        // returns; dropping the keeper closes the stream.
        match self.call(async move { leases.keep_alive(id).await.map(drop) }) {
            Ok(()) => Ok(true),
            // etcd-client's own error for an answer with TTL 0.
            Err(Some(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                Ok(false)
            }
            Err(Some(e)) => Err(unavailable(&self.endpoints, "renewing a lease", e)),
            Err(None) => Err(unavailable(
                &self.endpoints,
                "renewing a lease",
                "no answer within the request timeout",
            )),
        }
    }

    /// What is left of etcd lease `id`; `None` once it has ended.
    pub(crate) fn lease_left(&self, id: i64) -> Result<Option<Duration>> {
        let mut leases = self.client.lease_client();
        let resp = self.read("reading a lease", async move {
            leases.time_to_live(id, None).await
        })?;
        Ok((resp.ttl() > 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }

    /// Ends etcd lease `id` now; one that has ended already is no error.
    pub(crate) fn revoke_lease(&self, id: i64) -> Result<()> {
        let mut leases = self.client.lease_client();
        match self.call(async move { leases.revoke(id).await }) {
            Ok(_) => Ok(()),
            Err(Some(etcd_client::Error::GRpcStatus(s))) if s.code() == tonic::Code::NotFound => {
                Ok(())
            }
            Err(Some(e)) => Err(unavailable(&self.endpoints, "revoking a lease", e)),
            Err(None) => Err(unavailable(
                &self.endpoints,
                "revoking a lease",
                "no answer within the request timeout",
            )),
        }
    }

    /// The ids of every etcd lease that lives now (one request).
    pub(crate) fn live_leases(&self) -> Result<std::collections::HashSet<i64>> {
        let mut leases = self.client.lease_client();
        let resp = self.read("listing leases", async move { leases.leases().await })?;
        Ok(resp.leases().iter().map(|l| l.id()).collect())
    }

    /// The operations of `batch`, one per key (etcd refuses a transaction
    /// naming a key twice; the batch's later op on a key wins).
    fn ops(&self, batch: Batch) -> (Vec<TxnOp>, usize) {
        let mut last: HashMap<Vec<u8>, usize> = HashMap::with_capacity(batch.ops.len());
        for (i, (k, _)) in batch.ops.iter().enumerate() {
            last.insert(k.clone(), i);
        }
        let mut bytes = 0;
        let mut ops = Vec::with_capacity(last.len() + 2);
        for (i, (k, v)) in batch.ops.into_iter().enumerate() {
            if last.get(&k) != Some(&i) || k == REV_KEY || k == FORMAT_KEY {
                continue;
            }
            bytes += self.prefix.len() + k.len() + OP_OVERHEAD;
            let key = self.full(&k);
            ops.push(match v {
                Some(v) => {
                    bytes += v.len();
                    TxnOp::put(key, v, None)
                }
                None => TxnOp::delete(key, None),
            });
        }
        ops.push(TxnOp::put(
            self.full(REV_KEY),
            batch.rev.to_be_bytes().to_vec(),
            None,
        ));
        if batch.expect == 0 {
            ops.push(TxnOp::put(self.full(FORMAT_KEY), FORMAT.to_vec(), None));
        }
        bytes += 2 * (self.prefix.len() + 16 + OP_OVERHEAD);
        (ops, bytes)
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        // A runtime may not be dropped (blocking) inside another runtime's
        // worker, where a store's last handle may go.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Backend for EtcdBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut kv = self.client.kv_client();
        let key = self.full(key);
        let mut resp = self.read("reading", async move { kv.get(key, None).await })?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    /// One transaction of gets per `max_txn_ops` keys: a read at one etcd
    /// revision, one round trip.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.options.max_txn_ops.max(1)) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::get(self.full(k), None))
                .collect();
            let mut kv = self.client.kv_client();
            let resp = self.read(
                "reading",
                async move { kv.txn(Txn::new().and_then(ops)).await },
            )?;
            for r in resp.op_responses() {
                let TxnOpResponse::Get(g) = r else {
                    return Err(Error::Storage(
                        "etcd answered a get with another operation".into(),
                    ));
                };
                out.push(g.kvs().first().map(|kv| kv.value().to_vec()));
            }
        }
        if out.len() != keys.len() {
            return Err(Error::Storage(format!(
                "etcd answered {} of {} gets",
                out.len(),
                keys.len()
            )));
        }
        Ok(out)
    }

    fn scan_keys(&self, prefix: &[u8], from: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        let (start, end) = (self.full(from), prefix_end(&self.full(prefix)));
        let options = GetOptions::new()
            .with_range(end)
            .with_keys_only()
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut kv = self.client.kv_client();
        let resp = self.read("scanning keys", async move {
            kv.get(start, Some(options)).await
        })?;
        let strip = self.prefix.len();
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| kv.key()[strip..].to_vec())
            .collect())
    }

    fn scan(&self, prefix: &[u8], from: &[u8]) -> Scan<'_> {
        let end = prefix_end(&self.full(prefix));
        let strip = self.prefix.len();
        // Where the next page starts; `None` once the range is read.
        let mut next = Some(self.full(from));
        let mut page = Vec::new().into_iter();
        Box::new(std::iter::from_fn(move || loop {
            if let Some(item) = page.next() {
                return Some(Ok(item));
            }
            let start = next.take()?;
            let mut kv = self.client.kv_client();
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            let resp = match self.read(
                "scanning",
                async move { kv.get(start, Some(options)).await },
            ) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            let more = resp.more();
            let got: Vec<(Vec<u8>, Vec<u8>)> = resp
                .kvs()
                .iter()
                .map(|kv| (kv.key()[strip..].to_vec(), kv.value().to_vec()))
                .collect();
            if more {
                if let Some(last) = resp.kvs().last() {
                    // The key right after the last one read.
                    next = Some([last.key(), &[0]].concat());
                }
            }
            page = got.into_iter();
        }))
    }

    fn revision(&self) -> Result<u64> {
        Ok(self.revisions()?.1)
    }

    fn commit(&self, batch: Batch) -> Result<()> {
        let (expect, rev) = (batch.expect, batch.rev);
        let (ops, bytes) = self.ops(batch);
        let limits = &self.options;
        if ops.len() > limits.max_txn_ops || bytes > limits.max_request_bytes {
            return Err(Error::invalid(
                "write",
                format!(
                    "too large for one etcd transaction: {} operations and about {} bytes, \
                     the cluster takes at most {} operations (--max-txn-ops) and {} bytes \
                     (--max-request-bytes); the write is refused, not split (a split write \
                     is seen in part by other servers): write fewer objects at a time",
                    ops.len(),
                    bytes,
                    limits.max_txn_ops,
                    limits.max_request_bytes
                ),
            ));
        }
        let rev_key = self.full(REV_KEY);
        let compare = if expect == 0 {
            Compare::version(rev_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(
                rev_key.clone(),
                CompareOp::Equal,
                expect.to_be_bytes().to_vec(),
            )
        };
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(ops)
            .or_else(vec![TxnOp::get(rev_key, None)]);
        let mut kv = self.client.kv_client();
        let resp = match self.call(async move { kv.txn(txn).await }) {
            Ok(r) => r,
            Err(Some(e)) => {
                if let Some(refused) = refused_on_its_face(&e) {
                    return Err(refused);
                }
                return Err(Error::OutcomeUnknown(format!(
                    "etcd at {}: the transaction for revision {rev} failed ({e}); \
                     it may or may not have been applied",
                    self.endpoints
                )));
            }
            Err(None) => {
                return Err(Error::OutcomeUnknown(format!(
                    "etcd at {}: no answer to the transaction for revision {rev} within {:?}; \
                     it may or may not have been applied",
                    self.endpoints, self.options.request_timeout
                )))
            }
        };
        if resp.succeeded() {
            return Ok(());
        }
        let mut actual = 0;
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                if let Some(kv) = g.kvs().first() {
                    actual = decode_rev(kv.value())?;
                }
            }
        }
        Err(Error::RevisionMismatch {
            expected: expect,
            actual,
        })
    }

    /// etcd acknowledges a transaction once a quorum has it on disk.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }
}

/// The test etcd launcher `tests/etcd.rs` uses too.
#[cfg(test)]
#[path = "../../tests/common/etcd_server.rs"]
mod etcd_server;

#[cfg(test)]
mod tests {
    use super::super::backend::checks;
    use super::*;

    use super::etcd_server::Etcd;

    fn backend(etcd: &Etcd, prefix: &str) -> Result<EtcdBackend> {
        EtcdBackend::connect(
            std::slice::from_ref(&etcd.url),
            EtcdOptions {
                prefix: prefix.into(),
                request_timeout: Duration::from_secs(2),
                ..EtcdOptions::default()
            },
        )
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/fleetkv/"), b"/fleetkv0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn etcd_passes_the_checks_every_engine_passes() {
        let etcd = Etcd::start();
        let db = backend(&etcd, "/one/").unwrap();
        checks::a_stale_expected_revision_is_refused("etcd", &db);
        // 100 records a commit (etcd's default limit is 128 operations);
        // pages of 256 keys: the scans cross pages.
        let db = backend(&etcd, "/two/").unwrap();
        checks::scans_are_ordered_and_bounded("etcd", &db, 100);
        // The first prefix is untouched by the second's keys.
        let one = backend(&etcd, "/one/").unwrap();
        assert_eq!(one.revision().unwrap(), 2);
    }

    #[test]
    fn a_write_over_the_transaction_limit_is_refused_whole() {
        let etcd = Etcd::start();
        let db = backend(&etcd, "/big/").unwrap();
        db.commit(checks::batch(0, 1, b"a", b"1")).unwrap();
        let mut b = Batch {
            expect: 1,
            rev: 2,
            ..Batch::default()
        };
        for i in 0..200u32 {
            b.put(format!("k{i:03}").into_bytes(), b"v".as_slice());
        }
        match db.commit(b) {
            Err(Error::Invalid { reason, .. }) => {
                assert!(reason.contains("refused, not split"), "{reason}");
                assert!(reason.contains("--max-txn-ops"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(db.revision().unwrap(), 1);
        assert_eq!(db.scan(b"k", b"k").count(), 0);
        // The same key twice in one batch is one operation (etcd refuses
        // duplicates); the later op wins.
        let mut b = checks::batch(1, 2, b"a", b"2");
        b.remove(b"a".as_slice());
        b.put(b"a".as_slice(), b"3".as_slice());
        db.commit(b).unwrap();
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn keys_fleetkv_did_not_write_are_reported_not_read() {
        let etcd = Etcd::start();
        let db = backend(&etcd, "/x/").unwrap();
        db.commit(checks::batch(0, 1, b"a", b"1")).unwrap();
        // Under "/x" (no slash) the store's keys look like "/s:rev"...,
        // with no marker of their own.
        match backend(&etcd, "/x") {
            Err(Error::Corrupt { key, reason }) => {
                assert!(key.starts_with("/x/"), "{key}");
                assert!(reason.contains("did not write"), "{reason}");
            }
            other => panic!("{:?}", other.map(|_| "a backend")),
        }
    }

    #[test]
    fn unreachable_etcd_is_unavailable_and_an_unanswered_commit_is_unknown() {
        let dead = format!("http://127.0.0.1:{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let started = std::time::Instant::now();
        match EtcdBackend::connect(
            &[dead],
            EtcdOptions {
                request_timeout: Duration::from_secs(1),
                ..EtcdOptions::default()
            },
        ) {
            Err(Error::Unavailable(msg)) => assert!(msg.contains("127.0.0.1"), "{msg}"),
            other => panic!("{:?}", other.map(|_| "a backend")),
        }
        assert!(started.elapsed() < Duration::from_secs(10));

        let etcd = Etcd::start();
        let db = backend(&etcd, "/f/").unwrap();
        db.commit(checks::batch(0, 1, b"a", b"1")).unwrap();
        etcd.signal("STOP");
        let read = db.get(b"a");
        let commit = db.commit(checks::batch(1, 2, b"a", b"2"));
        etcd.signal("CONT");
        assert!(matches!(read, Err(Error::Unavailable(_))), "{read:?}");
        match commit {
            Err(Error::OutcomeUnknown(msg)) => assert!(msg.contains("may or may not"), "{msg}"),
            other => panic!("{other:?}"),
        }
        // Back by itself: the frozen request may or may not have landed.
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let rev = loop {
            match db.revision() {
                Ok(rev) => break rev,
                Err(_) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("etcd did not come back: {e}"),
            }
        };
        assert!(rev == 1 || rev == 2, "{rev}");
    }
}
