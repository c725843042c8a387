//! The `auth` section (who may do what) and `uploads.max_concurrent*` (F5, F6, F13), resolved
//! into [`AuthSettings`] with every problem named by its key path (`auth.rules[2].actions`).
//!
//! Resolving checks the shape only; the files it names (htpasswd, signing key, certificates)
//! are read when the server starts (`security::build`), because `berth user add` may create
//! the htpasswd file after the config is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{ConfigError, duration_value, err};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `none` (the default), `basic`, `token` or `external`.
    pub mode: Option<String>,
    pub htpasswd: Option<PathBuf>,
    /// The realm named in basic challenges.
    pub realm: Option<String>,
    #[serde(default)]
    pub token: RawToken,
    #[serde(default)]
    pub external: RawExternal,
    #[serde(default)]
    pub admins: Vec<String>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    pub rules: Option<Vec<RawRule>>,
    #[serde(default)]
    pub login_limit: RawLoginLimit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub realm: Option<String>,
    pub service: Option<String>,
    pub issuer: Option<String>,
    pub key: Option<PathBuf>,
    pub lifetime: Option<Value>,
    pub refresh_lifetime: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternal {
    pub realm: Option<String>,
    pub service: Option<String>,
    pub issuer: Option<String>,
    pub certificates: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub repositories: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub anonymous: Option<bool>,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoginLimit {
    /// Failed logins allowed per address and per user within `window` (0: no limit).
    pub failures: Option<u32>,
    pub window: Option<Value>,
}

/// How clients authenticate, with the file paths still to be read.
#[derive(Debug, Clone)]
pub enum AuthMode {
    None,
    Basic { realm: String },
    Token(TokenSettings),
    External(ExternalSettings),
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub realm: Option<String>,
    pub service: String,
    pub issuer: String,
    /// The signing key (PEM); created (P-256) on first start when missing.
    pub key: PathBuf,
    pub lifetime: Duration,
    pub refresh_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct ExternalSettings {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub certificates: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
}

/// The resolved `auth` section.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// The users file (basic and token modes; also `berth user`'s default file).
    pub htpasswd: PathBuf,
    pub admins: Vec<String>,
    pub groups: BTreeMap<String, Vec<String>>,
    /// `None`: no rules configured (every authenticated user may do everything).
    pub rules: Option<Vec<auth::Rule>>,
    /// `(failures, window)`; `None`: no throttling.
    pub login_limit: Option<(u32, Duration)>,
    pub uploads_per_user: Option<usize>,
    pub uploads_total: Option<usize>,
}

impl AuthSettings {
    pub fn enabled(&self) -> bool {
        !matches!(self.mode, AuthMode::None)
    }
}

fn dur(path: &str, v: Option<Value>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => duration_value(&v).ok_or_else(|| err(path, format!("{v} is not a duration like 5m, 1h or a number of seconds"))),
    }
}

fn url(path: &str, s: String) -> Result<String, ConfigError> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s)
    } else {
        Err(err(path, format!("{s:?} must be an http:// or https:// URL")))
    }
}

