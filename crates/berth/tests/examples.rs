//! Every example configuration under the workspace's `examples/` passes `berth config check`,
//! and `config check` rejects bad configurations naming the offending key.
//!
//! `config check` reads the TLS files a configuration names, so it runs in a working
//! directory holding the ones the examples use (`tls/server.crt`, `tls/server.key`,
//! `tls/clients-ca.crt`), made here for each run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `*.yaml` and `*.yml` files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    out.sort();
}

/// A working directory with the TLS files the examples name: a server certificate and key
/// from a throwaway CA, and that CA as the client CA bundle.
fn tls_fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).expect("mkdir tls");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("CA key")).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params").signed_by(&key, &ca).expect("certificate");
    for (name, text) in [("server.crt", cert.pem()), ("server.key", key.serialize_pem()), ("clients-ca.crt", ca.pem())] {
        std::fs::write(tls.join(name), text).expect("write TLS fixture");
    }
    dir
}

/// `berth config check FILE` with every `BERTH_*` variable removed, then `env` added, in a
/// working directory holding the examples' TLS files.
fn check(file: &Path, env: &[(&str, &str)]) -> Output {
    let cwd = tls_fixtures();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("config").arg("check").arg(file).current_dir(cwd.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running berth config check")
}

/// Check `yaml` written to a temporary file; assert it fails and that stderr names `key`.
fn assert_rejected(yaml: &str, env: &[(&str, &str)], key: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("berth.yaml");
    std::fs::write(&file, yaml).expect("writing config");
    let out = check(&file, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "config check accepted {yaml:?} with {env:?}; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "expected exit status 1 (not a panic); stderr: {stderr}");
    assert!(stderr.contains(key), "stderr does not name {key}: {stderr}");
}

#[test]
fn every_example_passes_config_check() {
    let mut files = Vec::new();
    yaml_files(&examples_dir(), &mut files);
    assert!(!files.is_empty(), "no *.yaml or *.yml files under {}", examples_dir().display());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let out = check(f, &[]);
            (!out.status.success()).then(|| format!("{}: {} {}", f.display(), out.status, String::from_utf8_lossy(&out.stderr).trim()))
        })
        .collect();
    assert!(failures.is_empty(), "examples failing `berth config check`:\n{}", failures.join("\n"));
}

#[test]
fn unknown_key_is_named() {
    assert_rejected("http:\n  adr: x\n", &[], "http.adr");
}

#[test]
fn bad_value_is_named() {
    assert_rejected("uploads:\n  expiry: soon\n", &[], "uploads.expiry");
}

#[test]
fn tls_files_are_checked() {
    // The shape is fine; the files are not there.
    assert_rejected("http:\n  tls:\n    certificate: /nonexistent/server.crt\n    key: /nonexistent/server.key\n", &[], "http.tls.certificate");
    assert_rejected("http:\n  tls:\n    certificate: tls/server.crt\n    key: tls/clients-ca.crt\n", &[], "http.tls.key");
}

#[test]
fn environment_override_is_checked() {
    // The file alone is fine; the variable makes it invalid.
    assert_rejected("http:\n  addr: 127.0.0.1:5000\n", &[("BERTH_HTTP__ADDR", "notanaddress")], "http.addr");
}
