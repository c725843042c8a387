//! `berth fsck` as an operator runs it: next to a running server on the same data directory,
//! after damaging the blob files by hand (the layout is described at the top of
//! `crates/storage/src/fs.rs`), with and without `--repair`, and its exit statuses.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use support::{Server, content, request, sha256_digest};

struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

fn fsck(data_dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("fsck").arg("--data-dir").arg(data_dir).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run berth fsck");
    Run { code: out.status.code(), out: String::from_utf8_lossy(&out.stdout).into_owned(), err: String::from_utf8_lossy(&out.stderr).into_owned() }
}

impl Run {
    fn describe(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.out, self.err)
    }
}

fn push(addr: SocketAddr, repo: &str, bytes: &[u8]) -> String {
    let d = sha256_digest(bytes);
    let r = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], bytes).expect("push");
    assert_eq!(r.status, 201, "{}", r.describe());
    d
}

/// Push an image of `layers` (and a config) tagged `tag`; returns the manifest's digest.
fn push_image(addr: SocketAddr, repo: &str, tag: &str, layers: &[(String, usize)]) -> String {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = push(addr, repo, config);
    let layers: Vec<String> = layers.iter().map(|(d, n)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#)).collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layers.join(",")
    );
    let r = request(addr, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &[("Content-Type", "application/vnd.oci.image.manifest.v1+json".into())], manifest.as_bytes())
        .expect("manifest");
    assert_eq!(r.status, 201, "{}", r.describe());
    sha256_digest(manifest.as_bytes())
}

/// Where the filesystem driver keeps a blob: blobs/<alg>/<first two hex chars>/<hex>.
fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    data.join("blobs").join(alg).join(&hex[..2]).join(hex)
}

