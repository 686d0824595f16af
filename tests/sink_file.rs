//! Integration tests of the file sink against real files in a temporary
//! directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use flupd::event::Event;
use flupd::outbox::{Entry, Outbox, OutboxConfig};
use flupd::sink::Retry;
use flupd::sink::file::{FileConfig, FileSink};
use serde_json::json;

fn config(value: serde_json::Value) -> FileConfig {
    serde_json::from_value(value).unwrap()
}

fn event(number: u32) -> Event {
    let received_at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 0).unwrap();
    let payload = format!(r#"{{"Update":{{"Message":"Departed","Code":"MVT AD","Seq":{number}}}}}"#);
    Event::from_message("prd/FlightUpdate/LH/LH400/2024-05-01", payload.as_bytes(), 1, received_at)
}

fn read_events(path: &Path) -> Vec<Event> {
    let text = fs::read_to_string(path).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Stores `events` in a new outbox and reads them back as a sink does.
async fn stored(events: Vec<Event>) -> Vec<Entry> {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
    let mut reader = outbox.reader("file").unwrap();
    outbox.append(std::sync::Arc::new(events)).await.unwrap();
    reader.next_batch(1000).await.unwrap()
}

fn rotated(path: &Path, number: u32) -> PathBuf {
    PathBuf::from(format!("{}.{number}", path.display()))
}

#[tokio::test]
async fn file_appends_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut sink = FileSink::open(&config(json!({ "path": path }))).await.unwrap();

    sink.deliver(&event(1)).await.unwrap();
    // With the default flush policy the line is in the file before flush.
    assert_eq!(read_events(&path), [event(1)]);

    sink.deliver(&event(2)).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(read_events(&path), [event(1), event(2)]);
}

#[tokio::test]
async fn file_creates_with_mode_0640() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let _sink = FileSink::open(&config(json!({ "path": path }))).await.unwrap();

    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "mode {mode:o}");
}

#[tokio::test]
async fn file_appends_to_existing_file_and_keeps_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let earlier = serde_json::to_string(&event(1)).unwrap() + "\n";
    fs::write(&path, &earlier).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

    let mut sink = FileSink::open(&config(json!({ "path": path }))).await.unwrap();
    sink.deliver(&event(2)).await.unwrap();

    assert_eq!(read_events(&path), [event(1), event(2)]);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
}

#[tokio::test]
async fn file_rotation_keeps_configured_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let line_length = serde_json::to_string(&event(10)).unwrap().len() as u64 + 1;
    // Room for two lines of this length per file.
    let max_size = 2 * line_length + line_length / 2;
    let mut sink = FileSink::open(&config(json!({ "path": path, "max_size": max_size, "keep": 3 }))).await.unwrap();

    for number in 10..30 {
        sink.deliver(&event(number)).await.unwrap();
    }

    let mut names: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["events.jsonl", "events.jsonl.1", "events.jsonl.2", "events.jsonl.3"]);

    // Newest events in the live file, older ones in ascending suffixes.
    assert_eq!(read_events(&path), [event(28), event(29)]);
    assert_eq!(read_events(&rotated(&path, 1)), [event(26), event(27)]);
    assert_eq!(read_events(&rotated(&path, 2)), [event(24), event(25)]);
    assert_eq!(read_events(&rotated(&path, 3)), [event(22), event(23)]);
    for name in &names {
        let size = fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(size <= max_size, "{name} has {size} bytes, above {max_size}");
    }
}

#[tokio::test]
async fn file_rotated_file_is_created_with_mode_0640() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut sink = FileSink::open(&config(json!({ "path": path, "max_size": 1, "keep": 1 }))).await.unwrap();

    sink.deliver(&event(1)).await.unwrap();
    sink.deliver(&event(2)).await.unwrap();

    assert_eq!(read_events(&rotated(&path, 1)), [event(1)]);
    assert_eq!(read_events(&path), [event(2)]);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "mode {mode:o}");
}

#[tokio::test]
async fn file_open_missing_directory_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let path = missing.join("events.jsonl");

    let error = FileSink::open(&config(json!({ "path": path }))).await.err().unwrap();

    assert_eq!(error.retry, Retry::Never);
    assert_eq!(
        error.message,
        format!("open {}: directory {} not found: create it or change the path", path.display(), missing.display())
    );
    assert!(!missing.exists());
}

