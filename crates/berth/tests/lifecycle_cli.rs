//! `berth retention run`, `berth tags delete` and `berth repo delete` as a user runs them: next
//! to a running server on the same data directory, which sees their deletions at once.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::{Server, request, sha256_digest};

/// Run `berth ARGS` with every `BERTH_*` variable removed and `stdin` fed in; returns
/// (success, stdout, stderr).
fn berth(args: &[&str], stdin: &str) -> (bool, String, String) {
    support::run_berth(args, stdin)
}

/// Push a one-layer image of `seed` to `repo:tag`; returns the manifest digest.
fn push_image(addr: SocketAddr, repo: &str, tag: &str, seed: &str) -> String {
    let push = |bytes: &[u8]| {
        let d = sha256_digest(bytes);
        let r = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], bytes).expect("push");
        assert_eq!(r.status, 201, "{}", r.describe());
        (d, bytes.len())
    };
    let (config, config_len) = push(format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).as_bytes());
    let (layer, layer_len) = push(format!("layer of {seed}").as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_len}}}]}}"#
    );
    let r = request(addr, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &[("Content-Type", "application/vnd.oci.image.manifest.v1+json".into())], manifest.as_bytes()).expect("manifest");
    assert_eq!(r.status, 201, "{}", r.describe());
    // Push times are kept in milliseconds: keep them apart so "newest" is unambiguous.
    std::thread::sleep(std::time::Duration::from_millis(5));
    sha256_digest(manifest.as_bytes())
}

fn tags(addr: SocketAddr, repo: &str) -> (u16, String) {
    let r = request(addr, "GET", &format!("/v2/{repo}/tags/list"), &[], b"").expect("tags");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let f = dir.join("berth.yaml");
    std::fs::write(&f, yaml).expect("write config");
    f.display().to_string()
}

#[test]
fn retention_run_and_repo_delete_next_to_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let config = write_config(
        dir.path(),
        "retention:\n  policies:\n    - repositories: \"apps/**\"\n      keep_last: 1\n      keep_tags: [\"^v\\\\d+$\"]\n      keep_at_least: 1\n",
    );
    let server = Server::start(&data, Some(Path::new(&config)), &dir.path().join("server.log"));
    let addr = server.addr;
    let old = push_image(addr, "apps/web", "pr-1", "old");
    push_image(addr, "apps/web", "v1", "release");
    push_image(addr, "apps/web", "pr-2", "new");
    push_image(addr, "tools/ci", "pr-1", "ci");

    // Dry run: pr-1 would go (beyond the newest, not named by keep_tags); nothing changes.
    let (ok, out, err) = berth(&["retention", "run", "--dry-run", "--config", &config, "--data-dir", &data_arg], "");
    assert!(ok, "{err}");
    assert!(out.contains(&format!("would delete apps/web:pr-1 {old}")), "{out}");
    assert!(out.contains("retention.policies[0]") && out.contains("its manifest loses its last tag"), "{out}");
    assert!(out.contains("would delete 1 tags"), "{out}");
    assert!(!out.contains("tools/ci"), "no policy names tools/ci: {out}");
    assert!(tags(addr, "apps/web").1.contains("pr-1"), "a dry run deletes nothing");

    // For real: the tag and its (now untagged) manifest go; the server sees it at once.
    let (ok, out, err) = berth(&["retention", "run", "--config", &config, "--data-dir", &data_arg], "");
    assert!(ok, "{err}");
    assert!(out.contains(&format!("deleted apps/web:pr-1 {old}")), "{out}");
    assert!(out.contains(&format!("deleted manifest apps/web@{old}")), "{out}");
    assert!(out.contains("deleted 1 tags and 1 manifests in 1 repositories"), "{out}");
    let (_, list) = tags(addr, "apps/web");
    assert!(!list.contains("pr-1") && list.contains("pr-2") && list.contains("v1"), "{list}");
    assert_eq!(request(addr, "GET", &format!("/v2/apps/web/manifests/{old}"), &[], b"").expect("get").status, 404);
    let audit = request(addr, "GET", "/admin/audit?repository=apps/web&action=delete", &[], b"").expect("audit");
    let audit = String::from_utf8_lossy(&audit.body).into_owned();
    assert!(audit.contains("\"tag\":\"pr-1\"") && audit.contains("retention-"), "recorded as events of one run: {audit}");

    // Bulk tag deletion, dry then for real.
    let (ok, out, err) = berth(&["tags", "delete", "tools/ci", "--pattern", "pr-*", "--dry-run", "--data-dir", &data_arg], "");
    assert!(ok, "{err}");
    assert!(out.contains("would delete tools/ci:pr-1") && out.contains("would delete 1 tags"), "{out}");
    let (ok, out, err) = berth(&["tags", "delete", "tools/ci", "--pattern", "pr-*", "--older-than", "0s", "--data-dir", &data_arg], "");
    assert!(ok, "{err}");
    assert!(out.contains("deleted tools/ci:pr-1") && out.contains("(their manifests stay)"), "{out}");
    assert_eq!(tags(addr, "tools/ci").1, r#"{"name":"tools/ci","tags":[]}"#);

    // Repository deletion asks first; "no" (or no answer) deletes nothing.
    let (ok, _, err) = berth(&["repo", "delete", "apps/web", "--data-dir", &data_arg], "n\n");
    assert!(!ok && err.contains("Delete repository apps/web (2 tags, 2 manifests, 6 blob links, 0 uploads in progress)?"), "{err}");
    assert!(err.contains("nothing was deleted"), "{err}");
    assert_eq!(tags(addr, "apps/web").0, 200);
    let (ok, out, err) = berth(&["repo", "delete", "apps/web", "--data-dir", &data_arg], "y\n");
    assert!(ok, "{err}");
    assert!(out.contains("deleted repository apps/web: 2 tags, 2 manifests, 6 blob links, 0 upload sessions"), "{out}");
    assert_eq!(tags(addr, "apps/web").0, 404);
    let catalog = request(addr, "GET", "/v2/_catalog", &[], b"").expect("catalog");
    assert_eq!(String::from_utf8_lossy(&catalog.body), r#"{"repositories":["tools/ci"]}"#);
    let (ok, out, err) = berth(&["repo", "delete", "tools/ci", "--yes", "--data-dir", &data_arg], "");
    assert!(ok && out.contains("deleted repository tools/ci"), "{out}{err}");
    let (ok, _, err) = berth(&["repo", "delete", "tools/ci", "--yes", "--data-dir", &data_arg], "");
    assert!(!ok && err.contains("repository tools/ci does not exist"), "{err}");

    // Arguments and configuration are checked before anything is opened.
    let (ok, _, err) = berth(&["repo", "delete", "Bad/Name", "--yes", "--data-dir", &data_arg], "");
    assert!(!ok && err.contains("Bad/Name"), "{err}");
    let bad = write_config(dir.path(), "retention:\n  policies:\n    - repositories: \"**\"\n      keep_last: 1\n      keep_tags: [\"v(\"]\n");
    let (ok, _, err) = berth(&["retention", "run", "--config", &bad, "--data-dir", &data_arg], "");
    assert!(!ok && err.contains("retention.policies[0].keep_tags[0]"), "{err}");
    let (ok, out, err) = berth(&["retention", "run", "--data-dir", &data_arg], "");
    assert!(ok && out.contains("no retention policies"), "{out}{err}");
}
