//! The CSV sum engine: counts the entries of a CSV file and sums its
//! `amount EUR` column exactly.
//!
//! This module owns everything about reading the file: header and delimiter
//! detection, RFC 4180 quoting, amount formats, exact summation, the error
//! texts users see, the multi-threaded file path, a straightforward
//! [`reference`](mod@reference) implementation used to check the fast one,
//! and the test data generator [`gen`]. It does no I/O beyond reading the
//! input it is given.
//!
//! The fast path never builds records: it finds delimiters, quotes and line
//! ends 64 bytes at a time, parses only the amount cell into integer units
//! and converts to [`Decimal`] once at the end.

mod amount;
pub mod gen;
mod header;
mod parallel;
pub mod reference;
mod scan;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use rust_decimal::Decimal;
use tokio::io::{AsyncRead, AsyncReadExt};

use self::amount::Acc;
use self::header::read_header;
use self::scan::{Core, Stop};

/// Default limit of one record's length (`Dialect::max_record_bytes == 0`).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// Bytes read per block.
const BLOCK: usize = 2 << 20;

/// The character between the integer part and the cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DecimalSeparator {
    /// `1,234.56`
    #[default]
    Dot,
    /// `1.234,56`
    Comma,
}

impl DecimalSeparator {
    pub(crate) fn byte(self) -> u8 {
        match self {
            DecimalSeparator::Dot => b'.',
            DecimalSeparator::Comma => b',',
        }
    }
}

impl FromStr for DecimalSeparator {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "." => Ok(DecimalSeparator::Dot),
            "," => Ok(DecimalSeparator::Comma),
            other => Err(format!(
                "decimal separator must be \".\" or \",\", not \"{other}\""
            )),
        }
    }
}

impl fmt::Display for DecimalSeparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecimalSeparator::Dot => ".",
            DecimalSeparator::Comma => ",",
        })
    }
}

/// How to read a file. The default detects the delimiter and expects
/// decimal dots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dialect {
    /// Field delimiter; `None` detects one of `,` `;` TAB `|` from the header.
    pub delimiter: Option<u8>,
    pub decimal_separator: DecimalSeparator,
    /// Longest record accepted, in bytes; 0 means [`DEFAULT_MAX_RECORD_BYTES`].
    pub max_record_bytes: usize,
}

impl Dialect {
    pub(crate) fn max_record_bytes(&self) -> usize {
        match self.max_record_bytes {
            0 => DEFAULT_MAX_RECORD_BYTES,
            n => n,
        }
    }
}

/// The result for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Data records (the header and blank lines are not entries).
    pub entries: u64,
    /// Exact sum at the largest scale seen, at least 2.
    pub sum: Decimal,
    /// Bytes read.
    pub bytes: u64,
}

/// Why a file could not be summed. Everything but [`EngineError::Io`] is a
/// problem with the file that the user has to fix; retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no header: the file is empty")]
    Empty,
    #[error("no header: the file contains only blank lines")]
    BlankOnly,
    #[error("no header: the first {limit} bytes of the file are all blank lines")]
    LeadingBlankLines { limit: usize },
    #[error("no \"amount EUR\" column; headers found: {found}")]
    MissingColumn { found: String },
    #[error(
        "columns {first} and {second} are both named \"amount EUR\"; \
         keep only one of them"
    )]
    AmbiguousColumn { first: usize, second: usize },
    #[error(
        "the delimiter {} cannot be used: quotes and line breaks \
         have their own meaning in CSV",
        ascii_shown(*.0)
    )]
    InvalidDelimiter(u8),
    #[error("line {line}: expected {expected} fields like the header, found {found}")]
    FieldCount {
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: record is longer than {limit} bytes")]
    RecordTooLong { line: u64, limit: usize },
    #[error(
        "line {line}, column \"{column}\": \"{value}\" is not an amount \
         (decimal separator is \"{separator}\"; {})",
        separator_hint(*separator)
    )]
    BadAmount {
        line: u64,
        column: String,
        value: String,
        separator: DecimalSeparator,
    },
    #[error(
        "line {line}, column \"{column}\": \"{value}\" cannot be added exactly \
         (at most 28 decimal places and 28 significant digits)"
    )]
    AmountOutOfRange {
        line: u64,
        column: String,
        value: String,
    },
    #[error(
        "line {line}: the running sum of column \"{column}\" is too large to \
         be represented exactly (at most 28 significant digits)"
    )]
    SumOverflow { line: u64, column: String },
    #[error("could not read the file: {0}")]
    Io(#[from] std::io::Error),
}

