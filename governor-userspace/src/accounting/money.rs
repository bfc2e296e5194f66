//! Money as an integer number of pico-units (1e-12) of the configured currency. No floating
//! point anywhere a cent is counted; decimals exist only at the edges (config and display).

use std::fmt;

/// Pico-units per currency unit.
pub const PICO: u64 = 1_000_000_000_000;
/// Bytes per MiB.
pub const MIB: u64 = 1 << 20;

/// Largest budget limit accepted: 10 million currency units (fits u64 pico-units with room).
pub const MAX_LIMIT: Money = Money(10_000_000 * PICO);
/// Largest price per MiB accepted: keeps per-byte prices below 2^30 pico, so the kernel's
/// `bytes * price` cannot overflow 64 bits for any packet.
pub const MAX_MIB_PRICE: Money = Money(1_000 * PICO);
/// Largest price per connection accepted.
pub const MAX_CONNECTION_PRICE: Money = Money(1_000 * PICO);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Money(pub u64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Parses a non-negative decimal such as `"25.00"` or `"0.0004"` (at most 12 decimals).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!("{s:?} is negative; amounts are zero or more"));
        }
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (t.contains('.') && !digits(frac)) {
            return Err(format!("{s:?} is not a decimal amount such as \"25.00\" or \"0.0004\""));
        }
        if frac.len() > 12 {
            return Err(format!("{s:?} has more than 12 decimal places"));
        }
        let too_big = || format!("{s:?} is too large");
        let whole: u64 = whole.parse().map_err(|_| too_big())?;
        let frac_pico: u64 = format!("{frac:0<12}").parse().expect("12 digits");
        let pico = whole.checked_mul(PICO).and_then(|w| w.checked_add(frac_pico)).ok_or_else(too_big)?;
        Ok(Money(pico))
    }

    /// A per-MiB price as a per-byte price, rounded up to the next pico-unit (so a cost is
    /// never under-counted; the error is below one pico-unit per byte).
    pub fn per_byte_from_per_mib(self) -> u64 {
        self.0.div_ceil(MIB)
    }

    pub fn saturating_sub(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }

    /// `self` as a percentage of `of` (0 when `of` is zero and `self` is zero, else 100+).
    pub fn percent_of(self, of: Money) -> u64 {
        if of.0 == 0 {
            return if self.0 == 0 { 0 } else { u64::MAX };
        }
        ((u128::from(self.0) * 100) / u128::from(of.0)).try_into().unwrap_or(u64::MAX)
    }

    /// Exact decimal text with all 12 places: "25.000000000000".
    pub fn exact(self) -> String {
        format!("{}.{:012}", self.0 / PICO, self.0 % PICO)
    }
}

/// Shows 6 decimal places (truncated), enough to see sub-cent API charges.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / PICO, (self.0 % PICO) / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(Money::parse("25.00"), Ok(Money(25 * PICO)));
        assert_eq!(Money::parse("0.0004"), Ok(Money(400_000_000)));
        assert_eq!(Money::parse("7"), Ok(Money(7 * PICO)));
        assert_eq!(Money::parse("0.000000000001"), Ok(Money(1)));
        assert_eq!(Money::parse("0"), Ok(Money::ZERO));
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for bad in ["-1", "-0.5", "abc", "", ".5", "5.", "1e3", "1,5", "0.0000000000001", "99999999999"] {
            assert!(Money::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Money::parse("-1").unwrap_err().contains("negative"));
    }

    #[test]
    fn per_mib_prices_round_up_per_byte() {
        // $0.50/MiB = 476837.158203125 pico per byte -> 476838.
        assert_eq!(Money::parse("0.50").unwrap().per_byte_from_per_mib(), 476_838);
        // $1/MiB divides exactly: no rounding.
        assert_eq!(Money(MIB * 3).per_byte_from_per_mib(), 3);
        assert!(MAX_MIB_PRICE.per_byte_from_per_mib() < 1 << 30);
    }

    #[test]
    fn displays_and_percentages() {
        assert_eq!(Money::parse("12.3456789").unwrap().to_string(), "12.345678");
        assert_eq!(Money::parse("0.0004").unwrap().exact(), "0.000400000000");
        assert_eq!(Money(80).percent_of(Money(100)), 80);
        assert_eq!(Money(0).percent_of(Money(0)), 0);
        assert_eq!(Money(1).percent_of(Money(0)), u64::MAX);
    }
}
