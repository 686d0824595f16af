//! Enrichment: adds the flight's status from Lufthansa's Flight Status API
//! to each event, and the fields that changed since the previous status.
//!
//! A notification only says that something changed. [`Enricher::enrich`]
//! fetches the flight's status, or reuses a cached one, within
//! `enrich.max_wait`, and never fails: the event gets `status` or
//! `enrichment_error`.
//!
//! Calls are kept few, because one API key allows few (see
//! [`crate::api::CallLimits`]):
//!
//! - A cached status is reused while it is younger than its TTL, which
//!   depends on the flight's phase: `ttl_final` after arrival or
//!   cancellation, `ttl_near` within `near_window` of departure or arrival,
//!   and `ttl_far` otherwise. No TTL is shorter than `min_interval`, so one
//!   flight and date gets at most one call per `min_interval`. Retries after
//!   5xx responses are part of one call, and a flight's slot may be dropped
//!   when more than twice `max_flights` are cached.
//! - One call at a time per flight and date: concurrent events for the same
//!   flight wait for that call and share its response.
//! - A failed call is not repeated within `min_interval`, and a 404 not
//!   within `ttl_far`. Calls the budget refused are no calls, so the next
//!   event tries again.

mod parse;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, oneshot};
use tokio::time::Instant;
use url::Url;

pub use parse::{parse_legs, select_leg};
pub use store::{STATE_FILE, StatusStore, StoreError};

use crate::api::{ApiError, LufthansaApi, same_origin};
use crate::config::EnrichConfig;
use crate::event::{EnrichmentError, EnrichmentReason, Event, FlightStatus};

/// The share of `max_wait` an event may spend waiting for the call budget;
/// the rest is left for the call itself.
const BUDGET_WAIT_SHARE: f64 = 0.5;

/// Shortest time between two warnings about failed calls; the failures in
/// between are counted in the next warning.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Fetches, caches and compares flight statuses for events.
///
/// Cloning is cheap and clones share the cache, the store and the budget.
#[derive(Clone, Debug)]
pub struct Enricher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EnrichConfig,
    api: Arc<LufthansaApi>,
    store: StatusStore,
    /// One slot per flight and date. A slot's lock is held for the whole
    /// call, which makes concurrent events for one flight share one call.
    slots: Mutex<HashMap<FlightKey, Arc<AsyncMutex<Slot>>>>,
    stats: Stats,
    warnings: Mutex<WarnState>,
}

/// A flight as in topics, such as `LH400`, and its local departure date.
type FlightKey = (String, NaiveDate);

#[derive(Debug, Default)]
struct Slot {
    /// The last successful response.
    legs: Option<Fetched>,
    /// When the last call started, and its error if it failed.
    last_call: Option<(Instant, Option<EnrichmentError>)>,
}

#[derive(Debug, Clone)]
struct Fetched {
    legs: Vec<FlightStatus>,
    at: Instant,
}

/// Counters of what enrichment did, since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub cache_hits: AtomicU64,
    pub enriched: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug, Default)]
struct WarnState {
    last: Option<Instant>,
    suppressed: u64,
}

impl Enricher {
    /// Builds an enricher that calls `api`, which must be the client shared
    /// with the credential store so that both spend one budget. Reads the
    /// previous statuses from `state_dir`; a missing or invalid file is
    /// logged and enrichment starts without previous statuses.
    pub fn new(config: EnrichConfig, api: Arc<LufthansaApi>, state_dir: &Path) -> Enricher {
        let (store, error) = StatusStore::open(state_dir, config.max_flights, config.keep_days);
        if let Some(error) = error {
            tracing::warn!(%error, path = %store.path().display(), "ignoring previous flight statuses");
        }
        let inner = Inner {
            config,
            api,
            store,
            slots: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            warnings: Mutex::new(WarnState::default()),
        };
        Enricher { inner: Arc::new(inner) }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.config.enabled
    }

