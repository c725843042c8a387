//! `berth migrate` and `berth import distribution`, as processes.
//!
//! Migrate: content is pushed to a real `berth serve`, the server is stopped, `berth migrate`
//! copies its deployment into another, a server on the copy must answer every read exactly as the
//! original did (catalog, tag lists, manifests by tag and digest with their media types, blob
//! bytes, referrers), and a second run copies nothing. A run killed with SIGKILL mid-copy is
//! finished by the next. With `TEST_POSTGRES_URL` and `TEST_S3_*` (see `cluster.rs`) the copy
//! also goes into PostgreSQL + S3; without them that test passes with a notice, except under
//! `CI=true`.
//!
//! Import: a Distribution (`registry:2`) storage root written by hand exactly as Distribution
//! lays it out (nested names, a schema 1 manifest, a lax blob reference, uploads in progress,
//! deleted links) is imported and read back; a corrupt blob is an error naming its path. When
//! Distribution itself is installed (`docker-registry`, Debian's package) it is also run, pushed
//! to over HTTP, and its storage imported and compared read by read.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Response, Server, content, request, sha256_digest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const NOT_CONFIGURED: &str = "cluster services not configured: run scripts/services.sh start all DIR and source DIR/env";

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("berth-migrate-").tempdir().expect("temp dir")
}

fn expect(resp: &Response, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.describe());
}

/// Run the `berth` binary to completion, without any `BERTH_*` variable of the caller's.
fn berth(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = berth_command(args);
    cmd.output().expect("run berth")
}

fn berth_command(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    for a in args {
        cmd.arg(a);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run berth and require success; returns its stderr (and shows it: the figures are the point).
fn berth_ok(what: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = berth(args);
    let err = stderr(&out);
    let _ = std::io::stderr().write_all(format!("--- {what} ---\n{err}").as_bytes());
    assert!(out.status.success(), "{what} failed ({}):\n{err}", out.status);
    err
}

// ---- pushing (to berth or to Distribution) ----

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": sha256_digest(data), "size": data.len() })
}

/// The path part of a Location (Distribution answers absolute URLs).
fn path_of(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned()),
        None => location.to_owned(),
    }
}

/// Push a blob: one monolithic POST where the registry supports it, else POST then PUT.
fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let d = sha256_digest(data);
    let ct = [("Content-Type", "application/octet-stream".to_owned())];
    let r = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &ct, data).expect("POST blob");
    if r.status == 202 {
        let location = path_of(r.header("location").expect("Location"));
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = request(addr, "PUT", &format!("{location}{sep}digest={d}"), &ct, data).expect("PUT blob");
        expect(&r, 201, "blob PUT");
    } else {
        expect(&r, 201, "monolithic blob POST");
    }
    d
}

fn put_manifest(addr: SocketAddr, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
    let r = request(addr, "PUT", &format!("/v2/{repo}/manifests/{reference}"), &[("Content-Type", media_type.to_owned())], body).expect("PUT manifest");
    expect(&r, 201, &format!("manifest PUT {repo}:{reference}"));
    sha256_digest(body)
}

/// An image manifest over a config and layers, all pushed to `repo`.
fn image(addr: SocketAddr, repo: &str, docker: bool, config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let (mt, cfg_mt, layer_mt) = if docker { (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER) } else { (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER) };
    push_blob(addr, repo, config);
    for l in layers {
        push_blob(addr, repo, l);
    }
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": descriptor(cfg_mt, config),
        "layers": layers.iter().map(|l| descriptor(layer_mt, l)).collect::<Vec<_>>(),
    });
    serde_json::to_vec_pretty(&m).expect("json")
}

/// What to read back from a registry beyond its catalog and tag lists.
#[derive(Default)]
struct Probe {
    manifests: Vec<(String, String)>,
    blobs: Vec<(String, String)>,
    subjects: Vec<(String, String)>,
}

