//! Notifications over real sockets: a real SMTP server (aiosmtpd) and local HTTP
//! stand-ins for Slack, SMS and webhook receivers.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A real SMTP server that stores each message as a file under `dir/new`.
struct Smtp {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_smtp(port: u16) -> Smtp {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        // Maildir creates its tmp/new/cur folders only for a folder it creates itself.
        .arg(dir.path().join("maildir"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m aiosmtpd (make test installs it)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "SMTP server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp { child, dir, port }
}

impl Smtp {
    fn messages(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("maildir/new"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    async fn wait_messages(&self, n: usize) -> Vec<PathBuf> {
        let started = Instant::now();
        loop {
            let found = self.messages();
            if found.len() >= n {
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no mail arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Mail {
    headers: Vec<(String, String)>,
    body: String,
}

impl Mail {
    fn read(path: &Path) -> Self {
        let raw = std::fs::read_to_string(path).unwrap().replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Self {
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

fn smtp_vars(port: u16) -> impl FnOnce(&mut std::collections::HashMap<String, String>) {
    move |vars| {
        vars.insert("SMTP_URL".into(), format!("smtp://127.0.0.1:{port}"));
        vars.insert("MAIL_FROM".into(), "Tally <tally@example.com>".into());
        vars.insert("MAIL_TO".into(), "ana@example.com, bo@example.com".into());
        vars.insert("NOTIFY_TIMEZONE".into(), "America/New_York".into());
        vars.insert(
            "TALLY_PUBLIC_URL".into(),
            "https://tally.example.com".into(),
        );
    }
}

async fn upload_and_finish(app: &common::TestApp, name: &str, csv: Vec<u8>) -> Value {
    let file: Value = app.upload_ok(name, csv).await;
    app.wait_done(file["id"].as_str().unwrap()).await
}

async fn wait_notifications(
    app: &common::TestApp,
    id: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (_, file) = app.get_json(&format!("/api/v1/files/{id}")).await;
        if done(
            file["notifications"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ) {
            return file;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "notifications: {file}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_sent(n: &[Value]) -> bool {
    !n.is_empty() && n.iter().all(|x| x["status"] == "sent")
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn email_arrives_with_the_exact_message_line(db: PgPool) {
    let smtp = start_smtp(free_port());
    let app = common::spawn_with(db, true, smtp_vars(smtp.port)).await;
    let (csv, sum) = common::simple_csv(1000);
    let done = upload_and_finish(&app, "invoices-2026-11.csv", csv).await;
    assert_eq!(done["status"], "succeeded");
    let id = done["id"].as_str().unwrap();

    let mails = smtp.wait_messages(1).await;
    assert_eq!(mails.len(), 1, "one email for both recipients");
    let mail = Mail::read(&mails[0]);
    assert_eq!(mail.header("from"), "Tally <tally@example.com>");
    let to = mail.header("to");
    assert!(
        to.contains("ana@example.com") && to.contains("bo@example.com"),
        "{to}"
    );
    assert_eq!(
        mail.header("subject"),
        "Tally: invoices-2026-11.csv processed"
    );

    let finished: DateTime<Utc> = done["finished_at"].as_str().unwrap().parse().unwrap();
    let local = finished.with_timezone(&chrono_tz::America::New_York);
    let expected = format!(
        "{} - 1000 entries processed, sum: {sum}",
        local.format("%d/%m/%Y %H:%M")
    );
    assert_eq!(mail.body.lines().next().unwrap(), expected);
    assert!(mail.body.contains(id), "the body names the file id");
    assert!(mail.body.contains("invoices-2026-11.csv"));

    let file = wait_notifications(&app, id, all_sent).await;
    let note = &file["notifications"][0];
    assert_eq!(note["channel"], "email");
    assert_eq!(note["kind"], "succeeded");
    assert_eq!(note["attempts"], 1);
    assert!(note["sent_at"].is_string());
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn smtp_down_then_up_delivers_exactly_once(db: PgPool) {
    let port = free_port();
    let app = common::spawn_with(db, true, smtp_vars(port)).await;
    let (csv, _) = common::simple_csv(10);
    let done = upload_and_finish(&app, "late.csv", csv).await;
    assert_eq!(
        done["status"], "succeeded",
        "the file succeeds whatever the mail does"
    );
    let id = done["id"].as_str().unwrap();
    let file = wait_notifications(&app, id, |n| {
        n.first()
            .is_some_and(|x| x["status"] == "pending" && x["attempts"].as_i64() >= Some(1))
    })
    .await;
    assert!(file["notifications"][0]["last_error"].is_string(), "{file}");

    let smtp = start_smtp(port);
    wait_notifications(&app, id, all_sent).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 1, "delivered exactly once");
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn failed_file_notifies_its_error(db: PgPool) {
    let smtp = start_smtp(free_port());
    let app = common::spawn_with(db, true, smtp_vars(smtp.port)).await;
    let done = upload_and_finish(&app, "bad.csv", b"id,amount\n1,2\n".to_vec()).await;
    assert_eq!(done["status"], "failed");
    let mails = smtp.wait_messages(1).await;
    let mail = Mail::read(&mails[0]);
    assert_eq!(mail.header("subject"), "Tally: bad.csv failed");
    let first = mail.body.lines().next().unwrap().to_string();
    assert!(
        first.contains(" - processing of bad.csv failed: "),
        "{first}"
    );
    assert!(first.contains("amount EUR"), "{first}");
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn failure_notifications_can_be_switched_off(db: PgPool) {
    let app = common::spawn_with(db, true, |vars| {
        vars.insert("NOTIFY_ON_FAILURE".into(), "false".into());
    })
    .await;
    let done = upload_and_finish(&app, "bad.csv", b"id,amount\n1,2\n".to_vec()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["notifications"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn log_channel_is_used_when_none_is_configured(db: PgPool) {
    let app = common::spawn(db).await;
    let (csv, _) = common::simple_csv(5);
    let done = upload_and_finish(&app, "a.csv", csv).await;
    let file = wait_notifications(&app, done["id"].as_str().unwrap(), all_sent).await;
    assert_eq!(file["notifications"][0]["channel"], "log");
    app.stop().await;
}

async fn http_channels(
    server: &MockServer,
) -> impl FnOnce(&mut std::collections::HashMap<String, String>) {
    let base = server.uri();
    move |vars| {
        vars.insert(
            "SLACK_WEBHOOK_URL".into(),
            format!("{base}/slack/T000/B000/XXX"),
        );
        vars.insert("SMS_BASE_URL".into(), base.clone());
        vars.insert("SMS_ACCOUNT_SID".into(), "AC0123".into());
        vars.insert("SMS_AUTH_TOKEN".into(), "token-1".into());
        vars.insert("SMS_FROM".into(), "+15550001".into());
        vars.insert("SMS_TO".into(), "+15550002".into());
        vars.insert("WEBHOOK_URL".into(), format!("{base}/hook"));
        vars.insert("WEBHOOK_SECRET".into(), "s3cret".into());
    }
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn slack_sms_and_webhook_requests_are_well_formed(db: PgPool) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let app = common::spawn_with(db, true, http_channels(&server).await).await;
    let (csv, sum) = common::simple_csv(20);
    let done = upload_and_finish(&app, "a.csv", csv).await;
    let id = done["id"].as_str().unwrap();
    let file = wait_notifications(&app, id, |n| n.len() == 3 && all_sent(n)).await;
    let channels: Vec<&str> = file["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["slack", "sms", "webhook"]);

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    let line_end = format!(" - 20 entries processed, sum: {sum}");

    let slack = requests
        .iter()
        .find(|r| r.url.path().starts_with("/slack"))
        .unwrap();
    let body: Value = serde_json::from_slice(&slack.body).unwrap();
    assert!(
        body["text"].as_str().unwrap().ends_with(&line_end),
        "{body}"
    );

    let sms = requests
        .iter()
        .find(|r| r.url.path() == "/2010-04-01/Accounts/AC0123/Messages.json")
        .expect("SMS API call");
    let auth = sms.headers.get("authorization").unwrap().to_str().unwrap();
    use base64_check::encode;
    assert_eq!(auth, format!("Basic {}", encode("AC0123:token-1")));
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&sms.body)
        .into_owned()
        .collect();
    assert!(form.contains(&("From".into(), "+15550001".into())));
    assert!(form.contains(&("To".into(), "+15550002".into())));
    let text = &form.iter().find(|(k, _)| k == "Body").unwrap().1;
    assert!(text.ends_with(&line_end));

    let hook = requests.iter().find(|r| r.url.path() == "/hook").unwrap();
    let signature = hook
        .headers
        .get("x-tally-signature")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        signature,
        tally::notify::channels::sign("s3cret", &hook.body)
    );
    let payload: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(payload["event"], "file.succeeded");
    assert_eq!(payload["file"]["id"], id);
    assert_eq!(payload["file"]["sum"], sum);
    assert!(payload["message"].as_str().unwrap().ends_with(&line_end));
    app.stop().await;
}

/// Base64 for the expected Basic auth header, written out to keep the check independent.
mod base64_check {
    pub fn encode(s: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (chunk[0] as u32) << 16
                | (*chunk.get(1).unwrap_or(&0) as u32) << 8
                | *chunk.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn server_error_is_retried_and_delivered_once(db: PgPool) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let base = server.uri();
    let app = common::spawn_with(db, true, move |vars| {
        vars.insert("WEBHOOK_URL".into(), format!("{base}/hook"));
        vars.insert("WEBHOOK_SECRET".into(), "k".into());
    })
    .await;
    let done = upload_and_finish(&app, "a.csv", common::simple_csv(3).0).await;
    let file = wait_notifications(&app, done["id"].as_str().unwrap(), all_sent).await;
    assert_eq!(file["notifications"][0]["attempts"], 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn client_error_fails_without_retry_and_can_be_requeued(db: PgPool) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad hook"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let base = server.uri();
    let app = common::spawn_with(db, true, move |vars| {
        vars.insert("SLACK_WEBHOOK_URL".into(), format!("{base}/slack"));
    })
    .await;
    let done = upload_and_finish(&app, "a.csv", common::simple_csv(3).0).await;
    let id = done["id"].as_str().unwrap();
    let file = wait_notifications(&app, id, |n| {
        n.first().is_some_and(|x| x["status"] == "failed")
    })
    .await;
    let note = &file["notifications"][0];
    assert_eq!(note["attempts"], 1, "a 400 is not retried");
    assert!(note["last_error"].as_str().unwrap().contains("400"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1);

    let r = app
        .http
        .post(app.url(&format!("/api/v1/files/{id}/notifications/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["requeued"], 1);
    wait_notifications(&app, id, all_sent).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn two_dispatchers_never_send_the_same_row(db: PgPool) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(20)))
        .mount(&server)
        .await;
    let base = server.uri();
    // API only: the two dispatchers below are the only senders.
    let app = common::spawn_with(db.clone(), false, move |vars| {
        vars.insert("SLACK_WEBHOOK_URL".into(), format!("{base}/slack"));
    })
    .await;
    let outbox = app.app.config.notify.outbox.clone();
    for i in 0..40 {
        let file: Value = app
            .upload_ok(&format!("{i}.csv"), b"amount EUR\n1\n".to_vec())
            .await;
        let claim = tally::files::repo::claim_next(&db, "w", Duration::from_secs(30), 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.id.to_string(), file["id"].as_str().unwrap());
        let summary = common::summary(1, "1.00");
        assert!(outbox.complete(&db, &claim, &summary).await.unwrap());
    }
    let a = app.app.dispatcher();
    let b = app.app.dispatcher();
    let run = |d: tally::notify::dispatch::Dispatcher| async move {
        while d.dispatch_due().await.unwrap() > 0 {}
    };
    tokio::join!(run(a), run(b));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 40, "each row sent once");
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE status = 'sent' AND attempts = 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(sent, 40);
    app.stop().await;
}

#[sqlx::test(migrator = "tally::app::MIGRATOR")]
async fn dispatcher_crash_between_send_and_mark_sends_at_most_one_duplicate(db: PgPool) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let base = server.uri();
    let app = common::spawn_with(db.clone(), false, move |vars| {
        vars.insert("SLACK_WEBHOOK_URL".into(), format!("{base}/slack"));
    })
    .await;
    app.upload_raw("a.csv", b"amount EUR\n1\n".to_vec()).await;
    let claim = tally::files::repo::claim_next(&db, "w", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let summary = common::summary(1, "1.00");
    assert!(app
        .app
        .config
        .notify
        .outbox
        .complete(&db, &claim, &summary)
        .await
        .unwrap());

    // A dispatcher claims the row and sends, then "crashes" before marking it.
    let due = tally::notify::repo::claim_due(&db, 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    reqwest::Client::new()
        .post(format!("{}/slack", server.uri()))
        .json(&serde_json::json!({"text": due[0].message}))
        .send()
        .await
        .unwrap();

    // While its lease holds, nobody else sends it.
    let dispatcher = app.app.dispatcher();
    assert_eq!(dispatcher.dispatch_due().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(dispatcher.dispatch_due().await.unwrap(), 1);
    assert_eq!(dispatcher.dispatch_due().await.unwrap(), 0);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "one duplicate at most: the documented at-least-once guarantee"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM notifications")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "sent");
    app.stop().await;
}
