//! Webhook events survive a crash: with the receiver down, pushes queue their events in the
//! database outbox; berth is killed with SIGKILL; after a restart, with the receiver up, every
//! event is delivered, in order per repository.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// A minimal HTTP receiver: records each POST body (Distribution envelopes), answers 200.
fn receiver(listener: TcpListener, got: Arc<Mutex<Vec<serde_json::Value>>>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let got = got.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(v) = serde_json::from_slice(&body) {
                        got.lock().expect("lock").push(v);
                    }
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn push_image(addr: SocketAddr, repo: &str, tag: &str, seed: u64) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = content(seed, 1000);
    let mut descriptors = Vec::new();
    for bytes in [&config, &layer] {
        let d = sha256_digest(bytes);
        let r = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], bytes).expect("blob");
        assert_eq!(r.status, 201, "{}", r.describe());
        descriptors.push((d, bytes.len()));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": descriptors[0].0, "size": descriptors[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": descriptors[1].0, "size": descriptors[1].1}],
    })
    .to_string();
    let ct = ("content-type", "application/vnd.oci.image.manifest.v1+json".to_owned());
    let r = request(addr, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &[ct], manifest.as_bytes()).expect("manifest");
    assert_eq!(r.status, 201, "{}", r.describe());
}

#[test]
fn queued_events_are_delivered_after_a_crash_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The receiver's port, closed for now: deliveries fail and events stay queued.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let config = dir.path().join("berth.yaml");
    std::fs::write(
        &config,
        format!(
            "notifications:\n  endpoints:\n    - name: ci\n      url: http://127.0.0.1:{port}/hook\n      actions: [push]\n      timeout: 2s\n      backoff: {{initial: 200ms, max: 1s}}\n"
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let log = dir.path().join("berth.log");
    let server = Server::start(&data, Some(&config), &log);
    let repos = ["apps/one", "apps/two"];
    for i in 0..5u64 {
        for (r, repo) in repos.iter().enumerate() {
            push_image(server.addr, repo, &format!("v{i}"), i * 10 + r as u64);
        }
    }
    let queued = request(server.addr, "GET", "/admin/webhooks", &[], b"").expect("status");
    assert_eq!(queued.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&queued.body).expect("json");
    assert!(status.to_string().contains("\"ci\""), "{status}");
    server.kill9();

    // Receiver up, berth restarted on the same data: the outbox drains.
    let got = Arc::new(Mutex::new(Vec::new()));
    receiver(TcpListener::bind(("127.0.0.1", port)).expect("rebind the receiver's port"), got.clone());
    let server = Server::start(&data, Some(&config), &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest_events = || -> Vec<(String, String)> {
        let got = got.lock().expect("lock");
        got.iter()
            .flat_map(|envelope| envelope["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["target"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json" && e["target"]["tag"].is_string())
            .map(|e| (e["target"]["repository"].as_str().unwrap_or("").to_owned(), e["target"]["tag"].as_str().unwrap_or("").to_owned()))
            .collect()
    };
    while manifest_events().len() < 10 {
        assert!(Instant::now() < deadline, "only {:?} delivered; log:\n{}", manifest_events(), server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    // At least once: duplicates are allowed, losses and reordering per repository are not.
    let mut per_repo: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (repo, tag) in manifest_events() {
        let tags = per_repo.entry(repo).or_default();
        if tags.last() != Some(&tag) && !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    for repo in repos {
        assert_eq!(per_repo.get(repo).map(Vec::as_slice), Some(&["v0", "v1", "v2", "v3", "v4"].map(str::to_owned)[..]), "{per_repo:?}");
    }
}
