//! Deterministic sample flight updates in the documented and the live-observed payload shapes.

use chrono::{Duration as DateDuration, NaiveDate, NaiveTime};
use serde::Serialize;

/// One kind of update: the documented `Update.Code`, the documented `Update.Message`, and the
/// message text to use in the live-observed shape.
struct UpdateKind {
    code: &'static str,
    documented_message: &'static str,
    observed_message: &'static str,
}

/// The ten documented kinds. The observed texts are examples of how live messages differ from
/// the documented ones ("Flight Cancelled" has been seen next to "Cancelled"). The other
/// observed texts are assumptions, not recordings.
const KINDS: [UpdateKind; 10] = [
    UpdateKind {
        code: "MVT ED",
        documented_message: "New Estimated Departure",
        observed_message: "New Estimated Departure",
    },
    UpdateKind {
        code: "MVT EA",
        documented_message: "New Estimated Arrival",
        observed_message: "New Estimated Arrival",
    },
    UpdateKind { code: "MVT AD", documented_message: "Departed", observed_message: "Flight Departed" },
    UpdateKind { code: "MVT AA", documented_message: "Arrived", observed_message: "Flight Arrived" },
    UpdateKind { code: "Y", documented_message: "New Gate Information", observed_message: "New Gate Information" },
    UpdateKind { code: "ASM CNL", documented_message: "Cancelled", observed_message: "Flight Cancelled" },
    UpdateKind { code: "ASM NEW RIN", documented_message: "Reinstated", observed_message: "Reinstated" },
    UpdateKind { code: "ASM RPL DIV", documented_message: "Diverted", observed_message: "Flight Diverted" },
    UpdateKind { code: "ASM RPL RRT", documented_message: "Rerouted", observed_message: "Rerouted" },
    UpdateKind { code: "ASM TIM", documented_message: "Schedule Change", observed_message: "Schedule Change" },
];

/// Flights as (carrier, number, scheduled departure time). Numbers have no leading zeros,
/// as in topics and flight status links. The count (11) is coprime to the number of kinds,
/// so consecutive samples pair each flight with every kind.
pub(crate) const FLIGHTS: [(&str, u32, &str); 11] = [
    ("LH", 400, "13:55"),
    ("LH", 2015, "07:10"),
    ("LH", 1, "09:40"),
    ("LX", 18, "12:45"),
    ("LX", 1612, "17:20"),
    ("OS", 87, "10:15"),
    ("OS", 111, "06:45"),
    ("EW", 586, "18:05"),
    ("EW", 9442, "08:30"),
    ("AZ", 610, "11:05"),
    ("AZ", 1781, "20:50"),
];

/// Payload shapes. Index 0 is the documented shape; the others are variants of the
/// live-observed shape, which differ in `Meta.Link`.
const SHAPE_COUNT: u64 = 4;

