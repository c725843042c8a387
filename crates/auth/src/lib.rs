//! Authentication and authorization for berth, as pure logic: who a caller is (htpasswd
//! passwords, Docker-style bearer tokens), what they may do to which repository (the access
//! policy), and how many wrong passwords an address or a user name may try (the login limiter).
//!
//! This crate **knows nothing about** HTTP (no request, header or status types: the server turns
//! an `Authorization` header into the calls made here and the answers into responses) or
//! configuration files (the binary reads them and hands over parsed values). The files it does
//! touch are the ones it owns: the htpasswd file and the token signing key.

mod actions;
mod htpasswd;
mod limiter;
mod policy;
mod scope;
mod token;
mod users;

pub use actions::{Action, ActionError, Actions};
pub use htpasswd::{Htpasswd, HtpasswdError};
pub use limiter::LoginLimiter;
pub use policy::{Policy, Rule};
pub use scope::{Resource, Scope, ScopeError, parse_scopes};
pub use token::{Access, Claims, Issuer, KeyError, SigningKey, TokenError, Verifier};
pub use users::UserStore;

/// Who is calling. `user: None` is the anonymous caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub method: AuthMethod,
}

/// How the caller proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Anonymous,
    Password,
    Token,
    ClientCertificate,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity { user: None, method: AuthMethod::Anonymous }
    }

    pub fn user(name: impl Into<String>, method: AuthMethod) -> Self {
        Identity { user: Some(name.into()), method }
    }
}
