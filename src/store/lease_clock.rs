//! Lease time: each lease's deadline on the monotonic clock, the thread
//! that ends leases when their deadline passes, and the deadlines' survival
//! across a restart.
//!
//! Owns: deadlines (renewing one is a memory write, never a store write),
//! the expiry thread and the `fleetkv.leases` file beside sled's files; on
//! a store shared through etcd, whose etcd leases keep the deadlines, the
//! poll that ends leases once etcd has ended theirs.
//! Must not: change records (expiry calls the store's lease write,
//! [`Store::end_lease`]).
//!
//! # Why a renewal is not a write
//! A million agents renewing every few seconds would be hundreds of
//! thousands of writes a second. As etcd keeps lease expiry in its leader's
//! memory and checkpoints it, the owner of the store keeps deadlines in
//! memory ([`std::time::Instant`]: a wall-clock jump changes nothing) and
//! writes them to `fleetkv.leases` once a second when they changed (and at
//! close): a small file, written whole to a temporary name, synced and
//! renamed over the old one.
//!
//! # Never extended by a crash
//! The file holds each deadline on the kernel's boot clock (`/proc/uptime`,
//! which runs through suspend and cannot be set), with the boot's id. An
//! open on the same boot takes each lease's remaining time as its filed
//! deadline minus the boot clock now (less the clock's 10 ms resolution):
//! renewals after the last filing are lost, so a lease can come back
//! shorter, never longer. A lease granted after the last filing comes back
//! with its TTL counted from that filing (it was granted later). On another
//! boot, without a readable file, or without a boot clock, no remaining
//! time can be proven: every lease ends at the open (one line on stderr).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::open::{Inner, Store};
use crate::error::{Error, Result};
use crate::model::Kind;

/// The deadlines file, beside the engine's files.
pub(super) const LEASES_FILE: &str = "fleetkv.leases";
const MAGIC: &[u8; 8] = b"FKVLEAS1";
/// How often changed deadlines are filed.
const FILE_EVERY: Duration = Duration::from_secs(1);
/// `/proc/uptime`'s resolution: a boot-clock reading may be this much late.
const BOOT_CLOCK_RESOLUTION_MS: u64 = 10;

/// Every live lease's deadline.
#[derive(Default)]
struct Deadlines {
    by_id: HashMap<u64, Instant>,
    order: BTreeSet<(Instant, u64)>,
    /// Changed since last filed.
    dirty: bool,
}

impl Deadlines {
    fn set(&mut self, id: u64, at: Instant) {
        if let Some(old) = self.by_id.insert(id, at) {
            self.order.remove(&(old, id));
        }
        self.order.insert((at, id));
        self.dirty = true;
    }

    fn take(&mut self, id: u64) -> Option<Instant> {
        let at = self.by_id.remove(&id)?;
        self.order.remove(&(at, id));
        self.dirty = true;
        Some(at)
    }
}

/// The boot clock: which boot, and its reading at an [`Instant`].
#[derive(Clone)]
struct BootClock {
    boot_id: String,
    at: Instant,
    ms: u64,
}

impl BootClock {
    fn read() -> Option<BootClock> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let at = Instant::now();
        let ms = uptime_ms()?;
        Some(BootClock {
            boot_id: boot_id.trim().to_string(),
            at,
            ms,
        })
    }

    /// `t` on the boot clock (never later than the truth: the reading was
    /// truncated, and the monotonic clock stops in suspend).
    fn ms_at(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(d) => self.ms + d.as_millis() as u64,
            None => self
                .ms
                .saturating_sub(self.at.duration_since(t).as_millis() as u64),
        }
    }
}

fn uptime_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs = text.split_whitespace().next()?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, "0"));
    let whole: u64 = whole.parse().ok()?;
    let frac: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    Some(whole * 1000 + frac)
}

/// The lease deadlines of one store, and where they are filed.
pub(super) struct LeaseClock {
    deadlines: Mutex<Deadlines>,
    wake: Condvar,
    file: Option<PathBuf>,
    boot: Option<BootClock>,
    running: Mutex<bool>,
}

impl LeaseClock {
    pub(super) fn new(dir: Option<&Path>) -> LeaseClock {
        LeaseClock {
            deadlines: Mutex::new(Deadlines::default()),
            wake: Condvar::new(),
            file: dir.map(|d| d.join(LEASES_FILE)),
            boot: BootClock::read(),
            running: Mutex::new(false),
        }
    }

    /// Sets lease `id` to end at `at` (a grant, or a restored deadline).
    pub(super) fn set(&self, id: u64, at: Instant) {
        self.deadlines.lock().set(id, at);
        self.wake.notify_all();
    }

    /// Renews lease `id` for `ttl` from now, if its deadline has not passed:
    /// a lease that ended (or is ending) is not found, never revived.
    pub(super) fn renew(&self, id: u64, ttl: Duration) -> Result<Instant> {
        let mut d = self.deadlines.lock();
        let now = Instant::now();
        match d.by_id.get(&id) {
            Some(at) if *at > now => {
                let at = now + ttl;
                d.set(id, at);
                Ok(at)
            }
            _ => Err(Error::not_found(Kind::Lease, id.to_string())),
        }
    }

