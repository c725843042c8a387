//! The htpasswd file: exactly what Apache's `htpasswd -B` reads and writes (`user:$2y$05$...`
//! per line), bcrypt hashes only. Comments and blank lines are kept as they were when the file
//! is rewritten, so `berth user add` does not lose an operator's notes.
//!
//! Knows nothing about caching, reloading or HTTP: that is [`crate::UserStore`]'s job.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

/// A valid hash (cost 10, the default cost of `berth user add`) of a password nobody has:
/// verifying an unknown user against it spends the same time as a real check, so response times
/// do not tell which user names exist.
const DUMMY_HASH_COST_10: &str = "$2y$10$Si8yZoORnKZGQ.M82JAj8OPTLGQg0bn2jgmZAnPumd6eXKImMxktS";

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    // Not `source`: the I/O error is part of this message already, and a chain printer would
    // print it twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("line {line}: expected user:hash")]
    Syntax { line: usize },
    #[error("line {line} (user {user:?}): {scheme} hashes are not accepted, only bcrypt ($2y$, $2b$, $2a$); set the password again with `berth user add` or `htpasswd -B`")]
    NotBcrypt { line: usize, user: String, scheme: &'static str },
    #[error("line {line}: user {user:?} appears twice")]
    Duplicate { line: usize, user: String },
    #[error("line {line}: invalid user name {user:?}")]
    InvalidUserAt { line: usize, user: String },
    #[error("invalid user name {0:?}: it must be non-empty and contain no ':', whitespace or control characters")]
    InvalidUser(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("hashing the password: {0}")]
    Hash(#[from] bcrypt::BcryptError),
}

#[derive(Clone, Debug)]
enum Line {
    Entry { user: String, hash: String },
    /// A comment or blank line, kept verbatim.
    Other(String),
}

/// The parsed file, in file order.
#[derive(Debug, Default)]
pub struct Htpasswd {
    lines: Vec<Line>,
    /// A hash at the cost most entries use, for unknown users (see [`DUMMY_HASH_COST_10`]).
    dummy: OnceLock<String>,
}

impl Clone for Htpasswd {
    fn clone(&self) -> Self {
        Htpasswd { lines: self.lines.clone(), dummy: OnceLock::new() }
    }
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && !user.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

/// Names the scheme of a hash that is not bcrypt, for the error message.
fn scheme_of(hash: &str) -> Option<&'static str> {
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return None;
    }
    Some(if hash.starts_with("$apr1$") {
        "MD5 ($apr1$)"
    } else if hash.starts_with("{SHA}") {
        "SHA-1 ({SHA})"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-crypt ($5$/$6$)"
    } else {
        "crypt or plain-text"
    })
}

