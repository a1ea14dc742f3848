//! Configuration: read once at start from the environment (and `.env`), validated,
//! and handed to the rest of the program as a typed struct.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use lettre::message::Mailbox;

use crate::auth::ApiKeys;
use crate::notify::channels::{ChannelsConfig, EmailConfig, SmsConfig, WebhookConfig};
use crate::notify::dispatch::DispatchConfig;
use crate::notify::Outbox;
use crate::storage::{StorageRetry, StorageUrl};

#[derive(Debug, thiserror::Error)]
#[error("configuration: {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before answering 503.
    pub database_acquire_timeout: Duration,
    pub storage_url: StorageUrl,
    /// `AWS_*` variables, handed to the S3 backend (endpoint, region, keys…).
    pub storage_options: Vec<(String, String)>,
    /// Size of the parts uploads are written in.
    pub storage_part_bytes: usize,
    pub storage_retry: StorageRetry,
    pub bind: SocketAddr,
    pub max_upload_bytes: u64,
    pub worker: WorkerConfig,
    pub notify: NotifyConfig,
    pub api_keys: ApiKeys,
    /// Serve without keys on a non-loopback address (`TALLY_ALLOW_OPEN=true`).
    pub allow_open: bool,
    /// A client must send its request headers within this time (slow-client defence).
    pub header_timeout: Duration,
    /// An upload that sends nothing for this long is abandoned.
    pub upload_idle_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let aws: Vec<&str> = self
            .storage_options
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        f.debug_struct("Config")
            .field("database_url", &redact_password(&self.database_url))
            .field("storage_url", &self.storage_url)
            .field("storage_options", &aws)
            .field("bind", &self.bind)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("worker", &self.worker)
            .field("notify", &self.notify)
            .field("api_keys", &self.api_keys)
            .field("allow_open", &self.allow_open)
            .finish_non_exhaustive()
    }
}

fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("hidden"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Whether the API asks for keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Keys,
    /// No keys and bound to loopback: only this machine can reach it.
    OpenOnLoopback,
    /// No keys on a reachable address, because TALLY_ALLOW_OPEN=true said so.
    OpenByChoice,
}

/// Where and how finished files are announced. Holds secrets: never log it.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    pub outbox: Outbox,
    pub channels: ChannelsConfig,
    pub dispatch: DispatchConfig,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Files processed at once by one process.
    pub concurrency: usize,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// How long a claim stays valid without a heartbeat.
    pub lease: Duration,
    pub max_attempts: i32,
    /// First retry delay after an infrastructure error; doubles per attempt.
    pub retry_backoff: Duration,
    /// How long a stopping worker may keep processing before it releases its file.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 2,
            poll_interval: Duration::from_millis(1000),
            lease: Duration::from_secs(30),
            max_attempts: 5,
            retry_backoff: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tally";
pub const DEFAULT_STORAGE_URL: &str = "./data/uploads";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024 * 1024;

