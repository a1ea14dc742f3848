//! Parsing one amount cell into integer units, and the exact running sum.

use super::DecimalSeparator;

/// Largest mantissa a `Decimal` can hold (2^96 - 1).
pub(crate) const MAX_MANTISSA: u128 = (1u128 << 96) - 1;
/// Largest scale a `Decimal` can hold.
pub(crate) const MAX_SCALE: u32 = 28;
/// Every sum carries at least cents.
pub(crate) const MIN_SCALE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AmountError {
    /// Not in any accepted amount format.
    Invalid,
    /// Well-formed, but more digits than a `Decimal` can hold.
    OutOfRange,
}

/// An amount as signed units at `scale` decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Amount {
    pub units: i128,
    pub scale: u32,
}

const NBSP: &[u8] = "\u{a0}".as_bytes();
const NNBSP: &[u8] = "\u{202f}".as_bytes();
const EURO: &[u8] = "€".as_bytes();

pub(crate) const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Parses an amount cell. The plain form (`-1234.56`) takes a short path;
/// everything else goes through the full grammar.
#[inline]
pub(crate) fn parse(cell: &[u8], sep: DecimalSeparator) -> Result<Amount, AmountError> {
    match parse_plain(cell, sep.byte()) {
        Some(a) => Ok(a),
        None => parse_general(cell, sep),
    }
}

