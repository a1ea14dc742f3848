//! The header record: finding the `amount EUR` column and the delimiter.

use super::{DecimalSeparator, Dialect, EngineError};

/// The column every file must have (compared case-insensitively).
pub(crate) const AMOUNT_COLUMN: &str = "amount EUR";
pub(crate) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const MAX_LISTED_HEADERS: usize = 20;
const MAX_SHOWN_CHARS: usize = 60;

/// What the record scanner needs to know about a file.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub delimiter: u8,
    pub fields: usize,
    pub amount_col: usize,
    /// The amount column's name as written in the header.
    pub column: String,
    pub separator: DecimalSeparator,
    pub max_record: usize,
}

/// Delimiters tried in order of preference; with decimal commas a comma is
/// the least likely delimiter.
pub(crate) fn candidates(dialect: &Dialect) -> Vec<u8> {
    match (dialect.delimiter, dialect.decimal_separator) {
        (Some(d), _) => vec![d],
        (None, DecimalSeparator::Dot) => vec![b',', b';', b'\t', b'|'],
        (None, DecimalSeparator::Comma) => vec![b';', b'\t', b'|', b','],
    }
}

/// The header record as split by one candidate delimiter.
pub(crate) enum Candidate {
    Fields(Vec<Vec<u8>>),
    TooLong,
}

fn trim_cell(cell: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = cell.iter().position(|b| !is_space(b)).unwrap_or(cell.len());
    let end = cell
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &cell[start..end]
}

pub(crate) fn is_amount_column(cell: &[u8]) -> bool {
    trim_cell(cell).eq_ignore_ascii_case(AMOUNT_COLUMN.as_bytes())
}