    pub fn config(&self) -> &EnrichConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Adds `status` and `changes`, or `enrichment_error`, to the event.
    ///
    /// Returns within `enrich.max_wait` and never fails. When enrichment is
    /// off the event gets the reason `disabled`. An event whose topic names
    /// no flight and date is left as it is, because there is nothing to look
    /// up.
    pub async fn enrich(&self, event: &mut Event) {
        if !self.inner.config.enabled {
            event.enrichment_error =
                Some(error(EnrichmentReason::Disabled, "enrichment is off; set enrich.enabled = true to turn it on"));
            return;
        }
        let (Some(flight), Some(date)) = (event.flight.clone(), event.flight_date) else {
            return;
        };

        let max_wait = self.inner.config.max_wait;
        let result = tokio::time::timeout(max_wait, self.status_for(event, &flight, date)).await;
        let outcome = result.unwrap_or_else(|_| {
            Err(error(
                EnrichmentReason::Timeout,
                format!("no flight status within enrich.max_wait ({})", humantime::format_duration(max_wait)),
            ))
        });
        match outcome {
            Ok(status) => {
                self.inner.stats.enriched.fetch_add(1, Ordering::Relaxed);
                let (previous, changed) = self.inner.store.replace(&flight, date, &status);
                event.changes = previous.map(|previous| status.changes_since(&previous)).unwrap_or_default();
                event.status = Some(status);
                if changed {
                    // The write is not awaited, so that a slow disk never
                    // holds the event past max_wait.
                    let enricher = self.clone();
                    tokio::spawn(async move { enricher.save_store().await });
                }
            }
            Err(failure) => {
                self.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(flight = %flight, date = %date, reason = %failure.reason, detail = %failure.detail, "event not enriched");
                event.enrichment_error = Some(failure);
            }
        }
    }

    /// Writes the last reported statuses to the state directory now.
    /// Enrichment starts a write after every change without waiting for it,
    /// so call this at shutdown to be sure the last change is on disk.
    pub async fn save(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.store.save()).await.unwrap_or(Ok(()))
    }

    async fn save_store(&self) {
        if let Err(error) = self.save().await {
            tracing::error!(%error, "failed to save flight statuses; changes may be wrong after a restart");
        }
    }

    /// Returns the status of the event's leg, from the cache or one call.
    async fn status_for(&self, event: &Event, flight: &str, date: NaiveDate) -> Result<FlightStatus, EnrichmentError> {
        let slot = self.slot(flight, date);
        let mut guard = slot.lock_owned().await;
        let now = Instant::now();

        if let Some(fetched) = &guard.legs {
            if now < fetched.at + self.ttl(&fetched.legs) {
                self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(pick(&fetched.legs, event));
            }
        }
        if let Some((called_at, failure)) = &guard.last_call {
            let wait = match failure.as_ref().map(|failure| failure.reason) {
                Some(EnrichmentReason::NotFound) => self.inner.config.ttl_far.max(self.inner.config.min_interval),
                _ => self.inner.config.min_interval,
            };
            if now < *called_at + wait {
                self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return match (failure, &guard.legs) {
                    (Some(failure), _) => Err(failure.clone()),
                    (None, Some(fetched)) => Ok(pick(&fetched.legs, event)),
                    // A call that was cut short by max_wait left nothing.
                    (None, None) => Err(error(
                        EnrichmentReason::Timeout,
                        "the previous call for this flight did not finish; no new call before enrich.min_interval",
                    )),
                };
            }
        }

        let url = self.status_url(event, flight, date);
        let budget_deadline = now + self.inner.config.max_wait.mul_f64(BUDGET_WAIT_SHARE);
        guard.last_call = Some((now, None));
        let (sender, receiver) = oneshot::channel();
        // The call runs in its own task and keeps the slot locked, so that an
        // response arriving after max_wait still fills the cache.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let result = inner.call(&url, budget_deadline, &mut guard).await;
            let _ = sender.send(result);
        });
        let legs = receiver.await.unwrap_or_else(|_| {
            Err(error(EnrichmentReason::ApiError, "the flight status call ended without a result"))
        })?;
        Ok(pick(&legs, event))
    }

    fn slot(&self, flight: &str, date: NaiveDate) -> Arc<AsyncMutex<Slot>> {
        let mut slots = lock(&self.inner.slots);
        if slots.len() > self.inner.config.max_flights * 2 {
            // Slots of other flights are only caches, so dropping idle ones
            // bounds memory without losing anything the store keeps.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry((flight.to_owned(), date)).or_default().clone()
    }

    /// Returns the event's Flight Status link if it is on the API's host,
    /// and otherwise the URL built from the topic's flight and date.
    fn status_url(&self, event: &Event, flight: &str, date: NaiveDate) -> Url {
        let base = self.inner.api.base();
        event
            .links
            .iter()
            .filter_map(|link| Url::parse(&link.href).ok())
            .find(|url| same_origin(url, base) && url.path().contains("/operations/flightstatus/"))
            .unwrap_or_else(|| self.inner.api.flight_status_url(flight, date))
    }

    /// Returns how long a response stays fresh, from the phase of its legs.
    fn ttl(&self, legs: &[FlightStatus]) -> Duration {
        let config = &self.inner.config;
        let now = Utc::now();
        let ttl = legs
            .iter()
            .map(|leg| {
                let finished = leg.arrival.actual_utc.is_some()
                    || leg.arrival.actual_local.is_some()
                    || leg.flight_status.as_ref().is_some_and(|status| matches!(status.code.as_str(), "LD" | "CD"));
                if finished {
                    return config.ttl_final;
                }
                let times = [
                    leg.departure.estimated_utc.or(leg.departure.scheduled_utc),
                    leg.arrival.estimated_utc.or(leg.arrival.scheduled_utc),
                ];
                // Without UTC times the distance to departure is unknown, so
                // the short TTL is the safe choice.
                let window = chrono::Duration::from_std(config.near_window).unwrap_or(chrono::Duration::MAX);
                let near = times.iter().all(Option::is_none)
                    || times.iter().flatten().any(|time| (*time - now).abs() <= window);
                if near { config.ttl_near } else { config.ttl_far }
            })
            .min()
            .unwrap_or(config.ttl_near);
        ttl.max(config.min_interval)
    }
}

