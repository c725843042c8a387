//! Access control through the router: basic and token modes, the policy on every route, the
//! token endpoint (GET, POST with password and refresh grants), catalog filtering, mounts that
//! need pull on their source, failed-login throttling and upload limits.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine;
use oci::Digest;
use serde_json::Value;
use server::{AuthMode, Observability, Security, TokenService, UploadLimits};
use support::*;

const PASSWORDS: [(&str, &str); 4] = [("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw"), ("root", "root-pw")];

fn basic(user: &str) -> String {
    let pw = PASSWORDS.iter().find(|(u, _)| *u == user).map_or("wrong", |(_, p)| p);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn rules() -> Vec<auth::Rule> {
    let rule = |repos: &str, users: &[&str], anonymous: bool, actions: &[&str]| auth::Rule {
        repositories: repos.parse().expect("pattern"),
        users: users.iter().map(|u| (*u).to_owned()).collect(),
        groups: Vec::new(),
        anonymous,
        actions: auth::Actions::parse(actions.iter().copied()).expect("actions"),
    };
    vec![
        rule("team/**", &["alice"], false, &["pull", "push", "delete"]),
        rule("team/**", &["bob"], false, &["pull"]),
        rule("public/**", &[], true, &["pull"]),
        rule("public/**", &["alice"], false, &["push"]),
        rule("private/**", &["alice"], false, &["pull", "push"]),
        rule("carol/**", &["carol"], false, &["pull", "push"]),
    ]
}

fn users_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let mut h = auth::Htpasswd::default();
    for (u, p) in PASSWORDS {
        h.set(u, p, 4).expect("set");
    }
    h.save(&path).expect("save");
    path
}

enum Kind {
    Basic,
    Token,
}

/// A registry under access control, with the users above, `root` as admin, and [`rules`];
/// an image tagged `1` is pushed first into each of `seeds`.
async fn secured(kind: Kind, limits: UploadLimits, seeds: &[&str]) -> TestRegistry {
    let mut t = registry().await;
    for repo in seeds {
        t.push_image(repo, "1", repo).await;
    }
    let users = auth::UserStore::open(&users_file(t.dir.path())).expect("users");
    let mode = match kind {
        Kind::Basic => AuthMode::Basic { realm: "berth-test".to_owned() },
        Kind::Token => {
            let key = auth::SigningKey::load_or_generate(&t.dir.path().join("token.pem")).expect("key");
            let issuer = auth::Issuer::new(key, "berth".to_owned(), "berth".to_owned(), Duration::from_secs(300), Duration::from_secs(86_400));
            let verifier = auth::Verifier::own(&issuer);
            AuthMode::Token(TokenService { issuer, verifier, realm: None, service: "berth".to_owned() })
        }
    };
    let policy = auth::Policy::new(vec!["root".to_owned()], Default::default(), Some(rules()));
    let security = Security::new(mode, policy, Some(users), Some(auth::LoginLimiter::new(3, Duration::from_secs(60))), limits);
    let obs = Observability { metrics: Some(server::Metrics::default()), metrics_on_main: true };
    t.router = server::secured_router(t.registry.clone(), obs, Arc::new(security));
    t
}

async fn as_user(t: &TestRegistry, auth: &str, method: &str, uri: &str, body: impl Into<Body>) -> Resp {
    t.req(method, uri, &[("authorization", auth), ("host", "registry.test:5000")], body).await
}

/// The layer digest of the image [`secured`] seeds into `repo`.
fn layer_of(repo: &str) -> Digest {
    sha256(format!("layer of {repo}").as_bytes())
}