#[tokio::test]
async fn file_open_directory_as_file_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    fs::create_dir(&path).unwrap();

    let error = FileSink::open(&config(json!({ "path": path }))).await.err().unwrap();

    assert_eq!(error.retry, Retry::Never);
    assert_eq!(error.message, format!("open {}: is a directory", path.display()));
}

#[tokio::test]
async fn file_open_denied_names_path() {
    // sysfs rejects new files even for root, with "permission denied" or,
    // where it is mounted read-only, "read-only file system".
    let path = Path::new("/sys/flupd-test-events.jsonl");

    let error = FileSink::open(&config(json!({ "path": path }))).await.err().unwrap();

    assert_eq!(error.retry, Retry::Never);
    assert!(error.message.starts_with("open /sys/flupd-test-events.jsonl: "), "{}", error.message);
    assert!(!error.message.contains("os error"), "{}", error.message);
}

#[tokio::test]
async fn file_write_error_is_retryable_and_names_path() {
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    let mut sink = FileSink::open(&config(json!({ "path": "/dev/full" }))).await.unwrap();

    let error = sink.deliver(&event(1)).await.unwrap_err();

    assert_eq!(error.retry, Retry::After(None));
    assert_eq!(error.message, "write /dev/full: no space left on device");
}

#[tokio::test]
async fn file_deliver_many_rotates_between_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let line_length = serde_json::to_string(&event(10)).unwrap().len() as u64 + 1;
    let max_size = 2 * line_length + line_length / 2;
    let mut sink = FileSink::open(&config(json!({ "path": path, "max_size": max_size, "keep": 3 }))).await.unwrap();

    let entries = stored((10..17).map(event).collect()).await;
    let (taken, error) = sink.deliver_many(&entries.iter().collect::<Vec<_>>()).await;

    assert_eq!(taken, 7);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(read_events(&path), [event(16)]);
    assert_eq!(read_events(&rotated(&path, 1)), [event(14), event(15)]);
    assert_eq!(read_events(&rotated(&path, 2)), [event(12), event(13)]);
    assert_eq!(read_events(&rotated(&path, 3)), [event(10), event(11)]);
}

#[tokio::test]
async fn file_deliver_many_partial_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let line_length = serde_json::to_string(&event(10)).unwrap().len() as u64 + 1;
    let max_size = 2 * line_length + line_length / 2;
    // Rotation shifts events.jsonl.1 to events.jsonl.2 first; a directory
    // that is not empty in the way makes the first rotation fail.
    fs::write(rotated(&path, 1), "older\n").unwrap();
    let blocker = rotated(&path, 2);
    fs::create_dir(&blocker).unwrap();
    fs::write(blocker.join("file"), "").unwrap();
    let mut sink = FileSink::open(&config(json!({ "path": path, "max_size": max_size, "keep": 2 }))).await.unwrap();

    let entries = stored((10..15).map(event).collect()).await;
    let all: Vec<&Entry> = entries.iter().collect();
    let (taken, error) = sink.deliver_many(&all).await;

    // The two lines that fitted before the rotation are in the file, and
    // the sink keeps none of the others for a later write.
    assert_eq!(taken, 2);
    let error = error.expect("rotation error");
    assert!(error.message.starts_with(&format!("rotate {}: rename ", path.display())), "{}", error.message);
    assert_eq!(error.retry, Retry::After(None));
    sink.flush().await.unwrap();
    assert_eq!(read_events(&path), [event(10), event(11)]);

    // Once rotation works again, the rest follow without duplicates.
    fs::remove_dir_all(&blocker).unwrap();
    let (taken, error) = sink.deliver_many(&all[2..]).await;
    assert_eq!(taken, 3);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(read_events(&path), [event(14)]);
    assert_eq!(read_events(&rotated(&path, 1)), [event(12), event(13)]);
    assert_eq!(read_events(&rotated(&path, 2)), [event(10), event(11)]);
}

#[tokio::test]
async fn file_deliver_many_on_full_disk_takes_nothing() {
    let mut sink = FileSink::open(&config(json!({ "path": "/dev/full" }))).await.unwrap();
    let entries = stored((1..4).map(event).collect()).await;

    let (taken, error) = sink.deliver_many(&entries.iter().collect::<Vec<_>>()).await;

    assert_eq!(taken, 0);
    assert_eq!(error.unwrap().message, "write /dev/full: no space left on device");
    // Nothing stays buffered, so a later flush has nothing to write.
    sink.flush().await.unwrap();
}