/// Text for a message: lossy UTF-8, control characters escaped, shortened.
pub(crate) fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Picks the delimiter whose header has exactly one amount column (most
/// columns wins, then preference order) and describes the layout.
/// `header_line` is the physical line of the header, for messages.
pub(crate) fn choose(
    candidates: &[(u8, Candidate)],
    dialect: &Dialect,
    header_line: u64,
) -> Result<Layout, EngineError> {
    let max_record = dialect.max_record_bytes();
    let mut best: Option<(u8, &Vec<Vec<u8>>, usize)> = None;
    let mut ambiguous = None;
    let mut too_long = false;
    for (delim, cand) in candidates {
        let fields = match cand {
            Candidate::TooLong => {
                too_long = true;
                continue;
            }
            Candidate::Fields(f) => f,
        };
        let hits: Vec<usize> = (0..fields.len())
            .filter(|&i| is_amount_column(&fields[i]))
            .collect();
        match hits.as_slice() {
            [col] if best.is_none_or(|(_, f, _)| fields.len() > f.len()) => {
                best = Some((*delim, fields, *col));
            }
            [a, b, ..] if ambiguous.is_none() => {
                ambiguous = Some(EngineError::AmbiguousColumn {
                    first: a + 1,
                    second: b + 1,
                });
            }
            _ => {}
        }
    }
    if let Some((delimiter, fields, amount_col)) = best {
        return Ok(Layout {
            delimiter,
            fields: fields.len(),
            amount_col,
            column: String::from_utf8_lossy(trim_cell(&fields[amount_col])).into_owned(),
            separator: dialect.decimal_separator,
            max_record,
        });
    }
    if let Some(e) = ambiguous {
        return Err(e);
    }
    if too_long {
        return Err(EngineError::RecordTooLong {
            line: header_line,
            limit: max_record,
        });
    }
    // List the headers as split by the delimiter giving the most columns.
    let mut widest: &[Vec<u8>] = &[];
    for (_, cand) in candidates {
        if let Candidate::Fields(f) = cand {
            if f.len() > widest.len() {
                widest = f;
            }
        }
    }
    let mut found: Vec<String> = widest
        .iter()
        .take(MAX_LISTED_HEADERS)
        .map(|f| format!("\"{}\"", shown(trim_cell(f))))
        .collect();
    if widest.len() > MAX_LISTED_HEADERS {
        found.push(format!("and {} more", widest.len() - MAX_LISTED_HEADERS));
    }
    Err(EngineError::MissingColumn {
        found: found.join(", "),
    })
}

/// Outcome of reading one record with the scalar state machine.
pub(crate) enum Parsed {
    /// Only blank lines (or nothing) before the end of the input.
    NoRecord,
    /// The record is not terminated yet and more input may follow.
    Incomplete,
    /// Fields of a record spanning `start..end`; `end` is the index of its
    /// terminator (or the input length at end of file).
    Record {
        start: usize,
        end: usize,
        fields: Vec<Vec<u8>>,
    },
}

/// Reads the first record of `buf` byte by byte, following RFC 4180 the way
/// csv-core does: a quote opens a quoted field only at the start of a field,
/// `\r` and `\n` both end records and blank lines are skipped. Used for the
/// header only, where speed does not matter.
pub(crate) fn parse_record(buf: &[u8], delimiter: u8, eof: bool) -> Parsed {
    let Some(start) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return if eof {
            Parsed::NoRecord
        } else {
            Parsed::Incomplete
        };
    };
    #[derive(PartialEq)]
    enum St {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut st = St::FieldStart;
    for (i, &b) in buf.iter().enumerate().skip(start) {
        match st {
            St::Quoted => {
                if b == b'"' {
                    st = St::QuoteInQuoted;
                } else {
                    cur.push(b);
                }
                continue;
            }
            St::QuoteInQuoted if b == b'"' => {
                cur.push(b);
                st = St::Quoted;
                continue;
            }
            St::FieldStart if b == b'"' => {
                st = St::Quoted;
                continue;
            }
            _ => {}
        }
        if b == delimiter {
            fields.push(std::mem::take(&mut cur));
            st = St::FieldStart;
        } else if b == b'\r' || b == b'\n' {
            fields.push(cur);
            return Parsed::Record {
                start,
                end: i,
                fields,
            };
        } else {
            cur.push(b);
            st = St::Unquoted;
        }
    }
    if !eof {
        return Parsed::Incomplete;
    }
    fields.push(cur);
    Parsed::Record {
        start,
        end: buf.len(),
        fields,
    }
}

/// The header and where the data records begin.
#[derive(Debug)]
pub(crate) struct Header {
    pub layout: Layout,
    /// Offset of the first byte after the header record (its terminator).
    pub data_start: usize,
    /// Physical line number of the byte at `data_start`.
    pub line: u64,
}

/// Reads the header from the start of the input. `Ok(None)` asks for more
/// input (when not at end of file).
pub(crate) fn read_header(
    buf: &[u8],
    eof: bool,
    dialect: &Dialect,
) -> Result<Option<Header>, EngineError> {
    if let Some(d) = dialect.delimiter {
        if matches!(d, b'"' | b'\r' | b'\n') {
            return Err(EngineError::InvalidDelimiter(d));
        }
    }
    let bom = if buf.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else if !eof && UTF8_BOM.starts_with(buf) {
        return Ok(None);
    } else {
        0
    };
    let body = &buf[bom..];
    if body.is_empty() && eof {
        return Err(EngineError::Empty);
    }
    let max_record = dialect.max_record_bytes();
    // Blank lines before the header count against the record limit, so
    // that a stream of line breaks is not buffered without end.
    let blank = body
        .iter()
        .take(max_record.saturating_add(1))
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if blank > max_record {
        return Err(EngineError::LeadingBlankLines { limit: max_record });
    }
    let mut cands = Vec::new();
    let mut first_start = None;
    for delim in candidates(dialect) {
        match parse_record(body, delim, eof) {
            Parsed::NoRecord => return Err(EngineError::BlankOnly),
            Parsed::Incomplete => {
                let start = body
                    .iter()
                    .position(|&b| b != b'\r' && b != b'\n')
                    .unwrap_or(body.len());
                if body.len() - start <= max_record {
                    return Ok(None);
                }
                first_start = Some(start);
                cands.push((delim, Candidate::TooLong));
            }
            Parsed::Record { start, end, fields } => {
                first_start = Some(start);
                if end - start > max_record {
                    cands.push((delim, Candidate::TooLong));
                } else {
                    cands.push((delim, Candidate::Fields(fields)));
                }
            }
        }
    }
    let start = first_start.unwrap_or(0);
    let header_line = 1 + memchr::memchr_iter(b'\n', &body[..start]).count() as u64;
    let layout = choose(&cands, dialect, header_line)?;
    let end = match parse_record(body, layout.delimiter, eof) {
        Parsed::Record { end, .. } => end,
        _ => body.len(),
    };
    Ok(Some(Header {
        line: 1 + memchr::memchr_iter(b'\n', &body[..end]).count() as u64,
        data_start: bom + end,
        layout,
    }))
}