impl Config {
    /// Reads the process environment, after loading `.env` if there is one.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is not silently half-read.
        if let Err(e) = dotenvy::dotenv() {
            if !e.not_found() {
                return Err(ConfigError {
                    name: ".env",
                    value: String::new(),
                    reason: e.to_string(),
                });
            }
        }
        Self::from_vars(&std::env::vars().collect())
    }

    /// Builds the configuration from a map of variables; unset ones take their defaults.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let defaults = WorkerConfig::default();
        let worker = WorkerConfig {
            concurrency: parse(&get, "WORKER_CONCURRENCY", defaults.concurrency, |n| {
                (1..=256).contains(n)
            })?,
            poll_interval: Duration::from_millis(parse(
                &get,
                "WORKER_POLL_INTERVAL_MS",
                defaults.poll_interval.as_millis() as u64,
                |n| *n >= 10,
            )?),
            lease: Duration::from_secs(parse(
                &get,
                "WORKER_LEASE_SECONDS",
                defaults.lease.as_secs(),
                |n| *n >= 2,
            )?),
            max_attempts: parse(&get, "WORKER_MAX_ATTEMPTS", defaults.max_attempts, |n| {
                *n >= 1
            })?,
            retry_backoff: Duration::from_millis(parse(
                &get,
                "WORKER_RETRY_BACKOFF_MS",
                defaults.retry_backoff.as_millis() as u64,
                |_| true,
            )?),
            shutdown_grace: Duration::from_secs(parse(
                &get,
                "SHUTDOWN_GRACE_SECONDS",
                defaults.shutdown_grace.as_secs(),
                |_| true,
            )?),
        };
        let storage_raw = get("STORAGE_URL").unwrap_or(DEFAULT_STORAGE_URL);
        let storage_url = StorageUrl::parse(storage_raw).map_err(|reason| ConfigError {
            name: "STORAGE_URL",
            value: storage_raw.to_string(),
            reason,
        })?;
        let database_url = get("DATABASE_URL")
            .unwrap_or(DEFAULT_DATABASE_URL)
            .to_string();
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError {
                name: "DATABASE_URL",
                value: database_url,
                reason: "expected a postgres:// URL".into(),
            });
        }
        let bind: SocketAddr = parse(
            &get,
            "TALLY_BIND",
            DEFAULT_BIND.parse().expect("valid"),
            |_| true,
        )?;
        let notify = notify_config(&get, bind)?;
        let keys_raw = get("TALLY_API_KEY_HASHES").unwrap_or("");
        let api_keys = ApiKeys::parse(keys_raw).map_err(|reason| ConfigError {
            name: "TALLY_API_KEY_HASHES",
            value: "(hidden)".into(),
            reason,
        })?;
        Ok(Self {
            api_keys,
            allow_open: parse(&get, "TALLY_ALLOW_OPEN", false, |_| true)?,
            header_timeout: Duration::from_secs(parse(
                &get,
                "REQUEST_HEADER_TIMEOUT_SECONDS",
                10,
                |n| *n >= 1,
            )?),
            upload_idle_timeout: Duration::from_secs(parse(
                &get,
                "UPLOAD_IDLE_TIMEOUT_SECONDS",
                30,
                |n| *n >= 1,
            )?),
            notify,
            database_url,
            database_acquire_timeout: Duration::from_secs(parse(
                &get,
                "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
                5,
                |n| *n >= 1,
            )?),
            database_max_connections: parse(&get, "DATABASE_MAX_CONNECTIONS", 10, |n| *n >= 2)?,
            storage_url,
            storage_options: {
                let mut options: Vec<(String, String)> = vars
                    .iter()
                    .filter(|(k, _)| k.starts_with("AWS_"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                options.sort();
                options
            },
            storage_part_bytes: parse(
                &get,
                "STORAGE_PART_BYTES",
                crate::storage::DEFAULT_PART_BYTES,
                |n| *n >= 5 * 1024 * 1024,
            )?,
            bind,
            storage_retry: StorageRetry {
                max_retries: parse(&get, "STORAGE_MAX_RETRIES", 3, |_| true)?,
                timeout: Duration::from_secs(parse(
                    &get,
                    "STORAGE_RETRY_TIMEOUT_SECONDS",
                    10,
                    |_| true,
                )?),
            },
            max_upload_bytes: parse(&get, "MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, |n| {
                *n > 0
            })?,
            worker,
        })
    }
}

impl Config {
    /// Decides whether the API may run as configured: without keys only on loopback,
    /// unless explicitly allowed.
    pub fn access(&self) -> Result<Access, ConfigError> {
        if !self.api_keys.is_empty() {
            return Ok(Access::Keys);
        }
        if self.bind.ip().is_loopback() {
            return Ok(Access::OpenOnLoopback);
        }
        if self.allow_open {
            return Ok(Access::OpenByChoice);
        }
        Err(ConfigError {
            name: "TALLY_API_KEY_HASHES",
            value: String::new(),
            reason: format!(
                "no API key is configured and TALLY_BIND={} is reachable from other machines; \
                 create a key with `tally key new` and set its hash here, \
                 or set TALLY_ALLOW_OPEN=true to serve without keys",
                self.bind
            ),
        })
    }
}

