//! Deleting in bulk, for operators: a whole repository, or the tags of a repository matching a
//! pattern (and an age). The admin API and the CLI call these; retention (`retention`) shares
//! the per-tag deletion.
//!
//! Every tag goes through the same path as a tag DELETE of the API (immutable tags are refused
//! there), with a delete event in its transaction. Deleting a repository removes its metadata
//! in one transaction; its blobs are left to garbage collection, whose grace period for them
//! starts at the deletion.
//!
//! Knows nothing about HTTP or configuration files: callers hand in parsed names and patterns.

use std::time::Duration;

use meta::{RepositorySummary, TagInfo};
use oci::{RepoName, Tag, TagPattern};

use serde::Serialize;

use crate::events::EventFacts;
use crate::{Error, Registry, Result};

/// Which tags a bulk deletion takes: those matching `pattern` and, when `older_than` is given,
/// last pushed longer ago than that.
#[derive(Debug, Clone)]
pub struct TagFilter {
    pub pattern: TagPattern,
    pub older_than: Option<Duration>,
}

impl TagFilter {
    /// Whether `t` is selected at `now_ms` (milliseconds since the epoch).
    pub fn selects(&self, t: &TagInfo, now_ms: i64) -> bool {
        self.pattern.matches(&t.tag) && self.older_than.is_none_or(|age| t.updated_at < now_ms.saturating_sub(millis(age)))
    }
}

/// A tag as a bulk deletion or retention reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagReport {
    pub tag: String,
    pub digest: String,
    /// When the tag was last pushed, RFC 3339.
    pub updated_at: String,
}

impl From<&TagInfo> for TagReport {
    fn from(t: &TagInfo) -> TagReport {
        TagReport { tag: t.tag.to_string(), digest: t.digest.to_string(), updated_at: crate::time::rfc3339_ms(t.updated_at) }
    }
}

/// What a bulk tag deletion did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TagDeletion {
    pub dry_run: bool,
    pub deleted: Vec<TagReport>,
    /// Selected tags that stayed, with the reason (an immutable tag, a tag moved meanwhile).
    pub kept: Vec<KeptTag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptTag {
    #[serde(flatten)]
    pub tag: TagReport,
    pub reason: String,
}

/// How deleting one tag ended.
#[derive(Debug)]
pub(crate) enum TagOutcome {
    Deleted,
    /// Gone already, or moved to another manifest (or pushed again) since it was chosen.
    Changed,
    /// Refused: the tag is immutable (by this rule).
    Immutable(String),
}

/// Parse an age as the configuration writes durations: `30d`, `12h`, `90m`, `45s`, `500ms`
/// (decimals allowed, a bare number is seconds). `None` if it is not one.
pub fn parse_age(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, millis)
}

impl Registry {
    /// What `repo` holds (for a confirmation before deleting it).
    pub async fn repository_summary(&self, repo: &RepoName) -> Result<RepositorySummary> {
        self.inner.meta.repository_summary(repo).await?.ok_or(Error::NameUnknown)
    }

    /// Delete `repo` with its tags, manifests, blob links and upload sessions, in one
    /// transaction with one delete event; the bytes of its uploads in progress are discarded
    /// after. Its blobs become garbage for collection (`gc.grace` from now) unless another
    /// repository links them.
    pub async fn delete_repository(&self, repo: &RepoName) -> Result<RepositorySummary> {
        self.require_delete()?;
        let events = [self.event(EventFacts { action: "delete", repo, digest: None, tag: None, media_type: None, size: None, from: None })];
        // An immutable tag may not go, with its repository or otherwise: decided in the
        // deleting transaction, so a protected tag pushed meanwhile is seen.
        let protects = |tag: &str| tag.parse::<Tag>().is_ok_and(|t| !self.immutable_tags(repo, &[t]).is_empty());
        let result = self.inner.meta.delete_repository(repo, Some(&protects), &events).await;
        self.inner.cache.invalidate(repo);
        let deletion = result.map_err(|e| self.manifest_error(repo, e))?.ok_or(Error::NameUnknown)?;
        self.committed(&events);
        for (id, state) in &deletion.uploads {
            if let Err(e) = self.inner.blobs.abort_upload(id, state).await {
                tracing::warn!(upload = %id, error = %e, "could not discard an upload of the deleted repository; the janitor will");
            }
        }
        let r = deletion.removed;
        tracing::info!(repository = %repo, tags = r.tags, manifests = r.manifests, blob_links = r.blob_links, uploads = r.uploads, "repository deleted");
        Ok(r)
    }