    /// Takes lease `id` off the clock when it has `due` (or, `due` false,
    /// in any case): from then on it cannot be renewed. Whether it was on.
    pub(super) fn take(&self, id: u64, due: bool) -> bool {
        let mut d = self.deadlines.lock();
        match d.by_id.get(&id) {
            Some(at) if !due || *at <= Instant::now() => d.take(id).is_some(),
            _ => false,
        }
    }

    /// Whether lease `id` is on the clock and its deadline has not passed.
    pub(super) fn live(&self, id: u64) -> bool {
        self.deadlines
            .lock()
            .by_id
            .get(&id)
            .is_some_and(|at| *at > Instant::now())
    }

    /// What is left of lease `id` (zero once due).
    pub(super) fn remaining(&self, id: u64) -> Option<Duration> {
        let at = *self.deadlines.lock().by_id.get(&id)?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    /// The leases whose deadline has passed.
    fn due(&self) -> Vec<u64> {
        let now = Instant::now();
        let d = self.deadlines.lock();
        d.order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Deadlines for the leases a store holds at open (`(id, ttl)`), from
    /// the file when it can prove them; `Err` names why it cannot (every
    /// lease then ends at once).
    pub(super) fn restore(&self, leases: &[(u64, Duration)]) -> std::result::Result<(), String> {
        let now = Instant::now();
        let restored = self.read_file();
        let mut d = self.deadlines.lock();
        match restored {
            Ok((filed_at, filed)) => {
                let boot = self.boot.as_ref().ok_or("no boot clock")?;
                let now_ms = boot.ms_at(now) + BOOT_CLOCK_RESOLUTION_MS;
                for (id, ttl) in leases {
                    let deadline_ms = filed
                        .get(id)
                        .copied()
                        .unwrap_or(filed_at + ttl.as_millis() as u64);
                    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
                    d.set(*id, now + left);
                }
                d.dirty = false;
                Ok(())
            }
            Err(why) => {
                for (id, _) in leases {
                    d.set(*id, now);
                }
                Err(why)
            }
        }
    }

    /// The filed deadlines on the boot clock, and when they were filed.
    fn read_file(&self) -> std::result::Result<(u64, HashMap<u64, u64>), String> {
        let path = self.file.as_ref().ok_or("the store has no directory")?;
        let boot = self.boot.as_ref().ok_or("the system has no boot clock")?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        decode(&bytes, &boot.boot_id).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Files the deadlines if they changed since last filed.
    pub(super) fn file(&self) -> std::io::Result<()> {
        let (Some(path), Some(boot)) = (&self.file, &self.boot) else {
            return Ok(());
        };
        let bytes = {
            let mut d = self.deadlines.lock();
            if !d.dirty {
                return Ok(());
            }
            d.dirty = false;
            let now = boot.ms_at(Instant::now());
            let entries: Vec<(u64, u64)> = d
                .by_id
                .iter()
                .map(|(id, at)| (*id, boot.ms_at(*at)))
                .collect();
            encode(&boot.boot_id, now, &entries)
        };
        let r = write_atomically(path, &bytes);
        if r.is_err() {
            self.deadlines.lock().dirty = true;
        }
        r
    }

    /// Starts the expiry thread of `store` unless it runs.
    pub(super) fn start(self: &Arc<Self>, store: &Store) -> Result<()> {
        let mut running = self.running.lock();
        if *running {
            return Ok(());
        }
        let clock = self.clone();
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("fleetkv-leases".into())
            .spawn(move || expire_loop(&clock, &weak))
            .map_err(|e| Error::Storage(format!("cannot start the lease thread: {e}")))?;
        *running = true;
        Ok(())
    }
}

/// Ends leases as they fall due and files deadlines, until the store is
/// dropped.
fn expire_loop(clock: &LeaseClock, store: &Weak<Inner>) {
    let mut filed = Instant::now();
    loop {
        {
            let Some(inner) = store.upgrade() else {
                return;
            };
            let store = Store::background(inner);
            for id in clock.due() {
                if let Err(e) = store.end_lease(id, true) {
                    if !matches!(e, Error::NotFound { .. }) {
                        eprintln!("fleetkv: lease {id} could not be ended: {e}");
                        // Tried again on the next round.
                        clock.set(id, Instant::now() + FILE_EVERY);
                    }
                }
            }
            if filed.elapsed() >= FILE_EVERY {
                if let Err(e) = clock.file() {
                    eprintln!("fleetkv: could not file lease deadlines: {e}");
                }
                filed = Instant::now();
            }
        }
        let mut d = clock.deadlines.lock();
        let next = d.order.first().map(|(at, _)| *at);
        let until = next.map_or(filed + FILE_EVERY, |at| at.min(filed + FILE_EVERY));
        clock.wake.wait_until(&mut d, until);
    }
}

fn encode(boot_id: &str, now_ms: u64, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + boot_id.len() + entries.len() * 16);
    out.extend_from_slice(MAGIC);
    out.push(boot_id.len().min(255) as u8);
    out.extend_from_slice(&boot_id.as_bytes()[..boot_id.len().min(255)]);
    out.extend_from_slice(&now_ms.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    for (id, at) in entries {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&at.to_be_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8], boot_id: &str) -> std::result::Result<(u64, HashMap<u64, u64>), String> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or("truncated (no checksum)")?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader(body);
    if r.take(8)? != MAGIC {
        return Err("not a lease file of this version".into());
    }
    let n = r.take(1)?[0] as usize;
    if r.take(n)? != boot_id.as_bytes() {
        return Err("written before the host's last reboot".into());
    }
    let filed_at = r.u64()?;
    let count = r.u64()?;
    if count > (body.len() / 16) as u64 {
        return Err("entry count beyond the file".into());
    }
    let mut out = HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let id = r.u64()?;
        out.insert(id, r.u64()?);
    }
    Ok((filed_at, out))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// Writes `bytes` to a temporary file, syncs it, renames it over `path`
/// and syncs the directory: a crash leaves the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("leases.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// How often a server of a store shared through etcd lists etcd's live
/// leases to find the fleetkv leases whose etcd lease has ended.
#[cfg(feature = "etcd")]
const ETCD_EXPIRY_POLL: Duration = Duration::from_millis(500);

/// Ends the leases of a store shared through etcd once etcd has ended
/// their etcd lease (expired, or revoked by a server that then failed to
/// write the end). Every server runs this poll; the first end write wins,
/// and the others find the lease gone once they have caught up. One
/// request per poll (etcd's lease list), and none while the store holds no
/// leases.
#[cfg(feature = "etcd")]
pub(super) fn follow_etcd_leases(
    store: &Store,
    etcd: Arc<super::etcd_backend::EtcdBackend>,
) -> Result<()> {
    let weak = Arc::downgrade(&store.inner);
    std::thread::Builder::new()
        .name("fleetkv-etcd-leases".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                std::thread::sleep(ETCD_EXPIRY_POLL);
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let store = Store::background(inner);
                let held = store.state_for_write().leases.etcd_leases();
                if held.is_empty() {
                    continue;
                }
                let live = match etcd.live_leases() {
                    Ok(live) => live,
                    // etcd is away: nothing can be decided (the requests
                    // that need it fail meanwhile).
                    Err(_) => continue,
                };
                for (id, lease) in held {
                    if live.contains(&lease) {
                        continue;
                    }
                    match store.end_lease(id, true) {
                        Ok(_) | Err(Error::NotFound { .. }) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            eprintln!("fleetkv: lease {id} could not be ended (retrying): {e}");
                        }
                        Err(_) => {}
                    }
                }
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the etcd lease thread: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trips_and_refuses_damage() {
        let bytes = encode("boot-a", 1_000, &[(7, 5_000), (9, 6_000)]);
        let (at, got) = decode(&bytes, "boot-a").unwrap();
        assert_eq!(at, 1_000);
        assert_eq!(got[&7], 5_000);
        assert_eq!(got[&9], 6_000);
        assert!(decode(&bytes, "boot-b").unwrap_err().contains("reboot"));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], "boot-a").is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(decode(&flipped, "boot-a").is_err(), "flip at {i}");
        }
    }

    #[test]
    fn uptime_reads() {
        if Path::new("/proc/uptime").exists() {
            let a = uptime_ms().unwrap();
            std::thread::sleep(Duration::from_millis(30));
            assert!(uptime_ms().unwrap() >= a + 20);
        }
    }

    #[test]
    fn restore_never_extends() {
        let dir = tempfile::tempdir().unwrap();
        let clock = LeaseClock::new(Some(dir.path()));
        if clock.boot.is_none() {
            return;
        }
        clock.set(1, Instant::now() + Duration::from_secs(5));
        clock.file().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let again = LeaseClock::new(Some(dir.path()));
        // Lease 2 was granted after the filing with a 60 s TTL.
        again
            .restore(&[(1, Duration::from_secs(5)), (2, Duration::from_secs(60))])
            .unwrap();
        let left = again.remaining(1).unwrap();
        assert!(left <= Duration::from_millis(4_800), "{left:?}");
        assert!(left >= Duration::from_millis(4_000), "{left:?}");
        assert!(again.remaining(2).unwrap() <= Duration::from_millis(59_800));
        // No file: nothing can be proven, every lease ends at once.
        let other = tempfile::tempdir().unwrap();
        let none = LeaseClock::new(Some(other.path()));
        assert!(none.restore(&[(1, Duration::from_secs(5))]).is_err());
        assert!(!none.live(1));
    }

    /// The users' last handle closes the store on its own thread, even while
    /// a background thread holds the store: a process may exit right after.
    #[test]
    fn the_last_user_handle_files_deadlines_while_a_thread_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let copy = store.clone();
        store.leases().grant(60).unwrap();
        let held_by_thread = Store::background(store.inner.clone());
        drop(store);
        drop(copy);
        assert!(dir.path().join(LEASES_FILE).exists());
        drop(held_by_thread);
    }
}
