//! Real `tally worker` processes sharing one database and one storage folder:
//! none loses a file, a killed worker's file is finished by another.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

struct Proc(Child);

/// id, status, attempts, entries, sum
type FileResult = (
    uuid::Uuid,
    String,
    i32,
    Option<i64>,
    Option<rust_decimal::Decimal>,
);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_worker(db: &PgPool, app: &common::TestApp, extra: &[(&str, &str)]) -> Proc {
    let url = common::database_url(db).await;
    let mut vars: HashMap<String, String> = common::test_vars(app.storage_dir.path());
    vars.insert("DATABASE_URL".into(), url);
    vars.insert("RUST_LOG".into(), "warn".into());
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("worker")
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start tally worker");
    Proc(child)
}

/// Uploads `files` CSVs of the given row counts, runs `processes` worker processes,
/// and checks every file succeeded exactly once, with one delivered notification
/// per file and channel.
async fn many_workers_finish_every_file_once(
    db: PgPool,
    processes: usize,
    files: u64,
    rows: &[u64],
) {
    let hooks = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&hooks)
        .await;
    let app = common::spawn_with(db.clone(), false, |_| {}).await;
    let mut expected = HashMap::new();
    for i in 0..files {
        let n = rows[i as usize % rows.len()];
        let (csv, sum) = common::simple_csv(n);
        let file: Value = app.upload_ok(&format!("f{i}.csv"), csv).await;
        expected.insert(file["id"].as_str().unwrap().to_string(), (n, sum));
    }
    let slack = format!("{}/slack", hooks.uri());
    let hook = format!("{}/hook", hooks.uri());
    let channels = [
        ("WORKER_CONCURRENCY", "2"),
        ("SLACK_WEBHOOK_URL", slack.as_str()),
        ("WEBHOOK_URL", hook.as_str()),
        ("WEBHOOK_SECRET", "k"),
    ];
    let workers: Vec<Proc> =
        futures::future::join_all((0..processes).map(|_| start_worker(&db, &app, &channels))).await;

    let started = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM files WHERE status IN ('pending', 'processing'))
                  + (SELECT count(*) FROM notifications WHERE status <> 'sent')",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{open} files or notifications open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<FileResult> =
        sqlx::query_as("SELECT id, status, attempts, entries, sum FROM files")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len() as u64, files, "no file lost");
    for (id, status, attempts, entries, sum) in rows {
        let (n, s) = &expected[&id.to_string()];
        assert_eq!(status, "succeeded", "{id}");
        assert_eq!(attempts, 1, "{id} processed once");
        assert_eq!(entries, Some(*n as i64));
        assert_eq!(sum.unwrap().to_string(), *s);
    }
    let per_channel: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT channel, count(*), count(DISTINCT file_id) FROM notifications GROUP BY channel ORDER BY channel",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let n = files as i64;
    assert_eq!(
        per_channel,
        vec![("slack".into(), n, n), ("webhook".into(), n, n)]
    );
    let received = hooks.received_requests().await.unwrap();
    assert_eq!(
        received.len() as u64,
        2 * files,
        "one delivery per file and channel"
    );
    drop(workers);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn four_worker_processes_finish_200_files_exactly_once(db: PgPool) {
    many_workers_finish_every_file_once(db, 4, 200, &[1, 5, 17, 37, 100]).await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn three_worker_processes_finish_300_mixed_files_exactly_once(db: PgPool) {
    many_workers_finish_every_file_once(db, 3, 300, &[1, 10, 100, 1000, 20_000]).await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn killed_worker_file_is_finished_by_another(db: PgPool) {
    let app = common::spawn_with(db.clone(), false, |_| {}).await;
    let mut csv = Vec::new();
    let expected = tally::engine::gen::generate(&mut csv, 1_500_000, 42).unwrap();
    let file: Value = app.upload_ok("big.csv", csv).await;
    let id = file["id"].as_str().unwrap().to_string();

    let lease = [("WORKER_LEASE_SECONDS", "2"), ("WORKER_CONCURRENCY", "1")];
    let mut first = start_worker(&db, &app, &lease).await;
    app.wait_for(&id, Duration::from_secs(60), |f| {
        f["status"] == "processing"
    })
    .await;
    first.0.kill().expect("kill -9 the worker");
    first.0.wait().unwrap();
    let after_kill = app.get_json(&format!("/api/v1/files/{id}")).await.1;
    assert_eq!(
        after_kill["status"], "processing",
        "killed mid-file: {after_kill}"
    );

    let _second = start_worker(&db, &app, &lease).await;
    let done = app
        .wait_for(&id, Duration::from_secs(120), |f| {
            matches!(f["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["entries"], expected.entries);
    assert_eq!(done["sum"], expected.sum.to_string());
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn sigterm_releases_the_file_and_exits_cleanly(db: PgPool) {
    let app = common::spawn_with(db.clone(), false, |_| {}).await;
    let mut csv = Vec::new();
    tally::engine::gen::generate(&mut csv, 1_500_000, 9).unwrap();
    let file: Value = app.upload_ok("big.csv", csv).await;
    let id = file["id"].as_str().unwrap().to_string();
    let mut worker = start_worker(
        &db,
        &app,
        &[("SHUTDOWN_GRACE_SECONDS", "0"), ("WORKER_CONCURRENCY", "1")],
    )
    .await;
    app.wait_for(&id, Duration::from_secs(60), |f| {
        f["status"] == "processing"
    })
    .await;
    let pid = worker.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "worker did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status:?}");
    let after = app.get_json(&format!("/api/v1/files/{id}")).await.1;
    // Either it finished in time or it handed the file back; never a dangling lease.
    match after["status"].as_str() {
        Some("succeeded") => {}
        Some("pending") => assert_eq!(after["attempts"], 0, "{after}"),
        other => panic!("unexpected state {other:?}: {after}"),
    }
    app.stop().await;
}
