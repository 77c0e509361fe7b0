//! Outgoing webhooks (`[webhooks.NAME]`): events (alerts firing and resolved, pipeline runs
//! succeeded and failed) as JSON POSTs, signed with HMAC-SHA256 over a timestamp and the body as
//! Stripe and GitHub sign theirs: `Sokana-Signature: t=UNIX,v1=HEX` where HEX is the HMAC of
//! `UNIX.BODY` under the hook's secret (from the environment), and `Sokana-Delivery` the event's
//! id, the same on every attempt. Each event is queued in the delivery ledger (the run log) before
//! it is sent, once per hook that takes it; a receiver that fails (no answer, not 2xx) is retried
//! with back-off by whichever process passes next (`sokana serve` every second; a CLI command once,
//! before it ends), then the event is marked failed. It knows nothing of what the events mean.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};

use crate::config::Config;
use crate::pipeline::runlog::{Delivery, DeliveryState, RunLog, RunLogError};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks.{hook}.secret_env: the environment variable {var} is not set")]
    Secret { hook: String, var: String },
    #[error("webhooks: {0}")]
    Client(String),
    #[error(transparent)]
    Ledger(#[from] RunLogError),
}

struct Hook {
    name: String,
    url: String,
    secret: Vec<u8>,
    events: Vec<String>,
    retries: u32,
    retry: Duration,
    timeout: Duration,
}

/// The configured webhooks.
pub struct Webhooks {
    hooks: Vec<Hook>,
    client: reqwest::Client,
    /// The queue (the run log's delivery ledger), opened once.
    log: RunLog,
}

/// The run log's job name of hook `name`'s events.
fn job(name: &str) -> String {
    format!("webhook:{name}")
}

/// The `Sokana-Signature` header for `body` sent at `timestamp` (seconds since the epoch).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // Any key length is valid for HMAC.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    /// The hooks of `config`; a secret missing from the environment is an error naming it.
    pub fn new(config: &Config) -> Result<Webhooks, WebhookError> {
        let hooks = config
            .webhooks
            .iter()
            .map(|(name, hook)| {
                let secret = std::env::var(&hook.secret_env)
                    .map_err(|_| WebhookError::Secret { hook: name.clone(), var: hook.secret_env.clone() })?;
                Ok(Hook {
                    name: name.clone(),
                    url: hook.url.clone(),
                    secret: secret.into_bytes(),
                    events: hook.events.clone(),
                    retries: hook.retries,
                    retry: Duration::from_secs(hook.retry_seconds),
                    timeout: Duration::from_secs(hook.timeout_seconds),
                })
            })
            .collect::<Result<_, WebhookError>>()?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("Sokana Analytics ", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Webhooks { hooks, client, log: RunLog::open(&config.state_dir())? })
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Queues `event` (`alert.firing`, `pipeline_run.failed`, …) with `data` for every hook that
    /// takes its class; `trigger` says what raised it.
    pub fn enqueue(&self, event: &str, trigger: &str, data: serde_json::Value) -> Result<(), RunLogError> {
        let class = event.split('.').next().unwrap_or(event);
        let takers: Vec<&Hook> = self.hooks.iter().filter(|h| h.events.iter().any(|e| e == class)).collect();
        if takers.is_empty() {
            return Ok(());
        }
        let at = Utc::now();
        for hook in takers {
            let id = uuid::Uuid::new_v4().to_string();
            let body = serde_json::json!({ "id": id, "event": event, "created_at": at, "data": data });
            self.log.enqueue_delivery(&job(&hook.name), at, &id, trigger, &body.to_string())?;
        }
        Ok(())
    }

    /// One pass over the queue: every event whose next attempt is due is POSTed once. Answers how
    /// many were sent.
    pub async fn deliver_due(&self) -> Result<usize, RunLogError> {
        let log = &self.log;
        let now = Utc::now();
        let mut sent = 0;
        for delivery in log.queued_deliveries("webhook:")? {
            let Some(body) = delivery.body.clone() else { continue };
            let Some(hook) = self.hooks.iter().find(|h| job(&h.name) == delivery.job) else { continue };
            if !due(&delivery, hook, now) {
                continue;
            }
            log.set_delivery(&delivery.job, delivery.slot, &delivery.recipient, DeliveryState::Sending, None)?;
            let (state, detail) = match self.post(hook, &delivery, body).await {
                Ok(()) => {
                    sent += 1;
                    (DeliveryState::Sent, None)
                }
                Err(e) if delivery.attempts >= hook.retries => {
                    tracing::error!(hook = %hook.name, error = %e, "webhook not delivered after its last attempt");
                    (DeliveryState::Failed, Some(e))
                }
                Err(e) => (DeliveryState::Retrying, Some(e)),
            };
            log.set_delivery(&delivery.job, delivery.slot, &delivery.recipient, state, detail.as_deref())?;
        }
        Ok(sent)
    }

    async fn post(&self, hook: &Hook, delivery: &Delivery, body: String) -> Result<(), String> {
        let event = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_string))
            .unwrap_or_default();
        let signed = signature(&hook.secret, Utc::now().timestamp(), body.as_bytes());
        let response = self
            .client
            .post(&hook.url)
            .timeout(hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Sokana-Event", event)
            .header("Sokana-Delivery", &delivery.message_id)
            .header("Sokana-Signature", signed)
            .body(body)
            .send()
            .await
            .map_err(|e| match std::error::Error::source(&e) {
                _ if e.is_timeout() => format!("{}: no answer within {} s", hook.url, hook.timeout.as_secs()),
                Some(cause) => format!("{}: {e}: {cause}", hook.url),
                None => format!("{}: {e}", hook.url),
            })?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("{} answered {status}", hook.url)) }
    }

    /// Sends due events every second until the process ends (inside `sokana serve`).
    pub fn start(self: std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.deliver_due().await {
                    tracing::error!(error = %e, "webhooks: the queue could not be read");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

/// Whether `delivery`'s next attempt is due: at once when queued, else `retry` after the last
/// attempt, doubling with each.
fn due(delivery: &Delivery, hook: &Hook, now: DateTime<Utc>) -> bool {
    if delivery.state == DeliveryState::Queued || delivery.attempts == 0 {
        return true;
    }
    let Ok(last) = DateTime::parse_from_rfc3339(&delivery.updated_at) else { return true };
    let wait = hook.retry * 2u32.saturating_pow(delivery.attempts.saturating_sub(1));
    now >= last.with_timezone(&Utc) + chrono::Duration::from_std(wait).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_the_body() {
        // The reference value: python3 -c 'import hmac, hashlib; print(hmac.new(b"s3cret",
        // b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
