//! Wake-ups from Postgres: LISTEN on a channel and wake in-process waiters on each
//! NOTIFY, reconnecting as needed; and the loop that runs a unit of work on each
//! wake-up. Waiters still poll, so a lost notification only delays work.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Runs `step` until `shutdown`: again at once when it did some work (`Ok(true)`), on
/// the next wake-up or poll when it found none, after a growing pause when the
/// database fails.
pub async fn run_until<F, Fut>(
    what: &str,
    wake: &Notify,
    poll: Duration,
    shutdown: &CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, sqlx::Error>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        // Registered before the step, so a notification sent meanwhile is not missed.
        notified.as_mut().enable();
        if shutdown.is_cancelled() {
            return;
        }
        match step().await {
            Ok(true) => {
                backoff = FIRST_BACKOFF;
                continue;
            }
            Ok(false) => backoff = FIRST_BACKOFF,
            Err(e) => {
                warn!(error = %e, "{what} failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

pub async fn listen(
    db: PgPool,
    channel: &'static str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let mut listener = match PgListener::connect_with(&db).await {
            Ok(l) => l,
            Err(e) => {
                debug!(channel, error = %e, "listener cannot connect; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(channel).await {
            debug!(channel, error = %e, "LISTEN failed");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        // Anything announced while nobody listened is picked up now.
        wake.notify_waiters();
        loop {
            tokio::select! {
                msg = listener.recv() => match msg {
                    Ok(_) => wake.notify_waiters(),
                    Err(e) => {
                        debug!(channel, error = %e, "listener lost its connection");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
