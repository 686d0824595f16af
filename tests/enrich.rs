//! Tests of enrichment with a real `LufthansaApi` against the stand-in's real HTTP server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use flupd::api::{CallLimits, LufthansaApi};
use flupd::config::EnrichConfig;
use flupd::enrich::Enricher;
use flupd::event::{EnrichmentReason, Event};
use flupd::secret::Secret;
use flupd_standin::{Standin, StandinOptions};
use tokio::time::Instant;
use url::Url;

use common::{API_KEY, API_SECRET};

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

async fn standin(calls_per_second: Option<u32>) -> Standin {
    let options = StandinOptions { flight_status_calls_per_second: calls_per_second, ..StandinOptions::default() };
    Standin::start(options).await.expect("stand-in starts")
}

fn api(standin: &Standin, limits: CallLimits) -> Arc<LufthansaApi> {
    let base = Url::parse(&standin.api_base()).unwrap();
    let api = LufthansaApi::new(base, API_KEY.to_owned(), Secret::new(API_SECRET), Duration::from_secs(5)).unwrap();
    Arc::new(api.with_limits(limits))
}

fn config(max_wait: Duration) -> EnrichConfig {
    EnrichConfig { enabled: true, max_wait, ..EnrichConfig::default() }
}

fn event(flight: &str, date: NaiveDate, message: &str) -> Event {
    let carrier = &flight[..2];
    let topic = format!("prd/FlightUpdate/{carrier}/{flight}/{date}");
    let payload = format!(r#"{{"Update":{{"Message":"{message}","Timestamp":"{date}T10:00:00"}}}}"#);
    Event::from_message(&topic, payload.as_bytes(), 1, Utc::now())
}

/// Obtains the access token first, so that a test's call counts start from zero tokens.
async fn warm_up(api: &LufthansaApi) {
    api.access_token().await.expect("access token");
}

#[tokio::test]
async fn enrich_adds_status_with_quirks() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let enricher = Enricher::new(config(Duration::from_secs(5)), api(&standin, CallLimits::default()), state.path());

    let mut gate_change = event("LH2015", today(), "New Gate Information");
    enricher.enrich(&mut gate_change).await;
    assert_eq!(gate_change.enrichment_error, None);
    let status = gate_change.status.as_ref().expect("status");
    assert_eq!(status.departure.airport, "MUC");
    assert_eq!(status.arrival.airport, "CDG");
    // LH2015 sends Terminal.Name and FlightNumber as JSON numbers.
    assert!(status.departure.terminal.as_deref().is_some_and(|name| name.parse::<u32>().is_ok()), "{status:?}");
    assert_eq!(status.marketing_carrier.as_ref().map(ToString::to_string).as_deref(), Some("LH2015"));
    assert_eq!(status.operating_carrier.as_ref().map(|c| c.flight_number.as_str()), Some("2015"));
    assert!(status.departure.gate.is_some());
    assert!(status.departure.scheduled_utc.is_some());
    assert_eq!(status.aircraft_code.as_deref(), Some("320"));
    assert!(gate_change.changes.is_empty(), "the first status has nothing to compare with");

    // LX18 has no UTC blocks.
    let mut no_utc = event("LX18", today(), "New Estimated Departure");
    enricher.enrich(&mut no_utc).await;
    let status = no_utc.status.as_ref().expect("status");
    assert!(status.departure.scheduled_local.is_some());
    assert_eq!(status.departure.scheduled_utc, None);

    let json = serde_json::to_value(&gate_change).unwrap();
    assert_eq!(json["status"]["departure"]["airport"], "MUC");
    assert!(json.get("changes").is_none(), "empty changes are left out");
    assert!(json.get("enrichment_error").is_none());
}