/// Several repositories: an image under two tags; Docker and OCI images under an index with a
/// referrer; a nested name; a layer shared between repositories. With `berth_only`, also what
/// Distribution 2.8 has no API for (the referrer) and an emptied repository (a blob pushed, then
/// deleted: a repository with no content, a blob linked nowhere).
fn push_corpus(addr: SocketAddr, berth_only: bool) -> Probe {
    let mut p = Probe::default();
    let shared = content(1, 300_000);
    let extra = content(2, 1_200_000);
    let m = image(addr, "library/alpine", false, br#"{"architecture":"amd64","os":"linux"}"#, &[&shared, &extra]);
    let d = put_manifest(addr, "library/alpine", "3.19", OCI_MANIFEST, &m);
    put_manifest(addr, "library/alpine", "latest", OCI_MANIFEST, &m);
    p.manifests.push(("library/alpine".into(), d));
    for b in [&shared, &extra] {
        p.blobs.push(("library/alpine".into(), sha256_digest(b)));
    }

    let amd_layer = content(3, 700_000);
    let arm_layer = content(4, 650_000);
    let amd = image(addr, "team/app", true, br#"{"architecture":"amd64","os":"linux","note":"docker"}"#, &[&shared, &amd_layer]);
    let arm = image(addr, "team/app", false, br#"{"architecture":"arm64","os":"linux"}"#, &[&shared, &arm_layer]);
    let amd_d = put_manifest(addr, "team/app", "v1-amd64", DOCKER_MANIFEST, &amd);
    let arm_d = put_manifest(addr, "team/app", &sha256_digest(&arm), OCI_MANIFEST, &arm);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": DOCKER_MANIFEST, "digest": amd_d, "size": amd.len(), "platform": { "architecture": "amd64", "os": "linux" } },
            { "mediaType": OCI_MANIFEST, "digest": arm_d, "size": arm.len(), "platform": { "architecture": "arm64", "os": "linux" } },
        ],
    }))
    .expect("json");
    let index_d = put_manifest(addr, "team/app", "v1", OCI_INDEX, &index);
    put_manifest(addr, "team/app", "stable", OCI_INDEX, &index);
    p.manifests.extend([amd_d.clone(), arm_d, index_d].map(|d| ("team/app".to_owned(), d)));
    for b in [&shared, &amd_layer, &arm_layer] {
        p.blobs.push(("team/app".into(), sha256_digest(b)));
    }

    let nested = content(5, 90_000);
    let m = image(addr, "a/b/c", false, br#"{"architecture":"amd64","os":"linux","nested":true}"#, &[&nested]);
    let d = put_manifest(addr, "a/b/c", "v0.1", OCI_MANIFEST, &m);
    p.manifests.push(("a/b/c".into(), d));
    p.blobs.push(("a/b/c".into(), sha256_digest(&nested)));

    if berth_only {
        let sig = content(6, 2_000);
        push_blob(addr, "team/app", b"{}");
        push_blob(addr, "team/app", &sig);
        let referrer = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature.v1",
            "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            "layers": [descriptor("application/vnd.example.signature.v1", &sig)],
            "subject": { "mediaType": DOCKER_MANIFEST, "digest": amd_d, "size": amd.len() },
            "annotations": { "signed-by": "test" },
        }))
        .expect("json");
        let r = put_manifest(addr, "team/app", &sha256_digest(&referrer), OCI_MANIFEST, &referrer);
        p.manifests.push(("team/app".into(), r));
        p.subjects.push(("team/app".into(), amd_d));
        let gone = content(7, 10_000);
        let g = push_blob(addr, "tmp/emptied", &gone);
        expect(&request(addr, "DELETE", &format!("/v2/tmp/emptied/blobs/{g}"), &[], b"").expect("DELETE"), 202, "blob delete");
        p.blobs.push(("tmp/emptied".into(), g));
    }
    p
}

// ---- reading back ----

/// One manifest GET: status, Content-Type, Docker-Content-Digest, body.
type Fetched = (u16, Option<String>, Option<String>, Vec<u8>);

#[derive(Debug, PartialEq)]
struct Snapshot {
    catalog: Vec<String>,
    tags: BTreeMap<String, Vec<String>>,
    by_tag: BTreeMap<String, Fetched>,
    by_digest: BTreeMap<String, Fetched>,
    /// Status, sha256 and length of each probed blob.
    blobs: BTreeMap<String, (u16, String, usize)>,
    referrers: BTreeMap<String, serde_json::Value>,
}