fn separator_hint(sep: DecimalSeparator) -> &'static str {
    match sep {
        DecimalSeparator::Dot => "for European formats upload with decimal_separator=,",
        DecimalSeparator::Comma => "for amounts like 1234.56 upload with decimal_separator=.",
    }
}

fn ascii_shown(b: u8) -> String {
    match b {
        b'"' => "'\"'".to_string(),
        _ => format!("\"{}\"", b.escape_ascii()),
    }
}

impl EngineError {
    /// True for problems with the file itself (never worth retrying).
    pub fn is_data_error(&self) -> bool {
        !matches!(self, EngineError::Io(_))
    }

    /// Moves a line number counted from a range start to the whole file.
    pub(crate) fn shift_lines(mut self, by: u64) -> Self {
        match &mut self {
            EngineError::FieldCount { line, .. }
            | EngineError::RecordTooLong { line, .. }
            | EngineError::BadAmount { line, .. }
            | EngineError::AmountOutOfRange { line, .. }
            | EngineError::SumOverflow { line, .. } => *line += by,
            _ => {}
        }
        self
    }
}

fn summary(core: &Core<'_>, bytes: u64) -> Summary {
    Summary {
        entries: core.entries,
        sum: core.acc.to_decimal(),
        bytes,
    }
}

fn into_error(stop: Stop) -> EngineError {
    match stop {
        Stop::Error(e) => e,
        // Only speculative range scans return Unsafe.
        Stop::Unsafe => EngineError::Io(std::io::Error::other("internal: unsafe range")),
    }
}

/// A read buffer that keeps the unconsumed tail of the previous block in
/// front of the next one. Each block is read to an address with the same
/// offset within a 4 KiB page as its file offset: when the two differ by a
/// few bytes, the kernel's copy from the page cache runs several times
/// slower (4K aliasing between its loads and stores).
pub(crate) struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

const PAGE: usize = 4096;
/// Size of the first read of a stream; see `summarize_with_block`.
const PROBE: usize = 16;
/// Room kept before each block of a stream for the record carried over.
const GAP: usize = 64 << 10;

/// The first offset at or after `at` whose address in `data` has the same
/// page offset as `file_offset`.
fn page_matched(data: &[u8], at: usize, file_offset: u64) -> usize {
    let addr = data.as_ptr() as usize + at;
    let want = (file_offset % PAGE as u64) as usize;
    at + (want + PAGE - addr % PAGE) % PAGE
}