#[tokio::test]
async fn enrich_reports_gate_and_estimate_changes() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let date = today();
    // A zero min_interval and TTLs make every event call, so each gets the latest status.
    let config = EnrichConfig {
        min_interval: Duration::ZERO,
        ttl_near: Duration::ZERO,
        ttl_far: Duration::ZERO,
        ttl_final: Duration::ZERO,
        ..config(Duration::from_secs(5))
    };
    let api = api(&standin, CallLimits { max_calls_per_second: 100, ..CallLimits::default() });

    assert!(standin.set_gate("LH400", date, "B20"));
    let enricher = Enricher::new(config.clone(), api.clone(), state.path());
    let mut first = event("LH400", date, "New Gate Information");
    enricher.enrich(&mut first).await;
    assert_eq!(first.status.as_ref().and_then(|s| s.departure.gate.as_deref()), Some("B20"));

    assert!(standin.set_gate("LH400", date, "B44"));
    assert!(standin.set_departure_delay("LH400", date, 25));
    // A new enricher on the same state directory reads the status saved before the restart.
    enricher.save().await.expect("statuses saved");
    drop(enricher);
    let enricher = Enricher::new(config, api, state.path());
    let mut second = event("LH400", date, "New Gate Information");
    enricher.enrich(&mut second).await;

    let change = |field: &str| second.changes.iter().find(|change| change.field == field).cloned();
    let gate = change("departure.gate").expect("gate change");
    assert_eq!(gate.old.as_deref(), Some("B20"));
    assert_eq!(gate.new.as_deref(), Some("B44"));
    let estimate = change("departure.estimated_local").expect("estimated departure change");
    assert_eq!(estimate.old, None);
    assert_eq!(estimate.new, Some(format!("{date}T14:20")));
    let time_status = change("departure.time_status").expect("time status change");
    assert_eq!(time_status.new.as_deref(), Some("DL"));
    assert!(change("departure.airport").is_none());

    let line = flupd::sink::stdout::format_text(&second);
    assert!(line.contains("gate B20 → B44"), "{line}");
    assert!(line.contains("ETD 14:20 (+25 min)"), "{line}");
}

#[tokio::test]
async fn enrich_cache_hit_makes_no_call() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let api = api(&standin, CallLimits::default());
    warm_up(&api).await;
    let enricher = Enricher::new(config(Duration::from_secs(5)), api, state.path());

    let mut first = event("LH400", today(), "New Estimated Departure");
    enricher.enrich(&mut first).await;
    assert!(first.status.is_some(), "{:?}", first.enrichment_error);
    assert_eq!(standin.flight_status_calls(), 1);

    for _ in 0..5 {
        let mut again = event("LH400", today(), "New Gate Information");
        enricher.enrich(&mut again).await;
        assert_eq!(again.status, first.status);
        assert!(again.changes.is_empty());
    }
    assert_eq!(standin.flight_status_calls(), 1, "cache hits must not call the API");
    assert_eq!(enricher.stats().cache_hits.load(std::sync::atomic::Ordering::Relaxed), 5);
}

