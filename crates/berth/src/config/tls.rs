//! The `http.tls` section: TLS on the main listener, parsed into `server::tls::TlsOptions`
//! with every problem named by its key path (`http.tls.key`).
//!
//! Resolving checks only the section's shape. The files themselves are read by [`load_tls`],
//! which `berth config check` and `berth serve` call: other commands (`gc`, `fsck`, ...) share
//! the configuration file but must not need the server's private key to be readable.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use server::tls::{ClientAuth, TlsConfig, TlsFile, TlsOptions};

use super::{ConfigError, duration_value, err};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain (leaf first). With `key`, the main listener speaks TLS only.
    pub certificate: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub key: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates are verified against (mTLS).
    pub client_ca: Option<PathBuf>,
    /// `optional` (the default) or `required`; only with `client_ca`.
    pub client_auth: Option<String>,
    /// How often the certificate and key files are checked for changes (default 10s).
    pub reload_interval: Option<Value>,
}

const DEFAULT_RELOAD: Duration = Duration::from_secs(10);

pub(super) fn resolve(raw: RawTls) -> Result<Option<TlsOptions>, ConfigError> {
    let path = |key: &str, v: Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
        match v {
            Some(p) if p.as_os_str().is_empty() => Err(err(&format!("http.tls.{key}"), "must not be empty")),
            v => Ok(v),
        }
    };
    let certificate = path("certificate", raw.certificate)?;
    let key = path("key", raw.key)?;
    let client_ca = path("client_ca", raw.client_ca)?;
    let (certificate, key) = match (certificate, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(err("http.tls.key", "must be set with http.tls.certificate (both or neither)")),
        (None, Some(_)) => return Err(err("http.tls.certificate", "must be set with http.tls.key (both or neither)")),
        (None, None) => {
            // Anything else in the section would otherwise be silently ignored.
            let stray = [(client_ca.is_some(), "client_ca"), (raw.client_auth.is_some(), "client_auth"), (raw.reload_interval.is_some(), "reload_interval")];
            if let Some((_, k)) = stray.iter().find(|(set, _)| *set) {
                return Err(err(&format!("http.tls.{k}"), "needs http.tls.certificate and http.tls.key"));
            }
            return Ok(None);
        }
    };
    let client_auth = match raw.client_auth.as_deref() {
        None | Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => return Err(err("http.tls.client_auth", format!("{other:?} must be optional or required"))),
    };
    if raw.client_auth.is_some() && client_ca.is_none() {
        return Err(err("http.tls.client_auth", "needs http.tls.client_ca (the CAs client certificates are verified against)"));
    }
    let reload_interval = match raw.reload_interval {
        None => DEFAULT_RELOAD,
        Some(v) => {
            let d = duration_value(&v).ok_or_else(|| err("http.tls.reload_interval", format!("{v} is not a duration like 10s, 1m or a number of seconds")))?;
            if d < Duration::from_secs(1) {
                return Err(err("http.tls.reload_interval", "must be at least 1s"));
            }
            d
        }
    };
    Ok(Some(TlsOptions { certificate, key, client_ca, client_auth, reload_interval }))
}

