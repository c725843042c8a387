//! Docker token authentication (<https://distribution.github.io/distribution/spec/auth/jwt/>,
//! `/token/`, `/oauth/`): issuing access tokens (JWTs with an `access` claim) and refresh tokens,
//! and verifying access tokens, ours or an external issuer's.
//!
//! Verification trusts nothing in a token before its signature is checked, and checks it with
//! the algorithm the key is for (found by `kid` or `x5c`), never the one the header names alone.
//! Knows nothing about HTTP or which scopes a caller may have (that is [`crate::Policy`]).

mod keys;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Header, Validation};
use oci::RepoName;
use serde::{Deserialize, Serialize};

use crate::actions::{Action, Actions};
use crate::scope::Resource;
pub use keys::{KeyError, SigningKey};
use keys::{PublicKey, keys_from_certificates, keys_from_jwks};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY: u64 = 30;

/// One element of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub typ: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

impl Access {
    pub fn repository(name: &RepoName, actions: Actions) -> Self {
        Access { typ: "repository".into(), name: name.as_str().to_owned(), actions: actions.words() }
    }

    /// `registry:catalog:*`.
    pub fn catalog() -> Self {
        Access { typ: "registry".into(), name: "catalog".into(), actions: vec!["*".into()] }
    }
}

/// The claims of a verified access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user; empty for an anonymous caller's token.
    pub sub: String,
    /// The audience (the registry's service name). A verified token whose `aud` was a list
    /// holds here the entry that matched.
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<Access>,
}

impl Claims {
    /// Whether the token grants `action` on `resource`. For [`Resource::Catalog`] the action is
    /// ignored: `registry:catalog:*` grants the listing.
    pub fn allows(&self, resource: &Resource, action: Action) -> bool {
        self.access.iter().any(|a| match resource {
            Resource::Repository(name) => a.typ == "repository" && a.name == name.as_str() && a.actions.iter().any(|w| w == "*" || w == action.as_str()),
            Resource::Catalog => a.typ == "registry" && a.name == "catalog" && a.actions.iter().any(|w| w == "*"),
        })
    }

    /// The user, `None` for an anonymous token.
    pub fn user(&self) -> Option<&str> {
        (!self.sub.is_empty()).then_some(self.sub.as_str())
    }
}

/// Why a token was refused. The messages are safe to send to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not trusted")]
    WrongIssuer,
    #[error("token is for another service")]
    WrongAudience,
    #[error("a refresh token cannot be used as an access token")]
    NotAnAccessToken,
    #[error("not a refresh token")]
    NotARefreshToken,
    #[error("token algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    #[error("signing the token failed")]
    Signing,
}

/// The claims of a refresh token. `berth_refresh` (the user's htpasswd fingerprint) marks it:
/// a token with it is never an access token, one without it never a refresh token.
#[derive(Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    berth_refresh: String,
}

