//! The token endpoint (`/auth/token`): the Docker token authentication flow, built in.
//!
//! - `GET /auth/token?service=..&scope=..[&offline_token=true]`, with basic credentials or none
//!   (an anonymous token, carrying only what anonymous callers may do), answers
//!   `{token, access_token, expires_in, issued_at[, refresh_token]}`. This is what
//!   `docker login` and every pull and push do after a `Bearer` challenge.
//! - `POST /auth/token` with a form (`grant_type=password` or `grant_type=refresh_token`), the
//!   OAuth2 form docker uses once it holds a refresh token (its "identity token"), answers
//!   `{access_token, expires_in, issued_at, scope[, refresh_token]}`.
//!
//! The token carries, per requested scope, the actions the policy grants the caller there (the
//! intersection; possibly none, which is not an error: the registry then refuses the request
//! with a challenge). Nothing here knows how a token is signed: that is the `auth` crate.

use std::time::SystemTime;

use auth::Identity;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use oci::ErrorCode;
use serde_json::json;

use crate::App;
use crate::auth::{Mode, TokenService, decode_basic};
use crate::error::ApiError;
use crate::handlers::Query;

/// A token request's form is small; anything larger is not one.
const MAX_FORM: usize = 64 * 1024;

pub(crate) async fn endpoint(State(app): State<App>, req: Request) -> Response {
    let conn = crate::conn_of(&req);
    let result = match &app.security.mode {
        Mode::Token(t) => match *req.method() {
            Method::GET => get(&app, t, &conn, req).await,
            Method::POST => post(&app, t, &conn, req).await,
            _ => Err(ApiError::new(ErrorCode::Unsupported, "the token endpoint takes GET and POST")),
        },
        _ => Err(ApiError::new(ErrorCode::NotFound, "this registry does not issue tokens")),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn get(app: &App, t: &TokenService, conn: &crate::auth::Conn, req: Request) -> Result<Response, ApiError> {
    let query = Query::parse(req.uri().query())?;
    check_service(t, query.get("service"))?;
    let creds = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|a| a.split_once(' ')).filter(|(s, _)| s.eq_ignore_ascii_case("basic"));
    let user = match creds {
        Some((_, c)) => {
            let (user, password) = decode_basic(c).ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "malformed basic credentials"))?;
            login(app, conn, &user, &password).await?;
            Some(user)
        }
        None => None,
    };
    let scopes = auth::parse_scopes(query.all("scope"));
    let offline = query.get("offline_token").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let refresh = match (&user, offline) {
        (Some(u), true) => Some(refresh_token(app, t, u)?),
        _ => None,
    };
    let (token, expires_in, _) = issue(app, t, user.as_deref(), &scopes)?;
    let mut body = json!({ "token": token, "access_token": token, "expires_in": expires_in, "issued_at": now_rfc3339() });
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r);
    }
    Ok(axum::Json(body).into_response())
}

async fn post(app: &App, t: &TokenService, conn: &crate::auth::Conn, req: Request) -> Result<Response, ApiError> {
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unsupported, "the token request form is too large or was not received"))?
        .to_bytes();
    let form: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&bytes).map_err(|e| ApiError::new(ErrorCode::Unsupported, format!("malformed token request form: {e}")))?;
    let get = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    check_service(t, get("service"))?;
    let user = match get("grant_type") {
        Some("password") => {
            let (user, password) = (get("username").unwrap_or(""), get("password").unwrap_or(""));
            login(app, conn, user, password).await?;
            user.to_owned()
        }
        Some("refresh_token") => {
            let token = get("refresh_token").unwrap_or("");
            let refused = |why: &str| {
                tracing::warn!(target: "berth::auth", outcome = "failed", address = ?conn.ip, reason = why, "refresh token refused");
                app.security.count("bad_token");
                ApiError::new(ErrorCode::Unauthorized, format!("invalid refresh token: {why}"))
            };
            let (user, fingerprint) = t.issuer.check_refresh_token(token, SystemTime::now()).map_err(|e| refused(&e.to_string()))?;
            let current = app.security.users.as_ref().and_then(|u| u.fingerprint(&user));
            if current.as_deref() != Some(fingerprint.as_str()) {
                return Err(refused("the user was removed or changed password"));
            }
            app.registry.record_access_event("login", None, Some(&user));
            user
        }
        other => {
            return Err(ApiError::new(ErrorCode::Unsupported, format!("unsupported grant_type {:?} (password and refresh_token are)", other.unwrap_or(""))));
        }
    };
    let scopes = auth::parse_scopes(get("scope").into_iter());
    let (token, expires_in, granted) = issue(app, t, Some(&user), &scopes)?;
    let mut body = json!({ "access_token": token, "expires_in": expires_in, "issued_at": now_rfc3339(), "scope": granted });
    if get("access_type") == Some("offline") || get("grant_type") == Some("refresh_token") {
        body["refresh_token"] = json!(refresh_token(app, t, &user)?);
    }
    Ok(axum::Json(body).into_response())
}

/// Check a password at the token endpoint, recording the login (or its failure).
async fn login(app: &App, conn: &crate::auth::Conn, user: &str, password: &str) -> Result<(), ApiError> {
    match app.security.check_password(user, password, conn.ip).await {
        Ok(()) => {
            tracing::info!(target: "berth::auth", outcome = "login", user, address = ?conn.ip, "token login");
            app.registry.record_access_event("login", None, Some(user));
            Ok(())
        }
        Err(e) => {
            app.registry.record_access_event("login_failed", None, Some(user));
            Err(e)
        }
    }
}

fn refresh_token(app: &App, t: &TokenService, user: &str) -> Result<String, ApiError> {
    let fingerprint = app
        .security
        .users
        .as_ref()
        .and_then(|u| u.fingerprint(user))
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "no such user"))?;
    t.issuer.refresh_token(user, &fingerprint, SystemTime::now()).map_err(signing_failed)
}

/// Signing only fails on a broken key: a server fault, logged, not the client's.
fn signing_failed(e: auth::TokenError) -> ApiError {
    tracing::error!(target: "berth::auth", error = %e, "could not sign a token");
    ApiError::new(ErrorCode::Unknown, "could not sign a token")
}

/// A client that names another service is talking to the wrong token server.
fn check_service(t: &TokenService, asked: Option<&str>) -> Result<(), ApiError> {
    match asked {
        Some(s) if s != t.service => Err(ApiError::new(ErrorCode::Denied, format!("this token service issues tokens for {:?}, not {s:?}", t.service))),
        _ => Ok(()),
    }
}

/// Sign a token granting, per scope, what the policy allows `user` there. Returns the token,
/// its lifetime in seconds and the granted scopes as a space-separated string.
fn issue(app: &App, t: &TokenService, user: Option<&str>, scopes: &[auth::Scope]) -> Result<(String, u64, String), ApiError> {
    let identity = match user {
        Some(u) => Identity::user(u, auth::AuthMethod::Password),
        None => Identity::anonymous(),
    };
    let access = app.security.policy.grant(&identity, scopes);
    let granted = access.iter().map(|a| format!("{}:{}:{}", a.typ, a.name, a.actions.join(","))).collect::<Vec<_>>().join(" ");
    tracing::info!(target: "berth::auth", outcome = "token", user = user.unwrap_or("-"), requested = scopes.len(), granted = %granted, "token issued");
    let (token, lifetime) = t.issuer.access_token(user, access, SystemTime::now()).map_err(signing_failed)?;
    Ok((token, lifetime.as_secs(), granted))
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    registry::time::rfc3339_ms(ms)
}
