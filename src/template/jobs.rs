//! Job snapshots: templates rendered once, at creation, and stored as a
//! write of their own (a revision and a [`Kind::Job`](crate::Kind::Job)
//! create event), keyed by the job's Uuid. Params read later never change a
//! job.

use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::{Job, RenderContext, Template, TokenMinter};
use crate::error::{Error, Result};
use crate::store::{job_key, Store};

/// Attempts at rendering from a machine and its params with no write between
/// the read and the job's own write; the last attempt is stored regardless.
const SNAPSHOT_TRIES: usize = 16;

impl Store {
    /// Renders `templates` (`(name, text)`; the first is the entry point, all
    /// can be called with `{{ template }}`) against the machine at `machine`
    /// and its effective params now, and stores the result as a new [`Job`]
    /// stamped with the revision of its own write, which follows the read
    /// directly: no other write comes between them.
    pub fn create_job(
        &self,
        machine: &str,
        templates: &[(&str, &str)],
        minter: &dyn TokenMinter,
    ) -> Result<Job> {
        let parsed = templates
            .iter()
            .map(|(name, text)| Template::parse(name, text))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(entry) = parsed.first() else {
            return Err(Error::invalid(
                "job templates",
                "at least one template is required",
            ));
        };
        // Render outside the writer lock (a minter may be slow), then write
        // only if the store is still at the revision rendered from.
        let mut tries = 0;
        loop {
            tries += 1;
            let seen = self.revision();
            let m = self.machines().get(machine)?;
            let params = self.machines().params(machine, true)?;
            let rendered = entry.render(&RenderContext {
                machine: &m,
                params: &params,
                templates: &parsed,
                minter,
            })?;
            let job = Job {
                uuid: Uuid::new_v4(),
                machine: m.uuid,
                revision: 0,
                rendered,
                created_at: rfc3339(SystemTime::now()),
            };
            let (key, name) = (job_key(job.uuid), job.uuid.to_string());
            let at = (tries < SNAPSHOT_TRIES).then_some(seen);
            let mut given = self.replan(job);
            let made = self.write_record(&key, &name, at, |revision| {
                given.take().map(|job| Job { revision, ..job })
            });
            match made {
                Err(Error::RevisionMismatch { .. }) if at.is_some() => continue,
                written => return written,
            }
        }
    }

    /// The job with Uuid `id`.
    pub fn job(&self, id: Uuid) -> Result<Job> {
        let key = job_key(id);
        match self.backend().get(&key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                key: format!("j{id}"),
                reason: e.to_string(),
            }),
            None => Err(Error::invalid(format!("job {id}"), "no such job")),
        }
    }
}

/// `2024-05-06T07:08:09.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        let at = |s| super::rfc3339(UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
