//! Shared test harness: the real app on an ephemeral port, against the per-test
//! database that `#[sqlx::test]` creates, with storage in a temporary folder.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tally::app::App;
use tally::config::Config;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db: PgPool,
    pub app: App,
    pub storage_dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// Settings tests start from: fast polling and short leases.
pub fn test_vars(storage: &Path) -> HashMap<String, String> {
    [
        ("STORAGE_URL", storage.to_str().expect("utf-8 temp path")),
        ("WORKER_CONCURRENCY", "2"),
        ("WORKER_POLL_INTERVAL_MS", "100"),
        ("WORKER_LEASE_SECONDS", "3"),
        ("WORKER_RETRY_BACKOFF_MS", "50"),
        ("NOTIFY_RETRY_BACKOFF_MS", "50"),
        ("TALLY_BIND", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub async fn spawn(db: PgPool) -> TestApp {
    spawn_with(db, true, |_| {}).await
}

/// Starts the app; `vars` can be adjusted before the configuration is built.
pub async fn spawn_with(
    db: PgPool,
    with_worker: bool,
    adjust: impl FnOnce(&mut HashMap<String, String>),
) -> TestApp {
    let storage_dir = tempfile::tempdir().expect("temp dir");
    let mut vars = test_vars(storage_dir.path());
    adjust(&mut vars);
    let config = Config::from_vars(&vars).expect("test config is valid");
    let app = App::new(db.clone(), config).expect("app starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let handle = {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            app.serve(listener, with_worker, shutdown)
                .await
                .expect("serve");
        })
    };
    TestApp {
        addr,
        base: format!("http://{addr}"),
        db,
        app,
        storage_dir,
        http: reqwest::Client::new(),
        shutdown,
        handle,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn upload_multipart(&self, name: &str, bytes: Vec<u8>) -> reqwest::Response {
        self.upload_multipart_to("/api/v1/files", name, bytes).await
    }

    pub async fn upload_multipart_to(
        &self,
        path: &str,
        name: &str,
        bytes: Vec<u8>,
    ) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.http
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .expect("request")
    }

    pub async fn upload_raw(&self, name: &str, bytes: Vec<u8>) -> reqwest::Response {
        self.post_csv(&format!("/api/v1/files?filename={name}"), bytes)
            .await
    }

    /// Uploads a raw CSV that must be accepted; returns its record.
    pub async fn upload_ok(&self, name: &str, bytes: Vec<u8>) -> Value {
        let response = self.upload_raw(name, bytes).await;
        assert_eq!(response.status().as_u16(), 202, "upload of {name}");
        response.json().await.expect("file record")
    }

    /// POSTs `body` as `text/csv` to `path` (with its query string).
    pub async fn post_csv(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("Content-Type", "text/csv")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls a file until it is `succeeded` or `failed`.
    pub async fn wait_done(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(60), |f| {
            matches!(f["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await
    }

    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let (status, file) = self.get_json(&format!("/api/v1/files/{id}")).await;
            assert_eq!(status, 200, "{file}");
            if done(&file) {
                return file;
            }
            assert!(
                started.elapsed() < limit,
                "file {id} not done in time: {file}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Object files under the storage folder (complete uploads only).
    pub fn stored_objects(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.storage_dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

pub async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    detail_contains: &str,
) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string());
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(detail_contains),
        "detail {detail:?} should contain {detail_contains:?}"
    );
    body
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `fixtures/NAME.csv` with its `NAME.expected.json`.
pub fn fixtures() -> Vec<(String, Vec<u8>, Value)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    entries.sort();
    for path in entries {
        let expected_path = path.with_extension("expected.json");
        let Ok(expected) = std::fs::read_to_string(&expected_path) else {
            continue;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        out.push((
            name,
            std::fs::read(&path).expect("fixture"),
            serde_json::from_str(&expected).expect("expected json"),
        ));
    }
    out
}

/// A CSV with `rows` data rows whose amounts are 0.01, 0.02, …; returns (bytes, sum).
pub fn simple_csv(rows: u64) -> (Vec<u8>, String) {
    let mut s = String::from("id,description,amount EUR\n");
    let mut cents: i64 = 0;
    for i in 1..=rows {
        s.push_str(&format!("{i},item {i},{}.{:02}\n", i / 100, i % 100));
        cents += i as i64;
    }
    (
        s.into_bytes(),
        format!("{}.{:02}", cents / 100, cents % 100),
    )
}

/// A result as the engine reports it, for tests that drive the queue by hand.
pub fn summary(entries: u64, sum: &str) -> tally::engine::Summary {
    tally::engine::Summary {
        entries,
        sum: sum.parse().expect("a decimal"),
        bytes: 1,
    }
}

/// A per-test database URL, for child processes.
pub async fn database_url(db: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(db)
        .await
        .expect("current_database");
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}
