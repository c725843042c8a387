//! Events: who did what to which repository, recorded for the audit log and delivered to
//! webhooks.
//!
//! A change (push, mount, delete) records its event in the database transaction of the change,
//! with one outbox row per webhook endpoint that wants it; a pull, which changes nothing, is
//! queued in memory and recorded in batches off the request path (a crash may lose the last
//! fraction of a second of pull events, never a change's). Every recorded event is also written
//! as one JSON line to the audit sink, when one is configured.
//!
//! Who made the request (address, request id, user agent, user) reaches the engine through the
//! task-local [`REQUEST`], which the HTTP layer sets for each request: the engine never sees
//! HTTP types.

use std::path::PathBuf;
use std::time::Duration;

use meta::NewEvent;
use oci::RepoName;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Registry;

tokio::task_local! {
    /// The request being served, set by the HTTP layer.
    pub static REQUEST: RequestContext;
}

/// Facts about the request behind an event.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub method: String,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// The authenticated user, once authentication exists.
    pub actor: Option<String>,
}

/// Where audit lines go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuditSink {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

/// Body format of a webhook delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Distribution's notification envelope (`application/vnd.docker.distribution.events.v1+json`).
    #[default]
    Distribution,
    /// A CloudEvents 1.0 batch (`application/cloudevents-batch+json`).
    CloudEvents,
}

/// One webhook endpoint.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub name: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Actions wanted (`push`, `pull`, `delete`, `mount`); empty means all.
    pub actions: Vec<String>,
    /// Repository patterns (`*` within a segment, `**` across segments); empty means all.
    pub repositories: Vec<String>,
    pub format: WebhookFormat,
    /// First retry delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Events per delivery at most.
    pub batch: u32,
}

impl WebhookEndpoint {
    /// Whether this endpoint wants an event: its action is listed (`tag` stands for every
    /// event that names a tag: a push by tag, a tag deletion; no list means the changes and
    /// pulls of repositories, not access decisions, refusals or collections, which a receiver
    /// built for Distribution's events would not expect), and its repository matches.
    fn wants(&self, action: &str, repo: &str, tagged: bool) -> bool {
        let listed = if self.actions.is_empty() {
            ["push", "pull", "delete", "mount"].contains(&action)
        } else {
            self.actions.iter().any(|a| a == action || (tagged && a == "tag"))
        };
        listed
            && (self.repositories.is_empty() || self.repositories.iter().any(|p| glob_match(p, repo)))
    }
}

/// Events settings.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    pub audit: AuditSink,
    /// Whether pulls are recorded (audit and webhooks); pushes and deletes always are. Off by
    /// default: a row per pull costs a few microseconds of CPU on every GET.
    pub record_pulls: bool,
    /// Events older than this are deleted by the janitor (unless a webhook still owes them).
    pub retention: Duration,
    pub endpoints: Vec<WebhookEndpoint>,
    /// How this node names itself in event envelopes (`source.addr`).
    pub source: String,
    /// This node's id, for delivery leases and `source.instanceID`.
    pub instance: String,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            audit: AuditSink::Off,
            record_pulls: false,
            retention: Duration::from_secs(90 * 86_400),
            endpoints: Vec::new(),
            source: String::new(),
            instance: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// Match a repository name against a pattern: `*` matches within one path segment, `**` any
/// number of segments.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn seg_match(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => seg_match(&p[1..], s) || (!s.is_empty() && seg_match(p, &s[1..])),
            (Some(a), Some(b)) if a == b => seg_match(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn parts(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => parts(&p[1..], s) || (!s.is_empty() && parts(p, &s[1..])),
            (Some(a), Some(b)) => seg_match(a.as_bytes(), b.as_bytes()) && parts(&p[1..], &s[1..]),
            _ => false,
        }
    }
    parts(&pattern.split('/').collect::<Vec<_>>(), &name.split('/').collect::<Vec<_>>())
}

/// What the registry knows about one event before it is recorded.
pub(crate) struct EventFacts<'a> {
    pub action: &'static str,
    pub repo: &'a RepoName,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub from: Option<&'a RepoName>,
}

/// Running parts of the events system, held by the registry.
pub(crate) struct EventsRuntime {
    pub config: EventsConfig,
    /// Pull events waiting to be recorded.
    pub pulls: mpsc::Sender<NewEvent>,
    pub pulls_rx: std::sync::Mutex<Option<mpsc::Receiver<NewEvent>>>,
    /// Lines for the audit sink.
    pub audit: mpsc::UnboundedSender<String>,
    pub audit_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Wakes delivery workers when an event was queued for an endpoint.
    pub queued: tokio::sync::Notify,
    /// Pull events dropped because the recorder fell behind, and when that was last logged.
    pub dropped_pulls: std::sync::atomic::AtomicU64,
    pub last_drop_warning: std::sync::atomic::AtomicI64,
}

