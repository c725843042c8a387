//! Scale-out, end to end: three `berth serve` processes on loopback sharing one PostgreSQL
//! database and one S3 bucket (Ceph RGW in the test run), as a load balancer would spread a
//! client's requests over them.
//!
//! Needs `TEST_POSTGRES_URL` and the `TEST_S3_*` variables written by
//! `scripts/services.sh start all DIR` (source `DIR/env`). Each test gets a database and a key
//! prefix of its own. Without them the tests pass with a notice, except under `CI=true`, where
//! they fail.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Response, Server, connect, content, request, send_head, sha256_digest};

const NOT_CONFIGURED: &str = "cluster services not configured: run scripts/services.sh start all DIR and source DIR/env";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_JSON_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The shared services, or `None` (after a notice) when a developer runs without them.
fn services() -> Option<(String, BTreeMap<&'static str, String>)> {
    let (Some(pg), Some(_)) = (env("TEST_POSTGRES_URL"), env("TEST_S3_ENDPOINT")) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{NOT_CONFIGURED} (TEST_POSTGRES_URL or TEST_S3_ENDPOINT is unset and CI=true)");
        let _ = std::io::stderr().write_all(format!("\n*** SKIPPED, CLUSTER NOT TESTED: {NOT_CONFIGURED} ***\n").as_bytes());
        return None;
    };
    let mut s3 = BTreeMap::new();
    for (k, var) in [("endpoint", "TEST_S3_ENDPOINT"), ("bucket", "TEST_S3_BUCKET"), ("region", "TEST_S3_REGION"), ("access", "TEST_S3_ACCESS_KEY"), ("secret", "TEST_S3_SECRET_KEY")] {
        s3.insert(k, env(var).unwrap_or_else(|| panic!("{var} must be set with TEST_S3_ENDPOINT")));
    }
    Some((pg, s3))
}

/// A fresh database on the test server; returns its URL.
fn fresh_database(server_url: &str) -> String {
    use sqlx::{Connection, Executor};
    let name = format!("cluster_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::postgres::PgConnection::connect(server_url).await.expect("connect to TEST_POSTGRES_URL");
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create database");
        c.close().await.expect("close");
    });
    let (base, _) = server_url.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{name}")
}

/// Three nodes (or `n`) sharing a fresh database and key prefix.
struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Option<Server>>,
    addrs: Vec<SocketAddr>,
}

impl Cluster {
    fn start(n: usize, extra: &str) -> Option<Cluster> {
        let (pg, s3) = services()?;
        let db = fresh_database(&pg);
        let dir = tempfile::Builder::new().prefix("berth-cluster-").tempdir().expect("tempdir");
        let prefix = format!("cluster-{}", uuid::Uuid::new_v4().simple());
        let config = dir.path().join("berth.yaml");
        std::fs::write(
            &config,
            format!(
                "database:\n  driver: postgres\n  postgres:\n    url: {db}\n    max_connections: 16\n\
                 storage:\n  driver: s3\n  s3:\n    endpoint: {}\n    bucket: {}\n    region: {}\n    path_style: true\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: {prefix}\n    part_size: 5MiB\n{extra}\
                 log:\n  level: info,berth=debug\n",
                s3["endpoint"], s3["bucket"], s3["region"], s3["access"], s3["secret"]
            ),
        )
        .expect("write config");
        let mut nodes = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&data).expect("node dir");
            nodes.push(Some(Server::start(&data, Some(&config), &dir.path().join(format!("node{i}.log")))));
        }
        let addrs = nodes.iter().map(|n| n.as_ref().expect("node").addr).collect();
        Some(Cluster { _dir: dir, nodes, addrs })
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("node runs").kill9();
    }

    fn logs(&self) -> String {
        self.nodes.iter().flatten().map(Server::log_tail).collect::<Vec<_>>().join("\n")
    }
}

fn expect(resp: &Response, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.describe());
}

fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let d = sha256_digest(data);
    let r = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[("Content-Type", "application/octet-stream".into())], data).expect("push blob");
    expect(&r, 201, "monolithic blob push");
    d
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": sha256_digest(data), "size": data.len() })
}

/// An image manifest over a config and layers (pushed through `addr`), with an annotation.
fn image(addr: SocketAddr, repo: &str, layers: &[Vec<u8>], note: &str) -> Vec<u8> {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"note\":\"{note}\"}}").into_bytes();
    push_blob(addr, repo, &config);
    for l in layers {
        push_blob(addr, repo, l);
    }
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        "annotations": { "note": note },
    });
    serde_json::to_vec(&m).expect("json")
}

