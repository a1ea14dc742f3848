//! Scanning a file as byte ranges on several threads.
//!
//! Range `i` starts speculatively after the first line break at or after
//! its nominal start, as if that break ended a record, and sums from zero.
//! The ranges are then merged in file order. A range's result is used only
//! if the previous range ended exactly at that start (so the guess was
//! right) and its partial sums cannot have overflowed on top of the prefix;
//! otherwise that stretch is rescanned sequentially from the true state.
//! The merge therefore gives exactly the sequential result, including which
//! error comes first and its line number.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use super::amount::Acc;
use super::header::{read_header, Header};
use super::scan::{Core, Stop};
use super::{into_error, Buffer, Dialect, EngineError, Summary};

/// Something that can be read at any offset from several threads.
pub(crate) trait Source: Sync {
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; 0 only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

pub(crate) struct FileSource {
    file: std::fs::File,
    size: u64,
}

impl FileSource {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSource { file, size })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.size.saturating_sub(offset)).unwrap_or(usize::MAX));
        let mut n = 0;
        while n < want {
            #[cfg(unix)]
            let r = std::os::unix::fs::FileExt::read_at(
                &self.file,
                &mut buf[n..want],
                offset + n as u64,
            );
            #[cfg(windows)]
            let r = std::os::windows::fs::FileExt::seek_read(
                &self.file,
                &mut buf[n..want],
                offset + n as u64,
            );
            match r {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// Reads blocks into `buf` until the header is complete.
fn source_header<S: Source + ?Sized>(
    src: &S,
    dialect: &Dialect,
    buf: &mut Buffer,
    block: usize,
) -> Result<Header, EngineError> {
    let mut off = 0u64;
    loop {
        let n = src.read_at(buf.spare(block, off), off)?;
        buf.commit(n);
        off += n as u64;
        let eof = off >= src.size() || n == 0;
        if let Some(h) = read_header(buf.filled(), eof, dialect)? {
            return Ok(h);
        }
        if eof {
            return Err(EngineError::Empty);
        }
    }
}

/// How a scan reads: block size and a flag to give up early.
#[derive(Clone, Copy)]
struct Reading<'a> {
    block: usize,
    cancel: &'a AtomicBool,
}

/// Scans records from `from` (a record boundary) up to the first record
/// boundary at or after `stop`, or the end. Returns that boundary.
fn scan_range<S: Source + ?Sized>(
    src: &S,
    (from, stop): (u64, u64),
    core: &mut Core<'_>,
    buf: &mut Buffer,
    how: Reading<'_>,
) -> Result<u64, Stop> {
    buf.clear();
    let size = src.size();
    let mut base = from; // file offset of buf.filled()[0]
    let mut read_off = from;
    loop {
        if how.cancel.load(Ordering::Relaxed) {
            return Ok(base);
        }
        // Reading at least as much as is carried keeps long records linear.
        let want = how.block.max(buf.filled().len());
        let n = src
            .read_at(buf.spare(want, read_off), read_off)
            .map_err(EngineError::Io)?;
        buf.commit(n);
        read_off += n as u64;
        let eof = read_off >= size || n == 0;
        let stop_at = usize::try_from(stop.saturating_sub(base)).unwrap_or(usize::MAX);
        let consumed = core.run(buf.filled(), eof, stop_at)?;
        base += consumed as u64;
        buf.consume(consumed);
        if base >= stop || eof {
            return Ok(base);
        }
    }
}

/// What one speculative range scan found.
struct RangeResult {
    end: u64,
    entries: u64,
    acc: Acc,
    newlines: u64,
    outcome: Result<(), Stop>,
}

/// First offset after a line break at or after `at - 1`, before `limit`.
fn record_start_near<S: Source + ?Sized>(
    src: &S,
    at: u64,
    limit: u64,
) -> std::io::Result<Option<u64>> {
    let mut off = at.saturating_sub(1);
    let mut chunk = vec![0u8; 64 << 10];
    while off < limit {
        let want = chunk
            .len()
            .min(usize::try_from(limit - off).unwrap_or(usize::MAX));
        let n = src.read_at(&mut chunk[..want], off)?;
        if n == 0 {
            break;
        }
        if let Some(i) = memchr::memchr2(b'\n', b'\r', &chunk[..n]) {
            let s = off + i as u64 + 1;
            return Ok((s < limit).then_some(s));
        }
        off += n as u64;
    }
    Ok(None)
}

pub(crate) fn summarize_source<S: Source + ?Sized>(
    src: &S,
    dialect: Dialect,
    threads: usize,
    range_bytes: u64,
    block: usize,
) -> Result<Summary, EngineError> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let size = src.size();
    let mut buf = Buffer::new();
    let header = source_header(src, &dialect, &mut buf, block)?;
    let layout = &header.layout;
    let data_start = header.data_start as u64;
    let no_cancel = AtomicBool::new(false);
    let sequential = Reading {
        block,
        cancel: &no_cancel,
    };

    let span = size.saturating_sub(data_start);
    let range_bytes = match range_bytes {
        0 => (span / (threads as u64 * 8)).clamp(8 << 20, 256 << 20),
        n => n,
    };
    if threads <= 1 || span <= range_bytes {
        let mut core = Core::new(layout, header.line, Acc::default(), true);
        scan_range(src, (data_start, u64::MAX), &mut core, &mut buf, sequential)
            .map_err(into_error)?;
        return Ok(super::summary(&core, size));
    }

    // Speculative range starts, strictly increasing.
    let mut starts = vec![data_start];
    let mut nominal = data_start + range_bytes;
    while nominal < size {
        let limit = (nominal + range_bytes).min(size);
        if let Some(s) = record_start_near(src, nominal, limit)? {
            if s > *starts.last().unwrap_or(&0) {
                starts.push(s);
            }
        }
        nominal += range_bytes;
    }
    let ranges = starts.len();
    let stop_of = |i: usize| starts.get(i + 1).copied().unwrap_or(u64::MAX);

    let next_range = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, RangeResult)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(ranges) {
            let tx = tx.clone();
            let (next_range, cancel, starts) = (&next_range, &cancel, &starts);
            let how = Reading { block, cancel };
            scope.spawn(move || {
                let mut buf = Buffer::new();
                loop {
                    let i = next_range.fetch_add(1, Ordering::Relaxed);
                    if i >= ranges || cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut core = Core::new(layout, 1, Acc::default(), false);
                    let span = (starts[i], stop_of(i));
                    let scanned = scan_range(src, span, &mut core, &mut buf, how);
                    let (end, outcome) = match scanned {
                        Ok(end) => (end, Ok(())),
                        Err(stop) => (0, Err(stop)),
                    };
                    let result = RangeResult {
                        end,
                        entries: core.entries,
                        acc: core.acc,
                        newlines: core.line - 1,
                        outcome,
                    };
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let merged = merge(src, &header, &starts, &rx, &mut buf, sequential);
        // Stop the workers early once the answer is known (e.g. an error).
        cancel.store(true, Ordering::Relaxed);
        merged
    })
    .map(|(entries, acc)| Summary {
        entries,
        sum: acc.to_decimal(),
        bytes: size,
    })
}

/// Combines range results in file order as they arrive.
fn merge<S: Source + ?Sized>(
    src: &S,
    header: &Header,
    starts: &[u64],
    rx: &mpsc::Receiver<(usize, RangeResult)>,
    buf: &mut Buffer,
    how: Reading<'_>,
) -> Result<(u64, Acc), EngineError> {
    let size = src.size();
    let mut results: Vec<Option<RangeResult>> = (0..starts.len()).map(|_| None).collect();
    let mut cur = header.data_start as u64;
    let mut line = header.line;
    let mut entries = 0u64;
    let mut acc = Acc::default();
    let mut idx = 0usize;
    while cur < size {
        while idx < starts.len() && starts[idx] < cur {
            idx += 1;
        }
        if idx < starts.len() && starts[idx] == cur {
            while results[idx].is_none() {
                match rx.recv() {
                    Ok((i, r)) => results[i] = Some(r),
                    Err(_) => break,
                }
            }
            if let Some(r) = results[idx].take() {
                match r.outcome {
                    Err(Stop::Error(e)) => return Err(e.shift_lines(line - 1)),
                    Ok(()) if acc.can_absorb(&r.acc) => {
                        if let Some(sum) = acc.merge(&r.acc) {
                            acc = sum;
                            entries += r.entries;
                            line += r.newlines;
                            cur = r.end;
                            continue;
                        }
                    }
                    _ => {}
                }
            }
        }
        // Rescan sequentially from the true state up to the next range start.
        let stop = starts
            .iter()
            .copied()
            .find(|&s| s > cur)
            .unwrap_or(u64::MAX);
        let mut core = Core::new(&header.layout, line, acc, true);
        cur = scan_range(src, (cur, stop), &mut core, buf, how).map_err(into_error)?;
        entries += core.entries;
        acc = core.acc;
        line = core.line;
    }
    Ok((entries, acc))
}