/// What is read of any token before deciding what it is.
#[derive(Deserialize)]
struct RawClaims {
    iss: String,
    #[serde(default)]
    sub: String,
    aud: Audience,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    access: Vec<Access>,
    #[serde(default)]
    berth_refresh: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn new_jti() -> String {
    let mut b = [0u8; 16];
    // A failing system RNG leaves zeros: the id only needs to be unique for logs.
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// Issues berth's tokens.
pub struct Issuer {
    key: SigningKey,
    issuer: String,
    service: String,
    lifetime: Duration,
    refresh_lifetime: Duration,
}

impl Issuer {
    /// `issuer` is the `iss` of every token, `service` its `aud` (the registry's service name,
    /// which clients send back as the `service` parameter).
    pub fn new(key: SigningKey, issuer: String, service: String, lifetime: Duration, refresh_lifetime: Duration) -> Self {
        Issuer { key, issuer, service, lifetime, refresh_lifetime }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    fn header(&self) -> Header {
        let mut h = Header::new(self.key.algorithm());
        h.kid = Some(self.key.kid().to_owned());
        h
    }

    /// An access token for `subject` (`None`: anonymous) holding `access`, and its lifetime
    /// (the `expires_in` of the token response).
    pub fn access_token(&self, subject: Option<&str>, access: Vec<Access>, now: SystemTime) -> Result<(String, Duration), TokenError> {
        let iat = secs(now);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.unwrap_or_default().to_owned(),
            aud: self.service.clone(),
            exp: iat + self.lifetime.as_secs(),
            nbf: iat,
            iat,
            jti: new_jti(),
            access,
        };
        let jwt = jsonwebtoken::encode(&self.header(), &claims, self.key.encoding()).map_err(|_| TokenError::Signing)?;
        Ok((jwt, self.lifetime))
    }

    /// A refresh token (docker's `offline_token`, OAuth2's `refresh_token`) for `user`, carrying
    /// their htpasswd `fingerprint`: the token endpoint compares it with the current one, so a
    /// password change revokes every refresh token issued before it.
    pub fn refresh_token(&self, user: &str, fingerprint: &str, now: SystemTime) -> Result<String, TokenError> {
        let iat = secs(now);
        let claims = RefreshClaims {
            iss: self.issuer.clone(),
            sub: user.to_owned(),
            aud: self.service.clone(),
            exp: iat + self.refresh_lifetime.as_secs(),
            nbf: iat,
            iat,
            jti: new_jti(),
            berth_refresh: fingerprint.to_owned(),
        };
        jsonwebtoken::encode(&self.header(), &claims, self.key.encoding()).map_err(|_| TokenError::Signing)
    }

    /// Checks a refresh token (signature, issuer, audience, times) and returns its user and
    /// fingerprint. The caller must compare the fingerprint with the user's current one.
    pub fn check_refresh_token(&self, token: &str, now: SystemTime) -> Result<(String, String), TokenError> {
        let source = Source::own(self);
        let raw = source.check(token, now)?;
        let fingerprint = raw.berth_refresh.ok_or(TokenError::NotARefreshToken)?;
        if raw.sub.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok((raw.sub, fingerprint))
    }
}

/// One trusted issuer: its name, the audience its tokens must name, its keys.
struct Source {
    issuer: String,
    audience: String,
    keys: Vec<PublicKey>,
    /// DER of each bundle certificate with the index of its key, to match an `x5c` header.
    certificates: Vec<(Vec<u8>, usize)>,
}

impl Source {
    fn own(issuer: &Issuer) -> Self {
        Source { issuer: issuer.issuer.clone(), audience: issuer.service.clone(), keys: vec![issuer.key.public().clone()], certificates: Vec::new() }
    }

    fn key_for(&self, header: &HeaderView) -> Option<&PublicKey> {
        if let Some(kid) = &header.kid {
            return self.keys.iter().find(|k| &k.kid == kid);
        }
        // No kid: the leaf of an `x5c` chain must be one of the bundle's certificates.
        let leaf = STANDARD.decode(header.x5c.as_ref()?.first()?).ok()?;
        self.certificates.iter().find(|(der, _)| *der == leaf).map(|(_, i)| &self.keys[*i])
    }

    /// Signature, issuer, audience and times; not what kind of token it is.
    fn check(&self, token: &str, now: SystemTime) -> Result<RawClaims, TokenError> {
        let header = HeaderView::parse(token)?;
        let key = self.key_for(&header).ok_or(TokenError::UnknownKey)?;
        verify_with(token, &header, key, &self.issuer, &self.audience, now)
    }
}

/// The header fields read before the signature is checked, parsed leniently so that an
/// unknown algorithm gets a clear error rather than "malformed".
#[derive(Deserialize)]
struct HeaderView {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

impl HeaderView {
    fn parse(token: &str) -> Result<Self, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
    }

    fn algorithm(&self) -> Result<Algorithm, TokenError> {
        match self.alg.as_str() {
            "ES256" => Ok(Algorithm::ES256),
            "RS256" => Ok(Algorithm::RS256),
            "RS384" => Ok(Algorithm::RS384),
            "RS512" => Ok(Algorithm::RS512),
            other => Err(TokenError::UnsupportedAlgorithm(other.chars().take(16).collect())),
        }
    }
}

fn verify_with(token: &str, header: &HeaderView, key: &PublicKey, issuer: &str, audience: &str, now: SystemTime) -> Result<RawClaims, TokenError> {
    let alg = header.algorithm()?;
    if !key.kind.allows(alg) {
        return Err(TokenError::UnsupportedAlgorithm(header.alg.clone()));
    }
    // jsonwebtoken checks only the signature (with exactly this algorithm); times, issuer and
    // audience are checked below against the caller's clock.
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<RawClaims>(token, &key.key, &v).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::UnsupportedAlgorithm(header.alg.clone()),
        _ => TokenError::Malformed,
    })?;
    let raw = data.claims;
    if raw.iss != issuer {
        return Err(TokenError::WrongIssuer);
    }
    let aud_ok = match &raw.aud {
        Audience::One(a) => a == audience,
        Audience::Many(list) => list.iter().any(|a| a == audience),
    };
    if !aud_ok {
        return Err(TokenError::WrongAudience);
    }
    let now = secs(now);
    if (raw.exp as u64).saturating_add(LEEWAY) < now {
        return Err(TokenError::Expired);
    }
    if raw.nbf.is_some_and(|nbf| nbf as u64 > now.saturating_add(LEEWAY)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(raw)
}

/// Verifies access tokens: berth's own (with the issuer's public key), an external issuer's, or
/// both ([`Verifier::or`]).
pub struct Verifier {
    sources: Vec<Source>,
}

impl Verifier {
    pub fn own(issuer: &Issuer) -> Self {
        Verifier { sources: vec![Source::own(issuer)] }
    }