impl Inner {
    /// Makes the call and records its outcome in the slot.
    async fn call(
        &self,
        url: &Url,
        budget_deadline: Instant,
        slot: &mut OwnedMutexGuard<Slot>,
    ) -> Result<Vec<FlightStatus>, EnrichmentError> {
        let result = self.api.flight_status(url, budget_deadline).await;
        let outcome = match result {
            Ok(body) => parse_legs(&body).map_err(|detail| {
                error(EnrichmentReason::InvalidResponse, format!("{}: {detail}", crate::api::display_url(url)))
            }),
            Err(api_error) => Err(classify(&api_error)),
        };
        match &outcome {
            Ok(legs) => {
                self.stats.calls.fetch_add(1, Ordering::Relaxed);
                slot.legs = Some(Fetched { legs: legs.clone(), at: Instant::now() });
            }
            Err(failure)
                if matches!(failure.reason, EnrichmentReason::BudgetExhausted | EnrichmentReason::RateLimited) =>
            {
                // Nothing was sent, or the response was a rate limit that
                // already pauses every call: either way the next event may
                // try again without waiting for min_interval.
                slot.last_call = None;
            }
            Err(failure) => {
                self.stats.calls.fetch_add(1, Ordering::Relaxed);
                if let Some((_, recorded)) = slot.last_call.as_mut() {
                    *recorded = Some(failure.clone());
                }
                if matches!(failure.reason, EnrichmentReason::ApiError | EnrichmentReason::InvalidResponse) {
                    self.warn_failure(failure);
                }
            }
        }
        outcome
    }

    /// Logs a failed call at WARN, at most once per [`WARN_INTERVAL`] with
    /// the number of failures since the previous warning.
    fn warn_failure(&self, failure: &EnrichmentError) {
        let mut state = lock(&self.warnings);
        let now = Instant::now();
        if state.last.is_some_and(|last| now < last + WARN_INTERVAL) {
            state.suppressed += 1;
            return;
        }
        tracing::warn!(reason = %failure.reason, error = %failure.detail, failures_since_last_warning = state.suppressed, "flight status call failed");
        state.last = Some(now);
        state.suppressed = 0;
    }
}

/// Maps a failed call to an enrichment reason. The detail is the error's
/// text, which names the URL without query and never contains the token.
fn classify(api_error: &ApiError) -> EnrichmentError {
    let reason = match api_error {
        ApiError::Status { status: 404, .. } => EnrichmentReason::NotFound,
        ApiError::RateLimited { .. } | ApiError::CallsPaused { .. } => EnrichmentReason::RateLimited,
        ApiError::BudgetExhausted { .. } => EnrichmentReason::BudgetExhausted,
        ApiError::InvalidResponse { .. } => EnrichmentReason::InvalidResponse,
        ApiError::NotAuthorized { .. } | ApiError::Status { .. } | ApiError::Transport { .. } => {
            EnrichmentReason::ApiError
        }
    };
    error(reason, api_error.to_string())
}

fn pick(legs: &[FlightStatus], event: &Event) -> FlightStatus {
    legs[select_leg(legs, event)].clone()
}

fn error(reason: EnrichmentReason, detail: impl Into<String>) -> EnrichmentError {
    EnrichmentError { reason, detail: detail.into() }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
