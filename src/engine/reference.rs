//! A straightforward implementation of the same contract, built on
//! csv-async records and `Decimal` parsing, to check the fast path against.
//! It buffers the whole input and is several times slower; do not use it
//! for production traffic.

use csv_async::{AsyncReaderBuilder, ByteRecord, Terminator};
use rust_decimal::Decimal;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::header::{self, shown, Candidate, UTF8_BOM};
use super::{Dialect, EngineError, Summary};

fn csv_error(e: csv_async::Error) -> EngineError {
    EngineError::Io(std::io::Error::other(e.to_string()))
}

/// One record with where it sits in the input.
struct Raw {
    /// Offset of its first byte.
    start: usize,
    /// Its length without the terminator.
    len: usize,
}

/// Reads records of `body` with csv-async, the way the fast path reads them.
struct Records<'a> {
    body: &'a [u8],
    rdr: csv_async::AsyncReader<&'a [u8]>,
    record: ByteRecord,
}

impl<'a> Records<'a> {
    fn new(body: &'a [u8], delimiter: u8) -> Self {
        let rdr = AsyncReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .terminator(Terminator::CRLF)
            .create_reader(body);
        Records {
            body,
            rdr,
            record: ByteRecord::new(),
        }
    }

    async fn next(&mut self) -> Result<Option<Raw>, EngineError> {
        let from = self.rdr.position().byte() as usize;
        if !self
            .rdr
            .read_byte_record(&mut self.record)
            .await
            .map_err(csv_error)?
        {
            return Ok(None);
        }
        let end = self.rdr.position().byte() as usize;
        // The reader's position includes blank lines before the record and
        // the terminator after it.
        let raw = &self.body[from..end];
        let skip = raw
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(raw.len());
        let mut content = &raw[skip..];
        if let Some(r) = content.strip_suffix(b"\n") {
            content = r;
        }
        if let Some(r) = content.strip_suffix(b"\r") {
            content = r;
        }
        Ok(Some(Raw {
            start: from + skip,
            len: content.len(),
        }))
    }
}

/// Sums a CSV stream like [`super::summarize`].
pub async fn summarize<R: AsyncRead + Unpin + Send>(
    mut reader: R,
    dialect: Dialect,
) -> Result<Summary, EngineError> {
    let mut input = Vec::new();
    reader.read_to_end(&mut input).await?;
    if let Some(d @ (b'"' | b'\r' | b'\n')) = dialect.delimiter {
        return Err(EngineError::InvalidDelimiter(d));
    }
    let body = input.strip_prefix(UTF8_BOM).unwrap_or(&input);
    if body.is_empty() {
        return Err(EngineError::Empty);
    }
    let max_record = dialect.max_record_bytes();
    let blank = body
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if blank > max_record {
        return Err(EngineError::LeadingBlankLines { limit: max_record });
    }

    let mut candidates = Vec::new();
    let mut header_start = 0;
    for delimiter in header::candidates(&dialect) {
        let mut records = Records::new(body, delimiter);
        let Some(raw) = records.next().await? else {
            return Err(EngineError::BlankOnly);
        };
        header_start = raw.start;
        let cand = if raw.len > max_record {
            Candidate::TooLong
        } else {
            Candidate::Fields(records.record.iter().map(<[u8]>::to_vec).collect())
        };
        candidates.push((delimiter, cand));
    }
    let header_line = 1 + count_lf(&body[..header_start]);
    let layout = header::choose(&candidates, &dialect, header_line)?;

    let mut records = Records::new(body, layout.delimiter);
    records.next().await?;
    let mut line = header_line;
    let mut counted = header_start;
    let mut entries = 0u64;
    let mut sum = Decimal::new(0, 2);
    while let Some(raw) = records.next().await? {
        line += count_lf(&body[counted..raw.start]);
        counted = raw.start;
        if raw.len > max_record {
            return Err(EngineError::RecordTooLong {
                line,
                limit: max_record,
            });
        }
        let record = &records.record;
        if record.len() != layout.fields {
            return Err(EngineError::FieldCount {
                line,
                expected: layout.fields,
                found: record.len(),
            });
        }
        let cell = record.get(layout.amount_col).unwrap_or_default();
        let amount = match parse_amount(cell, layout.separator) {
            Ok(a) => a,
            Err(Invalid::Format) => {
                return Err(EngineError::BadAmount {
                    line,
                    column: layout.column.clone(),
                    value: shown(cell),
                    separator: layout.separator,
                })
            }
            Err(Invalid::Range) => {
                return Err(EngineError::AmountOutOfRange {
                    line,
                    column: layout.column.clone(),
                    value: shown(cell),
                })
            }
        };
        // Decimal arithmetic silently rounds when the exact result does not
        // fit; bring both to the running scale and check nothing was lost.
        let scale = sum.scale().max(amount.scale());
        let (mut a, mut b) = (sum, amount);
        a.rescale(scale);
        b.rescale(scale);
        sum = match a.checked_add(b) {
            Some(s) if a.scale() == scale && b.scale() == scale && s.scale() == scale => s,
            _ => {
                return Err(EngineError::SumOverflow {
                    line,
                    column: layout.column.clone(),
                })
            }
        };
        entries += 1;
    }
    if sum.is_zero() {
        sum.set_sign_positive(true);
    }
    Ok(Summary {
        entries,
        sum,
        bytes: input.len() as u64,
    })
}