fn fetch_manifest(addr: SocketAddr, repo: &str, reference: &str) -> Fetched {
    let accept = [("Accept", [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", "))];
    let r = request(addr, "GET", &format!("/v2/{repo}/manifests/{reference}"), &accept, b"").expect("GET manifest");
    let body = if r.status == 200 { r.body.clone() } else { Vec::new() };
    (r.status, r.header("content-type").map(str::to_owned), r.header("docker-content-digest").map(str::to_owned), body)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("JSON body ({e}): {}", r.describe()))
}

fn snapshot(addr: SocketAddr, probe: &Probe) -> Snapshot {
    let r = request(addr, "GET", "/v2/_catalog?n=1000", &[], b"").expect("catalog");
    expect(&r, 200, "catalog");
    let mut catalog: Vec<String> = json(&r)["repositories"].as_array().expect("repositories").iter().map(|v| v.as_str().expect("name").to_owned()).collect();
    catalog.sort();
    let mut snap = Snapshot { catalog: catalog.clone(), tags: BTreeMap::new(), by_tag: BTreeMap::new(), by_digest: BTreeMap::new(), blobs: BTreeMap::new(), referrers: BTreeMap::new() };
    for repo in &catalog {
        let r = request(addr, "GET", &format!("/v2/{repo}/tags/list"), &[], b"").expect("tags");
        expect(&r, 200, "tag list");
        let mut tags: Vec<String> = json(&r)["tags"].as_array().map(|a| a.iter().map(|v| v.as_str().expect("tag").to_owned()).collect()).unwrap_or_default();
        tags.sort();
        for t in &tags {
            snap.by_tag.insert(format!("{repo}:{t}"), fetch_manifest(addr, repo, t));
        }
        snap.tags.insert(repo.clone(), tags);
    }
    for (repo, d) in &probe.manifests {
        snap.by_digest.insert(format!("{repo}@{d}"), fetch_manifest(addr, repo, d));
    }
    for (repo, d) in &probe.blobs {
        let r = request(addr, "GET", &format!("/v2/{repo}/blobs/{d}"), &[], b"").expect("GET blob");
        let body = if r.status == 200 { r.body } else { Vec::new() };
        snap.blobs.insert(format!("{repo}@{d}"), (r.status, sha256_digest(&body), body.len()));
    }
    for (repo, d) in &probe.subjects {
        let r = request(addr, "GET", &format!("/v2/{repo}/referrers/{d}"), &[], b"").expect("GET referrers");
        expect(&r, 200, "referrers");
        snap.referrers.insert(format!("{repo}@{d}"), json(&r));
    }
    snap
}

/// The corpus reads as pushed: a sanity check that the comparison compares something.
fn check_corpus(s: &Snapshot, berth_only: bool) {
    assert_eq!(s.tags["team/app"], ["stable", "v1", "v1-amd64"]);
    assert_eq!(s.tags["library/alpine"], ["3.19", "latest"]);
    assert_eq!(s.by_tag["team/app:v1"].1.as_deref(), Some(OCI_INDEX));
    assert_eq!(s.by_tag["team/app:v1-amd64"].1.as_deref(), Some(DOCKER_MANIFEST));
    assert!(s.by_digest.values().all(|f| f.0 == 200 && !f.3.is_empty()), "every manifest pushed reads back");
    let missing: Vec<_> = s.blobs.iter().filter(|(k, b)| b.0 != 200 && !k.starts_with("tmp/")).collect();
    assert!(missing.is_empty(), "blobs do not read back: {missing:?}");
    if berth_only {
        let refs = &s.referrers.values().next().expect("a subject")["manifests"];
        assert_eq!(refs.as_array().map(Vec::len), Some(1), "{refs}");
        assert_eq!(refs[0]["artifactType"], "application/vnd.example.signature.v1");
        assert_eq!(s.tags.get("tmp/emptied").map(Vec::len), Some(0), "the emptied repository is listed, without tags");
    }
}

/// The source's snapshot less what migrate leaves out on purpose: repositories with no content.
fn without_empty_repositories(mut s: Snapshot) -> Snapshot {
    s.catalog.retain(|r| r != "tmp/emptied");
    s.tags.remove("tmp/emptied");
    s
}

fn stop(mut server: Server) {
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "server did not stop cleanly\n{}", server.log_tail());
}

// ---- berth migrate ----

