//! The call budget shared by every request to Lufthansa's API with one key.
//!
//! Lufthansa publishes no limits. Users report about 5 calls per second and
//! 1,000 calls per hour per key, and a block after exceeding them also covers
//! the token endpoint, which cuts off credential renewal. So flupd spends less
//! than that by default, lets token and credential calls go first, and stops
//! all calls for a while after a rate-limit response.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// The call budget of one API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Calls allowed in any window of one second.
    pub max_calls_per_second: u32,
    /// Calls allowed in any window of one hour.
    pub max_calls_per_hour: u32,
    /// How long every call waits after Lufthansa responded with a rate limit.
    pub rate_limit_pause: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self { max_calls_per_second: 1, max_calls_per_hour: 500, rate_limit_pause: HOUR }
    }
}

impl CallLimits {
    /// Calls per hour that enrichment may not use, so that enrichment never
    /// spends the budget a token and a credentials call need.
    fn credential_reserve(&self) -> usize {
        if self.max_calls_per_hour >= 10 { 2 } else { 0 }
    }
}

/// Who makes a call. Token and credential calls keep flupd connected, so
/// they go before any waiting enrichment call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPriority {
    Credentials,
    Enrichment,
}

/// The reason a call cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Calls are paused after a rate-limit response.
    #[error("calls are paused for {}s after a rate-limit response", remaining_secs(*until))]
    Paused { until: Instant },
    /// The budget allows no call before the caller's deadline.
    #[error("the call budget allows the next call in {}s", remaining_secs(*available_at))]
    BudgetExhausted { available_at: Instant },
}

fn remaining_secs(at: Instant) -> u64 {
    at.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as u64
}

/// A sliding-window limiter for calls per second and per hour, with a pause
/// after a rate-limit response. Time comes from tokio, so tests can pause it.
#[derive(Debug)]
pub struct RateLimiter {
    limits: CallLimits,
    state: Mutex<State>,
    /// Signals waiting enrichment calls that a credential caller has left.
    credentials_done: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Start times of the calls in the last second, oldest first.
    last_second: VecDeque<Instant>,
    /// Start times of the calls in the last hour, oldest first.
    last_hour: VecDeque<Instant>,
    paused_until: Option<Instant>,
    /// Credential callers waiting for the budget. While any waits, no
    /// enrichment call starts.
    credentials_waiting: usize,
}

/// The budget's decision at one instant.
enum Verdict {
    Go,
    Paused(Instant),
    WaitUntil(Instant),
    /// A credential call is waiting, and it goes first.
    YieldToCredentials,
}

