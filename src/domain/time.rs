//! Business and ledger time as plain values. The domain never reads a clock: callers pass
//! `now` in. Calendar arithmetic (the UTC month of an instant) is pure integer math.

use std::fmt;

/// An instant in UTC, milliseconds since 1970-01-01T00:00:00Z, within
/// [`Timestamp::MIN`]..=[`Timestamp::MAX`] (years 1970 to 9999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// 1970-01-01T00:00:00.000Z.
    pub const MIN: Timestamp = Timestamp(0);
    /// 9999-12-31T23:59:59.999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// `None` outside the supported range: a ledger has no business before 1970 or after 9999.
    pub const fn from_millis(ms: i64) -> Option<Timestamp> {
        if ms >= Self::MIN.0 && ms <= Self::MAX.0 {
            Some(Timestamp(ms))
        } else {
            None
        }
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    /// The UTC calendar month this instant falls in.
    pub const fn month(self) -> Month {
        let (y, m, _) = civil_from_days(self.0.div_euclid(MS_PER_DAY));
        Month(y as u32 * 12 + (m - 1))
    }

    /// Calendar fields (year, month 1–12, day, hour, minute, second, millisecond), UTC.
    pub const fn fields(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let (y, m, d) = civil_from_days(self.0.div_euclid(MS_PER_DAY));
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let secs = ms_of_day / 1000;
        (
            y,
            m,
            d,
            (secs / 3600) as u32,
            ((secs / 60) % 60) as u32,
            (secs % 60) as u32,
            (ms_of_day % 1000) as u32,
        )
    }
}

/// RFC 3339 in UTC with millisecond precision: `2026-11-01T09:00:00.000Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, ms) = self.fields();
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// A UTC calendar month, stored as `year * 12 + (month - 1)` so months compare and order
/// as integers in the hot fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(u32);

impl Month {
    /// `month` is 1–12; `None` otherwise or for a year outside 1970–9999.
    pub const fn new(year: u32, month: u32) -> Option<Month> {
        if year < 1970 || year > 9999 || month < 1 || month > 12 {
            return None;
        }
        Some(Month(year * 12 + month - 1))
    }

    /// The packed index, for codecs.
    pub const fn index(self) -> u32 {
        self.0
    }

    /// Inverse of [`Month::index`]; `None` for an index outside 1970-01..=9999-12.
    pub const fn from_index(index: u32) -> Option<Month> {
        Month::new(index / 12, index % 12 + 1)
    }

    pub const fn year(self) -> u32 {
        self.0 / 12
    }

    /// 1–12.
    pub const fn month(self) -> u32 {
        self.0 % 12 + 1
    }
}

/// `YYYY-MM`, the read model's month label.
impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.month())
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, valid for the whole i64 day range we allow).
const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_fields_match_the_calendar_at_known_instants() {
        let t = Timestamp::from_millis(1_793_523_600_000).unwrap(); // 2026-11-01T09:00:00Z
        assert_eq!(t.to_string(), "2026-11-01T09:00:00.000Z");
        assert_eq!(t.month().to_string(), "2026-11");
        assert_eq!(Timestamp::MIN.to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        // 2024-02-29T23:59:59.999Z, a leap day, then the first instant of March.
        let leap = Timestamp::from_millis(1_709_251_199_999).unwrap();
        assert_eq!(leap.to_string(), "2024-02-29T23:59:59.999Z");
        assert_eq!(
            Timestamp::from_millis(1_709_251_200_000)
                .unwrap()
                .month()
                .to_string(),
            "2024-03"
        );
    }

    #[test]
    fn out_of_range_instants_and_months_are_refused() {
        assert_eq!(Timestamp::from_millis(-1), None);
        assert_eq!(Timestamp::from_millis(Timestamp::MAX.millis() + 1), None);
        assert_eq!(Month::new(2026, 13), None);
        assert_eq!(Month::new(1969, 12), None);
        let m = Month::new(2026, 12).unwrap();
        assert_eq!(Month::from_index(m.index()), Some(m));
    }
}
