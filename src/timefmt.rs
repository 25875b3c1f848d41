//! Timestamps: stored as Unix milliseconds, shown as RFC 3339 UTC.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 with millisecond precision, e.g. `2026-11-24T19:15:03.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let t = t
        .replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| ms.to_string())
}

/// Parses a client-supplied instant: RFC 3339, or whole Unix seconds.
pub fn parse_instant_ms(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339_with_millis() {
        let ms = 1_795_000_000_123;
        let s = rfc3339_ms(ms);
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(parse_instant_ms(&s), Some(ms));
    }

    #[test]
    fn accepts_unix_seconds_and_rejects_garbage() {
        assert_eq!(parse_instant_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_instant_ms("yesterday"), None);
        assert_eq!(parse_instant_ms("99999999999999999"), None);
    }
}
