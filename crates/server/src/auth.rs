//! Who is calling, and may they do what the request asks: the HTTP side of access control.
//!
//! Each request is authenticated once (basic credentials, a bearer token, a verified client
//! certificate, or nobody), then the route is mapped to what it needs (pull, push or delete on a
//! repository, the catalog, the admin API) and the decision is made here, before any handler
//! runs. The decisions themselves (htpasswd, policy rules, token claims, login limits) live in
//! the `auth` crate; this module only reads headers, picks the challenge that makes each client
//! retry the right way, and records denials.
//!
//! Challenges follow what clients do with them:
//! - `Basic realm=...` makes docker ask for `docker login` and then send credentials on every
//!   request;
//! - `Bearer realm=...,service=...,scope=...` makes docker, podman, skopeo and containerd fetch a
//!   token for exactly that scope from the realm and retry; an authenticated caller whose token
//!   lacks the scope gets `error="insufficient_scope"` with the `DENIED` code, which docker shows
//!   as "requested access to the resource is denied".

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use auth::{Action, AuthMethod, Claims, Identity, Resource};
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use oci::{ErrorCode, RepoName};

use crate::error::ApiError;

/// Access control as configured.
pub struct Security {
    pub mode: Mode,
    /// Who may do what; [`auth::Policy::open`] when nothing is configured.
    pub policy: auth::Policy,
    /// The htpasswd users (basic and token modes).
    pub users: Option<auth::UserStore>,
    /// Failed-login throttling (basic credentials on the API and at the token endpoint).
    pub limiter: Option<auth::LoginLimiter>,
    pub uploads: Arc<UploadLimits>,
    /// Where refusals are counted (`berth_auth_failures_total`), set when the router is built
    /// with metrics.
    pub(crate) metrics: std::sync::OnceLock<crate::Metrics>,
}

/// How clients prove who they are.
pub enum Mode {
    /// No authentication: everyone may do everything (the embedded default, for a laptop).
    Open,
    /// Basic credentials on every request, checked against the htpasswd file.
    Basic { realm: String },
    /// berth issues tokens at `/auth/token` (the Docker token flow) and accepts them, and basic
    /// credentials too (for curl and scripts).
    Token(TokenService),
    /// Tokens from an external issuer only (what Distribution's `auth.token` does).
    External { verifier: auth::Verifier, realm: String, service: String },
}

/// berth's own token service.
pub struct TokenService {
    pub issuer: auth::Issuer,
    pub verifier: auth::Verifier,
    /// The token endpoint's URL as clients reach it; `None`: derived from each request's `Host`.
    pub realm: Option<String>,
    pub service: String,
}

impl Security {
    pub fn new(mode: Mode, policy: auth::Policy, users: Option<auth::UserStore>, limiter: Option<auth::LoginLimiter>, uploads: UploadLimits) -> Security {
        Security { mode, policy, users, limiter, uploads: Arc::new(uploads), metrics: std::sync::OnceLock::new() }
    }

    /// No access control at all.
    pub fn open() -> Security {
        Security::new(Mode::Open, auth::Policy::open(), None, None, UploadLimits::default())
    }

    /// Count a refusal in the metrics, when there are metrics.
    pub(crate) fn count(&self, reason: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.auth_failure(reason);
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }

    /// Check basic credentials, throttled per address and user. `Err` is the response to send.
    pub(crate) async fn check_password(&self, user: &str, password: &str, addr: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(users) = &self.users else {
            return Err(ApiError::new(ErrorCode::Unauthorized, "basic authentication is not enabled"));
        };
        let addr = addr.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if let Some(limiter) = &self.limiter
            && let Err(wait) = limiter.check(addr, user, Instant::now())
        {
            tracing::warn!(target: "berth::auth", outcome = "throttled", user, address = %addr, "too many failed logins; refused without checking the password");
            self.count("throttled");
            return Err(ApiError::new(ErrorCode::TooManyRequests, "too many failed login attempts; try again later")
                .header(header::RETRY_AFTER, wait.as_secs().max(1).to_string()));
        }
        if users.verify(user, password).await {
            if let Some(limiter) = &self.limiter {
                limiter.succeeded(addr, user, Instant::now());
            }
            Ok(())
        } else {
            if let Some(limiter) = &self.limiter {
                limiter.failed(addr, user, Instant::now());
            }
            tracing::warn!(target: "berth::auth", outcome = "failed", user, address = %addr, "wrong user name or password");
            self.count("bad_credentials");
            Err(ApiError::new(ErrorCode::Unauthorized, "wrong user name or password"))
        }
    }