#[tokio::test]
async fn enrich_reports_not_found_and_invalid_response() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let api = api(&standin, CallLimits { max_calls_per_second: 100, ..CallLimits::default() });
    let enricher = Enricher::new(config(Duration::from_secs(5)), api, state.path());

    let mut missing = event("LH9999", today(), "Cancelled");
    enricher.enrich(&mut missing).await;
    let error = missing.enrichment_error.as_ref().expect("enrichment error");
    assert_eq!(error.reason, EnrichmentReason::NotFound);
    assert!(error.detail.contains("HTTP 404"), "{}", error.detail);
    assert!(error.detail.contains("/v1/operations/flightstatus/LH9999/"), "{}", error.detail);
    assert_eq!(missing.status, None);

    // A second event for the flight reuses the 404 instead of calling again.
    let calls = standin.flight_status_calls();
    let mut again = event("LH9999", today(), "Cancelled");
    enricher.enrich(&mut again).await;
    assert_eq!(again.enrichment_error.map(|error| error.reason), Some(EnrichmentReason::NotFound));
    assert_eq!(standin.flight_status_calls(), calls);

    let cases = [
        ("LH400", "<html>maintenance</html>", "not JSON"),
        ("LX1612", r#"{"FlightStatusResource":{"Flights":{}}}"#, "Flight is missing"),
        ("OS87", r#"{"FlightStatusResource":{"Flights":{"Flight":{"Departure":{}}}}}"#, "AirportCode is missing"),
    ];
    for (flight, body, expected) in cases {
        standin.set_flight_status_response(flight, today(), 200, body);
        let mut malformed = event(flight, today(), "Departed");
        enricher.enrich(&mut malformed).await;
        let error = malformed.enrichment_error.as_ref().expect("enrichment error");
        assert_eq!(error.reason, EnrichmentReason::InvalidResponse, "{flight}");
        assert!(error.detail.contains(expected), "{flight}: {}", error.detail);
    }

    let processing_error = r#"{"ProcessingErrors":{"ProcessingError":[{"@RetryIndicator":"false","Type":"BR","Code":"400","Description":"Invalid flight number"}]}}"#;
    standin.set_flight_status_response("EW586", today(), 400, processing_error);
    let mut failing = event("EW586", today(), "Departed");
    enricher.enrich(&mut failing).await;
    let error = failing.enrichment_error.as_ref().expect("enrichment error");
    assert_eq!(error.reason, EnrichmentReason::ApiError);
    assert!(error.detail.contains("HTTP 400: 400 Invalid flight number"), "{}", error.detail);
}

#[tokio::test]
async fn enrich_selects_leg_of_multi_leg_flight() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let api = api(&standin, CallLimits::default());
    let enricher = Enricher::new(config(Duration::from_secs(5)), api, state.path());
    let date = today();

    let mut gate = event("LH1", date, "New Gate Information");
    enricher.enrich(&mut gate).await;
    let status = gate.status.as_ref().expect("status");
    assert_eq!(status.legs, 2);
    assert_eq!((status.departure.airport.as_str(), status.arrival.airport.as_str()), ("FRA", "MUC"));

    // After the first leg departed, a departure update is about the second leg and an arrival
    // estimate about the first. Both come from one cached response, fetched before the change,
    // so this uses a new enricher.
    standin.modify_flight("LH1", date, |flight| flight.apply_code("MVT AD"));
    let enricher = Enricher::new(config(Duration::from_secs(5)), enricher_api(&standin), state.path());
    let mut estimate = event("LH1", date, "New Estimated Departure");
    enricher.enrich(&mut estimate).await;
    assert_eq!(estimate.status.as_ref().map(|s| s.departure.airport.as_str()), Some("MUC"));
    let mut arrival = event("LH1", date, "New Estimated Arrival");
    enricher.enrich(&mut arrival).await;
    assert_eq!(arrival.status.as_ref().map(|s| s.arrival.airport.as_str()), Some("MUC"));
    let mut departed = event("LH1", date, "Departed");
    enricher.enrich(&mut departed).await;
    assert_eq!(departed.status.as_ref().map(|s| s.departure.airport.as_str()), Some("FRA"));
}

fn enricher_api(standin: &Standin) -> Arc<LufthansaApi> {
    api(standin, CallLimits::default())
}

#[tokio::test]
async fn enrich_rate_limit_pauses_calls() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let limits =
        CallLimits { max_calls_per_second: 100, rate_limit_pause: Duration::from_secs(2), ..CallLimits::default() };
    let api = api(&standin, limits);
    warm_up(&api).await;
    let enricher = Enricher::new(config(Duration::from_secs(5)), api.clone(), state.path());

    standin.force_rate_limit(1);
    let mut limited = event("LH400", today(), "Departed");
    enricher.enrich(&mut limited).await;
    assert_eq!(limited.enrichment_error.as_ref().map(|error| error.reason), Some(EnrichmentReason::RateLimited));
    assert_eq!(standin.flight_status_calls(), 1);
    let paused_until = api.limiter().paused_until().expect("calls are paused");

    // During the pause no call reaches the API, for any flight, and the token is not renewed.
    let tokens = standin.token_calls();
    for flight in ["LH400", "LX18", "OS87"] {
        let mut event = event(flight, today(), "Departed");
        enricher.enrich(&mut event).await;
        assert_eq!(event.enrichment_error.as_ref().map(|error| error.reason), Some(EnrichmentReason::RateLimited));
        assert!(event.enrichment_error.as_ref().unwrap().detail.contains("paused"), "{:?}", event.enrichment_error);
    }
    assert_eq!(standin.flight_status_calls(), 1, "no calls during the pause");
    assert_eq!(standin.token_calls(), tokens);

    tokio::time::sleep_until(paused_until).await;
    let mut after = event("LH400", today(), "Departed");
    enricher.enrich(&mut after).await;
    assert!(after.status.is_some(), "{:?}", after.enrichment_error);
    assert_eq!(standin.flight_status_calls(), 2);
}