fn count_lf(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

enum Invalid {
    Format,
    Range,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{a0}' | '\u{202f}')
}

fn currency_prefix(s: &str) -> Option<&str> {
    s.strip_prefix('€').or_else(|| {
        s.get(..3)
            .filter(|p| p.eq_ignore_ascii_case("EUR"))
            .map(|_| &s[3..])
    })
}

fn currency_suffix(s: &str) -> Option<&str> {
    s.strip_suffix('€').or_else(|| {
        let cut = s.len().checked_sub(3)?;
        s.get(cut..)
            .filter(|p| p.eq_ignore_ascii_case("EUR"))
            .map(|_| &s[..cut])
    })
}

/// The amount grammar, written with string operations.
fn parse_amount(cell: &[u8], sep: super::DecimalSeparator) -> Result<Decimal, Invalid> {
    let text = std::str::from_utf8(cell).map_err(|_| Invalid::Format)?;
    let mut s = text.trim_matches(is_space);
    let mut currency = false;
    if let Some(r) = currency_prefix(s).or_else(|| currency_suffix(s)) {
        s = r.trim_matches(is_space);
        currency = true;
    }
    let negative;
    if let Some(inner) = s.strip_prefix('(') {
        s = inner
            .strip_suffix(')')
            .ok_or(Invalid::Format)?
            .trim_matches(is_space);
        if !currency {
            if let Some(r) = currency_prefix(s).or_else(|| currency_suffix(s)) {
                s = r.trim_matches(is_space);
            }
        }
        negative = true;
    } else {
        negative = s.starts_with('-');
        if let Some(r) = s.strip_prefix(['+', '-']) {
            s = r;
            if !currency {
                if let Some(r) = currency_prefix(s) {
                    s = r.trim_matches(is_space);
                }
            }
        }
    }

    let (decimal, groups): (char, &[char]) = match sep {
        super::DecimalSeparator::Dot => ('.', &[',']),
        super::DecimalSeparator::Comma => (',', &['.', ' ', '\u{a0}', '\u{202f}']),
    };
    let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = match s.split_once(decimal) {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if frac.is_some_and(|f| !all_digits(f)) {
        return Err(Invalid::Format);
    }
    let mut digits = String::new();
    if all_digits(int) {
        digits.push_str(int);
    } else {
        let g = int
            .chars()
            .find(|c| !c.is_ascii_digit())
            .ok_or(Invalid::Format)?;
        if !groups.contains(&g) {
            return Err(Invalid::Format);
        }
        for (i, part) in int.split(g).enumerate() {
            let ok = all_digits(part)
                && if i == 0 {
                    part.len() <= 3
                } else {
                    part.len() == 3
                };
            if !ok {
                return Err(Invalid::Format);
            }
            digits.push_str(part);
        }
    }
    let frac = frac.unwrap_or("");
    if frac.len() > 28 {
        return Err(Invalid::Range);
    }
    let int_digits = digits.trim_start_matches('0');
    let mut canonical = String::from(if negative { "-" } else { "" });
    canonical.push_str(if int_digits.is_empty() {
        "0"
    } else {
        int_digits
    });
    if !frac.is_empty() {
        canonical.push('.');
        canonical.push_str(frac);
    }
    let value = Decimal::from_str_exact(&canonical).map_err(|_| Invalid::Range)?;
    if value.scale() as usize != frac.len() {
        return Err(Invalid::Range);
    }
    Ok(value)
}