/// `-?digits([sep]digits)?` with at most 18 digits, so it fits a u64.
#[inline(always)]
fn parse_plain(cell: &[u8], sep: u8) -> Option<Amount> {
    let (neg, s) = match cell.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, cell),
    };
    let n = s.len();
    if n == 0 || n > 19 {
        return None;
    }
    // Cents are by far the most common form: digits, separator, 2 digits.
    let (int, frac) = if n >= 4 && s[n - 3] == sep {
        (&s[..n - 3], &s[n - 2..])
    } else {
        match s.iter().position(|&b| b == sep) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, &s[n..]),
        }
    };
    if int.is_empty() || (frac.is_empty() && int.len() != n) {
        return None;
    }
    let mut v: u64 = 0;
    // Two plain loops: a chained iterator is measurably slower here.
    for part in [int, frac] {
        for &b in part {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + u64::from(d);
        }
    }
    let units = v as i128;
    Some(Amount {
        units: if neg { -units } else { units },
        scale: frac.len() as u32,
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    loop {
        let before = s.len();
        for ws in [b" ".as_slice(), b"\t", NBSP, NNBSP] {
            if let Some(r) = s.strip_prefix(ws) {
                s = r;
            }
            if let Some(r) = s.strip_suffix(ws) {
                s = r;
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

fn strip_currency_prefix(s: &[u8]) -> Option<&[u8]> {
    if let Some(r) = s.strip_prefix(EURO) {
        return Some(r);
    }
    match s.get(..3) {
        Some(p) if p.eq_ignore_ascii_case(b"EUR") => Some(&s[3..]),
        _ => None,
    }
}

fn strip_currency_suffix(s: &[u8]) -> Option<&[u8]> {
    if let Some(r) = s.strip_suffix(EURO) {
        return Some(r);
    }
    let n = s.len();
    match n.checked_sub(3).map(|i| &s[i..]) {
        Some(p) if p.eq_ignore_ascii_case(b"EUR") => Some(&s[..n - 3]),
        _ => None,
    }
}

/// The full grammar: spaces, one optional currency before or after,
/// a sign or accounting parentheses, thousands grouping.
fn parse_general(cell: &[u8], sep: DecimalSeparator) -> Result<Amount, AmountError> {
    let mut s = trim(cell);
    let mut currency = false;
    if let Some(r) = strip_currency_prefix(s) {
        s = trim(r);
        currency = true;
    } else if let Some(r) = strip_currency_suffix(s) {
        s = trim(r);
        currency = true;
    }
    let neg;
    if let Some(inner) = s.strip_prefix(b"(") {
        s = trim(inner.strip_suffix(b")").ok_or(AmountError::Invalid)?);
        if !currency {
            if let Some(r) = strip_currency_prefix(s) {
                s = trim(r);
            } else if let Some(r) = strip_currency_suffix(s) {
                s = trim(r);
            }
        }
        neg = true;
    } else {
        neg = s.first() == Some(&b'-');
        if let Some((b'+' | b'-', rest)) = s.split_first() {
            s = rest;
            if !currency {
                if let Some(r) = strip_currency_prefix(s) {
                    s = trim(r);
                }
            }
        }
    }
    let (mantissa, scale) = parse_number(s, sep)?;
    let units = mantissa as i128;
    Ok(Amount {
        units: if neg { -units } else { units },
        scale,
    })
}

/// Digits with optional grouping and fraction; returns (mantissa, scale).
fn parse_number(s: &[u8], sep: DecimalSeparator) -> Result<(u128, u32), AmountError> {
    let dec = sep.byte();
    let mut v: u128 = 0;
    let mut too_big = false;
    let mut push = |d: u8| {
        v = match v.checked_mul(10).and_then(|x| x.checked_add(u128::from(d))) {
            Some(x) if x <= MAX_MANTISSA => x,
            _ => {
                too_big = true;
                0
            }
        };
    };
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();

    let first = digits(s);
    if first == 0 {
        return Err(AmountError::Invalid);
    }
    s[..first].iter().for_each(|b| push(b - b'0'));
    let mut rest = &s[first..];

    // Thousands groups: one separator kind throughout, groups of exactly 3.
    let mut group: Option<&[u8]> = None;
    loop {
        let g = match group {
            Some(g) => rest.starts_with(g).then_some(g),
            None => group_separator(rest, sep),
        };
        let Some(g) = g else { break };
        if first > 3 {
            return Err(AmountError::Invalid);
        }
        let after = &rest[g.len()..];
        if digits(after) != 3 {
            return Err(AmountError::Invalid);
        }
        after[..3].iter().for_each(|b| push(b - b'0'));
        rest = &after[3..];
        group = Some(g);
    }

    let mut scale = 0u32;
    if let Some((&b, frac)) = rest.split_first() {
        if b != dec {
            return Err(AmountError::Invalid);
        }
        let n = digits(frac);
        if n == 0 || n != frac.len() {
            return Err(AmountError::Invalid);
        }
        frac.iter().for_each(|b| push(b - b'0'));
        if n > MAX_SCALE as usize {
            return Err(AmountError::OutOfRange);
        }
        scale = n as u32;
    }
    if too_big {
        return Err(AmountError::OutOfRange);
    }
    Ok((v, scale))
}

/// The grouping separator at the start of `s`, if it is one for `sep`.
fn group_separator(s: &[u8], sep: DecimalSeparator) -> Option<&'static [u8]> {
    let candidates: &[&'static [u8]] = match sep {
        DecimalSeparator::Dot => &[b","],
        DecimalSeparator::Comma => &[b".", b" ", NBSP, NNBSP],
    };
    candidates.iter().copied().find(|g| s.starts_with(g))
}

/// The sum so far: units at `scale` (never below 2), kept within what a
/// `Decimal` can represent after every row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acc {
    pub units: i128,
    pub scale: u32,
    /// Largest |units| seen, in units of the current scale (saturating);
    /// lets a parallel merge prove a range cannot overflow.
    pub max_abs: u128,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            units: 0,
            scale: MIN_SCALE,
            max_abs: 0,
        }
    }
}

/// The running sum left the range a `Decimal` can represent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

impl Acc {
    #[inline]
    pub fn add(&mut self, a: Amount) -> Result<(), Overflow> {
        if a.scale == self.scale {
            // |units| <= 2^96 on both sides, so no i128 overflow.
            self.units += a.units;
        } else {
            self.add_rescaled(a)?;
        }
        let abs = self.units.unsigned_abs();
        if abs > MAX_MANTISSA {
            return Err(Overflow);
        }
        self.max_abs = self.max_abs.max(abs);
        Ok(())
    }

    #[cold]
    fn add_rescaled(&mut self, a: Amount) -> Result<(), Overflow> {
        if a.scale < self.scale {
            let scaled = a
                .units
                .checked_mul(POW10[(self.scale - a.scale) as usize])
                .ok_or(Overflow)?;
            self.units = self.units.checked_add(scaled).ok_or(Overflow)?;
        } else {
            let p = POW10[(a.scale - self.scale) as usize];
            self.units = self
                .units
                .checked_mul(p)
                .and_then(|u| u.checked_add(a.units))
                .ok_or(Overflow)?;
            self.max_abs = self.max_abs.saturating_mul(p as u128);
            self.scale = a.scale;
        }
        Ok(())
    }

    /// Adds a later range's partial sum; `None` if the result is out of range.
    pub fn merge(&self, other: &Acc) -> Option<Acc> {
        let scale = self.scale.max(other.scale);
        let up = |units: i128, s: u32| units.checked_mul(POW10[(scale - s) as usize]);
        let units = up(self.units, self.scale)?.checked_add(up(other.units, other.scale)?)?;
        if units.unsigned_abs() > MAX_MANTISSA {
            return None;
        }
        Some(Acc {
            units,
            scale,
            max_abs: 0,
        })
    }

    /// True if adding `other` (a range summed from zero) row by row onto
    /// `self` cannot have left the representable range at any row.
    pub fn can_absorb(&self, other: &Acc) -> bool {
        let scale = self.scale.max(other.scale);
        let up = |v: u128, s: u32| v.checked_mul(POW10[(scale - s) as usize] as u128);
        match (
            up(self.units.unsigned_abs(), self.scale),
            up(other.max_abs, other.scale),
        ) {
            (Some(a), Some(b)) => a.checked_add(b).is_some_and(|t| t <= MAX_MANTISSA),
            _ => false,
        }
    }

    pub fn to_decimal(self) -> rust_decimal::Decimal {
        // In range by construction (checked on every add).
        rust_decimal::Decimal::try_from_i128_with_scale(self.units, self.scale)
            .unwrap_or(rust_decimal::Decimal::ZERO)
    }
}
