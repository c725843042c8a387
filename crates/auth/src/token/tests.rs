use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RsaKeyPair};

use super::keys::libtrust_kid;
use super::*;
use crate::htpasswd::Htpasswd;

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn ec_key() -> SigningKey {
    SigningKey::generate().expect("generate").0
}

fn rsa_pem() -> String {
    let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
    let der: Pkcs8V1Der<'static> = kp.as_der().expect("pkcs8");
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()))
}

fn issuer(key: SigningKey) -> Issuer {
    Issuer::new(key, "berth".into(), "registry.example".into(), Duration::from_secs(300), Duration::from_secs(86_400))
}

fn pull(name: &str) -> Vec<Access> {
    vec![Access::repository(&name.parse().expect("name"), Actions::from(Action::Pull))]
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims_json(iss: &str, aud: &str, now: SystemTime) -> serde_json::Value {
    let n = secs(now);
    serde_json::json!({"iss": iss, "sub": "alice", "aud": aud, "exp": n + 300, "nbf": n, "iat": n, "jti": "x", "access": pull("a")})
}

#[test]
fn libtrust_kid_format_and_vector() {
    // Computed independently: base32(sha256("berth kid test vector")[..30]) in groups of four.
    assert_eq!(libtrust_kid(b"berth kid test vector"), "TZYQ:ABZZ:2EQO:63B3:2LW3:YVWD:7YFB:MKUS:57OJ:OBBX:NPI5:ZW2E");
    let kid = ec_key().kid().to_owned();
    assert_eq!(kid.len(), 59);
    assert!(kid.split(':').all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))), "{kid}");
}

fn round_trip(key: SigningKey, alg: &str) {
    let kid = key.kid().to_owned();
    let iss = issuer(key);
    let (jwt, expires_in) = iss.access_token(Some("alice"), pull("team-a/app"), t0()).expect("issue");
    assert_eq!(expires_in, Duration::from_secs(300));
    let header = HeaderView::parse(&jwt).expect("header");
    assert_eq!((header.alg.as_str(), header.kid.as_deref()), (alg, Some(kid.as_str())));
    let claims = Verifier::own(&iss).verify(&jwt, t0() + Duration::from_secs(10)).expect("verify");
    assert_eq!(claims.user(), Some("alice"));
    assert_eq!((claims.iss.as_str(), claims.aud.as_str(), claims.exp - claims.iat), ("berth", "registry.example", 300));
    let app = Resource::Repository("team-a/app".parse().expect("name"));
    assert!(claims.allows(&app, Action::Pull));
    assert!(!claims.allows(&app, Action::Push));
    assert!(!claims.allows(&Resource::Repository("team-a/other".parse().expect("name")), Action::Pull));
    assert!(!claims.allows(&Resource::Catalog, Action::Pull));

    let (anon, _) = iss.access_token(None, vec![Access::catalog()], t0()).expect("issue");
    let claims = Verifier::own(&iss).verify(&anon, t0()).expect("verify");
    assert_eq!((claims.user(), claims.sub.as_str()), (None, ""));
    assert!(claims.allows(&Resource::Catalog, Action::Pull));
}

#[test]
fn es256_round_trip() {
    round_trip(ec_key(), "ES256");
}

#[test]
fn rs256_round_trip() {
    let key = SigningKey::from_pem("test", &rsa_pem()).expect("rsa key");
    assert_eq!(key.algorithm(), Algorithm::RS256);
    round_trip(key, "RS256");
}

