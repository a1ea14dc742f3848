//! Uploaded files: the record kept for each upload, from `pending` to a result.

pub mod repo;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    /// Stored, waiting for a worker.
    Pending,
    /// A worker holds a lease on it.
    Processing,
    /// Entries and sum are known.
    Succeeded,
    /// Processing gave up; `error` says why.
    Failed,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for FileStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Self::Pending),
            "processing" => Ok(Self::Processing),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            other => Err(format!(
                "unknown status {other:?}; expected pending, processing, succeeded or failed"
            )),
        }
    }
}

/// A file's row, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub id: Uuid,
    pub filename: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub object_key: String,
    pub delimiter: Option<String>,
    pub decimal_separator: String,
    pub status: String,
    pub attempts: i32,
    pub progress_bytes: i64,
    pub entries: Option<i64>,
    pub sum: Option<Decimal>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl FileRow {
    pub fn status(&self) -> FileStatus {
        self.status.parse().unwrap_or(FileStatus::Failed)
    }
}

/// A file as the API and webhooks show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileView {
    pub id: Uuid,
    /// The client's name for the file; display text only.
    #[schema(example = "invoices-2026-11.csv")]
    pub filename: String,
    pub status: FileStatus,
    pub size_bytes: i64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    /// Data rows counted, once succeeded.
    pub entries: Option<i64>,
    /// Exact sum of the `amount EUR` column, as a string so that no client rounds it.
    #[schema(example = "12345.67")]
    pub sum: Option<String>,
    /// Why processing failed, or the last transient error while retrying.
    pub error: Option<String>,
    /// Claims so far (a retried or taken-over file has more than one).
    pub attempts: i32,
    /// Bytes read by the worker so far.
    pub progress_bytes: i64,
    /// Delimiter given at upload; `null` means detected from the header.
    pub delimiter: Option<String>,
    /// Decimal separator given at upload: `.` (default) or `,`.
    pub decimal_separator: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<FileRow> for FileView {
    fn from(row: FileRow) -> Self {
        Self {
            status: row.status(),
            id: row.id,
            filename: row.filename,
            size_bytes: row.size_bytes,
            sha256: row.sha256,
            entries: row.entries,
            sum: row.sum.map(|s| s.to_string()),
            error: row.error,
            attempts: row.attempts,
            progress_bytes: row.progress_bytes,
            delimiter: row.delimiter,
            decimal_separator: row.decimal_separator,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

/// A file about to be recorded: its bytes are already stored.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: Uuid,
    pub filename: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub object_key: String,
    pub delimiter: Option<String>,
    pub decimal_separator: String,
}

/// A file a worker has claimed. `attempt` fences every later write.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claim {
    pub id: Uuid,
    pub attempts: i32,
    pub filename: String,
    pub object_key: String,
    pub size_bytes: i64,
    pub delimiter: Option<String>,
    pub decimal_separator: String,
}

/// The position after the last item of a history page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        )
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let (micros, id) = raw.split_once('_')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_859_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("nonsense"), None);
        assert_eq!(Cursor::decode("12_notauuid"), None);
    }
}