    /// An external issuer's tokens, which must name `issuer` and `audience`. Keys come from a PEM
    /// certificate bundle (matched by the libtrust `kid` of each certificate's key, or by an
    /// `x5c` header whose first certificate is byte-for-byte one of the bundle's: the bundle lists
    /// the trusted signing certificates, no chain is built) and/or a JWKS file (matched by `kid`).
    pub fn external(issuer: String, audience: String, certificates: Option<&Path>, jwks: Option<&Path>) -> Result<Self, KeyError> {
        let read = |p: &Path| std::fs::read(p).map_err(|error| KeyError::Io { path: p.to_owned(), error });
        let mut source = Source { issuer, audience, keys: Vec::new(), certificates: Vec::new() };
        if let Some(p) = certificates {
            for (der, key) in keys_from_certificates(&p.display().to_string(), &read(p)?)? {
                source.certificates.push((der, source.keys.len()));
                source.keys.push(key);
            }
        }
        if let Some(p) = jwks {
            source.keys.extend(keys_from_jwks(&p.display().to_string(), &read(p)?)?);
        }
        if source.keys.is_empty() {
            return Err(KeyError::NoKeys("token verification: neither a certificate bundle nor a JWKS file".into()));
        }
        Ok(Verifier { sources: vec![source] })
    }

    /// Accepts the tokens of either verifier.
    #[must_use]
    pub fn or(mut self, other: Verifier) -> Self {
        self.sources.extend(other.sources);
        self
    }

    /// Checks an access token and returns its claims.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let header = HeaderView::parse(token)?;
        // Reject a non-asymmetric algorithm before looking for keys, so `none` and HS256 are
        // named as such whatever their kid.
        header.algorithm()?;
        let (source, key) = self.sources.iter().find_map(|s| s.key_for(&header).map(|k| (s, k))).ok_or(TokenError::UnknownKey)?;
        let raw = verify_with(token, &header, key, &source.issuer, &source.audience, now)?;
        if raw.berth_refresh.is_some() {
            return Err(TokenError::NotAnAccessToken);
        }
        let to_u64 = |f: Option<f64>| f.map_or(0, |v| v as u64);
        Ok(Claims {
            iss: raw.iss,
            sub: raw.sub,
            aud: source.audience.clone(),
            exp: raw.exp as u64,
            nbf: to_u64(raw.nbf),
            iat: to_u64(raw.iat),
            jti: raw.jti,
            access: raw.access,
        })
    }
}
