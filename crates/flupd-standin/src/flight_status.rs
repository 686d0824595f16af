//! The stand-in's Flight Status endpoint: a status per flight and date that evolves with the
//! sample updates the publisher sends, in the shapes Lufthansa's API really returns.
//!
//! The responses include the quirks flupd must survive: `Flight` is an object for one leg and an
//! array for several (LH1 has two legs), LH2015 sends `Terminal.Name`, `Gate` and
//! `FlightNumber` as JSON numbers, LX18 has no UTC time blocks, and flights the stand-in does
//! not know get 404 with a `ProcessingErrors` body.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{Duration as TimeDelta, NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::{Value, json};
use tokio::time::Instant;

/// One leg of a route: departure airport and its UTC offset in hours, arrival airport and
/// offset, departure time (`None` for the flight's scheduled time) and block time in minutes.
struct RouteLeg {
    from: &'static str,
    from_offset: i64,
    to: &'static str,
    to_offset: i64,
    departs: Option<&'static str>,
    minutes: i64,
}

/// How a flight's responses differ from the documented shape.
#[derive(Clone, Copy, Debug, Default)]
struct Quirks {
    /// `Terminal.Name`, `Terminal.Gate` and `FlightNumber` as JSON numbers.
    numbers: bool,
    /// No `...TimeUTC` blocks.
    no_utc: bool,
}

/// Returns the route, quirks and aircraft type of a sample flight, keyed as in topics.
fn route(flight: &str) -> Option<(Vec<RouteLeg>, Quirks, &'static str)> {
    let leg = |from, from_offset, to, to_offset, departs, minutes| RouteLeg {
        from,
        from_offset,
        to,
        to_offset,
        departs,
        minutes,
    };
    let plain = Quirks::default();
    let (legs, quirks, aircraft) = match flight {
        "LH400" => (vec![leg("FRA", 2, "JFK", -4, None, 520)], plain, "74H"),
        "LH2015" => (vec![leg("MUC", 2, "CDG", 2, None, 95)], Quirks { numbers: true, ..plain }, "320"),
        "LH1" => (vec![leg("FRA", 2, "MUC", 2, None, 55), leg("MUC", 2, "EWR", -4, Some("11:30"), 550)], plain, "359"),
        "LX18" => (vec![leg("ZRH", 2, "EWR", -4, None, 540)], Quirks { no_utc: true, ..plain }, "77W"),
        "LX1612" => (vec![leg("ZRH", 2, "VIE", 2, None, 85)], plain, "221"),
        "OS87" => (vec![leg("VIE", 2, "YYZ", -4, None, 570)], plain, "763"),
        "OS111" => (vec![leg("VIE", 2, "FRA", 2, None, 85)], plain, "E95"),
        "EW586" => (vec![leg("DUS", 2, "PMI", 2, None, 140)], plain, "320"),
        "EW9442" => (vec![leg("CGN", 2, "BER", 2, None, 70)], plain, "319"),
        "AZ610" => (vec![leg("FCO", 2, "JFK", -4, None, 620)], plain, "332"),
        "AZ1781" => (vec![leg("FCO", 2, "LIN", 2, None, 70)], plain, "320"),
        _ => return None,
    };
    Some((legs, quirks, aircraft))
}

/// Returns a sample flight's scheduled departure time, as in the sample updates.
fn scheduled_time(flight: &str) -> Option<&'static str> {
    crate::samples::FLIGHTS
        .iter()
        .find(|(carrier, number, _)| format!("{carrier}{number}") == flight)
        .map(|(_, _, time)| *time)
}

#[derive(Clone, Debug)]
struct Side {
    airport: &'static str,
    offset_hours: i64,
    scheduled: NaiveDateTime,
    estimated: Option<NaiveDateTime>,
    actual: Option<NaiveDateTime>,
    terminal: u32,
    gate: Option<String>,
}

#[derive(Clone, Debug)]
struct LegState {
    departure: Side,
    arrival: Side,
}

