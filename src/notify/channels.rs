//! Delivery to each channel: email over SMTP, Slack, SMS (Twilio-style API), signed
//! webhooks, and the log. Each send says whether a failure is worth retrying.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Sha256;

use super::repo::Due;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Log,
    Email,
    Slack,
    Sms,
    Webhook,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Email => "email",
            Self::Slack => "slack",
            Self::Sms => "sms",
            Self::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "log" => Self::Log,
            "email" => Self::Email,
            "slack" => Self::Slack,
            "sms" => Self::Sms,
            "webhook" => Self::Webhook,
            _ => return None,
        })
    }
}

/// The header that carries a webhook body's signature: `sha256=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Tally-Signature";

#[derive(Clone)]
pub struct EmailConfig {
    /// `smtp://host:port`, `smtps://user:pass@host:465`, `smtp://host:587?tls=required`.
    pub smtp_url: String,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
}

#[derive(Clone)]
pub struct SmsConfig {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: String,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
}

// Secrets (SMTP password, tokens, signing keys, webhook URLs that embed tokens)
// never reach a log line, even through `{:?}`.
impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &"<hidden>")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl std::fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<hidden>")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &"<hidden>")
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// The channels configured for this deployment.
#[derive(Clone, Default)]
pub struct ChannelsConfig {
    pub email: Option<EmailConfig>,
    pub slack_webhook_url: Option<String>,
    pub sms: Option<SmsConfig>,
    pub webhook: Option<WebhookConfig>,
}

impl std::fmt::Debug for ChannelsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelsConfig")
            .field("email", &self.email)
            .field(
                "slack_webhook_url",
                &self.slack_webhook_url.as_ref().map(|_| "<hidden>"),
            )
            .field("sms", &self.sms)
            .field("webhook", &self.webhook)
            .finish()
    }
}

impl ChannelsConfig {
    /// Every configured channel; the log alone when none is.
    pub fn kinds(&self) -> Vec<ChannelKind> {
        let mut kinds = Vec::new();
        if self.email.is_some() {
            kinds.push(ChannelKind::Email);
        }
        if self.slack_webhook_url.is_some() {
            kinds.push(ChannelKind::Slack);
        }
        if self.sms.is_some() {
            kinds.push(ChannelKind::Sms);
        }
        if self.webhook.is_some() {
            kinds.push(ChannelKind::Webhook);
        }
        if kinds.is_empty() {
            kinds.push(ChannelKind::Log);
        }
        kinds
    }
}

/// Why a send failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

/// Ready-to-use senders for the configured channels.
#[derive(Clone)]
pub struct Channels {
    config: ChannelsConfig,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    http: reqwest::Client,
}

impl Channels {
    pub fn new(config: ChannelsConfig) -> Result<Self, String> {
        let smtp = match &config.email {
            Some(email) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(&email.smtp_url)
                    .map_err(|e| format!("SMTP_URL is invalid: {e}"))?
                    .timeout(Some(Duration::from_secs(15)))
                    .build(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { config, smtp, http })
    }

    pub async fn send(&self, note: &Due, file_json: &serde_json::Value) -> Result<(), SendError> {
        let Some(kind) = ChannelKind::parse(&note.channel) else {
            return Err(SendError::Permanent(format!(
                "unknown channel {:?}",
                note.channel
            )));
        };
        match kind {
            ChannelKind::Log => {
                tracing::info!(file_id = %note.file_id, channel = "log", "{}", note.message);
                Ok(())
            }
            ChannelKind::Email => self.send_email(note).await,
            ChannelKind::Slack => {
                let url = self.configured(self.config.slack_webhook_url.as_ref(), "slack")?;
                let response = self
                    .http
                    .post(url)
                    .json(&serde_json::json!({ "text": note.message }))
                    .send()
                    .await;
                classify(response).await
            }
            ChannelKind::Sms => {
                let sms = self.configured(self.config.sms.as_ref(), "sms")?;
                let url = format!(
                    "{}/2010-04-01/Accounts/{}/Messages.json",
                    sms.base_url.trim_end_matches('/'),
                    sms.account_sid
                );
                for to in &sms.to {
                    let form = [
                        ("From", sms.from.as_str()),
                        ("To", to),
                        ("Body", &note.message),
                    ];
                    let response = self
                        .http
                        .post(&url)
                        .basic_auth(&sms.account_sid, Some(&sms.auth_token))
                        .form(&form)
                        .send()
                        .await;
                    classify(response).await?;
                }
                Ok(())
            }
            ChannelKind::Webhook => {
                let hook = self.configured(self.config.webhook.as_ref(), "webhook")?;
                let payload = serde_json::json!({
                    "event": format!("file.{}", note.kind),
                    "message": note.message,
                    "file": file_json,
                });
                let body = serde_json::to_vec(&payload)
                    .map_err(|e| SendError::Permanent(e.to_string()))?;
                let response = self
                    .http
                    .post(&hook.url)
                    .header("Content-Type", "application/json")
                    .header(SIGNATURE_HEADER, sign(&hook.secret, &body))
                    .body(body)
                    .send()
                    .await;
                classify(response).await
            }
        }
    }

    fn configured<'a, T>(&self, value: Option<&'a T>, name: &str) -> Result<&'a T, SendError> {
        value.ok_or_else(|| SendError::Permanent(format!("channel {name} is no longer configured")))
    }

    async fn send_email(&self, note: &Due) -> Result<(), SendError> {
        let (Some(email), Some(smtp)) = (&self.config.email, &self.smtp) else {
            return Err(SendError::Permanent(
                "channel email is no longer configured".into(),
            ));
        };
        let mut builder = lettre::Message::builder()
            .from(email.from.clone())
            .subject(&note.subject);
        for to in &email.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .body(note.body.clone())
            .map_err(|e| SendError::Permanent(format!("cannot build the email: {e}")))?;
        match smtp.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP: {e}"))),
            Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// 2xx is delivered; 429, 5xx and network errors are worth retrying; other 4xx are not.
async fn classify(response: Result<reqwest::Response, reqwest::Error>) -> Result<(), SendError> {
    // Without the URL: webhook URLs carry tokens, and errors end up in logs and records.
    let response =
        response.map_err(|e| SendError::Transient(format!("HTTP: {}", e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let error = format!("HTTP {status}: {text}");
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Transient(error))
    } else {
        Err(SendError::Permanent(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn log_is_the_channel_when_none_is_configured() {
        assert_eq!(ChannelsConfig::default().kinds(), vec![ChannelKind::Log]);
    }
}