#[test]
fn migrate_copies_a_deployment_and_a_second_run_copies_nothing() {
    let dir = tempdir();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let log = dir.path().join("server.log");
    let server = Server::start(&src, None, &log);
    let probe = push_corpus(server.addr, true);
    let before = snapshot(server.addr, &probe);
    check_corpus(&before, true);
    stop(server);

    let first = berth_ok("berth migrate (first run)", &[&"migrate", &"--from-data-dir", &src, &"--to-data-dir", &dst]);
    assert!(first.contains("verify: ") && first.contains(": ok"), "{first}");
    assert!(!first.contains("blobs: 0 copied"), "the first run copies blobs:\n{first}");
    assert!(first.contains("1 blobs linked to no repository are not copied"), "{first}");
    assert!(first.contains("1 repositories without blobs, manifests or tags are not created"), "{first}");

    // Again, now naming the (empty: embedded default) configuration files.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").expect("write config");
    let again = berth_ok("berth migrate (second run)", &[&"migrate", &"--from", &empty, &"--from-data-dir", &src, &"--to", &empty, &"--to-data-dir", &dst]);
    for nothing in ["blobs: 0 copied", "manifests: 0 copied", "tags: 0 set", "; 0 more links"] {
        assert!(again.contains(nothing), "a second run copies nothing ({nothing}):\n{again}");
    }
    assert!(again.contains(": ok"), "{again}");

    let server = Server::start(&dst, None, &log);
    let after = snapshot(server.addr, &probe);
    assert_eq!(after, without_empty_repositories(before), "the copy reads as the original");
    stop(server);

    // A typo in a path is not an empty registry; one database cannot be copied onto itself.
    let out = berth(&[&"migrate", &"--from-data-dir", &dir.path().join("nope"), &"--to-data-dir", &dst]);
    assert!(!out.status.success() && stderr(&out).contains("no metadata database"), "{}", stderr(&out));
    let out = berth(&[&"migrate", &"--from-data-dir", &dst, &"--to-data-dir", &dst]);
    assert!(!out.status.success() && stderr(&out).contains("same database"), "{}", stderr(&out));
}

