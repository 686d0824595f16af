//! The task that feeds one sink from the outbox, retrying failed deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Retry, Sink, SinkSpec};
use crate::event::Event;
use crate::outbox::{Entry, Reader};

/// Events read from the outbox at a time.
const BATCH: usize = 256;

/// The cursor is written at least this often while a batch is delivered,
/// so that a restart repeats little.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Counters of one sink, shared with the daemon.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events in the outbox this sink has not passed yet.
    pub pending: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries that failed and were tried again.
    pub retried: AtomicU64,
    /// Events the sink rejected permanently.
    pub failed: AtomicU64,
    /// Events delivered again after a restart: the sink read them before
    /// and may have them already.
    pub redelivered: AtomicU64,
    /// The delivery in progress, for the stuck-sink check.
    pub progress: crate::service::SinkProgress,
}

/// How a sink task stops.
#[derive(Clone)]
pub struct Stop {
    /// No more events will arrive: stop once caught up.
    pub draining: CancellationToken,
    /// Stop now; what is left stays in the outbox.
    pub hard: CancellationToken,
}

/// Delivers every event of the outbox after the sink's cursor, in order,
/// until draining finds it caught up or the hard stop fires. Retryable
/// failures are retried with the sink's backoff for as long as it takes, so
/// one event that cannot be delivered holds this sink back, and only it.
pub async fn drive(
    spec: SinkSpec,
    mut sink: Sink,
    mut reader: Reader,
    mut head: watch::Receiver<u64>,
    stats: Arc<SinkStats>,
    stop: Stop,
) {
    let mut read_failures = crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        stats.pending.store(head.borrow().saturating_sub(reader.delivered()), Ordering::Relaxed);
        let batch = match reader.next_batch(BATCH).await {
            Ok(batch) => batch,
            Err(error) => {
                let delay = read_failures.next_delay();
                tracing::error!(%error, delay_ms = delay.as_millis() as u64, "outbox read failed, retrying");
                tokio::select! {
                    _ = stop.hard.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        read_failures.reset();

        if batch.is_empty() {
            flush(&mut sink).await;
            if stop.draining.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = stop.hard.cancelled() => return,
                _ = stop.draining.cancelled() => {}
                changed = head.changed() => if changed.is_err() { break },
            }
            continue;
        }

        let mut last_commit = Instant::now();
        let mut passed = reader.delivered();

        // Sinks that can take the batch in one call do; what they leave,
        // after a failure, goes one by one with retries.
        let wanted: Vec<usize> = (0..batch.len()).filter(|&index| spec.wants(&batch[index].topic)).collect();
        let entries: Vec<&Entry> = wanted.iter().map(|&index| &batch[index]).collect();
        let (taken, error) = tokio::select! {
            _ = stop.hard.cancelled() => return,
            taken = deliver_many(&mut sink, &entries, &stats) => taken,
        };
        if let Some(error) = error {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, taken, "batch write failed, delivering the rest one by one");
        }
        let mut start = 0;
        if taken > 0 {
            let last = wanted[taken - 1];
            passed = batch[last].seq;
            start = last + 1;
        }
        drop(entries);

        for entry in batch.into_iter().skip(start) {
            if spec.wants(&entry.topic) {
                let delivered = match entry.event() {
                    Ok(event) => tokio::select! {
                        _ = stop.hard.cancelled() => {
                            commit(&mut reader, passed).await;
                            return;
                        }
                        delivered = deliver(&mut sink, &event, &stats) => delivered,
                    },
                    Err(error) => {
                        tracing::error!(seq = entry.seq, %error, "stored event cannot be read, skipped");
                        false
                    }
                };
                let counter = if delivered { &stats.delivered } else { &stats.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                if delivered && entry.read_before_restart {
                    stats.redelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            passed = entry.seq;
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                commit(&mut reader, passed).await;
                last_commit = Instant::now();
            }
        }
        // Buffered output must reach its destination before the cursor
        // says so: a failed flush is retried, and the cursor stays put.
        let mut flush_failures = sink.retry_backoff();
        while let Err(error) = sink.flush().await {
            let delay = flush_failures.next_delay();
            stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "flush failed, retrying before the cursor moves");
            tokio::select! {
                _ = stop.hard.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        commit(&mut reader, passed).await;
    }
    flush(&mut sink).await;
}

async fn commit(reader: &mut Reader, seq: u64) {
    if let Err(error) = reader.commit(seq).await {
        tracing::error!(%error, seq, "outbox cursor not saved, events may be delivered again after a restart");
    }
}

async fn flush(sink: &mut Sink) {
    if let Err(error) = sink.flush().await {
        tracing::warn!(%error, "flush failed");
    }
}

/// Offers `entries` to the sink in one call, without retries. Returns how
/// many of them, from the first, it took.
async fn deliver_many(sink: &mut Sink, entries: &[&Entry], stats: &SinkStats) -> (usize, Option<super::DeliveryError>) {
    let Some(first) = entries.first() else {
        return (0, None);
    };
    let _delivering = stats.progress.delivering(first.received_ms);
    let attempt = stats.progress.attempt();
    let (taken, error) = sink.deliver_many(entries).await;
    drop(attempt);
    for entry in &entries[..taken] {
        tracing::debug!(seq = entry.seq, "event delivered");
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        if entry.read_before_restart {
            stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    (taken, error)
}

/// Delivers one event, retrying as the sink's error says. Returns false
/// when the sink rejected the event for good.
pub async fn deliver(sink: &mut Sink, event: &Event, stats: &SinkStats) -> bool {
    let mut backoff = sink.retry_backoff();
    let mut attempt: u32 = 1;
    let _delivering = stats.progress.delivering(event.received_at.timestamp_millis());
    loop {
        let attempt_running = stats.progress.attempt();
        let result = sink.deliver(event).await;
        drop(attempt_running);
        let error = match result {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(event_id = %event.id, attempts = attempt, "event delivered after retries");
                } else {
                    tracing::debug!(event_id = %event.id, "event delivered");
                }
                return true;
            }
            Err(error) => error,
        };
        let delay = match error.retry {
            Retry::Never => {
                tracing::error!(event_id = %event.id, topic = %event.topic, error = %error, "event rejected by sink, dropped");
                return false;
            }
            Retry::After(Some(requested)) => requested.max(Duration::from_millis(1)),
            Retry::After(None) => backoff.next_delay(),
        };
        stats.retried.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(event_id = %event.id, attempt, delay_ms = delay.as_millis() as u64, error = %error, "delivery failed, retrying");
        tokio::time::sleep(delay).await;
        attempt = attempt.saturating_add(1);
    }
}
