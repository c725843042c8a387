//! Policies on what pushes and deletes may do: immutable tags and storage quotas, and the usage
//! report that goes with quotas.
//!
//! **Immutable tags.** A tag matching a rule (a repository pattern and tag patterns), once it
//! exists, keeps pointing at its manifest: a manifest PUT that would move it, a DELETE of the
//! tag and a DELETE of a manifest it points at are refused (`DENIED`). Pushing the same manifest
//! to it again is allowed, so a client re-running a push still succeeds. The engine decides
//! which tags are protected; the metadata store enforces it inside the writing transaction
//! (`MetaStore::put_manifest_guarded`, `MetaStore::delete_manifest_guarded`), so two nodes
//! racing on a new protected tag cannot both win.
//!
//! **Quotas.** Limits on the distinct blob bytes linked to the repositories matching a
//! pattern, charged when a push commits a blob or a mount links one; counted and enforced by
//! the metadata store (see `meta::quota` for what counts and why the check is exact).
//!
//! This module knows nothing about HTTP or configuration files: the binary parses the rules
//! into the types here.

use oci::{RepoName, RepoPattern, Tag, TagPattern};
use serde::Serialize;

use crate::{Error, Registry, Result};

/// Tags that may not move or go: those matching any of `tags` in repositories matching
/// `repositories`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImmutableRule {
    pub repositories: RepoPattern,
    pub tags: Vec<TagPattern>,
}

impl ImmutableRule {
    fn protects(&self, repo: &RepoName, tag: &str) -> bool {
        self.repositories.matches(repo) && self.tags.iter().any(|t| t.matches_str(tag))
    }
}

impl std::fmt::Display for ImmutableRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tags: Vec<String> = self.tags.iter().map(|t| format!("{:?}", t.as_str())).collect();
        write!(f, "repositories {:?}, tags [{}]", self.repositories.as_str(), tags.join(", "))
    }
}

/// The policies in force (empty by default: no tag is immutable, no quota applies).
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub immutable_tags: Vec<ImmutableRule>,
    pub quotas: Vec<meta::Quota>,
}

/// What [`Registry::usage`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    /// Each configured quota, largest usage first.
    pub quotas: Vec<QuotaUsage>,
    /// Every repository, largest first.
    pub repositories: Vec<RepositoryUsage>,
}

/// One quota's namespace, counted now.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaUsage {
    pub namespace: RepoPattern,
    /// Bytes.
    pub limit: u64,
    /// Distinct blob bytes linked to the namespace's repositories (each blob once).
    pub bytes: u64,
    pub blobs: u64,
    /// `bytes` as a percentage of `limit`.
    pub percent: f64,
}

/// One repository's linked blobs (a blob shared with other repositories counts in each).
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryUsage {
    pub repository: String,
    pub bytes: u64,
    pub blobs: u64,
}

/// `bytes` in binary units with one decimal (`400.0 MiB`), for messages people read.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

impl Registry {
    /// The first rule that makes `tag` of `repo` immutable.
    fn immutable_rule(&self, repo: &RepoName, tag: &str) -> Option<&ImmutableRule> {
        self.inner.config.policies.immutable_tags.iter().find(|r| r.protects(repo, tag))
    }

    /// Which of `tags` are immutable in `repo`.
    pub(crate) fn immutable_tags(&self, repo: &RepoName, tags: &[Tag]) -> Vec<Tag> {
        tags.iter().filter(|t| self.immutable_rule(repo, t.as_str()).is_some()).cloned().collect()
    }

    fn tag_immutable(&self, repo: &RepoName, tag: String) -> Error {
        match self.immutable_rule(repo, &tag).cloned() {
            Some(rule) => Error::TagImmutable { repository: repo.clone(), tag, rule },
            // The store refused a tag the engine marked: the rule is there.
            None => Error::Internal(format!("tag {tag} reported immutable without a rule")),
        }
    }

    /// A metadata error of a manifest write in `repo`, with an immutable tag named by its rule.
    pub(crate) fn manifest_error(&self, repo: &RepoName, e: meta::MetaError) -> Error {
        match e {
            meta::MetaError::ImmutableTag(tag) => self.tag_immutable(repo, tag),
            other => other.into(),
        }
    }

