//! MQTT topic filter rules and the flight topic layout.
//!
//! Flight update topics look like
//! `prd/FlightUpdate/<carrier>/<carrier><number>/<yyyy-mm-dd>`.

use chrono::NaiveDate;

/// The parts of a flight update topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlightTopic {
    pub carrier: String,
    pub flight: String,
    pub date: NaiveDate,
}

impl FlightTopic {
    /// Parses a concrete topic. Returns `None` for any other layout.
    pub fn parse(topic: &str) -> Option<FlightTopic> {
        let mut levels = topic.split('/');
        let (Some(_env), Some("FlightUpdate"), Some(carrier), Some(flight), Some(date), None) =
            (levels.next(), levels.next(), levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return None;
        };
        if carrier.is_empty() || flight.is_empty() {
            return None;
        }
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        Some(FlightTopic { carrier: carrier.to_owned(), flight: flight.to_owned(), date })
    }
}

/// A validated MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

/// Why a topic filter is invalid under MQTT 3.1.1's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("topic filter is empty")]
    Empty,
    #[error("invalid topic filter {0:?}: longer than 65535 bytes")]
    TooLong(String),
    #[error("invalid topic filter {0:?}: contains a NUL character")]
    Nul(String),
    #[error("invalid topic filter {0:?}: `#` must be the last level and stand alone, as in `prd/FlightUpdate/LH/#`")]
    MisplacedHash(String),
    #[error("invalid topic filter {0:?}: `+` must stand alone in its level, as in `prd/FlightUpdate/LH/+/2026-07-22`")]
    MisplacedPlus(String),
}

/// The prefix of every flight update topic.
pub const FLIGHT_UPDATE_PREFIX: &str = "prd/FlightUpdate/";

impl TopicFilter {
    /// Validates a filter: `#` only as a whole last level, `+` only as a
    /// whole level, no NUL, at most 65535 bytes.
    pub fn parse(text: &str) -> Result<TopicFilter, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        if text.len() > 65535 {
            return Err(FilterError::TooLong(text.chars().take(40).collect()));
        }
        if text.contains('\0') {
            return Err(FilterError::Nul(text.to_owned()));
        }
        let levels: Vec<&str> = text.split('/').collect();
        for (index, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
                return Err(FilterError::MisplacedHash(text.to_owned()));
            }
            if level.contains('+') && *level != "+" {
                return Err(FilterError::MisplacedPlus(text.to_owned()));
            }
        }
        Ok(TopicFilter(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns whether the filter could match flight update topics. A filter
    /// such as `other/#` is valid MQTT but receives nothing from this feed.
    pub fn is_flight_update(&self) -> bool {
        let prefix_levels = ["prd", "FlightUpdate"];
        let mut levels = self.0.split('/');
        for expected in prefix_levels {
            match levels.next() {
                Some(level) if level == expected || level == "+" => {}
                Some("#") => return true,
                _ => return false,
            }
        }
        true
    }

    /// Returns whether a concrete topic matches this filter. Topics starting
    /// with `$` match no filter starting with a wildcard.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && (self.0.starts_with('+') || self.0.starts_with('#')) {
            return false;
        }
        let mut filter_levels = self.0.split('/');
        let mut topic_levels = topic.split('/');
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(filter), Some(level)) if filter == level => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_topic_parses_carrier_flight_and_date() {
        let topic = FlightTopic::parse("prd/FlightUpdate/LH/LH400/2026-07-22").unwrap();
        assert_eq!(topic.carrier, "LH");
        assert_eq!(topic.flight, "LH400");
        assert_eq!(topic.date, NaiveDate::from_ymd_opt(2026, 7, 22).unwrap());
    }

    #[test]
    fn flight_topic_rejects_other_layouts() {
        assert_eq!(FlightTopic::parse("prd/FlightUpdate/LH/LH400"), None);
        assert_eq!(FlightTopic::parse("prd/FlightUpdate/LH/LH400/22.07.2026"), None);
        assert_eq!(FlightTopic::parse("prd/Other/LH/LH400/2026-07-22"), None);
        assert_eq!(FlightTopic::parse("prd/FlightUpdate/LH/LH400/2026-07-22/x"), None);
    }

    #[test]
    fn filter_accepts_valid_wildcards() {
        for text in ["prd/FlightUpdate/LH/+/2026-07-22", "prd/FlightUpdate/#", "#", "+", "prd/FlightUpdate/LH/LH400/+"]
        {
            assert!(TopicFilter::parse(text).is_ok(), "{text} rejected");
        }
    }

    #[test]
    fn filter_rejects_misplaced_wildcards() {
        assert!(matches!(TopicFilter::parse("prd/#/LH"), Err(FilterError::MisplacedHash(_))));
        assert!(matches!(TopicFilter::parse("prd/Flight#"), Err(FilterError::MisplacedHash(_))));
        assert!(matches!(TopicFilter::parse("prd/LH+/x"), Err(FilterError::MisplacedPlus(_))));
        assert_eq!(TopicFilter::parse(""), Err(FilterError::Empty));
        assert!(matches!(TopicFilter::parse("a\0b"), Err(FilterError::Nul(_))));
    }

    #[test]
    fn filter_matches_by_mqtt_rules() {
        let cases = [
            ("prd/FlightUpdate/LH/+/2026-07-22", "prd/FlightUpdate/LH/LH400/2026-07-22", true),
            ("prd/FlightUpdate/LH/+/2026-07-22", "prd/FlightUpdate/LX/LX18/2026-07-22", false),
            ("prd/FlightUpdate/#", "prd/FlightUpdate/LH/LH400/2026-07-22", true),
            ("prd/FlightUpdate/#", "prd/FlightUpdate", true),
            ("prd/FlightUpdate/LH/LH400/+", "prd/FlightUpdate/LH/LH400", false),
            ("prd/FlightUpdate/LH/LH400/2026-07-22", "prd/FlightUpdate/LH/LH400/2026-07-22", true),
            ("#", "$SYS/broker/uptime", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(TopicFilter::parse(filter).unwrap().matches(topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn filter_knows_flight_update_scope() {
        assert!(TopicFilter::parse("prd/FlightUpdate/LH/#").unwrap().is_flight_update());
        assert!(TopicFilter::parse("#").unwrap().is_flight_update());
        assert!(TopicFilter::parse("+/FlightUpdate/#").unwrap().is_flight_update());
        assert!(!TopicFilter::parse("tst/FlightUpdate/LH/#").unwrap().is_flight_update());
        assert!(!TopicFilter::parse("prd/Other").unwrap().is_flight_update());
    }
}
