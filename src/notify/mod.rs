//! Notifications: the transactional outbox (rows written in the same transaction
//! that finishes a file), the message texts, and the dispatcher that delivers them.

pub mod channels;
pub mod dispatch;
pub mod repo;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::engine::Summary;
use crate::files::{self, Claim, FileRow};

pub use channels::{ChannelKind, Channels};

/// What the outbox needs to know to write a file's notifications.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub channels: Vec<ChannelKind>,
    pub timezone: Tz,
    /// Base URL of the API, for links in messages.
    pub public_url: String,
    pub on_failure: bool,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            channels: vec![ChannelKind::Log],
            timezone: Tz::UTC,
            public_url: "http://127.0.0.1:8080".into(),
            on_failure: true,
        }
    }
}

/// One notification's texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: &'static str,
    pub subject: String,
    /// The one-line message: what Slack and SMS send and the first line of the email.
    pub text: String,
    /// The email body: the line above plus the file's details.
    pub body: String,
}

/// `04/12/2026 15:34 - 1000 entries processed, sum: 12345.67`
pub fn success_line(finished_at: DateTime<Utc>, tz: Tz, entries: i64, sum: &Decimal) -> String {
    format!(
        "{} - {entries} entries processed, sum: {sum}",
        finished_at.with_timezone(&tz).format("%d/%m/%Y %H:%M")
    )
}

/// `04/12/2026 15:34 - processing of x.csv failed: …`
pub fn failure_line(finished_at: DateTime<Utc>, tz: Tz, filename: &str, error: &str) -> String {
    format!(
        "{} - processing of {filename} failed: {error}",
        finished_at.with_timezone(&tz).format("%d/%m/%Y %H:%M")
    )
}

impl Outbox {
    /// The message for a finished file, or None when this outcome is not announced.
    pub fn message_for(&self, file: &FileRow) -> Option<Message> {
        let finished_at = file.finished_at.unwrap_or_else(Utc::now);
        let link = format!(
            "{}/api/v1/files/{}",
            self.public_url.trim_end_matches('/'),
            file.id
        );
        let (kind, subject, text) = match file.status() {
            files::FileStatus::Succeeded => (
                "succeeded",
                format!("Tally: {} processed", file.filename),
                success_line(
                    finished_at,
                    self.timezone,
                    file.entries.unwrap_or(0),
                    &file.sum.unwrap_or_default(),
                ),
            ),
            files::FileStatus::Failed if self.on_failure => (
                "failed",
                format!("Tally: {} failed", file.filename),
                failure_line(
                    finished_at,
                    self.timezone,
                    &file.filename,
                    file.error.as_deref().unwrap_or("unknown error"),
                ),
            ),
            _ => return None,
        };
        let body = format!(
            "{text}\n\nFile: {}\nFile id: {}\nSHA-256: {}\nDetails: {link}\n",
            file.filename, file.id, file.sha256
        );
        Some(Message {
            kind,
            subject,
            text,
            body,
        })
    }

    async fn enqueue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        file_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        let Some(file) = files::repo::get(&mut **tx, file_id).await? else {
            return Ok(());
        };
        if let Some(message) = self.message_for(&file) {
            for channel in &self.channels {
                repo::insert(&mut **tx, file_id, *channel, &message).await?;
            }
        }
        Ok(())
    }

    /// Marks the file succeeded and queues its notifications, atomically.
    /// False when the claim was lost: then nothing is written.
    pub async fn complete(
        &self,
        db: &PgPool,
        claim: &Claim,
        summary: &Summary,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = db.begin().await?;
        if !files::repo::complete(&mut *tx, claim.id, claim.attempts, summary).await? {
            return Ok(false);
        }
        self.enqueue(&mut tx, claim.id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks the file failed and queues its notifications, atomically.
    pub async fn fail(&self, db: &PgPool, claim: &Claim, error: &str) -> Result<bool, sqlx::Error> {
        let mut tx = db.begin().await?;
        if !files::repo::fail(&mut *tx, claim.id, claim.attempts, error).await? {
            return Ok(false);
        }
        self.enqueue(&mut tx, claim.id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Fails files whose workers died on their last attempt, with their notifications.
    pub async fn reap_abandoned(
        &self,
        db: &PgPool,
        max_attempts: i32,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let mut tx = db.begin().await?;
        let ids = files::repo::fail_abandoned(&mut *tx, max_attempts).await?;
        for id in &ids {
            self.enqueue(&mut tx, *id).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn success_line_has_the_documented_format() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T14:34:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let sum = Decimal::from_str("12345.67").unwrap();
        assert_eq!(
            success_line(at, Tz::Europe__Lisbon, 1000, &sum),
            "04/12/2026 14:34 - 1000 entries processed, sum: 12345.67"
        );
        assert_eq!(
            success_line(at, Tz::Europe__Berlin, 1000, &sum),
            "04/12/2026 15:34 - 1000 entries processed, sum: 12345.67"
        );
    }

    #[test]
    fn failure_line_names_file_and_error() {
        let at = DateTime::parse_from_rfc3339("2026-01-31T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            failure_line(at, Tz::Europe__Berlin, "x.csv", "no header"),
            "01/02/2026 00:30 - processing of x.csv failed: no header"
        );
    }
}