#[tokio::test]
async fn basic_mode_challenges_and_enforces_the_policy() {
    let t = secured(Kind::Basic, UploadLimits::default(), &["team/app", "public/app", "private/app"]).await;
    let layer = layer_of("private/app");

    let r = t.get("/v2/").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"berth-test\""));
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    assert_eq!(as_user(&t, &basic("alice"), "GET", "/v2/", Body::empty()).await.status, 200);
    let r = as_user(&t, &basic("nobody"), "GET", "/v2/", Body::empty()).await;
    assert_eq!(r.status, 401, "unknown users are refused like wrong passwords");

    // bob: pull on team/, nothing on private/.
    assert_eq!(as_user(&t, &basic("bob"), "GET", "/v2/team/app/manifests/1", Body::empty()).await.status, 200);
    let r = as_user(&t, &basic("bob"), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (403, "DENIED"), "a signed-in user without push is denied, not challenged");
    assert!(r.json()["errors"][0]["message"].as_str().expect("message").contains("push"), "{:?}", r.json());
    assert_eq!(as_user(&t, &basic("bob"), "GET", "/v2/private/app/tags/list", Body::empty()).await.status, 403);
    assert_eq!(as_user(&t, &basic("bob"), "DELETE", "/v2/team/app/manifests/1", Body::empty()).await.status, 403);

    // Anonymous: public/ only, and a challenge elsewhere.
    assert_eq!(t.get("/v2/public/app/manifests/1").await.status, 200);
    assert_eq!(t.get(&format!("/v2/public/app/blobs/{}", layer_of("public/app"))).await.status, 200);
    let r = t.get("/v2/team/app/manifests/1").await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Basic ")));

    // alice pushes to team/ and public/.
    let blob = b"alice's blob";
    let r = as_user(&t, &basic("alice"), "POST", &format!("/v2/team/app/blobs/uploads/?digest={}", sha256(blob)), blob.to_vec()).await;
    assert_eq!(r.status, 201);

    // The catalog shows each caller what it may pull.
    let names = |r: Resp| -> Vec<String> { r.json()["repositories"].as_array().expect("list").iter().map(|v| v.as_str().expect("name").to_owned()).collect() };
    assert_eq!(names(as_user(&t, &basic("bob"), "GET", "/v2/_catalog", Body::empty()).await), ["public/app", "team/app"]);
    assert_eq!(names(as_user(&t, &basic("alice"), "GET", "/v2/_catalog", Body::empty()).await), ["private/app", "public/app", "team/app"]);
    assert_eq!(names(t.get("/v2/_catalog").await), ["public/app"], "anonymous callers see what they may pull");
    // Pages stay full and the Link appears only while visible names may follow.
    let r = as_user(&t, &basic("bob"), "GET", "/v2/_catalog?n=1", Body::empty()).await;
    assert!(r.header("link").is_some());
    assert_eq!(names(r), ["public/app"]);
    let r = as_user(&t, &basic("bob"), "GET", "/v2/_catalog?n=1&last=public/app", Body::empty()).await;
    assert_eq!(names(r), ["team/app"]);

    // A mount needs pull on the source: carol cannot read private/, so she gets an upload session.
    let r = as_user(&t, &basic("carol"), "POST", &format!("/v2/carol/x/blobs/uploads/?mount={layer}&from=private/app"), Body::empty()).await;
    assert_eq!(r.status, 202, "no pull on the source: an ordinary upload");
    let public_layer = layer_of("public/app");
    let r = as_user(&t, &basic("carol"), "POST", &format!("/v2/carol/x/blobs/uploads/?mount={public_layer}&from=public/app"), Body::empty()).await;
    assert_eq!(r.status, 201, "public/ is readable by everyone, so the mount happens");
    let r = as_user(&t, &basic("carol"), "POST", &format!("/v2/carol/x/blobs/uploads/?mount={layer}"), Body::empty()).await;
    assert_eq!(r.status, 202, "a mount without from searches every repository: only for admins");
    let r = as_user(&t, &basic("root"), "POST", &format!("/v2/carol/x/blobs/uploads/?mount={layer}"), Body::empty()).await;
    assert_eq!(r.status, 201, "admins may mount from anywhere");

    // The admin API is for admins.
    assert_eq!(as_user(&t, &basic("alice"), "GET", "/admin/usage", Body::empty()).await.status, 403);
    assert_eq!(t.get("/admin/usage").await.status, 401);
    assert_eq!(as_user(&t, &basic("root"), "GET", "/admin/usage", Body::empty()).await.status, 200);
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let t = secured(Kind::Basic, UploadLimits::default(), &[]).await;
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:nope"));
    for _ in 0..3 {
        assert_eq!(as_user(&t, &wrong, "GET", "/v2/", Body::empty()).await.status, 401);
    }
    let r = as_user(&t, &basic("alice"), "GET", "/v2/", Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (429, "TOOMANYREQUESTS"), "even the right password waits");
    assert!(r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    // Other users from another address are not throttled; a denial and a bad token are
    // counted too.
    let elsewhere = |auth: String, method: &str, uri: &str| {
        let info = server::ConnInfo { addr: "192.0.2.7:40000".parse().expect("addr"), tls: false, client_identity: None };
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", auth)
            .extension(axum::extract::ConnectInfo(info))
            .body(Body::empty())
            .expect("request");
        tower::ServiceExt::oneshot(t.router.clone(), req)
    };
    assert_eq!(elsewhere(basic("bob"), "DELETE", "/v2/team/app/manifests/1").await.expect("response").status(), 403);
    assert_eq!(elsewhere("Bearer x.y.z".to_owned(), "GET", "/v2/").await.expect("response").status(), 401);
    // The metrics (admins only on the main listener) count each refusal by reason.
    let r = elsewhere(basic("root"), "GET", "/metrics").await.expect("response");
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body()).await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    for line in [
        r#"berth_auth_failures_total{reason="bad_credentials"} 3"#,
        r#"berth_auth_failures_total{reason="throttled"} 1"#,
        r#"berth_auth_failures_total{reason="denied"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert_eq!(elsewhere(basic("bob"), "GET", "/metrics").await.expect("response").status(), 403, "metrics are for admins");
}

