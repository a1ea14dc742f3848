//! The record scanner: finds record and field boundaries 64 bytes at a time
//! with SIMD compares, parses only the amount cell, and drops to a careful
//! byte-level path for quoted fields.

use super::amount::{self, Acc, AmountError};
use super::header::{shown, Layout};
use super::EngineError;

/// Why a scan stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A data error (with its absolute line when scanning sequentially,
    /// relative to the range start when scanning a range).
    Error(EngineError),
    /// The sum of a range summed speculatively from zero left the
    /// representable range; the range must be rescanned with the real prefix.
    Unsafe,
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Error(e)
    }
}

/// Scanner state carried from one buffer to the next. Every call starts and
/// ends at a record boundary, so no state inside a record is carried.
pub(crate) struct Core<'a> {
    layout: &'a Layout,
    /// Physical line number of the next byte.
    pub line: u64,
    pub entries: u64,
    pub acc: Acc,
    /// Overflow is a user error (true), or marks a speculative range unsafe.
    exact: bool,
    scratch: Vec<u8>,
}

impl<'a> Core<'a> {
    pub fn new(layout: &'a Layout, line: u64, acc: Acc, exact: bool) -> Self {
        Core {
            layout,
            line,
            entries: 0,
            acc,
            exact,
            scratch: Vec::new(),
        }
    }

