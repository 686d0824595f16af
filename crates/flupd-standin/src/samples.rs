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
    UpdateKind { code: "MVT ED", documented_message: "New Estimated Departure", observed_message: "New Estimated Departure" },
    UpdateKind { code: "MVT EA", documented_message: "New Estimated Arrival", observed_message: "New Estimated Arrival" },
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
const FLIGHTS: [(&str, u32, &str); 11] = [
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
/// Kind, flight, date (`today` or the day after) and shape vary with `n`: `n % 10` selects the
/// kind, `(n / 10) % 4` the shape (0 is the documented shape, 1 to 3 the live-observed one with
/// `Meta.Link` as an array, missing, or a bare object), so any [`SAMPLE_CYCLE`] consecutive
/// samples starting at a multiple of it cover every kind in every shape.
pub fn sample_update(n: u64, today: NaiveDate) -> (String, Vec<u8>) {
    let kind = &KINDS[(n % KINDS.len() as u64) as usize];
    let (carrier, number, scheduled_time) = FLIGHTS[(n % FLIGHTS.len() as u64) as usize];
    let shape = (n / KINDS.len() as u64) % SHAPE_COUNT;
    let date = if (n / 3) % 2 == 0 { today } else { today + DateDuration::days(1) };

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

/// Returns the documented `Update.Code` of every kind the samples use.
pub fn sample_codes() -> Vec<&'static str> {
    KINDS.iter().map(|kind| kind.code).collect()
}