#[test]
fn loads_sec1_and_pkcs8_ec_keys_alike_and_refuses_others() {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec");
    let sec1: EcPrivateKeyRfc5915Der<'static> = kp.private_key().as_der().expect("sec1");
    let sec1 = SigningKey::from_pem("sec1", &pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref().to_vec()))).expect("sec1 key");
    let pkcs8 = SigningKey::from_pem("pkcs8", &pem::encode(&pem::Pem::new("PRIVATE KEY", kp.to_pkcs8v1().expect("pkcs8").as_ref().to_vec()))).expect("pkcs8 key");
    assert_eq!(sec1.kid(), pkcs8.kid());
    // A token from one verifies with the other: the same key.
    let (jwt, _) = issuer(sec1).access_token(Some("a"), vec![], t0()).expect("issue");
    Verifier::own(&issuer(pkcs8)).verify(&jwt, t0()).expect("same key");

    assert!(matches!(SigningKey::from_pem("x", "not pem at all"), Err(KeyError::NoPrivateKey(_) | KeyError::Pem(_))));
    let cert_only = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
    assert!(matches!(SigningKey::from_pem("x", &cert_only), Err(KeyError::NoPrivateKey(_))));
    assert!(matches!(SigningKey::from_pem("x", &pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]))), Err(KeyError::Rejected { .. })));
}

#[test]
fn load_or_generate_creates_a_private_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys/token.pem");
    let a = SigningKey::load_or_generate(&path).expect("generate");
    let b = SigningKey::load_or_generate(&path).expect("load");
    assert_eq!(a.kid(), b.kid());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_dir(path.parent().expect("dir")).expect("ls").count(), 1, "no temporary file left");
    assert!(a.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[test]
fn expiry_and_not_before_with_leeway() {
    let iss = issuer(ec_key());
    let v = Verifier::own(&iss);
    let (jwt, _) = iss.access_token(Some("a"), vec![], t0()).expect("issue");
    assert!(v.verify(&jwt, t0() + Duration::from_secs(300 + 30)).is_ok(), "within the leeway");
    assert_eq!(v.verify(&jwt, t0() + Duration::from_secs(300 + 31)), Err(TokenError::Expired));
    let (future, _) = iss.access_token(Some("a"), vec![], t0() + Duration::from_secs(120)).expect("issue");
    assert_eq!(v.verify(&future, t0()), Err(TokenError::NotYetValid));
    assert!(v.verify(&future, t0() + Duration::from_secs(95)).is_ok());
}

#[test]
fn forged_tokens_are_refused() {
    let ours = ec_key();
    let kid = ours.kid().to_owned();
    let public_pem = ours.public_key_pem();
    let iss = issuer(ours);
    let v = Verifier::own(&iss);
    let claims = claims_json("berth", "registry.example", t0());

    // Signed by another key under our kid.
    let other = ec_key();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.clone());
    let forged = jsonwebtoken::encode(&h, &claims, other.encoding()).expect("encode");
    assert_eq!(v.verify(&forged, t0()), Err(TokenError::BadSignature));
    // Signed by another key under its own kid.
    let (other_token, _) = issuer(other).access_token(Some("a"), vec![], t0()).expect("issue");
    assert_eq!(v.verify(&other_token, t0()), Err(TokenError::UnknownKey));

    // alg: none, built by hand.
    let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid})), b64(&claims));
    assert_eq!(v.verify(&none, t0()), Err(TokenError::UnsupportedAlgorithm("none".into())));

    // HS256 keyed with the public key (PEM text and raw DER): the key-confusion attack.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.clone());
    for secret in [public_pem.as_bytes().to_vec(), pem::parse(&public_pem).expect("pem").contents().to_vec()] {
        let hs = jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(&secret)).expect("encode");
        assert_eq!(v.verify(&hs, t0()), Err(TokenError::UnsupportedAlgorithm("HS256".into())));
    }

    // RS256 named for an EC key.
    let rsa = SigningKey::from_pem("rsa", &rsa_pem()).expect("rsa");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.clone());
    let mismatched = jsonwebtoken::encode(&h, &claims, rsa.encoding()).expect("encode");
    assert_eq!(v.verify(&mismatched, t0()), Err(TokenError::UnsupportedAlgorithm("RS256".into())));

    // A valid signature over altered claims.
    let (good, _) = iss.access_token(Some("alice"), pull("a"), t0()).expect("issue");
    let parts: Vec<&str> = good.split('.').collect();
    let mut altered = claims.clone();
    altered["access"] = serde_json::json!([{"type": "repository", "name": "a", "actions": ["push"]}]);
    assert_eq!(v.verify(&format!("{}.{}.{}", parts[0], b64(&altered), parts[2]), t0()), Err(TokenError::BadSignature));

    for junk in ["", "a.b", "a.b.c.d", "!!!.e30.", &format!("{}.e30.", b64(&serde_json::json!({"kid": kid})))] {
        assert_eq!(v.verify(junk, t0()), Err(TokenError::Malformed), "{junk:?}");
    }
}

