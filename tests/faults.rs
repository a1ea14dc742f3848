//! PostgreSQL restarted under load: the API answers 503 while it is down (never
//! hangs), workers back off and resume, and every upload that got a 202 ends
//! `succeeded`. Runs a throwaway PostgreSQL cluster of its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn as_postgres(cmd: &Path) -> Command {
    // PostgreSQL refuses to run as root.
    if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()?;
        let dir = tempfile::Builder::new()
            .prefix("tally-pg")
            .tempdir_in("/tmp")
            .ok()?;
        if nix_is_root() {
            Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .ok()?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let data = dir.path().join("data");
        let ok = as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        assert!(ok, "initdb failed");
        let cluster = Self { dir, bin, port };
        cluster.ctl("start");
        Some(cluster)
    }

    fn ctl(&self, action: &str) {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-m", "fast"]);
        if action == "start" {
            c.arg("-l")
                .arg(self.dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {} -k /tmp -c listen_addresses=127.0.0.1",
                    self.port
                ));
        }
        let ok = c
            .arg(action)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl {action} failed");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        let _ = c
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn postgres_restart_loses_nothing_that_got_a_202() {
    let Some(cluster) = Cluster::start() else {
        panic!("PostgreSQL server binaries (initdb, pg_ctl) are needed for this test");
    };
    let storage = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut vars = common::test_vars(storage.path());
    vars.insert("DATABASE_URL".into(), cluster.url());
    vars.insert("TALLY_BIND".into(), format!("127.0.0.1:{port}"));
    vars.insert("RUST_LOG".into(), "error".into());
    vars.insert("DATABASE_ACQUIRE_TIMEOUT_SECONDS".into(), "1".into());
    let _serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("serve")
            .envs(vars)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let started = Instant::now();
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tally serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let upload = |i: u32| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let (csv, sum) = common::simple_csv(50 + i as u64);
            let r = http
                .post(format!("{base}/api/v1/files?filename=f{i}.csv"))
                .header("Content-Type", "text/csv")
                .body(csv)
                .send()
                .await
                .expect("an answer, not a hang");
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, ct, body, sum)
        }
    };

    let mut accepted: Vec<(String, String)> = Vec::new();
    for i in 0..10 {
        let (status, _, body, sum) = upload(i).await;
        assert_eq!(status, 202);
        accepted.push((body["id"].as_str().unwrap().to_string(), sum));
    }

    cluster.ctl("stop");
    let mut refused = 0;
    for i in 10..15 {
        let asked = Instant::now();
        let (status, ct, body, sum) = upload(i).await;
        assert!(
            asked.elapsed() < Duration::from_secs(15),
            "the API must not hang"
        );
        match status {
            202 => accepted.push((body["id"].as_str().unwrap().to_string(), sum)),
            503 => {
                assert_eq!(ct.as_deref(), Some("application/problem+json"));
                assert!(
                    body["detail"].as_str().unwrap().contains("database"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "uploads while the database is down are refused"
    );
    let r = http
        .get(format!("{base}/api/v1/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);

    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.ctl("start");
    for i in 15..25 {
        // The pool reconnects on its own; allow it a moment.
        let mut tries = 0;
        loop {
            let (status, _, body, sum) = upload(i).await;
            if status == 202 {
                accepted.push((body["id"].as_str().unwrap().to_string(), sum));
                break;
            }
            tries += 1;
            assert!(
                tries < 20,
                "uploads resume after the restart: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    let started = Instant::now();
    for (id, sum) in &accepted {
        loop {
            let r = http
                .get(format!("{base}/api/v1/files/{id}"))
                .send()
                .await
                .unwrap();
            let file: Value = r.json().await.unwrap_or(Value::Null);
            if file["status"] == "succeeded" {
                assert_eq!(file["sum"], sum.as_str());
                break;
            }
            assert_ne!(file["status"], "failed", "{file}");
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{id} not done: {file}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Refused uploads left no bytes behind.
    let objects = std::fs::read_dir(storage.path().join("files"))
        .unwrap()
        .count();
    assert_eq!(objects, accepted.len());
}