#[derive(Clone, Debug)]
struct FlightState {
    carrier: String,
    number: String,
    legs: Vec<LegState>,
    quirks: Quirks,
    aircraft: &'static str,
    registration: String,
    /// `FlightStatus.Code`, such as `DP`.
    status: &'static str,
}

impl FlightState {
    fn new(flight: &str, date: NaiveDate) -> Option<Self> {
        let (route, quirks, aircraft) = route(flight)?;
        let departs = scheduled_time(flight)?;
        let split = flight.find(|c: char| c.is_ascii_digit())?;
        let (carrier, number) = flight.split_at(split);
        let digits: u32 = number.parse().ok()?;
        let time = |text: &str| NaiveTime::parse_from_str(text, "%H:%M").ok();

        let mut legs = Vec::new();
        for (index, leg) in route.iter().enumerate() {
            let departure_time = date.and_time(time(leg.departs.unwrap_or(departs))?);
            let arrival_time =
                departure_time + TimeDelta::minutes(leg.minutes) + TimeDelta::hours(leg.to_offset - leg.from_offset);
            let gate_letter = ['A', 'B', 'C', 'Z'][(digits as usize + index) % 4];
            legs.push(LegState {
                departure: Side {
                    airport: leg.from,
                    offset_hours: leg.from_offset,
                    scheduled: departure_time,
                    estimated: None,
                    actual: None,
                    terminal: 1 + digits % 2,
                    gate: Some(format!("{gate_letter}{}", 10 + (digits + index as u32) % 40)),
                },
                arrival: Side {
                    airport: leg.to,
                    offset_hours: leg.to_offset,
                    scheduled: arrival_time,
                    estimated: None,
                    actual: None,
                    terminal: 1,
                    gate: None,
                },
            });
        }
        Some(Self {
            carrier: carrier.to_owned(),
            number: number.to_owned(),
            legs,
            quirks,
            aircraft,
            registration: format!("D-A{}", ["BYA", "IKB", "NMC", "XMD"][digits as usize % 4]),
            status: "NA",
        })
    }

    /// Changes the state as the update with action `code` reports.
    fn apply(&mut self, code: &str) {
        let leg = self.legs.iter_mut().find(|leg| leg.arrival.actual.is_none());
        let Some(leg) = leg else { return };
        match code {
            "MVT ED" => {
                let base = leg.departure.estimated.unwrap_or(leg.departure.scheduled);
                leg.departure.estimated = Some(base + TimeDelta::minutes(5));
            }
            "MVT EA" => {
                let base = leg.arrival.estimated.unwrap_or(leg.arrival.scheduled);
                leg.arrival.estimated = Some(base + TimeDelta::minutes(5));
            }
            "MVT AD" => {
                leg.departure.actual = Some(leg.departure.estimated.unwrap_or(leg.departure.scheduled));
                self.status = "DP";
            }
            "MVT AA" => {
                leg.arrival.actual = Some(leg.arrival.estimated.unwrap_or(leg.arrival.scheduled));
                self.status = "LD";
            }
            "Y" => leg.departure.gate = Some(next_gate(leg.departure.gate.as_deref())),
            "ASM CNL" => self.status = "CD",
            "ASM NEW RIN" => self.status = "NA",
            "ASM RPL DIV" => self.status = "DV",
            "ASM RPL RRT" => self.status = "RT",
            "ASM TIM" => {
                leg.departure.scheduled += TimeDelta::minutes(10);
                leg.arrival.scheduled += TimeDelta::minutes(10);
            }
            _ => {}
        }
    }

    fn to_json(&self) -> Value {
        let legs: Vec<Value> = self.legs.iter().map(|leg| self.leg_json(leg)).collect();
        let flight = if legs.len() == 1 { legs[0].clone() } else { Value::Array(legs) };
        json!({"FlightStatusResource": {"Flights": {"Flight": flight}, "Meta": {"@Version": "1.0.0"}}})
    }

