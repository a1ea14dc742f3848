//! Property tests: random valid files against a sum computed from the
//! generated records, and random mutations where all implementations must
//! agree and nothing may panic.

use std::io::Write;
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;

use super::*;

/// One amount: signed units at a scale, and how to write it.
#[derive(Debug, Clone)]
struct Amt {
    units: i64,
    scale: u32,
    style: u8,
}

/// A generated file with the exact expected result.
#[derive(Debug, Clone)]
struct Case {
    bytes: Vec<u8>,
    dialect: Dialect,
    entries: u64,
    sum: String,
}

fn group(int: &str, sep: &str) -> String {
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push_str(sep);
        }
        out.push(c);
    }
    out
}

/// Writes an amount in one of the accepted formats.
fn format_amount(a: &Amt, sep: DecimalSeparator) -> String {
    let abs = a.units.unsigned_abs().to_string();
    let scale = a.scale as usize;
    let padded = format!("{abs:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let dec = sep.to_string();
    let int = match (a.style % 4, sep) {
        (1, DecimalSeparator::Dot) => group(int, ","),
        (1, DecimalSeparator::Comma) => group(int, "."),
        (2, DecimalSeparator::Comma) => group(int, "\u{a0}"),
        (3, DecimalSeparator::Comma) => group(int, " "),
        _ => int.to_string(),
    };
    let num = if frac.is_empty() {
        int
    } else {
        format!("{int}{dec}{frac}")
    };
    let neg = a.units < 0;
    match (a.style / 4) % 6 {
        0 => format!("{}{num}", if neg { "-" } else { "" }),
        1 => format!("{}{num}", if neg { "-" } else { "+" }),
        2 if neg => format!("({num})"),
        2 => format!(" {num} "),
        3 => format!("{}€{num}", if neg { "-" } else { "" }),
        4 => format!("{}{num} EUR", if neg { "-" } else { "" }),
        _ => format!("€ {}{num}", if neg { "-" } else { "" }),
    }
}

fn needs_quotes(field: &[u8], delim: u8) -> bool {
    field
        .iter()
        .any(|&b| b == delim || b == b'"' || b == b'\r' || b == b'\n')
}

fn push_field(out: &mut Vec<u8>, field: &[u8], delim: u8, force_quote: bool) {
    if force_quote || needs_quotes(field, delim) {
        out.push(b'"');
        for &b in field {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field);
    }
}

fn text_field() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => prop::sample::select(b"abcXYZ 019-.".to_vec()),
        1 => prop::sample::select(b",;\t|\"\r\n".to_vec()),
        1 => prop::sample::select(vec![0xe9u8, 0xfc, 0xff, 0x00]),
    ];
    // Mostly short fields; some long enough for records over 128 bytes.
    prop_oneof![
        4 => prop::collection::vec(byte.clone(), 0..12),
        1 => prop::collection::vec(byte, 30..70),
    ]
}

fn amount() -> impl Strategy<Value = Amt> {
    (
        prop_oneof![
            3 => -100_000i64..100_000,
            1 => -1_000_000_000_000i64..1_000_000_000_000,
        ],
        0u32..5,
        any::<u8>(),
    )
        .prop_map(|(units, scale, style)| Amt {
            units,
            scale,
            style,
        })
}

fn case() -> impl Strategy<Value = Case> {
    let shape = (
        1usize..6,
        any::<prop::sample::Index>(),
        prop::sample::select(vec![b',', b';', b'\t', b'|']),
        any::<bool>(),
        any::<bool>(),
    );
    shape.prop_flat_map(|(cols, amount_idx, delim, comma, explicit)| {
        let amount_col = amount_idx.index(cols);
        let record = (
            prop::collection::vec(text_field(), cols - 1),
            amount(),
            prop::collection::vec(any::<bool>(), cols),
            prop::sample::select(vec!["\n", "\r\n", "\r", "\n\n", "\r\n\r\n"]),
        );
        (
            prop::collection::vec(record, 0..40),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(records, final_newline, bom)| {
                let sep = if comma {
                    DecimalSeparator::Comma
                } else {
                    DecimalSeparator::Dot
                };
                // A one-column file has no delimiter to detect.
                let dialect = Dialect {
                    delimiter: (explicit || cols == 1).then_some(delim),
                    decimal_separator: sep,
                    max_record_bytes: 0,
                };
                let mut bytes = Vec::new();
                if bom {
                    bytes.extend_from_slice(header::UTF8_BOM);
                }
                let names: Vec<String> = (0..cols)
                    .map(|i| {
                        if i == amount_col {
                            " Amount EUR".to_string()
                        } else {
                            format!("c{i}")
                        }
                    })
                    .collect();
                bytes.extend_from_slice(names.join(&(delim as char).to_string()).as_bytes());
                bytes.extend_from_slice(b"\r\n");
                let mut units: i128 = 0;
                let mut scale = 2u32;
                let n = records.len();
                for (r, (texts, amt, quote, eol)) in records.into_iter().enumerate() {
                    if amt.scale > scale {
                        units *= 10i128.pow(amt.scale - scale);
                        scale = amt.scale;
                    }
                    units += i128::from(amt.units) * 10i128.pow(scale - amt.scale);
                    let mut texts = texts.into_iter();
                    for (c, &quoted) in quote.iter().enumerate() {
                        if c > 0 {
                            bytes.push(delim);
                        }
                        let field = if c == amount_col {
                            format_amount(&amt, sep).into_bytes()
                        } else {
                            texts.next().unwrap_or_default()
                        };
                        // A lone empty field would read as a blank line.
                        let force = quoted || (cols == 1 && field.is_empty());
                        push_field(&mut bytes, &field, delim, force);
                    }
                    if r + 1 < n || final_newline {
                        bytes.extend_from_slice(eol.as_bytes());
                    }
                }
                Case {
                    bytes,
                    dialect,
                    entries: n as u64,
                    sum: Decimal::from_i128_with_scale(units, scale).to_string(),
                }
            })
    })
}

