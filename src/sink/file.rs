//! The file sink: events appended as JSON Lines, with size-based rotation.
//!
//! Rotation is implemented here rather than with the file-rotate crate.
//! File-rotate 0.8.0 ignores a failure to reopen the file after rotating,
//! so later writes are dropped without an error. It also panics when it
//! cannot create the directory, and its byte limit splits lines across files.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::DeliveryError;
use crate::config::Problems;
use crate::event::Event;
use crate::outbox::Entry;

/// Settings of a `type = "file"` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Path of the JSON Lines file that events are appended to, one event
    /// object per line. Required. Its directory must exist. A new file is
    /// created with mode 0640, whatever the umask; an existing file keeps
    /// its mode and is appended to.
    #[serde(default)]
    pub path: PathBuf,
    /// Size in bytes that a file may reach before it is rotated. Lines are
    /// never split, so a file is larger only when it contains a single line
    /// longer than this. Default 104857600 (100 MiB).
    #[serde(default = "default_max_size")]
    pub max_size: u64,
    /// Number of rotated files kept: `<path>.1` is the newest and
    /// `<path>.<keep>` the oldest. With 0, rotation deletes the full file.
    /// Default 5.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Write policy for event lines. `"every_event"` writes each line as it
    /// is delivered, for operators who tail the file. `"interval"` buffers
    /// lines in memory and writes them together when `flush_interval` has
    /// passed since the last write, when 64 KiB are buffered, when the
    /// sink's queue runs empty, or when the sink stops. Default
    /// `"every_event"`.
    #[serde(default)]
    pub flush: FlushPolicy,
    /// With `flush = "interval"`: the time between writes while events keep
    /// arriving, as a duration such as `"1s"` or `"500ms"`. Default `"1s"`.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
}

/// When the file sink writes event lines to the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// Each line is written as it is delivered.
    #[default]
    EveryEvent,
    /// Lines are buffered and written together, as [`FileConfig::flush`]
    /// describes.
    Interval,
}

fn default_max_size() -> u64 {
    100 * 1024 * 1024
}

fn default_keep() -> u32 {
    5
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

/// Mode of files the sink creates: owner read-write, group read.
const FILE_MODE: u32 = 0o640;

/// Buffered bytes that force a write with `flush = "interval"`.
const MAX_PENDING_BYTES: usize = 64 * 1024;

impl FileConfig {
    /// Checks the settings without touching the file system.
    pub fn validate(&self, key: &str, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            problems.push(format!("{key}.path"), "missing: set it to the path of the events file");
        } else if self.path.file_name().is_none() {
            problems.push(
                format!("{key}.path"),
                format!("invalid path {:?}: expected a file path, not a directory", self.path.display().to_string()),
            );
        } else if !self.path.is_absolute() {
            problems.push(
                format!("{key}.path"),
                format!(
                    "invalid path {:?}: must be absolute, because flupd may run from any directory",
                    self.path.display().to_string()
                ),
            );
        }

        if self.max_size == 0 {
            problems.push(format!("{key}.max_size"), "invalid value 0: expected a size in bytes above 0");
        }

        if self.flush == FlushPolicy::Interval && self.flush_interval.is_zero() {
            problems.push(
                format!("{key}.flush_interval"),
                "invalid value 0s: expected a duration above zero, such as \"1s\", or flush = \"every_event\"",
            );
        }
    }
}

/// An open events file. Writes run on tokio's blocking thread pool, because
/// file I/O can block for long on a slow or full disk.
pub struct FileSink {
    writer: Arc<Mutex<Writer>>,
}

impl FileSink {
    /// Opens or creates the file for appending.
    pub async fn open(config: &FileConfig) -> Result<Self, DeliveryError> {
        let config = config.clone();
        let writer = tokio::task::spawn_blocking(move || Writer::open(&config))
            .await
            .map_err(|error| DeliveryError::retryable(format!("open events file: task failed: {error}")))??;
        Ok(Self { writer: Arc::new(Mutex::new(writer)) })
    }

    /// Adds one event line. With `flush = "every_event"` the line is in the
    /// file when this returns Ok. A failed write is retryable, because a
    /// full disk or a lost mount may recover.
    pub async fn deliver(&mut self, event: &Event) -> Result<(), DeliveryError> {
        let mut line = serde_json::to_vec(event)
            .map_err(|error| DeliveryError::permanent(format!("serialize event {} as JSON: {error}", event.id)))?;
        line.push(b'\n');
        self.run(move |writer| writer.push(line)).await
    }