    fn leg_json(&self, leg: &LegState) -> Value {
        let number: Value =
            if self.quirks.numbers { json!(self.number.parse::<u64>().unwrap_or(0)) } else { json!(self.number) };
        let (status, definition) = match self.status {
            "DP" => ("DP", "Flight Departed"),
            "LD" => ("LD", "Flight Landed"),
            "CD" => ("CD", "Flight Cancelled"),
            "DV" => ("DV", "Flight Diverted"),
            "RT" => ("RT", "Flight Rerouted"),
            _ => ("NA", "No status"),
        };
        json!({
            "Departure": self.side_json(&leg.departure),
            "Arrival": self.side_json(&leg.arrival),
            "MarketingCarrier": {"AirlineID": self.carrier, "FlightNumber": number},
            "OperatingCarrier": {"AirlineID": self.carrier, "FlightNumber": number},
            "Equipment": {"AircraftCode": self.aircraft, "AircraftRegistration": self.registration.replace('-', "")},
            "FlightStatus": {"Code": status, "Definition": definition},
        })
    }

    fn side_json(&self, side: &Side) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("AirportCode".into(), json!(side.airport));
        let mut times = vec![("Scheduled", Some(side.scheduled))];
        times.push(("Estimated", side.estimated));
        times.push(("Actual", side.actual));
        for (name, time) in times {
            let Some(time) = time else { continue };
            object.insert(format!("{name}TimeLocal"), json!({"DateTime": time.format("%Y-%m-%dT%H:%M").to_string()}));
            if !self.quirks.no_utc {
                let utc = time - TimeDelta::hours(side.offset_hours);
                object.insert(format!("{name}TimeUTC"), json!({"DateTime": utc.format("%Y-%m-%dT%H:%MZ").to_string()}));
            }
        }
        let reference = side.actual.or(side.estimated);
        let (code, definition) = match reference.map(|time| (time - side.scheduled).num_minutes()) {
            Some(minutes) if minutes > 0 => ("DL", "Flight Delayed"),
            Some(minutes) if minutes < 0 => ("FE", "Flight Early"),
            Some(_) => ("OT", "Flight On Time"),
            None => ("NI", "Next Information"),
        };
        object.insert("TimeStatus".into(), json!({"Code": code, "Definition": definition}));
        let mut terminal = serde_json::Map::new();
        terminal.insert(
            "Name".into(),
            if self.quirks.numbers { json!(side.terminal) } else { json!(side.terminal.to_string()) },
        );
        if let Some(gate) = &side.gate {
            let numeric = gate.parse::<u64>().ok().filter(|_| self.quirks.numbers);
            terminal.insert("Gate".into(), numeric.map_or_else(|| json!(gate), |number| json!(number)));
        }
        object.insert("Terminal".into(), Value::Object(terminal));
        Value::Object(object)
    }
}

/// Returns the next gate at the same letter: `B20` becomes `B21`, and a gate without digits gets `1`.
fn next_gate(gate: Option<&str>) -> String {
    let gate = gate.unwrap_or("A0");
    let split = gate.find(|c: char| c.is_ascii_digit()).unwrap_or(gate.len());
    let (letters, digits) = gate.split_at(split);
    let number: u32 = digits.parse().unwrap_or(0);
    format!("{letters}{}", number + 1)
}

/// The response the endpoint sends for one flight and date instead of its status.
#[derive(Clone, Debug)]
struct Override {
    status: u16,
    body: String,
}

/// The state of the Flight Status endpoint, shared by the handler, the publisher and tests.
pub(crate) struct FlightStatusService {
    flights: Mutex<HashMap<(String, NaiveDate), FlightState>>,
    overrides: Mutex<HashMap<(String, NaiveDate), Override>>,
    calls: AtomicUsize,
    calls_per_flight: Mutex<HashMap<(String, NaiveDate), usize>>,
    /// Arrival times of the requests in the last second, for the rate limit.
    recent: Mutex<VecDeque<Instant>>,
    calls_per_second: Option<u32>,
    /// How many of the next requests get a rate-limit response whatever the rate.
    forced_rate_limits: AtomicUsize,
    delay: Mutex<Duration>,
}

/// The status and body the handler sends.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
}