pub(super) fn resolve(raw: RawAuth, data_dir: &Path, uploads_per_user: Option<u64>, uploads_total: Option<u64>) -> Result<AuthSettings, ConfigError> {
    let htpasswd = raw.htpasswd.unwrap_or_else(|| data_dir.join("htpasswd"));
    let mode = match raw.mode.as_deref().unwrap_or("none") {
        "none" => AuthMode::None,
        "basic" => AuthMode::Basic { realm: raw.realm.unwrap_or_else(|| "berth".to_owned()) },
        "token" => {
            let t = raw.token;
            let lifetime = dur("auth.token.lifetime", t.lifetime, Duration::from_secs(300))?;
            if lifetime < Duration::from_secs(30) || lifetime > Duration::from_secs(86_400) {
                return Err(err("auth.token.lifetime", "must be between 30s and 24h (docker asks for a new token when one expires)"));
            }
            let refresh_lifetime = dur("auth.token.refresh_lifetime", t.refresh_lifetime, Duration::from_secs(30 * 86_400))?;
            if refresh_lifetime < lifetime {
                return Err(err("auth.token.refresh_lifetime", "must be at least auth.token.lifetime"));
            }
            AuthMode::Token(TokenSettings {
                realm: t.realm.map(|r| url("auth.token.realm", r)).transpose()?,
                service: t.service.unwrap_or_else(|| "berth".to_owned()),
                issuer: t.issuer.unwrap_or_else(|| "berth".to_owned()),
                key: t.key.unwrap_or_else(|| data_dir.join("token-key.pem")),
                lifetime,
                refresh_lifetime,
            })
        }
        "external" => {
            let e = raw.external;
            let need = |k: &str, v: Option<String>| v.filter(|s| !s.is_empty()).ok_or_else(|| err(&format!("auth.external.{k}"), "required in external mode"));
            if e.certificates.is_none() && e.jwks.is_none() {
                return Err(err("auth.external", "needs certificates (a PEM bundle) or jwks (a JWKS file) to verify tokens with"));
            }
            AuthMode::External(ExternalSettings {
                realm: url("auth.external.realm", need("realm", e.realm)?)?,
                service: need("service", e.service)?,
                issuer: need("issuer", e.issuer)?,
                certificates: e.certificates,
                jwks: e.jwks,
            })
        }
        other => return Err(err("auth.mode", format!("{other:?} must be none, basic, token or external"))),
    };
    for (name, members) in &raw.groups {
        if members.iter().any(String::is_empty) {
            return Err(err(&format!("auth.groups.{name}"), "member names must not be empty"));
        }
    }
    let rules = match raw.rules {
        None => None,
        Some(rules) => {
            let mut out = Vec::new();
            for (i, r) in rules.into_iter().enumerate() {
                let at = |k: &str| format!("auth.rules[{i}].{k}");
                let text = r.repositories.ok_or_else(|| err(&at("repositories"), "every rule needs a repository pattern (\"**\" for all)"))?;
                let repositories = text.parse().map_err(|e: oci::PatternError| err(&at("repositories"), e.to_string()))?;
                for a in &r.actions {
                    if !["pull", "push", "delete", "*"].contains(&a.as_str()) {
                        return Err(err(&at("actions"), format!("{a:?} is not one of pull, push, delete, *")));
                    }
                }
                if r.actions.is_empty() {
                    return Err(err(&at("actions"), "every rule grants at least one action (pull, push, delete or *)"));
                }
                for g in &r.groups {
                    if !raw.groups.contains_key(g) {
                        return Err(err(&at("groups"), format!("group {g:?} is not defined under auth.groups")));
                    }
                }
                let anonymous = r.anonymous.unwrap_or(false);
                if r.users.is_empty() && r.groups.is_empty() && !anonymous {
                    return Err(err(&at("users"), "the rule names nobody: give users (\"*\" for every signed-in user), groups, or anonymous: true"));
                }
                if anonymous && r.actions.iter().any(|a| a != "pull") {
                    return Err(err(&at("actions"), "anonymous callers may only be granted pull"));
                }
                let actions = auth::Actions::parse(r.actions.iter().map(String::as_str)).map_err(|e| err(&at("actions"), e.to_string()))?;
                out.push(auth::Rule { repositories, users: r.users, groups: r.groups, anonymous, actions });
            }
            Some(out)
        }
    };
    let login_limit = match raw.login_limit.failures.unwrap_or(5) {
        0 => None,
        n => Some((n, dur("auth.login_limit.window", raw.login_limit.window, Duration::from_secs(300))?)),
    };
    let count = |path: &str, v: Option<u64>| -> Result<Option<usize>, ConfigError> {
        match v {
            None | Some(0) => Ok(None),
            Some(n) => usize::try_from(n).map(Some).map_err(|_| err(path, "too large")),
        }
    };
    Ok(AuthSettings {
        mode,
        htpasswd,
        admins: raw.admins,
        groups: raw.groups,
        rules,
        login_limit,
        uploads_per_user: count("uploads.max_concurrent_per_user", uploads_per_user)?,
        uploads_total: count("uploads.max_concurrent", uploads_total)?,
    })
}