/// A blob file no database row knows, as a crash would leave it, last written `age` ago.
fn plant_orphan(data: &Path, bytes: &[u8], age: Duration) -> String {
    let d = sha256_digest(bytes);
    let path = blob_file(data, &d);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, bytes).expect("write orphan");
    let f = std::fs::File::options().write(true).open(&path).expect("open orphan");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
    d
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn fsck_names_damaged_blobs_and_their_images_and_repairs_only_old_orphans_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    let addr = server.addr;
    // Some volume, so the re-hash has something to measure.
    let big: Vec<(String, usize)> = (0..6).map(|i| (push(addr, "app", &content(i, 4 << 20)), 4 << 20)).collect();
    let rot = b"a layer whose bytes will rot on disk".to_vec();
    let gone = b"a layer whose file will be deleted".to_vec();
    let rot_d = push(addr, "app", &rot);
    let gone_d = push(addr, "app", &gone);
    let mut layers = big.clone();
    layers.push((rot_d.clone(), rot.len()));
    layers.push((gone_d.clone(), gone.len()));
    let manifest = push_image(addr, "app", "v1", &layers);
    // The same broken layer in a second repository, by a mount.
    let r = request(addr, "POST", &format!("/v2/mirror/blobs/uploads/?mount={rot_d}&from=app"), &[], b"").expect("mount");
    assert_eq!(r.status, 201, "{}", r.describe());

    let clean = fsck(&data, &["--all"]);
    assert_eq!(clean.code, Some(0), "{}", clean.describe());
    assert!(clean.out.contains("result: clean"), "{}", clean.describe());
    assert!(line_with(&clean.out, "re-hashed").contains("9 blobs"), "{}", clean.describe());
    assert!(clean.err.contains("checked 9/9 blobs"), "a progress line: {}", clean.describe());
    eprintln!("clean run:\n{}{}", clean.err, clean.out);

    // Damage the data directory under the running server.
    let path = blob_file(&data, &rot_d);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[7] ^= 0x01;
    std::fs::write(&path, bytes).expect("flip a byte");
    std::fs::remove_file(blob_file(&data, &gone_d)).expect("delete a blob");
    let old = plant_orphan(&data, b"left between a collection's database delete and its storage delete", Duration::from_secs(2 * 3600));
    let young = plant_orphan(&data, b"stored by a push that has not recorded it yet", Duration::from_secs(30));

    let found = fsck(&data, &["--all"]);
    assert_eq!(found.code, Some(1), "{}", found.describe());
    let corrupt = line_with(&found.out, &rot_d);
    assert!(corrupt.starts_with("CORRUPT") && corrupt.contains("hash to sha256:"), "{corrupt}");
    assert!(line_with(&found.out, &gone_d).starts_with("MISSING"), "{}", found.describe());
    assert!(found.out.contains(&format!("used by app@{manifest} (tags: v1)")), "the broken image is named: {}", found.describe());
    assert!(found.out.contains("linked to mirror"), "{}", found.describe());
    assert!(line_with(&found.out, &old).contains("not removed (--repair deletes it)"), "{}", found.describe());
    assert!(line_with(&found.out, &young).contains("kept: younger than 1h"), "{}", found.describe());
    assert!(found.out.contains("result: 3 problems left"), "{}", found.describe());
    assert!(found.out.contains("pushing the image again"), "how to fix it: {}", found.describe());
    assert!(blob_file(&data, &old).exists(), "nothing deleted without --repair");
    eprintln!("damaged run:\n{}", found.out);

    let json = fsck(&data, &["--all", "--json"]);
    assert_eq!(json.code, Some(1), "{}", json.describe());
    let v: serde_json::Value = serde_json::from_str(&json.out).expect("JSON on stdout");
    let s = &v["summary"];
    assert_eq!((s["corrupt"].as_u64(), s["missing"].as_u64(), s["wrong_size"].as_u64(), s["orphans_found"].as_u64()), (Some(1), Some(1), Some(0), Some(2)), "{v:#}");
    assert_eq!(v["clean"], false);
    let damaged = v["damaged"].as_array().expect("damaged");
    let rotten = damaged.iter().find(|d| d["digest"] == rot_d.as_str()).expect("the corrupt blob");
    assert_eq!(rotten["problem"], "corrupt");
    assert_eq!(rotten["used_by"][0]["manifest"], manifest.as_str());
    assert!(s["mb_per_s"].as_f64().is_some_and(|r| r > 0.0), "{v:#}");

    // Repair: the old orphan goes, the young one stays, the damage is still reported.
    let repaired = fsck(&data, &["--all", "--repair"]);
    assert_eq!(repaired.code, Some(1), "corrupt and missing blobs remain: {}", repaired.describe());
    assert!(line_with(&repaired.out, &old).contains("removed"), "{}", repaired.describe());
    assert!(!blob_file(&data, &old).exists(), "the old orphan is deleted");
    assert!(blob_file(&data, &young).exists(), "the young orphan is kept");
    assert!(line_with(&repaired.out, &rot_d).starts_with("CORRUPT"), "{}", repaired.describe());
    assert!(line_with(&repaired.out, &gone_d).starts_with("MISSING"), "{}", repaired.describe());
    assert!(line_with(&repaired.out, "orphans found / removed").contains("2 / 1 (1 younger than 1h kept)"), "{}", repaired.describe());
    eprintln!("repair run:\n{}", repaired.out);

    // The server went on serving what is whole.
    let r = request(addr, "GET", &format!("/v2/app/blobs/{}", big[0].0), &[], b"").expect("get");
    assert_eq!((r.status, r.body.len()), (200, 4 << 20));
    let r = request(addr, "GET", "/v2/app/manifests/v1", &[("Accept", "application/vnd.oci.image.manifest.v1+json".into())], b"").expect("get");
    assert_eq!(r.status, 200);

    // The fix the report describes: delete the manifests listed, let garbage collection forget
    // the blobs, push again.
    let r = request(addr, "DELETE", &format!("/v2/app/manifests/{manifest}"), &[], b"").expect("delete");
    assert_eq!(r.status, 202, "{}", r.describe());
    let gc = Command::new(env!("CARGO_BIN_EXE_berth")).args(["gc", "--grace", "0s", "--data-dir"]).arg(&data).output().expect("berth gc");
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    for (i, _) in big.iter().enumerate() {
        push(addr, "app", &content(i as u64, 4 << 20));
    }
    push(addr, "app", &rot);
    push(addr, "app", &gone);
    assert_eq!(push_image(addr, "app", "v1", &layers), manifest);
    let fixed = fsck(&data, &["--all"]);
    assert_eq!(fixed.code, Some(0), "{}", fixed.describe());
    assert!(line_with(&fixed.out, &young).contains("kept"), "{}", fixed.describe());
    drop(server);
}

