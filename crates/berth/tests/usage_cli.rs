//! Policies as a user meets them: a server started with a configuration file that has
//! `policies.quotas` and `policies.immutable_tags` refuses what they forbid, and `berth usage`
//! (next to the running server, on the same data) reports each quota and repository.

mod support;

use std::process::Command;

use support::{Server, request, sha256_digest};

const CONFIG: &str = r#"
policies:
  immutable_tags:
    - repositories: "prod/**"
      tags: ["v*"]
  quotas:
    - namespace: "team-a/**"
      limit: 3KiB
    - namespace: "prod/**"
      limit: 1GiB
"#;

fn berth(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run berth");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn berth_usage_reports_quotas_and_repositories_next_to_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("berth.yaml");
    std::fs::write(&config, CONFIG).expect("write config");
    let server = Server::start(&data, Some(&config), &dir.path().join("server.log"));
    let push = |repo: &str, bytes: &[u8]| {
        let d = sha256_digest(bytes);
        let r = request(server.addr, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], bytes).expect("push");
        (r, d)
    };
    let (r, _) = push("team-a/big", &[1u8; 2048]);
    assert_eq!(r.status, 201, "{}", r.describe());
    let (r, _) = push("team-a/small", &[2u8; 512]);
    assert_eq!(r.status, 201, "{}", r.describe());
    // Shared with team-a/big: counted once for the namespace, in each repository's figure.
    let (r, _) = push("team-a/small", &[1u8; 2048]);
    assert_eq!(r.status, 201, "{}", r.describe());
    let (r, _) = push("team-a/small", &[3u8; 1024]);
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(String::from_utf8_lossy(&r.body).contains("quota exceeded for team-a/**: 3.0 KiB limit, 2.5 KiB used, this blob needs 1.0 KiB"), "{}", r.describe());

    // An immutable tag holds on the real server too.
    let (_, config_d) = push("prod/app", br#"{"architecture":"amd64","os":"linux"}"#);
    let manifest = |layer: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":4}}]}}"#
        )
    };
    let ct = [("Content-Type", "application/vnd.oci.image.manifest.v1+json".to_owned())];
    let (_, l1) = push("prod/app", b"one!");
    let (_, l2) = push("prod/app", b"two!");
    assert_eq!(request(server.addr, "PUT", "/v2/prod/app/manifests/v1", &ct, manifest(&l1).as_bytes()).expect("put").status, 201);
    assert_eq!(request(server.addr, "PUT", "/v2/prod/app/manifests/v1", &ct, manifest(&l1).as_bytes()).expect("put").status, 201, "the same again");
    let r = request(server.addr, "PUT", "/v2/prod/app/manifests/v1", &ct, manifest(&l2).as_bytes()).expect("put");
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(String::from_utf8_lossy(&r.body).contains("tag is immutable"), "{}", r.describe());

    let cfg = config.to_str().expect("utf-8 path");
    let data_arg = data.to_str().expect("utf-8 path");
    let (ok, out, err) = berth(&["usage", "--config", cfg, "--data-dir", data_arg]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    let expected: Vec<Vec<&str>> = [
        "QUOTA USED LIMIT USE% BLOBS",
        "team-a/** 2.5 KiB 3.0 KiB 83.3% 2",
        "prod/** 45 B 1.0 GiB 0.0% 3",
        "",
        "REPOSITORY LINKED BLOBS",
        "team-a/small 2.5 KiB 2",
        "team-a/big 2.0 KiB 1",
        "prod/app 45 B 3",
    ]
    .iter()
    .map(|l| l.split_whitespace().collect())
    .collect();
    assert_eq!(lines, expected, "{out}");

    let (ok, out, err) = berth(&["usage", "--config", cfg, "--data-dir", data_arg, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["quotas"][0]["namespace"], "team-a/**");
    assert_eq!((v["quotas"][0]["bytes"].as_u64(), v["quotas"][0]["limit"].as_u64()), (Some(2560), Some(3072)));
    // The admin API answers the same.
    let admin: serde_json::Value = serde_json::from_slice(&request(server.addr, "GET", "/admin/usage", &[], b"").expect("admin").body).expect("JSON");
    assert_eq!(admin, v);

    // Without quotas configured it still lists repositories; a bad config is named.
    let (ok, out, _) = berth(&["usage", "--data-dir", data_arg]);
    assert!(ok && out.starts_with("No quotas configured"), "{out}");
    std::fs::write(&config, "policies:\n  quotas:\n    - {namespace: \"Team/**\", limit: 1GiB}\n").expect("write");
    let (ok, _, err) = berth(&["usage", "--config", cfg, "--data-dir", data_arg]);
    assert!(!ok && err.contains("policies.quotas[0].namespace"), "{err}");
}
