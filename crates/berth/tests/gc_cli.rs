//! `berth gc` as a user runs it: next to a running server on the same data directory (the
//! collection is online), first as a dry run, then for real.

mod support;

use std::process::Command;

use support::{Server, request, sha256_digest};

fn gc(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    gc_with(data_dir, args, &[])
}

fn gc_with(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("gc").arg("--data-dir").arg(data_dir).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run berth gc");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn berth_gc_collects_next_to_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    let push = |bytes: &[u8]| {
        let d = sha256_digest(bytes);
        let r = request(server.addr, "POST", &format!("/v2/app/blobs/uploads/?digest={d}"), &[], bytes).expect("push");
        assert_eq!(r.status, 201, "{}", r.describe());
        d
    };
    let stray = push(b"nobody references this");
    let config = push(br#"{"architecture":"amd64","os":"linux"}"#);
    let layer = push(b"a layer in use");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":14}}]}}"#
    );
    let r = request(server.addr, "PUT", "/v2/app/manifests/v1", &[("Content-Type", "application/vnd.oci.image.manifest.v1+json".into())], manifest.as_bytes()).expect("manifest");
    assert_eq!(r.status, 201, "{}", r.describe());
    std::thread::sleep(std::time::Duration::from_millis(20));

    let (ok, out, err) = gc(&data, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("deleted 0 blobs"), "within the default grace period nothing goes: {out}");
    let (ok, out, err) = gc(&data, &["--dry-run", "--grace", "0s"]);
    assert!(ok, "{err}");
    assert!(out.contains("would delete 1 blobs"), "{out}");
    assert!(err.contains("dry run"), "{err}");
    assert_eq!(request(server.addr, "GET", &format!("/v2/app/blobs/{stray}"), &[], b"").expect("get").status, 200, "a dry run deletes nothing");
    let (ok, out, err) = gc(&data, &["--grace", "0s"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed 1 unused repository links; deleted 1 blobs"), "{out}");
    // The running server no longer serves it; the image is whole.
    assert_eq!(request(server.addr, "GET", &format!("/v2/app/blobs/{stray}"), &[], b"").expect("get").status, 404);
    assert_eq!(request(server.addr, "GET", &format!("/v2/app/blobs/{layer}"), &[], b"").expect("get").body, b"a layer in use");
    assert_eq!(request(server.addr, "GET", "/v2/app/manifests/v1", &[("Accept", "application/vnd.oci.image.manifest.v1+json".into())], b"").expect("get").body, manifest.as_bytes());
    let files: Vec<_> = walk(&data.join("blobs"));
    assert!(!files.iter().any(|f| f.ends_with(stray.trim_start_matches("sha256:"))), "the bytes are gone from disk");
    assert_eq!(files.len(), 2, "{files:?}");
    let (ok, _, err) = gc(&data, &["--grace", "soon"]);
    assert!(!ok && err.contains("soon"), "{err}");
}

#[test]
fn berth_gc_collects_old_untagged_manifests_by_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    let push = |bytes: &[u8]| {
        let d = sha256_digest(bytes);
        let r = request(server.addr, "POST", &format!("/v2/app/blobs/uploads/?digest={d}"), &[], bytes).expect("push");
        assert_eq!(r.status, 201, "{}", r.describe());
        d
    };
    let config = push(br#"{"architecture":"amd64","os":"linux"}"#);
    let manifest_of = |layer: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
        )
    };
    let put = |reference: &str, body: &str| {
        let r = request(server.addr, "PUT", &format!("/v2/app/manifests/{reference}"), &[("Content-Type", "application/vnd.oci.image.manifest.v1+json".into())], body.as_bytes())
            .expect("manifest");
        assert_eq!(r.status, 201, "{}", r.describe());
    };
    let untagged = manifest_of(&push(b"layer of an untagged image"));
    let untagged_digest = sha256_digest(untagged.as_bytes());
    put(&untagged_digest, &untagged);
    put("v1", &manifest_of(&push(b"layer of a tagged image")));
    // Pushed ten days ago, as far as the database knows.
    let manifests = || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(async {
            use sqlx::{Connection, Row};
            let mut c = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", data.join("meta.db").display())).await.expect("open");
            let ten_days_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64 - 10 * 86_400_000;
            sqlx::query("UPDATE manifests SET created_at = $1, untagged_at = NULL WHERE digest = $2").bind(ten_days_ago).bind(untagged_digest.as_str()).execute(&mut c).await.expect("age");
            sqlx::query("SELECT COUNT(*) AS n FROM manifests").fetch_one(&mut c).await.expect("count").get::<i64, _>("n")
        })
    };
    assert_eq!(manifests(), 2);

    let (ok, out, err) = gc(&data, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("untagged manifests deleted: 0"), "off by default: {out}");
    let policy = [("BERTH_GC__UNTAGGED__ENABLED", "true"), ("BERTH_GC__UNTAGGED__OLDER_THAN", "7d")];
    let (ok, out, err) = gc_with(&data, &["--dry-run"], &policy);
    assert!(ok, "{err}");
    assert!(out.contains("untagged manifests to delete: 1"), "{out}");
    assert!(err.contains("untagged manifests collected after 7d"), "{err}");
    assert_eq!(manifests(), 2, "a dry run deletes nothing");
    let (ok, out, err) = gc_with(&data, &[], &policy);
    assert!(ok, "{err}");
    assert!(out.contains("untagged manifests deleted: 1"), "{out}");
    assert_eq!(manifests(), 1, "the tagged image stays");
    assert_eq!(request(server.addr, "GET", "/v2/app/manifests/v1", &[("Accept", "application/vnd.oci.image.manifest.v1+json".into())], b"").expect("get").status, 200);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// `berth gc --url URL [flags...]`, with `stdin` on standard input.
