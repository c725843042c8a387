//! Access control's wiring: the `auth` settings turned into the server's [`server::Security`],
//! reading the files they name (the htpasswd file, the token signing key, an external issuer's
//! certificates or JWKS) once, at start.

use anyhow::Context;

use crate::config::{AuthMode, AuthSettings};

pub fn build(s: &AuthSettings) -> anyhow::Result<server::Security> {
    let users = match &s.mode {
        AuthMode::Basic { .. } | AuthMode::Token(_) => Some(auth::UserStore::open(&s.htpasswd).with_context(|| {
            format!("reading the users file {} (auth.htpasswd); create it with `berth user add NAME --file {}`", s.htpasswd.display(), s.htpasswd.display())
        })?),
        AuthMode::None | AuthMode::External(_) => None,
    };
    let policy = match &s.mode {
        AuthMode::None => auth::Policy::open(),
        _ => auth::Policy::new(s.admins.clone(), s.groups.clone(), s.rules.clone()),
    };
    let mode = match &s.mode {
        AuthMode::None => server::AuthMode::Open,
        AuthMode::Basic { realm } => server::AuthMode::Basic { realm: realm.clone() },
        AuthMode::Token(t) => {
            let key = auth::SigningKey::load_or_generate(&t.key).with_context(|| format!("loading the token signing key {} (auth.token.key)", t.key.display()))?;
            let issuer = auth::Issuer::new(key, t.issuer.clone(), t.service.clone(), t.lifetime, t.refresh_lifetime);
            let verifier = auth::Verifier::own(&issuer);
            server::AuthMode::Token(server::TokenService { issuer, verifier, realm: t.realm.clone(), service: t.service.clone() })
        }
        AuthMode::External(e) => {
            let verifier = auth::Verifier::external(e.issuer.clone(), e.service.clone(), e.certificates.as_deref(), e.jwks.as_deref())
                .context("loading the external token issuer's keys (auth.external)")?;
            server::AuthMode::External { verifier, realm: e.realm.clone(), service: e.service.clone() }
        }
    };
    Ok(server::Security::new(
        mode,
        policy,
        users,
        s.login_limit.map(|(n, window)| auth::LoginLimiter::new(n, window)),
        server::UploadLimits::new(s.uploads_per_user, s.uploads_total),
    ))
}