impl EventsRuntime {
    pub(crate) fn new(config: EventsConfig) -> EventsRuntime {
        // Room for a few batches (the recorder takes up to 2,048 every 50 ms); bounded so a
        // stalled database costs little memory: beyond it pull events are dropped and counted.
        let (pulls, pulls_rx) = mpsc::channel(8_192);
        let (audit, audit_rx) = mpsc::unbounded_channel();
        EventsRuntime {
            config,
            pulls,
            pulls_rx: std::sync::Mutex::new(Some(pulls_rx)),
            audit,
            audit_rx: std::sync::Mutex::new(Some(audit_rx)),
            queued: tokio::sync::Notify::new(),
            dropped_pulls: std::sync::atomic::AtomicU64::new(0),
            last_drop_warning: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

/// One audit line, serialized straight from borrowed fields (no intermediate JSON tree: this
/// runs for every recorded pull).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditLine<'a> {
    time: String,
    action: &'a str,
    repository: &'a str,
    digest: Option<&'a str>,
    tag: Option<&'a str>,
    media_type: Option<&'a str>,
    size: Option<u64>,
    from_repository: Option<&'a str>,
    user: Option<&'a str>,
    address: Option<&'a str>,
    request_id: Option<&'a str>,
    user_agent: Option<&'a str>,
    method: Option<&'a str>,
}

fn audit_line(e: &NewEvent, time_ms: i64) -> String {
    serde_json::to_string(&AuditLine {
        time: crate::time::rfc3339_ms(time_ms),
        action: e.action,
        repository: &e.repository,
        digest: e.digest.as_deref(),
        tag: e.tag.as_deref(),
        media_type: e.media_type.as_deref(),
        size: e.size,
        from_repository: e.from_repository.as_deref(),
        user: e.actor.as_deref(),
        address: e.address.as_deref(),
        request_id: e.request_id.as_deref(),
        user_agent: e.user_agent.as_deref(),
        method: e.method.as_deref(),
    })
    .unwrap_or_default()
}

impl Registry {
    /// Build the event for `facts` with the current request's context and matching endpoints.
    pub(crate) fn event(&self, facts: EventFacts<'_>) -> NewEvent {
        let ctx = REQUEST.try_with(Clone::clone).unwrap_or_default();
        let repo = facts.repo.as_str();
        let endpoints =
            self.inner.events.config.endpoints.iter().filter(|e| e.wants(facts.action, repo, facts.tag.is_some())).map(|e| e.name.clone()).collect();
        NewEvent {
            time_ms: meta_now(),
            action: facts.action,
            repository: repo.to_owned(),
            digest: facts.digest,
            tag: facts.tag,
            media_type: facts.media_type,
            size: facts.size,
            from_repository: facts.from.map(|f| f.as_str().to_owned()),
            actor: ctx.actor,
            address: ctx.address,
            request_id: (!ctx.request_id.is_empty()).then_some(ctx.request_id),
            user_agent: ctx.user_agent,
            method: (!ctx.method.is_empty()).then_some(ctx.method),
            endpoints,
        }
    }

    /// The `delete` event of a manifest deleted because nothing kept it (retention's and GC's
    /// untagged deletions).
    pub(crate) fn deleted_manifest_event(&self, repo: &RepoName, m: &meta::DeletedManifest) -> NewEvent {
        self.event(EventFacts { action: "delete", repo, digest: Some(m.digest.to_string()), tag: None, media_type: Some(m.media_type.clone()), size: None, from: None })
    }

    /// After a change committed with `events`: write audit lines and wake delivery workers.
    pub(crate) fn committed(&self, events: &[NewEvent]) {
        let rt = &self.inner.events;
        if rt.config.audit != AuditSink::Off {
            for e in events {
                let _ = rt.audit.send(audit_line(e, e.time_ms));
            }
        }
        if events.iter().any(|e| !e.endpoints.is_empty()) {
            rt.queued.notify_waiters();
        }
    }

    /// Record a pull, off the request path. Skipped for HEAD requests and when pulls are not
    /// recorded; dropped (and counted in the log) if the queue is full.
    pub(crate) fn pulled(&self, facts: EventFacts<'_>) {
        let rt = &self.inner.events;
        if !rt.config.record_pulls || REQUEST.try_with(|r| r.method == "HEAD").unwrap_or(false) {
            return;
        }
        if rt.pulls.try_send(self.event(facts)).is_err() {
            // Say so at most once a second, with the count: a log line per drop would make an
            // overload worse.
            let dropped = rt.dropped_pulls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let now = meta_now();
            let last = rt.last_drop_warning.load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 1000
                && rt.last_drop_warning.compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed).is_ok()
            {
                tracing::warn!(dropped_total = dropped, "pull events arrive faster than they can be recorded; dropping some");
            }
        }
    }

    /// Record an access-control event for the audit log and webhooks: `login`, `login_failed`,
    /// or a refusal (`denied_pull`, `denied_push`, `denied_delete`, `denied_catalog`,
    /// `denied_admin`, `denied_login`). Like a pull it is recorded off the request path, in
    /// batches: a refused request must not cost a write transaction of its own, or a flood of
    /// them would be a cheap way to load the database.
    pub fn record_access_event(&self, action: &'static str, repo: Option<&RepoName>, user: Option<&str>) {
        self.record_offpath(action, repo, user.map(str::to_owned), None, None);
    }

    /// Record, off the request path, an event that changes nothing: an access decision, a
    /// refused push (`quota_exceeded`, with the blob and its size), a collection's summary
    /// (`gc`, with the bytes it freed). Dropped (and logged) if the recorder is far behind.
    pub(crate) fn record_offpath(&self, action: &'static str, repo: Option<&RepoName>, user: Option<String>, digest: Option<String>, size: Option<u64>) {
        let ctx = REQUEST.try_with(Clone::clone).unwrap_or_default();
        let repository = repo.map_or("", RepoName::as_str);
        let endpoints = self.inner.events.config.endpoints.iter().filter(|e| e.wants(action, repository, false)).map(|e| e.name.clone()).collect();
        let event = NewEvent {
            time_ms: meta_now(),
            action,
            repository: repository.to_owned(),
            digest,
            tag: None,
            media_type: None,
            size,
            from_repository: None,
            actor: user.or(ctx.actor),
            address: ctx.address,
            request_id: (!ctx.request_id.is_empty()).then_some(ctx.request_id),
            user_agent: ctx.user_agent,
            method: (!ctx.method.is_empty()).then_some(ctx.method),
            endpoints,
        };
        if self.inner.events.pulls.try_send(event).is_err() {
            tracing::warn!(action, "the event recorder is behind; an event was dropped");
        }
    }

    /// Start the background tasks of the events system: the pull recorder, the audit writer
    /// and one delivery worker per webhook endpoint. They stop when `shutdown` is cancelled
    /// (the pull recorder flushes what it holds first).
    pub fn spawn_events(&self, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let rt = &self.inner.events;
        // The audit writer stops only after the pull recorder's last flush, whose audit lines it
        // must still write.
        let pulls_done = CancellationToken::new();
        if let Some(rx) = rt.pulls_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let (reg, shutdown, done) = (self.clone(), shutdown.clone(), pulls_done.clone());
            tasks.push(tokio::spawn(async move {
                record_pulls(reg, rx, shutdown).await;
                done.cancel();
            }));
        } else {
            pulls_done.cancel();
        }
        if let Some(rx) = rt.audit_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            tasks.push(tokio::spawn(write_audit(rt.config.audit.clone(), rx, pulls_done)));
        }
        for endpoint in rt.config.endpoints.clone() {
            tasks.push(tokio::spawn(crate::webhooks::deliver_loop(self.clone(), endpoint, shutdown.clone())));
        }
        tasks
    }

    /// Recorded events, for the audit API.
    pub async fn audit(&self, filter: &meta::EventFilter) -> crate::Result<Vec<meta::Event>> {
        Ok(self.inner.meta.events(filter).await?)
    }

    /// Delivery state of every configured endpoint.
    pub async fn webhook_status(&self) -> crate::Result<Vec<meta::EndpointStatus>> {
        let mut out = Vec::new();
        for e in &self.inner.events.config.endpoints {
            out.push(self.inner.meta.endpoint_status(&e.name).await?);
        }
        Ok(out)
    }
}

