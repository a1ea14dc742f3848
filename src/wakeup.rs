//! Wake-ups from Postgres: LISTEN on a channel and wake in-process waiters on each
//! NOTIFY, reconnecting as needed. Waiters still poll, so a lost notification
//! only delays work.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

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
