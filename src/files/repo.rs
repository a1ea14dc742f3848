//! All SQL on the `files` table: history reads, and the queue operations
//! (claim, heartbeat, complete, fail, retry, release), each fenced by the attempt.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::{Claim, Cursor, FileRow, FileStatus, NewFile};
use crate::engine::Summary;

/// The columns of a [`FileRow`], as a literal so that queries stay `&'static str`.
macro_rules! file_columns {
    () => {
        "id, filename, size_bytes, sha256, object_key, delimiter, decimal_separator, status, \
         attempts, progress_bytes, entries, sum, error, created_at, started_at, finished_at"
    };
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub async fn insert(db: impl PgExecutor<'_>, file: &NewFile) -> Result<FileRow, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO files (id, filename, size_bytes, sha256, object_key, delimiter, decimal_separator)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING ", file_columns!()),
    )
    .bind(file.id)
    .bind(&file.filename)
    .bind(file.size_bytes as i64)
    .bind(&file.sha256)
    .bind(&file.object_key)
    .bind(&file.delimiter)
    .bind(&file.decimal_separator)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<FileRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        file_columns!(),
        " FROM files WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Newest first; `after` continues from a previous page.
pub async fn list(
    db: &PgPool,
    status: Option<FileStatus>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        file_columns!(),
        " FROM files
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC
         LIMIT $4"
    ))
    .bind(status.map(FileStatus::as_str))
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Takes the oldest claimable file: pending and due, or processing with an expired
/// lease. SKIP LOCKED lets concurrent workers pass each other instead of queueing.
pub async fn claim_next(
    db: &PgPool,
    owner: &str,
    lease: Duration,
    max_attempts: i32,
) -> Result<Option<Claim>, sqlx::Error> {
    sqlx::query_as(
        "WITH next AS (
             SELECT id FROM files
             WHERE status IN ('pending', 'processing')
               AND ((status = 'pending' AND run_after <= now())
                    OR (status = 'processing' AND locked_until < now()))
               AND attempts < $3
             ORDER BY created_at
             LIMIT 1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE files f
         SET status = 'processing',
             attempts = f.attempts + 1,
             lease_owner = $1,
             locked_until = now() + make_interval(secs => $2),
             started_at = now(),
             progress_bytes = 0
         FROM next
         WHERE f.id = next.id
         RETURNING f.id, f.attempts, f.filename, f.object_key, f.size_bytes, f.delimiter,
                   f.decimal_separator",
    )
    .bind(owner)
    .bind(secs(lease))
    .bind(max_attempts)
    .fetch_optional(db)
    .await
}

/// Files whose worker vanished on their last allowed attempt end `failed`, so that a
/// file that kills its worker cannot loop forever.
pub async fn fail_abandoned(
    db: impl PgExecutor<'_>,
    max_attempts: i32,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE files
         SET status = 'failed', finished_at = now(), lease_owner = NULL, locked_until = NULL,
             error = format('processing was interrupted %s times (worker crashed or lost its lease); giving up', attempts)
         WHERE status = 'processing' AND locked_until < now() AND attempts >= $1
         RETURNING id",
    )
    .bind(max_attempts)
    .fetch_all(db)
    .await
}

/// Extends the lease and records progress. False when the claim was lost.
pub async fn heartbeat(
    db: &PgPool,
    id: Uuid,
    attempt: i32,
    lease: Duration,
    progress_bytes: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE files SET locked_until = now() + make_interval(secs => $3), progress_bytes = $4
         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(secs(lease))
    .bind(progress_bytes as i64)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the result. False (and nothing written) when another worker took the file over.
pub async fn complete(
    db: impl PgExecutor<'_>,
    id: Uuid,
    attempt: i32,
    summary: &Summary,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE files
         SET status = 'succeeded', entries = $3, sum = $4, progress_bytes = $5, error = NULL,
             finished_at = now(), lease_owner = NULL, locked_until = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(summary.entries as i64)
    .bind(summary.sum)
    .bind(summary.bytes as i64)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends the file as failed, for good.
pub async fn fail(
    db: impl PgExecutor<'_>,
    id: Uuid,
    attempt: i32,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE files
         SET status = 'failed', error = $3, finished_at = now(), lease_owner = NULL,
             locked_until = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(error)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts the file back in the queue after a transient error, due after `delay`.
pub async fn retry_later(
    db: &PgPool,
    id: Uuid,
    attempt: i32,
    delay: Duration,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE files
         SET status = 'pending', error = $3, run_after = now() + make_interval(secs => $4),
             lease_owner = NULL, locked_until = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
    )
    .bind(id)
    .bind(attempt)
    .bind(error)
    .bind(secs(delay))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Hands the file back untouched (shutdown): the attempt does not count.
pub async fn release(db: &PgPool, id: Uuid, attempt: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE files
         SET status = 'pending', attempts = attempts - 1, run_after = now(),
             lease_owner = NULL, locked_until = NULL, progress_bytes = 0
         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
    )
    .bind(id)
    .bind(attempt)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Re-queues a failed file with a fresh set of attempts. None if there is no such file,
/// Some(false) if it is not failed.
pub async fn requeue_failed(db: &PgPool, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    let row: Option<(bool,)> = sqlx::query_as(
        "WITH target AS (SELECT id, status FROM files WHERE id = $1 FOR UPDATE),
              requeued AS (
                  UPDATE files f
                  SET status = 'pending', attempts = 0, error = NULL, run_after = now(),
                      finished_at = NULL, entries = NULL, sum = NULL, progress_bytes = 0
                  FROM target WHERE f.id = target.id AND target.status = 'failed'
                  RETURNING f.id)
         SELECT EXISTS (SELECT 1 FROM requeued) FROM target",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(requeued,)| requeued))
}
