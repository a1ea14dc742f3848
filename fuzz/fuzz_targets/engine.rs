//! Arbitrary bytes and dialect into the engine's synchronous core: it must
//! never panic, and the multi-range scan must agree with the sequential one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::engine::{
    summarize_slice, summarize_slice_with_chunk, DecimalSeparator, Dialect, EngineError, Summary,
};

fn outcome(r: Result<Summary, EngineError>) -> Result<(u64, String), String> {
    r.map(|s| (s.entries, s.sum.to_string()))
        .map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((cfg, input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let delimiter = match cfg[0] % 8 {
        0..=2 => None,
        3 => Some(b';'),
        4 => Some(b'\t'),
        5 => Some(b'|'),
        6 => Some(b','),
        _ => Some(cfg[0]),
    };
    let dialect = Dialect {
        delimiter,
        decimal_separator: if cfg[1] & 1 == 0 {
            DecimalSeparator::Dot
        } else {
            DecimalSeparator::Comma
        },
        max_record_bytes: usize::from(cfg[2] & 0x7f) * 8,
    };
    let sequential = outcome(summarize_slice(input, dialect));
    let range = 1 + u64::from(cfg[2] >> 2);
    let block = 1 + usize::from(cfg[1] >> 1);
    let ranged = outcome(summarize_slice_with_chunk(input, dialect, 2, range, block));
    assert_eq!(sequential, ranged);
});