fn put_manifest(addr: SocketAddr, repo: &str, reference: &str, body: &[u8]) -> Response {
    request(addr, "PUT", &format!("/v2/{repo}/manifests/{reference}"), &[("Content-Type", MANIFEST.into())], body).expect("put manifest")
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[("Accept", MANIFEST.into())], b"").expect("get")
}

/// Sum of `registry_storage_action_seconds_count` over every action: the number of storage
/// calls a node has made.
fn storage_calls(addr: SocketAddr) -> u64 {
    let text = String::from_utf8(get(addr, "/metrics").body).expect("utf-8 metrics");
    text.lines()
        .filter(|l| l.starts_with("registry_storage_action_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn push_through_one_node_pull_through_the_others() {
    let Some(c) = Cluster::start(3, "") else { return };
    let [a, b, cc] = [c.addrs[0], c.addrs[1], c.addrs[2]];
    let layers = vec![content(1, 300_000), content(2, 6 << 20)];
    let m = image(a, "team/app", &layers, "v1");
    expect(&put_manifest(a, "team/app", "v1", &m), 201, "manifest put through node A");
    for (name, node) in [("B", b), ("C", cc)] {
        let got = get(node, "/v2/team/app/manifests/v1");
        expect(&got, 200, &format!("manifest get through node {name}"));
        assert_eq!(got.body, m, "node {name} returns the bytes pushed");
        for l in &layers {
            let r = get(node, &format!("/v2/team/app/blobs/{}", sha256_digest(l)));
            expect(&r, 200, &format!("blob get through node {name}"));
            assert!(r.body == *l, "node {name} returns the blob's bytes");
        }
    }
    // A tag moved through B is seen at once by A and C (no node caches tags).
    let m2 = image(b, "team/app", &layers[..1], "v1-again");
    expect(&put_manifest(b, "team/app", "v1", &m2), 201, "tag moved through node B");
    for node in [a, cc] {
        assert_eq!(get(node, "/v2/team/app/manifests/v1").body, m2, "every node sees the moved tag");
    }
    // Manifest GETs by tag and blob HEADs are answered from the database alone.
    let before = storage_calls(cc);
    assert!(before > 0, "node C's blob GETs were counted as storage calls");
    let blob = sha256_digest(&layers[1]);
    for _ in 0..50 {
        expect(&get(cc, "/v2/team/app/manifests/v1"), 200, "manifest get");
        expect(&request(cc, "HEAD", &format!("/v2/team/app/blobs/{blob}"), &[], b"").expect("head"), 200, "blob head");
    }
    assert_eq!(storage_calls(cc), before, "manifest GETs and blob HEADs made storage calls");
    drop(c);
}

/// Start a session on one node; send chunks through the others.
#[test]
fn a_chunked_upload_spread_over_nodes() {
    let Some(c) = Cluster::start(3, "") else { return };
    let data = content(7, (6 << 20) + 300_000);
    let r = request(c.addrs[0], "POST", "/v2/spread/blobs/uploads/", &[], b"").expect("post");
    expect(&r, 202, "open session on A");
    let location = r.header("location").expect("location").to_owned();
    // A chunk larger than a part (through B), a small one (C), ORAS-sized ones (A, B, C...).
    let mut cuts = vec![0, (5 << 20) + 123, (5 << 20) + 100_123];
    let mut at = cuts[2];
    while at + 65_536 < data.len() {
        at += 65_536;
        cuts.push(at);
    }
    cuts.push(data.len());
    for (i, w) in cuts.windows(2).enumerate() {
        let node = c.addrs[(i + 1) % 3];
        let chunk = &data[w[0]..w[1]];
        let headers = [("Content-Type", "application/octet-stream".to_owned()), ("Content-Range", format!("{}-{}", w[0], w[1] - 1))];
        let r = request(node, "PATCH", &location, &headers, chunk).expect("patch");
        expect(&r, 202, &format!("chunk {i} through node {}", (i + 1) % 3));
        assert_eq!(r.header("range"), Some(format!("0-{}", w[1] - 1).as_str()));
    }
    let d = sha256_digest(&data);
    let sep = if location.contains('?') { '&' } else { '?' };
    expect(&request(c.addrs[2], "PUT", &format!("{location}{sep}digest={d}"), &[], b"").expect("put"), 201, "close on C");
    for node in &c.addrs {
        let r = get(*node, &format!("/v2/spread/blobs/{d}"));
        expect(&r, 200, "blob get");
        assert!(r.body == data, "the blob assembled over three nodes is intact");
    }
}

/// Many clients push the same layers and the same tag through different nodes at once.
#[test]
fn concurrent_pushes_of_the_same_layers_and_tags() {
    let Some(c) = Cluster::start(3, "") else { return };
    let layers = vec![content(11, 2 << 20), content(12, 100_000), content(13, 7 << 20)];
    let manifests: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let (node, layers) = (c.addrs[i % 3], &layers);
                s.spawn(move || {
                    let m = image(node, "shared/base", layers, &format!("client-{i}"));
                    expect(&put_manifest(node, "shared/base", "latest", &m), 201, "racing tag push");
                    expect(&put_manifest(node, "shared/base", &format!("c{i}"), &m), 201, "own tag push");
                    m
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let latest: Vec<Vec<u8>> = c.addrs.iter().map(|n| get(*n, "/v2/shared/base/manifests/latest").body).collect();
    assert!(latest.iter().all(|l| *l == latest[0]), "every node resolves latest alike");
    assert!(manifests.contains(&latest[0]), "latest is one of the pushed manifests");
    for (i, m) in manifests.iter().enumerate() {
        assert_eq!(get(c.addrs[(i + 1) % 3], &format!("/v2/shared/base/manifests/c{i}")).body, *m);
    }
    for l in &layers {
        for node in &c.addrs {
            let r = get(*node, &format!("/v2/shared/base/blobs/{}", sha256_digest(l)));
            assert!(r.status == 200 && r.body == *l, "layer intact after racing pushes: {}", r.status);
        }
    }
    let tags: Vec<Vec<u8>> = c.addrs.iter().map(|n| get(*n, "/v2/shared/base/tags/list").body).collect();
    assert!(tags.iter().all(|t| *t == tags[0]));
    let list: serde_json::Value = serde_json::from_slice(&tags[0]).expect("tags json");
    assert_eq!(list["tags"].as_array().map(Vec::len), Some(10), "{list}");
}

/// A node dies in the middle of a chunk; the client carries on through another node.
#[test]
fn a_push_survives_a_node_killed_mid_chunk() {
    let Some(mut c) = Cluster::start(3, "") else { return };
    let (a, b, cc) = (c.addrs[0], c.addrs[1], c.addrs[2]);
    let data = content(21, 14 << 20);
    let first = 6 << 20;
    let r = request(a, "POST", "/v2/crash/blobs/uploads/", &[], b"").expect("post");
    expect(&r, 202, "open session");
    let location = r.header("location").expect("location").to_owned();
    let r = request(a, "PATCH", &location, &[("Content-Range", format!("0-{}", first - 1))], &data[..first]).expect("patch 1");
    expect(&r, 202, "first chunk through A");
    // The second chunk goes to B, which is killed after receiving most of it.
    let mut s = connect(b).expect("connect B");
    send_head(&mut s, b, "PATCH", &location, &[("Content-Range", format!("{first}-{}", data.len() - 1))], Some((data.len() - first) as u64)).expect("head");
    s.write_all(&data[first..first + (6 << 20)]).expect("most of chunk 2");
    std::thread::sleep(Duration::from_millis(300));
    c.kill9(1);
    drop(s);
    // Through C: the session still holds exactly the first chunk.
    let r = request(cc, "GET", &location, &[], b"").expect("status");
    expect(&r, 204, "session status through C");
    assert_eq!(r.header("range"), Some(format!("0-{}", first - 1).as_str()), "{}", c.logs());
    let r = request(cc, "PATCH", &location, &[("Content-Range", format!("{first}-{}", data.len() - 1))], &data[first..]).expect("patch 2");
    expect(&r, 202, "second chunk again, through C");
    let d = sha256_digest(&data);
    let sep = if location.contains('?') { '&' } else { '?' };
    expect(&request(a, "PUT", &format!("{location}{sep}digest={d}"), &[], b"").expect("put"), 201, "close through A");
    let m = {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        push_blob(cc, "crash", &config);
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &data)],
        }))
        .expect("json")
    };
    expect(&put_manifest(cc, "crash", "after", &m), 201, "manifest after the crash");
    let r = get(a, &format!("/v2/crash/blobs/{d}"));
    assert!(r.status == 200 && r.body == data, "blob pushed across a crash is intact");
}

