//! The HTTP API end to end: real router over a socket, real Postgres, real storage.

mod common;

use std::time::Duration;

use common::{assert_problem, spawn, spawn_with};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn multipart_upload_is_processed_to_the_exact_sum(db: PgPool) {
    let app = spawn(db).await;
    let (csv, sum) = common::simple_csv(1000);
    let response = app.upload_multipart("invoices.csv", csv.clone()).await;
    assert_eq!(response.status().as_u16(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("Location header");
    let file: Value = response.json().await.unwrap();
    let id = file["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/files/{id}"));
    assert_eq!(file["filename"], "invoices.csv");
    assert_eq!(file["size_bytes"], csv.len() as u64);
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&csv)));
    assert!(matches!(
        file["status"].as_str(),
        Some("pending" | "processing" | "succeeded")
    ));

    let done = app.wait_done(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["entries"], 1000);
    assert_eq!(done["sum"], sum);
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["progress_bytes"], csv.len() as u64);
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn raw_upload_is_processed_to_the_exact_sum(db: PgPool) {
    let app = spawn(db).await;
    let (csv, sum) = common::simple_csv(250);
    let response = app.upload_raw("raw.csv", csv).await;
    assert_eq!(response.status().as_u16(), 202);
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["filename"], "raw.csv");
    let done = app.wait_done(file["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["entries"], 250);
    assert_eq!(done["sum"], sum);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn every_fixture_gets_its_expected_result(db: PgPool) {
    let app = spawn(db).await;
    let fixtures = common::fixtures();
    assert!(fixtures.len() >= 4, "fixtures folder is populated");
    for (name, bytes, expected) in fixtures {
        let mut query = Vec::new();
        if let Some(d) = expected["decimal_separator"].as_str() {
            query.push(format!("decimal_separator={}", urlencode(d)));
        }
        if let Some(d) = expected["delimiter"].as_str() {
            query.push(format!("delimiter={}", urlencode(d)));
        }
        let path = format!("/api/v1/files?{}", query.join("&"));
        if bytes.is_empty() {
            // An empty file is refused at upload, before it is ever queued.
            let response = app.upload_multipart_to(&path, &name, bytes).await;
            assert_problem(response, 400, "empty").await;
            continue;
        }
        let response = app.upload_multipart_to(&path, &name, bytes).await;
        assert_eq!(response.status().as_u16(), 202, "{name}");
        let file: Value = response.json().await.unwrap();
        let done = app.wait_done(file["id"].as_str().unwrap()).await;
        if let Some(needle) = expected["error_contains"].as_str() {
            assert_eq!(done["status"], "failed", "{name}: {done}");
            let error = done["error"].as_str().unwrap_or_default();
            assert!(error.contains(needle), "{name}: {error:?} lacks {needle:?}");
            assert_eq!(done["attempts"], 1, "{name}: data errors are not retried");
        } else {
            assert_eq!(done["status"], "succeeded", "{name}: {done}");
            assert_eq!(done["entries"], expected["entries"], "{name}");
            assert_eq!(done["sum"], expected["sum"], "{name}");
        }
    }
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn invalid_amount_fails_the_file_naming_line_and_value(db: PgPool) {
    let app = spawn(db).await;
    let csv = b"id,amount EUR\n1,1.00\n2,abc\n".to_vec();
    let file: Value = app.upload_ok("bad.csv", csv).await;
    let done = app.wait_done(file["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("\"abc\""), "{error}");
    assert_eq!(done["attempts"], 1);
    assert!(done["sum"].is_null());
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn missing_file_field_is_rejected(db: PgPool) {
    let app = spawn(db).await;
    let form = reqwest::multipart::Form::new().text("document", "id,amount EUR\n1,2\n");
    let response = app
        .http
        .post(app.url("/api/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "no `file` part").await;
    assert_no_files(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn two_files_in_one_request_are_rejected(db: PgPool) {
    let app = spawn(db).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"amount EUR\n1\n".to_vec()).file_name("a.csv"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"amount EUR\n2\n".to_vec()).file_name("b.csv"),
        );
    let response = app
        .http
        .post(app.url("/api/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "more than one `file` part").await;
    assert_no_files(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn empty_body_is_rejected(db: PgPool) {
    let app = spawn(db).await;
    assert_problem(app.upload_raw("empty.csv", Vec::new()).await, 400, "empty").await;
    assert_problem(
        app.upload_multipart("empty.csv", Vec::new()).await,
        400,
        "empty",
    )
    .await;
    assert_no_files(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn wrong_content_type_is_rejected(db: PgPool) {
    let app = spawn(db).await;
    let response = app
        .http
        .post(app.url("/api/v1/files"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        400,
        "Content-Type application/json is not accepted",
    )
    .await;
    assert_no_files(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn bad_upload_parameters_are_rejected(db: PgPool) {
    let app = spawn(db).await;
    let response = app
        .post_csv("/api/v1/files?decimal_separator=x", "amount EUR\n1\n")
        .await;
    assert_problem(response, 400, "decimal_separator").await;
    let response = app
        .post_csv("/api/v1/files?delimiter=%23", "amount EUR\n1\n")
        .await;
    assert_problem(response, 400, "delimiter").await;
    assert_no_files(&app).await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn upload_options_are_stored_and_used(db: PgPool) {
    let app = spawn(db).await;
    let response = app
        .post_csv(
            "/api/v1/files?filename=eu.csv&delimiter=%3B&decimal_separator=%2C",
            "id;amount EUR\n1;1.234,50\n2;-0,25\n",
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["delimiter"], ";");
    assert_eq!(file["decimal_separator"], ",");
    let done = app.wait_done(file["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["sum"], "1234.25");
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn oversized_upload_is_rejected_and_nothing_is_kept(db: PgPool) {
    let app = spawn_with(db, true, |vars| {
        vars.insert("MAX_UPLOAD_BYTES".into(), "1000".into());
    })
    .await;
    let (csv, _) = common::simple_csv(200);
    assert!(csv.len() > 1000);
    assert_problem(
        app.upload_raw("big.csv", csv.clone()).await,
        413,
        "limit of 1000 bytes",
    )
    .await;
    assert_problem(
        app.upload_multipart("big.csv", csv.clone()).await,
        413,
        "limit of 1000 bytes",
    )
    .await;
    // Without a Content-Length, the limit is enforced while streaming.
    let stream = futures::stream::iter(
        csv.chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app
        .post_csv("/api/v1/files", reqwest::Body::wrap_stream(stream))
        .await;
    assert_problem(response, 413, "limit of 1000 bytes").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_no_files(&app).await;
    assert!(
        app.stored_objects().is_empty(),
        "{:?}",
        app.stored_objects()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn client_disconnect_mid_upload_leaves_no_row_and_no_object(db: PgPool) {
    use tokio::io::AsyncWriteExt;
    let app = spawn(db).await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /api/v1/files?filename=cut.csv HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 10000000\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let (csv, _) = common::simple_csv(20_000);
    socket
        .write_all(&csv[..csv.len().min(300_000)])
        .await
        .unwrap();
    socket.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_no_files(&app).await;
    assert!(
        app.stored_objects().is_empty(),
        "{:?}",
        app.stored_objects()
    );
    // Still serving.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    app.stop().await;
}

async fn assert_no_files(app: &common::TestApp) {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "no file row may be left");
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn content_returns_the_uploaded_bytes(db: PgPool) {
    let app = spawn(db).await;
    let (csv, _) = common::simple_csv(3000);
    let file: Value = app.upload_ok("c.csv", csv.clone()).await;
    let id = file["id"].as_str().unwrap();
    let response = app
        .http
        .get(app.url(&format!("/api/v1/files/{id}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv");
    assert_eq!(response.bytes().await.unwrap().as_ref(), csv.as_slice());
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn unknown_and_malformed_ids_are_problems(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/api/v1/files/{unknown}"),
        format!("/api/v1/files/{unknown}/content"),
    ] {
        let r = app.http.get(app.url(&path)).send().await.unwrap();
        assert_problem(r, 404, "no file with id").await;
    }
    let r = app
        .http
        .get(app.url("/api/v1/files/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 400, "").await;
    let r = app
        .http
        .get(app.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 404, "no such route").await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn history_is_newest_first_with_cursor_pagination_and_status_filter(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let csv = format!("amount EUR\n{i}\n").into_bytes();
        let file: Value = app.upload_ok(&format!("f{i}.csv"), csv).await;
        ids.push(file["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/files?limit=3&cursor={c}"),
            None => "/api/v1/files?limit=3".to_string(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|f| f["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every file once, newest first");

    let (_, pending) = app.get_json("/api/v1/files?status=pending&limit=100").await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 7);
    let (_, done) = app.get_json("/api/v1/files?status=succeeded").await;
    assert_eq!(done["items"].as_array().unwrap().len(), 0);

    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "status=done",
        "cursor=garbage",
    ] {
        let r = app
            .http
            .get(app.url(&format!("/api/v1/files?{bad}")))
            .send()
            .await
            .unwrap();
        assert_problem(r, 400, "").await;
    }
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn health_and_readiness(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    assert_eq!(app.get_json("/healthz").await.0, 200);
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    // With the database gone, readiness says so.
    app.db.close().await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(r, 503, "database").await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn retry_requeues_only_failed_files(db: PgPool) {
    let app = spawn(db).await;
    let file: Value = app.upload_ok("bad.csv", b"id,amount\n1,2\n".to_vec()).await;
    let id = file["id"].as_str().unwrap();
    let done = app.wait_done(id).await;
    assert_eq!(done["status"], "failed");
    let r = app
        .http
        .post(app.url(&format!("/api/v1/files/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let again = app.wait_done(id).await;
    assert_eq!(again["status"], "failed");
    assert_eq!(again["attempts"], 1, "a retry starts a fresh count");

    let good: Value = app.upload_ok("good.csv", b"amount EUR\n1\n".to_vec()).await;
    let good_id = good["id"].as_str().unwrap();
    app.wait_done(good_id).await;
    let r = app
        .http
        .post(app.url(&format!("/api/v1/files/{good_id}/retry")))
        .send()
        .await
        .unwrap();
    assert_problem(r, 409, "only a failed file").await;
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn swagger_ui_is_served_from_the_app(db: PgPool) {
    let app = spawn_with(db, false, |_| {}).await;
    let r = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let r = app
        .http
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, spec) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(spec["paths"]["/api/v1/files"]["post"].is_object());
    app.stop().await;
}

#[test]
fn committed_openapi_matches_the_code() {
    let generated = tally::api::openapi().to_pretty_json().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is out of date: run `make openapi` and commit it"
    );
}
