//! RFC 3339 text ⇄ [`Timestamp`]. Parsing uses the `time` crate; formatting is the domain's
//! own `Display` (UTC, milliseconds).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::Timestamp;

/// Parses `2026-11-01T09:00:00Z` or with an offset (`+02:00`) and fractional seconds.
/// Sub-millisecond digits are floored. Errors say what is wrong, for the client to read.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-01T09:00:00Z ({e})"))?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms)
        .ok()
        .and_then(Timestamp::from_millis)
        .ok_or_else(|| format!("{s:?} is outside 1970-01-01T00:00:00Z..=9999-12-31T23:59:59.999Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_fractions_normalise_to_utc_milliseconds() {
        let t = parse_rfc3339("2026-11-01T11:00:00.1234+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-01T09:00:00.123Z");
    }

    #[test]
    fn malformed_and_out_of_range_times_are_explained() {
        assert!(
            parse_rfc3339("2026-11-01")
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(
            parse_rfc3339("1969-12-31T23:59:59Z")
                .unwrap_err()
                .contains("outside")
        );
    }
}