#[test]
fn fsck_exits_zero_once_its_only_problem_is_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, None, &dir.path().join("server.log"));
    for i in 0..4 {
        push(server.addr, "app", &content(100 + i, 10_000));
    }
    drop(server);
    let old = plant_orphan(&data, b"a failed commit's leftovers", Duration::from_secs(5 * 3600));

    let found = fsck(&data, &[]);
    assert_eq!(found.code, Some(1), "{}", found.describe());
    assert!(found.err.contains("re-hashing a 10% sample"), "the default: {}", found.describe());
    assert!(line_with(&found.out, "re-hashed").starts_with("  re-hashed") && line_with(&found.out, "re-hashed").contains("1 blobs"), "10% of 4 is one: {}", found.describe());
    let repaired = fsck(&data, &["--repair", "--sample", "50", "--jobs", "2"]);
    assert_eq!(repaired.code, Some(0), "{}", repaired.describe());
    assert!(repaired.out.contains("result: clean"), "{}", repaired.describe());
    assert!(!blob_file(&data, &old).exists());
    let after = fsck(&data, &["--sample", "0"]);
    assert_eq!(after.code, Some(0), "{}", after.describe());
}

#[test]
fn fsck_usage_and_connection_errors_exit_two_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = dir.path().join("nowhere");
    let r = fsck(&nowhere, &[]);
    assert_eq!(r.code, Some(2), "{}", r.describe());
    assert!(r.err.contains("no metadata database"), "{}", r.describe());
    assert!(!nowhere.exists(), "a scrub pointed at the wrong place creates no empty registry there");
    for bad in [&["--sample", "150"][..], &["--sample", "5", "--all"], &["--jobs", "0"]] {
        let r = fsck(&nowhere, bad);
        assert_eq!(r.code, Some(2), "{bad:?}: {}", r.describe());
    }
}

const NOT_CONFIGURED: &str = "PostgreSQL/S3 not configured: run scripts/services.sh start all DIR and source DIR/env";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn skip(what: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{NOT_CONFIGURED} (CI=true)");
    eprintln!("\n*** SKIPPED, {what} NOT TESTED: {NOT_CONFIGURED} ***\n");
}

/// The `database` section for a fresh PostgreSQL database, or `None` without PostgreSQL.
fn fresh_postgres() -> Option<String> {
    let pg = env("TEST_POSTGRES_URL")?;
    let name = format!("fsck_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use sqlx::{Connection, Executor};
        let mut c = sqlx::postgres::PgConnection::connect(&pg).await.expect("connect to TEST_POSTGRES_URL");
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create database");
        c.close().await.expect("close");
    });
    let (base, _) = pg.rsplit_once('/').expect("URL has a database part");
    Some(format!("database:\n  driver: postgres\n  postgres:\n    url: {base}/{name}\n"))
}

/// Options for the test bucket under a fresh prefix, or `None` without S3.
fn fresh_s3() -> Option<storage::s3::S3Options> {
    let endpoint = env("TEST_S3_ENDPOINT")?;
    let var = |n: &str| env(n).unwrap_or_else(|| panic!("{n} must be set with TEST_S3_ENDPOINT"));
    let mut o = storage::s3::S3Options::new(var("TEST_S3_BUCKET"), var("TEST_S3_REGION"));
    o.endpoint = Some(endpoint);
    o.path_style = true;
    o.access_key_id = Some(var("TEST_S3_ACCESS_KEY"));
    o.secret_access_key = Some(var("TEST_S3_SECRET_KEY"));
    o.prefix = format!("fsck-{}", uuid::Uuid::new_v4().simple());
    Some(o)
}

/// Store `bytes` under `digest` straight through the driver, as damage or a crash would
/// (the driver does not verify digests; the engine does, and is bypassed here).
async fn store_raw(store: &dyn storage::BlobStore, digest: &str, bytes: &[u8]) {
    let id: oci::UploadId = uuid::Uuid::new_v4().to_string().parse().expect("upload id");
    let mut w = store.upload_writer(&id, 0, &[]).await.expect("writer");
    w.write(bytes::Bytes::copy_from_slice(bytes)).await.expect("write");
    let state = w.finish_last().await.expect("finish");
    store.commit_upload(&id, bytes.len() as u64, &state, &digest.parse().expect("digest")).await.expect("commit");
}

