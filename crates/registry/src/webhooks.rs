//! Webhook delivery: one worker per endpoint drains that endpoint's outbox in order.
//!
//! At least once, in order: a batch is removed from the outbox only after the endpoint answered
//! 2xx; a failure keeps the batch at the head of the queue and retries it after an exponential
//! backoff, so later events wait behind it (per-repository order holds because the whole queue
//! is ordered). Only the node holding the endpoint's lease delivers, so several nodes sharing a
//! database do not interleave deliveries.

use std::time::Duration;

use meta::{Delivery, Event};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Registry;
use crate::events::{WebhookEndpoint, WebhookFormat};
use crate::time::rfc3339_ms;

/// How long a delivery lease lasts; the holder renews it on every round.
const LEASE: Duration = Duration::from_secs(30);
/// How often an idle worker looks for events written by other nodes.
const POLL: Duration = Duration::from_secs(1);

fn target(reg: &Registry, e: &Event) -> Value {
    let kind = if e.media_type.as_deref().is_some_and(|m| m != "application/octet-stream") { "manifests" } else { "blobs" };
    let url = e.digest.as_ref().map(|d| format!("http://{}/v2/{}/{kind}/{d}", reg.inner.events.config.source, e.repository));
    let mut t = json!({
        "mediaType": e.media_type,
        "size": e.size,
        "length": e.size,
        "digest": e.digest,
        "repository": e.repository,
        "url": url,
    });
    if let Some(tag) = &e.tag {
        t["tag"] = json!(tag);
    }
    if let Some(from) = &e.from_repository {
        t["fromRepository"] = json!(from);
    }
    t
}

fn request(e: &Event) -> Value {
    json!({ "id": e.request_id, "addr": e.address, "method": e.method, "useragent": e.user_agent })
}

/// The body and content type of one delivery.
pub(crate) fn envelope(reg: &Registry, format: WebhookFormat, batch: &[Delivery]) -> (Vec<u8>, &'static str) {
    let cfg = &reg.inner.events.config;
    match format {
        WebhookFormat::Distribution => {
            let events: Vec<Value> = batch
                .iter()
                .map(|d| {
                    let e = &d.event;
                    json!({
                        "id": format!("berth-{}", e.id),
                        "timestamp": rfc3339_ms(e.created_at),
                        "action": e.action,
                        "target": target(reg, e),
                        "request": request(e),
                        "actor": { "name": e.actor },
                        "source": { "addr": cfg.source, "instanceID": cfg.instance },
                    })
                })
                .collect();
            (serde_json::to_vec(&json!({ "events": events })).unwrap_or_default(), "application/vnd.docker.distribution.events.v1+json")
        }
        WebhookFormat::CloudEvents => {
            let events: Vec<Value> = batch
                .iter()
                .map(|d| {
                    let e = &d.event;
                    json!({
                        "specversion": "1.0",
                        "id": format!("berth-{}", e.id),
                        "source": format!("berth://{}", cfg.source),
                        "type": format!("io.berth.registry.{}", e.action),
                        "subject": e.repository,
                        "time": rfc3339_ms(e.created_at),
                        "datacontenttype": "application/json",
                        "data": { "target": target(reg, e), "request": request(e), "actor": { "name": e.actor } },
                    })
                })
                .collect();
            (serde_json::to_vec(&events).unwrap_or_default(), "application/cloudevents-batch+json")
        }
    }
}

fn backoff(endpoint: &WebhookEndpoint, attempts: i64) -> Duration {
    let factor = 2u32.saturating_pow(u32::try_from(attempts.clamp(0, 20)).unwrap_or(20));
    endpoint.backoff_initial.saturating_mul(factor).min(endpoint.backoff_max)
}

async fn post(client: &reqwest::Client, endpoint: &WebhookEndpoint, body: Vec<u8>, content_type: &str) -> Result<(), String> {
    let mut req = client.post(&endpoint.url).timeout(endpoint.timeout).header("content-type", content_type).body(body);
    for (k, v) in &endpoint.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("endpoint answered {}", r.status())),
        Err(e) => Err(format!("request failed: {e}")),
    }
}

/// Deliver `endpoint`'s queue until `shutdown`.
pub(crate) async fn deliver_loop(reg: Registry, endpoint: WebhookEndpoint, shutdown: CancellationToken) {
    let client = reqwest::Client::builder().build().unwrap_or_default();
    let meta = reg.inner.meta.clone();
    let owner = reg.inner.events.config.instance.clone();
    loop {
        let wait = match deliver_round(&reg, &client, &meta, &endpoint, &owner).await {
            Ok(Some(wait)) => wait,
            Ok(None) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(endpoint = %endpoint.name, error = %e, "webhook delivery round failed");
                POLL
            }
        };
        if wait.is_zero() && !shutdown.is_cancelled() {
            continue;
        }
        if shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = reg.inner.events.queued.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    // Hand the endpoint over at once to whichever node (or this one, restarted) comes next.
    if let Err(e) = meta.release_webhook_lease(&endpoint.name, &owner).await {
        tracing::warn!(endpoint = %endpoint.name, error = %e, "could not release the webhook lease; it will expire");
    }
}

/// One round: deliver one batch if possible. `Ok(None)` means "go again at once",
/// `Ok(Some(d))` means "nothing to do for `d`".
async fn deliver_round(
    reg: &Registry,
    client: &reqwest::Client,
    meta: &meta::MetaStore,
    endpoint: &WebhookEndpoint,
    owner: &str,
) -> Result<Option<Duration>, meta::MetaError> {
    if !meta.claim_webhook_lease(&endpoint.name, owner, LEASE).await? {
        return Ok(Some(LEASE / 3));
    }
    let batch = meta.due_deliveries(&endpoint.name, endpoint.batch).await?;
    if batch.is_empty() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        let wait = match meta.next_delivery_at(&endpoint.name).await? {
            Some(at) if at > now => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(POLL),
            _ => POLL,
        };
        return Ok(Some(wait));
    }
    let ids: Vec<i64> = batch.iter().map(|d| d.queue_id).collect();
    let (body, content_type) = envelope(reg, endpoint.format, &batch);
    match post(client, endpoint, body, content_type).await {
        Ok(()) => {
            meta.complete_deliveries(&endpoint.name, &ids).await?;
            tracing::debug!(endpoint = %endpoint.name, events = ids.len(), "webhook delivered");
            Ok(None)
        }
        Err(error) => {
            let attempts = batch.iter().map(|d| d.attempts).max().unwrap_or(0);
            let retry = backoff(endpoint, attempts);
            tracing::warn!(endpoint = %endpoint.name, %error, retry_in_ms = retry.as_millis() as u64, "webhook delivery failed; will retry");
            meta.fail_deliveries(&endpoint.name, &ids, &error, retry).await?;
            Ok(Some(retry))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let e = WebhookEndpoint {
            name: "x".into(),
            url: String::new(),
            headers: vec![],
            timeout: Duration::from_secs(1),
            actions: vec![],
            repositories: vec![],
            format: WebhookFormat::Distribution,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            batch: 10,
        };
        assert_eq!(backoff(&e, 0), Duration::from_millis(100));
        assert_eq!(backoff(&e, 2), Duration::from_millis(400));
        assert_eq!(backoff(&e, 10), Duration::from_secs(1));
        assert_eq!(backoff(&e, 1000), Duration::from_secs(1));
    }
}