    /// Delete tag `tag` of `repo`, unless it is immutable: then the answer is a refusal if the
    /// tag exists and "unknown" if it does not (nothing is deleted either way, so there is no
    /// race to lose).
    pub(crate) async fn delete_tag_unless_immutable(&self, repo: &RepoName, tag: &Tag, events: &[meta::NewEvent]) -> Result<bool> {
        if self.immutable_rule(repo, tag.as_str()).is_some() {
            return match self.inner.meta.manifest_by_tag(repo, tag).await? {
                Some(_) => Err(self.tag_immutable(repo, tag.to_string())),
                None => Ok(false),
            };
        }
        Ok(self.inner.meta.delete_tag(repo, tag, events).await?)
    }

    /// Delete manifest `digest` of `repo`, unless an immutable tag points at it (decided in the
    /// deleting transaction).
    pub(crate) async fn delete_manifest_unless_immutable(&self, repo: &RepoName, digest: &oci::Digest, events: &[meta::NewEvent]) -> Result<bool> {
        let rules = &self.inner.config.policies.immutable_tags;
        let protects = |tag: &str| rules.iter().any(|r| r.protects(repo, tag));
        let guard: Option<&(dyn Fn(&str) -> bool + Sync)> = if rules.iter().any(|r| r.repositories.matches(repo)) { Some(&protects) } else { None };
        self.inner.meta.delete_manifest_guarded(repo, digest, guard, events).await.map_err(|e| self.manifest_error(repo, e))
    }

    /// Refuse a verified upload of `digest` to `repo` whose blob would take a namespace over
    /// its quota, before the blob is stored (so a refusal leaves no blob behind), and drop the
    /// upload. The linking transaction charges the blob for real; if a concurrent push took the
    /// room meanwhile, it refuses then, and the upload is left to the janitor.
    pub(crate) async fn admit_blob(&self, repo: &RepoName, id: &oci::UploadId, digest: &oci::Digest, size: u64, driver_state: &[u8], has_session: bool) -> Result<()> {
        if self.inner.config.policies.quotas.is_empty() {
            return Ok(());
        }
        match self.inner.meta.quota_check(repo, digest, size).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if matches!(e, meta::MetaError::QuotaExceeded { .. }) {
                    self.record_offpath("quota_exceeded", Some(repo), None, Some(digest.to_string()), Some(size));
                    self.drop_refused_upload(id, driver_state, has_session).await;
                }
                Err(e.into())
            }
        }
    }

    /// After a push was refused for its quota: the session and its bytes go now (the push
    /// cannot succeed as it stands; the client starts a new one once space is freed).
    async fn drop_refused_upload(&self, id: &oci::UploadId, driver_state: &[u8], has_session: bool) {
        if has_session && let Err(e) = self.inner.meta.delete_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "could not drop the refused upload's session; the janitor will");
        }
        if let Err(e) = self.inner.blobs.abort_upload(id, driver_state).await {
            tracing::warn!(upload = %id, error = %e, "could not discard the refused upload; the janitor will retry");
        }
    }

    /// Usage of every quota's namespace and of every repository (see [`usage_report`]).
    pub async fn usage(&self) -> Result<UsageReport> {
        usage_report(&self.inner.meta, &self.inner.config.policies.quotas).await
    }
}

/// Usage of every namespace in `quotas` (counted now: one aggregate per quota) and of every
/// repository. Needs only the database, so `berth usage` runs it without opening storage.
pub async fn usage_report(meta: &meta::MetaStore, quotas: &[meta::Quota]) -> Result<UsageReport> {
    let mut out = Vec::new();
    for q in quotas {
        let u = meta.namespace_usage(&q.namespace).await?;
        let percent = if q.limit == 0 { 100.0 } else { u.bytes as f64 * 100.0 / q.limit as f64 };
        out.push(QuotaUsage { namespace: q.namespace.clone(), limit: q.limit, bytes: u.bytes, blobs: u.blobs, percent });
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.namespace.cmp(&b.namespace)));
    let repositories = meta.repository_usage().await?.into_iter().map(|r| RepositoryUsage { repository: r.repository, bytes: r.bytes, blobs: r.blobs }).collect();
    Ok(UsageReport { quotas: out, repositories })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_protect_matching_tags_in_matching_repositories() {
        let rule = ImmutableRule { repositories: "prod/**".parse().expect("p"), tags: vec!["v*".parse().expect("p"), "release-*".parse().expect("p")] };
        let prod: RepoName = "prod/app".parse().expect("name");
        let dev: RepoName = "dev/app".parse().expect("name");
        assert!(rule.protects(&prod, "v1.0") && rule.protects(&prod, "release-7"));
        assert!(!rule.protects(&prod, "latest") && !rule.protects(&dev, "v1.0"));
        assert_eq!(rule.to_string(), r#"repositories "prod/**", tags ["v*", "release-*"]"#);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(400 << 20), "400.0 MiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
    }
}