    /// Adds the lines of several stored events in one call, written together as
    /// the flush policy allows. Returns how many of them, from the first,
    /// the sink took. After a failure the rest are neither in the file nor
    /// in its buffer, and the error gives the reason.
    pub async fn deliver_many(&mut self, entries: &[&Entry]) -> (usize, Option<DeliveryError>) {
        let mut lines = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.json_line() {
                Ok(line) => lines.push(line),
                // An event that cannot be read goes the one-by-one way,
                // which reports it.
                Err(_) => break,
            }
        }
        let writer = Arc::clone(&self.writer);
        let task = tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer.push_many(lines)
        });
        match task.await {
            Ok(taken) => taken,
            Err(error) => (0, Some(DeliveryError::retryable(format!("write events file: task failed: {error}")))),
        }
    }

    /// Writes every buffered line to the file.
    pub async fn flush(&mut self) -> Result<(), DeliveryError> {
        // Nothing buffered is the common case after a batch; it needs no
        // trip to the blocking pool. A writer busy in another task is
        // checked there.
        if let Ok(writer) = self.writer.try_lock() {
            if writer.pending.is_empty() {
                return Ok(());
            }
        }
        self.run(Writer::write_pending).await
    }

    /// Runs `task` on the writer in the blocking thread pool. The writer is
    /// shared with the task rather than moved into it, so that it survives
    /// when the caller stops waiting.
    async fn run<F>(&self, task: F) -> Result<(), DeliveryError>
    where
        F: FnOnce(&mut Writer) -> Result<(), DeliveryError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the writer usable: its
            // fields change only after the I/O that they describe succeeded.
            let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            task(&mut writer)
        })
        .await
        .map_err(|error| DeliveryError::retryable(format!("write events file: task failed: {error}")))?
    }
}

/// The file and the lines not yet written to it. Assumes that no other
/// process writes to the file, apart from truncating it.
///
/// NOTE: a file renamed by another process, as logrotate does without
/// `copytruncate`, keeps receiving lines until this sink rotates it or the
/// daemon restarts, because the writer does not reopen the path.
struct Writer {
    path: PathBuf,
    file: File,
    /// Length of `file` in bytes, refreshed from the file before each batch.
    size: u64,
    max_size: u64,
    keep: u32,
    policy: FlushPolicy,
    flush_interval: Duration,
    /// Complete lines, each ending in a newline, oldest first.
    pending: VecDeque<Vec<u8>>,
    pending_bytes: usize,
    last_write: Instant,
}

impl Writer {
    fn open(config: &FileConfig) -> Result<Writer, DeliveryError> {
        let path = config.path.clone();
        if path.as_os_str().is_empty() {
            return Err(DeliveryError::permanent("open events file: path is empty"));
        }

        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        match fs::metadata(parent) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(DeliveryError::permanent(format!(
                    "open {}: {} is not a directory",
                    path.display(),
                    parent.display()
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(DeliveryError::permanent(format!(
                    "open {}: directory {} not found: create it or change the path",
                    path.display(),
                    parent.display()
                )));
            }
            Err(error) => return Err(open_error(&path, &error)),
        }

        let (file, size) = open_append(&path).map_err(|error| open_error(&path, &error))?;
        Ok(Writer {
            path,
            file,
            size,
            max_size: config.max_size.max(1),
            keep: config.keep,
            policy: config.flush,
            flush_interval: config.flush_interval,
            pending: VecDeque::new(),
            pending_bytes: 0,
            last_write: Instant::now(),
        })
    }

    /// Adds a line and writes the buffered lines when the flush policy
    /// requires it. On failure the line is removed from the buffer again, so
    /// that retrying the delivery does not write it twice.
    fn push(&mut self, line: Vec<u8>) -> Result<(), DeliveryError> {
        match self.push_many(vec![line]) {
            (_, Some(error)) => Err(error),
            (_, None) => Ok(()),
        }
    }

    /// Adds several lines and writes the buffered lines when the flush
    /// policy requires it. Returns how many of the new lines are in the file
    /// or the buffer. After a failure the others are removed again, so that
    /// retrying them does not write them twice.
    fn push_many(&mut self, lines: Vec<Vec<u8>>) -> (usize, Option<DeliveryError>) {
        let count = lines.len();
        for line in lines {
            self.pending_bytes += line.len();
            self.pending.push_back(line);
        }

        let due = match self.policy {
            FlushPolicy::EveryEvent => true,
            FlushPolicy::Interval => {
                self.last_write.elapsed() >= self.flush_interval || self.pending_bytes >= MAX_PENDING_BYTES
            }
        };
        if !due {
            return (count, None);
        }

        match self.write_pending() {
            Ok(()) => (count, None),
            Err(error) => {
                // Lines are written in order, so the unwritten new lines
                // are the newest ones.
                let unwritten = self.pending.len().min(count);
                for _ in 0..unwritten {
                    if let Some(line) = self.pending.pop_back() {
                        self.pending_bytes -= line.len();
                    }
                }
                (count - unwritten, Some(error))
            }
        }
    }

    /// Writes the buffered lines in order, rotating between lines as needed.
    /// A line that fails halfway is truncated away, so that the file contains
    /// only whole lines.
    fn write_pending(&mut self) -> Result<(), DeliveryError> {
        if self.pending.is_empty() {
            return Ok(());
        }

        // Another process may have truncated the file, as logrotate's
        // copytruncate does. The real length keeps rotation and the
        // truncation after a failed write correct.
        self.size = self.file.metadata().map_err(|error| self.write_error(&error))?.len();

        while let Some(length) = self.pending.front().map(Vec::len) {
            if self.size > 0 && self.size + length as u64 > self.max_size {
                self.rotate()?;
            }

            // The lines that fit in the current file go out in one write.
            let mut chunk = Vec::new();
            let mut lines = 0;
            for line in &self.pending {
                if lines > 0 && self.size + (chunk.len() + line.len()) as u64 > self.max_size {
                    break;
                }
                chunk.extend_from_slice(line);
                lines += 1;
            }

            if let Err(error) = self.file.write_all(&chunk) {
                if let Err(truncate_error) = self.file.set_len(self.size) {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %describe_io_error(&truncate_error),
                        "could not remove partly written lines from events file"
                    );
                }
                return Err(self.write_error(&error));
            }

            self.size += chunk.len() as u64;
            self.pending_bytes -= chunk.len();
            self.pending.drain(..lines);
        }

        self.last_write = Instant::now();
        Ok(())
    }