    /// Who is calling. `Err` is a 401/429 answer (bad credentials, a bad token, throttled).
    pub(crate) async fn authenticate(&self, headers: &HeaderMap, conn: &Conn) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::anonymous());
        }
        let authz = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        // Empty basic credentials (`:`), which some clients send when they have none, are
        // no credentials.
        let authz = authz.filter(|a| strip_scheme(a, "basic").is_none_or(|c| decode_basic(c).is_some() || !is_empty_basic(c)));
        if let Some(creds) = authz.and_then(|a| strip_scheme(a, "basic")) {
            let basic_allowed = matches!(self.mode, Mode::Basic { .. } | Mode::Token(_));
            let parsed = decode_basic(creds);
            return match parsed {
                Some((user, password)) if basic_allowed => match self.check_password(&user, &password, conn.ip).await {
                    Ok(()) => Ok(Caller { identity: Identity { user: Some(user), method: AuthMethod::Password }, claims: None }),
                    Err(e) => Err(self.challenge(e, conn, None, false)),
                },
                Some(_) => Err(self.challenge(ApiError::new(ErrorCode::Unauthorized, "this registry accepts bearer tokens only"), conn, None, false)),
                None => Err(self.challenge(ApiError::new(ErrorCode::Unauthorized, "malformed basic credentials"), conn, None, false)),
            };
        }
        if let Some(token) = authz.and_then(|a| strip_scheme(a, "bearer")) {
            let verifier = match &self.mode {
                Mode::Token(t) => &t.verifier,
                Mode::External { verifier, .. } => verifier,
                _ => return Err(self.challenge(ApiError::new(ErrorCode::Unauthorized, "this registry does not accept bearer tokens"), conn, None, false)),
            };
            return match verifier.verify(token.trim(), SystemTime::now()) {
                Ok(claims) => {
                    let user = (!claims.sub.is_empty()).then(|| claims.sub.clone());
                    Ok(Caller { identity: Identity { user, method: AuthMethod::Token }, claims: Some(claims) })
                }
                Err(e) => {
                    tracing::warn!(target: "berth::auth", outcome = "failed", address = ?conn.ip, reason = %e, "bearer token refused");
                    self.count("bad_token");
                    Err(self.challenge(ApiError::new(ErrorCode::Unauthorized, format!("invalid token: {e}")), conn, None, true))
                }
            };
        }
        if let Some(user) = &conn.client_identity {
            return Ok(Caller { identity: Identity { user: Some(user.clone()), method: AuthMethod::ClientCertificate }, claims: None });
        }
        Ok(Caller::anonymous())
    }

    /// May `caller` do `action` on `repo`?
    pub(crate) fn may(&self, caller: &Caller, repo: &RepoName, action: Action) -> bool {
        match (&self.mode, &caller.claims) {
            (Mode::Open, _) => true,
            (_, Some(claims)) => claims.allows(&Resource::Repository(repo.clone()), action),
            (_, None) => self.policy.allows(&caller.identity, repo, action),
        }
    }

    pub(crate) fn is_admin(&self, caller: &Caller) -> bool {
        self.is_open() || self.policy.is_admin(&caller.identity)
    }

    /// Decide `need` for `caller`; `Err` is the answer that makes the client authenticate, fetch
    /// a token with the right scope, or give up.
    pub(crate) fn authorize(&self, caller: &Caller, need: &Need, conn: &Conn) -> Result<(), ApiError> {
        let allowed = match need {
            _ if self.is_open() => true,
            Need::Login => caller.identity.user.is_some() || caller.claims.is_some(),
            Need::Catalog => match &self.mode {
                Mode::External { .. } => caller.claims.as_ref().is_some_and(|c| c.allows(&Resource::Catalog, Action::Pull)),
                _ => caller.identity.user.is_some() || caller.claims.is_some() || self.policy.may_list_catalog(&caller.identity),
            },
            Need::Repo(repo, action) => self.may(caller, repo, *action),
            Need::Admin => self.is_admin(caller),
        };
        if allowed {
            return Ok(());
        }
        let (what, repo, scope) = match need {
            Need::Repo(repo, action) => (action_word(*action), Some(repo), Some(scope_for(repo, *action))),
            Need::Catalog => ("catalog", None, Some("registry:catalog:*".to_owned())),
            Need::Admin => ("admin", None, None),
            Need::Login => ("login", None, None),
        };
        let user = caller.identity.user.as_deref();
        self.count("denied");
        tracing::info!(target: "berth::auth", outcome = "denied", user = user.unwrap_or("-"), address = ?conn.ip, repository = repo.map_or("-", RepoName::as_str), action = what, "access denied");
        let anonymous = user.is_none();
        let message = match repo {
            Some(r) => format!("{what} access to repository {r} is denied"),
            None if anonymous => "authentication required".to_owned(),
            None => format!("{what} access is denied"),
        };
        let bearer = matches!(self.mode, Mode::Token(_) | Mode::External { .. });
        let err = match (anonymous, bearer) {
            (true, _) => ApiError::new(ErrorCode::Unauthorized, message),
            // A token user is told to fetch a token with this scope (a 401), which docker
            // reports with the DENIED code's wording when the new token still lacks it.
            (false, true) if caller.claims.is_some() => ApiError::new(ErrorCode::InsufficientScope, message),
            (false, _) => return Err(ApiError::new(ErrorCode::Denied, message)),
        };
        Err(self.challenge(err, conn, scope.as_deref(), caller.claims.is_some() && !anonymous))
    }

    /// Attach the `WWW-Authenticate` challenge for this mode to a 401.
    fn challenge(&self, err: ApiError, conn: &Conn, scope: Option<&str>, insufficient: bool) -> ApiError {
        if !matches!(err.code, ErrorCode::Unauthorized | ErrorCode::InsufficientScope) {
            return err;
        }
        let value = match &self.mode {
            Mode::Open => return err,
            Mode::Basic { realm } => format!("Basic realm=\"{}\"", quoted(realm)),
            Mode::Token(t) => bearer(&self.realm(t, conn), &t.service, scope, insufficient),
            Mode::External { realm, service, .. } => bearer(realm, service, scope, insufficient),
        };
        err.header(header::WWW_AUTHENTICATE, value)
    }

    /// The token endpoint's URL for this request.
    pub(crate) fn realm(&self, t: &TokenService, conn: &Conn) -> String {
        if let Some(r) = &t.realm {
            return r.clone();
        }
        let scheme = if conn.tls { "https" } else { "http" };
        let host = conn.host.as_deref().unwrap_or("localhost");
        format!("{scheme}://{host}/auth/token")
    }
}

