//! The operator's integrity check (`fleetkv check`, as SQLite's
//! `PRAGMA integrity_check` or `etcdutl check`): records, the change log,
//! the index checkpoint and the indexes, each against what the documents
//! say.
//!
//! Owns: what is checked and how a finding is worded, and the repair of what
//! can be rebuilt from the documents (the indexes and their checkpoint).
//! Must not: change a record (a record that does not decode is reported,
//! never guessed at).

use std::path::Path;

use super::checkpoint::{self, Recovery};
use super::open::{Options, Store};
use crate::error::{Error, Result};

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// What was checked and found sound, one line each.
    pub passed: Vec<String>,
    /// What was found damaged, one line each, naming where.
    pub damage: Vec<String>,
}

impl CheckReport {
    /// No damage found.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

impl Store {
    /// Opens the store in `path` and checks it: every record decodes (the
    /// open reads them), the index checkpoint was usable, the indexes equal
    /// a rebuild from the documents, and the change log runs without gaps
    /// from its oldest kept event to the store's revision. With `repair`,
    /// a checkpoint that was refused or that disagrees with the documents is
    /// replaced by one written from a rebuild. A store that cannot be opened
    /// at all (a record that does not decode) is damage, not an error.
    pub fn check(path: impl AsRef<Path>, options: Options, repair: bool) -> Result<CheckReport> {
        let path = path.as_ref();
        if !path.join("db").exists() {
            return Err(Error::invalid(
                "store",
                format!("{}: no store there", path.display()),
            ));
        }
        let mut report = CheckReport::default();
        // A check changes nothing: no checkpoint on close (a store whose
        // checkpoint was refused would otherwise write a new one).
        let checking = Options {
            checkpoint_after: None,
            ..options.clone()
        };
        let store = match Store::open_with(path, checking) {
            Ok(s) => s,
            Err(e @ Error::Corrupt { .. }) => {
                report.damage.push(format!("records: {e}"));
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        let mut stale_checkpoint = false;
        match store.recovery() {
            Recovery::Checkpoint {
                revision, events, ..
            } => report.passed.push(format!(
                "checkpoint: read at revision {revision}, {events} events replayed"
            )),
            Recovery::Rebuilt { refused: None } => report
                .passed
                .push("checkpoint: none (the indexes were rebuilt)".to_string()),
            Recovery::Rebuilt { refused: Some(why) } => {
                stale_checkpoint = true;
                report.damage.push(format!("checkpoint: {why}"));
            }
        }
        // The rebuild reads every record (an open from a checkpoint reads
        // none), so it is also the records' check.
        match store.verify_indexes() {
            Ok(()) => {
                report
                    .passed
                    .push("records: every record decodes".to_string());
                report
                    .passed
                    .push("indexes: equal to a rebuild from the documents".to_string());
            }
            Err(e @ Error::Corrupt { .. }) if matches!(&e, Error::Corrupt { key, .. } if key.starts_with("index:")) =>
            {
                // Indexes read from a checkpoint: the checkpoint is wrong.
                stale_checkpoint |= matches!(store.recovery(), Recovery::Checkpoint { .. });
                report
                    .passed
                    .push("records: every record decodes".to_string());
                report.damage.push(format!("indexes: {e}"));
            }
            Err(e @ Error::Corrupt { .. }) => {
                // Nothing can be rebuilt from a record that does not decode.
                stale_checkpoint = false;
                report.damage.push(format!("records: {e}"));
            }
            Err(e) => return Err(e),
        }
        match store.check_log() {
            Ok(line) => report.passed.push(line),
            Err(line) => report.damage.push(line),
        }
        if repair && stale_checkpoint {
            drop(store);
            let file = path.join(checkpoint::FILE);
            if let Err(e) = std::fs::remove_file(&file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::Storage(format!("{}: {e}", file.display())));
                }
            }
            let rebuilt = Store::open_with(path, options)?;
            rebuilt.verify_indexes()?;
            rebuilt.checkpoint()?;
            report.passed.push(format!(
                "repaired: the indexes were rebuilt from the documents and a new checkpoint written at revision {}",
                rebuilt.revision()
            ));
        }
        Ok(report)
    }

    /// The change log from its oldest kept event: no gap between events,
    /// and its last event at the store's revision.
    fn check_log(&self) -> std::result::Result<String, String> {
        let mut watch = match self.watch(None, None, Some(1)) {
            Err(Error::Compacted { oldest, .. }) => self.watch(None, None, Some(oldest)),
            other => other,
        }
        .map_err(|e| format!("change log: {e}"))?;
        let (mut first, mut at): (Option<u64>, Option<(u64, u32)>) = (None, None);
        let mut events = 0u64;
        while let Some(e) = watch.poll().map_err(|e| format!("change log: {e}"))? {
            match at {
                None => first = Some(e.revision),
                Some((r, q)) if e.revision == r && e.seq == q + 1 => {}
                Some((r, _)) if e.revision == r + 1 && e.seq == 0 => {}
                Some((r, q)) => {
                    return Err(format!(
                        "change log: a gap between event {r}.{q} and {}.{}",
                        e.revision, e.seq
                    ))
                }
            }
            at = Some((e.revision, e.seq));
            events += 1;
        }
        let rev = self.revision();
        match (first, at) {
            (Some(first), Some((last, _))) if last == rev => Ok(format!(
                "change log: {events} events, revisions {first}..={last} without a gap"
            )),
            (_, Some((last, _))) => Err(format!(
                "change log: ends at revision {last}, the store is at {rev}"
            )),
            (_, None) if rev == 0 => Ok("change log: empty (a new store)".to_string()),
            (_, None) => Err(format!(
                "change log: no events, the store is at revision {rev}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Machine;

    fn options() -> Options {
        Options {
            durable: false,
            ..Options::default()
        }
    }

    #[test]
    fn a_sound_store_passes_and_a_damaged_checkpoint_is_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open_with(&path, options()).unwrap();
            for i in 0..20 {
                s.machines().create(Machine::new(format!("m{i}"))).unwrap();
            }
            s.checkpoint().unwrap();
        }
        let report = Store::check(&path, options(), false).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.passed.len(), 4, "{report:?}");
        assert!(
            report.passed[0].starts_with("checkpoint: read"),
            "{report:?}"
        );

        // Flip a byte in the checkpoint's body: refused, reported, repaired.
        let file = path.join(checkpoint::FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&file, &bytes).unwrap();
        let report = Store::check(&path, options(), false).unwrap();
        assert!(
            report.damage.iter().any(|d| d.starts_with("checkpoint:")),
            "{report:?}"
        );
        let report = Store::check(&path, options(), true).unwrap();
        assert!(
            report.passed.iter().any(|p| p.starts_with("repaired:")),
            "{report:?}"
        );
        let report = Store::check(&path, options(), false).unwrap();
        assert!(report.is_clean(), "after repair: {report:?}");
        assert!(
            report.passed[0].starts_with("checkpoint: read"),
            "{report:?}"
        );
    }
}