fn meta_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn record_pulls(reg: Registry, mut rx: mpsc::Receiver<NewEvent>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(2048);
    loop {
        let open = tokio::select! {
            n = rx.recv_many(&mut batch, 2048) => n > 0,
            () = shutdown.cancelled() => { rx.close(); while let Ok(e) = rx.try_recv() { batch.push(e); } false }
        };
        if !batch.is_empty() {
            match reg.inner.meta.record_events(&batch).await {
                Ok(()) => reg.committed(&batch),
                Err(e) => tracing::warn!(error = %e, dropped = batch.len(), "could not record pull events"),
            }
            batch.clear();
        }
        if !open {
            return;
        }
        // Gather for a moment: one transaction for many pulls.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_audit(sink: AuditSink, mut rx: mpsc::UnboundedReceiver<String>, stop: CancellationToken) {
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &sink {
        AuditSink::Off => return,
        AuditSink::Stdout => Box::new(tokio::io::stdout()),
        AuditSink::File(path) => match tokio::fs::OpenOptions::new().create(true).append(true).open(path).await {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the audit log; audit lines are lost");
                return;
            }
        },
    };
    let mut lines = Vec::new();
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut lines, 1024) => n == 0,
            () = stop.cancelled() => {
                while let Ok(l) = rx.try_recv() {
                    lines.push(l);
                }
                true
            }
        };
        let mut buf = String::new();
        for l in lines.drain(..) {
            buf.push_str(&l);
            buf.push('\n');
        }
        if let Err(e) = async {
            out.write_all(buf.as_bytes()).await?;
            out.flush().await
        }
        .await
        {
            tracing::error!(error = %e, "writing the audit log failed");
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("**", "a/b/c"));
        assert!(glob_match("team-a/**", "team-a/x/y"));
        assert!(!glob_match("team-a/**", "team-b/x"));
        assert!(glob_match("library/*", "library/ubuntu"));
        assert!(!glob_match("library/*", "library/a/b"));
        assert!(glob_match("*/app", "x/app"));
        assert!(glob_match("a*c", "abbc"));
        assert!(!glob_match("a*c", "abbd"));
    }
}