    /// Consumes the records of `buf`, which starts at a record boundary.
    /// Returns the offset of the first byte not consumed: the first record
    /// boundary at or after `stop_at`, the start of a record that `buf` does
    /// not hold completely (unless `eof`), or `buf.len()`.
    pub fn run(&mut self, buf: &[u8], eof: bool, stop_at: usize) -> Result<usize, Stop> {
        #[cfg(test)]
        match FORCE_CLASSIFIER.get() {
            Forced::Baseline => return self.run_with::<Baseline>(buf, eof, stop_at),
            Forced::Portable => return self.run_with::<Portable>(buf, eof, stop_at),
            Forced::Auto => {}
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("lzcnt")
        {
            // SAFETY: the CPU has these features, checked just above.
            return unsafe { self.run_avx2(buf, eof, stop_at) };
        }
        self.run_with::<Baseline>(buf, eof, stop_at)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt,bmi1,lzcnt")]
    unsafe fn run_avx2(&mut self, buf: &[u8], eof: bool, stop_at: usize) -> Result<usize, Stop> {
        self.run_with::<Avx2>(buf, eof, stop_at)
    }

    /// Whole records through [`Core::record`] while they qualify; each
    /// other record (quoted, longer than 127 bytes, or near the end of
    /// `buf`) goes through the careful [`Core::records`].
    #[inline(always)]
    fn run_with<C: Classify>(
        &mut self,
        buf: &[u8],
        eof: bool,
        stop_at: usize,
    ) -> Result<usize, Stop> {
        let mut pos = 0;
        loop {
            while pos < stop_at {
                match buf.get(pos..pos + 128).and_then(|w| w.first_chunk::<128>()) {
                    Some(window) => match self.record::<C>(buf, pos, window)? {
                        Some(next) => pos = next,
                        None => break,
                    },
                    None => break,
                }
            }
            if pos >= stop_at {
                return Ok(pos);
            }
            if pos + 128 > buf.len() {
                // The tail of the buffer.
                return Ok(pos + self.records::<C>(&buf[pos..], eof, stop_at - pos)?);
            }
            match self.records::<C>(&buf[pos..], eof, 1)? {
                0 => return Ok(pos), // incomplete; only when not at end of file
                n => pos += n,
            }
        }
    }

    /// One unquoted record of at most 127 bytes starting at `pos`, read
    /// from the masks of the 128 bytes there. Returns the next record's
    /// start, or `None` if the record needs the careful path.
    #[inline(always)]
    fn record<C: Classify>(
        &mut self,
        buf: &[u8],
        pos: usize,
        window: &[u8; 128],
    ) -> Result<Option<usize>, Stop> {
        let (lo, hi) = window.split_at(64);
        let (Ok(lo), Ok(hi)) = (<&[u8; 64]>::try_from(lo), <&[u8; 64]>::try_from(hi)) else {
            return Ok(None);
        };
        let delim = self.layout.delimiter;
        let (d0, o0) = C::masks(lo, delim);
        let (d1, o1) = C::masks(hi, delim);
        let others = u128::from(o0) | (u128::from(o1) << 64);
        if others == 0 {
            return Ok(None);
        }
        let len = others.trailing_zeros() as usize;
        let end = pos + len;
        let b = window[len];
        if b == b'"' {
            return Ok(None);
        }
        if len > 0 {
            let delims = (u128::from(d0) | (u128::from(d1) << 64)) & ((1u128 << len) - 1);
            let fields = delims.count_ones() as usize + 1;
            // Only meaningful when `fields` is right, which `finish` checks first.
            let mut amt = (pos, end, false);
            if fields == self.layout.fields {
                let (first, last) = amount_span(delims, self.layout.amount_col);
                if let Some(d) = first {
                    amt.0 = pos + d as usize + 1;
                }
                if let Some(d) = last {
                    amt.1 = pos + d as usize;
                }
            }
            self.finish(buf, pos, end, fields, amt, self.line)?;
        }
        if b == b'\n' {
            self.line += 1;
        }
        Ok(Some(end + 1))
    }

    /// The careful path: any records, quoted or not, window by window.
    #[inline(always)]
    fn records<C: Classify>(
        &mut self,
        buf: &[u8],
        eof: bool,
        stop_at: usize,
    ) -> Result<usize, Stop> {
        if stop_at == 0 {
            return Ok(0);
        }
        let delim = self.layout.delimiter;
        let amount_col = self.layout.amount_col;
        let len = buf.len();
        let mut line = self.line;
        let mut rec_start = 0usize;
        let mut rec_line = line;
        // Delimiters seen in the current record, i.e. the field index.
        let mut field = 0usize;
        let mut field_start = 0usize;
        // Whether the amount field began quoted (its start is in `scratch`).
        let mut amt_quoted = false;
        let mut amt = (0usize, 0usize, false);
        let mut pos = 0usize;

        'windows: while pos < len {
            let (mut delims, mut others) = masks::<C>(buf, pos, delim);
            loop {
                // Delimiters before the next quote or line break, in bulk.
                let below = (others & others.wrapping_neg()).wrapping_sub(1);
                let d = delims & below;
                if d != 0 {
                    let n = d.count_ones() as usize;
                    // The amount field ends at delimiter k of `d`.
                    let k = amount_col.wrapping_sub(field);
                    if k < n {
                        let start = if k == 0 {
                            field_start
                        } else {
                            pos + nth_bit(d, k - 1) as usize + 1
                        };
                        amt = (start, pos + nth_bit(d, k) as usize, amt_quoted);
                    }
                    field += n;
                    field_start = pos + 64 - d.leading_zeros() as usize;
                    delims &= !below;
                }
                if others == 0 {
                    break;
                }
                let p = pos + others.trailing_zeros() as usize;
                others &= others - 1;
                let b = buf[p];
                if b == b'"' {
                    if p != field_start {
                        continue; // a quote inside an unquoted field is text
                    }
                    let is_amount = field == amount_col;
                    amt_quoted |= is_amount;
                    match self.quoted(buf, p, is_amount, eof, &mut line) {
                        Some(next) => {
                            // `next` is not a quote, so it cannot reopen one.
                            field_start = next;
                            pos = next;
                            continue 'windows;
                        }
                        None => {
                            field_start = len;
                            break 'windows;
                        }
                    }
                }
                // `\r` or `\n`: ends a record, or is a blank line.
                if p != rec_start {
                    if field == amount_col {
                        amt = (field_start, p, amt_quoted);
                    }
                    self.finish(buf, rec_start, p, field + 1, amt, rec_line)?;
                }
                if b == b'\n' {
                    line += 1;
                }
                rec_start = p + 1;
                rec_line = line;
                field = 0;
                field_start = rec_start;
                amt_quoted = false;
                if rec_start >= stop_at {
                    self.line = line;
                    return Ok(rec_start);
                }
            }
            pos += 64;
        }

        if rec_start >= len {
            self.line = line;
            return Ok(len);
        }
        if !eof {
            // The last record continues in the next buffer.
            if len - rec_start > self.layout.max_record {
                return Err(too_long(self.layout, rec_line));
            }
            self.line = rec_line;
            return Ok(rec_start);
        }
        if field == amount_col {
            amt = (field_start, len, amt_quoted);
        }
        self.finish(buf, rec_start, len, field + 1, amt, rec_line)?;
        self.line = line;
        Ok(len)
    }

    /// Reads a quoted field whose opening quote is at `p`. Returns the offset
    /// after its closing quote, or `None` if `buf` ends inside it (at end of
    /// file the field then simply ends, as csv-core does).
    fn quoted(
        &mut self,
        buf: &[u8],
        p: usize,
        is_amount: bool,
        eof: bool,
        line: &mut u64,
    ) -> Option<usize> {
        if is_amount {
            self.scratch.clear();
        }
        let mut i = p + 1;
        loop {
            let Some(q) = memchr::memchr(b'"', &buf[i..]).map(|q| q + i) else {
                if is_amount {
                    self.scratch.extend_from_slice(&buf[i..]);
                }
                return None;
            };
            *line += count_newlines(&buf[i..q]);
            if is_amount {
                self.scratch.extend_from_slice(&buf[i..q]);
            }
            match buf.get(q + 1) {
                Some(b'"') => {
                    if is_amount {
                        self.scratch.push(b'"');
                    }
                    i = q + 2;
                }
                Some(_) => return Some(q + 1),
                None if eof => return Some(q + 1),
                None => return None,
            }
        }
    }

    /// Checks a complete record and adds its amount.
    #[inline(always)]
    fn finish(
        &mut self,
        buf: &[u8],
        rec_start: usize,
        end: usize,
        fields: usize,
        amt: (usize, usize, bool),
        line: u64,
    ) -> Result<(), Stop> {
        let layout = self.layout;
        if end - rec_start > layout.max_record {
            return Err(too_long(layout, line));
        }
        if fields != layout.fields {
            return Err(field_count(layout, line, fields));
        }
        let (a, b, quoted) = amt;
        let parsed = if quoted {
            self.scratch.extend_from_slice(&buf[a..b]);
            amount::parse(&self.scratch, layout.separator)
        } else {
            amount::parse_at(&buf[a..], b - a, layout.separator)
        };
        match parsed {
            Ok(v) => {
                if self.acc.add(v).is_err() {
                    return Err(self.overflow(line));
                }
            }
            Err(e) => {
                let cell = if quoted {
                    &self.scratch[..]
                } else {
                    &buf[a..b]
                };
                return Err(amount_error(e, cell, layout, line).into());
            }
        }
        self.entries += 1;
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn overflow(&self, line: u64) -> Stop {
        if self.exact {
            EngineError::SumOverflow {
                line,
                column: self.layout.column.clone(),
            }
            .into()
        } else {
            Stop::Unsafe
        }
    }
}

/// Position of set bit `k` (0 = lowest) of `x`, which has more than `k`.
#[inline(always)]
fn nth_bit(mut x: u64, k: usize) -> u32 {
    for _ in 0..k {
        x &= x - 1;
    }
    x.trailing_zeros()
}

#[cold]
#[inline(never)]
fn too_long(layout: &Layout, line: u64) -> Stop {
    EngineError::RecordTooLong {
        line,
        limit: layout.max_record,
    }
    .into()
}

#[cold]
#[inline(never)]
fn field_count(layout: &Layout, line: u64, found: usize) -> Stop {
    EngineError::FieldCount {
        line,
        expected: layout.fields,
        found,
    }
    .into()
}

#[cold]
#[inline(never)]
fn amount_error(e: AmountError, cell: &[u8], layout: &Layout, line: u64) -> EngineError {
    let column = layout.column.clone();
    let value = shown(cell);
    match e {
        AmountError::Invalid => EngineError::BadAmount {
            line,
            column,
            value,
            separator: layout.separator,
        },
        AmountError::OutOfRange => EngineError::AmountOutOfRange {
            line,
            column,
            value,
        },
    }
}

pub(crate) fn count_newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

/// Classifies 64 bytes into (delimiters, quotes and line breaks) bitmasks.
trait Classify {
    fn masks(chunk: &[u8; 64], delim: u8) -> (u64, u64);
}

/// Positions of the delimiters before and after field `k`, given a
/// record's delimiter mask with at least `k` bits set: set bits `k - 1` and
/// `k` of `delims`.
#[inline(always)]
fn amount_span(delims: u128, k: usize) -> (Option<u32>, Option<u32>) {
    let mut x = delims;
    let mut before = None;
    // The amount column is the same on every row: this loop's length is
    // perfectly predictable.
    for _ in 0..k {
        before = Some(x.trailing_zeros());
        x &= x - 1;
    }
    (before, (x != 0).then(|| x.trailing_zeros()))
}

/// Bit i of the masks describes `buf[pos + i]`; bits past the end are 0.
#[inline(always)]
fn masks<C: Classify>(buf: &[u8], pos: usize, delim: u8) -> (u64, u64) {
    let rest = &buf[pos..];
    match rest.first_chunk::<64>() {
        Some(chunk) => C::masks(chunk, delim),
        None => {
            let mut tmp = [0u8; 64];
            tmp[..rest.len()].copy_from_slice(rest);
            let keep = (1u64 << rest.len()) - 1;
            let (d, o) = C::masks(&tmp, delim);
            (d & keep, o & keep)
        }
    }
}

/// Lets tests run the classifiers a CPU would not pick.
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) enum Forced {
    Auto,
    Baseline,
    Portable,
}

#[cfg(test)]
thread_local! {
    pub(crate) static FORCE_CLASSIFIER: std::cell::Cell<Forced> =
        const { std::cell::Cell::new(Forced::Auto) };
}

/// Plain code for targets without a SIMD version.
#[cfg(any(test, not(target_arch = "x86_64")))]
struct Portable;

#[cfg(any(test, not(target_arch = "x86_64")))]
impl Classify for Portable {
    #[inline(always)]
    fn masks(chunk: &[u8; 64], delim: u8) -> (u64, u64) {
        let (mut dm, mut om) = (0u64, 0u64);
        for (i, &b) in chunk.iter().enumerate() {
            dm |= u64::from(b == delim) << i;
            om |= u64::from(b == b'"' || b == b'\n' || b == b'\r') << i;
        }
        (dm, om)
    }
}

/// SSE2 on x86_64 (always present), plain code elsewhere.
#[cfg(not(target_arch = "x86_64"))]
type Baseline = Portable;

#[cfg(target_arch = "x86_64")]
struct Baseline;

#[cfg(target_arch = "x86_64")]
impl Classify for Baseline {
    #[inline(always)]
    fn masks(chunk: &[u8; 64], delim: u8) -> (u64, u64) {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline, and each unaligned
        // 16-byte load at 16 * k (k < 4) stays inside the 64-byte array.
        unsafe {
            let d = _mm_set1_epi8(delim as i8);
            let q = _mm_set1_epi8(b'"' as i8);
            let n = _mm_set1_epi8(b'\n' as i8);
            let r = _mm_set1_epi8(b'\r' as i8);
            let (mut dm, mut om) = (0u64, 0u64);
            for k in 0..4 {
                let v = _mm_loadu_si128(chunk.as_ptr().add(16 * k).cast::<__m128i>());
                let o = _mm_or_si128(
                    _mm_cmpeq_epi8(v, q),
                    _mm_or_si128(_mm_cmpeq_epi8(v, n), _mm_cmpeq_epi8(v, r)),
                );
                dm |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, d)) as u16) << (16 * k);
                om |= u64::from(_mm_movemask_epi8(o) as u16) << (16 * k);
            }
            (dm, om)
        }
    }
}

