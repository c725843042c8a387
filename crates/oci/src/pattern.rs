//! Glob patterns over repository names and tags, as policies (immutable tags, quotas) name them.
//!
//! `RepoPattern`: segments separated by `/`; `*` matches within one segment, a segment that is
//! exactly `**` matches any number of segments (zero included, so `team-a/**` matches `team-a`
//! itself). `TagPattern`: `*` matches any run of characters (tags contain no `/`). Both are
//! checked against the characters names and tags may contain, so a pattern that could never
//! match (upper case in a repository pattern, a space) is refused when it is parsed rather than
//! silently protecting nothing.
//!
//! This module knows nothing about SQL; [`RepoPattern::like_prefix`] only says which literal
//! text every matching name starts with, so a database can narrow a search before the exact
//! match is made here.

use std::fmt;
use std::str::FromStr;

use crate::name::{RepoName, Tag};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("{0:?}: an empty path segment (leading, trailing or doubled '/')")]
    EmptySegment(String),
    #[error("{0:?}: '**' must be a whole path segment (like team/**/app)")]
    DoubleStar(String),
    #[error("{pattern:?}: {found:?} cannot occur in a repository name (lowercase letters, digits, '.', '_', '-', '/' and the wildcard '*')")]
    RepoChar { pattern: String, found: char },
    #[error("{pattern:?}: {found:?} cannot occur in a tag (letters, digits, '.', '_', '-' and the wildcard '*')")]
    TagChar { pattern: String, found: char },
    #[error("{0:?} is longer than 255 characters")]
    TooLong(String),
}

/// A glob over repository names (see the module docs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoPattern(String);

impl RepoPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &RepoName) -> bool {
        fn parts(p: &[&str], s: &[&str]) -> bool {
            match (p.first(), s.first()) {
                (None, None) => true,
                (Some(&"**"), _) => parts(&p[1..], s) || (!s.is_empty() && parts(p, &s[1..])),
                (Some(a), Some(b)) => star_match(a.as_bytes(), b.as_bytes()) && parts(&p[1..], &s[1..]),
                _ => false,
            }
        }
        parts(&self.0.split('/').collect::<Vec<_>>(), &name.as_str().split('/').collect::<Vec<_>>())
    }

    /// Literal text every matching name starts with (possibly empty). A trailing `/` is left
    /// off, because `a/**` also matches `a`.
    pub fn like_prefix(&self) -> &str {
        let literal = &self.0[..self.0.find('*').unwrap_or(self.0.len())];
        literal.strip_suffix('/').unwrap_or(literal)
    }

    /// `Some(p)` when the pattern is exactly "`p` and everything below it" (`p/**`), or `**`
    /// (then `p` is empty): a prefix test decides it without a glob match.
    pub fn subtree(&self) -> Option<&str> {
        if self.0 == "**" {
            return Some("");
        }
        self.0.strip_suffix("/**").filter(|p| !p.contains('*'))
    }

    /// `Some(name)` when the pattern has no wildcard.
    pub fn literal(&self) -> Option<&str> {
        (!self.0.contains('*')).then_some(self.0.as_str())
    }
}

impl FromStr for RepoPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > 255 {
            return Err(PatternError::TooLong(s.chars().take(40).collect()));
        }
        for seg in s.split('/') {
            if seg.is_empty() {
                return Err(PatternError::EmptySegment(s.to_owned()));
            }
            if seg.contains("**") && seg != "**" {
                return Err(PatternError::DoubleStar(s.to_owned()));
            }
            if let Some(found) = seg.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-*".contains(*c))) {
                return Err(PatternError::RepoChar { pattern: s.to_owned(), found });
            }
        }
        Ok(RepoPattern(s.to_owned()))
    }
}

/// A glob over tags (see the module docs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagPattern(String);