impl Htpasswd {
    pub fn parse(text: &str) -> Result<Self, HtpasswdError> {
        let mut lines = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let (user, hash) = trimmed.split_once(':').ok_or(HtpasswdError::Syntax { line })?;
            if !valid_user(user) {
                return Err(HtpasswdError::InvalidUserAt { line, user: user.to_owned() });
            }
            if let Some(scheme) = scheme_of(hash) {
                return Err(HtpasswdError::NotBcrypt { line, user: user.to_owned(), scheme });
            }
            // A truncated or mangled bcrypt string would otherwise make every login fail with
            // no hint why.
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(HtpasswdError::NotBcrypt { line, user: user.to_owned(), scheme: "malformed bcrypt" });
            }
            if !seen.insert(user.to_owned()) {
                return Err(HtpasswdError::Duplicate { line, user: user.to_owned() });
            }
            lines.push(Line::Entry { user: user.to_owned(), hash: hash.to_owned() });
        }
        Ok(Htpasswd { lines, dummy: OnceLock::new() })
    }

    /// Reads and parses the file; a missing file is an error (a server told to use a user file
    /// that is not there must not start with nobody able to log in, or everybody).
    pub fn load(path: &Path) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|error| HtpasswdError::Io { path: path.to_owned(), error })?;
        Self::parse(&text)
    }

    pub(crate) fn hash_of(&self, user: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { user: u, hash } if u == user => Some(hash.as_str()),
            _ => None,
        })
    }

    /// The stored hash of `user`, or for an unknown user a hash no password matches, at the cost
    /// the file's entries use: checking against it takes as long as a real check.
    fn hash_or_dummy(&self, user: &str) -> (&str, bool) {
        match self.hash_of(user) {
            Some(h) => (h, true),
            None => (self.dummy_hash(), false),
        }
    }

    fn dummy_hash(&self) -> &str {
        self.dummy.get_or_init(|| {
            let cost = self.lines.iter().find_map(|l| match l {
                Line::Entry { hash, .. } => hash.parse::<bcrypt::HashParts>().ok().map(|p| p.get_cost()),
                Line::Other(_) => None,
            });
            match cost {
                Some(c) if c != 10 => bcrypt::hash("berth-dummy-password", c).unwrap_or_else(|_| DUMMY_HASH_COST_10.to_owned()),
                _ => DUMMY_HASH_COST_10.to_owned(),
            }
        })
    }

    /// Whether `password` is `user`'s. Runs bcrypt (tens to hundreds of milliseconds): call it
    /// off the async executor.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = self.hash_or_dummy(user);
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        ok && known
    }

    /// Sets (adds or replaces) `user`'s password, hashed with bcrypt at `cost` in the `$2y$`
    /// form `htpasswd -B` writes.
    pub fn set(&mut self, user: &str, password: &str, cost: u32) -> Result<(), HtpasswdError> {
        if !valid_user(user) {
            return Err(HtpasswdError::InvalidUser(user.to_owned()));
        }
        if password.is_empty() {
            return Err(HtpasswdError::EmptyPassword);
        }
        let hash = bcrypt::hash_with_result(password, cost)?.format_for_version(bcrypt::Version::TwoY);
        match self.lines.iter_mut().find_map(|l| match l {
            Line::Entry { user: u, hash } if u == user => Some(hash),
            _ => None,
        }) {
            Some(h) => *h = hash,
            None => self.lines.push(Line::Entry { user: user.to_owned(), hash }),
        }
        Ok(())
    }

    /// Removes `user`; false if there was no such user.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.lines.len();
        self.lines.retain(|l| !matches!(l, Line::Entry { user: u, .. } if u == user));
        self.lines.len() != before
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { user, .. } => Some(user.as_str()),
            Line::Other(_) => None,
        })
    }

    pub fn contains(&self, user: &str) -> bool {
        self.hash_of(user).is_some()
    }

    /// A short hash of `user`'s stored hash: it changes whenever the password is set again (a
    /// new salt), so a refresh token carrying it stops working after a password change.
    pub fn entry_fingerprint(&self, user: &str) -> Option<String> {
        self.hash_of(user).map(|h| hex::encode(&Sha256::digest(h.as_bytes())[..8]))
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Entry { user, hash } => {
                    let _ = writeln!(out, "{user}:{hash}");
                }
                Line::Other(text) => {
                    let _ = writeln!(out, "{text}");
                }
            }
        }
        out
    }

    /// Writes the file atomically: a temporary file in the same directory (mode 0600 on unix),
    /// fsynced, renamed over the old one, then the directory fsynced. A running server re-reading
    /// the file sees the old or the new version, never half of one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the htpasswd path names no file"))?;
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| std::io::Error::other("no randomness"))?;
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex::encode(nonce)));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let result = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            #[cfg(unix)]
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `htpasswd` from apache2-utils: `None` (skip) when it is missing, except on CI, where a
    /// missing binary fails the test rather than silently testing nothing.
    pub(crate) fn apache_htpasswd() -> Option<&'static str> {
        let found = std::process::Command::new("htpasswd").arg("-h").output().is_ok();
        if found {
            return Some("htpasswd");
        }
        assert!(std::env::var_os("CI").is_none(), "CI is set but `htpasswd` is not installed (Debian: apt-get install apache2-utils)");
        eprintln!("skipping: `htpasswd` not installed (apache2-utils)");
        None
    }

    #[test]
    fn round_trip_keeps_comments_and_order() {
        let mut h = Htpasswd::parse("# team\n\nalice:$2y$05$hXXMUYnDTe8HTJfKLZnmH.HIdgb89nhhar3d6XoYXlA6T8dE3f2xm\n").expect("parse");
        h.set("bob", "secret", 4).expect("set");
        h.set("carol", "pw2", 4).expect("set");
        let again = Htpasswd::parse(&h.to_text()).expect("reparse");
        assert_eq!(again.users().collect::<Vec<_>>(), ["alice", "bob", "carol"]);
        assert!(again.to_text().starts_with("# team\n\nalice:"));
        assert!(again.verify("alice", "p"));
        assert!(again.verify("bob", "secret"));
        assert!(!again.verify("bob", "Secret"));
        assert!(!again.verify("nobody", "secret"));
        assert!(again.to_text().contains("bob:$2y$04$"), "{}", again.to_text());

        let fp = again.entry_fingerprint("bob").expect("fp");
        let mut changed = again.clone();
        changed.set("bob", "secret", 4).expect("set");
        assert_ne!(changed.entry_fingerprint("bob").expect("fp"), fp, "a new salt changes the fingerprint");
        assert_eq!(changed.users().count(), 3, "set replaces in place");
        assert!(changed.remove("bob"));
        assert!(!changed.remove("bob"));
        assert!(!changed.contains("bob") && changed.contains("carol"));
        assert_eq!(changed.entry_fingerprint("bob"), None);
    }

    #[test]
    fn rejects_bad_files_naming_the_line() {
        let e = Htpasswd::parse("a:$2y$05$hXXMUYnDTe8HTJfKLZnmH.HIdgb89nhhar3d6XoYXlA6T8dE3f2xm\nbob:$apr1$abc$def\n").expect_err("md5");
        assert!(e.to_string().starts_with("line 2 (user \"bob\"): MD5 ($apr1$)"), "{e}");
        assert!(matches!(Htpasswd::parse("bob:{SHA}abc="), Err(HtpasswdError::NotBcrypt { line: 1, scheme: "SHA-1 ({SHA})", .. })));
        assert!(matches!(Htpasswd::parse("bob:plain"), Err(HtpasswdError::NotBcrypt { .. })));
        assert!(matches!(Htpasswd::parse("bob:$2y$05$short"), Err(HtpasswdError::NotBcrypt { scheme: "malformed bcrypt", .. })));
        assert!(matches!(Htpasswd::parse("\nno-colon\n"), Err(HtpasswdError::Syntax { line: 2 })));
        let dup = "a:$2y$05$hXXMUYnDTe8HTJfKLZnmH.HIdgb89nhhar3d6XoYXlA6T8dE3f2xm\n";
        assert!(matches!(Htpasswd::parse(&format!("{dup}{dup}")), Err(HtpasswdError::Duplicate { line: 2, .. })));
        assert!(matches!(Htpasswd::load(Path::new("/nonexistent/htpasswd")), Err(HtpasswdError::Io { .. })));
    }

    #[test]
    fn set_rejects_bad_names_and_empty_passwords() {
        let mut h = Htpasswd::default();
        for bad in ["", "a:b", "a b", "a\tb", "a\u{7}"] {
            assert!(matches!(h.set(bad, "pw", 4), Err(HtpasswdError::InvalidUser(_))), "{bad:?}");
        }
        assert!(matches!(h.set("ok", "", 4), Err(HtpasswdError::EmptyPassword)));
        assert!(matches!(h.set("ok", "pw", 2), Err(HtpasswdError::Hash(_))), "cost below bcrypt's minimum");
        assert_eq!(h.users().count(), 0);
    }

    #[test]
    fn unknown_users_are_checked_against_a_dummy_at_the_files_cost() {
        let h = Htpasswd::parse("a:$2y$05$hXXMUYnDTe8HTJfKLZnmH.HIdgb89nhhar3d6XoYXlA6T8dE3f2xm\n").expect("parse");
        let (dummy, known) = h.hash_or_dummy("nobody");
        assert!(!known);
        assert_eq!(dummy.parse::<bcrypt::HashParts>().expect("valid bcrypt").get_cost(), 5);
        assert_eq!(Htpasswd::default().hash_or_dummy("x").0, DUMMY_HASH_COST_10);
        assert!(DUMMY_HASH_COST_10.parse::<bcrypt::HashParts>().is_ok());
    }

    #[test]
    fn reads_what_apache_htpasswd_writes() {
        let Some(bin) = apache_htpasswd() else { return };
        let out = std::process::Command::new(bin).args(["-nbB", "-C", "5", "alice", "s3cret pass"]).output().expect("run htpasswd");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("utf-8");
        assert!(text.starts_with("alice:$2y$05$"), "{text}");
        let h = Htpasswd::parse(&text).expect("parse");
        assert!(h.verify("alice", "s3cret pass"));
        assert!(!h.verify("alice", "s3cret"));
    }

    #[test]
    fn apache_htpasswd_reads_what_save_writes() {
        let Some(bin) = apache_htpasswd() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        let mut h = Htpasswd::default();
        h.set("alice", "correct horse", 5).expect("set");
        h.set("bob", "battery", 5).expect("set");
        h.save(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        }
        let check = |user: &str, pw: &str| std::process::Command::new(bin).arg("-vb").arg(&path).args([user, pw]).output().expect("run htpasswd").status.success();
        assert!(check("alice", "correct horse"));
        assert!(check("bob", "battery"));
        assert!(!check("alice", "battery"), "a wrong password must be refused");
        // Saving again replaces the file; no temporary file is left behind.
        h.remove("bob");
        h.save(&path).expect("save again");
        assert!(!check("bob", "battery"));
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        assert_eq!(Htpasswd::load(&path).expect("load").users().collect::<Vec<_>>(), ["alice"]);
    }
}