impl RateLimiter {
    pub fn new(limits: CallLimits) -> Self {
        // Zero limits would block every call forever, so configuration
        // validation rejects them and this treats them as one.
        let limits = CallLimits {
            max_calls_per_second: limits.max_calls_per_second.max(1),
            max_calls_per_hour: limits.max_calls_per_hour.max(1),
            ..limits
        };
        Self { limits, state: Mutex::new(State::default()), credentials_done: Notify::new() }
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// Takes a call from the budget if one is available now.
    pub fn try_acquire(&self, priority: CallPriority) -> Result<(), LimitError> {
        let mut state = self.lock();
        let now = Instant::now();
        match self.verdict(&mut state, priority, now) {
            Verdict::Go => {
                record(&mut state, now);
                Ok(())
            }
            Verdict::Paused(until) => Err(LimitError::Paused { until }),
            Verdict::WaitUntil(at) => Err(LimitError::BudgetExhausted { available_at: at }),
            Verdict::YieldToCredentials => Err(LimitError::BudgetExhausted { available_at: now + SECOND }),
        }
    }

    /// Takes a call from the budget, waiting until one is available.
    ///
    /// With a deadline it fails at once when the budget cannot allow the
    /// call by then, and otherwise when the deadline passes. During a pause
    /// it fails at once whatever the deadline, because the pause is long and
    /// the caller should report it rather than hang.
    pub async fn acquire(&self, priority: CallPriority, deadline: Option<Instant>) -> Result<(), LimitError> {
        // Dropped on every return, also when the caller drops this future,
        // which lets waiting enrichment calls go again.
        let _waiter = (priority == CallPriority::Credentials).then(|| CredentialWaiter::register(self));
        loop {
            let notified = self.credentials_done.notified();
            tokio::pin!(notified);
            let wake_at = {
                let mut state = self.lock();
                let now = Instant::now();
                match self.verdict(&mut state, priority, now) {
                    Verdict::Go => {
                        record(&mut state, now);
                        return Ok(());
                    }
                    Verdict::Paused(until) => return Err(LimitError::Paused { until }),
                    Verdict::WaitUntil(at) => {
                        if deadline.is_some_and(|deadline| at > deadline) {
                            return Err(LimitError::BudgetExhausted { available_at: at });
                        }
                        Some(at)
                    }
                    Verdict::YieldToCredentials => {
                        if deadline.is_some_and(|deadline| now >= deadline) {
                            return Err(LimitError::BudgetExhausted { available_at: now + SECOND });
                        }
                        // Register for the wake-up before the lock is released,
                        // so that a credential caller leaving in between is seen.
                        notified.as_mut().enable();
                        deadline
                    }
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Stops every call for the configured pause, from now. Called after a
    /// rate-limit response. A longer pause already in force is kept.
    pub fn pause(&self) -> Instant {
        let until = Instant::now() + self.limits.rate_limit_pause;
        let mut state = self.lock();
        let until = state.paused_until.map_or(until, |current| current.max(until));
        state.paused_until = Some(until);
        drop(state);
        self.credentials_done.notify_waiters();
        until
    }

    /// Returns when the current pause ends, if calls are paused.
    pub fn paused_until(&self) -> Option<Instant> {
        let state = self.lock();
        state.paused_until.filter(|until| *until > Instant::now())
    }

    fn verdict(&self, state: &mut State, priority: CallPriority, now: Instant) -> Verdict {
        if let Some(until) = state.paused_until {
            if until > now {
                return Verdict::Paused(until);
            }
            state.paused_until = None;
        }
        while state.last_second.front().is_some_and(|start| *start + SECOND <= now) {
            state.last_second.pop_front();
        }
        while state.last_hour.front().is_some_and(|start| *start + HOUR <= now) {
            state.last_hour.pop_front();
        }

        let mut hour_limit = self.limits.max_calls_per_hour as usize;
        if priority == CallPriority::Enrichment {
            hour_limit -= self.limits.credential_reserve();
        }
        let mut available_at = now;
        if state.last_second.len() >= self.limits.max_calls_per_second as usize {
            let index = state.last_second.len() - self.limits.max_calls_per_second as usize;
            available_at = available_at.max(state.last_second[index] + SECOND);
        }
        if state.last_hour.len() >= hour_limit {
            let index = state.last_hour.len() - hour_limit;
            available_at = available_at.max(state.last_hour[index] + HOUR);
        }
        if available_at > now {
            return Verdict::WaitUntil(available_at);
        }
        if priority == CallPriority::Enrichment && state.credentials_waiting > 0 {
            return Verdict::YieldToCredentials;
        }
        Verdict::Go
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panic
        // elsewhere does not make it unusable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn record(state: &mut State, now: Instant) {
    state.last_second.push_back(now);
    state.last_hour.push_back(now);
}

/// Counts a waiting credential caller and uncounts it when the wait ends,
/// also when the waiting future is dropped.
struct CredentialWaiter<'a> {
    limiter: &'a RateLimiter,
}

impl<'a> CredentialWaiter<'a> {
    fn register(limiter: &'a RateLimiter) -> Self {
        limiter.lock().credentials_waiting += 1;
        Self { limiter }
    }
}

impl Drop for CredentialWaiter<'_> {
    fn drop(&mut self) {
        self.limiter.lock().credentials_waiting -= 1;
        self.limiter.credentials_done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn limiter(per_second: u32, per_hour: u32) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(CallLimits {
            max_calls_per_second: per_second,
            max_calls_per_hour: per_hour,
            rate_limit_pause: HOUR,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_calls_per_second() {
        let limiter = limiter(2, 500);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..6 {
            limiter.acquire(CallPriority::Enrichment, None).await.unwrap();
            starts.push(start.elapsed());
        }
        let seconds: Vec<u64> = starts.iter().map(|elapsed| elapsed.as_secs()).collect();
        assert_eq!(seconds, [0, 0, 1, 1, 2, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_try_acquire_never_waits() {
        let limiter = limiter(1, 500);
        assert_eq!(limiter.try_acquire(CallPriority::Enrichment), Ok(()));
        let error = limiter.try_acquire(CallPriority::Enrichment).unwrap_err();
        assert_eq!(error, LimitError::BudgetExhausted { available_at: Instant::now() + SECOND });
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_deadline_fails_at_once_when_too_far() {
        let limiter = limiter(1, 500);
        limiter.acquire(CallPriority::Enrichment, None).await.unwrap();
        let start = Instant::now();
        let deadline = Some(start + Duration::from_millis(500));
        let result = limiter.acquire(CallPriority::Enrichment, deadline).await;
        assert!(matches!(result, Err(LimitError::BudgetExhausted { .. })), "{result:?}");
        assert_eq!(start.elapsed(), Duration::ZERO, "must not wait for a budget it cannot get");

        let deadline = Some(start + Duration::from_secs(2));
        limiter.acquire(CallPriority::Enrichment, deadline).await.unwrap();
        assert_eq!(start.elapsed(), SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_enforces_hourly_budget_with_reserve() {
        let limiter = limiter(100, 20);
        for _ in 0..18 {
            limiter.try_acquire(CallPriority::Enrichment).unwrap();
        }
        // Two calls per hour stay reserved for tokens and credentials.
        let error = limiter.try_acquire(CallPriority::Enrichment).unwrap_err();
        assert!(matches!(error, LimitError::BudgetExhausted { available_at } if available_at == Instant::now() + HOUR));
        limiter.try_acquire(CallPriority::Credentials).unwrap();
        limiter.try_acquire(CallPriority::Credentials).unwrap();
        assert!(limiter.try_acquire(CallPriority::Credentials).is_err());

        tokio::time::advance(HOUR).await;
        limiter.try_acquire(CallPriority::Enrichment).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_credentials_go_first() {
        let limiter = limiter(1, 500);
        limiter.try_acquire(CallPriority::Enrichment).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));

        let enrichment = tokio::spawn({
            let (limiter, order) = (limiter.clone(), order.clone());
            async move {
                limiter.acquire(CallPriority::Enrichment, None).await.unwrap();
                order.lock().unwrap().push("enrichment");
            }
        });
        // Let the enrichment call start waiting before the credential call.
        tokio::task::yield_now().await;
        let credentials = tokio::spawn({
            let (limiter, order) = (limiter.clone(), order.clone());
            async move {
                limiter.acquire(CallPriority::Credentials, None).await.unwrap();
                order.lock().unwrap().push("credentials");
            }
        });
        credentials.await.unwrap();
        enrichment.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["credentials", "enrichment"]);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_pause_stops_every_call() {
        let limiter = limiter(5, 500);
        let until = limiter.pause();
        assert_eq!(until, Instant::now() + HOUR);
        assert_eq!(limiter.try_acquire(CallPriority::Credentials), Err(LimitError::Paused { until }));
        let result = limiter.acquire(CallPriority::Enrichment, None).await;
        assert_eq!(result, Err(LimitError::Paused { until }));
        assert_eq!(limiter.paused_until(), Some(until));

        tokio::time::advance(HOUR - SECOND).await;
        assert!(limiter.try_acquire(CallPriority::Credentials).is_err());
        tokio::time::advance(SECOND).await;
        assert_eq!(limiter.paused_until(), None);
        limiter.try_acquire(CallPriority::Credentials).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_pause_ends_waiting_calls() {
        let limiter = limiter(1, 500);
        limiter.try_acquire(CallPriority::Enrichment).unwrap();
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(CallPriority::Enrichment, None).await }
        });
        tokio::task::yield_now().await;
        let until = limiter.pause();
        assert_eq!(waiting.await.unwrap(), Err(LimitError::Paused { until }));
    }
}