/// The catalog, tag lists and referrers read the same from every node.
#[test]
fn listings_are_identical_from_every_node() {
    let Some(c) = Cluster::start(3, "") else { return };
    let a = c.addrs[0];
    let layer = vec![content(31, 10_000)];
    let mut subject = Vec::new();
    for (i, repo) in ["lib/one", "lib/two", "apps/three"].iter().enumerate() {
        let m = image(c.addrs[i], repo, &layer, repo);
        for t in ["1.0", "1.1", "latest"] {
            expect(&put_manifest(c.addrs[(i + 1) % 3], repo, t, &m), 201, "tag push");
        }
        if i == 0 {
            subject = m;
        }
    }
    // Two referrers of lib/one:latest, pushed through different nodes.
    request(a, "POST", &format!("/v2/lib/one/blobs/uploads/?digest={EMPTY_JSON_DIGEST}"), &[], b"{}").expect("empty blob");
    for (i, kind) in ["application/vnd.example.sbom", "application/vnd.example.signature"].iter().enumerate() {
        let r = serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": kind,
            "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_JSON_DIGEST, "size": 2 },
            "layers": [{ "mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_JSON_DIGEST, "size": 2 }],
            "subject": descriptor(MANIFEST, &subject),
        });
        let body = serde_json::to_vec(&r).expect("json");
        expect(&put_manifest(c.addrs[i + 1], "lib/one", &sha256_digest(&body), &body), 201, "referrer push");
    }
    let subject_digest = sha256_digest(&subject);
    for path in ["/v2/_catalog", "/v2/_catalog?n=2", "/v2/lib/one/tags/list", "/v2/apps/three/tags/list?n=2&last=1.0", &format!("/v2/lib/one/referrers/{subject_digest}")] {
        let answers: Vec<Response> = c.addrs.iter().map(|n| get(*n, path)).collect();
        for r in &answers {
            expect(r, 200, path);
            assert_eq!(r.body, answers[0].body, "{path} differs between nodes");
            assert_eq!(r.header("link"), answers[0].header("link"), "{path} Link differs between nodes");
        }
    }
    let catalog: serde_json::Value = serde_json::from_slice(&get(a, "/v2/_catalog").body).expect("json");
    assert_eq!(catalog["repositories"], serde_json::json!(["apps/three", "lib/one", "lib/two"]));
    let referrers: serde_json::Value = serde_json::from_slice(&get(a, &format!("/v2/lib/one/referrers/{subject_digest}")).body).expect("json");
    assert_eq!(referrers["manifests"].as_array().map(Vec::len), Some(2), "{referrers}");
}

