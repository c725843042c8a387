//! Every example configuration under the workspace's `examples/` passes `berth config check`,
//! and `config check` rejects bad configurations naming the offending key.

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

/// `berth config check FILE` with every `BERTH_*` variable removed, then `env` added.
fn check(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("config").arg("check").arg(file);
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
fn environment_override_is_checked() {
    // The file alone is fine; the variable makes it invalid.
    assert_rejected("http:\n  addr: 127.0.0.1:5000\n", &[("BERTH_HTTP__ADDR", "notanaddress")], "http.addr");
}