    /// Delete the tags of `repo` that `filter` selects at `now_ms` (only the tags: their
    /// manifests stay). With `dry_run`, only report them.
    pub async fn delete_tags(&self, repo: &RepoName, filter: &TagFilter, now_ms: i64, dry_run: bool) -> Result<TagDeletion> {
        self.require_delete()?;
        let tags = self.inner.meta.repository_tag_times(repo).await?.ok_or(Error::NameUnknown)?;
        let mut out = TagDeletion { dry_run, ..TagDeletion::default() };
        for t in tags.iter().filter(|t| filter.selects(t, now_ms)) {
            if dry_run {
                out.deleted.push(t.into());
                continue;
            }
            match self.delete_chosen_tag(repo, t).await? {
                TagOutcome::Deleted => {
                    tracing::info!(repository = %repo, tag = %t.tag, digest = %t.digest, pattern = %filter.pattern, "tag deleted");
                    out.deleted.push(t.into());
                }
                TagOutcome::Changed => out.kept.push(KeptTag { tag: t.into(), reason: "changed since it was selected".into() }),
                TagOutcome::Immutable(rule) => out.kept.push(KeptTag { tag: t.into(), reason: format!("immutable (immutable_tags rule: {rule})") }),
            }
        }
        self.inner.cache.invalidate(repo);
        Ok(out)
    }

    /// Delete tag `t` of `repo` if it still points where it did when it was chosen, through
    /// the API's own tag deletion (which refuses immutable tags), with its delete event.
    pub(crate) async fn delete_chosen_tag(&self, repo: &RepoName, t: &TagInfo) -> Result<TagOutcome> {
        // A push since the choice wins: the tag is judged again on the next run.
        match self.inner.meta.tag_info(repo, &t.tag).await? {
            Some(now) if now.digest == t.digest && now.updated_at == t.updated_at => {}
            _ => return Ok(TagOutcome::Changed),
        }
        let events = [self.event(EventFacts {
            action: "delete",
            repo,
            digest: Some(t.digest.to_string()),
            tag: Some(t.tag.to_string()),
            media_type: None,
            size: None,
            from: None,
        })];
        match self.delete_tag_checked(repo, &t.tag, &events).await {
            Ok(true) => {
                self.committed(&events);
                Ok(TagOutcome::Deleted)
            }
            Ok(false) => Ok(TagOutcome::Changed),
            Err(Error::TagImmutable { rule, .. }) => Ok(TagOutcome::Immutable(rule.to_string())),
            Err(e) => Err(e),
        }
    }

    /// The API's tag deletion: an immutable tag is refused (`Error::TagImmutable`).
    async fn delete_tag_checked(&self, repo: &RepoName, tag: &Tag, events: &[meta::NewEvent]) -> Result<bool> {
        self.delete_tag_unless_immutable(repo, tag, events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_filters() {
        assert_eq!(parse_age("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_age("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("soon"), None);
        assert_eq!(parse_age("-1d"), None);
        let now = 1_800_000_000_000;
        let t = |name: &str, age_ms: i64| TagInfo { tag: name.parse().expect("tag"), digest: oci::Digest::sha256_of(b"x"), updated_at: now - age_ms };
        let f = TagFilter { pattern: "pr-*".parse().expect("pattern"), older_than: Some(Duration::from_secs(60)) };
        assert!(f.selects(&t("pr-1", 61_000), now));
        assert!(!f.selects(&t("pr-1", 60_000), now), "exactly the age is not older");
        assert!(!f.selects(&t("main", 600_000), now));
        let all = TagFilter { pattern: "*".parse().expect("pattern"), older_than: None };
        assert!(all.selects(&t("anything", 0), now));
    }
}
