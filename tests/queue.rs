//! The queue's guarantees, each tested against real Postgres.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tally::config::{Config, WorkerConfig};
use tally::files::{repo, NewFile};
use tally::notify::Outbox;
use tally::storage::Storage;
use tally::worker::{Outcome, Worker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

async fn insert_file(db: &PgPool, key: &str) -> Uuid {
    let id = Uuid::now_v7();
    repo::insert(
        db,
        &NewFile {
            id,
            filename: "x.csv".into(),
            size_bytes: 1,
            sha256: "00".into(),
            object_key: key.into(),
            delimiter: None,
            decimal_separator: ".".into(),
        },
    )
    .await
    .unwrap();
    id
}

/// A worker over a temporary storage folder, with `bytes` stored as a file.
async fn worker_with_file(
    db: &PgPool,
    bytes: &[u8],
    adjust: impl FnOnce(&mut WorkerConfig),
) -> (Worker, Uuid, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_vars(&common::test_vars(dir.path())).unwrap();
    let storage = Storage::open(
        &config.storage_url,
        &[],
        config.storage_part_bytes,
        &config.storage_retry,
    )
    .unwrap();
    let id = Uuid::now_v7();
    let key = Storage::key_for(id);
    let mut upload = storage.begin_upload(&key).await.unwrap();
    upload.write(bytes.to_vec().into()).await.unwrap();
    let stored = upload.finish().await.unwrap();
    repo::insert(
        db,
        &NewFile {
            id,
            filename: "x.csv".into(),
            size_bytes: stored.size,
            sha256: stored.sha256,
            object_key: key,
            delimiter: None,
            decimal_separator: ".".into(),
        },
    )
    .await
    .unwrap();
    let mut worker_config = config.worker.clone();
    adjust(&mut worker_config);
    let worker = Worker::new(
        db.clone(),
        storage,
        worker_config,
        Arc::new(Outbox::default()),
    );
    (worker, id, dir)
}

async fn status_of(db: &PgPool, id: Uuid) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, error FROM files WHERE id = $1")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn concurrent_claims_never_share_a_file(db: PgPool) {
    let mut inserted = HashSet::new();
    for i in 0..60 {
        inserted.insert(insert_file(&db, &format!("k{i}")).await);
    }
    let mut tasks = Vec::new();
    for t in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(claim) = repo::claim_next(&db, &format!("w{t}"), LEASE, 5)
                .await
                .unwrap()
            {
                mine.push(claim.id);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), unique.len(), "a file was claimed twice");
    assert_eq!(unique, inserted, "every file was claimed");
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn oldest_file_is_claimed_first(db: PgPool) {
    let first = insert_file(&db, "a").await;
    let _second = insert_file(&db, "b").await;
    let claim = repo::claim_next(&db, "w", LEASE, 5).await.unwrap().unwrap();
    assert_eq!(claim.id, first);
    assert_eq!(claim.attempts, 1);
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn live_lease_is_not_reclaimed(db: PgPool) {
    insert_file(&db, "a").await;
    assert!(repo::claim_next(&db, "w1", LEASE, 5)
        .await
        .unwrap()
        .is_some());
    assert!(repo::claim_next(&db, "w2", LEASE, 5)
        .await
        .unwrap()
        .is_none());
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn expired_lease_is_reclaimed(db: PgPool) {
    let id = insert_file(&db, "a").await;
    let first = repo::claim_next(&db, "w1", Duration::from_millis(300), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, id);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = repo::claim_next(&db, "w2", LEASE, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, id);
    assert_eq!(second.attempts, 2);
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn heartbeat_keeps_the_lease(db: PgPool) {
    let id = insert_file(&db, "a").await;
    let claim = repo::claim_next(&db, "w1", Duration::from_millis(400), 5)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            repo::heartbeat(&db, id, claim.attempts, Duration::from_millis(400), 7)
                .await
                .unwrap()
        );
    }
    assert!(repo::claim_next(&db, "w2", LEASE, 5)
        .await
        .unwrap()
        .is_none());
    let progress: i64 = sqlx::query_scalar("SELECT progress_bytes FROM files WHERE id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(progress, 7);
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn stale_worker_cannot_complete(db: PgPool) {
    let id = insert_file(&db, "a").await;
    let stale = repo::claim_next(&db, "w1", Duration::from_millis(200), 5)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = repo::claim_next(&db, "w2", LEASE, 5)
        .await
        .unwrap()
        .unwrap();
    let summary = common::summary(1, "1.00");
    let outbox = Outbox::default();
    assert!(!outbox.complete(&db, &stale, &summary).await.unwrap());
    assert!(!outbox.fail(&db, &stale, "late").await.unwrap());
    assert!(!repo::heartbeat(&db, id, stale.attempts, LEASE, 0)
        .await
        .unwrap());
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(notes, 0, "a stale worker notifies nothing");
    assert!(outbox.complete(&db, &fresh, &summary).await.unwrap());
    assert_eq!(status_of(&db, id).await.0, "succeeded");
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn completed_file_notifies_once_per_channel(db: PgPool) {
    insert_file(&db, "a").await;
    let claim = repo::claim_next(&db, "w", LEASE, 5).await.unwrap().unwrap();
    let summary = common::summary(3, "4.50");
    let outbox = Outbox::default();
    assert!(outbox.complete(&db, &claim, &summary).await.unwrap());
    let notes: Vec<(String, String)> = sqlx::query_as("SELECT channel, message FROM notifications")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].0, "log");
    assert!(
        notes[0].1.ends_with(" - 3 entries processed, sum: 4.50"),
        "{}",
        notes[0].1
    );
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn claims_use_the_partial_index_on_claimable_rows(db: PgPool) {
    sqlx::query(
        "INSERT INTO files (id, filename, size_bytes, sha256, object_key, status, finished_at)
         SELECT gen_random_uuid(), 'old.csv', 1, '00', 'k', 'succeeded', now()
         FROM generate_series(1, 20000)",
    )
    .execute(&db)
    .await
    .unwrap();
    insert_file(&db, "new").await;
    sqlx::query("ANALYZE files").execute(&db).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM files
         WHERE status IN ('pending', 'processing')
           AND ((status = 'pending' AND run_after <= now())
                OR (status = 'processing' AND locked_until < now()))
           AND attempts < 5
         ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("files_claimable"), "{plan}");
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn data_error_fails_the_file_without_retry(db: PgPool) {
    let (worker, id, _dir) = worker_with_file(&db, b"id,amount EUR\n1,12.3.4\n", |_| {}).await;
    let claim = repo::claim_next(&db, "w", LEASE, 5).await.unwrap().unwrap();
    let outcome = worker.process(claim, "w", &CancellationToken::new()).await;
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    let (status, attempts, error) = status_of(&db, id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    let error = error.unwrap();
    assert!(
        error.contains("line 2") && error.contains("12.3.4"),
        "{error}"
    );
    assert!(repo::claim_next(&db, "w", LEASE, 5)
        .await
        .unwrap()
        .is_none());
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn missing_object_fails_the_file_clearly(db: PgPool) {
    let (worker, id, dir) = worker_with_file(&db, b"amount EUR\n1\n", |_| {}).await;
    std::fs::remove_dir_all(dir.path().join("files")).unwrap();
    let claim = repo::claim_next(&db, "w", LEASE, 5).await.unwrap().unwrap();
    worker.process(claim, "w", &CancellationToken::new()).await;
    let (status, _, error) = status_of(&db, id).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("missing"));
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn poison_file_fails_after_max_attempts(db: PgPool) {
    let id = insert_file(&db, "a").await;
    // Three workers in a row die holding the file.
    for _ in 0..3 {
        let claim = repo::claim_next(&db, "doomed", Duration::from_millis(100), 3)
            .await
            .unwrap();
        assert!(claim.is_some());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(repo::claim_next(&db, "w", LEASE, 3)
        .await
        .unwrap()
        .is_none());
    let reaped = Outbox::default().reap_abandoned(&db, 3).await.unwrap();
    assert_eq!(reaped, vec![id]);
    let (status, attempts, error) = status_of(&db, id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert!(error.unwrap().contains("interrupted 3 times"));
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn shutdown_releases_the_file_after_the_grace_period(db: PgPool) {
    let mut bytes = Vec::new();
    tally::engine::gen::generate(&mut bytes, 400_000, 7).unwrap();
    let (worker, id, _dir) = worker_with_file(&db, &bytes, |c| {
        c.shutdown_grace = Duration::ZERO;
    })
    .await;
    let claim = repo::claim_next(&db, "w", LEASE, 5).await.unwrap().unwrap();
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let outcome = worker.process(claim, "w", &shutdown).await;
    assert_eq!(outcome, Outcome::Released);
    let (status, attempts, _) = status_of(&db, id).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 0),
        "released, not counted"
    );
    let locked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT locked_until FROM files WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(locked.is_none(), "no lease is left to time out");
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn transient_errors_back_off_then_give_up(db: PgPool) {
    let id = insert_file(&db, "a").await;
    let claim = repo::claim_next(&db, "w", LEASE, 2).await.unwrap().unwrap();
    assert!(repo::retry_later(
        &db,
        id,
        claim.attempts,
        Duration::from_secs(60),
        "storage down"
    )
    .await
    .unwrap());
    // Not due yet.
    assert!(repo::claim_next(&db, "w", LEASE, 2)
        .await
        .unwrap()
        .is_none());
    let (status, _, error) = status_of(&db, id).await;
    assert_eq!(status, "pending");
    assert_eq!(error.as_deref(), Some("storage down"));
}
