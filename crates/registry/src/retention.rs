//! Retention: policies that delete tags as they age, on a schedule and on demand, and (by
//! default) the manifests only those tags kept, so that garbage collection can then free
//! their blobs.
//!
//! Which tags of a repository go is decided by [`plan`], a pure function of the policy, the
//! repository's tags with their push times, and "now" (so it is tested with a fixed clock). A
//! repository is governed by the first policy whose `repositories` pattern matches it; within
//! it, with the tags ordered newest first (by the time each was last pushed, ties by name), a
//! tag is **kept** if
//!
//! 1. it matches one of `keep_tags` (regular expressions matching the whole tag), or
//! 2. it is among the `keep_last` newest tags (all tags count, including those `keep_tags`
//!    keeps), or
//! 3. `delete_older_than` is set and the tag was pushed at or after now minus that,
//!
//! and **deleted** otherwise. Then `keep_at_least` overrides: if fewer tags than that would
//! remain, the newest of the tags chosen for deletion stay until that many remain.
//!
//! Tags are deleted through the API's own tag deletion (an immutable tag is kept and logged,
//! never a reason to stop the run), each with a delete event, and only if the tag still points
//! where it did when the decision was made. With `delete_untagged`, a manifest whose last tag
//! went is then deleted too when nothing else keeps it (see
//! `meta::MetaStore::delete_untagged_manifest`: no tag left, no index listing it, no kept
//! referrer), together with its referrers and the index children nothing else keeps.
//!
//! Knows nothing about HTTP or configuration files: the binary parses the policies into the
//! types here.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use meta::{DeletedManifest, Role, TagInfo, UntaggedOutcome};
use oci::{Digest, RepoName, RepoPattern, Tag};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::{REQUEST, RequestContext};
use crate::lifecycle::{TagOutcome, TagReport, millis, now_ms};
use crate::{Registry, Result};

/// Retention settings: the policies, and how often they run in the background.
#[derive(Debug, Clone, Default)]
pub struct RetentionConfig {
    /// Time between background runs (`None`: only on demand).
    pub schedule: Option<Duration>,
    pub policies: Vec<RetentionPolicy>,
}

/// One policy (see the module docs for what each rule means).
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub repositories: RepoPattern,
    pub keep_last: Option<u32>,
    pub keep_tags: Vec<TagRegex>,
    pub delete_older_than: Option<Duration>,
    pub keep_at_least: u32,
    /// Also delete a manifest whose last tag this policy deleted, when nothing else keeps it.
    pub delete_untagged: bool,
}

impl RetentionPolicy {
    /// A policy for `repositories` that keeps everything until rules are added.
    pub fn new(repositories: RepoPattern) -> RetentionPolicy {
        RetentionPolicy { repositories, keep_last: None, keep_tags: Vec::new(), delete_older_than: None, keep_at_least: 1, delete_untagged: true }
    }

    /// How log lines and reports name the rule that deleted a tag.
    fn rule(&self, index: usize) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.keep_last {
            parts.push(format!("keep_last {n}"));
        }
        if let Some(d) = self.delete_older_than {
            parts.push(format!("delete_older_than {}", human_duration(d)));
        }
        if !self.keep_tags.is_empty() {
            parts.push(format!("keep_tags [{}]", self.keep_tags.iter().map(|r| format!("{:?}", r.as_str())).collect::<Vec<_>>().join(", ")));
        }
        format!("retention.policies[{index}] ({:?}: {})", self.repositories.as_str(), parts.join(", "))
    }
}

/// A regular expression that must match a whole tag (it is anchored at both ends, so
/// `latest` keeps only `latest`, not `latest-rc`).
#[derive(Clone)]
pub struct TagRegex {
    source: String,
    regex: regex::Regex,
}

impl TagRegex {
    /// Compile `source`; the error says what is wrong with it.
    pub fn new(source: &str) -> Result<TagRegex, String> {
        // Bounded: a tag is at most 128 characters, and a huge pattern is a mistake.
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$")).size_limit(1 << 20).build().map_err(|e| e.to_string())?;
        Ok(TagRegex { source: source.to_owned(), regex })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, tag: &Tag) -> bool {
        self.regex.is_match(tag.as_str())
    }
}

impl fmt::Debug for TagRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagRegex({:?})", self.source)
    }
}

