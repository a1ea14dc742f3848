use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tally::app::{self, App};
use tally::config::{Access, Config};
use tally::engine::{self, Dialect};
use tally::upload::ReadOptions;

/// Exact sums of the `amount EUR` column of CSV files, as a service.
#[derive(Parser)]
#[command(name = "tally", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API, with workers in the same process unless --no-worker.
    Serve {
        /// API only: leave processing to `tally worker` processes.
        #[arg(long)]
        no_worker: bool,
    },
    /// Process uploaded files (and send notifications) without serving HTTP.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the entries and sum of a local CSV file.
    Sum {
        file: PathBuf,
        /// Print {"entries":N,"sum":"…"}.
        #[arg(long)]
        json: bool,
        /// Threads to split the file across (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// `,` `;` `tab` or `|`; detected from the header by default.
        #[arg(long)]
        delimiter: Option<String>,
        /// `.` (default) or `,`.
        #[arg(long)]
        decimal_separator: Option<String>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Write a CSV file of random transactions and print its expected result.
    Gen {
        #[arg(long)]
        rows: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a fresh random key and the SHA-256 hash to put in TALLY_API_KEY_HASHES.
    New,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sum {
            file,
            json,
            threads,
            delimiter,
            decimal_separator,
        } => sum(file, json, threads, delimiter, decimal_separator),
        Command::Key {
            command: KeyCommand::New,
        } => {
            let (key, hash) = tally::auth::new_key();
            println!("key:  {key}\nhash: {hash}");
            println!("Give the key to the client; add the hash to TALLY_API_KEY_HASHES (comma-separated).");
            Ok(())
        }
        Command::Openapi => {
            println!("{}", tally::api::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Gen { rows, seed, out } => {
            let file = std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let result = engine::gen::generate(std::io::BufWriter::new(file), rows, seed)?;
            println!(
                "{}",
                serde_json::json!({
                    "entries": result.entries,
                    "sum": result.sum.to_string(),
                    "bytes": result.bytes,
                })
            );
            Ok(())
        }
        command => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run(command))
        }
    }
}

fn sum(
    file: PathBuf,
    json: bool,
    threads: Option<usize>,
    delimiter: Option<String>,
    decimal_separator: Option<String>,
) -> anyhow::Result<()> {
    let options = ReadOptions::parse(delimiter.as_deref(), decimal_separator.as_deref())
        .map_err(anyhow::Error::msg)?;
    let dialect = Dialect {
        delimiter: options.delimiter,
        decimal_separator: options.decimal_separator,
        max_record_bytes: 0,
    };
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    match engine::summarize_path(&file, dialect, threads.max(1)) {
        Ok(summary) if json => {
            println!(
                "{}",
                serde_json::json!({"entries": summary.entries, "sum": summary.sum.to_string()})
            );
            Ok(())
        }
        Ok(summary) => {
            println!("{} entries, sum: {}", summary.entries, summary.sum);
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            std::process::exit(1);
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    init_logging();
    let config = Config::from_env()?;
    if let Command::Serve { .. } = command {
        // Refuse an open API on a reachable address before touching anything.
        config.access()?;
    }
    let db = app::connect(&config)
        .await
        .with_context(|| "is PostgreSQL running at DATABASE_URL? (`make run` starts one)")?;
    if let Command::Migrate = command {
        tracing::info!("migrations applied");
        return Ok(());
    }
    let app = App::new(db, config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match command {
        Command::Serve { no_worker } => {
            match app.config.access()? {
                Access::Keys => tracing::info!("API keys required on /api/v1"),
                Access::OpenOnLoopback => tracing::warn!(
                    "NO API KEYS CONFIGURED: /api/v1 is open to anyone on this machine \
                     (bound to loopback {}). Set TALLY_API_KEY_HASHES to require keys.",
                    app.config.bind
                ),
                Access::OpenByChoice => tracing::warn!(
                    "NO API KEYS CONFIGURED and TALLY_ALLOW_OPEN=true: /api/v1 is open to \
                     anyone who can reach {}",
                    app.config.bind
                ),
            }
            let listener = tokio::net::TcpListener::bind(app.config.bind)
                .await
                .with_context(|| format!("cannot listen on TALLY_BIND={}", app.config.bind))?;
            let addr = listener.local_addr()?;
            tracing::info!(
                "Tally is listening on http://{addr} (Swagger UI: http://{addr}/docs){}",
                if no_worker { "; API only" } else { "" }
            );
            app.serve(listener, !no_worker, shutdown).await?;
        }
        Command::Worker => {
            tracing::info!(
                concurrency = app.config.worker.concurrency,
                "Tally worker started"
            );
            app.work(shutdown).await;
        }
        _ => unreachable!("handled above"),
    }
    tracing::info!("stopped");
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Ctrl-C or SIGTERM: stop claiming, finish or release the current files, exit.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing or releasing files in progress");
    shutdown.cancel();
}
