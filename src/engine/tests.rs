//! Unit tests: one small case per rule of the contract. Every case runs
//! through all implementations (async with several block sizes, in-memory,
//! ranges on several threads, and the reference) and they must agree.

use std::sync::atomic::AtomicU64;

use super::*;

fn dot() -> Dialect {
    Dialect::default()
}

fn comma() -> Dialect {
    Dialect {
        decimal_separator: DecimalSeparator::Comma,
        ..Dialect::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

type Outcome = Result<(u64, String), String>;

fn show(r: Result<Summary, EngineError>) -> Outcome {
    r.map(|s| (s.entries, s.sum.to_string()))
        .map_err(|e| e.to_string())
}

/// All implementations on `input`; panics unless they agree.
pub(super) fn run_all(input: &[u8], dialect: Dialect) -> Outcome {
    let rt = rt();
    let progress = AtomicU64::new(0);
    let fast = show(rt.block_on(summarize(input, dialect, &progress)));
    let mut others = vec![
        ("slice", show(summarize_slice(input, dialect))),
        (
            "reference",
            show(rt.block_on(reference::summarize(input, dialect))),
        ),
    ];
    for block in [1, 3, 17] {
        let r = rt.block_on(summarize_with_block(input, dialect, &progress, block));
        others.push(("async small blocks", show(r)));
    }
    for (threads, range, block) in [(2, 7, 5), (3, 1, 2), (2, 64, 64 << 10)] {
        let r = summarize_slice_with_chunk(input, dialect, threads, range, block);
        others.push(("ranges", show(r)));
    }
    for (name, other) in others {
        assert_eq!(fast, other, "summarize vs {name} on {input:?}");
    }
    fast
}

fn run(input: &str, dialect: Dialect) -> Outcome {
    run_all(input.as_bytes(), dialect)
}

fn ok(entries: u64, sum: &str) -> Outcome {
    Ok((entries, sum.to_string()))
}

fn err(text: &str) -> Outcome {
    Err(text.to_string())
}

fn amount(cell: &str, dialect: Dialect) -> Outcome {
    let input = format!("amount EUR\n\"{}\"\n", cell.replace('"', "\"\""));
    run(&input, dialect).map(|(_, s)| (1, s))
}

fn bad_amount_dot(value: &str) -> Outcome {
    err(&format!(
        "line 2, column \"amount EUR\": \"{value}\" is not an amount (decimal separator is \".\"; for European formats upload with decimal_separator=,)"
    ))
}

fn bad_amount_comma(value: &str) -> Outcome {
    err(&format!(
        "line 2, column \"amount EUR\": \"{value}\" is not an amount (decimal separator is \",\"; for amounts like 1234.56 upload with decimal_separator=.)"
    ))
}

// --- totals and scale ---

#[test]
fn sums_simple_file() {
    assert_eq!(
        run("id,amount EUR\n1,12.50\n2,-2.25\n", dot()),
        ok(2, "10.25")
    );
}

#[test]
fn scale_is_largest_seen_and_at_least_two() {
    assert_eq!(run("amount EUR\n12.5\n1\n", dot()), ok(2, "13.50"));
    assert_eq!(run("amount EUR\n1\n", dot()), ok(1, "1.00"));
    assert_eq!(run("amount EUR\n0.125\n1\n", dot()), ok(2, "1.125"));
    assert_eq!(run("amount EUR\n1\n-1.0000\n", dot()), ok(2, "0.0000"));
}

#[test]
fn only_header_is_zero_entries() {
    assert_eq!(run("id,amount EUR\n", dot()), ok(0, "0.00"));
    assert_eq!(run("id,amount EUR", dot()), ok(0, "0.00"));
}

#[test]
fn summary_reports_bytes_read() {
    let input = b"amount EUR\n1.00\n";
    let s = summarize_slice(input, dot()).expect("sums");
    assert_eq!(s.bytes, input.len() as u64);
    let progress = AtomicU64::new(0);
    let s = rt()
        .block_on(summarize(&input[..], dot(), &progress))
        .expect("sums");
    assert_eq!(s.bytes, input.len() as u64);
    assert_eq!(progress.load(std::sync::atomic::Ordering::Relaxed), 16);
}

// --- header ---

#[test]
fn empty_file_has_no_header() {
    assert_eq!(run("", dot()), err("no header: the file is empty"));
    assert_eq!(run("\u{feff}", dot()), err("no header: the file is empty"));
}

#[test]
fn blank_lines_only_have_no_header() {
    assert_eq!(
        run("\n\r\n\n", dot()),
        err("no header: the file contains only blank lines")
    );
}

#[test]
fn missing_column_lists_headers() {
    assert_eq!(
        run("id,date,amount\n1,2,3\n", dot()),
        err("no \"amount EUR\" column; headers found: \"id\", \"date\", \"amount\"")
    );
}

#[test]
fn missing_column_list_is_shortened() {
    let header: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
    let out = run(&format!("{}\n", header.join(";")), dot());
    let text = out.expect_err("no amount column");
    assert!(text.ends_with("\"c19\", and 5 more"), "{text}");
}

#[test]
fn column_matched_case_insensitively_after_trimming() {
    assert_eq!(run(" Amount eur ,x\n1.00,a\n", dot()), ok(1, "1.00"));
    assert_eq!(
        run("x, AMOUNT EUR\n1,zz\n", dot()),
        err("line 2, column \"AMOUNT EUR\": \"zz\" is not an amount (decimal separator is \".\"; for European formats upload with decimal_separator=,)")
    );
}

#[test]
fn bom_is_stripped_from_the_header() {
    assert_eq!(
        run("\u{feff}amount EUR,id\r\n3.00,1\r\n", dot()),
        ok(1, "3.00")
    );
    assert_eq!(run("\u{feff}\"amount EUR\"\n3.00\n", dot()), ok(1, "3.00"));
}

#[test]
fn two_amount_columns_are_ambiguous() {
    assert_eq!(
        run("id,amount EUR,Amount EUR\n1,2,3\n", dot()),
        err("columns 2 and 3 are both named \"amount EUR\"; keep only one of them")
    );
}

#[test]
fn quoted_header_cells_are_matched() {
    assert_eq!(run("\"id\",\"amount EUR\"\n1,2.00\n", dot()), ok(1, "2.00"));
}

#[test]
fn latin1_header_cells_do_not_matter() {
    let input = b"Empf\xe4nger;amount EUR\nM\xfcller;1,50\n";
    assert_eq!(run_all(input, comma()), ok(1, "1.50"));
}

#[test]
fn blank_lines_before_header_count_as_lines() {
    assert_eq!(
        run("\n\namount EUR\nx\n", dot()),
        bad_amount_dot("x").map_err(|e| e.replace("line 2", "line 4"))
    );
}

// --- delimiters ---

#[test]
fn delimiter_detected_from_header() {
    assert_eq!(run("id;amount EUR\n1;2.00\n", dot()), ok(1, "2.00"));
    assert_eq!(run("id\tamount EUR\n1\t2.00\n", dot()), ok(1, "2.00"));
    assert_eq!(run("id|amount EUR\n1|2.00\n", dot()), ok(1, "2.00"));
}

#[test]
fn detection_prefers_the_delimiter_with_most_columns() {
    // Both `,` and `;` give an "amount EUR" column; `;` gives more columns.
    assert_eq!(run("a,b;amount EUR;c\nx,y;1.00;z\n", dot()), ok(1, "1.00"));
}

#[test]
fn single_column_with_decimal_comma_is_not_split_on_commas() {
    assert_eq!(run("amount EUR\n1,50\n2,25\n", comma()), ok(2, "3.75"));
}

#[test]
fn delimiter_override_is_used() {
    let d = Dialect {
        delimiter: Some(b';'),
        ..dot()
    };
    assert_eq!(run("id;amount EUR\n1;2.00\n", d), ok(1, "2.00"));
    assert_eq!(
        run("id,amount EUR\n1,2.00\n", d),
        err("no \"amount EUR\" column; headers found: \"id,amount EUR\"")
    );
}

#[test]
fn quote_or_line_break_cannot_be_the_delimiter() {
    let d = Dialect {
        delimiter: Some(b'"'),
        ..dot()
    };
    assert_eq!(
        run("amount EUR\n1\n", d),
        err("the delimiter '\"' cannot be used: quotes and line breaks have their own meaning in CSV")
    );
    let d = Dialect {
        delimiter: Some(b'\n'),
        ..dot()
    };
    assert_eq!(
        run("amount EUR\n1\n", d),
        err("the delimiter \"\\n\" cannot be used: quotes and line breaks have their own meaning in CSV")
    );
}

// --- quoting and lines ---

#[test]
fn quoted_fields_keep_delimiters_and_doubled_quotes() {
    let input = "desc,amount EUR\n\"a, \"\"b\"\"\",\"1,234.50\"\n\"\",2\n";
    assert_eq!(run(input, dot()), ok(2, "1236.50"));
}

#[test]
fn quoted_newline_keeps_line_numbers_exact() {
    let input = "desc,amount EUR\n\"two\nlines\",1.00\n\"three\r\nline\nnote\",2.00\nx,bad\n";
    assert_eq!(
        run(input, dot()),
        bad_amount_dot("bad").map_err(|e| e.replace("line 2", "line 7"))
    );
}

#[test]
fn crlf_lf_and_lone_cr_all_end_records() {
    assert_eq!(run("amount EUR\r\n1\r\n2\n3\r4", dot()), ok(4, "10.00"));
}

#[test]
fn blank_lines_are_not_entries() {
    let input = "amount EUR\n\n1\r\n\r\n\n2\n\n";
    assert_eq!(run(input, dot()), ok(2, "3.00"));
    assert_eq!(
        run("amount EUR\n\n\nx\n", dot()),
        bad_amount_dot("x").map_err(|e| e.replace("line 2", "line 4"))
    );
}

#[test]
fn missing_final_newline_is_fine() {
    assert_eq!(run("a,amount EUR\nx,1.25", dot()), ok(1, "1.25"));
    assert_eq!(run("a,amount EUR\nx,\"1.25\"", dot()), ok(1, "1.25"));
}

#[test]
fn quote_inside_unquoted_field_is_text() {
    assert_eq!(run("a,amount EUR\n12\" pipe,1.00\n", dot()), ok(1, "1.00"));
}

#[test]
fn text_after_closing_quote_joins_the_field() {
    // As in csv-core: `"1".50` reads as `1.50`.
    assert_eq!(run("a,amount EUR\nx,\"1\".50\n", dot()), ok(1, "1.50"));
}

#[test]
fn unterminated_quote_runs_to_end_of_file() {
    assert_eq!(run("a,amount EUR\nx,\"1.50", dot()), ok(1, "1.50"));
    assert_eq!(
        run("a,amount EUR\n\"x,1.50\ny,2\n", dot()),
        err("line 2: expected 2 fields like the header, found 1")
    );
}

#[test]
fn field_count_mismatch_names_line() {
    assert_eq!(
        run("a,b,amount EUR\n1,2,3\n1,2\n", dot()),
        err("line 3: expected 3 fields like the header, found 2")
    );
    assert_eq!(
        run("a,b,amount EUR\n1,2,3,4\n", dot()),
        err("line 2: expected 3 fields like the header, found 4")
    );
}

#[test]
fn first_error_in_file_order_wins() {
    let input = "a,amount EUR\nx,1\ny\nz,bad\n";
    assert_eq!(
        run(input, dot()),
        err("line 3: expected 2 fields like the header, found 1")
    );
}

#[test]
fn latin1_bytes_in_other_columns_do_not_matter() {
    let input = b"name,amount EUR\nM\xfcller,1.00\n\xe9t\xe9,2.00\n";
    assert_eq!(run_all(input, dot()), ok(2, "3.00"));
}

#[test]
fn non_utf8_amount_is_not_an_amount() {
    let input = b"amount EUR\n1\xa0\n";
    assert_eq!(run_all(input, dot()), bad_amount_dot("1\u{fffd}"));
}

#[test]
fn record_longer_than_limit_fails() {
    let d = Dialect {
        max_record_bytes: 10,
        ..dot()
    };
    assert_eq!(
        run("a,amount EUR\n1,2\n", d),
        err("line 1: record is longer than 10 bytes")
    );
    assert_eq!(
        run("amount EUR\n1.00\n12345678901\n", d),
        err("line 3: record is longer than 10 bytes")
    );
    assert_eq!(run("amount EUR\n1234567890\n", d), ok(1, "1234567890.00"));
    let long = format!("amount EUR\n{}", "1".repeat(5000));
    assert_eq!(run(&long, d), err("line 2: record is longer than 10 bytes"));
}

#[test]
fn default_record_limit_is_one_mebibyte() {
    let input = format!("a,amount EUR\n{},1\n", "x".repeat(1 << 20));
    assert_eq!(
        summarize_slice(input.as_bytes(), dot()).map_err(|e| e.to_string()),
        Err("line 2: record is longer than 1048576 bytes".to_string())
    );
}

// --- amounts ---

#[test]
fn amounts_with_spaces_signs_and_currency() {
    for (cell, sum) in [
        (" 12.50 ", "12.50"),
        ("+12.50", "12.50"),
        ("-12.50", "-12.50"),
        ("(12.50)", "-12.50"),
        ("( 12.50 )", "-12.50"),
        ("€12.50", "12.50"),
        ("12.50 €", "12.50"),
        ("EUR 12.50", "12.50"),
        ("12.50EUR", "12.50"),
        ("-€12.50", "-12.50"),
        ("€ -12.50", "-12.50"),
        ("(€12.50)", "-12.50"),
        ("(12.50) EUR", "-12.50"),
        ("1,234,567.89", "1234567.89"),
        ("007", "7.00"),
        ("-0.00", "0.00"),
        ("\u{a0}5\u{a0}", "5.00"),
    ] {
        assert_eq!(amount(cell, dot()), ok(1, sum), "cell {cell:?}");
    }
}

#[test]
fn european_grouping_with_dots_spaces_and_nbsp() {
    for (cell, sum) in [
        ("-1.234,56", "-1234.56"),
        ("1 234,56", "1234.56"),
        ("1\u{a0}234\u{a0}567,5", "1234567.50"),
        ("1\u{202f}234,56 €", "1234.56"),
        ("1234,56", "1234.56"),
        ("1.234", "1234.00"),
        ("(1.234,56)", "-1234.56"),
    ] {
        assert_eq!(amount(cell, comma()), ok(1, sum), "cell {cell:?}");
    }
}

#[test]
fn malformed_amounts_are_errors() {
    for cell in [
        "",
        " ",
        "1e5",
        "NaN",
        "12.3.4",
        "abc",
        "12,50",
        "1,23",
        "1234,567.00",
        "1,2345",
        ".5",
        "5.",
        "--5",
        "+-5",
        "- 5",
        "(-5)",
        "(5",
        "5)",
        "€5€",
        "1 234.00",
        "0x10",
        "½",
        "5 5",
        "inf",
    ] {
        assert_eq!(amount(cell, dot()), bad_amount_dot(cell), "cell {cell:?}");
    }
    for cell in ["12.50", "1.234.56", "1.234 567,00", "1,2,3", "12,", ",5"] {
        assert_eq!(
            amount(cell, comma()),
            bad_amount_comma(cell),
            "cell {cell:?}"
        );
    }
}

#[test]
fn amount_with_too_many_digits_is_out_of_range() {
    let many_places = format!("0.{}1", "0".repeat(28));
    assert_eq!(
        amount(&many_places, dot()),
        err(&format!("line 2, column \"amount EUR\": \"{many_places}\" cannot be added exactly (at most 28 decimal places and 28 significant digits)"))
    );
    let huge = "79228162514264337593543950336";
    assert_eq!(
        amount(huge, dot()),
        err(&format!("line 2, column \"amount EUR\": \"{huge}\" cannot be added exactly (at most 28 decimal places and 28 significant digits)"))
    );
}

#[test]
fn sum_overflow_is_an_error_not_a_wrap() {
    let big = "792281625142643375935439503.35";
    let input = format!("amount EUR\n{big}\n{big}\n");
    assert_eq!(
        run(&input, dot()),
        err("line 3: the running sum of column \"amount EUR\" is too large to be represented exactly (at most 28 significant digits)")
    );
    // Coming back into range later does not undo the error.
    let input = format!("amount EUR\n{big}\n{big}\n-{big}\n");
    assert!(run(&input, dot()).is_err());
    // Exactly at the limit is fine.
    let input = format!("amount EUR\n{big}\n-1\n1\n");
    assert_eq!(run(&input, dot()), ok(3, big));
}

#[test]
fn larger_scale_later_rescales_the_sum() {
    let input = "amount EUR\n1.5\n0.0000000000000000000000000001\n";
    assert_eq!(run(input, dot()), ok(2, "1.5000000000000000000000000001"));
    let input = "amount EUR\n10\n0.0000000000000000000000000001\n";
    assert!(run(input, dot()).is_err());
}

#[test]
fn long_amount_with_leading_zeros_is_fine() {
    let cell = format!("{}1.25", "0".repeat(40));
    assert_eq!(amount(&cell, dot()), ok(1, "1.25"));
}

// --- API details ---

#[test]
fn decimal_separator_parses_and_prints() {
    assert_eq!(".".parse::<DecimalSeparator>(), Ok(DecimalSeparator::Dot));
    assert_eq!(",".parse::<DecimalSeparator>(), Ok(DecimalSeparator::Comma));
    assert!(";".parse::<DecimalSeparator>().is_err());
    assert_eq!(DecimalSeparator::Comma.to_string(), ",");
    assert_eq!(DecimalSeparator::default().to_string(), ".");
}

#[test]
fn only_io_errors_are_retryable() {
    assert!(EngineError::Empty.is_data_error());
    assert!(!EngineError::Io(std::io::Error::other("disk")).is_data_error());
}

#[test]
fn summarize_path_matches_on_threads_and_ranges() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let r = gen::generate(&mut file, 3000, 7).expect("generate");
    for threads in [1, 2, 3] {
        let s = summarize_path(file.path(), dot(), threads).expect("sums");
        assert_eq!((s.entries, s.sum, s.bytes), (r.entries, r.sum, r.bytes));
        for range in [1, 100, 4096] {
            let s = summarize_path_with_chunk(file.path(), dot(), threads, range).expect("sums");
            assert_eq!((s.entries, s.sum), (r.entries, r.sum));
        }
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let e = summarize_path(Path::new("/nonexistent/x.csv"), dot(), 2).expect_err("fails");
    assert!(!e.is_data_error());
}

#[test]
fn generator_is_deterministic_and_sums_match() {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let ra = gen::generate(&mut a, 500, 42).expect("generate");
    let rb = gen::generate(&mut b, 500, 42).expect("generate");
    assert_eq!(a, b);
    assert_eq!(ra, rb);
    assert_eq!(ra.bytes, a.len() as u64);
    assert!(a.starts_with(gen::HEADER.as_bytes()));
    assert_eq!(run_all(&a, dot()), Ok((500, ra.sum.to_string())));
    let per_row = a.len() as f64 / 500.0;
    assert!((80.0..100.0).contains(&per_row), "{per_row} bytes per row");
}

// --- fixtures ---

#[test]
fn fixtures_match_expected_results() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 6, "fixtures found: {paths:?}");
    for path in paths {
        let expected_path = path.with_extension("expected.json");
        let text = std::fs::read_to_string(&expected_path).expect("expected.json beside the csv");
        let expected: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        let mut dialect = Dialect::default();
        if let Some(sep) = expected["decimal_separator"].as_str() {
            dialect.decimal_separator = sep.parse().expect("separator");
        }
        if let Some(d) = expected["delimiter"].as_str() {
            dialect.delimiter = d.bytes().next();
        }
        let bytes = std::fs::read(&path).expect("read fixture");
        let name = path.display();
        let all = run_all(&bytes, dialect);
        let by_path = show(summarize_path(&path, dialect, 2));
        assert_eq!(all, by_path, "{name}: summarize_path(threads=2)");
        match expected["error_contains"].as_str() {
            Some(fragment) => {
                let e = all.expect_err(&format!("{name} must fail"));
                assert!(e.contains(fragment), "{name}: {e:?} lacks {fragment:?}");
            }
            None => {
                let (entries, sum) = all.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    Some(entries),
                    expected["entries"].as_u64(),
                    "{name}: entries"
                );
                assert_eq!(Some(sum.as_str()), expected["sum"].as_str(), "{name}: sum");
            }
        }
    }
}

