//! Assembles the parts: database pool and migrations, storage, the HTTP server,
//! workers and the notification dispatcher, all stopped by one shutdown token.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::notify::dispatch::Dispatcher;
use crate::notify::Channels;
use crate::storage::{Storage, StorageError};
use crate::worker::Worker;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Notify(String),
    #[error("cannot serve HTTP: {0}")]
    Http(#[from] std::io::Error),
}

/// Opens the pool and brings the schema up to date.
pub async fn connect(config: &Config) -> Result<PgPool, StartError> {
    let db = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        // Fail fast when the database is down, so requests answer 503 instead of hanging.
        .acquire_timeout(config.database_acquire_timeout)
        .connect(&config.database_url)
        .await?;
    MIGRATOR.run(&db).await?;
    Ok(db)
}

/// A running Tally: what every role shares.
#[derive(Clone)]
pub struct App {
    pub db: PgPool,
    pub storage: Storage,
    pub config: Config,
    channels: Arc<Channels>,
}

impl App {
    pub fn new(db: PgPool, config: Config) -> Result<Self, StartError> {
        let storage = Storage::open(
            &config.storage_url,
            &config.storage_options,
            config.storage_part_bytes,
            &config.storage_retry,
        )?;
        let channels = Channels::new(config.notify.channels.clone()).map_err(StartError::Notify)?;
        Ok(Self {
            db,
            storage,
            config,
            channels: Arc::new(channels),
        })
    }

    pub fn router(&self) -> axum::Router {
        api::router(AppState {
            db: self.db.clone(),
            storage: self.storage.clone(),
            max_upload_bytes: self.config.max_upload_bytes,
            upload_idle_timeout: self.config.upload_idle_timeout,
            api_keys: self.config.api_keys.clone(),
        })
    }

    pub fn worker(&self) -> Worker {
        Worker::new(
            self.db.clone(),
            self.storage.clone(),
            self.config.worker.clone(),
            Arc::new(self.config.notify.outbox.clone()),
        )
    }

    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher {
            db: self.db.clone(),
            channels: self.channels.clone(),
            config: self.config.notify.dispatch.clone(),
        }
    }

    /// Workers and the dispatcher, until `shutdown`.
    pub async fn work(&self, shutdown: CancellationToken) {
        let worker = tokio::spawn(self.worker().run(shutdown.clone()));
        let dispatcher = tokio::spawn(self.dispatcher().run(shutdown.clone()));
        let _ = tokio::join!(worker, dispatcher);
    }

    /// Serves HTTP on `listener` (and works, if `with_worker`) until `shutdown`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        with_worker: bool,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        let work = with_worker.then(|| {
            let app = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { app.work(shutdown).await })
        });
        serve_http(
            listener,
            self.router(),
            self.config.header_timeout,
            shutdown.clone(),
        )
        .await;
        if let Some(work) = work {
            let _ = work.await;
        }
        Ok(())
    }
}

/// Accepts connections until `shutdown`, then lets requests in flight finish
/// (for at most 30 s). Clients must send their headers within `header_timeout`.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("requests still running after 30 s; closing them");
        }
    }
}
