//! Timestamps: always UTC, always rendered as RFC 3339 with a `Z` suffix, as
//! the seed contract shows (`2024-03-20T10:30:00Z`).

use chrono::{DateTime, SecondsFormat, Utc};

pub type Timestamp = DateTime<Utc>;

pub fn now() -> Timestamp {
    // Millisecond precision is what we persist; truncating here keeps a value
    // read back from the database equal to the one we wrote.
    let t = Utc::now();
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

pub fn rfc3339(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn rfc3339_opt(t: &Option<Timestamp>) -> Option<String> {
    t.as_ref().map(rfc3339)
}