/// Why a tag stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Matches this `keep_tags` expression.
    KeepTags(String),
    /// Among the `keep_last` newest.
    KeepLast(u32),
    /// Pushed within `delete_older_than`.
    Recent,
    /// Would have gone, but `keep_at_least` needs it.
    KeepAtLeast(u32),
    /// Would have gone, but it is immutable (the rule that says so).
    Immutable(String),
    /// Would have gone, but it was pushed again, moved or deleted since the decision.
    Changed,
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::KeepTags(re) => write!(f, "matches keep_tags {re:?}"),
            Keep::KeepLast(n) => write!(f, "among the {n} newest (keep_last)"),
            Keep::Recent => write!(f, "newer than delete_older_than"),
            Keep::KeepAtLeast(n) => write!(f, "keep_at_least {n}"),
            Keep::Immutable(rule) => write!(f, "immutable (immutable_tags rule: {rule})"),
            Keep::Changed => write!(f, "pushed, moved or deleted since it was evaluated"),
        }
    }
}

/// What [`plan`] decided for one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delete,
    Keep(Keep),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub tag: TagInfo,
    pub verdict: Verdict,
}

/// Decide which of `tags` `policy` deletes at `now_ms` (milliseconds since the epoch). The
/// decisions come newest first.
pub fn plan(policy: &RetentionPolicy, tags: &[TagInfo], now_ms: i64) -> Vec<Decision> {
    let mut tags: Vec<&TagInfo> = tags.iter().collect();
    tags.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then_with(|| a.tag.cmp(&b.tag)));
    let cutoff = policy.delete_older_than.map(|d| now_ms.saturating_sub(millis(d)));
    let mut decisions: Vec<Decision> = tags
        .iter()
        .enumerate()
        .map(|(rank, t)| {
            let verdict = if let Some(re) = policy.keep_tags.iter().find(|re| re.is_match(&t.tag)) {
                Verdict::Keep(Keep::KeepTags(re.as_str().to_owned()))
            } else if let Some(n) = policy.keep_last.filter(|n| rank < *n as usize) {
                Verdict::Keep(Keep::KeepLast(n))
            } else if cutoff.is_some_and(|c| t.updated_at >= c) {
                Verdict::Keep(Keep::Recent)
            } else {
                Verdict::Delete
            };
            Decision { tag: (*t).clone(), verdict }
        })
        .collect();
    let kept = decisions.iter().filter(|d| d.verdict != Verdict::Delete).count();
    let mut short = (policy.keep_at_least as usize).saturating_sub(kept);
    // The newest of the doomed are spared first: they are the likeliest to be wanted.
    for d in decisions.iter_mut().filter(|d| d.verdict == Verdict::Delete) {
        if short == 0 {
            break;
        }
        d.verdict = Verdict::Keep(Keep::KeepAtLeast(policy.keep_at_least));
        short -= 1;
    }
    decisions
}

/// What became of a tag a policy chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    Deleted,
    WouldDelete,
    /// Chosen, but kept: the reason.
    Kept(String),
}

/// A tag a policy chose to delete (deleted, or, in a dry run, to be deleted), or spared by an
/// override (`keep_at_least`, immutability, a push meanwhile).
#[derive(Debug, Clone, Serialize)]
pub struct RetentionTag {
    pub repository: String,
    #[serde(flatten)]
    pub tag: TagReport,
    pub fate: Fate,
    /// The policy and its rules.
    pub rule: String,
    /// Whether no tag that stays points at the same manifest (with `delete_untagged`, the
    /// manifest then goes too unless an index or a kept referrer holds it).
    pub last_tag: bool,
}

/// A manifest deleted because its last tag went.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionManifest {
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    /// `untagged` (its last tag went), `referrer` (it described a deleted manifest) or `child`
    /// (of a deleted index).
    pub role: &'static str,
    pub rule: String,
}

/// What a retention run did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// Repositories a policy applied to.
    pub repositories: u64,
    /// Tags chosen for deletion, each with its fate.
    pub tags: Vec<RetentionTag>,
    pub manifests: Vec<RetentionManifest>,
    /// Tags the policies keep by their ordinary rules (not listed).
    pub tags_kept: u64,
    /// Tags or manifests whose deletion failed (logged; the run goes on).
    pub errors: u64,
}

impl RetentionReport {
    /// Tags deleted (or, dry, to be deleted).
    pub fn deleted(&self) -> usize {
        self.tags.iter().filter(|t| matches!(t.fate, Fate::Deleted | Fate::WouldDelete)).count()
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Root => "untagged",
        Role::Referrer => "referrer",
        Role::Child => "child",
    }
}