#[test]
fn fsck_on_postgres_and_s3_finds_damage_through_the_driver_and_keeps_a_young_orphan() {
    let (Some(database), Some(s3)) = (fresh_postgres(), fresh_s3()) else { return skip("FSCK ON POSTGRESQL + S3") };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("scale-out.yaml");
    std::fs::write(
        &config,
        format!(
            "{database}storage:\n  driver: s3\n  s3:\n    endpoint: {}\n    bucket: {}\n    region: {}\n    path_style: true\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: {}\n",
            s3.endpoint.as_deref().unwrap_or_default(),
            s3.bucket,
            s3.region,
            s3.access_key_id.as_deref().unwrap_or_default(),
            s3.secret_access_key.as_deref().unwrap_or_default(),
            s3.prefix
        ),
    )
    .expect("write config");
    let data = dir.path().join("node");
    let server = Server::start(&data, Some(&config), &dir.path().join("server.log"));
    let addr = server.addr;
    let rot = b"a layer rotting in the bucket".to_vec();
    let gone = b"a layer deleted from the bucket".to_vec();
    let (rot_d, gone_d) = (push(addr, "app", &rot), push(addr, "app", &gone));
    let whole = push(addr, "app", &content(7, 6 << 20));
    let manifest = push_image(addr, "app", "v1", &[(rot_d.clone(), rot.len()), (gone_d.clone(), gone.len()), (whole, 6 << 20)]);
    let args = |extra: &[&str]| -> Vec<String> { ["--config", config.to_str().expect("utf-8 path")].iter().chain(extra).map(|s| (*s).to_owned()).collect() };
    let run = |extra: &[&str]| {
        let a = args(extra);
        fsck(&data, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let clean = run(&["--all"]);
    assert_eq!(clean.code, Some(0), "{}", clean.describe());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let young = sha256_digest(b"stored by a push that has not recorded it yet");
    rt.block_on(async {
        let store = storage::s3::S3Store::open(&s3).expect("S3");
        store_raw(&store, &rot_d, b"A layer rotting in the bucket").await;
        storage::BlobStore::delete(&store, &gone_d.parse().expect("digest")).await.expect("delete");
        store_raw(&store, &young, b"stored by a push that has not recorded it yet").await;
    });
    let found = run(&["--all", "--repair", "--jobs", "8"]);
    assert_eq!(found.code, Some(1), "{}", found.describe());
    assert!(line_with(&found.out, &rot_d).starts_with("CORRUPT"), "{}", found.describe());
    assert!(line_with(&found.out, &gone_d).starts_with("MISSING"), "{}", found.describe());
    assert!(found.out.contains(&format!("used by app@{manifest} (tags: v1)")), "{}", found.describe());
    assert!(line_with(&found.out, &young).contains("kept: younger than 1h"), "an orphan S3 says was just written: {}", found.describe());
    assert!(found.out.contains("result: 2 problems left"), "{}", found.describe());
    drop(server);
}

#[test]
fn fsck_on_postgres_removes_an_old_orphan_under_a_claim_and_the_digest_can_be_pushed_again() {
    let Some(database) = fresh_postgres() else { return skip("FSCK ON POSTGRESQL") };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("postgres.yaml");
    std::fs::write(&config, database).expect("write config");
    let data = dir.path().join("data");
    let server = Server::start(&data, Some(&config), &dir.path().join("server.log"));
    for i in 0..3 {
        push(server.addr, "app", &content(200 + i, 1000));
    }
    let bytes = b"a failed commit's leftovers, on PostgreSQL";
    let old = plant_orphan(&data, bytes, Duration::from_secs(3 * 3600));
    let cfg = config.to_str().expect("utf-8 path");
    let repaired = fsck(&data, &["--config", cfg, "--repair"]);
    assert_eq!(repaired.code, Some(0), "{}", repaired.describe());
    assert!(line_with(&repaired.out, &old).contains("removed"), "{}", repaired.describe());
    assert!(!blob_file(&data, &old).exists());
    // The claim's tombstone is not in the way of a later push of the same bytes.
    assert_eq!(push(server.addr, "app", bytes), old);
    assert!(blob_file(&data, &old).exists());
    let after = fsck(&data, &["--config", cfg, "--all"]);
    assert_eq!(after.code, Some(0), "{}", after.describe());
}
