//! The task that feeds one sink from its queue, retrying failed deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Retry, Sink};
use crate::event::Event;

/// Counters of one sink, shared between its task and the dispatcher.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events in the queue or being delivered.
    pub pending: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries that failed and were tried again.
    pub retried: AtomicU64,
    /// Events the sink rejected permanently.
    pub failed: AtomicU64,
    /// Events not queued because the queue was full.
    pub dropped: AtomicU64,
    /// The delivery in progress, for the stuck-sink check.
    pub progress: crate::service::SinkProgress,
}

/// Delivers every event from `queue` to `sink` until the queue closes and
/// is empty, or until `hard_stop` fires. Retryable failures are retried
/// with the sink's backoff, for as long as it takes.
pub async fn drive(
    mut sink: Sink,
    mut queue: mpsc::Receiver<Arc<Event>>,
    stats: Arc<SinkStats>,
    hard_stop: CancellationToken,
) {
    loop {
        let event = match queue.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Empty) => {
                flush(&mut sink).await;
                tokio::select! {
                    _ = hard_stop.cancelled() => return,
                    next = queue.recv() => match next {
                        Some(event) => event,
                        None => break,
                    },
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };

        let delivered = tokio::select! {
            _ = hard_stop.cancelled() => return,
            delivered = deliver(&mut sink, &event, &stats) => delivered,
        };
        if delivered {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
    flush(&mut sink).await;
}

async fn flush(sink: &mut Sink) {
    if let Err(error) = sink.flush().await {
        tracing::warn!(%error, "flush failed");
    }
}

/// Delivers one event, retrying as the sink's error says. Returns false
/// when the sink rejected the event for good.
async fn deliver(sink: &mut Sink, event: &Event, stats: &SinkStats) -> bool {
    let mut backoff = sink.retry_backoff();
    let mut attempt: u32 = 1;
    let _delivering = stats.progress.delivering(event);
    loop {
        let attempt_running = stats.progress.attempt();
        let error = match sink.deliver(event).await {
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
        drop(attempt_running);
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
