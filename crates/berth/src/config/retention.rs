//! The `retention` section: when retention runs and its policies, parsed into
//! `registry::RetentionConfig` with every problem named by its key path
//! (`retention.policies[0].keep_tags[1]`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{ConfigError, duration_value, err};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// How often retention runs in the background (absent or 0: only `berth retention run`).
    pub schedule: Option<Value>,
    #[serde(default)]
    pub policies: Vec<RawRetentionPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetentionPolicy {
    pub repositories: Option<String>,
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    pub delete_older_than: Option<Value>,
    pub keep_at_least: Option<u32>,
    pub delete_untagged: Option<bool>,
}

/// Background runs more often than this would only repeat the same decisions.
const MIN_SCHEDULE: Duration = Duration::from_secs(60);

pub(super) fn resolve(raw: RawRetention) -> Result<registry::RetentionConfig, ConfigError> {
    let schedule = match raw.schedule {
        None => None,
        Some(v) => {
            let d = duration_value(&v).ok_or_else(|| err("retention.schedule", format!("{v} is not a duration like 24h, 30m or a number of seconds")))?;
            if !d.is_zero() && d < MIN_SCHEDULE {
                return Err(err("retention.schedule", "must be 0 (off) or at least 1m"));
            }
            (!d.is_zero()).then_some(d)
        }
    };
    let mut policies = Vec::new();
    for (i, p) in raw.policies.into_iter().enumerate() {
        let at = |k: &str| format!("retention.policies[{i}].{k}");
        let text = p.repositories.ok_or_else(|| err(&at("repositories"), "every policy needs a repository pattern (\"**\" for all)"))?;
        let repositories: oci::RepoPattern = text.parse().map_err(|e: oci::PatternError| err(&at("repositories"), e.to_string()))?;
        let keep_tags = p
            .keep_tags
            .iter()
            .enumerate()
            .map(|(j, re)| registry::TagRegex::new(re).map_err(|e| err(&at(&format!("keep_tags[{j}]")), format!("{re:?} is not a regular expression: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let delete_older_than = match p.delete_older_than {
            None => None,
            Some(v) => {
                let d = duration_value(&v).ok_or_else(|| err(&at("delete_older_than"), format!("{v} is not a duration like 90d or 12h")))?;
                if d.is_zero() {
                    return Err(err(&at("delete_older_than"), "must be above zero"));
                }
                Some(d)
            }
        };
        if p.keep_last.is_none() && delete_older_than.is_none() {
            // Otherwise every tag keep_tags does not name would go on the first run.
            return Err(err(&format!("retention.policies[{i}]"), "needs keep_last or delete_older_than (or both)"));
        }
        policies.push(registry::RetentionPolicy {
            repositories,
            keep_last: p.keep_last,
            keep_tags,
            delete_older_than,
            keep_at_least: p.keep_at_least.unwrap_or(1),
            delete_untagged: p.delete_untagged.unwrap_or(true),
        });
    }
    Ok(registry::RetentionConfig { schedule, policies })
}

#[cfg(test)]
mod tests {
    use super::super::{RawConfig, apply_env};
    use super::*;

    fn resolve_yaml(yaml: &str) -> Result<registry::RetentionConfig, ConfigError> {
        let tree: Value = serde_saphyr::from_str(yaml).expect("yaml");
        RawConfig::from_tree(tree).and_then(RawConfig::resolve).map(|c| c.retention)
    }

    #[test]
    fn retention_settings() {
        let c = resolve_yaml(
            r#"
retention:
  schedule: 24h
  policies:
    - repositories: "apps/**"
      keep_last: 10
      keep_tags: ['^v\d+\.\d+\.\d+$', latest]
      delete_older_than: 90d
      keep_at_least: 2
    - repositories: "**"
      delete_older_than: 30d
      delete_untagged: false
"#,
        )
        .expect("valid");
        assert_eq!(c.schedule, Some(Duration::from_secs(86_400)));
        let p = &c.policies[0];
        assert_eq!((p.repositories.as_str(), p.keep_last, p.keep_at_least, p.delete_untagged), ("apps/**", Some(10), 2, true));
        assert_eq!(p.keep_tags.iter().map(registry::TagRegex::as_str).collect::<Vec<_>>(), [r"^v\d+\.\d+\.\d+$", "latest"]);
        assert_eq!(p.delete_older_than, Some(Duration::from_secs(90 * 86_400)));
        let p = &c.policies[1];
        assert_eq!((p.keep_last, p.keep_at_least, p.delete_untagged), (None, 1, false), "defaults");
        // Absent or 0: no background runs.
        assert_eq!(resolve_yaml("{}").expect("valid").schedule, None);
        assert!(resolve_yaml("{}").expect("valid").policies.is_empty());
        assert_eq!(resolve_yaml("retention: {schedule: 0}").expect("valid").schedule, None);
        assert_eq!(resolve_yaml("retention: {schedule: 0s}").expect("valid").schedule, None);
    }

    #[test]
    fn retention_errors_name_their_key() {
        // Unknown keys.
        for (yaml, path) in [
            ("retention: {every: 1h}", "retention.every"),
            ("retention: {policies: [{repositories: a, keep_last: 1, keep_newest: 3}]}", "retention.policies[0].keep_newest"),
            ("retention: {policies: [{repositories: a, keep_last: many}]}", "retention.policies[0].keep_last"),
        ] {
            let e = resolve_yaml(yaml).expect_err(yaml);
            assert_eq!(e.path, path, "{yaml}: {e}");
        }
        // Bad values.
        for (yaml, path, says) in [
            ("retention: {policies: [{repositories: a, keep_last: 1, keep_tags: [latest, 'v(']}]}", "retention.policies[0].keep_tags[1]", "not a regular expression"),
            ("retention: {policies: [{keep_last: 1}]}", "retention.policies[0].repositories", "pattern"),
            ("retention: {policies: [{repositories: Apps/**, keep_last: 1}]}", "retention.policies[0].repositories", "'A'"),
            ("retention: {policies: [{repositories: a, keep_last: 1}, {repositories: b}]}", "retention.policies[1]", "keep_last or delete_older_than"),
            ("retention: {policies: [{repositories: a, delete_older_than: soon}]}", "retention.policies[0].delete_older_than", "soon"),
            ("retention: {policies: [{repositories: a, delete_older_than: 0s}]}", "retention.policies[0].delete_older_than", "above zero"),
            ("retention: {schedule: 10s}", "retention.schedule", "at least 1m"),
            ("retention: {schedule: daily}", "retention.schedule", "daily"),
        ] {
            let e = resolve_yaml(yaml).expect_err(yaml);
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn retention_from_the_environment() {
        let mut t: Value = serde_saphyr::from_str("{}").expect("yaml");
        apply_env(
            &mut t,
            [
                ("BERTH_RETENTION__SCHEDULE".to_string(), "12h".to_string()),
                ("BERTH_RETENTION__POLICIES".to_string(), r#"[{repositories: "ci/**", keep_last: 5}]"#.to_string()),
            ],
        )
        .expect("env");
        let c = RawConfig::from_tree(t).and_then(RawConfig::resolve).expect("valid").retention;
        assert_eq!((c.schedule, c.policies.len(), c.policies[0].keep_last), (Some(Duration::from_secs(12 * 3600)), 1, Some(5)));
    }
}
