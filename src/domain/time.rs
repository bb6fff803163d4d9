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
        match Month::new(y as u32, m) {
            Some(month) => month,
            None => panic!("a Timestamp in range always has a month in range"),
        }
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

/// A UTC calendar month. Carries its own bounds in milliseconds so the hot fold tells
/// "same month" with two comparisons instead of calendar arithmetic.
#[derive(Debug, Clone, Copy)]
pub struct Month {
    /// `year * 12 + (month - 1)`: months order as integers.
    index: u32,
    /// First millisecond of the month.
    start_ms: i64,
    /// First millisecond of the next month.
    end_ms: i64,
}

impl PartialEq for Month {
    fn eq(&self, other: &Month) -> bool {
        self.index == other.index
    }
}
impl Eq for Month {}
impl PartialOrd for Month {
    fn partial_cmp(&self, other: &Month) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Month {
    fn cmp(&self, other: &Month) -> std::cmp::Ordering {
        self.index.cmp(&other.index)
    }
}
impl std::hash::Hash for Month {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.index.hash(state);
    }
}

impl Month {
    /// `month` is 1–12; `None` otherwise or for a year outside 1970–9999.
    pub const fn new(year: u32, month: u32) -> Option<Month> {
        if year < 1970 || year > 9999 || month < 1 || month > 12 {
            return None;
        }
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        Some(Month {
            index: year * 12 + month - 1,
            start_ms: days_from_civil(year as i64, month, 1) * MS_PER_DAY,
            end_ms: days_from_civil(next_year as i64, next_month, 1) * MS_PER_DAY,
        })
    }

    /// The packed index, for codecs.
    pub const fn index(self) -> u32 {
        self.index
    }

    /// Inverse of [`Month::index`]; `None` for an index outside 1970-01..=9999-12.
    pub const fn from_index(index: u32) -> Option<Month> {
        Month::new(index / 12, index % 12 + 1)
    }

    pub const fn year(self) -> u32 {
        self.index / 12
    }

    /// 1–12.
    pub const fn month(self) -> u32 {
        self.index % 12 + 1
    }

    /// Whether `t` falls in this month.
    #[inline]
    pub const fn contains(self, t: Timestamp) -> bool {
        t.0 >= self.start_ms && t.0 < self.end_ms
    }

    /// Whether `t` falls in a later month than this one.
    #[inline]
    pub const fn is_before(self, t: Timestamp) -> bool {
        t.0 >= self.end_ms
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

/// (year, month, day) to days since 1970-01-01 (Hinnant's `days_from_civil`).
const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    #[test]
    fn month_bounds_hold_exactly_the_instants_of_that_month() {
        // Every month from 1970 to 2100 and the last months of 9999: the first and last
        // millisecond are inside, the neighbours outside, and `month()` agrees.
        let months = (1970..2101)
            .chain(9998..10000)
            .flat_map(|y| (1..=12).map(move |m| (y, m)));
        for (y, m) in months {
            let month = Month::new(y, m).unwrap();
            let first = Timestamp::from_millis(month.start_ms).unwrap();
            let last = Timestamp::from_millis(month.end_ms - 1).unwrap();
            assert!(month.contains(first) && month.contains(last));
            assert_eq!((first.month(), last.month()), (month, month));
            assert_eq!(first.fields().2, 1, "{y}-{m} starts on day 1");
            if let Some(after) = Timestamp::from_millis(month.end_ms) {
                assert!(!month.contains(after) && month.is_before(after));
            }
        }
    }
}
