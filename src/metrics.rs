//! Prometheus metrics: counters kept by this process, plus queue gauges read
//! from the database (so they are the same whichever process is asked).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;

/// Upper bounds of the processing-duration buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub struct Metrics {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    processed_succeeded: AtomicU64,
    processed_failed: AtomicU64,
    processed_retried: AtomicU64,
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_micros: AtomicU64,
    notifications_sent: AtomicU64,
    notifications_retried: AtomicU64,
    notifications_failed: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

/// This process's metrics.
pub static METRICS: Metrics = Metrics {
    uploads: ZERO,
    upload_bytes: ZERO,
    processed_succeeded: ZERO,
    processed_failed: ZERO,
    processed_retried: ZERO,
    duration_buckets: [ZERO; BUCKETS.len()],
    duration_count: ZERO,
    duration_micros: ZERO,
    notifications_sent: ZERO,
    notifications_retried: ZERO,
    notifications_failed: ZERO,
};

/// How processing one file ended, for the counters.
#[derive(Clone, Copy, Debug)]
pub enum Processed {
    Succeeded,
    Failed,
    Retried,
}

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug)]
pub enum Delivery {
    Sent,
    Retried,
    Failed,
}

impl Metrics {
    pub fn upload(&self, bytes: u64) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn processed(&self, outcome: Processed, took: Duration) {
        match outcome {
            Processed::Succeeded => &self.processed_succeeded,
            Processed::Failed => &self.processed_failed,
            Processed::Retried => &self.processed_retried,
        }
        .fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn delivery(&self, outcome: Delivery) {
        match outcome {
            Delivery::Sent => &self.notifications_sent,
            Delivery::Retried => &self.notifications_retried,
            Delivery::Failed => &self.notifications_failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with queue gauges from `db`.
    pub async fn render(&self, db: &PgPool) -> Result<String, sqlx::Error> {
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM files GROUP BY status")
                .fetch_all(db)
                .await?;
        let oldest_pending: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM files WHERE status = 'pending'",
        )
        .fetch_one(db)
        .await?;
        let notes: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM notifications GROUP BY status")
                .fetch_all(db)
                .await?;

        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let w = &mut out;
        counter(
            w,
            "tally_uploads_total",
            "Files accepted by this process.",
            load(&self.uploads),
        );
        counter(
            w,
            "tally_upload_bytes_total",
            "Bytes accepted by this process.",
            load(&self.upload_bytes),
        );
        labelled(
            w,
            "tally_files_processed_total",
            "Processing attempts finished by this process, by outcome.",
            "counter",
            "outcome",
            &[
                ("succeeded", load(&self.processed_succeeded)),
                ("failed", load(&self.processed_failed)),
                ("retried", load(&self.processed_retried)),
            ],
        );
        let _ = writeln!(
            w,
            "# HELP tally_processing_seconds Time to process one file."
        );
        let _ = writeln!(w, "# TYPE tally_processing_seconds histogram");
        for (bound, v) in BUCKETS.iter().zip(&self.duration_buckets) {
            let _ = writeln!(
                w,
                "tally_processing_seconds_bucket{{le=\"{bound}\"}} {}",
                load(v)
            );
        }
        let count = load(&self.duration_count);
        let _ = writeln!(w, "tally_processing_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            w,
            "tally_processing_seconds_sum {}",
            load(&self.duration_micros) as f64 / 1e6
        );
        let _ = writeln!(w, "tally_processing_seconds_count {count}");
        labelled(
            w,
            "tally_notifications_total",
            "Delivery attempts by this process, by outcome.",
            "counter",
            "outcome",
            &[
                ("sent", load(&self.notifications_sent)),
                ("retried", load(&self.notifications_retried)),
                ("failed", load(&self.notifications_failed)),
            ],
        );
        labelled(
            w,
            "tally_files",
            "Files by status (whole deployment).",
            "gauge",
            "status",
            &["pending", "processing", "succeeded", "failed"].map(|s| (s, count_of(&by_status, s))),
        );
        let depth: i64 = by_status
            .iter()
            .filter(|(s, _)| s == "pending" || s == "processing")
            .map(|(_, n)| n)
            .sum();
        gauge(
            w,
            "tally_queue_depth",
            "Files pending or processing.",
            depth as f64,
        );
        gauge(
            w,
            "tally_oldest_pending_seconds",
            "Age of the oldest pending file (0 when none).",
            oldest_pending.unwrap_or(0.0),
        );
        labelled(
            w,
            "tally_notifications",
            "Notifications by status (whole deployment).",
            "gauge",
            "status",
            &["pending", "sending", "sent", "failed"].map(|s| (s, count_of(&notes, s))),
        );
        Ok(out)
    }
}

/// One metric family with a value per label value.
fn labelled<V: std::fmt::Display>(
    w: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    values: &[(&str, V)],
) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value, v) in values {
        let _ = writeln!(w, "{name}{{{label}=\"{value}\"}} {v}");
    }
}

fn count_of(rows: &[(String, i64)], status: &str) -> i64 {
    rows.iter()
        .find(|(s, _)| s == status)
        .map_or(0, |(_, n)| *n)
}

fn counter(w: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

fn gauge(w: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}
