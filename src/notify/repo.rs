//! All SQL on the `notifications` table (the outbox).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::{ChannelKind, Message};

/// A notification as the dispatcher sees it once claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub id: i64,
    pub file_id: Uuid,
    pub channel: String,
    pub kind: String,
    pub subject: String,
    pub message: String,
    pub body: String,
    pub attempts: i32,
}

/// A notification as shown in a file's history record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub channel: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Queues one notification; a file reprocessed after a crash does not queue it twice.
pub async fn insert(
    db: impl PgExecutor<'_>,
    file_id: Uuid,
    channel: ChannelKind,
    message: &Message,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (file_id, channel, kind, subject, message, body)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (file_id, channel, kind) DO NOTHING",
    )
    .bind(file_id)
    .bind(channel.as_str())
    .bind(message.kind)
    .bind(&message.subject)
    .bind(&message.text)
    .bind(&message.body)
    .execute(db)
    .await?;
    Ok(())
}

/// Claims up to `limit` due notifications: pending and due, or stuck in `sending`
/// past their lease (a dispatcher died between sending and marking).
pub async fn claim_due(db: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM notifications
             WHERE status IN ('pending', 'sending')
               AND ((status = 'pending' AND run_after <= now())
                    OR (status = 'sending' AND locked_until < now()))
             ORDER BY run_after
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE notifications n
         SET status = 'sending', attempts = n.attempts + 1,
             locked_until = now() + make_interval(secs => $2)
         FROM due WHERE n.id = due.id
         RETURNING n.id, n.file_id, n.channel, n.kind, n.subject, n.message, n.body, n.attempts",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await
}

pub async fn mark_sent(db: &PgPool, id: i64, attempt: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET status = 'sent', sent_at = now(), locked_until = NULL,
                last_error = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'sending'",
    )
    .bind(id)
    .bind(attempt)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn mark_retry(
    db: &PgPool,
    id: i64,
    attempt: i32,
    delay: Duration,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications
         SET status = 'pending', last_error = $3, locked_until = NULL,
             run_after = now() + make_interval(secs => $4)
         WHERE id = $1 AND attempts = $2 AND status = 'sending'",
    )
    .bind(id)
    .bind(attempt)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn mark_failed(
    db: &PgPool,
    id: i64,
    attempt: i32,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET status = 'failed', last_error = $3, locked_until = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'sending'",
    )
    .bind(id)
    .bind(attempt)
    .bind(error)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn for_file(
    db: impl PgExecutor<'_>,
    file_id: Uuid,
) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT channel, kind, status, attempts, last_error, created_at, sent_at
         FROM notifications WHERE file_id = $1 ORDER BY id",
    )
    .bind(file_id)
    .fetch_all(db)
    .await
}

/// Re-queues a file's failed notifications; returns how many.
pub async fn retry_failed(db: &PgPool, file_id: Uuid) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET status = 'pending', attempts = 0, run_after = now()
         WHERE file_id = $1 AND status = 'failed'",
    )
    .bind(file_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