fn gc_remote(url: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut all = vec!["gc", "--url", url];
    all.extend_from_slice(args);
    support::run_berth(&all, stdin)
}

#[test]
fn berth_gc_url_asks_the_running_server_to_collect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    let url = format!("http://{}", server.addr);
    let stray_bytes: &[u8] = b"collected by the server itself";
    let stray = sha256_digest(stray_bytes);
    let r = request(server.addr, "POST", &format!("/v2/app/blobs/uploads/?digest={stray}"), &[], stray_bytes).expect("push");
    assert_eq!(r.status, 201, "{}", r.describe());
    std::thread::sleep(std::time::Duration::from_millis(20));

    let (ok, out, err) = gc_remote(&url, &[], "");
    assert!(ok, "{err}");
    assert!(out.contains("removed 0 unused repository links; deleted 0 blobs"), "the server's grace period (24h) keeps it: {out}");
    assert!(err.contains(&format!("asking {url} to collect")), "{err}");
    let (ok, out, err) = gc_remote(&format!("{url}/"), &["--dry-run", "--grace", "0s"], "");
    assert!(ok, "{err}");
    assert!(out.contains("untagged manifests to delete: 0") && out.contains("would delete 1 blobs, 30 B"), "{out}");
    assert!(err.contains("dry run"), "{err}");
    assert_eq!(request(server.addr, "GET", &format!("/v2/app/blobs/{stray}"), &[], b"").expect("get").status, 200, "a dry run deletes nothing");
    let (ok, out, err) = gc_remote(&url, &["--grace", "0s"], "");
    assert!(ok, "{err}");
    assert!(out.contains("untagged manifests deleted: 0") && out.contains("removed 1 unused repository links; deleted 1 blobs, 30 B"), "{out}");
    assert_eq!(request(server.addr, "GET", &format!("/v2/app/blobs/{stray}"), &[], b"").expect("get").status, 404);
    assert!(walk(&data.join("blobs")).is_empty(), "the bytes are gone from disk");
    assert!(server.log().contains("garbage collected"), "the server ran it: {}", server.log_tail());

    // Flags that make no sense together, and a server that is not there.
    let (ok, _, err) = gc_remote(&url, &["--data-dir", "/tmp"], "");
    assert!(!ok && err.contains("--data-dir"), "{err}");
    let (ok, _, err) = gc_remote("http://127.0.0.1:9", &[], "");
    assert!(!ok && err.contains("reaching http://127.0.0.1:9"), "{err}");
    let (ok, _, err) = gc_remote("localhost:5000", &[], "");
    assert!(!ok && err.contains("http://"), "{err}");
}

#[test]
fn berth_gc_url_needs_an_admin_when_access_control_is_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let users = dir.path().join("htpasswd");
    for (name, password) in [("ops", "ops-secret"), ("dev", "dev-secret")] {
        let mut add = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["user", "add", name, "--cost", "4", "--password-stdin", "--file"])
            .arg(&users)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("berth user add");
        std::io::Write::write_all(&mut add.stdin.take().expect("stdin"), format!("{password}\n").as_bytes()).expect("password");
        assert!(add.wait().expect("user add").success());
    }
    let config = dir.path().join("berth.yaml");
    std::fs::write(&config, format!("auth:\n  mode: basic\n  htpasswd: {}\n  admins: [ops]\n", users.display())).expect("config");
    let server = Server::start_probed(&data, Some(&config), &dir.path().join("server.log"), &|addr| {
        request(addr, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 401)
    });
    let url = format!("http://{}", server.addr);

    let (ok, _, err) = gc_remote(&url, &[], "");
    assert!(!ok && err.contains("401") && err.contains("--user"), "{err}");
    let (ok, _, err) = gc_remote(&url, &["--user", "dev", "--password-stdin"], "dev-secret\n");
    assert!(!ok && err.contains("403"), "not an admin: {err}");
    let (ok, _, err) = gc_remote(&url, &["--user", "ops", "--password-stdin"], "wrong\n");
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = gc_remote(&url, &["--user", "ops", "--password-stdin", "--dry-run"], "ops-secret\n");
    assert!(ok, "{err}");
    assert!(out.contains("would delete 0 blobs"), "{out}");
}
