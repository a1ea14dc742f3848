//! Access control and hostile input: each case asserts the answer and that the
//! service still serves afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{assert_problem, spawn_with};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn file_rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(db)
        .await
        .unwrap()
}

async fn still_serves(app: &common::TestApp) {
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn api_keys_guard_every_v1_route_and_nothing_else(db: PgPool) {
    let (key, hash) = tally::auth::new_key();
    let app = spawn_with(db, true, |vars| {
        vars.insert("TALLY_API_KEY_HASHES".into(), hash);
    })
    .await;
    let id = uuid::Uuid::new_v4();
    for path in [
        "/api/v1/files".to_string(),
        format!("/api/v1/files/{id}"),
        format!("/api/v1/files/{id}/content"),
    ] {
        let r = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_problem(r, 401, "API key is required").await;
        let r = app
            .http
            .get(app.url(&path))
            .bearer_auth("tly_wrong")
            .send()
            .await
            .unwrap();
        assert_problem(r, 401, "not valid").await;
    }
    let r = app.post_csv("/api/v1/files", "amount EUR\n1\n").await;
    assert_problem(r, 401, "API key").await;
    assert_eq!(file_rows(&app.db).await, 0, "nothing stored without a key");

    let r = app
        .http
        .post(app.url("/api/v1/files?filename=k.csv"))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body("amount EUR\n1.5\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let file: Value = r.json().await.unwrap();
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{}", file["id"].as_str().unwrap())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    for open in ["/healthz", "/readyz", "/docs/", "/openapi.json", "/metrics"] {
        let r = app.http.get(app.url(open)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open} stays open");
    }
    let (_, spec) = app.get_json("/openapi.json").await;
    assert_eq!(
        spec["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    assert!(spec["paths"]["/api/v1/files"]["post"]["security"].is_array());
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn html_responses_carry_security_headers(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    let r = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(h.contains_key("x-request-id"));
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn metrics_are_prometheus_text(db: PgPool) {
    let app = common::spawn(db).await;
    let file: Value = app.upload_ok("m.csv", b"amount EUR\n1\n".to_vec()).await;
    app.wait_done(file["id"].as_str().unwrap()).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for needle in [
        "tally_uploads_total ",
        "tally_upload_bytes_total ",
        "tally_files{status=\"succeeded\"} 1",
        "tally_queue_depth 0",
        "tally_oldest_pending_seconds 0",
        "tally_processing_seconds_bucket{le=\"+Inf\"}",
        "tally_notifications_total{outcome=\"sent\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn binary_upload_fails_clearly_and_does_not_crash(db: PgPool) {
    let app = common::spawn(db).await;
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file: Value = app.upload_ok("photo.jpg", bytes).await;
    let done = app.wait_done(file["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(!done["error"].as_str().unwrap().is_empty());
    assert_eq!(done["attempts"], 1);
    still_serves(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn a_100_mb_line_fails_on_the_record_limit(db: PgPool) {
    let app = common::spawn(db).await;
    let chunk = vec![b'x'; 1024 * 1024];
    let stream =
        futures::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = app
        .post_csv(
            "/api/v1/files?filename=line.csv",
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    assert_eq!(r.status().as_u16(), 202);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["size_bytes"], 100 * 1024 * 1024);
    let done = app.wait_done(file["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("line 1") && error.contains("longer than"),
        "{error}"
    );
    still_serves(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn truncated_multipart_body_is_rejected(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.csv\"\r\n\r\namount EUR\n1\n";
    let r = app
        .http
        .post(app.url("/api/v1/files"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(r, 400, "interrupted").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(file_rows(&app.db).await, 0);
    assert!(
        app.stored_objects().is_empty(),
        "{:?}",
        app.stored_objects()
    );
    still_serves(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn hostile_filenames_are_display_text_or_rejected(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    let r = app
        .upload_multipart("../../../etc/passwd", b"amount EUR\n1\n".to_vec())
        .await;
    assert_eq!(r.status().as_u16(), 202);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["filename"], "../../../etc/passwd");
    let objects = app.stored_objects();
    assert_eq!(objects.len(), 1);
    assert!(objects[0].starts_with(app.storage_dir.path()));
    assert!(objects[0].ends_with(format!("{}.csv", file["id"].as_str().unwrap())));

    for bad in ["a%00b.csv", "a%0Ab.csv", &"x".repeat(10_000)] {
        let r = app
            .post_csv(&format!("/api/v1/files?filename={bad}"), "amount EUR\n1\n")
            .await;
        assert_problem(r, 400, "filename").await;
    }
    assert_eq!(file_rows(&app.db).await, 1);
    still_serves(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn slow_request_headers_are_cut_off(db: PgPool) {
    let app = spawn_with(db, false, |vars| {
        vars.insert("REQUEST_HEADER_TIMEOUT_SECONDS".into(), "1".into());
    })
    .await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server must close a connection whose headers never end"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    still_serves(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn stalled_upload_is_abandoned(db: PgPool) {
    let app = spawn_with(db, false, |vars| {
        vars.insert("UPLOAD_IDLE_TIMEOUT_SECONDS".into(), "1".into());
    })
    .await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(b"POST /api/v1/files?filename=s.csv HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 1000\r\n\r\namount EUR\n1\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
        .await
        .expect("an answer within the idle timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(file_rows(&app.db).await, 0);
    assert!(app.stored_objects().is_empty());
    still_serves(&app).await;
    app.stop().await;
}