#[tokio::test]
async fn upload_requests_are_limited_per_user_and_in_total() {
    let t = secured(Kind::Basic, UploadLimits::new(Some(1), Some(2)), &[]).await;
    let start = |user: &'static str| {
        let t = &t;
        async move {
            let r = as_user(t, &basic(user), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await;
            assert_eq!(r.status, 202);
            r.header("location").expect("location").to_owned()
        }
    };
    let loc = start("alice").await;
    // A PATCH whose body never ends holds alice's slot.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<bytes::Bytes, std::io::Error>>();
    tx.unbounded_send(Ok(bytes::Bytes::from_static(b"some"))).expect("send");
    let held = {
        let router = t.router.clone();
        let req = axum::http::Request::builder()
            .method("PATCH")
            .uri(&loc)
            .header("authorization", basic("alice"))
            .body(Body::from_stream(rx))
            .expect("request");
        tokio::spawn(async move { tower::ServiceExt::oneshot(router, req).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = as_user(&t, &basic("alice"), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (429, "TOOMANYREQUESTS"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another user still may, until the total is reached.
    assert_eq!(as_user(&t, &basic("root"), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await.status, 202);
    drop(tx);
    let done = held.await.expect("join").expect("response");
    assert_eq!(done.status(), 202);
    assert_eq!(as_user(&t, &basic("alice"), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await.status, 202, "the slot came back");
}

async fn token(t: &TestRegistry, user: Option<&str>, query: &str) -> Value {
    let headers: Vec<(&str, String)> = user.map(|u| ("authorization", basic(u))).into_iter().collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = t.req("GET", &format!("/auth/token?{query}"), &headers, Body::empty()).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test]
async fn token_mode_issues_scoped_tokens_and_challenges_for_them() {
    let t = secured(Kind::Token, UploadLimits::default(), &["team/app", "private/app"]).await;

    let r = t.req("GET", "/v2/", &[("host", "registry.test:5000")], Body::empty()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"http://registry.test:5000/auth/token\",service=\"berth\""));
    let r = t.req("GET", "/v2/team/app/manifests/1", &[("host", "registry.test:5000")], Body::empty()).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"http://registry.test:5000/auth/token\",service=\"berth\",scope=\"repository:team/app:pull\"")
    );

    // bob asks for pull and push on team/app and private/app; he gets pull on team/app only.
    let body = token(&t, Some("bob"), "service=berth&scope=repository:team/app:pull,push&scope=repository:private/app:pull").await;
    let tok = body["token"].as_str().expect("token");
    assert_eq!(body["access_token"], body["token"]);
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0));
    assert!(body["issued_at"].is_string());
    assert!(body.get("refresh_token").is_none(), "no refresh token unless asked for");
    assert_eq!(as_user(&t, &bearer(tok), "GET", "/v2/", Body::empty()).await.status, 200);
    assert_eq!(as_user(&t, &bearer(tok), "GET", "/v2/team/app/manifests/1", Body::empty()).await.status, 200);
    let r = as_user(&t, &bearer(tok), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "DENIED"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"http://registry.test:5000/auth/token\",service=\"berth\",scope=\"repository:team/app:pull,push\",error=\"insufficient_scope\"")
    );
    assert_eq!(as_user(&t, &bearer(tok), "GET", "/v2/private/app/manifests/1", Body::empty()).await.status, 401);

    // A token for one repository does not open another, even one the user may read.
    let team_only = token(&t, Some("alice"), "scope=repository:team/app:pull").await["token"].as_str().expect("token").to_owned();
    assert_eq!(as_user(&t, &bearer(&team_only), "GET", "/v2/private/app/manifests/1", Body::empty()).await.status, 401);

    // Anonymous tokens carry what anonymous callers may do.
    let anon = token(&t, None, "scope=repository:team/app:pull").await;
    let anon = anon["token"].as_str().expect("token");
    assert_eq!(as_user(&t, &bearer(anon), "GET", "/v2/", Body::empty()).await.status, 200, "an anonymous token passes the version check");
    let r = as_user(&t, &bearer(anon), "GET", "/v2/team/app/manifests/1", Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));

    // Wrong credentials at the token endpoint.
    let bad = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:nope"));
    let r = t.req("GET", "/auth/token?service=berth", &[("authorization", &bad)], Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));
    // Another service's token request.
    let r = t.req("GET", "/auth/token?service=elsewhere", &[("authorization", &basic("alice"))], Body::empty()).await;
    assert_eq!(r.status, 403);
    // Garbage tokens.
    let r = as_user(&t, "Bearer not.a.token", "GET", "/v2/", Body::empty()).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer ")));
    // The catalog, with a token, is what the policy lets its user pull.
    let cat = token(&t, Some("bob"), "scope=registry:catalog:*").await["token"].as_str().expect("token").to_owned();
    let r = as_user(&t, &bearer(&cat), "GET", "/v2/_catalog", Body::empty()).await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["team/app"]));
}