/// With redirects on, a whole-blob GET answers 307 to a presigned URL that serves the bytes
/// without credentials; ranged GETs and HEADs are still served by the node.
#[test]
fn blob_gets_redirect_to_presigned_urls() {
    let Some(c) = Cluster::start(1, "  redirect:\n    enabled: true\n    expiry: 5m\n") else { return };
    let node = c.addrs[0];
    let data = content(41, 1 << 20);
    let d = push_blob(node, "redir", &data);
    let r = get(node, &format!("/v2/redir/blobs/{d}"));
    expect(&r, 307, "whole blob GET");
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let url = r.header("location").expect("location").to_owned();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (host, path) = url.strip_prefix("http://").and_then(|u| u.split_once('/')).expect("http URL");
    let target: SocketAddr = host.parse().expect("loopback endpoint");
    let fetched = request(target, "GET", &format!("/{path}"), &[], b"").expect("fetch presigned");
    assert!(fetched.status == 200 && fetched.body == data, "presigned URL serves the blob: {}", fetched.status);
    let ranged = request(node, "GET", &format!("/v2/redir/blobs/{d}"), &[("Range", "bytes=10-19".into())], b"").expect("ranged");
    expect(&ranged, 206, "ranged GET is served, not redirected");
    assert_eq!(ranged.body, &data[10..20]);
    expect(&request(node, "HEAD", &format!("/v2/redir/blobs/{d}"), &[], b"").expect("head"), 200, "HEAD");
    // Unknown blobs are still 404, not a redirect to nothing.
    let missing = sha256_digest(b"never pushed");
    expect(&get(node, &format!("/v2/redir/blobs/{missing}")), 404, "unknown blob");
}

/// `berth db migrate` brings a PostgreSQL database to the current schema, and is idempotent.
#[test]
fn db_migrate_on_postgres() {
    let Some((pg, _)) = services() else { return };
    let db = fresh_database(&pg);
    let dir = tempfile::tempdir().expect("tempdir");
    let config: PathBuf = dir.path().join("db.yaml");
    std::fs::write(&config, format!("database:\n  driver: postgres\n  postgres:\n    url: {db}\n")).expect("config");
    for _ in 0..2 {
        let out = migrate(&config);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("PostgreSQL") && stdout.contains("schema at version"), "{stdout}");
    }
}

fn migrate(config: &Path) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["db", "migrate", "--config"]).arg(config);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run berth db migrate")
}
