//! One storage suite, run against the local-folder backend and a real
//! S3-compatible server (moto) on loopback, reached through a proxy that the
//! tests can cut to play an outage.

mod common;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "tally-test";

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_moto() -> Moto {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (make test installs it)");
    let moto = Moto { child, port };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "moto did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{port}/{BUCKET}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    moto
}

/// A TCP proxy in front of the S3 server; `cut()` drops every connection and
/// refuses new ones until `restore()`.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let (d, l) = (down.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(task);
            }
        });
        Self { port, down, live }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

enum Backend {
    Local,
    S3 { _moto: Moto, proxy: Proxy },
}

async fn backend(s3: bool) -> Backend {
    if !s3 {
        return Backend::Local;
    }
    let moto = start_moto().await;
    let proxy = Proxy::start(moto.port).await;
    Backend::S3 { _moto: moto, proxy }
}

impl Backend {
    fn vars(&self) -> impl FnOnce(&mut HashMap<String, String>) + '_ {
        move |vars| {
            vars.insert("STORAGE_RETRY_TIMEOUT_SECONDS".into(), "2".into());
            vars.insert("STORAGE_MAX_RETRIES".into(), "1".into());
            vars.insert("WORKER_MAX_ATTEMPTS".into(), "50".into());
            if let Backend::S3 { proxy, .. } = self {
                for (k, v) in [
                    ("STORAGE_URL", format!("s3://{BUCKET}/uploads")),
                    ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", proxy.port)),
                    ("AWS_ALLOW_HTTP", "true".into()),
                    ("AWS_REGION", "us-east-1".into()),
                    ("AWS_ACCESS_KEY_ID", "test".into()),
                    ("AWS_SECRET_ACCESS_KEY", "test".into()),
                    ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
                ] {
                    vars.insert(k.into(), v);
                }
            }
        }
    }

    fn proxy(&self) -> &Proxy {
        match self {
            Backend::S3 { proxy, .. } => proxy,
            Backend::Local => panic!("only S3 has a proxy"),
        }
    }
}

async fn file_rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(db)
        .await
        .unwrap()
}

async fn round_trip(db: PgPool, s3: bool) {
    let backend = backend(s3).await;
    let app = common::spawn_with(db, true, backend.vars()).await;
    // Several upload parts (8 MiB each) so that multipart upload is exercised.
    let mut csv = Vec::new();
    let expected = tally::engine::gen::generate(&mut csv, 250_000, 3).unwrap();
    assert!(csv.len() > 16 * 1024 * 1024);
    let r = app.upload_multipart("big.csv", csv.clone()).await;
    assert_eq!(r.status().as_u16(), 202);
    let file: Value = r.json().await.unwrap();
    let id = file["id"].as_str().unwrap();
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&csv)));
    let done = app.wait_done(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["entries"], expected.entries);
    assert_eq!(done["sum"], expected.sum.to_string());
    let back = app
        .http
        .get(app.url(&format!("/api/v1/files/{id}/content")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&back)),
        hex::encode(Sha256::digest(&csv))
    );
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn local_upload_process_download_is_identical(db: PgPool) {
    round_trip(db, false).await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn s3_upload_process_download_is_identical(db: PgPool) {
    round_trip(db, true).await;
}

async fn aborted_upload(db: PgPool, s3: bool) {
    use tokio::io::AsyncWriteExt;
    let backend = backend(s3).await;
    let app = common::spawn_with(db, false, backend.vars()).await;
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /api/v1/files?filename=cut.csv HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 100000000\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    // More than one part, so that a multipart upload is under way when the client goes.
    let chunk = vec![b'1'; 1024 * 1024];
    for _ in 0..12 {
        socket.write_all(&chunk).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(file_rows(&app.db).await, 0);
    match &backend {
        Backend::Local => assert!(
            app.stored_objects().is_empty(),
            "{:?}",
            app.stored_objects()
        ),
        Backend::S3 { _moto, .. } => {
            let base = format!("http://127.0.0.1:{}/{BUCKET}", _moto.port);
            let list = reqwest::get(format!("{base}?list-type=2"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(!list.contains("<Key>"), "no object may be left: {list}");
            let uploads = reqwest::get(format!("{base}?uploads"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                !uploads.contains("<UploadId>"),
                "the multipart upload is aborted: {uploads}"
            );
        }
    }
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn local_aborted_upload_leaves_nothing(db: PgPool) {
    aborted_upload(db, false).await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn s3_aborted_upload_leaves_nothing(db: PgPool) {
    aborted_upload(db, true).await;
}

async fn missing_object(db: PgPool, s3: bool) {
    let backend = backend(s3).await;
    let app = common::spawn_with(db, false, backend.vars()).await;
    let file: Value = app.upload_ok("gone.csv", b"amount EUR\n1\n".to_vec()).await;
    let id = file["id"].as_str().unwrap();
    app.app
        .storage
        .delete(&tally::storage::Storage::key_for(id.parse().unwrap()))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let work = tokio::spawn({
        let a = app.app.clone();
        let s = shutdown.clone();
        async move { a.work(s).await }
    });
    let done = app.wait_done(id).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"].as_str().unwrap().contains("missing"),
        "{done}"
    );
    shutdown.cancel();
    let _ = work.await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn local_missing_object_fails_clearly(db: PgPool) {
    missing_object(db, false).await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn s3_missing_object_fails_clearly(db: PgPool) {
    missing_object(db, true).await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn s3_down_during_upload_is_503_and_keeps_nothing(db: PgPool) {
    let backend = backend(true).await;
    let app = common::spawn_with(db, false, backend.vars()).await;
    backend.proxy().cut();
    let r = app.upload_raw("x.csv", b"amount EUR\n1\n".to_vec()).await;
    common::assert_problem(r, 503, "storage").await;
    assert_eq!(file_rows(&app.db).await, 0);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    common::assert_problem(r, 503, "storage").await;
    backend.proxy().restore();
    let r = app.upload_raw("x.csv", b"amount EUR\n1\n".to_vec()).await;
    assert_eq!(r.status().as_u16(), 202);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn s3_down_during_processing_is_retried_then_succeeds(db: PgPool) {
    let backend = backend(true).await;
    let app = common::spawn_with(db, false, backend.vars()).await;
    let file: Value = app
        .upload_ok("x.csv", b"amount EUR\n1.25\n2\n".to_vec())
        .await;
    let id = file["id"].as_str().unwrap().to_string();
    backend.proxy().cut();
    let shutdown = CancellationToken::new();
    let work = tokio::spawn({
        let a = app.app.clone();
        let s = shutdown.clone();
        async move { a.work(s).await }
    });
    let retrying = app
        .wait_for(&id, Duration::from_secs(60), |f| {
            f["status"] == "pending" && f["attempts"].as_i64() >= Some(1) && f["error"].is_string()
        })
        .await;
    assert!(
        retrying["error"].as_str().unwrap().contains("storage"),
        "{retrying}"
    );
    backend.proxy().restore();
    let done = app.wait_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["sum"], "3.25");
    assert!(done["attempts"].as_i64().unwrap() >= 2);
    shutdown.cancel();
    let _ = work.await;
    app.stop().await;
}
