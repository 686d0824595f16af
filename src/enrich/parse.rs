//! Reading a Flight Status response into normalised legs, and choosing the leg
//! an event is about.
//!
//! Lufthansa's responses differ from the documentation: `Flight` is an object
//! for one leg and an array for several, `Terminal.Name`, `FlightNumber` and
//! other codes can be JSON numbers, and the UTC time blocks can be missing.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use crate::event::{CarrierFlight, Event, EventKind, FlightStatus, StatusCode, StatusEndpoint};

/// Parses the body of a Flight Status response into its legs, in the order the
/// API lists them.
pub fn parse_legs(body: &[u8]) -> Result<Vec<FlightStatus>, String> {
    let root: Value = serde_json::from_slice(body).map_err(|error| format!("not JSON: {error}"))?;
    let flight = &root["FlightStatusResource"]["Flights"]["Flight"];
    let items: Vec<&Value> = match flight {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![flight],
        Value::Null => return Err("FlightStatusResource.Flights.Flight is missing".to_owned()),
        _ => return Err("FlightStatusResource.Flights.Flight is neither an object nor an array".to_owned()),
    };
    if items.is_empty() {
        return Err("FlightStatusResource.Flights.Flight is an empty array".to_owned());
    }

    let count = items.len();
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| parse_leg(item, count).map_err(|error| format!("Flight[{index}].{error}")))
        .collect()
}

fn parse_leg(leg: &Value, legs: usize) -> Result<FlightStatus, String> {
    if !leg.is_object() {
        return Err("is not an object".to_owned());
    }
    Ok(FlightStatus {
        departure: parse_endpoint(&leg["Departure"]).map_err(|error| format!("Departure{error}"))?,
        arrival: parse_endpoint(&leg["Arrival"]).map_err(|error| format!("Arrival{error}"))?,
        marketing_carrier: carrier(&leg["MarketingCarrier"]),
        operating_carrier: carrier(&leg["OperatingCarrier"]),
        aircraft_code: text(&leg["Equipment"]["AircraftCode"]),
        aircraft_registration: text(&leg["Equipment"]["AircraftRegistration"]),
        flight_status: status_code(&leg["FlightStatus"]),
        legs,
    })
}

fn parse_endpoint(value: &Value) -> Result<StatusEndpoint, String> {
    if !value.is_object() {
        return Err(" is missing".to_owned());
    }
    let airport = text(&value["AirportCode"]).ok_or_else(|| ".AirportCode is missing".to_owned())?;
    Ok(StatusEndpoint {
        airport,
        scheduled_local: local_time(&value["ScheduledTimeLocal"]),
        scheduled_utc: utc_time(&value["ScheduledTimeUTC"]),
        estimated_local: local_time(&value["EstimatedTimeLocal"]),
        estimated_utc: utc_time(&value["EstimatedTimeUTC"]),
        actual_local: local_time(&value["ActualTimeLocal"]),
        actual_utc: utc_time(&value["ActualTimeUTC"]),
        time_status: status_code(&value["TimeStatus"]),
        terminal: text(&value["Terminal"]["Name"]),
        gate: text(&value["Terminal"]["Gate"]),
    })
}

/// Reads a string or a number as text, because the API sends numbers where
/// it documents strings. Empty strings count as absent.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn status_code(value: &Value) -> Option<StatusCode> {
    Some(StatusCode { code: text(&value["Code"])?, definition: text(&value["Definition"]) })
}

fn carrier(value: &Value) -> Option<CarrierFlight> {
    Some(CarrierFlight { airline: text(&value["AirlineID"])?, flight_number: text(&value["FlightNumber"])? })
}

/// Reads `{"DateTime": "2026-07-22T13:55"}`. A time in another form counts
/// as absent rather than failing the whole response.
fn local_time(block: &Value) -> Option<NaiveDateTime> {
    let text = text(&block["DateTime"])?;
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"].iter().find_map(|format| NaiveDateTime::parse_from_str(&text, format).ok())
}

/// Reads `{"DateTime": "2026-07-22T11:55Z"}`, with or without seconds.
fn utc_time(block: &Value) -> Option<DateTime<Utc>> {
    let text = text(&block["DateTime"])?;
    if let Ok(time) = DateTime::parse_from_rfc3339(&text) {
        return Some(time.with_timezone(&Utc));
    }
    let naive = text.strip_suffix('Z').unwrap_or(&text);
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(naive, format).ok())
        .map(|time| time.and_utc())
}

