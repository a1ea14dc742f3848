//! Throughput of the CSV engine on generated data (`cargo bench --bench engine`).
//!
//! Std-only timing (best of several runs) so it needs no bench framework.
//! `ENGINE_BENCH_ROWS` sets the file size (default 2,000,000 rows).

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tally::engine::{self, Dialect};

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn report(name: &str, bytes: u64, d: Duration) {
    let mbs = bytes as f64 / d.as_secs_f64() / 1e6;
    println!("{name:<32} {mbs:>8.0} MB/s  ({:.3} s)", d.as_secs_f64());
}

fn main() {
    let rows = std::env::var("ENGINE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.csv");
    let file = std::fs::File::create(&path).expect("create");
    let expected = engine::gen::generate(file, rows, 1).expect("generate");
    let data = std::fs::read(&path).expect("read back");
    let bytes = expected.bytes;
    println!("{rows} rows, {bytes} bytes");

    let dialect = Dialect::default();
    let check = |s: engine::Summary| assert_eq!(s.sum, expected.sum);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let d = best_of(5, || {
        check(engine::summarize_slice(&data, dialect).expect("sum"))
    });
    report("in memory, 1 thread", bytes, d);
    for threads in [1, 2] {
        let d = best_of(5, || {
            check(engine::summarize_path(&path, dialect, threads).expect("sum"));
        });
        report(&format!("summarize_path, threads={threads}"), bytes, d);
    }
    let d = best_of(5, || {
        rt.block_on(async {
            let f = tokio::fs::File::open(&path).await.expect("open");
            let progress = AtomicU64::new(0);
            check(engine::summarize(f, dialect, &progress).await.expect("sum"));
        })
    });
    report("summarize (async, tokio File)", bytes, d);
    let d = best_of(1, || {
        rt.block_on(async {
            let f = tokio::fs::File::open(&path).await.expect("open");
            check(engine::reference::summarize(f, dialect).await.expect("sum"));
        })
    });
    report("reference (csv-async + Decimal)", bytes, d);
}
