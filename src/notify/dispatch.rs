//! The dispatcher: claims due notifications, sends them, records the outcome.
//!
//! Delivery is at least once: a dispatcher that dies after sending and before
//! marking leaves the row `sending`; once its lease expires it is sent again.
//! Two dispatchers never hold the same row at once (SKIP LOCKED plus a lease).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::channels::{Channels, SendError};
use super::repo::{self, Due};
use crate::files::{self, FileView};

pub const CHANNEL: &str = "tally_notifications";

#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub max_attempts: i32,
    pub retry_backoff: Duration,
    /// How long a claimed row is reserved for one send.
    pub lease: Duration,
    pub poll_interval: Duration,
    pub batch: i64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_backoff: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            batch: 16,
        }
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    pub db: PgPool,
    pub channels: Arc<Channels>,
    pub config: DispatchConfig,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(crate::wakeup::listen(
            self.db.clone(),
            CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        crate::wakeup::run_until(
            "claiming notifications",
            &wake,
            self.config.poll_interval,
            &shutdown,
            || async { Ok(self.dispatch_due().await? > 0) },
        )
        .await;
        listener.abort();
    }

    /// Sends one batch of due notifications; returns how many were claimed.
    pub async fn dispatch_due(&self) -> Result<usize, sqlx::Error> {
        let due = repo::claim_due(&self.db, self.config.batch, self.config.lease).await?;
        let n = due.len();
        futures::future::join_all(due.into_iter().map(|note| self.deliver(note))).await;
        Ok(n)
    }

    async fn deliver(&self, note: Due) {
        let file_json = match files::repo::get(&self.db, note.file_id).await {
            Ok(Some(row)) => serde_json::to_value(FileView::from(row)).unwrap_or_default(),
            Ok(None) => serde_json::Value::Null,
            Err(e) => {
                self.record(&note, Err(SendError::Transient(format!("database: {e}"))))
                    .await;
                return;
            }
        };
        let result = self.channels.send(&note, &file_json).await;
        self.record(&note, result).await;
    }

    async fn record(&self, note: &Due, result: Result<(), SendError>) {
        use crate::metrics::{Delivery, METRICS};
        let written = match &result {
            Ok(()) => {
                METRICS.delivery(Delivery::Sent);
                repo::mark_sent(&self.db, note.id, note.attempts).await
            }
            Err(SendError::Transient(e)) if note.attempts < self.config.max_attempts => {
                METRICS.delivery(Delivery::Retried);
                let delay = crate::worker::backoff(self.config.retry_backoff, note.attempts);
                repo::mark_retry(&self.db, note.id, note.attempts, delay, e).await
            }
            Err(SendError::Transient(e)) => {
                METRICS.delivery(Delivery::Failed);
                let e = format!("gave up after {} attempts: {e}", note.attempts);
                repo::mark_failed(&self.db, note.id, note.attempts, &e).await
            }
            Err(SendError::Permanent(e)) => {
                METRICS.delivery(Delivery::Failed);
                repo::mark_failed(&self.db, note.id, note.attempts, e).await
            }
        };
        match (&result, written) {
            (Ok(()), Ok(_)) => {
                info!(file_id = %note.file_id, channel = %note.channel, "notification sent")
            }
            (Err(e), Ok(_)) => warn!(
                file_id = %note.file_id, channel = %note.channel, attempt = note.attempts,
                error = %e, "notification not delivered"
            ),
            (_, Err(e)) => warn!(
                file_id = %note.file_id, channel = %note.channel, error = %e,
                "could not record a notification's outcome; it will be retried after its lease"
            ),
        }
    }
}
