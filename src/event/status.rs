//! The flight status an event carries after enrichment, the fields that
//! changed since the previous status, and why enrichment failed.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

/// The status of one flight leg from Lufthansa's Flight Status API, in
/// normalised form: codes as text even where the API sent numbers, times
/// parsed, and missing blocks as absent fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlightStatus {
    pub departure: StatusEndpoint,
    pub arrival: StatusEndpoint,
    /// The carrier and number the flight is sold under, such as `LH 400`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketing_carrier: Option<CarrierFlight>,
    /// The carrier and number that operates the flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_carrier: Option<CarrierFlight>,
    /// IATA aircraft type code, such as `74H`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aircraft_code: Option<String>,
    /// Aircraft registration, such as `DABYA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aircraft_registration: Option<String>,
    /// `FlightStatus`, such as `DP` for departed or `CD` for cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_status: Option<StatusCode>,
    /// Number of legs the API returned for this flight and date. The status
    /// describes one of them, chosen as `docs/events.md` explains.
    pub legs: usize,
}

/// Departure or arrival of one leg.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusEndpoint {
    /// IATA airport code, such as `FRA`.
    pub airport: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_local: Option<NaiveDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_utc: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_local: Option<NaiveDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_utc: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_local: Option<NaiveDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_utc: Option<DateTime<Utc>>,
    /// `TimeStatus`, such as `DL` for delayed or `OT` for on time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_status: Option<StatusCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

/// A status code and the meaning the API gives for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCode {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

/// An airline and flight number, such as `LH` and `400`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierFlight {
    pub airline: String,
    pub flight_number: String,
}

impl fmt::Display for CarrierFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.airline, self.flight_number)
    }
}

/// One field that differs from the previous status of the same flight, date
/// and departure airport. Values are shown as text; null means absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The field's path in `status`, such as `departure.gate`.
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The reason an event has no `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichmentError {
    pub reason: EnrichmentReason,
    /// A description of the failure for people, with the URL but never the token.
    pub detail: String,
}

/// The kind of enrichment failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrichmentReason {
    /// Enrichment is switched off, or the event has no flight and date.
    Disabled,
    /// The call budget allowed no call within `enrich.max_wait`.
    BudgetExhausted,
    /// Lufthansa responded with a rate limit, now or recently, so calls are
    /// paused.
    RateLimited,
    /// The flight does not operate on that date (HTTP 404).
    NotFound,
    /// Any other failed call: HTTP error, connection failure, rejected key.
    ApiError,
    /// No response within `enrich.max_wait`.
    Timeout,
    /// The response is not a Flight Status response flupd can read.
    InvalidResponse,
}

impl EnrichmentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrichmentReason::Disabled => "disabled",
            EnrichmentReason::BudgetExhausted => "budget_exhausted",
            EnrichmentReason::RateLimited => "rate_limited",
            EnrichmentReason::NotFound => "not_found",
            EnrichmentReason::ApiError => "api_error",
            EnrichmentReason::Timeout => "timeout",
            EnrichmentReason::InvalidResponse => "invalid_response",
        }
    }
}

impl fmt::Display for EnrichmentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FlightStatus {
    /// Lists every compared field with its value as text, in a fixed order.
    pub fn fields(&self) -> Vec<(String, Option<String>)> {
        let mut fields = Vec::new();
        for (side, endpoint) in [("departure", &self.departure), ("arrival", &self.arrival)] {
            let local = |time: &Option<NaiveDateTime>| time.map(|t| t.format("%Y-%m-%dT%H:%M").to_string());
            let utc = |time: &Option<DateTime<Utc>>| time.map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string());
            let entries = [
                ("airport", Some(endpoint.airport.clone())),
                ("scheduled_local", local(&endpoint.scheduled_local)),
                ("scheduled_utc", utc(&endpoint.scheduled_utc)),
                ("estimated_local", local(&endpoint.estimated_local)),
                ("estimated_utc", utc(&endpoint.estimated_utc)),
                ("actual_local", local(&endpoint.actual_local)),
                ("actual_utc", utc(&endpoint.actual_utc)),
                ("time_status", endpoint.time_status.as_ref().map(|status| status.code.clone())),
                ("terminal", endpoint.terminal.clone()),
                ("gate", endpoint.gate.clone()),
            ];
            for (name, value) in entries {
                fields.push((format!("{side}.{name}"), value));
            }
        }
        fields.push(("marketing_carrier".to_owned(), self.marketing_carrier.as_ref().map(ToString::to_string)));
        fields.push(("operating_carrier".to_owned(), self.operating_carrier.as_ref().map(ToString::to_string)));
        fields.push(("aircraft_code".to_owned(), self.aircraft_code.clone()));
        fields.push(("aircraft_registration".to_owned(), self.aircraft_registration.clone()));
        fields.push(("flight_status".to_owned(), self.flight_status.as_ref().map(|status| status.code.clone())));
        fields
    }

    /// Lists the fields that differ from `previous`, with both values.
    pub fn changes_since(&self, previous: &FlightStatus) -> Vec<Change> {
        previous
            .fields()
            .into_iter()
            .zip(self.fields())
            .filter(|((_, old), (_, new))| old != new)
            .map(|((field, old), (_, new))| Change { field, old, new })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_changes_list_only_differences() {
        let mut old = FlightStatus::default();
        old.departure.airport = "FRA".into();
        old.departure.gate = Some("B20".into());
        let mut new = old.clone();
        new.departure.gate = Some("B44".into());
        new.departure.estimated_local = NaiveDateTime::parse_from_str("2026-07-22T14:05", "%Y-%m-%dT%H:%M").ok();

        let changes = new.changes_since(&old);
        assert_eq!(
            changes,
            vec![
                Change { field: "departure.estimated_local".into(), old: None, new: Some("2026-07-22T14:05".into()) },
                Change { field: "departure.gate".into(), old: Some("B20".into()), new: Some("B44".into()) },
            ]
        );
        assert!(new.changes_since(&new).is_empty());
    }
}