impl FlightStatusService {
    pub fn new(calls_per_second: Option<u32>) -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
            overrides: Mutex::new(HashMap::new()),
            calls: AtomicUsize::new(0),
            calls_per_flight: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            calls_per_second,
            forced_rate_limits: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn calls_for(&self, flight: &str, date: NaiveDate) -> usize {
        lock(&self.calls_per_flight).get(&(flight.to_owned(), date)).copied().unwrap_or(0)
    }

    pub fn delay(&self) -> Duration {
        *lock(&self.delay)
    }

    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    pub fn force_rate_limit(&self, responses: usize) {
        self.forced_rate_limits.store(responses, Ordering::Relaxed);
    }

    pub fn set_override(&self, flight: &str, date: NaiveDate, status: u16, body: String) {
        lock(&self.overrides).insert((flight.to_owned(), date), Override { status, body });
    }

    /// Applies `change` to the flight's state, creating it first. Returns false for a flight
    /// the stand-in does not know.
    pub fn modify(&self, flight: &str, date: NaiveDate, change: impl FnOnce(&mut FlightStateHandle<'_>)) -> bool {
        let mut flights = lock(&self.flights);
        let key = (flight.to_owned(), date);
        if !flights.contains_key(&key) {
            let Some(state) = FlightState::new(flight, date) else { return false };
            flights.insert(key.clone(), state);
        }
        let state = flights.get_mut(&key).expect("inserted above");
        change(&mut FlightStateHandle { state });
        true
    }

    /// Applies a published sample update to its flight's state.
    pub fn apply_sample(&self, n: u64, today: NaiveDate) {
        let (flight, date, code) = crate::samples::sample_change(n, today);
        self.modify(&flight, date, |handle| handle.state.apply(code));
    }

    /// Answers one request that passed authentication.
    pub fn respond(&self, flight: &str, date_text: &str) -> Reply {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.over_rate() {
            return Reply { status: 403, body: json!({"Error": "Developer Over Rate"}).to_string() };
        }
        let Ok(date) = NaiveDate::parse_from_str(date_text, "%Y-%m-%d") else {
            return processing_error(400, "Invalid date, expected yyyy-MM-dd");
        };
        *lock(&self.calls_per_flight).entry((flight.to_owned(), date)).or_default() += 1;
        if let Some(reply) = lock(&self.overrides).get(&(flight.to_owned(), date)) {
            return Reply { status: reply.status, body: reply.body.clone() };
        }
        let mut flights = lock(&self.flights);
        let key = (flight.to_owned(), date);
        if !flights.contains_key(&key) {
            match FlightState::new(flight, date) {
                Some(state) => flights.insert(key.clone(), state),
                None => return processing_error(404, "Flight not found"),
            };
        }
        Reply { status: 200, body: flights[&key].to_json().to_string() }
    }

    /// Counts this request against the per-second limit and returns whether it exceeds it.
    fn over_rate(&self) -> bool {
        let forced =
            self.forced_rate_limits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1));
        if forced.is_ok() {
            return true;
        }
        let Some(limit) = self.calls_per_second else { return false };
        let mut recent = lock(&self.recent);
        let now = Instant::now();
        while recent.front().is_some_and(|at| *at + Duration::from_secs(1) <= now) {
            recent.pop_front();
        }
        recent.push_back(now);
        recent.len() > limit as usize
    }
}

/// Access to one flight's state for tests.
pub struct FlightStateHandle<'a> {
    state: &'a mut FlightState,
}

impl FlightStateHandle<'_> {
    /// Sets the departure gate of the first leg that has not arrived.
    pub fn set_gate(&mut self, gate: &str) {
        if let Some(leg) = self.state.legs.iter_mut().find(|leg| leg.arrival.actual.is_none()) {
            leg.departure.gate = Some(gate.to_owned());
        }
    }

    /// Sets the estimated departure of the first leg that has not arrived to the scheduled
    /// time plus `minutes`.
    pub fn set_departure_delay(&mut self, minutes: i64) {
        if let Some(leg) = self.state.legs.iter_mut().find(|leg| leg.arrival.actual.is_none()) {
            leg.departure.estimated = Some(leg.departure.scheduled + TimeDelta::minutes(minutes));
        }
    }

    /// Applies the change an update with action `code` (such as `MVT AD`) reports.
    pub fn apply_code(&mut self, code: &str) {
        self.state.apply(code);
    }
}