/// Deleting a blob does not check which manifests use it, so a source can hold a manifest the
/// destination would refuse: the run says which, copies the rest, and fails.
#[test]
fn migrate_names_a_manifest_whose_blob_was_deleted() {
    let dir = tempdir();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let log = dir.path().join("server.log");
    let server = Server::start(&src, None, &log);
    let layer = content(31, 4_000);
    let broken = image(server.addr, "half/gone", false, br#"{"os":"linux","architecture":"amd64"}"#, &[&layer]);
    let broken_d = put_manifest(server.addr, "half/gone", "broken", OCI_MANIFEST, &broken);
    let fine = image(server.addr, "half/gone", false, br#"{"os":"linux","architecture":"arm64"}"#, &[]);
    put_manifest(server.addr, "half/gone", "fine", OCI_MANIFEST, &fine);
    let r = request(server.addr, "DELETE", &format!("/v2/half/gone/blobs/{}", sha256_digest(&layer)), &[], b"").expect("DELETE");
    expect(&r, 202, "blob delete");
    stop(server);
    let out = berth(&[&"migrate", &"--from-data-dir", &src, &"--to-data-dir", &dst]);
    let err = stderr(&out);
    let _ = std::io::stderr().write_all(format!("--- berth migrate (a manifest missing a blob) ---\n{err}").as_bytes());
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("half/gone@{broken_d}: references {}", sha256_digest(&layer))), "{err}");
    assert!(err.contains("MISMATCH"), "{err}");
    let server = Server::start(&dst, None, &log);
    assert_eq!(fetch_manifest(server.addr, "half/gone", "fine").0, 200);
    assert_eq!(fetch_manifest(server.addr, "half/gone", "broken").0, 404);
    stop(server);
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

/// Many blobs, so a run can be killed in the middle; the next run finishes and the one after
/// copies nothing.
#[test]
fn migrate_killed_mid_copy_is_finished_by_the_next_run() {
    let dir = tempdir();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let log = dir.path().join("server.log");
    let server = Server::start(&src, None, &log);
    const N: u64 = 300;
    let layers: Vec<Vec<u8>> = (0..N).map(|i| content(1000 + i, 128 * 1024 + i as usize)).collect();
    let big = content(99, 48 << 20);
    let mut refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    refs.push(&big);
    let m = image(server.addr, "bulk/many", false, br#"{"architecture":"amd64","os":"linux","bulk":true}"#, &refs);
    let d = put_manifest(server.addr, "bulk/many", "all", OCI_MANIFEST, &m);
    let mut probe = Probe { manifests: vec![("bulk/many".into(), d)], ..Probe::default() };
    probe.blobs = refs.iter().map(|l| ("bulk/many".to_owned(), sha256_digest(l))).collect();
    let before = snapshot(server.addr, &probe);
    stop(server);

    let err_log = dir.path().join("killed.stderr");
    let mut child = berth_command(&[&"migrate", &"--from-data-dir", &src, &"--to-data-dir", &dst, &"--jobs", &"1"])
        .stderr(std::fs::File::create(&err_log).expect("stderr file"))
        .spawn()
        .expect("spawn berth migrate");
    let deadline = Instant::now() + Duration::from_secs(60);
    let blobs_dir = dst.join("blobs");
    while count_files(&blobs_dir) < 20 {
        assert!(child.try_wait().expect("try_wait").is_none(), "migrate ended before it could be interrupted:\n{}", std::fs::read_to_string(&err_log).unwrap_or_default());
        assert!(Instant::now() < deadline, "migrate copied nothing within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().expect("try_wait").is_none(), "migrate ended before it could be interrupted");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let partial = count_files(&blobs_dir);
    assert!(partial < refs.len() + 1, "the run was cut short ({partial} blobs)");

    let resumed = berth_ok("berth migrate (after SIGKILL)", &[&"migrate", &"--from-data-dir", &src, &"--to-data-dir", &dst]);
    assert!(resumed.contains(": ok"), "{resumed}");
    let blobs_line = resumed.lines().find(|l| l.starts_with("  blobs: ")).expect("summary line");
    assert!(!blobs_line.contains(", 0 already there;"), "the resumed run kept what the killed one copied:\n{resumed}");
    let last = berth_ok("berth migrate (third run)", &[&"migrate", &"--from-data-dir", &src, &"--to-data-dir", &dst]);
    assert!(last.contains("blobs: 0 copied") && last.contains("manifests: 0 copied"), "{last}");

    let server = Server::start(&dst, None, &log);
    assert_eq!(snapshot(server.addr, &probe), before);
    stop(server);
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A PostgreSQL + S3 configuration over a fresh database and key prefix, or `None` (after a
/// notice) when the services are not configured.
fn scale_out_config(dir: &Path) -> Option<PathBuf> {
    let (Some(pg), Some(endpoint)) = (env("TEST_POSTGRES_URL"), env("TEST_S3_ENDPOINT")) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{NOT_CONFIGURED} (TEST_POSTGRES_URL or TEST_S3_ENDPOINT is unset and CI=true)");
        let _ = std::io::stderr().write_all(format!("\n*** SKIPPED, MIGRATION TO POSTGRESQL + S3 NOT TESTED: {NOT_CONFIGURED} ***\n").as_bytes());
        return None;
    };
    let var = |v: &str| env(v).unwrap_or_else(|| panic!("{v} must be set with TEST_S3_ENDPOINT"));
    let name = format!("migrate_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use sqlx::{Connection, Executor};
        let mut c = sqlx::postgres::PgConnection::connect(&pg).await.expect("connect to TEST_POSTGRES_URL");
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create database");
        c.close().await.expect("close");
    });
    let (base, _) = pg.rsplit_once('/').expect("URL has a database part");
    let config = dir.join("scale-out.yaml");
    std::fs::write(
        &config,
        format!(
            "database:\n  driver: postgres\n  postgres:\n    url: {base}/{name}\n\
             storage:\n  driver: s3\n  s3:\n    endpoint: {endpoint}\n    bucket: {}\n    region: {}\n    path_style: true\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: migrate-{}\n",
            var("TEST_S3_BUCKET"),
            var("TEST_S3_REGION"),
            var("TEST_S3_ACCESS_KEY"),
            var("TEST_S3_SECRET_KEY"),
            uuid::Uuid::new_v4().simple()
        ),
    )
    .expect("write config");
    Some(config)
}

#[test]
fn migrate_into_postgres_and_s3() {
    let dir = tempdir();
    let Some(config) = scale_out_config(dir.path()) else { return };
    let (src, node) = (dir.path().join("src"), dir.path().join("node"));
    let log = dir.path().join("server.log");
    let server = Server::start(&src, None, &log);
    let probe = push_corpus(server.addr, true);
    let before = snapshot(server.addr, &probe);
    check_corpus(&before, true);
    stop(server);

    let first = berth_ok("berth migrate into PostgreSQL + S3", &[&"migrate", &"--from-data-dir", &src, &"--to", &config, &"--to-data-dir", &node]);
    assert!(first.contains(": ok") && first.contains("to   PostgreSQL"), "{first}");
    let again = berth_ok("berth migrate into PostgreSQL + S3, again", &[&"migrate", &"--from-data-dir", &src, &"--to", &config, &"--to-data-dir", &node]);
    assert!(again.contains("blobs: 0 copied") && again.contains("manifests: 0 copied") && again.contains("tags: 0 set"), "{again}");

    let server = Server::start(&node, Some(&config), &log);
    assert_eq!(snapshot(server.addr, &probe), without_empty_repositories(before));
    stop(server);
}

// ---- berth import distribution ----

/// Writes files exactly where Distribution keeps them.
struct DistWriter {
    v2: PathBuf,
}

impl DistWriter {
    fn new(root: &Path) -> DistWriter {
        DistWriter { v2: root.join("docker/registry/v2") }
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let path = self.v2.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }

    fn blob_path(digest: &str) -> String {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        format!("blobs/sha256/{}/{hex}/data", &hex[..2])
    }

    fn blob(&self, data: &[u8]) -> String {
        let d = sha256_digest(data);
        self.write(&Self::blob_path(&d), data);
        d
    }

    fn layer_link(&self, repo: &str, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        self.write(&format!("repositories/{repo}/_layers/sha256/{hex}/link"), digest.as_bytes());
    }

    /// A manifest: its bytes as a blob, a revision link, and tags (with their history entry).
    fn manifest(&self, repo: &str, body: &[u8], tags: &[&str]) -> String {
        let d = self.blob(body);
        let hex = d.strip_prefix("sha256:").expect("sha256");
        self.write(&format!("repositories/{repo}/_manifests/revisions/sha256/{hex}/link"), d.as_bytes());
        for t in tags {
            self.tag(repo, t, &d);
        }
        d
    }

    fn tag(&self, repo: &str, tag: &str, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        self.write(&format!("repositories/{repo}/_manifests/tags/{tag}/current/link"), digest.as_bytes());
        self.write(&format!("repositories/{repo}/_manifests/tags/{tag}/index/sha256/{hex}/link"), digest.as_bytes());
    }

    /// An image whose config and layers are blobs linked to `repo`, except `unlinked` layers
    /// (in the blob store, referenced, but with no `_layers` link: Distribution lets that be).
    fn image(&self, repo: &str, media_type: Option<&str>, config: &[u8], layers: &[&[u8]], unlinked: &[&[u8]]) -> Vec<u8> {
        for b in std::iter::once(config).chain(layers.iter().copied()) {
            let d = self.blob(b);
            self.layer_link(repo, &d);
        }
        for b in unlinked {
            self.blob(b);
        }
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "config": descriptor(OCI_CONFIG, config),
            "layers": layers.iter().chain(unlinked).map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        });
        if let Some(mt) = media_type {
            m["mediaType"] = mt.into();
        }
        serde_json::to_vec_pretty(&m).expect("json")
    }
}

/// What the hand-made Distribution storage holds, and what must read back from berth.
struct HandMade {
    probe: Probe,
    /// (repo:tag, media type, bytes) expected.
    tagged: Vec<(String, &'static str, Vec<u8>)>,
    schema1: String,
    corruptible: String,
}

fn hand_made_distribution(root: &Path) -> HandMade {
    let w = DistWriter::new(root);
    let mut probe = Probe::default();
    let shared = content(11, 200_000);
    let l2 = content(12, 500_000);
    let lax = content(13, 100_000);
    // nginx: a Docker image, an OCI image without mediaType (its shape says what it is) that
    // references a blob the repository has no link to, a manifest list over both.
    let docker = w.image("library/nginx", Some(DOCKER_MANIFEST), br#"{"os":"linux","architecture":"amd64"}"#, &[&shared, &l2], &[]);
    let docker_d = w.manifest("library/nginx", &docker, &["latest"]);
    let oci = w.image("library/nginx", None, br#"{"os":"linux","architecture":"arm64"}"#, &[], &[&lax]);
    let oci_d = w.manifest("library/nginx", &oci, &["oci"]);
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            { "mediaType": DOCKER_MANIFEST, "digest": docker_d, "size": docker.len(), "platform": { "architecture": "amd64", "os": "linux" } },
            { "mediaType": OCI_MANIFEST, "digest": oci_d, "size": oci.len(), "platform": { "architecture": "arm64", "os": "linux" } },
        ],
    }))
    .expect("json");
    let list_d = w.manifest("library/nginx", &list, &["multi"]);
    // Schema 1 (berth cannot store it) under its own tag; a tag at a manifest that is gone.
    let schema1 = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 1, "name": "library/nginx", "tag": "old", "architecture": "amd64",
        "fsLayers": [{ "blobSum": sha256_digest(&shared) }],
        "history": [{ "v1Compatibility": "{\"id\":\"x\"}" }],
    }))
    .expect("json");
    let schema1_d = w.manifest("library/nginx", &schema1, &["old"]);
    w.tag("library/nginx", "gone", &sha256_digest(b"a manifest deleted long ago"));
    // A deleted layer link (the directory stays, its link file does not), an upload in progress.
    let deleted = content(14, 5_000);
    let deleted_d = w.blob(&deleted);
    std::fs::create_dir_all(w.v2.join(format!("repositories/library/nginx/_layers/sha256/{}", deleted_d.trim_start_matches("sha256:")))).expect("mkdir");
    w.write("repositories/library/nginx/_uploads/9d3c0ab8-1c9e-4d6c-a1f1-7e0e1d1b2c3d/data", &content(15, 1000));
    w.write("repositories/library/nginx/_uploads/9d3c0ab8-1c9e-4d6c-a1f1-7e0e1d1b2c3d/startedat", b"2024-01-01T00:00:00Z");
    // A nested name sharing a layer, with a link to a blob the store lost.
    let nested = w.image("a/b/c", Some(OCI_MANIFEST), br#"{"os":"linux","architecture":"amd64","nested":1}"#, &[&shared], &[]);
    let nested_d = w.manifest("a/b/c", &nested, &["v1"]);
    w.layer_link("a/b/c", &sha256_digest(b"lost"));

    probe.manifests = [&docker_d, &oci_d, &list_d, &schema1_d].iter().map(|d| ("library/nginx".to_owned(), (*d).clone())).collect();
    probe.manifests.push(("a/b/c".into(), nested_d));
    for b in [&shared, &l2, &lax, &deleted] {
        probe.blobs.push(("library/nginx".into(), sha256_digest(b)));
    }
    probe.blobs.push(("a/b/c".into(), sha256_digest(&shared)));
    HandMade {
        probe,
        tagged: vec![
            ("library/nginx:latest".into(), DOCKER_MANIFEST, docker),
            ("library/nginx:oci".into(), OCI_MANIFEST, oci),
            ("library/nginx:multi".into(), DOCKER_LIST, list),
            ("a/b/c:v1".into(), OCI_MANIFEST, nested),
        ],
        schema1: schema1_d,
        corruptible: sha256_digest(&l2),
    }
}

