//! Money as integer minor units. Every operation is checked: overflow is a value the caller
//! must handle (a rejection or a fold error), never a wrap and never a panic.

use std::fmt;

/// A signed amount of minor units (cents for EUR/USD). Balances and deltas use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Minor units as a plain integer, for codecs and arithmetic in wider types.
    pub const fn minor(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// `None` for `i64::MIN`, whose negation does not fit.
    pub fn checked_neg(self) -> Option<Money> {
        self.0.checked_neg().map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_at_the_edges_reports_overflow_instead_of_wrapping() {
        assert_eq!(Money(i64::MAX).checked_add(Money(1)), None);
        assert_eq!(Money(i64::MIN).checked_sub(Money(1)), None);
        assert_eq!(Money(i64::MIN).checked_neg(), None);
        assert_eq!(Money(i64::MAX).checked_neg(), Some(Money(-i64::MAX)));
        assert_eq!(Money(2).checked_sub(Money(5)), Some(Money(-3)));
    }
}