fn processing_error(status: u16, description: &str) -> Reply {
    let body = json!({"ProcessingErrors": {"ProcessingError": {
        "@RetryIndicator": "false", "Type": "BR", "Code": status.to_string(), "Description": description,
    }}});
    Reply { status, body: body.to_string() }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 7, 22).unwrap()
    }

    fn body(service: &FlightStatusService, flight: &str) -> Value {
        let reply = service.respond(flight, "2026-07-22");
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }

    #[test]
    fn status_has_documented_shape_and_quirks() {
        let service = FlightStatusService::new(None);
        let one = body(&service, "LH400");
        let leg = &one["FlightStatusResource"]["Flights"]["Flight"];
        assert!(leg.is_object());
        assert_eq!(leg["Departure"]["ScheduledTimeLocal"]["DateTime"], "2026-07-22T13:55");
        assert_eq!(leg["Departure"]["ScheduledTimeUTC"]["DateTime"], "2026-07-22T11:55Z");
        assert_eq!(leg["Arrival"]["ScheduledTimeLocal"]["DateTime"], "2026-07-22T16:35");
        assert_eq!(leg["Departure"]["Terminal"]["Name"], "1");

        let numbers = body(&service, "LH2015");
        let leg = &numbers["FlightStatusResource"]["Flights"]["Flight"];
        assert!(leg["Departure"]["Terminal"]["Name"].is_number());
        assert!(leg["MarketingCarrier"]["FlightNumber"].is_number());

        let legs = body(&service, "LH1");
        assert_eq!(legs["FlightStatusResource"]["Flights"]["Flight"].as_array().map(Vec::len), Some(2));

        let no_utc = body(&service, "LX18");
        assert!(no_utc["FlightStatusResource"]["Flights"]["Flight"]["Departure"].get("ScheduledTimeUTC").is_none());

        assert_eq!(service.respond("LH9999", "2026-07-22").status, 404);
        assert_eq!(service.calls(), 5);
        assert_eq!(service.calls_for("LH400", date()), 1);
    }

    #[test]
    fn status_follows_updates() {
        let service = FlightStatusService::new(None);
        let gate = |service: &FlightStatusService| {
            body(service, "LH400")["FlightStatusResource"]["Flights"]["Flight"]["Departure"]["Terminal"]["Gate"].clone()
        };
        let before = gate(&service);
        service.modify("LH400", date(), |flight| flight.apply_code("Y"));
        assert_ne!(gate(&service), before);
        service.modify("LH400", date(), |flight| flight.set_gate("B44"));
        assert_eq!(gate(&service), "B44");
        service.modify("LH400", date(), |flight| flight.apply_code("MVT ED"));
        let leg = &body(&service, "LH400")["FlightStatusResource"]["Flights"]["Flight"];
        assert_eq!(leg["Departure"]["EstimatedTimeLocal"]["DateTime"], "2026-07-22T14:00");
        assert_eq!(leg["Departure"]["TimeStatus"]["Code"], "DL");
    }

    #[test]
    fn status_rate_limit_responds_403() {
        let service = FlightStatusService::new(Some(2));
        assert_eq!(service.respond("LH400", "2026-07-22").status, 200);
        assert_eq!(service.respond("LH400", "2026-07-22").status, 200);
        let reply = service.respond("LH400", "2026-07-22");
        assert_eq!(reply.status, 403);
        assert_eq!(reply.body, r#"{"Error":"Developer Over Rate"}"#);
    }

    #[test]
    fn next_gate_counts_up() {
        assert_eq!(next_gate(Some("B20")), "B21");
        assert_eq!(next_gate(None), "A1");
    }
}