    /// Shifts `<path>.<n>` to `<path>.<n+1>` and the file to `<path>.1`,
    /// drops files beyond `keep` and starts a new file.
    fn rotate(&mut self) -> Result<(), DeliveryError> {
        if self.keep == 0 {
            remove_if_exists(&self.path).map_err(|error| self.rotate_error("remove", &self.path, &error))?;
        } else {
            for number in (1..self.keep).rev() {
                let from = numbered_path(&self.path, number);
                let to = numbered_path(&self.path, number + 1);
                rename_if_exists(&from, &to).map_err(|error| self.rotate_error("rename", &from, &error))?;
            }
            let first = numbered_path(&self.path, 1);
            rename_if_exists(&self.path, &first).map_err(|error| self.rotate_error("rename", &self.path, &error))?;
        }

        // Files left from a larger `keep` in an earlier run.
        let mut number = self.keep + 1;
        loop {
            let stale = numbered_path(&self.path, number);
            match fs::remove_file(&stale) {
                Ok(()) => number += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                Err(error) => return Err(self.rotate_error("remove", &stale, &error)),
            }
        }

        let (file, size) = open_append(&self.path).map_err(|error| {
            let mut failure = open_error(&self.path, &error);
            // Opening succeeded at startup, so a failure now may be temporary.
            failure.retry = super::Retry::After(None);
            failure
        })?;
        self.file = file;
        self.size = size;
        tracing::info!(path = %self.path.display(), keep = self.keep, "rotated events file");
        Ok(())
    }

    fn write_error(&self, error: &io::Error) -> DeliveryError {
        DeliveryError::retryable(format!("write {}: {}", self.path.display(), describe_io_error(error)))
    }

    fn rotate_error(&self, action: &str, path: &Path, error: &io::Error) -> DeliveryError {
        DeliveryError::retryable(format!(
            "rotate {}: {action} {}: {}",
            self.path.display(),
            path.display(),
            describe_io_error(error)
        ))
    }
}

impl Drop for Writer {
    /// Writes buffered lines, for a sink dropped without a final flush.
    fn drop(&mut self) {
        if let Err(error) = self.write_pending() {
            tracing::warn!(path = %self.path.display(), error = %error, "failed to write buffered events, events lost");
        }
    }
}

/// Opens `path` for appending, creating it with [`FILE_MODE`] if missing.
/// Returns the file and its length in bytes.
fn open_append(path: &Path) -> io::Result<(File, u64)> {
    match OpenOptions::new().append(true).create_new(true).mode(FILE_MODE).open(path) {
        Ok(file) => {
            // The umask may have removed bits of the requested mode.
            file.set_permissions(Permissions::from_mode(FILE_MODE))?;
            Ok((file, 0))
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let file = OpenOptions::new().append(true).open(path)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        }
        Err(error) => Err(error),
    }
}

fn open_error(path: &Path, error: &io::Error) -> DeliveryError {
    let message = format!("open {}: {}", path.display(), describe_io_error(error));
    match error.kind() {
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::NotFound
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::InvalidInput => DeliveryError::permanent(message),
        _ => DeliveryError::retryable(message),
    }
}