#[test]
fn import_a_hand_made_distribution_storage() {
    let dir = tempdir();
    let (root, data) = (dir.path().join("distribution"), dir.path().join("berth"));
    let hm = hand_made_distribution(&root);
    let started = Instant::now();
    let first = berth_ok("berth import distribution", &[&"import", &"distribution", &"--root", &root, &"--data-dir", &data]);
    let _ = std::io::stderr().write_all(format!("import took {:.2}s\n", started.elapsed().as_secs_f64()).as_bytes());
    for want in ["1 Docker schema 1 manifests", "1 uploads in progress", "library/nginx:gone: points at", "which is not in the blob store", "repositories found: 2"] {
        assert!(first.contains(want), "summary lacks {want:?}:\n{first}");
    }
    let again = berth_ok("berth import distribution, again", &[&"import", &"distribution", &"--root", &root, &"--data-dir", &data]);
    for nothing in ["blobs: 0 copied", "manifests: 0 copied", "tags: 0 set", "; 0 more links"] {
        assert!(again.contains(nothing), "a second import copies nothing ({nothing}):\n{again}");
    }

    let log = dir.path().join("server.log");
    let server = Server::start(&data, None, &log);
    let s = snapshot(server.addr, &hm.probe);
    assert_eq!(s.catalog, ["a/b/c", "library/nginx"]);
    assert_eq!(s.tags["library/nginx"], ["latest", "multi", "oci"], "the schema 1 tag and the dangling one are skipped");
    for (key, media_type, body) in &hm.tagged {
        let f = &s.by_tag[key];
        assert_eq!((f.0, f.1.as_deref()), (200, Some(*media_type)), "{key}");
        assert!(f.3 == *body, "{key}: the exact bytes");
        assert_eq!(f.2.as_deref(), Some(sha256_digest(body).as_str()));
    }
    assert_eq!(s.by_digest[&format!("library/nginx@{}", hm.schema1)].0, 404);
    for (key, (status, sha, _)) in &s.blobs {
        let digest = key.rsplit_once('@').expect("key").1;
        if key.starts_with("library/nginx@") && digest == sha256_digest(&content(14, 5_000)) {
            assert_eq!(*status, 404, "a deleted layer link is not imported");
        } else {
            assert_eq!((*status, sha.as_str()), (200, digest), "{key} reads back intact");
        }
    }
    stop(server);
}

