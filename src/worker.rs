//! Workers: claim files, keep their lease alive, sum them, write the result back.
//!
//! Guarantees: a file is processed at least once (a worker that dies loses its lease
//! and another takes over); a worker that lost its lease writes nothing; data errors
//! fail the file for good, infrastructure errors are retried with backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::WorkerConfig;
use crate::engine::{self, DecimalSeparator, Dialect, EngineError, Summary};
use crate::files::{repo, Claim};
use crate::notify::Outbox;
use crate::storage::{Storage, StorageError};

/// The Postgres channel that announces claimable files.
pub const CHANNEL: &str = "tally_files";

#[derive(Clone)]
pub struct Worker {
    pub db: PgPool,
    pub storage: Storage,
    pub config: WorkerConfig,
    pub outbox: Arc<Outbox>,
    /// Names this process in `lease_owner`.
    pub name: String,
}

/// How processing one claimed file ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Succeeded(Summary),
    Failed(String),
    RetryLater(String),
    /// Another worker holds the file now; nothing was written.
    LeaseLost,
    /// Shut down before finishing; the file was handed back.
    Released,
}

#[derive(Debug, thiserror::Error)]
enum ProcessError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Worker {
    pub fn new(db: PgPool, storage: Storage, config: WorkerConfig, outbox: Arc<Outbox>) -> Self {
        let name = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            db,
            storage,
            config,
            outbox,
            name,
        }
    }

    /// Runs `concurrency` claim loops until `shutdown` fires, then waits for them:
    /// each finishes its file within the grace period or releases it.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(crate::wakeup::listen(
            self.db.clone(),
            CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let mut loops = Vec::new();
        for slot in 0..self.config.concurrency {
            let worker = self.clone();
            let wake = wake.clone();
            let shutdown = shutdown.clone();
            loops.push(tokio::spawn(async move {
                worker.claim_loop(slot, wake, shutdown).await
            }));
        }
        for handle in loops {
            let _ = handle.await;
        }
        listener.abort();
    }

    async fn claim_loop(&self, slot: usize, wake: Arc<Notify>, shutdown: CancellationToken) {
        let owner = format!("{}/{slot}", self.name);
        crate::wakeup::run_until(
            "claiming",
            &wake,
            self.config.poll_interval,
            &shutdown,
            || self.claim_once(&owner, &shutdown),
        )
        .await;
    }

    /// Claims and processes one file; false when there was none to claim.
    async fn claim_once(
        &self,
        owner: &str,
        shutdown: &CancellationToken,
    ) -> Result<bool, sqlx::Error> {
        let claimed =
            repo::claim_next(&self.db, owner, self.config.lease, self.config.max_attempts).await?;
        if let Some(claim) = claimed {
            let span = info_span!("file", file_id = %claim.id, attempt = claim.attempts);
            self.process(claim, owner, shutdown).instrument(span).await;
            return Ok(true);
        }
        // Idle: fail files whose workers kept dying on their last attempt.
        match self
            .outbox
            .reap_abandoned(&self.db, self.config.max_attempts)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    warn!(file_id = %id, "file failed: its workers kept dying");
                }
            }
            Err(e) => debug!(error = %e, "reaping abandoned files failed"),
        }
        Ok(false)
    }

    /// Processes one claimed file to an outcome and records it.
    pub async fn process(
        &self,
        claim: Claim,
        owner: &str,
        shutdown: &CancellationToken,
    ) -> Outcome {
        info!(filename = %claim.filename, size_bytes = claim.size_bytes, %owner, "processing");
        let started = std::time::Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let lease_lost = CancellationToken::new();
        // After shutdown, the grace period; then the file is handed back.
        let give_up = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.db.clone(),
            claim.clone(),
            self.config.lease,
            progress.clone(),
            lease_lost.clone(),
        ));
        let grace = {
            let shutdown = shutdown.clone();
            let give_up = give_up.clone();
            let period = self.config.shutdown_grace;
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::time::sleep(period).await;
                give_up.cancel();
            })
        };

        let stop = CancellationToken::new();
        let result = tokio::select! {
            r = self.summarize(&claim, progress.clone(), stop.clone()) => Some(r),
            _ = lease_lost.cancelled() => None,
            _ = give_up.cancelled() => None,
        };
        stop.cancel();
        heartbeat.abort();
        grace.abort();

        let outcome = match result {
            None if lease_lost.is_cancelled() => Outcome::LeaseLost,
            None => match repo::release(&self.db, claim.id, claim.attempts).await {
                Ok(true) => Outcome::Released,
                Ok(false) => Outcome::LeaseLost,
                Err(e) => {
                    warn!(error = %e, "could not release the file; its lease will expire");
                    Outcome::Released
                }
            },
            Some(Ok(summary)) => Outcome::Succeeded(summary),
            Some(Err(ProcessError::Engine(e))) if e.is_data_error() => {
                Outcome::Failed(e.to_string())
            }
            Some(Err(ProcessError::Storage(StorageError::NotFound(key)))) => {
                Outcome::Failed(format!(
                    "the stored bytes of this file are missing (object {key}); upload it again"
                ))
            }
            Some(Err(e)) if claim.attempts >= self.config.max_attempts => Outcome::Failed(format!(
                "gave up after {} attempts; last error: {e}",
                claim.attempts
            )),
            Some(Err(e)) => Outcome::RetryLater(e.to_string()),
        };
        let recorded = self.record(&claim, &outcome).await;
        if recorded {
            use crate::metrics::{Processed, METRICS};
            let kind = match &outcome {
                Outcome::Succeeded(_) => Some(Processed::Succeeded),
                Outcome::Failed(_) => Some(Processed::Failed),
                Outcome::RetryLater(_) => Some(Processed::Retried),
                _ => None,
            };
            if let Some(kind) = kind {
                METRICS.processed(kind, started.elapsed());
            }
        }
        info!(
            outcome = ?outcome,
            recorded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "processed"
        );
        outcome
    }

    async fn summarize(
        &self,
        claim: &Claim,
        progress: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> Result<Summary, ProcessError> {
        let reader = self.storage.reader(&claim.object_key).await?;
        let dialect = Dialect {
            delimiter: claim.delimiter.as_deref().and_then(|d| d.bytes().next()),
            decimal_separator: claim
                .decimal_separator
                .parse()
                .unwrap_or(DecimalSeparator::Dot),
            max_record_bytes: 0,
        };
        // Summing is CPU-bound: keep it off the threads that serve requests.
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                tokio::select! {
                    r = engine::summarize(reader, dialect, &progress) => Some(r),
                    _ = stop.cancelled() => None,
                }
            })
        });
        match task.await {
            Ok(Some(result)) => Ok(result?),
            Ok(None) => Err(ProcessError::Engine(EngineError::Io(
                std::io::Error::other("processing was stopped"),
            ))),
            Err(join) => Err(ProcessError::Engine(EngineError::Io(
                std::io::Error::other(format!("processing crashed: {join}")),
            ))),
        }
    }

    /// Writes the outcome, fenced by the attempt. Returns whether it was written.
    async fn record(&self, claim: &Claim, outcome: &Outcome) -> bool {
        let written = match outcome {
            Outcome::Succeeded(summary) => self.outbox.complete(&self.db, claim, summary).await,
            Outcome::Failed(error) => self.outbox.fail(&self.db, claim, error).await,
            Outcome::RetryLater(error) => {
                let delay = backoff(self.config.retry_backoff, claim.attempts);
                warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "transient error; will retry");
                repo::retry_later(&self.db, claim.id, claim.attempts, delay, error).await
            }
            Outcome::LeaseLost | Outcome::Released => return false,
        };
        match written {
            Ok(true) => true,
            Ok(false) => {
                warn!("the file was taken over by another worker; result discarded");
                false
            }
            Err(e) => {
                // The lease will expire and another worker will redo the file.
                warn!(error = %e, "could not record the outcome");
                false
            }
        }
    }
}

/// Exponential backoff with jitter: base·2^(attempt-1), at most 5 minutes.
pub fn backoff(base: Duration, attempt: i32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.clamp(1, 16).saturating_sub(1) as u32);
    let capped = exp.min(Duration::from_secs(300));
    let jitter = rand::random::<f64>() * 0.25;
    capped.mul_f64(1.0 + jitter)
}

async fn heartbeat(
    db: PgPool,
    claim: Claim,
    lease: Duration,
    progress: Arc<AtomicU64>,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let bytes = progress.load(Ordering::Relaxed);
        match repo::heartbeat(&db, claim.id, claim.attempts, lease, bytes).await {
            Ok(true) => debug!(progress_bytes = bytes, "heartbeat"),
            Ok(false) => {
                warn!("lease lost: another worker took the file over");
                lost.cancel();
                return;
            }
            // Keep going: the lease may still hold; the fence protects the result.
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        let first = backoff(base, 1);
        assert!(first >= base && first <= base.mul_f64(1.25));
        let third = backoff(base, 3);
        assert!(third >= base * 4 && third <= (base * 4).mul_f64(1.25));
        assert!(backoff(base, 30) <= Duration::from_secs(300).mul_f64(1.25));
    }
}