fn notify_config<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    bind: SocketAddr,
) -> Result<NotifyConfig, ConfigError> {
    let invalid = |name: &'static str, value: &str, reason: String| ConfigError {
        name,
        value: value.to_string(),
        reason,
    };
    let required = |name: &'static str, because: &str| {
        get(name).ok_or_else(|| invalid(name, "", format!("is required when {because} is set")))
    };
    let list = |raw: &'a str| -> Vec<&'a str> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    };

    let email = match get("SMTP_URL") {
        None => None,
        Some(smtp_url) => {
            let from_raw = required("MAIL_FROM", "SMTP_URL")?;
            let from: Mailbox = from_raw
                .parse()
                .map_err(|e| invalid("MAIL_FROM", from_raw, format!("{e}")))?;
            let to_raw = required("MAIL_TO", "SMTP_URL")?;
            let to = list(to_raw)
                .into_iter()
                .map(|a| {
                    a.parse::<Mailbox>()
                        .map_err(|e| invalid("MAIL_TO", a, format!("{e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !(smtp_url.starts_with("smtp://") || smtp_url.starts_with("smtps://")) {
                return Err(invalid(
                    "SMTP_URL",
                    "(hidden)",
                    "expected smtp://host:port or smtps://user:pass@host:465".into(),
                ));
            }
            Some(EmailConfig {
                smtp_url: smtp_url.to_string(),
                from,
                to,
            })
        }
    };
    let sms = match get("SMS_ACCOUNT_SID") {
        None => None,
        Some(sid) => Some(SmsConfig {
            base_url: get("SMS_BASE_URL")
                .unwrap_or("https://api.twilio.com")
                .to_string(),
            account_sid: sid.to_string(),
            auth_token: required("SMS_AUTH_TOKEN", "SMS_ACCOUNT_SID")?.to_string(),
            from: required("SMS_FROM", "SMS_ACCOUNT_SID")?.to_string(),
            to: list(required("SMS_TO", "SMS_ACCOUNT_SID")?)
                .into_iter()
                .map(str::to_string)
                .collect(),
        }),
    };
    let webhook = match get("WEBHOOK_URL") {
        None => None,
        Some(url) => Some(WebhookConfig {
            url: url.to_string(),
            secret: required("WEBHOOK_SECRET", "WEBHOOK_URL")?.to_string(),
        }),
    };
    let channels = ChannelsConfig {
        email,
        slack_webhook_url: get("SLACK_WEBHOOK_URL").map(str::to_string),
        sms,
        webhook,
    };
    let tz_raw = get("NOTIFY_TIMEZONE").unwrap_or("UTC");
    let timezone: Tz = tz_raw.parse().map_err(|_| {
        invalid(
            "NOTIFY_TIMEZONE",
            tz_raw,
            "not an IANA time zone name such as Europe/Berlin".into(),
        )
    })?;
    let defaults = DispatchConfig::default();
    Ok(NotifyConfig {
        outbox: Outbox {
            channels: channels.kinds(),
            timezone,
            public_url: get("TALLY_PUBLIC_URL")
                .map(str::to_string)
                .unwrap_or_else(|| format!("http://{bind}")),
            on_failure: parse(&get, "NOTIFY_ON_FAILURE", true, |_| true)?,
        },
        channels,
        dispatch: DispatchConfig {
            max_attempts: parse(&get, "NOTIFY_MAX_ATTEMPTS", defaults.max_attempts, |n| {
                *n >= 1
            })?,
            retry_backoff: Duration::from_millis(parse(
                &get,
                "NOTIFY_RETRY_BACKOFF_MS",
                defaults.retry_backoff.as_millis() as u64,
                |_| true,
            )?),
            ..defaults
        },
    })
}

fn parse<'a, T>(
    get: &impl Fn(&str) -> Option<&'a str>,
    name: &'static str,
    default: T,
    valid: impl Fn(&T) -> bool,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    let value = raw.parse::<T>().map_err(|e| ConfigError {
        name,
        value: raw.to_string(),
        reason: e.to_string(),
    })?;
    if !valid(&value) {
        return Err(ConfigError {
            name,
            value: raw.to_string(),
            reason: "out of range (see .env.example)".into(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(c.bind.to_string(), DEFAULT_BIND);
        assert_eq!(c.max_upload_bytes, DEFAULT_MAX_UPLOAD_BYTES);
        assert_eq!(c.worker.max_attempts, 5);
    }

    #[test]
    fn channels_need_their_companion_variables() {
        let err = Config::from_vars(&vars(&[("SMTP_URL", "smtp://127.0.0.1:2525")])).unwrap_err();
        assert_eq!(err.name, "MAIL_FROM");
        let c = Config::from_vars(&vars(&[
            ("SMTP_URL", "smtp://127.0.0.1:2525"),
            ("MAIL_FROM", "Tally <tally@example.com>"),
            ("MAIL_TO", "a@example.com, b@example.com"),
            ("NOTIFY_TIMEZONE", "Europe/Berlin"),
        ]))
        .unwrap();
        assert_eq!(c.notify.channels.email.unwrap().to.len(), 2);
        assert_eq!(c.notify.outbox.timezone, Tz::Europe__Berlin);
        let err = Config::from_vars(&vars(&[("NOTIFY_TIMEZONE", "Mars/Olympus")])).unwrap_err();
        assert_eq!(err.name, "NOTIFY_TIMEZONE");
    }

    #[test]
    fn open_access_only_on_loopback_unless_allowed() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(c.access().unwrap(), Access::OpenOnLoopback);
        let c = Config::from_vars(&vars(&[("TALLY_BIND", "0.0.0.0:8080")])).unwrap();
        let err = c.access().unwrap_err();
        assert!(err.to_string().contains("tally key new"), "{err}");
        let c = Config::from_vars(&vars(&[
            ("TALLY_BIND", "0.0.0.0:8080"),
            ("TALLY_ALLOW_OPEN", "true"),
        ]))
        .unwrap();
        assert_eq!(c.access().unwrap(), Access::OpenByChoice);
        let (_, hash) = crate::auth::new_key();
        let c = Config::from_vars(&vars(&[
            ("TALLY_BIND", "0.0.0.0:8080"),
            ("TALLY_API_KEY_HASHES", &hash),
        ]))
        .unwrap();
        assert_eq!(c.access().unwrap(), Access::Keys);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let (_, hash) = crate::auth::new_key();
        let c = Config::from_vars(&vars(&[
            ("SMTP_URL", "smtps://mailer:pa55word@smtp.example.com:465"),
            ("MAIL_FROM", "tally@example.com"),
            ("MAIL_TO", "ops@example.com"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T0/B0/sl4cktoken",
            ),
            ("SMS_ACCOUNT_SID", "AC1"),
            ("SMS_AUTH_TOKEN", "smst0ken"),
            ("SMS_FROM", "+1"),
            ("SMS_TO", "+2"),
            ("WEBHOOK_URL", "https://example.com/hook?sig=urlt0ken"),
            ("WEBHOOK_SECRET", "h00ksecret"),
            ("TALLY_API_KEY_HASHES", &hash),
            ("AWS_SECRET_ACCESS_KEY", "aw5secret"),
        ]))
        .unwrap();
        let shown = format!("{c:?}");
        for secret in [
            "pa55word",
            "sl4cktoken",
            "smst0ken",
            "urlt0ken",
            "h00ksecret",
            &hash,
            "aw5secret",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }

    #[test]
    fn bad_variable_is_named_in_the_error() {
        let err = Config::from_vars(&vars(&[("WORKER_CONCURRENCY", "lots")])).unwrap_err();
        assert_eq!(err.name, "WORKER_CONCURRENCY");
        assert!(err.to_string().contains("WORKER_CONCURRENCY=\"lots\""));
        let err = Config::from_vars(&vars(&[("WORKER_CONCURRENCY", "0")])).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = Config::from_vars(&vars(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
    }
}