#[test]
fn wrong_issuer_and_audience_are_refused() {
    let key = ec_key();
    let jwks = key.jwks();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write");
    let iss = issuer(key);
    let (jwt, _) = iss.access_token(Some("alice"), pull("a"), t0()).expect("issue");

    let ok = Verifier::external("berth".into(), "registry.example".into(), None, Some(&path)).expect("jwks");
    assert_eq!(ok.verify(&jwt, t0()).expect("verify").sub, "alice");
    let wrong_aud = Verifier::external("berth".into(), "other.example".into(), None, Some(&path)).expect("jwks");
    assert_eq!(wrong_aud.verify(&jwt, t0()), Err(TokenError::WrongAudience));
    let wrong_iss = Verifier::external("someone-else".into(), "registry.example".into(), None, Some(&path)).expect("jwks");
    assert_eq!(wrong_iss.verify(&jwt, t0()), Err(TokenError::WrongIssuer));

    // A list audience is accepted when it names us.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(iss.key().kid().to_owned());
    let mut claims = claims_json("berth", "x", t0());
    claims["aud"] = serde_json::json!(["x", "registry.example"]);
    let listed = jsonwebtoken::encode(&h, &claims, iss.key().encoding()).expect("encode");
    assert_eq!(ok.verify(&listed, t0()).expect("list aud").aud, "registry.example");
}

#[test]
fn refresh_and_access_tokens_are_not_interchangeable() {
    let iss = issuer(ec_key());
    let v = Verifier::own(&iss);
    let refresh = iss.refresh_token("alice", "fp1", t0()).expect("refresh");
    assert_eq!(v.verify(&refresh, t0()), Err(TokenError::NotAnAccessToken));
    assert_eq!(iss.check_refresh_token(&refresh, t0() + Duration::from_secs(3600)), Ok(("alice".to_owned(), "fp1".to_owned())));
    assert_eq!(iss.check_refresh_token(&refresh, t0() + Duration::from_secs(86_400 + 31)), Err(TokenError::Expired));
    let (access, _) = iss.access_token(Some("alice"), vec![], t0()).expect("issue");
    assert_eq!(iss.check_refresh_token(&access, t0()), Err(TokenError::NotARefreshToken));
    // Another issuer's refresh token (another key) is refused.
    let other = issuer(ec_key());
    assert_eq!(iss.check_refresh_token(&other.refresh_token("alice", "fp1", t0()).expect("refresh"), t0()), Err(TokenError::UnknownKey));
}

#[test]
fn a_password_change_revokes_refresh_tokens() {
    let iss = issuer(ec_key());
    let mut users = Htpasswd::default();
    users.set("alice", "old", 4).expect("set");
    let refresh = iss.refresh_token("alice", &users.entry_fingerprint("alice").expect("fp"), t0()).expect("refresh");
    let still_valid = |users: &Htpasswd| {
        let (user, fp) = iss.check_refresh_token(&refresh, t0()).expect("check");
        users.entry_fingerprint(&user).as_deref() == Some(fp.as_str())
    };
    assert!(still_valid(&users));
    users.set("alice", "new", 4).expect("set");
    assert!(!still_valid(&users), "the password changed");
    users.remove("alice");
    assert!(!still_valid(&users), "the user is gone");
}

