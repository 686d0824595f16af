//! The durable outbox: every accepted event is stored in SQLite before its
//! message is acknowledged, and each sink reads it from its own cursor.
//!
//! One table contains the events in receive order (`seq`), one the cursor of
//! every sink, and one the ids seen recently, so that a message the broker
//! redelivers after a lost ack reaches no sink twice. The database runs in
//! WAL mode: with `durability = "process"` a commit reaches the operating
//! system before the ack (it survives `kill -9`), and with
//! `durability = "power_loss"` it is also synced to disk. Checkpoints,
//! which copy the log into the database file, run on a connection of their
//! own when [`Outbox::checkpoint`] is called, so that a commit and the ack
//! after it rarely wait for one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use crate::event::Event;

/// Name of the database file inside the state directory.
pub const OUTBOX_FILE: &str = "outbox.sqlite";

/// How much a commit must survive before the broker gets its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the operating system: survives a crash or `kill -9` of
    /// flupd, not a power loss.
    Process,
    /// Synced to disk: survives a power loss too, at the cost of one
    /// `fsync` per batch.
    PowerLoss,
}

/// Policy when the outbox reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Stop acknowledging, so that the broker holds further messages.
    StopAcking,
    /// Delete the oldest events, even those some sink has not received.
    DropOldest,
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub durability: Durability,
    /// How long delivered events stay for `flupd events` and `flupd replay`;
    /// zero deletes each event once every sink has passed it.
    pub retain: Duration,
    /// Upper bound of the stored event bytes.
    pub max_bytes: u64,
    pub full_policy: FullPolicy,
    /// Messages larger than this go to the dead-letter file instead.
    pub max_event_bytes: usize,
    /// How long an event id is remembered to recognise a redelivery.
    pub dedup_window: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Process,
            retain: Duration::ZERO,
            max_bytes: 1024 * 1024 * 1024,
            full_policy: FullPolicy::StopAcking,
            max_event_bytes: 256 * 1024,
            dedup_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(
        "outbox {path}: full ({bytes} of {max_bytes} bytes); the slowest sink must catch up or outbox.max_bytes be raised"
    )]
    Full { path: PathBuf, bytes: u64, max_bytes: u64 },
    #[error("outbox {path}: create directory: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("outbox {path}: stored event {seq} is not valid JSON: {source}")]
    Corrupt { path: PathBuf, seq: u64, source: serde_json::Error },
    #[error("outbox task failed: {0}")]
    Task(String),
}

/// The outcome of storing one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored under this sequence number.
    New(u64),
    /// Its id was stored before: a redelivery no sink needs again.
    Duplicate,
}

/// A stored event as a sink reads it. Its JSON is parsed only for sinks
/// that need the event's fields; the file sink writes it as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub topic: String,
    /// When flupd received the event, in Unix milliseconds.
    pub received_ms: i64,
    /// The sink read the event before a restart, so it may have it already.
    pub read_before_restart: bool,
    body: Vec<u8>,
}

impl Entry {
    /// Parses the stored event, setting `redelivered` when the sink may
    /// have it already.
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        let mut event: Event = serde_json::from_slice(&self.body)?;
        event.redelivered |= self.read_before_restart;
        Ok(event)
    }

    /// Returns the event as one JSON line ending in a newline. That is the
    /// stored JSON, unless the `redelivered` mark has to be added.
    pub fn json_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = if self.read_before_restart {
            serde_json::to_vec(&self.event()?)?
        } else {
            let mut line = Vec::with_capacity(self.body.len() + 1);
            line.extend_from_slice(&self.body);
            line
        };
        line.push(b'\n');
        Ok(line)
    }
}

/// The outbox, shared by the dispatcher (the only writer of events) and
/// every sink's [`Reader`].
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: OutboxConfig,
    writer: Mutex<Connection>,
    /// Opened by the first checkpoint.
    checkpointer: Mutex<Option<Connection>>,
    bytes: AtomicU64,
    head: watch::Sender<u64>,
    dropped_oldest: AtomicU64,
    /// When the last "oldest events deleted" ERROR was logged, and the
    /// events deleted since, so that a full outbox logs at most every 10 s.
    drop_log: Mutex<(Option<std::time::Instant>, u64)>,
}

