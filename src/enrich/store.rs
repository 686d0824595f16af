//! The last status reported for each flight leg, kept in the state directory
//! so that `changes` is right after a restart.
//!
//! The file is `<state.dir>/flight-status.json`, rewritten atomically after
//! every change. It is bounded: entries older than `enrich.keep_days` before
//! today are pruned, and beyond `enrich.max_flights` entries the least
//! recently updated go first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::event::FlightStatus;

pub const STATE_FILE: &str = "flight-status.json";

/// One entry: the status last reported for a leg, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    date: NaiveDate,
    reported_at: DateTime<Utc>,
    status: FlightStatus,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileContent {
    /// Keyed by `FLIGHT/DATE/DEPARTURE-AIRPORT`, such as `LH400/2026-07-22/FRA`.
    legs: BTreeMap<String, Entry>,
}

/// The last reported statuses, in memory and on disk.
#[derive(Debug)]
pub struct StatusStore {
    path: PathBuf,
    max_entries: usize,
    keep_days: u32,
    content: Mutex<Content>,
    /// Serializes writes, so that an older snapshot never replaces a newer one.
    written_version: Mutex<u64>,
}

#[derive(Debug, Default)]
struct Content {
    file: FileContent,
    version: u64,
}

/// An error reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid {path}: {source}; delete it to start without previous statuses")]
    Invalid { path: PathBuf, source: serde_json::Error },
}

impl StatusStore {
    /// Opens the store in `state_dir`. A missing file gives an empty store,
    /// and an unreadable or invalid one an empty store with the error, so
    /// that enrichment works without previous statuses.
    pub fn open(state_dir: &Path, max_entries: usize, keep_days: u32) -> (Self, Option<StoreError>) {
        let path = state_dir.join(STATE_FILE);
        let (file, error) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<FileContent>(&bytes) {
                Ok(file) => (file, None),
                Err(source) => (FileContent::default(), Some(StoreError::Invalid { path: path.clone(), source })),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (FileContent::default(), None),
            Err(source) => (FileContent::default(), Some(StoreError::Io { op: "read", path: path.clone(), source })),
        };
        let store = Self {
            path,
            max_entries: max_entries.max(1),
            keep_days,
            content: Mutex::new(Content { file, version: 0 }),
            written_version: Mutex::new(0),
        };
        (store, error)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of legs whose status is kept.
    pub fn len(&self) -> usize {
        lock(&self.content).file.legs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `status` as the last reported status of its leg and returns
    /// the previous one, and whether the file needs writing.
    pub fn replace(&self, flight: &str, date: NaiveDate, status: &FlightStatus) -> (Option<FlightStatus>, bool) {
        let key = format!("{flight}/{date}/{}", status.departure.airport);
        let now = Utc::now();
        let mut content = lock(&self.content);
        let entry = Entry { date, reported_at: now, status: status.clone() };
        let previous = content.file.legs.insert(key, entry).map(|entry| entry.status);
        let changed = previous.as_ref() != Some(status);
        let pruned = self.prune(&mut content.file, now.date_naive());
        if changed || pruned {
            content.version += 1;
        }
        (previous, changed || pruned)
    }

    /// Drops entries older than `keep_days` before `today` and the least
    /// recently reported beyond `max_entries`. Returns whether any went.
    fn prune(&self, file: &mut FileContent, today: NaiveDate) -> bool {
        let before = file.legs.len();
        let oldest_kept = today - chrono::Duration::days(i64::from(self.keep_days));
        file.legs.retain(|_, entry| entry.date >= oldest_kept);
        if file.legs.len() > self.max_entries {
            let mut by_age: Vec<(DateTime<Utc>, String)> =
                file.legs.iter().map(|(key, entry)| (entry.reported_at, key.clone())).collect();
            by_age.sort();
            let excess = file.legs.len() - self.max_entries;
            for (_, key) in by_age.into_iter().take(excess) {
                file.legs.remove(&key);
            }
        }
        file.legs.len() != before
    }

    /// Writes the current content to the file, atomically: a temporary file
    /// in the same directory, then a rename. Blocks, so call it from
    /// `spawn_blocking`.
    pub fn save(&self) -> Result<(), StoreError> {
        let mut written = lock(&self.written_version);
        let (body, version) = {
            let content = lock(&self.content);
            // Serializing strings, dates and numbers cannot fail.
            (serde_json::to_vec(&content.file).expect("status file serializes"), content.version)
        };
        if version != 0 && version <= *written {
            return Ok(());
        }

        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let temporary = dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
        std::fs::write(&temporary, &body).map_err(io("write", &temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io("rename to", &self.path))?;
        *written = version;
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(airport: &str, gate: &str) -> FlightStatus {
        let mut status = FlightStatus::default();
        status.departure.airport = airport.into();
        status.departure.gate = Some(gate.into());
        status
    }

    #[test]
    fn store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let today = Utc::now().date_naive();
        let (store, error) = StatusStore::open(dir.path(), 10, 2);
        assert!(error.is_none());
        assert_eq!(store.replace("LH400", today, &status("FRA", "B20")), (None, true));
        store.save().unwrap();

        let (reopened, error) = StatusStore::open(dir.path(), 10, 2);
        assert!(error.is_none(), "{error:?}");
        let (previous, changed) = reopened.replace("LH400", today, &status("FRA", "B44"));
        assert_eq!(previous, Some(status("FRA", "B20")));
        assert!(changed);
        let (_, changed) = reopened.replace("LH400", today, &status("FRA", "B44"));
        assert!(!changed, "an unchanged status needs no write");
    }

    #[test]
    fn store_prunes_old_dates_and_excess() {
        let dir = tempfile::tempdir().unwrap();
        let today = Utc::now().date_naive();
        let (store, _) = StatusStore::open(dir.path(), 2, 1);
        store.replace("LH1", today - chrono::Duration::days(1), &status("FRA", "A1"));
        store.replace("LH2", today - chrono::Duration::days(5), &status("FRA", "A1"));
        assert_eq!(store.len(), 1, "the entry five days old is pruned");
        store.replace("LH3", today, &status("FRA", "A1"));
        store.replace("LH4", today, &status("FRA", "A1"));
        assert_eq!(store.len(), 2);
        let (previous, _) = store.replace("LH1", today - chrono::Duration::days(1), &status("FRA", "A1"));
        assert_eq!(previous, None, "the least recently reported entry went first");
    }

    #[test]
    fn store_reports_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let (store, error) = StatusStore::open(dir.path(), 10, 2);
        assert!(store.is_empty());
        let message = error.unwrap().to_string();
        assert!(message.contains("delete it"), "{message}");
    }
}