type Outcome = Result<(u64, String), String>;

fn show(r: Result<Summary, EngineError>) -> Outcome {
    r.map(|s| (s.entries, s.sum.to_string()))
        .map_err(|e| e.to_string())
}

/// Every implementation on `bytes`, in a fixed order: async fast path,
/// reference, in-memory, ranges on threads, ranges on a temp file.
fn outcomes(
    bytes: &[u8],
    dialect: Dialect,
    block: usize,
    range: u64,
) -> Vec<(&'static str, Outcome)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let progress = AtomicU64::new(0);
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    vec![
        (
            "summarize",
            show(rt.block_on(summarize_with_block(bytes, dialect, &progress, block))),
        ),
        (
            "reference",
            show(rt.block_on(reference::summarize(bytes, dialect))),
        ),
        ("slice", show(summarize_slice(bytes, dialect))),
        (
            "ranges x2",
            show(summarize_slice_with_chunk(bytes, dialect, 2, range, block)),
        ),
        (
            "path x3",
            show(summarize_path_with_chunk(file.path(), dialect, 3, range)),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_valid_files_sum_exactly(c in case(), block in 1usize..300, range in 1u64..200) {
        let expected = Ok((c.entries, c.sum.clone()));
        for (name, got) in outcomes(&c.bytes, c.dialect, block, range) {
            prop_assert_eq!(&got, &expected, "{} on {:?}", name, String::from_utf8_lossy(&c.bytes));
        }
        for forced in [scan::Forced::Baseline, scan::Forced::Portable] {
            scan::FORCE_CLASSIFIER.set(forced);
            let got = show(summarize_slice(&c.bytes, c.dialect));
            scan::FORCE_CLASSIFIER.set(scan::Forced::Auto);
            prop_assert_eq!(&got, &expected, "classifier on {:?}", String::from_utf8_lossy(&c.bytes));
        }
    }
}

/// A few random edits of bytes that matter to CSV.
fn mutations() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
    let byte = prop_oneof![
        prop::sample::select(b"\",;\t|\r\n.0159 -()eE".to_vec()),
        any::<u8>(),
    ];
    prop::collection::vec((any::<prop::sample::Index>(), byte, 0u8..3), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_agree_and_never_panic(
        c in case(),
        edits in mutations(),
        block in 1usize..300,
        range in 1u64..200,
        limit in prop_oneof![Just(0usize), 8usize..64],
    ) {
        let mut bytes = c.bytes.clone();
        for (at, b, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = b,
                1 => bytes.insert(i, b),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.push(b),
            }
        }
        let dialect = Dialect { max_record_bytes: limit, ..c.dialect };
        let results = outcomes(&bytes, dialect, block, range);
        let (_, fast) = &results[0];
        for (name, got) in &results[1..] {
            if *name == "reference" {
                // The reference measures record length slightly differently
                // at the very end of a file; compare Ok/Err only.
                prop_assert_eq!(got.is_ok(), fast.is_ok(), "reference on {:?}: {:?} vs {:?}",
                    String::from_utf8_lossy(&bytes), got, fast);
                if limit == 0 {
                    prop_assert_eq!(got, fast, "reference on {:?}", String::from_utf8_lossy(&bytes));
                }
            } else {
                prop_assert_eq!(got, fast, "{} on {:?}", name, String::from_utf8_lossy(&bytes));
            }
        }
    }
}