#[test]
fn import_names_a_corrupt_blob_by_its_path() {
    let dir = tempdir();
    let (root, data) = (dir.path().join("distribution"), dir.path().join("berth"));
    let hm = hand_made_distribution(&root);
    let path = DistWriter::new(&root).v2.join(DistWriter::blob_path(&hm.corruptible));
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[1000] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt");
    let out = berth(&[&"import", &"distribution", &"--root", &root, &"--data-dir", &data]);
    let err = stderr(&out);
    let _ = std::io::stderr().write_all(format!("--- berth import distribution (a corrupt blob) ---\n{err}").as_bytes());
    assert!(!out.status.success(), "a corrupt blob fails the import:\n{err}");
    assert!(err.contains(&path.display().to_string()) && err.contains("corrupt"), "the error names the file:\n{err}");
    // Everything else went in.
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    assert_eq!(fetch_manifest(server.addr, "library/nginx", "oci").0, 200);
    assert_eq!(fetch_manifest(server.addr, "a/b/c", "v1").0, 200);
    assert_eq!(fetch_manifest(server.addr, "library/nginx", "latest").0, 404, "the image with the corrupt layer is not");
    stop(server);
}

/// A running Distribution (`docker-registry`); killed when dropped.
struct Distribution {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_distribution(root: &Path, dir: &Path) -> Distribution {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.join("distribution.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n", root.display()),
    )
    .expect("write config");
    let log = std::fs::File::create(dir.join("distribution.log")).expect("log");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    let d = Distribution { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(addr, "GET", "/v2/", &[], b"").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "docker-registry did not answer on {addr}: {}", std::fs::read_to_string(dir.join("distribution.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

#[test]
fn import_what_a_real_distribution_stored() {
    let installed = Command::new("sh").arg("-c").arg("command -v docker-registry").output().is_ok_and(|o| o.status.success());
    if !installed {
        let _ = std::io::stderr().write_all(b"\n*** docker-registry (Distribution) is not installed: only the hand-made storage is imported ***\n");
        return;
    }
    let dir = tempdir();
    let (root, data) = (dir.path().join("distribution"), dir.path().join("berth"));
    let dist = start_distribution(&root, dir.path());
    let probe = push_corpus(dist.addr, false);
    let before = snapshot(dist.addr, &probe);
    check_corpus(&before, false);
    drop(dist);

    let started = Instant::now();
    let out = berth_ok("berth import distribution (real Distribution)", &[&"import", &"distribution", &"--root", &root, &"--data-dir", &data]);
    let _ = std::io::stderr().write_all(format!("import took {:.2}s\n", started.elapsed().as_secs_f64()).as_bytes());
    assert!(out.contains("skipped: 0 Docker schema 1 manifests, 0 other items"), "{out}");
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    assert_eq!(snapshot(server.addr, &probe), before, "berth serves what Distribution served");
    stop(server);
}