/// Number of consecutive samples, starting at any multiple of it, that contain every kind in
/// every shape.
pub const SAMPLE_CYCLE: u64 = KINDS.len() as u64 * SHAPE_COUNT;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Notification {
    update: Update,
    meta: Meta,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Update {
    #[serde(skip_serializing_if = "Option::is_none")]
    flight_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_flight_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_flight_time: Option<String>,
    timestamp: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

#[derive(Serialize)]
struct Meta {
    #[serde(rename = "@Version")]
    version: String,
    #[serde(rename = "Link", skip_serializing_if = "Option::is_none")]
    link: Option<Links>,
}

/// `Meta.Link`, which live messages send as an array or as a bare object.
#[derive(Serialize)]
#[serde(untagged)]
enum Links {
    Array(Vec<Link>),
    Object(Link),
}

#[derive(Serialize)]
struct Link {
    #[serde(rename = "@Href")]
    href: String,
    #[serde(rename = "@Rel")]
    rel: String,
}

/// Generates the `n`-th sample update as `(topic, payload)`.
///
/// The result depends only on `n` and `today`, so tests can predict what the publisher sends.
/// Kind, flight, date (`today` or the day after) and shape vary with `n`. `n % 10` selects the
/// kind and `(n / 10) % 4` the shape. Shape 0 is the documented one, and shapes 1 to 3 are the
/// live-observed one with `Meta.Link` as an array, missing, or a bare object. So any
/// [`SAMPLE_CYCLE`] consecutive samples starting at a multiple of it cover every kind in every
/// shape.
pub fn sample_update(n: u64, today: NaiveDate) -> (String, Vec<u8>) {
    let kind = &KINDS[(n % KINDS.len() as u64) as usize];
    let (carrier, number, scheduled_time) = FLIGHTS[(n % FLIGHTS.len() as u64) as usize];
    let shape = (n / KINDS.len() as u64) % SHAPE_COUNT;
    let date = if (n / 3).is_multiple_of(2) { today } else { today + DateDuration::days(1) };

    let flight = format!("{carrier}{number}");
    let date_text = date.format("%Y-%m-%d").to_string();
    let topic = format!("prd/FlightUpdate/{carrier}/{flight}/{date_text}");

    // Spread the timestamps over the day so that consecutive samples differ.
    let seconds_into_day = (6 * 3600 + n * 37) % 86_400;
    let timestamp = today.and_time(NaiveTime::MIN) + DateDuration::seconds(seconds_into_day as i64);
    let link = Link {
        href: format!("https://api.lufthansa.com/v1/operations/flightstatus/{flight}/{date_text}"),
        rel: "related".to_owned(),
    };

    let notification = if shape == 0 {
        Notification {
            update: Update {
                flight_number: None,
                scheduled_flight_date: None,
                scheduled_flight_time: None,
                timestamp: timestamp.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                message: kind.documented_message.to_owned(),
                code: Some(kind.code.to_owned()),
            },
            meta: Meta { version: "1.0.0".to_owned(), link: Some(Links::Array(vec![link])) },
        }
    } else {
        let link = match shape {
            1 => Some(Links::Array(vec![link])),
            2 => None,
            _ => Some(Links::Object(link)),
        };
        Notification {
            update: Update {
                flight_number: Some(flight),
                scheduled_flight_date: Some(date_text),
                scheduled_flight_time: Some(scheduled_time.to_owned()),
                timestamp: timestamp.format("%Y-%m-%dT%H:%M:%S").to_string(),
                message: kind.observed_message.to_owned(),
                code: None,
            },
            meta: Meta { version: "1.0.0".to_owned(), link },
        }
    };

    // Serializing these structs cannot fail: every field is a string or a container of strings.
    let payload = serde_json::to_vec(&notification).expect("sample notification serializes");
    (topic, payload)
}

/// Returns the flight, date and documented `Update.Code` of the `n`-th sample update, the
/// change the stand-in's flight status applies when the sample is published.
pub(crate) fn sample_change(n: u64, today: NaiveDate) -> (String, NaiveDate, &'static str) {
    let kind = &KINDS[(n % KINDS.len() as u64) as usize];
    let (carrier, number, _) = FLIGHTS[(n % FLIGHTS.len() as u64) as usize];
    let date = if (n / 3).is_multiple_of(2) { today } else { today + DateDuration::days(1) };
    (format!("{carrier}{number}"), date, kind.code)
}

/// Returns the documented `Update.Code` of every kind the samples use.
pub fn sample_codes() -> Vec<&'static str> {
    KINDS.iter().map(|kind| kind.code).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 7, 22).unwrap()
    }

    fn parsed(n: u64) -> (String, Value) {
        let (topic, payload) = sample_update(n, today());
        (topic, serde_json::from_slice(&payload).unwrap())
    }

    #[test]
    fn sample_change_matches_topic_and_code() {
        for n in 0..SAMPLE_CYCLE {
            let (topic, value) = parsed(n);
            let (flight, date, code) = sample_change(n, today());
            assert!(topic.ends_with(&format!("/{flight}/{date}")), "sample {n}: {topic}");
            let kind = KINDS.iter().find(|kind| kind.code == code).unwrap();
            let message = value["Update"]["Message"].as_str().unwrap();
            assert!(message == kind.documented_message || message == kind.observed_message, "sample {n}: {message}");
        }
    }

    #[test]
    fn sample_is_deterministic() {
        assert_eq!(sample_update(7, today()), sample_update(7, today()));
        assert_ne!(sample_update(7, today()), sample_update(8, today()));
    }

    #[test]
    fn documented_shape_matches_documentation() {
        let (topic, value) = parsed(0);
        assert_eq!(topic, "prd/FlightUpdate/LH/LH400/2026-07-22");
        assert_eq!(value["Update"]["Code"], "MVT ED");
        assert_eq!(value["Update"]["Message"], "New Estimated Departure");
        assert_eq!(value["Update"]["Timestamp"], "2026-07-22T06:00:00Z");
        assert_eq!(value["Meta"]["@Version"], "1.0.0");
        assert_eq!(
            value["Meta"]["Link"],
            serde_json::json!([{
                "@Href": "https://api.lufthansa.com/v1/operations/flightstatus/LH400/2026-07-22",
                "@Rel": "related"
            }])
        );
        assert!(value["Update"].get("FlightNumber").is_none());
    }

    #[test]
    fn cycle_covers_every_kind_and_shape() {
        let mut documented_codes = HashSet::new();
        let mut observed_messages = HashSet::new();
        let mut link_forms = HashSet::new();
        for n in 0..SAMPLE_CYCLE {
            let (_, value) = parsed(n);
            let update = &value["Update"];
            let timestamp = update["Timestamp"].as_str().unwrap();
            match update.get("Code") {
                Some(code) => {
                    documented_codes.insert(code.as_str().unwrap().to_owned());
                    assert!(timestamp.ends_with('Z'), "sample {n}: {timestamp}");
                }
                None => {
                    observed_messages.insert(update["Message"].as_str().unwrap().to_owned());
                    assert!(!timestamp.ends_with('Z'), "sample {n}: {timestamp}");
                    assert!(update["FlightNumber"].is_string(), "sample {n}");
                    assert!(update["ScheduledFlightDate"].is_string(), "sample {n}");
                    assert!(update["ScheduledFlightTime"].is_string(), "sample {n}");
                    let form = match value["Meta"].get("Link") {
                        None => "missing",
                        Some(Value::Array(_)) => "array",
                        Some(Value::Object(_)) => "object",
                        Some(other) => panic!("sample {n}: unexpected Link {other}"),
                    };
                    link_forms.insert(form);
                }
            }
        }
        let expected_codes: HashSet<String> = sample_codes().into_iter().map(str::to_owned).collect();
        assert_eq!(documented_codes, expected_codes);
        assert_eq!(observed_messages.len(), KINDS.len());
        assert!(observed_messages.contains("Flight Cancelled"));
        assert_eq!(link_forms, HashSet::from(["missing", "array", "object"]));
    }

    #[test]
    fn topics_cover_carriers_and_two_dates() {
        let mut carriers = HashSet::new();
        let mut dates = HashSet::new();
        for n in 0..SAMPLE_CYCLE {
            let (topic, _) = sample_update(n, today());
            let parts: Vec<&str> = topic.split('/').collect();
            assert_eq!(parts.len(), 5, "topic {topic}");
            assert_eq!(&parts[..2], ["prd", "FlightUpdate"], "topic {topic}");
            let (carrier, number) = parts[3].split_at(2);
            assert_eq!(carrier, parts[2], "topic {topic}");
            assert!(!number.starts_with('0'), "topic {topic}");
            assert!(number.parse::<u32>().is_ok(), "topic {topic}");
            carriers.insert(parts[2].to_owned());
            dates.insert(parts[4].to_owned());
        }
        assert_eq!(carriers, HashSet::from(["LH", "LX", "OS", "EW", "AZ"].map(str::to_owned)));
        assert_eq!(dates, HashSet::from(["2026-07-22".to_owned(), "2026-07-23".to_owned()]));
    }
}
