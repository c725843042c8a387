//! Background upkeep: reclaiming abandoned uploads.
//!
//! A session idle for longer than `upload_expiry` is deleted and its bytes discarded. Upload
//! bytes that no session refers to (a monolithic upload cut off by a crash, or a session row
//! deleted before its bytes) are discarded once they are older than the expiry too, so a crash
//! at any instant leaks nothing for long.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::{Registry, Result};

/// What one sweep reclaimed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub expired_sessions: usize,
    pub orphaned_uploads: usize,
    /// Events deleted by the retention rule.
    pub pruned_events: u64,
}

impl Registry {
    /// Reclaim expired sessions and orphaned upload bytes once.
    pub async fn sweep_uploads(&self) -> Result<Sweep> {
        let expiry = self.inner.config.upload_expiry;
        let mut sweep = Sweep::default();
        for s in self.inner.meta.expired_uploads(expiry).await? {
            self.inner.meta.delete_upload(&s.id).await?;
            self.inner.blobs.abort_upload(&s.id, &s.driver_state).await?;
            sweep.expired_sessions += 1;
        }
        let now = SystemTime::now();
        for u in self.inner.blobs.list_uploads().await? {
            let age = now.duration_since(u.modified).unwrap_or_default();
            if age > expiry && !self.inner.meta.upload_exists(&u.id).await? {
                self.inner.blobs.abort_upload(&u.id, &[]).await?;
                sweep.orphaned_uploads += 1;
            }
        }
        let retention = self.inner.events.config.retention;
        let cutoff = SystemTime::now().checked_sub(retention).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        if let Some(cutoff) = cutoff {
            sweep.pruned_events = self.inner.meta.prune_events(i64::try_from(cutoff.as_millis()).unwrap_or(0)).await?;
        }
        if sweep != Sweep::default() {
            tracing::info!(
                expired = sweep.expired_sessions,
                orphaned = sweep.orphaned_uploads,
                pruned_events = sweep.pruned_events,
                "janitor reclaimed abandoned uploads and old events"
            );
        }
        Ok(sweep)
    }

    /// Run [`Registry::sweep_uploads`] every `janitor_interval` until `shutdown` is cancelled.
    pub fn spawn_janitor(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(registry.inner.config.janitor_interval);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = registry.sweep_uploads().await {
                            tracing::warn!(error = %e, "upload sweep failed; will retry");
                        }
                    }
                }
            }
        })
    }
}