#[test]
fn futures_are_send_for_spawning() {
    fn is_send<T: Send>(_: &T) {}
    let progress = AtomicU64::new(0);
    is_send(&summarize(tokio::io::empty(), dot(), &progress));
    is_send(&reference::summarize(tokio::io::empty(), dot()));
}

#[test]
fn endless_line_fails_without_reading_everything() {
    use tokio::io::AsyncReadExt;
    let progress = AtomicU64::new(0);
    let endless = b"amount EUR\n1\n".chain(tokio::io::repeat(b'7'));
    let r = rt().block_on(summarize(endless, dot(), &progress));
    assert_eq!(show(r), err("line 3: record is longer than 1048576 bytes"));
    // Only a few blocks were read before giving up.
    assert!(progress.load(std::sync::atomic::Ordering::Relaxed) < 8 << 20);
    let r = rt().block_on(summarize(tokio::io::repeat(b'x'), dot(), &progress));
    assert_eq!(show(r), err("line 1: record is longer than 1048576 bytes"));
}

#[test]
fn records_longer_than_a_block_are_carried_over() {
    // Longer than the 64 KiB gap kept in front of each streamed block.
    let long = "x".repeat(100 << 10);
    let input = format!("note,amount EUR\n{long},1.50\n\"{long}\n{long}\",2\nshort,3\n");
    let bytes = input.as_bytes();
    let progress = AtomicU64::new(0);
    for block in [1000, 4 << 10, 100 << 10] {
        let r = rt().block_on(summarize_with_block(bytes, dot(), &progress, block));
        assert_eq!(show(r), ok(3, "6.50"), "async, block {block}");
        let r = summarize_slice_with_chunk(bytes, dot(), 2, 5000, block);
        assert_eq!(show(r), ok(3, "6.50"), "ranges, block {block}");
    }
    assert_eq!(show(summarize_slice(bytes, dot())), ok(3, "6.50"));
    let r = rt().block_on(reference::summarize(bytes, dot()));
    assert_eq!(show(r), ok(3, "6.50"));
}