/// Read and check the TLS files (exist, parse, the key matches the certificate), naming the
/// key of the file at fault.
pub fn load_tls(opts: &TlsOptions) -> Result<TlsConfig, ConfigError> {
    TlsConfig::load(opts).map_err(|e| {
        let key = match e.file {
            TlsFile::Certificate => "http.tls.certificate",
            TlsFile::Key => "http.tls.key",
            TlsFile::ClientCa => "http.tls.client_ca",
        };
        err(key, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::super::{RawConfig, apply_env};
    use super::*;

    fn resolve_yaml(yaml: &str) -> Result<Option<TlsOptions>, ConfigError> {
        let tree: Value = serde_saphyr::from_str(yaml).expect("yaml");
        RawConfig::from_tree(tree).and_then(RawConfig::resolve).map(|c| c.tls)
    }

    #[test]
    fn tls_settings() {
        assert!(resolve_yaml("{}").expect("valid").is_none(), "no TLS by default");
        assert!(resolve_yaml("http: {tls: {}}").expect("valid").is_none());
        let t = resolve_yaml("http: {tls: {certificate: /etc/berth/tls.crt, key: /etc/berth/tls.key}}").expect("valid").expect("TLS on");
        assert_eq!((t.certificate, t.key), (PathBuf::from("/etc/berth/tls.crt"), PathBuf::from("/etc/berth/tls.key")));
        assert_eq!((t.client_ca, t.client_auth, t.reload_interval), (None, ClientAuth::Optional, DEFAULT_RELOAD));
        let t = resolve_yaml("http: {tls: {certificate: c, key: k, client_ca: ca.pem, client_auth: required, reload_interval: 1m}}").expect("valid").expect("TLS on");
        assert_eq!((t.client_ca, t.client_auth, t.reload_interval), (Some(PathBuf::from("ca.pem")), ClientAuth::Required, Duration::from_secs(60)));
        let t = resolve_yaml("http: {tls: {certificate: c, key: k, client_ca: ca.pem}}").expect("valid").expect("TLS on");
        assert_eq!(t.client_auth, ClientAuth::Optional, "optional is the default with a client CA");
        // From the environment, like every key.
        let mut tree: Value = serde_saphyr::from_str("{}").expect("yaml");
        apply_env(&mut tree, [("BERTH_HTTP__TLS__CERTIFICATE".to_owned(), "/c.pem".to_owned()), ("BERTH_HTTP__TLS__KEY".to_owned(), "/k.pem".to_owned())]).expect("env");
        assert_eq!(RawConfig::from_tree(tree).and_then(RawConfig::resolve).expect("valid").tls.expect("TLS on").certificate, PathBuf::from("/c.pem"));
    }

    #[test]
    fn tls_errors_name_their_key() {
        for (yaml, path, says) in [
            ("http: {tls: {cert: c, key: k}}", "http.tls.cert", "unknown field"),
            ("http: {tls: {certificate: c}}", "http.tls.key", "both or neither"),
            ("http: {tls: {key: k}}", "http.tls.certificate", "both or neither"),
            ("http: {tls: {certificate: '', key: k}}", "http.tls.certificate", "empty"),
            ("http: {tls: {client_ca: ca.pem}}", "http.tls.client_ca", "needs http.tls.certificate"),
            ("http: {tls: {certificate: c, key: k, client_auth: required}}", "http.tls.client_auth", "needs http.tls.client_ca"),
            ("http: {tls: {certificate: c, key: k, client_ca: ca, client_auth: always}}", "http.tls.client_auth", "optional or required"),
            ("http: {tls: {certificate: c, key: k, reload_interval: often}}", "http.tls.reload_interval", "often"),
            ("http: {tls: {certificate: c, key: k, reload_interval: 100ms}}", "http.tls.reload_interval", "at least 1s"),
        ] {
            let e = resolve_yaml(yaml).expect_err(yaml);
            assert_eq!(e.path, path, "{yaml}: {e}");
            assert!(e.message.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn files_are_checked_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params").self_signed(&key).expect("cert");
        let other_key = rcgen::KeyPair::generate().expect("key");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let (c, k, k2, junk) = (write("c.pem", &cert.pem()), write("k.pem", &key.serialize_pem()), write("k2.pem", &other_key.serialize_pem()), write("junk.pem", "hello\n"));
        let opts = |certificate: &PathBuf, key: &PathBuf, client_ca: Option<&PathBuf>| TlsOptions {
            certificate: certificate.clone(),
            key: key.clone(),
            client_ca: client_ca.cloned(),
            client_auth: ClientAuth::Optional,
            reload_interval: DEFAULT_RELOAD,
        };
        load_tls(&opts(&c, &k, None)).expect("a matching pair loads");
        load_tls(&opts(&c, &k, Some(&c))).expect("with a client CA");
        let missing = dir.path().join("missing.pem");
        for (o, path, says) in [
            (opts(&missing, &k, None), "http.tls.certificate", "missing.pem"),
            (opts(&junk, &k, None), "http.tls.certificate", "no CERTIFICATE"),
            (opts(&c, &junk, None), "http.tls.key", "no PRIVATE KEY"),
            (opts(&c, &k2, None), "http.tls.key", "does not match"),
            (opts(&c, &k, Some(&junk)), "http.tls.client_ca", "no CERTIFICATE"),
        ] {
            let e = load_tls(&o).expect_err(path);
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }
}