fn open_connection(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Process => "OFF",
        Durability::PowerLoss => "FULL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    // Periodic checkpoints do most of the copying. Under steady writes the
    // log starts over only after a checkpoint inside a commit, so this
    // bounds the log to about 64 MiB. That checkpoint has little left to copy.
    connection.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
    connection.pragma_update(None, "journal_size_limit", WAL_PAGES * 4096)?;
    Ok(connection)
}

/// Pages of 4 KiB the write-ahead log may hold before a commit checkpoints.
const WAL_PAGES: i64 = 16 * 1024;

impl Outbox {
    /// Opens or creates the outbox in `dir`.
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        use std::os::unix::fs::DirBuilderExt;

        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| OutboxError::Directory { path: dir.to_owned(), source })?;
        }
        let path = dir.join(OUTBOX_FILE);
        let sqlite = |source| OutboxError::Sqlite { path: path.clone(), source };
        let connection = open_connection(&path, config.durability).map_err(sqlite)?;
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL,
                    received_ms INTEGER NOT NULL,
                    topic TEXT NOT NULL,
                    flight TEXT,
                    flight_date TEXT,
                    kind TEXT NOT NULL,
                    body BLOB NOT NULL
                );
                CREATE INDEX IF NOT EXISTS events_received ON events(received_ms);
                CREATE TABLE IF NOT EXISTS cursors (
                    sink TEXT PRIMARY KEY,
                    delivered INTEGER NOT NULL,
                    read INTEGER NOT NULL
                );
                CREATE TABLE IF NOT EXISTS seen (
                    id TEXT PRIMARY KEY,
                    received_ms INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS seen_received ON seen(received_ms);",
            )
            .map_err(sqlite)?;
        let bytes: i64 = connection
            .query_row("SELECT COALESCE(SUM(length(body)), 0) FROM events", [], |row| row.get(0))
            .map_err(sqlite)?;
        let head = max_seq(&connection).map_err(sqlite)?;

        Ok(Outbox {
            inner: Arc::new(Inner {
                path,
                config,
                writer: Mutex::new(connection),
                checkpointer: Mutex::new(None),
                bytes: AtomicU64::new(bytes as u64),
                head: watch::Sender::new(head),
                dropped_oldest: AtomicU64::new(0),
                drop_log: Mutex::new((None, 0)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// The sequence number of the newest event, updated after each commit.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// Stored event bytes.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Events deleted unread under `full_policy = "drop_oldest"`.
    pub fn dropped_oldest(&self) -> u64 {
        self.inner.dropped_oldest.load(Ordering::Relaxed)
    }

    /// Stores a batch of events in one transaction, in order. Returns once
    /// the commit has reached the durability the configuration requests.
    pub async fn append(&self, batch: Arc<Vec<Event>>) -> Result<Vec<Stored>, OutboxError> {
        let inner = self.inner.clone();
        let stored = tokio::task::spawn_blocking(move || inner.append(&batch))
            .await
            .map_err(|error| OutboxError::Task(error.to_string()))??;
        Ok(stored)
    }

    /// Creates a reader for `sink`. A sink seen for the first time starts
    /// at the newest event, so it gets no history.
    pub fn reader(&self, sink: &str) -> Result<Reader, OutboxError> {
        let sqlite = |source| OutboxError::Sqlite { path: self.inner.path.clone(), source };
        let connection = open_connection(&self.inner.path, self.inner.config.durability).map_err(sqlite)?;
        let cursor: Option<(u64, u64)> = connection
            .query_row("SELECT delivered, read FROM cursors WHERE sink = ?1", [sink], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(sqlite)?;
        let (delivered, read) = match cursor {
            Some(cursor) => cursor,
            None => {
                let head = *self.inner.head.borrow();
                connection
                    .execute("INSERT INTO cursors (sink, delivered, read) VALUES (?1, ?2, ?2)", params![sink, head])
                    .map_err(sqlite)?;
                (head, head)
            }
        };
        Ok(Reader {
            path: self.inner.path.clone(),
            connection: Arc::new(Mutex::new(connection)),
            sink: sink.to_owned(),
            delivered,
            read_before_start: read,
        })
    }

    /// Removes the cursors of sinks no longer configured, so that they do
    /// not hold events back. Returns their names.
    pub fn forget_other_sinks(&self, keep: &[String]) -> Result<Vec<String>, OutboxError> {
        let connection = self.inner.lock();
        let sqlite = |source| OutboxError::Sqlite { path: self.inner.path.clone(), source };
        let mut statement = connection.prepare("SELECT sink FROM cursors").map_err(sqlite)?;
        let names: Vec<String> =
            statement.query_map([], |row| row.get(0)).map_err(sqlite)?.collect::<Result<_, _>>().map_err(sqlite)?;
        let mut removed = Vec::new();
        for name in names {
            if !keep.contains(&name) {
                connection.execute("DELETE FROM cursors WHERE sink = ?1", [&name]).map_err(sqlite)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Deletes events every sink has passed and that are older than
    /// `retain`, and ids older than the dedup window. Returns the number of
    /// events deleted.
    pub async fn prune(&self) -> Result<u64, OutboxError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.prune())
            .await
            .map_err(|error| OutboxError::Task(error.to_string()))?
    }

    /// Copies the committed part of the write-ahead log into the database
    /// file, without waiting for readers or the writer. The daemon calls it
    /// every second, so that the checkpoint a long log forces on a commit
    /// finds little left to copy.
    pub async fn checkpoint(&self) -> Result<(), OutboxError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.checkpoint())
            .await
            .map_err(|error| OutboxError::Task(error.to_string()))?
    }

    /// Counts the stored events, delivered or not.
    pub fn count(&self) -> Result<u64, OutboxError> {
        let connection = self.inner.lock();
        connection
            .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
            .map_err(|source| OutboxError::Sqlite { path: self.inner.path.clone(), source })
    }

    /// Reads stored events matching `query`, oldest first.
    pub fn query(&self, query: &Query) -> Result<Vec<Event>, OutboxError> {
        let connection = self.inner.lock();
        let sqlite = |source| OutboxError::Sqlite { path: self.inner.path.clone(), source };
        let mut statement = connection
            .prepare(
                "SELECT seq, body FROM events
                 WHERE received_ms >= ?1 AND received_ms < ?2
                   AND (?3 IS NULL OR flight = ?3)
                   AND (?4 IS NULL OR kind = ?4)
                 ORDER BY seq",
            )
            .map_err(sqlite)?;
        let since = query.since.map_or(i64::MIN, |at| at.timestamp_millis());
        let until = query.until.map_or(i64::MAX, |at| at.timestamp_millis());
        let rows = statement
            .query_map(params![since, until, query.flight, query.kind], |row| {
                Ok((row.get::<_, u64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(sqlite)?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, body) = row.map_err(sqlite)?;
            let event = serde_json::from_slice(&body).map_err(|source| OutboxError::Corrupt {
                path: self.inner.path.clone(),
                seq,
                source,
            })?;
            events.push(event);
        }
        Ok(events)
    }
}

/// Filters for [`Outbox::query`].
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub flight: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

fn max_seq(connection: &Connection) -> rusqlite::Result<u64> {
    // The sqlite_sequence row outlives deleted events, so numbering never
    // restarts below a sink's cursor.
    let from_sequence: Option<u64> = connection
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'events'", [], |row| row.get(0))
        .optional()?;
    Ok(from_sequence.unwrap_or(0))
}

impl Inner {
    fn checkpoint(&self) -> Result<(), OutboxError> {
        let sqlite = |source| OutboxError::Sqlite { path: self.path.clone(), source };
        let mut slot = self.checkpointer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let connection = match &mut *slot {
            Some(connection) => connection,
            empty => empty.insert(open_connection(&self.path, self.config.durability).map_err(sqlite)?),
        };
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(sqlite)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent, because
        // an unfinished transaction is rolled back; keep using it.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sqlite(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Sqlite { path: self.path.clone(), source }
    }

    fn append(&self, batch: &[Event]) -> Result<Vec<Stored>, OutboxError> {
        let mut connection = self.lock();
        let mut bodies = Vec::with_capacity(batch.len());
        let mut batch_bytes = 0u64;
        for event in batch {
            // Serializing an event of strings, numbers and JSON values cannot fail.
            let body = serde_json::to_vec(event).expect("event serializes");
            batch_bytes += body.len() as u64;
            bodies.push(body);
        }

        let bytes = self.bytes.load(Ordering::Relaxed);
        if bytes + batch_bytes > self.config.max_bytes {
            match self.config.full_policy {
                FullPolicy::StopAcking => {
                    return Err(OutboxError::Full { path: self.path.clone(), bytes, max_bytes: self.config.max_bytes });
                }
                FullPolicy::DropOldest => {
                    self.drop_oldest(&mut connection, bytes + batch_bytes - self.config.max_bytes)?
                }
            }
        }

        let transaction = connection.transaction().map_err(|error| self.sqlite(error))?;
        let mut results = Vec::with_capacity(batch.len());
        let mut stored_bytes = 0u64;
        {
            let mut remember = transaction
                .prepare_cached("INSERT OR IGNORE INTO seen (id, received_ms) VALUES (?1, ?2)")
                .map_err(|error| self.sqlite(error))?;
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO events (id, received_ms, topic, flight, flight_date, kind, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|error| self.sqlite(error))?;
            for (event, body) in batch.iter().zip(bodies) {
                let received_ms = event.received_at.timestamp_millis();
                let new = remember.execute(params![event.id, received_ms]).map_err(|error| self.sqlite(error))?;
                if new == 0 {
                    results.push(Stored::Duplicate);
                    continue;
                }
                stored_bytes += body.len() as u64;
                insert
                    .execute(params![
                        event.id,
                        received_ms,
                        event.topic,
                        event.flight,
                        event.flight_date.map(|date| date.to_string()),
                        event.kind.as_str(),
                        body
                    ])
                    .map_err(|error| self.sqlite(error))?;
                results.push(Stored::New(transaction.last_insert_rowid() as u64));
            }
        }
        transaction.commit().map_err(|error| self.sqlite(error))?;

        self.bytes.fetch_add(stored_bytes, Ordering::Relaxed);
        if let Some(Stored::New(last)) = results.iter().rev().find(|stored| matches!(stored, Stored::New(_))) {
            self.head.send_replace(*last);
        }
        Ok(results)
    }

    /// Deletes the oldest events until `needed` bytes are free.
    fn drop_oldest(&self, connection: &mut Connection, needed: u64) -> Result<(), OutboxError> {
        let mut freed = 0u64;
        let mut dropped = 0u64;
        let mut last_seq = 0u64;
        {
            let mut statement = connection
                .prepare("SELECT seq, length(body) FROM events ORDER BY seq")
                .map_err(|error| self.sqlite(error))?;
            let mut rows = statement.query([]).map_err(|error| self.sqlite(error))?;
            while freed < needed {
                let Some(row) = rows.next().map_err(|error| self.sqlite(error))? else { break };
                last_seq = row.get(0).map_err(|error| self.sqlite(error))?;
                freed += row.get::<_, u64>(1).map_err(|error| self.sqlite(error))?;
                dropped += 1;
            }
        }
        if dropped == 0 {
            return Ok(());
        }
        connection.execute("DELETE FROM events WHERE seq <= ?1", [last_seq]).map_err(|error| self.sqlite(error))?;
        self.bytes.fetch_sub(freed.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        let total = self.dropped_oldest.fetch_add(dropped, Ordering::Relaxed) + dropped;
        let mut log = self.drop_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        log.1 += dropped;
        if log.0.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::error!(dropped = log.1, dropped_total = total, up_to_seq = last_seq, path = %self.path.display(), "outbox full, oldest events deleted before every sink received them");
            *log = (Some(std::time::Instant::now()), 0);
        }
        Ok(())
    }

    fn prune(&self) -> Result<u64, OutboxError> {
        let connection = self.lock();
        let now_ms = Utc::now().timestamp_millis();
        let retain_ms = i64::try_from(self.config.retain.as_millis()).unwrap_or(i64::MAX);
        let dedup_ms = i64::try_from(self.config.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let min_delivered: Option<u64> = connection
            .query_row("SELECT MIN(delivered) FROM cursors", [], |row| row.get(0))
            .map_err(|error| self.sqlite(error))?;
        let limit = min_delivered.unwrap_or_else(|| *self.head.borrow());

        let deleted = connection
            .execute(
                "DELETE FROM events WHERE seq <= ?1 AND received_ms < ?2",
                params![limit, now_ms.saturating_sub(retain_ms)],
            )
            .map_err(|error| self.sqlite(error))?;
        connection
            .execute("DELETE FROM seen WHERE received_ms < ?1", [now_ms.saturating_sub(dedup_ms)])
            .map_err(|error| self.sqlite(error))?;
        if deleted > 0 {
            let bytes: i64 = connection
                .query_row("SELECT COALESCE(SUM(length(body)), 0) FROM events", [], |row| row.get(0))
                .map_err(|error| self.sqlite(error))?;
            self.bytes.store(bytes as u64, Ordering::Relaxed);
        }
        Ok(deleted as u64)
    }
}

/// One sink's view of the outbox: the events after its cursor.
pub struct Reader {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
    sink: String,
    delivered: u64,
    /// Events up to here may have reached the sink before a restart.
    read_before_start: u64,
}

impl Reader {
    /// The sequence number of the last event the sink has passed.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Reads up to `limit` events after the cursor. Events the sink may
    /// have received before a restart come back with `redelivered` set.
    pub async fn next_batch(&mut self, limit: usize) -> Result<Vec<Entry>, OutboxError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        let sink = self.sink.clone();
        let after = self.delivered;
        let read_before_start = self.read_before_start;
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let sqlite = |source| OutboxError::Sqlite { path: path.clone(), source };
            let mut statement = connection
                .prepare_cached("SELECT seq, topic, received_ms, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(sqlite)?;
            let rows = statement
                .query_map(params![after, limit as i64], |row| {
                    let seq: u64 = row.get(0)?;
                    Ok(Entry {
                        seq,
                        topic: row.get(1)?,
                        received_ms: row.get(2)?,
                        read_before_restart: seq <= read_before_start,
                        body: row.get(3)?,
                    })
                })
                .map_err(sqlite)?;
            let entries = rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)?;
            if let Some(last) = entries.last() {
                if last.seq > read_before_start {
                    connection
                        .execute("UPDATE cursors SET read = ?2 WHERE sink = ?1", params![sink, last.seq])
                        .map_err(sqlite)?;
                }
            }
            Ok(entries)
        })
        .await
        .map_err(|error| OutboxError::Task(error.to_string()))?
    }

    /// Moves the cursor past `seq`: the sink has taken every event up to it.
    pub async fn commit(&mut self, seq: u64) -> Result<(), OutboxError> {
        if seq <= self.delivered {
            return Ok(());
        }
        let connection = self.connection.clone();
        let path = self.path.clone();
        let sink = self.sink.clone();
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            connection
                .execute("UPDATE cursors SET delivered = ?2 WHERE sink = ?1", params![sink, seq])
                .map_err(|source| OutboxError::Sqlite { path, source })
        })
        .await
        .map_err(|error| OutboxError::Task(error.to_string()))??;
        self.delivered = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        let payload = format!(r#"{{"Update":{{"Message":"Departed","N":{n}}}}}"#);
        Event::from_message("prd/FlightUpdate/LH/LH400/2026-07-22", payload.as_bytes(), 1, Utc::now())
    }

    fn incoming(range: std::ops::Range<u32>) -> Arc<Vec<Event>> {
        Arc::new(range.map(event).collect())
    }

    #[tokio::test]
    async fn checkpoint_moves_the_log_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let size = || std::fs::metadata(outbox.path()).unwrap().len();
        let before = size();

        // Commits only append to the log; the database file waits for a
        // checkpoint.
        outbox.append(incoming(0..500)).await.unwrap();
        assert_eq!(size(), before);

        outbox.checkpoint().await.unwrap();
        assert!(size() > before, "database file still {before} bytes");
    }

    #[tokio::test]
    async fn outbox_stores_in_order_and_readers_resume() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let mut reader = outbox.reader("file").unwrap();
        let stored = outbox.append(incoming(0..5)).await.unwrap();
        assert_eq!(stored, (1..=5).map(Stored::New).collect::<Vec<_>>());
        assert_eq!(*outbox.head().borrow(), 5);

        let batch = reader.next_batch(3).await.unwrap();
        assert_eq!(batch.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(batch.iter().all(|entry| !entry.event().unwrap().redelivered));
        reader.commit(2).await.unwrap();
        drop(reader);
        drop(outbox);

        // After a restart the sink resumes after its cursor, and the event
        // it had read but not committed comes back marked.
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let mut reader = outbox.reader("file").unwrap();
        let batch = reader.next_batch(10).await.unwrap();
        assert_eq!(batch.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(batch[0].event().unwrap().redelivered);
        assert!(String::from_utf8(batch[0].json_line().unwrap()).unwrap().contains(r#""redelivered":true"#));
        assert_eq!(
            batch[1].json_line().unwrap(),
            [serde_json::to_vec(&batch[1].event().unwrap()).unwrap(), b"\n".to_vec()].concat()
        );
        assert!(!batch[1].event().unwrap().redelivered);
    }

    #[tokio::test]
    async fn outbox_recognises_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        outbox.append(incoming(0..2)).await.unwrap();
        let stored = outbox.append(incoming(1..3)).await.unwrap();
        assert_eq!(stored, [Stored::Duplicate, Stored::New(3)]);
    }

    #[tokio::test]
    async fn outbox_new_sink_starts_at_head() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        outbox.append(incoming(0..3)).await.unwrap();
        let mut late = outbox.reader("late").unwrap();
        assert!(late.next_batch(10).await.unwrap().is_empty());
        outbox.append(incoming(3..4)).await.unwrap();
        assert_eq!(late.next_batch(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn outbox_prunes_what_every_sink_passed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let mut fast = outbox.reader("fast").unwrap();
        let mut slow = outbox.reader("slow").unwrap();
        outbox.append(incoming(0..4)).await.unwrap();
        fast.commit(4).await.unwrap();
        slow.commit(1).await.unwrap();
        assert_eq!(outbox.prune().await.unwrap(), 1);
        assert_eq!(slow.next_batch(10).await.unwrap().len(), 3);

        slow.commit(4).await.unwrap();
        assert_eq!(outbox.prune().await.unwrap(), 3);
        assert_eq!(outbox.bytes(), 0);
        assert!(outbox.query(&Query::default()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn outbox_retains_archive() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig { retain: Duration::from_secs(3600), ..OutboxConfig::default() };
        let outbox = Outbox::open(dir.path(), config).unwrap();
        let mut reader = outbox.reader("file").unwrap();
        outbox.append(incoming(0..3)).await.unwrap();
        reader.commit(3).await.unwrap();
        assert_eq!(outbox.prune().await.unwrap(), 0);
        let all = outbox.query(&Query::default()).unwrap();
        assert_eq!(all.len(), 3);
        let none = outbox.query(&Query { flight: Some("LX18".into()), ..Query::default() }).unwrap();
        assert!(none.is_empty());
        let departed = outbox.query(&Query { kind: Some("departed".into()), ..Query::default() }).unwrap();
        assert_eq!(departed.len(), 3);
    }

    #[tokio::test]
    async fn outbox_full_stops_or_drops_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let size = serde_json::to_vec(&event(0)).unwrap().len() as u64;
        let config = OutboxConfig { max_bytes: size * 3, ..OutboxConfig::default() };
        let outbox = Outbox::open(dir.path(), config).unwrap();
        outbox.append(incoming(0..3)).await.unwrap();
        assert!(matches!(outbox.append(incoming(3..4)).await, Err(OutboxError::Full { .. })));

        let other = tempfile::tempdir().unwrap();
        let config =
            OutboxConfig { max_bytes: size * 3, full_policy: FullPolicy::DropOldest, ..OutboxConfig::default() };
        let outbox = Outbox::open(other.path(), config).unwrap();
        let mut reader = outbox.reader("file").unwrap();
        outbox.append(incoming(0..3)).await.unwrap();
        outbox.append(incoming(3..5)).await.unwrap();
        assert_eq!(outbox.dropped_oldest(), 2);
        let seqs: Vec<u64> = reader.next_batch(10).await.unwrap().iter().map(|entry| entry.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[tokio::test]
    async fn outbox_sequence_survives_pruning_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
            let mut reader = outbox.reader("file").unwrap();
            outbox.append(incoming(0..3)).await.unwrap();
            reader.commit(3).await.unwrap();
            outbox.prune().await.unwrap();
        }
        let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        let mut reader = outbox.reader("file").unwrap();
        outbox.append(incoming(10..11)).await.unwrap();
        let batch = reader.next_batch(10).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].seq, 4);
    }
}