#[test]
fn huge_record_limit_is_accepted() {
    let d = Dialect {
        max_record_bytes: usize::MAX,
        ..dot()
    };
    assert_eq!(run("amount EUR\n1\n", d), ok(1, "1.00"));
}

#[test]
fn quoted_newline_in_header_counts_lines() {
    assert_eq!(
        run("\"first\nname\",amount EUR\n1,x\n", dot()),
        bad_amount_dot("x").map_err(|e| e.replace("line 2", "line 3"))
    );
}

#[test]
fn header_followed_by_blank_lines_only_is_zero_entries() {
    assert_eq!(
        run("\u{feff}id;amount EUR\r\n\r\n\r\n", dot()),
        ok(0, "0.00")
    );
}

#[test]
fn endless_blank_lines_fail_without_buffering_everything() {
    let progress = AtomicU64::new(0);
    let r = rt().block_on(summarize(tokio::io::repeat(b'\n'), dot(), &progress));
    assert_eq!(
        show(r),
        err("no header: the first 1048576 bytes of the file are all blank lines")
    );
    assert!(progress.load(std::sync::atomic::Ordering::Relaxed) < 8 << 20);
}

#[test]
fn blank_lines_before_header_count_against_the_record_limit() {
    let d = Dialect {
        max_record_bytes: 12,
        ..dot()
    };
    let blank = |n: usize| "\r\n".repeat(n);
    assert_eq!(
        run(&format!("{}amount EUR\n1\n", blank(6)), d),
        ok(1, "1.00")
    );
    assert_eq!(
        run(&format!("{}amount EUR\n1\n", blank(7)), d),
        err("no header: the first 12 bytes of the file are all blank lines")
    );
}