/// Chooses the leg an event is about, and returns its index.
///
/// 1. Candidates are the legs whose scheduled local departure date is the
///    event's date, because the topic's date is the local departure date of
///    the leg that starts the flight that day. If none match, every leg is a
///    candidate.
/// 2. If the payload names an airport (an unknown `Update` field whose name
///    contains `Airport`, `Station`, `Origin` or `Destination`), candidates
///    departing from or arriving at it are preferred, by departure airport
///    for departure kinds and by arrival airport for arrival kinds.
/// 3. Then the event's kind decides. `departed` takes the last leg that has
///    departed, and `arrived` the last leg that has arrived.
///    `estimated_arrival` and `diverted` take the first leg that has departed
///    but not arrived. Every other kind takes the first leg that has not
///    departed. When no leg fits, the first candidate is taken.
pub fn select_leg(legs: &[FlightStatus], event: &Event) -> usize {
    let mut candidates: Vec<usize> = (0..legs.len())
        .filter(|&index| event.flight_date.is_some_and(|date| departure_date(&legs[index]) == Some(date)))
        .collect();
    if candidates.is_empty() {
        candidates = (0..legs.len()).collect();
    }

    let airports = named_airports(event);
    if !airports.is_empty() {
        let arrival_kind = matches!(event.kind, EventKind::EstimatedArrival | EventKind::Arrived | EventKind::Diverted);
        let matching: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&index| {
                let endpoint = if arrival_kind { &legs[index].arrival } else { &legs[index].departure };
                airports.contains(&endpoint.airport)
            })
            .collect();
        if !matching.is_empty() {
            candidates = matching;
        }
    }

    let departed =
        |index: &usize| legs[*index].departure.actual_local.is_some() || legs[*index].departure.actual_utc.is_some();
    let arrived =
        |index: &usize| legs[*index].arrival.actual_local.is_some() || legs[*index].arrival.actual_utc.is_some();
    let chosen = match event.kind {
        EventKind::Departed => candidates.iter().rev().find(|index| departed(index)),
        EventKind::Arrived => candidates.iter().rev().find(|index| arrived(index)),
        EventKind::EstimatedArrival | EventKind::Diverted => {
            candidates.iter().find(|index| departed(index) && !arrived(index))
        }
        _ => candidates.iter().find(|index| !departed(index)),
    };
    chosen.or(candidates.first()).copied().unwrap_or(0)
}

fn departure_date(leg: &FlightStatus) -> Option<NaiveDate> {
    leg.departure.scheduled_local.map(|time| time.date())
}