/// `90d`, `12h`, `30m` or `45s`, as a duration is written in the configuration.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Repositories listed per round trip.
const PAGE: u32 = 1000;

impl Registry {
    /// Apply `config`'s policies once, as of `now_ms` (milliseconds since the epoch). A tag or
    /// manifest whose deletion fails is logged and counted, and the run goes on; only failing
    /// to list repositories fails the run.
    pub async fn run_retention(&self, config: &RetentionConfig, now_ms: i64, dry_run: bool) -> Result<RetentionReport> {
        let mut report = RetentionReport { dry_run, ..RetentionReport::default() };
        if config.policies.is_empty() {
            return Ok(report);
        }
        let mut last: Option<String> = None;
        loop {
            let page = self.inner.meta.list_repositories(last.as_deref(), PAGE).await?;
            for name in &page.names {
                let Ok(repo) = name.parse::<RepoName>() else {
                    tracing::warn!(repository = %name, "retention skips a repository whose stored name is invalid");
                    continue;
                };
                let Some((index, policy)) = config.policies.iter().enumerate().find(|(_, p)| p.repositories.matches(&repo)) else { continue };
                report.repositories += 1;
                if let Err(e) = self.retain_repository(&repo, policy, index, now_ms, dry_run, &mut report).await {
                    report.errors += 1;
                    tracing::warn!(repository = %repo, error = %e, "retention failed for a repository; the run goes on");
                }
            }
            if !page.more {
                break;
            }
            last = page.names.last().cloned();
        }
        let spared = report.tags.iter().filter(|t| matches!(t.fate, Fate::Kept(_))).count();
        tracing::info!(
            dry_run,
            repositories = report.repositories,
            tags_deleted = report.deleted(),
            manifests_deleted = report.manifests.len(),
            tags_spared = spared,
            errors = report.errors,
            "retention run finished"
        );
        Ok(report)
    }

    async fn retain_repository(&self, repo: &RepoName, policy: &RetentionPolicy, index: usize, now_ms: i64, dry_run: bool, report: &mut RetentionReport) -> Result<()> {
        let Some(tags) = self.inner.meta.repository_tag_times(repo).await? else { return Ok(()) };
        let rule = policy.rule(index);
        let decisions = plan(policy, &tags, now_ms);
        // Manifests some tag that stays points at.
        let mut staying: HashSet<Digest> = decisions.iter().filter(|d| d.verdict != Verdict::Delete).map(|d| d.tag.digest.clone()).collect();
        let mut untagged: BTreeSet<Digest> = BTreeSet::new();
        for d in &decisions {
            let keep = match &d.verdict {
                Verdict::Delete => None,
                Verdict::Keep(k @ Keep::KeepAtLeast(_)) => Some(k.clone()),
                Verdict::Keep(_) => {
                    report.tags_kept += 1;
                    continue;
                }
            };
            let t = &d.tag;
            let mut entry = RetentionTag {
                repository: repo.to_string(),
                tag: t.into(),
                fate: Fate::WouldDelete,
                rule: rule.clone(),
                last_tag: !staying.contains(&t.digest),
            };
            if let Some(k) = keep {
                tracing::info!(repository = %repo, tag = %t.tag, digest = %t.digest, rule = %rule, kept = %k, "retention: tag kept");
                entry.fate = Fate::Kept(k.to_string());
            } else if !dry_run {
                let kept = match self.delete_chosen_tag(repo, t).await {
                    Ok(TagOutcome::Deleted) => None,
                    Ok(TagOutcome::Changed) => Some(Keep::Changed.to_string()),
                    Ok(TagOutcome::Immutable(r)) => Some(Keep::Immutable(r).to_string()),
                    Err(e) => {
                        report.errors += 1;
                        tracing::warn!(repository = %repo, tag = %t.tag, digest = %t.digest, error = %e, "retention could not delete a tag; the run goes on");
                        Some(format!("deletion failed: {e}"))
                    }
                };
                match kept {
                    None => {
                        tracing::info!(repository = %repo, tag = %t.tag, digest = %t.digest, rule = %rule, "retention: tag deleted");
                        entry.fate = Fate::Deleted;
                        untagged.insert(t.digest.clone());
                    }
                    Some(k) => {
                        tracing::info!(repository = %repo, tag = %t.tag, digest = %t.digest, rule = %rule, kept = %k, "retention: tag kept");
                        staying.insert(t.digest.clone());
                        entry.fate = Fate::Kept(k);
                    }
                }
            }
            report.tags.push(entry);
        }
        if dry_run || !policy.delete_untagged {
            return Ok(());
        }
        for digest in untagged.iter().filter(|d| !staying.contains(*d)) {
            self.delete_untagged(repo, digest, &rule, report).await;
        }
        Ok(())
    }