fn write_cert(dir: &Path, name: &str, key_pem: &str) -> (PathBuf, Vec<u8>) {
    let kp = rcgen::KeyPair::from_pem(key_pem).expect("rcgen key");
    let cert = rcgen::CertificateParams::new(vec!["auth.example".to_owned()]).expect("params").self_signed(&kp).expect("cert");
    let path = dir.join(name);
    std::fs::write(&path, cert.pem()).expect("write");
    (path, cert.der().to_vec())
}

use std::path::{Path, PathBuf};

#[test]
fn external_verifier_with_a_certificate_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ec, ec_pem) = SigningKey::generate().expect("generate");
    let rsa_text = rsa_pem();
    let (ec_cert, ec_der) = write_cert(dir.path(), "ec.pem", &ec_pem);
    let (rsa_cert, _) = write_cert(dir.path(), "rsa.pem", &rsa_text);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, [std::fs::read(&ec_cert).expect("read"), std::fs::read(&rsa_cert).expect("read")].concat()).expect("write");
    let v = Verifier::external("auth.example".into(), "registry.example".into(), Some(&bundle), None).expect("bundle");

    let ext = |key: SigningKey| Issuer::new(key, "auth.example".into(), "registry.example".into(), Duration::from_secs(60), Duration::from_secs(60));
    let ec_iss = ext(ec);
    let (jwt, _) = ec_iss.access_token(Some("bob"), pull("x"), t0()).expect("issue");
    assert_eq!(v.verify(&jwt, t0()).expect("ec by kid").sub, "bob");
    let (jwt, _) = ext(SigningKey::from_pem("rsa", &rsa_text).expect("rsa")).access_token(Some("carol"), vec![], t0()).expect("issue");
    assert_eq!(v.verify(&jwt, t0()).expect("rsa by kid").sub, "carol");

    // No kid, the signing certificate in x5c.
    let claims = claims_json("auth.example", "registry.example", t0());
    let mut h = Header::new(Algorithm::ES256);
    h.x5c = Some(vec![STANDARD.encode(&ec_der)]);
    let jwt = jsonwebtoken::encode(&h, &claims, ec_iss.key().encoding()).expect("encode");
    assert_eq!(v.verify(&jwt, t0()).expect("x5c").sub, "alice");
    // An x5c certificate that is not in the bundle.
    let (stranger, stranger_pem) = SigningKey::generate().expect("generate");
    let (_, stranger_der) = write_cert(dir.path(), "stranger.pem", &stranger_pem);
    h.x5c = Some(vec![STANDARD.encode(&stranger_der)]);
    let jwt = jsonwebtoken::encode(&h, &claims, stranger.encoding()).expect("encode");
    assert_eq!(v.verify(&jwt, t0()), Err(TokenError::UnknownKey));

    // Our own tokens are not accepted by the external verifier, but are by the combination.
    let ours = issuer(ec_key());
    let (own_jwt, _) = ours.access_token(Some("dave"), vec![], t0()).expect("issue");
    assert_eq!(v.verify(&own_jwt, t0()), Err(TokenError::UnknownKey));
    let both = Verifier::own(&ours).or(v);
    assert_eq!(both.verify(&own_jwt, t0()).expect("own").sub, "dave");

    assert!(matches!(Verifier::external("a".into(), "b".into(), None, None), Err(KeyError::NoKeys(_))));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    assert!(Verifier::external("a".into(), "b".into(), Some(&empty), None).is_err());
    assert!(matches!(Verifier::external("a".into(), "b".into(), Some(&dir.path().join("missing.pem")), None), Err(KeyError::Io { .. })));
}

#[test]
fn jwks_export_is_usable() {
    for key in [ec_key(), SigningKey::from_pem("rsa", &rsa_pem()).expect("rsa")] {
        let kid = key.kid().to_owned();
        let jwks = key.jwks();
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
        let keys = keys::keys_from_jwks("test", jwks.to_string().as_bytes()).expect("jwks");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kind, key.public().kind);
    }
    assert!(keys::keys_from_jwks("t", br#"{"keys":[]}"#).is_err());
    assert!(keys::keys_from_jwks("t", b"nope").is_err());
}