/// Two 32-byte compares instead of four 16-byte ones; used only after
/// runtime detection, from `Core::run_avx2`.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Classify for Avx2 {
    #[inline(always)]
    fn masks(chunk: &[u8; 64], delim: u8) -> (u64, u64) {
        use std::arch::x86_64::*;
        // SAFETY: only instantiated inside `run_avx2`, which requires AVX2;
        // both unaligned 32-byte loads stay inside the 64-byte array.
        unsafe {
            let d = _mm256_set1_epi8(delim as i8);
            // `"`, `\n` and `\r` differ in their low nibble: look each byte's
            // low nibble up and compare with the byte itself. Other entries
            // hold a byte with a different low nibble, so never match.
            let table = _mm_setr_epi8(1, 0, 34, 2, 5, 4, 7, 6, 9, 8, 10, 10, 13, 13, 15, 14);
            let table = _mm256_broadcastsi128_si256(table);
            let (mut dm, mut om) = (0u64, 0u64);
            for k in 0..2 {
                let v = _mm256_loadu_si256(chunk.as_ptr().add(32 * k).cast::<__m256i>());
                let o = _mm256_cmpeq_epi8(_mm256_shuffle_epi8(table, v), v);
                dm |= u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, d)) as u32) << (32 * k);
                om |= u64::from(_mm256_movemask_epi8(o) as u32) << (32 * k);
            }
            (dm, om)
        }
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    #[test]
    fn nth_bit_finds_each_set_bit() {
        for x in [
            1u64,
            0b1011_0110,
            u64::MAX,
            0x8000_0000_0000_0001,
            0xF0F0_0000_1234_5678,
        ] {
            let bits: Vec<u32> = (0..64).filter(|i| x >> i & 1 == 1).collect();
            for (k, &b) in bits.iter().enumerate() {
                assert_eq!(nth_bit(x, k), b, "x={x:#x} k={k}");
            }
        }
    }

    /// Every byte value, for every delimiter, in every lane position.
    #[test]
    fn simd_classifiers_match_plain_code() {
        for delim in 0..=255u8 {
            for shift in 0..4usize {
                let chunks: Vec<[u8; 64]> = (0..4)
                    .map(|c| std::array::from_fn(|i| ((c * 64 + i + shift * 17) % 256) as u8))
                    .collect();
                for chunk in &chunks {
                    let want = Portable::masks(chunk, delim);
                    #[cfg(target_arch = "x86_64")]
                    {
                        assert_eq!(Baseline::masks(chunk, delim), want, "sse2, delim {delim}");
                        if std::arch::is_x86_feature_detected!("avx2") {
                            // SAFETY: AVX2 is available, checked just above.
                            let got = unsafe { avx2_masks(chunk, delim) };
                            assert_eq!(got, want, "avx2, delim {delim}");
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_masks(chunk: &[u8; 64], delim: u8) -> (u64, u64) {
        Avx2::masks(chunk, delim)
    }
}