impl Buffer {
    pub(crate) fn new() -> Self {
        Buffer {
            data: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
    }

    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Moves the unconsumed tail just before a page-matched offset and
    /// returns room for `block` bytes read from `file_offset`; `commit` then
    /// marks them filled.
    pub(crate) fn spare(&mut self, block: usize, file_offset: u64) -> &mut [u8] {
        let tail = self.end - self.start;
        let need = tail + PAGE + block;
        if self.data.len() < need {
            // Headroom, so a slowly growing tail does not reallocate often.
            let mut bigger = vec![0u8; need + need / 4];
            bigger[..tail].copy_from_slice(&self.data[self.start..self.end]);
            self.data = bigger;
            (self.start, self.end) = (0, tail);
        }
        let read_at = page_matched(&self.data, tail, file_offset);
        self.data.copy_within(self.start..self.end, read_at - tail);
        (self.start, self.end) = (read_at - tail, read_at);
        &mut self.data[read_at..read_at + block]
    }

    pub(crate) fn commit(&mut self, n: usize) {
        self.end += n;
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sums a CSV stream in constant memory, reading blocks of 2 MiB.
/// `progress` holds the bytes consumed so far and is updated once per block.
///
/// Each block is scanned on the calling task (about a millisecond per
/// block) while the next block is being read.
pub async fn summarize<R: AsyncRead + Unpin + Send>(
    reader: R,
    dialect: Dialect,
    progress: &AtomicU64,
) -> Result<Summary, EngineError> {
    summarize_with_block(reader, dialect, progress, BLOCK).await
}

/// [`summarize`] reading blocks of `block` bytes (tests use tiny blocks).
#[doc(hidden)]
pub async fn summarize_with_block<R: AsyncRead + Unpin + Send>(
    mut reader: R,
    dialect: Dialect,
    progress: &AtomicU64,
    block: usize,
) -> Result<Summary, EngineError> {
    let block = block.max(1);
    // The header may need several blocks; it is read into a growing buffer.
    let mut head = Buffer::new();
    let mut total = 0u64;
    let mut eof;
    // tokio's File reads into its own buffer, which glibc puts 16 bytes past
    // a page start; a 16-byte first read keeps its later reads at that page
    // offset, avoiding the slow misaligned kernel copy described at `Buffer`.
    let mut want = PROBE.min(block);
    let header = loop {
        let n = read_full(&mut reader, &mut head.spare(want, total)[..want]).await?;
        head.commit(n);
        total += n as u64;
        progress.store(total, Ordering::Relaxed);
        eof = n < want;
        if let Some(h) = read_header(head.filled(), eof, &dialect)? {
            break h;
        }
        if eof {
            return Err(EngineError::Empty);
        }
        want = block.max(head.filled().len());
    };
    let mut core = Core::new(&header.layout, header.line, Acc::default(), true);
    let rest = &head.filled()[header.data_start..];
    if eof {
        core.run(rest, true, usize::MAX).map_err(into_error)?;
        return Ok(summary(&core, total));
    }

    // Double buffering: block k + 1 is read behind a gap while block k is
    // scanned; the unfinished last record of block k is then copied into
    // the gap, or, if longer than the gap (rare), joined in a new buffer.
    let mut cur = rest.to_vec();
    let (mut start, mut end) = (0, cur.len());
    let mut next = vec![0u8; GAP + PAGE + block];
    let mut want = block;
    loop {
        // A file read from the start is at offset `total`.
        let read_at = page_matched(&next, GAP, total);
        let (read, scanned) = futures::join!(
            read_full(&mut reader, &mut next[read_at..read_at + want]),
            async { core.run(&cur[start..end], false, usize::MAX) }
        );
        let consumed = scanned.map_err(into_error)?;
        let n = read?;
        total += n as u64;
        progress.store(total, Ordering::Relaxed);
        let carry = &cur[start + consumed..end];
        let eof = n < want;
        // Reading at least as much as is carried keeps long records linear.
        want = block.max(carry.len());
        if carry.len() <= read_at {
            let new_start = read_at - carry.len();
            next[new_start..read_at].copy_from_slice(carry);
            std::mem::swap(&mut cur, &mut next);
            (start, end) = (new_start, read_at + n);
        } else {
            let mut joined = Vec::with_capacity(carry.len() + n);
            joined.extend_from_slice(carry);
            joined.extend_from_slice(&next[read_at..read_at + n]);
            (start, end) = (0, joined.len());
            cur = joined;
        }
        if next.len() < GAP + PAGE + want {
            next = vec![0u8; GAP + PAGE + want];
        }
        if eof {
            core.run(&cur[start..end], true, usize::MAX)
                .map_err(into_error)?;
            return Ok(summary(&core, total));
        }
    }
}

/// Sums a local file, split into byte ranges scanned on `threads` OS threads
/// (1 = sequential, 0 = one per core). Results and error texts are exactly
/// those of [`summarize`].
pub fn summarize_path(
    path: &Path,
    dialect: Dialect,
    threads: usize,
) -> Result<Summary, EngineError> {
    summarize_path_with_chunk(path, dialect, threads, 0)
}

/// [`summarize_path`] with a forced range size (0 = automatic), so tests can
/// make many ranges out of small files.
#[doc(hidden)]
pub fn summarize_path_with_chunk(
    path: &Path,
    dialect: Dialect,
    threads: usize,
    range_bytes: u64,
) -> Result<Summary, EngineError> {
    let file = parallel::FileSource::open(path)?;
    parallel::summarize_source(&file, dialect, threads, range_bytes, BLOCK)
}

/// Sums an in-memory file on the calling thread.
#[doc(hidden)]
pub fn summarize_slice(bytes: &[u8], dialect: Dialect) -> Result<Summary, EngineError> {
    let header = match read_header(bytes, true, &dialect)? {
        Some(h) => h,
        None => return Err(EngineError::Empty),
    };
    let mut core = Core::new(&header.layout, header.line, Acc::default(), true);
    core.run(&bytes[header.data_start..], true, usize::MAX)
        .map_err(into_error)?;
    Ok(summary(&core, bytes.len() as u64))
}

/// Like [`summarize_path_with_chunk`] over an in-memory file, reading
/// blocks of `block` bytes.
#[doc(hidden)]
pub fn summarize_slice_with_chunk(
    bytes: &[u8],
    dialect: Dialect,
    threads: usize,
    range_bytes: u64,
    block: usize,
) -> Result<Summary, EngineError> {
    parallel::summarize_source(bytes, dialect, threads, range_bytes, block.max(1))
}