fn bearer(realm: &str, service: &str, scope: Option<&str>, insufficient: bool) -> String {
    let mut v = format!("Bearer realm=\"{}\",service=\"{}\"", quoted(realm), quoted(service));
    if let Some(s) = scope {
        v.push_str(&format!(",scope=\"{}\"", quoted(s)));
    }
    if insufficient {
        v.push_str(",error=\"insufficient_scope\"");
    }
    v
}

/// A value safe inside a quoted-string.
fn quoted(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

/// The scope docker asks for to do `action`: a push also needs pull (to check what exists).
fn scope_for(repo: &RepoName, action: Action) -> String {
    let actions = match action {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    format!("repository:{repo}:{actions}")
}

pub(crate) fn action_word(a: Action) -> &'static str {
    match a {
        Action::Pull => "pull",
        Action::Push => "push",
        Action::Delete => "delete",
    }
}

fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest.trim_start())
}

/// `user:password` from a basic credential; the password may contain `:`.
pub(crate) fn decode_basic(creds: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(creds.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

/// Whether a basic credential is the empty pair `:`.
fn is_empty_basic(creds: &str) -> bool {
    base64::engine::general_purpose::STANDARD.decode(creds.trim()).is_ok_and(|b| b == b":" || b.is_empty())
}

/// Facts about the connection the decision needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conn {
    pub ip: Option<IpAddr>,
    pub tls: bool,
    /// The verified client certificate's name (mTLS).
    pub client_identity: Option<String>,
    /// The `Host` the client addressed, for the default token realm.
    pub host: Option<String>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub identity: Identity,
    /// The verified token's claims: with a token, these and not the policy decide.
    pub claims: Option<Claims>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { identity: Identity { user: None, method: AuthMethod::Anonymous }, claims: None }
    }
}

/// What a request needs to be allowed.
#[derive(Debug)]
pub(crate) enum Need {
    /// `GET /v2/`: any authenticated caller (this is how clients discover the auth scheme).
    Login,
    Catalog,
    Repo(RepoName, Action),
    Admin,
}

/// Concurrent upload requests, per user and in total, on this node: beyond them a client gets
/// 429 with `Retry-After` instead of starving everyone else's pushes.
#[derive(Default)]
pub struct UploadLimits {
    pub per_user: Option<usize>,
    pub total: Option<usize>,
    state: Mutex<UploadCounts>,
}

#[derive(Default)]
struct UploadCounts {
    total: usize,
    per_user: HashMap<String, usize>,
}

impl UploadLimits {
    pub fn new(per_user: Option<usize>, total: Option<usize>) -> UploadLimits {
        UploadLimits { per_user, total, state: Mutex::default() }
    }

    /// Take a slot for one upload request by `user` (anonymous callers share one name), or say
    /// which limit is reached.
    pub(crate) fn acquire(self: &Arc<Self>, user: Option<&str>) -> Result<Option<UploadSlot>, ApiError> {
        if self.per_user.is_none() && self.total.is_none() {
            return Ok(None);
        }
        let user = user.unwrap_or("").to_owned();
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.total.is_some_and(|t| s.total >= t) {
            return Err(too_many("too many uploads in progress on this registry; retry shortly"));
        }
        let mine = s.per_user.get(&user).copied().unwrap_or(0);
        if self.per_user.is_some_and(|p| mine >= p) {
            return Err(too_many("too many uploads in progress for this user; retry when one finishes"));
        }
        s.total += 1;
        *s.per_user.entry(user.clone()).or_default() += 1;
        Ok(Some(UploadSlot { limits: self.clone(), user }))
    }
}

fn too_many(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::TooManyRequests, msg).header(header::RETRY_AFTER, "1")
}

/// A held upload slot, released when the request ends (however it ends).
pub(crate) struct UploadSlot {
    limits: Arc<UploadLimits>,
    user: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                s.per_user.remove(&self.user);
            }
        }
    }
}

/// The value of a header as a string, if it is one.
pub(crate) fn header_value<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok())
}