/// Airport codes that the payload names in fields flupd does not parse.
fn named_airports(event: &Event) -> Vec<String> {
    event
        .unknown_fields
        .iter()
        .filter(|(key, _)| {
            key.starts_with("Update.")
                && ["Airport", "Station", "Origin", "Destination"].iter().any(|word| key.contains(word))
        })
        .filter_map(|(_, value)| value.as_str())
        .map(|code| code.trim().to_ascii_uppercase())
        .filter(|code| code.len() == 3 && code.chars().all(|c| c.is_ascii_alphabetic()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_LEG: &str = r#"{"FlightStatusResource":{"Flights":{"Flight":{
        "Departure":{"AirportCode":"FRA","ScheduledTimeLocal":{"DateTime":"2026-07-22T13:55"},
            "ScheduledTimeUTC":{"DateTime":"2026-07-22T11:55Z"},"EstimatedTimeLocal":{"DateTime":"2026-07-22T14:20"},
            "EstimatedTimeUTC":{"DateTime":"2026-07-22T12:20Z"},"TimeStatus":{"Code":"DL","Definition":"Flight Delayed"},
            "Terminal":{"Name":1,"Gate":"B44"}},
        "Arrival":{"AirportCode":"JFK","ScheduledTimeLocal":{"DateTime":"2026-07-22T16:35"},
            "TimeStatus":{"Code":"OT"},"Terminal":{"Name":"1"}},
        "MarketingCarrier":{"AirlineID":"LH","FlightNumber":400},
        "OperatingCarrier":{"AirlineID":"LH","FlightNumber":"400"},
        "Equipment":{"AircraftCode":744,"AircraftRegistration":"DABYA"},
        "FlightStatus":{"Code":"NA","Definition":"No status"}}}}}"#;

    fn leg(departure: &str, arrival: &str, date: &str, departed: bool, arrived: bool) -> FlightStatus {
        let time = NaiveDateTime::parse_from_str(&format!("{date}T10:00"), "%Y-%m-%dT%H:%M").ok();
        let mut leg = FlightStatus::default();
        leg.departure.airport = departure.into();
        leg.departure.scheduled_local = time;
        leg.departure.actual_local = time.filter(|_| departed);
        leg.arrival.airport = arrival.into();
        leg.arrival.actual_local = time.filter(|_| arrived);
        leg
    }

    fn event(kind_message: &str, extra: &str) -> Event {
        let payload = format!(r#"{{"Update":{{"Message":"{kind_message}"{extra}}}}}"#);
        Event::from_message("prd/FlightUpdate/LH/LH1/2026-07-22", payload.as_bytes(), 1, Utc::now())
    }

    #[test]
    fn parse_reads_one_leg_with_numbers_as_text() {
        let legs = parse_legs(ONE_LEG.as_bytes()).unwrap();
        assert_eq!(legs.len(), 1);
        let leg = &legs[0];
        assert_eq!(leg.departure.airport, "FRA");
        assert_eq!(leg.departure.terminal.as_deref(), Some("1"));
        assert_eq!(leg.departure.gate.as_deref(), Some("B44"));
        assert_eq!(leg.departure.scheduled_utc.map(|t| t.to_rfc3339()).as_deref(), Some("2026-07-22T11:55:00+00:00"));
        assert_eq!(leg.departure.estimated_local.map(|t| t.to_string()).as_deref(), Some("2026-07-22 14:20:00"));
        assert_eq!(leg.departure.time_status.as_ref().map(|s| s.code.as_str()), Some("DL"));
        assert_eq!(leg.arrival.scheduled_utc, None, "a missing UTC block is absent");
        assert_eq!(leg.arrival.terminal.as_deref(), Some("1"));
        assert_eq!(leg.marketing_carrier.as_ref().map(ToString::to_string).as_deref(), Some("LH400"));
        assert_eq!(leg.operating_carrier.as_ref().map(ToString::to_string).as_deref(), Some("LH400"));
        assert_eq!(leg.aircraft_code.as_deref(), Some("744"));
        assert_eq!(leg.flight_status.as_ref().and_then(|s| s.definition.as_deref()), Some("No status"));
        assert_eq!(leg.legs, 1);
    }

    #[test]
    fn parse_reads_leg_array() {
        let body = r#"{"FlightStatusResource":{"Flights":{"Flight":[
            {"Departure":{"AirportCode":"FRA"},"Arrival":{"AirportCode":"MUC"}},
            {"Departure":{"AirportCode":"MUC"},"Arrival":{"AirportCode":"EWR"}}]}}}"#;
        let legs = parse_legs(body.as_bytes()).unwrap();
        let route: Vec<(&str, &str)> =
            legs.iter().map(|leg| (leg.departure.airport.as_str(), leg.arrival.airport.as_str())).collect();
        assert_eq!(route, [("FRA", "MUC"), ("MUC", "EWR")]);
        assert!(legs.iter().all(|leg| leg.legs == 2));
    }

    #[test]
    fn parse_rejects_malformed_responses() {
        for (body, expected) in [
            ("<html>", "not JSON"),
            ("{}", "FlightStatusResource.Flights.Flight is missing"),
            (r#"{"FlightStatusResource":{"Flights":{"Flight":[]}}}"#, "empty array"),
            (r#"{"FlightStatusResource":{"Flights":{"Flight":"LH400"}}}"#, "neither an object nor an array"),
            (r#"{"FlightStatusResource":{"Flights":{"Flight":{"Arrival":{}}}}}"#, "Flight[0].Departure is missing"),
            (
                r#"{"FlightStatusResource":{"Flights":{"Flight":{"Departure":{},"Arrival":{}}}}}"#,
                "Flight[0].Departure.AirportCode is missing",
            ),
        ] {
            let error = parse_legs(body.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn select_leg_follows_kind_and_date() {
        let legs = [
            leg("FRA", "MUC", "2026-07-21", true, true),
            leg("FRA", "MUC", "2026-07-22", true, false),
            leg("MUC", "EWR", "2026-07-22", false, false),
        ];
        assert_eq!(select_leg(&legs, &event("New Estimated Departure", "")), 2);
        assert_eq!(select_leg(&legs, &event("New Gate Information", "")), 2);
        assert_eq!(select_leg(&legs, &event("Departed", "")), 1);
        assert_eq!(select_leg(&legs, &event("New Estimated Arrival", "")), 1);
        // No leg of that date has arrived, so the first candidate is taken.
        assert_eq!(select_leg(&legs, &event("Arrived", "")), 1);
    }

    #[test]
    fn select_leg_prefers_named_airport() {
        let legs = [leg("FRA", "MUC", "2026-07-22", false, false), leg("MUC", "EWR", "2026-07-22", false, false)];
        assert_eq!(select_leg(&legs, &event("New Gate Information", r#","DepartureAirport":"MUC""#)), 1);
        assert_eq!(select_leg(&legs, &event("New Estimated Arrival", r#","ArrivalAirport":"muc""#)), 0);
        assert_eq!(select_leg(&legs, &event("New Gate Information", r#","DepartureAirport":"CDG""#)), 0);
    }
}