#[tokio::test]
async fn refresh_tokens_work_until_the_password_changes() {
    let t = secured(Kind::Token, UploadLimits::default(), &[]).await;
    // docker login: GET with offline_token=true.
    let body = token(&t, Some("alice"), "service=berth&offline_token=true&client_id=docker").await;
    let refresh = body["refresh_token"].as_str().expect("refresh token").to_owned();
    assert_eq!(as_user(&t, &bearer(&refresh), "GET", "/v2/", Body::empty()).await.status, 401, "a refresh token is not an access token");
    // Later: the OAuth2 form with the refresh token.
    let form = |rt: &str| format!("grant_type=refresh_token&service=berth&client_id=docker&scope=repository%3Ateam%2Fapp%3Apull%2Cpush&refresh_token={rt}");
    let post = |body: String| t.req("POST", "/auth/token", &[("content-type", "application/x-www-form-urlencoded")], body);
    let r = post(form(&refresh)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let granted = r.json();
    assert_eq!(granted["scope"], "repository:team/app:pull,push");
    let access = granted["access_token"].as_str().expect("access token");
    assert_eq!(as_user(&t, &bearer(access), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await.status, 202);
    // The password form.
    let r = post("grant_type=password&username=bob&password=bob-pw&service=berth&client_id=x&scope=repository%3Ateam%2Fapp%3Apull&access_type=offline".to_owned()).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["refresh_token"].is_string());
    let r = post("grant_type=password&username=bob&password=nope&service=berth&client_id=x".to_owned()).await;
    assert_eq!(r.status, 401);
    // alice changes her password: her refresh token stops working.
    let path = t.dir.path().join("htpasswd");
    let mut h = auth::Htpasswd::load(&path).expect("load");
    h.set("alice", "new-password", 4).expect("set");
    // The store notices a changed file by its size and modification time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.save(&path).expect("save");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(form(&refresh)).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"), "{:?}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn denials_and_logins_reach_the_audit_log() {
    let t = secured(Kind::Token, UploadLimits::default(), &["private/app"]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());
    token(&t, Some("bob"), "scope=repository:private/app:pull").await;
    let bad = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("bob:nope"));
    t.req("GET", "/auth/token", &[("authorization", &bad)], Body::empty()).await;
    t.get("/v2/private/app/manifests/1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = t.registry.audit(&meta::EventFilter { limit: 100, ..Default::default() }).await.expect("audit");
        if events.iter().filter(|e| e.action != "push").count() >= 3 {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "events: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let actions: Vec<(&str, Option<&str>, &str)> = events.iter().filter(|e| e.action != "push").map(|e| (e.action.as_str(), e.actor.as_deref(), e.repository.as_str())).collect();
    assert!(actions.contains(&("login", Some("bob"), "")), "{actions:?}");
    assert!(actions.contains(&("login_failed", Some("bob"), "")), "{actions:?}");
    assert!(actions.contains(&("denied_pull", None, "private/app")), "{actions:?}");
    stop.cancel();
    for task in tasks {
        task.await.expect("task");
    }
}

/// A registry that accepts only tokens from an external issuer whose keys are in a JWKS file;
/// returns it with an issuer standing in for the external service (and one for the wrong
/// audience).
async fn external() -> (TestRegistry, auth::Issuer, auth::Issuer) {
    let mut t = registry().await;
    t.push_image("team/app", "1", "team/app").await;
    t.push_image("other/app", "1", "other/app").await;
    let (key, pem) = auth::SigningKey::generate().expect("key");
    let jwks = t.dir.path().join("jwks.json");
    std::fs::write(&jwks, key.jwks().to_string()).expect("jwks");
    let lifetime = (Duration::from_secs(300), Duration::from_secs(600));
    let service = auth::Issuer::new(key, "auth.example".to_owned(), "registry.example".to_owned(), lifetime.0, lifetime.1);
    let wrong_audience = auth::Issuer::new(auth::SigningKey::from_pem("same key", &pem).expect("key"), "auth.example".to_owned(), "elsewhere".to_owned(), lifetime.0, lifetime.1);
    let verifier = auth::Verifier::external("auth.example".to_owned(), "registry.example".to_owned(), None, Some(&jwks)).expect("verifier");
    let mode = AuthMode::External { verifier, realm: "https://auth.example/token".to_owned(), service: "registry.example".to_owned() };
    let security = Security::new(mode, auth::Policy::new(vec!["ops".to_owned()], Default::default(), None), None, None, UploadLimits::default());
    t.router = server::secured_router(t.registry.clone(), Observability { metrics: None, metrics_on_main: true }, Arc::new(security));
    (t, service, wrong_audience)
}

#[tokio::test]
async fn external_tokens_decide_by_their_claims() {
    let (t, service, wrong_audience) = external().await;
    let now = std::time::SystemTime::now();
    let team: oci::RepoName = "team/app".parse().expect("name");
    let pull_team = |issuer: &auth::Issuer| issuer.access_token(Some("dave"), vec![auth::Access::repository(&team, auth::Action::Pull.into())], now).expect("token").0;

    let tok = pull_team(&service);
    assert_eq!(as_user(&t, &bearer(&tok), "GET", "/v2/team/app/manifests/1", Body::empty()).await.status, 200);
    let r = as_user(&t, &bearer(&tok), "GET", "/v2/other/app/manifests/1", Body::empty()).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "DENIED"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"https://auth.example/token\",service=\"registry.example\",scope=\"repository:other/app:pull\",error=\"insufficient_scope\"")
    );
    assert_eq!(as_user(&t, &bearer(&tok), "POST", "/v2/team/app/blobs/uploads/", Body::empty()).await.status, 401);
    // A token for another audience, basic credentials, and no credentials are all challenged.
    let r = as_user(&t, &bearer(&pull_team(&wrong_audience)), "GET", "/v2/team/app/manifests/1", Body::empty()).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["errors"][0]["message"].as_str().expect("message").contains("another service"), "{:?}", r.json());
    let r = as_user(&t, &basic("alice"), "GET", "/v2/", Body::empty()).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer realm=\"https://auth.example/token\"")));
    assert_eq!(t.get("/v2/").await.status, 401);
    // The catalog needs the catalog claim, and then lists everything.
    assert_eq!(as_user(&t, &bearer(&tok), "GET", "/v2/_catalog", Body::empty()).await.status, 401);
    let cat = service.access_token(Some("dave"), vec![auth::Access::catalog()], now).expect("token").0;
    let r = as_user(&t, &bearer(&cat), "GET", "/v2/_catalog", Body::empty()).await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["other/app", "team/app"]));
    // There is no token endpoint here.
    assert_eq!(t.get("/auth/token").await.status, 404);
}

#[tokio::test]
async fn a_verified_client_certificate_is_an_identity() {
    let t = secured(Kind::Basic, UploadLimits::default(), &["team/app"]).await;
    let send = |identity: Option<&str>, method: &str, uri: &str| {
        let info = server::ConnInfo { addr: "127.0.0.1:40000".parse().expect("addr"), tls: true, client_identity: identity.map(str::to_owned) };
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .extension(axum::extract::ConnectInfo(info))
            .body(Body::empty())
            .expect("request");
        tower::ServiceExt::oneshot(t.router.clone(), req)
    };
    // A certificate naming bob gets bob's rights: pull, not push.
    assert_eq!(send(Some("bob"), "GET", "/v2/team/app/manifests/1").await.expect("response").status(), 200);
    assert_eq!(send(Some("bob"), "POST", "/v2/team/app/blobs/uploads/").await.expect("response").status(), 403);
    assert_eq!(send(Some("alice"), "POST", "/v2/team/app/blobs/uploads/").await.expect("response").status(), 202);
    // No certificate: anonymous.
    assert_eq!(send(None, "GET", "/v2/team/app/manifests/1").await.expect("response").status(), 401);
}