impl TagPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, tag: &Tag) -> bool {
        star_match(self.0.as_bytes(), tag.as_str().as_bytes())
    }

    /// Whether a tag name read back from the database matches.
    pub fn matches_str(&self, tag: &str) -> bool {
        star_match(self.0.as_bytes(), tag.as_bytes())
    }
}

impl FromStr for TagPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > 255 {
            return Err(PatternError::TooLong(s.chars().take(40).collect()));
        }
        if let Some(found) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-*".contains(*c))) {
            return Err(PatternError::TagChar { pattern: s.to_owned(), found });
        }
        Ok(TagPattern(s.to_owned()))
    }
}

/// `*` matches any run of bytes; everything else matches itself. Iterative with one backtrack
/// point, so a pattern full of stars costs linear time, not exponential.
fn star_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

macro_rules! text_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}
text_impls!(RepoPattern);
text_impls!(TagPattern);

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RepoPattern {
        s.parse().expect("pattern")
    }
    fn name(s: &str) -> RepoName {
        s.parse().expect("name")
    }

    #[test]
    fn repository_globs() {
        assert!(rp("**").matches(&name("a/b/c")));
        assert!(rp("prod/**").matches(&name("prod/app")));
        assert!(rp("prod/**").matches(&name("prod/a/b")));
        assert!(rp("prod/**").matches(&name("prod")), "** spans zero segments too");
        assert!(!rp("prod/**").matches(&name("production/app")));
        assert!(rp("prod/*").matches(&name("prod/app")));
        assert!(!rp("prod/*").matches(&name("prod/a/b")), "* does not span a slash");
        assert!(rp("team-*/app").matches(&name("team-a/app")));
        assert!(rp("a/**/z").matches(&name("a/z")) && rp("a/**/z").matches(&name("a/b/c/z")));
        assert!(!rp("a/**/z").matches(&name("a/b/y")));
        assert!(rp("lib").matches(&name("lib")) && !rp("lib").matches(&name("lib/x")));
    }

    #[test]
    fn prefixes_for_a_database_search() {
        assert_eq!(rp("prod/**").like_prefix(), "prod");
        assert_eq!(rp("team-*/app").like_prefix(), "team-");
        assert_eq!(rp("**").like_prefix(), "");
        assert_eq!(rp("lib").like_prefix(), "lib");
        assert_eq!(rp("prod/**").subtree(), Some("prod"));
        assert_eq!(rp("**").subtree(), Some(""));
        assert_eq!(rp("a/*/**").subtree(), None);
        assert_eq!(rp("lib").literal(), Some("lib"));
    }

    #[test]
    fn tag_globs() {
        let t = |s: &str| -> Tag { s.parse().expect("tag") };
        let p = |s: &str| -> TagPattern { s.parse().expect("pattern") };
        assert!(p("v*").matches(&t("v1.2.3")));
        assert!(!p("v*").matches(&t("latest")));
        assert!(p("release-*").matches(&t("release-2024")));
        assert!(p("*-rc*").matches(&t("1.0-rc2")));
        assert!(p("*").matches(&t("x")));
        assert!(p("latest").matches(&t("latest")) && !p("latest").matches(&t("latest2")));
        assert!(!p("a*a*a*a*a*b").matches_str(&"a".repeat(100)), "linear, and false");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!("".parse::<RepoPattern>(), Err(PatternError::Empty));
        assert!(matches!("Prod/**".parse::<RepoPattern>(), Err(PatternError::RepoChar { found: 'P', .. })));
        assert!(matches!("prod/".parse::<RepoPattern>(), Err(PatternError::EmptySegment(_))));
        assert!(matches!("prod/a**".parse::<RepoPattern>(), Err(PatternError::DoubleStar(_))));
        assert!(matches!("v 1".parse::<TagPattern>(), Err(PatternError::TagChar { found: ' ', .. })));
        assert!(matches!("a/b".parse::<TagPattern>(), Err(PatternError::TagChar { found: '/', .. })));
    }
}