/// Returns `<path>.<number>`.
fn numbered_path(path: &Path, number: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{number}"));
    PathBuf::from(name)
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Describes an I/O error as a lowercase fragment without the OS error
/// number: `permission denied`, `no space left on device`.
pub(crate) fn describe_io_error(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(index) if text.ends_with(')') => &text[..index],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn config(path: &Path) -> FileConfig {
        serde_json::from_value(json!({ "path": path })).unwrap()
    }

    fn event(number: u32) -> Event {
        let received_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 0).unwrap();
        let payload = format!(r#"{{"Update":{{"Message":"Departed","Code":"MVT AD","Seq":{number}}}}}"#);
        Event::from_message("prd/FlightUpdate/LH/LH400/2024-05-01", payload.as_bytes(), 1, received_at)
    }

    fn problems_for(value: serde_json::Value) -> Vec<String> {
        let config: FileConfig = serde_json::from_value(value).unwrap();
        let mut problems = Problems::default();
        config.validate("sinks[1]", &mut problems);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn file_config_defaults() {
        let config = config(Path::new("/tmp/events.jsonl"));
        assert_eq!(config.max_size, 100 * 1024 * 1024);
        assert_eq!(config.keep, 5);
        assert_eq!(config.flush, FlushPolicy::EveryEvent);
        assert_eq!(config.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn file_config_parses_interval_duration() {
        let config: FileConfig =
            serde_json::from_value(json!({"path": "/x/e.jsonl", "flush": "interval", "flush_interval": "250ms"}))
                .unwrap();
        assert_eq!(config.flush, FlushPolicy::Interval);
        assert_eq!(config.flush_interval, Duration::from_millis(250));
    }

    #[test]
    fn file_config_valid_has_no_problems() {
        assert!(problems_for(json!({"path": "/var/log/flupd/events.jsonl"})).is_empty());
    }

    #[test]
    fn file_config_reports_missing_path() {
        let problems = problems_for(json!({}));
        assert_eq!(problems, ["sinks[1].path: missing: set it to the path of the events file"]);
    }

    #[test]
    fn file_config_reports_directory_path() {
        let problems = problems_for(json!({"path": "/var/log/.."}));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("sinks[1].path: invalid path \"/var/log/..\""), "{problems:?}");
    }

    #[test]
    fn file_config_reports_every_problem() {
        let problems =
            problems_for(json!({"path": "/x/e.jsonl", "max_size": 0, "flush": "interval", "flush_interval": "0s"}));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("sinks[1].max_size: invalid value 0"), "{problems:?}");
        assert!(problems[1].starts_with("sinks[1].flush_interval: invalid value 0s"), "{problems:?}");
    }

    #[test]
    fn file_config_rejects_unknown_key() {
        let error = serde_json::from_value::<FileConfig>(json!({"path": "/x/e.jsonl", "rotate": 3})).unwrap_err();
        assert!(error.to_string().contains("rotate"), "{error}");
    }

    #[test]
    fn describe_io_error_drops_os_error_number() {
        let error = io::Error::from_raw_os_error(13);
        assert_eq!(describe_io_error(&error), "permission denied");
    }

    #[tokio::test]
    async fn file_interval_buffers_until_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut config = config(&path);
        config.flush = FlushPolicy::Interval;
        config.flush_interval = Duration::from_secs(3600);

        let mut sink = FileSink::open(&config).await.unwrap();
        // The first line after opening waits for the interval, too.
        sink.deliver(&event(1)).await.unwrap();
        sink.deliver(&event(2)).await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "");

        sink.flush().await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn file_drop_writes_buffered_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut config = config(&path);
        config.flush = FlushPolicy::Interval;
        config.flush_interval = Duration::from_secs(3600);

        let mut sink = FileSink::open(&config).await.unwrap();
        sink.deliver(&event(1)).await.unwrap();
        drop(sink);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[tokio::test]
    async fn file_rotation_keep_zero_deletes_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut config = config(&path);
        config.max_size = 1;
        config.keep = 0;

        let mut sink = FileSink::open(&config).await.unwrap();
        for number in 0..3 {
            sink.deliver(&event(number)).await.unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names, ["events.jsonl"]);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[tokio::test]
    async fn file_rotation_removes_files_beyond_keep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        for number in 1..=4 {
            fs::write(numbered_path(&path, number), "old\n").unwrap();
        }
        let mut config = config(&path);
        config.max_size = 1;
        config.keep = 2;

        let mut sink = FileSink::open(&config).await.unwrap();
        sink.deliver(&event(1)).await.unwrap();
        sink.deliver(&event(2)).await.unwrap();

        assert!(numbered_path(&path, 1).exists());
        assert!(numbered_path(&path, 2).exists());
        assert!(!numbered_path(&path, 3).exists());
        assert!(!numbered_path(&path, 4).exists());
    }
}