#[tokio::test]
async fn enrich_burst_stays_within_budget_and_max_wait() {
    // The stand-in allows 5 calls per second, as users report Lufthansa does; flupd's default
    // budget is 1 per second.
    let standin = standin(Some(5)).await;
    let state = tempfile::tempdir().unwrap();
    let api = api(&standin, CallLimits::default());
    warm_up(&api).await;
    let max_wait = Duration::from_millis(1500);
    let enricher = Enricher::new(config(max_wait), api.clone(), state.path());
    let flights = ["LH400", "LH2015", "LH1", "LX18", "LX1612", "OS87", "OS111", "EW586", "EW9442", "AZ610"];

    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..100 {
        let enricher = enricher.clone();
        let flight = flights[index % flights.len()];
        tasks.push(tokio::spawn(async move {
            // Spread the 100 events over one second.
            tokio::time::sleep(Duration::from_millis(index as u64 * 10)).await;
            let mut event = event(flight, today(), "New Estimated Arrival");
            let begun = Instant::now();
            enricher.enrich(&mut event).await;
            (event, begun.elapsed())
        }));
    }
    let mut enriched = 0;
    for task in tasks {
        let (event, elapsed) = task.await.unwrap();
        // A little scheduling slack on a loaded machine.
        assert!(elapsed <= max_wait + Duration::from_millis(200), "held {elapsed:?}");
        assert!(event.status.is_some() != event.enrichment_error.is_some(), "{event:?}");
        if let Some(error) = &event.enrichment_error {
            assert!(matches!(error.reason, EnrichmentReason::BudgetExhausted | EnrichmentReason::Timeout), "{error:?}");
        } else {
            enriched += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64().ceil() as usize;
    let calls = standin.flight_status_calls();
    assert!(calls >= 1, "at least one call");
    assert!(calls <= seconds + 1, "{calls} calls in {seconds}s exceed 1 call per second");
    assert!(enriched >= calls, "every call's response serves the events of its flight: {enriched} < {calls}");
    assert_eq!(api.limiter().paused_until(), None, "the stand-in's rate limit was never hit");
}

#[tokio::test]
async fn enrich_concurrent_events_share_one_call() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    let api = api(&standin, CallLimits::default());
    warm_up(&api).await;
    let enricher = Enricher::new(config(Duration::from_secs(5)), api, state.path());

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let enricher = enricher.clone();
            tokio::spawn(async move {
                let mut event = event("OS111", today(), "New Gate Information");
                enricher.enrich(&mut event).await;
                event
            })
        })
        .collect();
    for task in tasks {
        let event = task.await.unwrap();
        assert!(event.status.is_some(), "{:?}", event.enrichment_error);
    }
    assert_eq!(standin.flight_status_calls_for("OS111", today()), 1);
}

#[tokio::test]
async fn enrich_slow_response_times_out_then_fills_cache() {
    let standin = standin(None).await;
    let state = tempfile::tempdir().unwrap();
    // Room for the token call and the flight status call within max_wait.
    let api = api(&standin, CallLimits { max_calls_per_second: 100, ..CallLimits::default() });
    warm_up(&api).await;
    let max_wait = Duration::from_millis(300);
    let enricher = Enricher::new(config(max_wait), api, state.path());
    standin.set_flight_status_delay(Duration::from_millis(600));

    let begun = Instant::now();
    let mut slow = event("AZ610", today(), "Departed");
    enricher.enrich(&mut slow).await;
    assert!(begun.elapsed() < max_wait + Duration::from_millis(200), "held {:?}", begun.elapsed());
    let error = slow.enrichment_error.as_ref().expect("enrichment error");
    assert_eq!(error.reason, EnrichmentReason::Timeout);
    assert!(error.detail.contains("enrich.max_wait"), "{}", error.detail);

    // The call goes on after the timeout, and its response serves the next event.
    common::wait_for(Duration::from_secs(10), "the slow call to finish", || {
        enricher.stats().calls.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let mut next = event("AZ610", today(), "Departed");
    enricher.enrich(&mut next).await;
    assert!(next.status.is_some(), "{:?}", next.enrichment_error);
    assert_eq!(standin.flight_status_calls_for("AZ610", today()), 1);
}