    /// Delete `digest` of `repo` if its last tag went and nothing else keeps it.
    async fn delete_untagged(&self, repo: &RepoName, digest: &Digest, rule: &str, report: &mut RetentionReport) {
        let recorded = Mutex::new(Vec::new());
        let event = |m: &DeletedManifest| {
            let e = self.deleted_manifest_event(repo, m);
            recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e.clone());
            e
        };
        let outcome = self.inner.meta.delete_untagged_manifest(repo, digest, &event).await;
        self.inner.cache.invalidate(repo);
        match outcome {
            Ok(UntaggedOutcome::Deleted(gone)) => {
                self.committed(&recorded.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));
                for m in gone {
                    let role = role_name(m.role);
                    tracing::info!(repository = %repo, digest = %m.digest, media_type = %m.media_type, role, rule = %rule, "retention: manifest deleted");
                    report.manifests.push(RetentionManifest { repository: repo.to_string(), digest: m.digest.to_string(), media_type: m.media_type, role, rule: rule.to_owned() });
                }
            }
            Ok(UntaggedOutcome::Kept(why)) => {
                tracing::info!(repository = %repo, digest = %digest, reason = %why, "retention: untagged manifest kept");
            }
            Err(e) => {
                report.errors += 1;
                tracing::warn!(repository = %repo, digest = %digest, error = %e, "retention could not delete an untagged manifest; the run goes on");
            }
        }
    }

    /// Apply `config` every `config.schedule` until `shutdown` is cancelled (the first run one
    /// interval after start). `None` when there is no schedule or no policy. Every node may
    /// run it: a tag or manifest another node deleted first is simply gone.
    pub fn spawn_retention(&self, config: RetentionConfig, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let every = config.schedule.filter(|d| !d.is_zero())?;
        if config.policies.is_empty() {
            return None;
        }
        let registry = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        // Events of one run share a request id, so the audit log groups them.
                        let ctx = RequestContext { request_id: format!("retention-{}", uuid::Uuid::new_v4().simple()), ..RequestContext::default() };
                        let run = REQUEST.scope(ctx, registry.run_retention(&config, now_ms(), false));
                        // Cancelled mid-run by shutdown: every deletion is its own transaction.
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            r = run => {
                                if let Err(e) = r {
                                    tracing::warn!(error = %e, "retention run failed; will retry at the next interval");
                                }
                            }
                        }
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_800_000_000_000;

    fn tags(list: &[(&str, i64)]) -> Vec<TagInfo> {
        list.iter()
            .map(|(name, age_days)| TagInfo {
                tag: name.parse().expect("tag"),
                digest: Digest::sha256_of(name.as_bytes()),
                updated_at: NOW - age_days * DAY,
            })
            .collect()
    }

    fn policy(keep_last: Option<u32>, keep_tags: &[&str], older_than_days: Option<u64>, keep_at_least: u32) -> RetentionPolicy {
        RetentionPolicy {
            keep_last,
            keep_tags: keep_tags.iter().map(|r| TagRegex::new(r).expect("regex")).collect(),
            delete_older_than: older_than_days.map(|d| Duration::from_secs(d * 86_400)),
            keep_at_least,
            ..RetentionPolicy::new("**".parse().expect("pattern"))
        }
    }

    fn deleted(p: &RetentionPolicy, t: &[TagInfo]) -> Vec<String> {
        plan(p, t, NOW).into_iter().filter(|d| d.verdict == Verdict::Delete).map(|d| d.tag.tag.to_string()).collect()
    }

    fn verdict(p: &RetentionPolicy, t: &[TagInfo], name: &str) -> Verdict {
        plan(p, t, NOW).into_iter().find(|d| d.tag.tag.as_str() == name).expect("tag").verdict
    }

    #[test]
    fn keep_last_keeps_the_newest_and_deletes_the_rest() {
        let t = tags(&[("a", 5), ("b", 1), ("c", 3), ("d", 4), ("e", 2)]);
        assert_eq!(deleted(&policy(Some(2), &[], None, 0), &t), ["c", "d", "a"], "newest first: b, e kept");
        assert_eq!(verdict(&policy(Some(2), &[], None, 0), &t, "e"), Verdict::Keep(Keep::KeepLast(2)));
    }

    #[test]
    fn delete_older_than_spares_recent_tags_and_is_strict() {
        let t = tags(&[("old", 91), ("edge", 90), ("new", 1)]);
        assert_eq!(deleted(&policy(None, &[], Some(90), 0), &t), ["old"], "a tag exactly 90 days old stays");
        assert_eq!(verdict(&policy(None, &[], Some(90), 0), &t, "new"), Verdict::Keep(Keep::Recent));
        // Both rules: a tag goes only when beyond keep_last AND older than the age.
        let t = tags(&[("t1", 200), ("t2", 150), ("t3", 100), ("t4", 10), ("t5", 5)]);
        assert_eq!(deleted(&policy(Some(1), &[], Some(120), 0), &t), ["t2", "t1"]);
        assert_eq!(deleted(&policy(Some(4), &[], Some(120), 0), &t), ["t1"]);
    }

    #[test]
    fn keep_tags_match_whole_tags_and_count_towards_keep_last() {
        let t = tags(&[("v1.2.3", 300), ("latest", 0), ("latest-rc", 200), ("v1.2", 250), ("main-abc", 100)]);
        let p = policy(Some(2), &[r"v\d+\.\d+\.\d+", "latest"], None, 0);
        assert_eq!(deleted(&p, &t), ["latest-rc", "v1.2"]);
        assert_eq!(verdict(&p, &t, "v1.2.3"), Verdict::Keep(Keep::KeepTags(r"v\d+\.\d+\.\d+".into())));
        assert_eq!(verdict(&p, &t, "latest"), Verdict::Keep(Keep::KeepTags("latest".into())));
        // keep_tags already keeps latest, which still counts as one of the 2 newest.
        assert_eq!(verdict(&p, &t, "main-abc"), Verdict::Keep(Keep::KeepLast(2)));
    }

    #[test]
    fn keep_at_least_spares_the_newest_doomed() {
        let t = tags(&[("a", 100), ("b", 200), ("c", 300)]);
        assert_eq!(deleted(&policy(None, &[], Some(30), 0), &t), ["a", "b", "c"]);
        assert_eq!(deleted(&policy(None, &[], Some(30), 1), &t), ["b", "c"]);
        assert_eq!(verdict(&policy(None, &[], Some(30), 2), &t, "b"), Verdict::Keep(Keep::KeepAtLeast(2)));
        assert!(deleted(&policy(None, &[], Some(30), 5), &t).is_empty(), "never fewer than there are");
        // Tags kept by other rules count towards it.
        let t = tags(&[("keep", 400), ("x", 100), ("y", 200)]);
        assert_eq!(deleted(&policy(None, &["keep"], Some(30), 2), &t), ["y"]);
    }

    #[test]
    fn ties_are_broken_by_name_and_empty_repositories_are_fine() {
        let t = tags(&[("b", 10), ("a", 10), ("c", 10)]);
        assert_eq!(deleted(&policy(Some(1), &[], None, 0), &t), ["b", "c"]);
        assert!(plan(&policy(Some(1), &[], None, 0), &[], NOW).is_empty());
    }

    #[test]
    fn regexes_are_anchored_and_errors_are_reported() {
        let r = TagRegex::new("latest").expect("regex");
        assert!(r.is_match(&"latest".parse().expect("tag")));
        assert!(!r.is_match(&"latest-rc".parse().expect("tag")) && !r.is_match(&"notlatest".parse().expect("tag")));
        let alt = TagRegex::new("a|b").expect("regex");
        assert!(!alt.is_match(&"ab".parse().expect("tag")), "alternatives are anchored as a group");
        assert!(TagRegex::new("v(").is_err());
    }

    #[test]
    fn rules_are_named() {
        let p = policy(Some(10), &["latest"], Some(90), 1);
        assert_eq!(p.rule(2), r#"retention.policies[2] ("**": keep_last 10, delete_older_than 90d, keep_tags ["latest"])"#);
        assert_eq!(human_duration(Duration::from_secs(36 * 3600)), "36h");
    }
}
