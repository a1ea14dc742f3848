//! Real `tally worker` processes sharing one database and one storage folder:
//! none loses a file, a killed worker's file is finished by another.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

struct Proc(Child);

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

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn four_worker_processes_finish_200_files_exactly_once(db: PgPool) {
    let app = common::spawn_with(db.clone(), false, |_| {}).await;
    let mut expected = HashMap::new();
    for i in 0..200u64 {
        let (csv, sum) = common::simple_csv(1 + i % 37);
        let file: Value = app.upload_raw(&format!("f{i}.csv"), csv).await.json().await.unwrap();
        expected.insert(file["id"].as_str().unwrap().to_string(), (1 + i % 37, sum));
    }
    let workers: Vec<Proc> = futures::future::join_all(
        (0..4).map(|_| start_worker(&db, &app, &[("WORKER_CONCURRENCY", "2")])),
    )
    .await;

    let started = Instant::now();
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM files WHERE status IN ('pending', 'processing')")
                .fetch_one(&db)
                .await
                .unwrap();
        if open == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{open} files still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(uuid::Uuid, String, i32, Option<i64>, Option<rust_decimal::Decimal>)> =
        sqlx::query_as("SELECT id, status, attempts, entries, sum FROM files")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 200, "no file lost");
    for (id, status, attempts, entries, sum) in rows {
        let (n, s) = &expected[&id.to_string()];
        assert_eq!(status, "succeeded", "{id}");
        assert_eq!(attempts, 1, "{id} processed once");
        assert_eq!(entries, Some(*n as i64));
        assert_eq!(sum.unwrap().to_string(), *s);
    }
    let per_file: Vec<i64> = sqlx::query_scalar(
        "SELECT count(n.id) FROM files f LEFT JOIN notifications n ON n.file_id = f.id GROUP BY f.id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(per_file.iter().all(|&n| n == 1), "one notification per file and channel");
    drop(workers);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn killed_worker_file_is_finished_by_another(db: PgPool) {
    let app = common::spawn_with(db.clone(), false, |_| {}).await;
    let mut csv = Vec::new();
    let expected = tally::engine::gen::generate(&mut csv, 1_500_000, 42).unwrap();
    let file: Value = app.upload_raw("big.csv", csv).await.json().await.unwrap();
    let id = file["id"].as_str().unwrap().to_string();

    let lease = [("WORKER_LEASE_SECONDS", "2"), ("WORKER_CONCURRENCY", "1")];
    let mut first = start_worker(&db, &app, &lease).await;
    app.wait_for(&id, Duration::from_secs(60), |f| f["status"] == "processing")
        .await;
    first.0.kill().expect("kill -9 the worker");
    first.0.wait().unwrap();
    let after_kill = app.get_json(&format!("/api/v1/files/{id}")).await.1;
    assert_eq!(after_kill["status"], "processing", "killed mid-file: {after_kill}");

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
    let file: Value = app.upload_raw("big.csv", csv).await.json().await.unwrap();
    let id = file["id"].as_str().unwrap().to_string();
    let mut worker = start_worker(
        &db,
        &app,
        &[("SHUTDOWN_GRACE_SECONDS", "0"), ("WORKER_CONCURRENCY", "1")],
    )
    .await;
    app.wait_for(&id, Duration::from_secs(60), |f| f["status"] == "processing")
        .await;
    let pid = worker.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "worker did not exit");
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
