//! Process-level tests: the real `berth` binary, killed with SIGKILL while uploads are in flight
//! and stopped with SIGTERM while requests are in flight.
//!
//! The tests talk HTTP/1.1 over plain `std::net::TcpStream`s (one request per connection), so a
//! body can be dribbled out piece by piece and a request can be left half-sent on purpose. Every
//! wait is bounded; nothing asserts on how long something took.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{Response, Server, connect, content, read_response, request, send_head, sha256_digest};

mod support;

/// A small deterministic random source for the test's own choices (sizes, pauses, repos).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

const MIB: usize = 1 << 20;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("berth-process-").tempdir().expect("temp dir")
}

/// Open an upload session in `repo`; returns its location.
fn open_session(addr: SocketAddr, repo: &str) -> String {
    let resp = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"").expect("POST upload");
    assert_eq!(resp.status, 202, "POST upload: {}", resp.describe());
    resp.header("location").expect("Location on 202").to_owned()
}

/// Whether a PATCH to `location` is refused because another request is writing to the session,
/// i.e. whether the session has a request in flight. The probe sends no bytes.
fn session_busy(addr: SocketAddr, location: &str) -> bool {
    let resp = request(addr, "PATCH", location, &[("Content-Type", "application/octet-stream".into())], b"").expect("probe PATCH");
    resp.status != 202
}

// -------------------------------------------------------------------------------------------
// 1. SIGKILL while uploads are in flight
// -------------------------------------------------------------------------------------------

/// What the client knows about whether a push took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Outcome {
    /// The final request's body was never completely sent: the server cannot have committed.
    NotCommitted,
    /// The final request was sent but the server died before answering: either is fine.
    Unknown,
    /// The server answered 201.
    Committed,
}

#[derive(Debug)]
struct BlobAttempt {
    repo: String,
    digest: String,
    seed: u64,
    len: usize,
    outcome: Outcome,
}

#[derive(Debug)]
struct ManifestAttempt {
    repo: String,
    tag: String,
    digest: String,
    bytes: Vec<u8>,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PATCHes going on (or the closing PUT not completely sent): resumable after a crash.
    Patching,
    /// The closing PUT was sent.
    Closing,
}

/// A chunked upload session the client opened.
#[derive(Debug)]
struct Session {
    blob: usize,
    location: String,
    /// Bytes the server acknowledged with a 202.
    acked: u64,
    /// Bytes the client wrote into PATCH bodies (some may not have arrived).
    sent: u64,
    phase: Phase,
}

#[derive(Debug, Default)]
struct Ledger {
    blobs: Vec<BlobAttempt>,
    manifests: Vec<ManifestAttempt>,
    sessions: Vec<Session>,
    /// Problems seen while the server was supposed to be healthy.
    failures: Vec<String>,
    /// Chunked uploads cut off by a kill and finished after the restart.
    resumed: usize,
}

/// Everything the upload workers of one round share.
struct Chaos {
    addr: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
    /// Set just before the SIGKILL: I/O errors after it are the crash, before it are bugs.
    killed: AtomicBool,
    seeds: Arc<AtomicU64>,
    round: usize,
}

enum OpError {
    Io(io::Error),
    /// A complete response that is not what the protocol promises: always a bug, since a
    /// killed server cannot answer.
    Unexpected(String),
}

impl From<io::Error> for OpError {
    fn from(e: io::Error) -> Self {
        OpError::Io(e)
    }
}

type OpResult<T> = Result<T, OpError>;

fn expect_status(resp: &Response, want: u16, what: &str) -> OpResult<()> {
    if resp.status == want { Ok(()) } else { Err(OpError::Unexpected(format!("{what}: expected {want}, got {}", resp.describe()))) }
}

/// Content shared by several pushes (as base layers are), to exercise the path where an upload
/// finds its blob already stored. (seed, length)
const SHARED: [(u64, usize); 3] = [(1, MIB), (2, 3 * MIB / 2), (3, 2 * MIB)];

impl Chaos {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection to the server, unless it has been killed: once the port is free another
    /// test's server may take it, and nothing of this round may go there.
    fn connect(&self) -> io::Result<std::net::TcpStream> {
        self.alive()?;
        connect(self.addr)
    }

    fn alive(&self) -> io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "server killed"));
        }
        Ok(())
    }

    fn fresh_seed(&self) -> u64 {
        self.seeds.fetch_add(1, Ordering::Relaxed)
    }

    fn record_blob(&self, repo: &str, digest: &str, seed: u64, len: usize) -> usize {
        let mut l = self.ledger();
        l.blobs.push(BlobAttempt { repo: repo.into(), digest: digest.into(), seed, len, outcome: Outcome::NotCommitted });
        l.blobs.len() - 1
    }

    fn set_blob(&self, idx: usize, outcome: Outcome) {
        self.ledger().blobs[idx].outcome = outcome;
    }

    /// Write `data` in pieces of 16-64 KiB with short pauses (a few MB/s), so a body takes a while.
    fn send_slowly(&self, s: &mut std::net::TcpStream, data: &[u8], rng: &mut Rng) -> io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            let n = (rng.range(16, 64) as usize * 1024).min(data.len() - at);
            s.write_all(&data[at..at + n])?;
            at += n;
            thread::sleep(Duration::from_millis(rng.range(4, 16)));
        }
        Ok(())
    }

    /// `POST ?digest=` with the whole blob, sent slowly unless `fast`.
    fn push_monolithic(&self, repo: &str, seed: u64, len: usize, fast: bool, rng: &mut Rng) -> OpResult<String> {
        let data = content(seed, len);
        let digest = sha256_digest(&data);
        let idx = self.record_blob(repo, &digest, seed, len);
        let mut s = self.connect()?;
        let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        send_head(&mut s, self.addr, "POST", &path, &[("Content-Type", "application/octet-stream".into())], Some(len as u64))?;
        if fast {
            s.write_all(&data)?;
        } else {
            self.send_slowly(&mut s, &data, rng)?;
        }
        self.set_blob(idx, Outcome::Unknown);
        let resp = read_response(&mut s, "POST")?;
        expect_status(&resp, 201, &format!("monolithic push of {digest} to {repo}"))?;
        if resp.header("docker-content-digest") != Some(digest.as_str()) {
            return Err(OpError::Unexpected(format!("monolithic push of {digest}: Docker-Content-Digest {:?}", resp.header("docker-content-digest"))));
        }
        self.set_blob(idx, Outcome::Committed);
        Ok(digest)
    }

    /// POST, PATCH × 1-4 with `Content-Range`, then `PUT ?digest=` (sometimes with the last
    /// chunk as its body).
    fn push_chunked(&self, repo: &str, seed: u64, len: usize, rng: &mut Rng) -> OpResult<String> {
        let data = content(seed, len);
        let digest = sha256_digest(&data);
        let idx = self.record_blob(repo, &digest, seed, len);
        self.alive()?;
        let resp = request(self.addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")?;
        expect_status(&resp, 202, "chunked upload POST")?;
        let location = resp.header("location").ok_or_else(|| OpError::Unexpected("202 without Location".into()))?.to_owned();
        let sidx = {
            let mut l = self.ledger();
            l.sessions.push(Session { blob: idx, location: location.clone(), acked: 0, sent: 0, phase: Phase::Patching });
            l.sessions.len() - 1
        };
        // Chunk boundaries: 1-4 chunks of at least 64 KiB each.
        let pieces = rng.range(1, 4) as usize;
        let mut bounds = vec![0usize];
        for i in 1..pieces {
            let min = bounds[i - 1] + 64 * 1024;
            let max = len - 64 * 1024 * (pieces - i);
            if min >= max {
                break;
            }
            bounds.push(rng.range(min as u64, max as u64) as usize);
        }
        bounds.push(len);
        let last_in_put = rng.range(0, 1) == 1;
        let patches = if last_in_put { bounds.len() - 2 } else { bounds.len() - 1 };
        for w in bounds.windows(2).take(patches) {
            let (start, end) = (w[0], w[1]);
            let mut s = self.connect()?;
            let headers = [("Content-Type", "application/octet-stream".to_owned()), ("Content-Range", format!("{start}-{}", end - 1))];
            send_head(&mut s, self.addr, "PATCH", &location, &headers, Some((end - start) as u64))?;
            self.send_slowly(&mut s, &data[start..end], rng)?;
            self.ledger().sessions[sidx].sent = end as u64;
            let resp = read_response(&mut s, "PATCH")?;
            expect_status(&resp, 202, "PATCH")?;
            if resp.header("range") != Some(format!("0-{}", end - 1).as_str()) {
                return Err(OpError::Unexpected(format!("PATCH up to {end}: Range {:?}", resp.header("range"))));
            }
            self.ledger().sessions[sidx].acked = end as u64;
        }
        let start = bounds[patches];
        let mut s = self.connect()?;
        let path = format!("{location}?digest={digest}");
        if start < len {
            let headers = [("Content-Type", "application/octet-stream".to_owned()), ("Content-Range", format!("{start}-{}", len - 1))];
            send_head(&mut s, self.addr, "PUT", &path, &headers, Some((len - start) as u64))?;
            self.send_slowly(&mut s, &data[start..], rng)?;
        } else {
            send_head(&mut s, self.addr, "PUT", &path, &[], Some(0))?;
        }
        self.ledger().sessions[sidx].phase = Phase::Closing;
        self.set_blob(idx, Outcome::Unknown);
        let resp = read_response(&mut s, "PUT")?;
        expect_status(&resp, 201, &format!("chunked upload PUT of {digest}"))?;
        self.set_blob(idx, Outcome::Committed);
        Ok(digest)
    }

    /// A config blob, one layer, and the image manifest referencing both, under a fresh tag.
    fn push_image(&self, repo: &str, worker: usize, n: usize, rng: &mut Rng) -> OpResult<()> {
        let config_len = 512;
        let config = self.push_monolithic(repo, self.fresh_seed(), config_len, true, rng)?;
        let (layer_seed, layer_len) =
            if rng.range(0, 2) == 0 { SHARED[rng.range(0, 2) as usize] } else { (self.fresh_seed(), rng.range(256 * 1024, 2 * MIB as u64) as usize) };
        let layer = if rng.range(0, 1) == 0 {
            self.push_monolithic(repo, layer_seed, layer_len, false, rng)?
        } else {
            self.push_chunked(repo, layer_seed, layer_len, rng)?
        };
        let manifest = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"#,
                r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}],"#,
                r#""annotations":{{"round":"{}","worker":"{}","n":"{}"}}}}"#
            ),
            config, config_len, layer, layer_len, self.round, worker, n
        )
        .into_bytes();
        let digest = sha256_digest(&manifest);
        let tag = format!("r{}-w{worker}-n{n}", self.round);
        let idx = {
            let mut l = self.ledger();
            l.manifests.push(ManifestAttempt {
                repo: repo.into(),
                tag: tag.clone(),
                digest: digest.clone(),
                bytes: manifest.clone(),
                outcome: Outcome::NotCommitted,
            });
            l.manifests.len() - 1
        };
        let mut s = self.connect()?;
        let headers = [("Content-Type", "application/vnd.oci.image.manifest.v1+json".to_owned())];
        send_head(&mut s, self.addr, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &headers, Some(manifest.len() as u64))?;
        s.write_all(&manifest)?;
        self.ledger().manifests[idx].outcome = Outcome::Unknown;
        let resp = read_response(&mut s, "PUT")?;
        expect_status(&resp, 201, &format!("manifest PUT {repo}:{tag}"))?;
        if resp.header("docker-content-digest") != Some(digest.as_str()) {
            return Err(OpError::Unexpected(format!("manifest PUT {tag}: Docker-Content-Digest {:?}", resp.header("docker-content-digest"))));
        }
        self.ledger().manifests[idx].outcome = Outcome::Committed;
        Ok(())
    }

    /// Push until the server is killed.
    fn worker(&self, worker: usize) {
        let mut rng = Rng(((self.round as u64) << 32) | worker as u64);
        for n in 0.. {
            let repo = format!("crash/r{}", rng.range(0, 2));
            let result = match (worker + n) % 3 {
                0 => {
                    let (seed, len) = if rng.range(0, 3) == 0 {
                        SHARED[rng.range(0, 2) as usize]
                    } else {
                        (self.fresh_seed(), rng.range(MIB as u64, 8 * MIB as u64) as usize)
                    };
                    self.push_monolithic(&repo, seed, len, false, &mut rng).map(drop)
                }
                1 => {
                    let len = rng.range(256 * 1024, 6 * MIB as u64) as usize;
                    self.push_chunked(&repo, self.fresh_seed(), len, &mut rng).map(drop)
                }
                _ => self.push_image(&repo, worker, n, &mut rng),
            };
            match result {
                Ok(()) => {}
                Err(OpError::Io(_)) if self.killed.load(Ordering::SeqCst) => return,
                Err(OpError::Io(e)) => {
                    self.ledger().failures.push(format!("round {}, worker {worker}: I/O error while the server was up: {e}", self.round));
                    return;
                }
                Err(OpError::Unexpected(m)) => {
                    self.ledger().failures.push(format!("round {}, worker {worker}: {m}", self.round));
                    return;
                }
            }
        }
    }
}

/// (a): every file under `blobs/` must hash to the digest its path names. Returns the problems.
fn check_blob_files(data_dir: &Path) -> Vec<String> {
    use sha2::Digest as _;
    let root = data_dir.join("blobs");
    let mut problems = Vec::new();
    let (mut count, mut total) = (0, 0);
    for alg in std::fs::read_dir(&root).expect("read blobs/").flatten() {
        let alg_name = alg.file_name().to_string_lossy().into_owned();
        if !matches!(alg_name.as_str(), "sha256" | "sha512") || !alg.path().is_dir() {
            problems.push(format!("unexpected entry blobs/{alg_name}"));
            continue;
        }
        for prefix in std::fs::read_dir(alg.path()).expect("read algorithm dir").flatten() {
            let prefix_name = prefix.file_name().to_string_lossy().into_owned();
            if !prefix.path().is_dir() {
                problems.push(format!("unexpected file blobs/{alg_name}/{prefix_name}"));
                continue;
            }
            for file in std::fs::read_dir(prefix.path()).expect("read prefix dir").flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let rel = format!("blobs/{alg_name}/{prefix_name}/{name}");
                if !name.starts_with(&prefix_name) || prefix_name.len() != 2 {
                    problems.push(format!("{rel}: not under its two-character prefix"));
                }
                let bytes = match std::fs::read(file.path()) {
                    Ok(b) => b,
                    Err(e) => {
                        problems.push(format!("{rel}: {e}"));
                        continue;
                    }
                };
                let actual = if alg_name == "sha256" { hex::encode(sha2::Sha256::digest(&bytes)) } else { hex::encode(sha2::Sha512::digest(&bytes)) };
                if actual != name {
                    problems.push(format!("{rel}: {} bytes hashing to {alg_name}:{actual}", bytes.len()));
                }
                count += 1;
                total += bytes.len();
            }
        }
    }
    eprintln!("  {count} blob files ({} MiB), all checked", total / MIB);
    problems
}

/// Check invariants (a)-(c) and (e) against what the clients recorded.
fn check_invariants(addr: SocketAddr, data_dir: &Path, ledger: &Ledger) -> Vec<String> {
    let mut problems = check_blob_files(data_dir);

    // Blobs: the best outcome of any attempt per (repository, digest).
    let mut best: HashMap<(&str, &str), (Outcome, u64, usize)> = HashMap::new();
    for b in &ledger.blobs {
        let e = best.entry((b.repo.as_str(), b.digest.as_str())).or_insert((b.outcome, b.seed, b.len));
        if b.outcome > e.0 {
            *e = (b.outcome, b.seed, b.len);
        }
    }
    let mut counts: HashMap<Outcome, usize> = HashMap::new();
    for (&(repo, digest), &(outcome, seed, len)) in &best {
        *counts.entry(outcome).or_default() += 1;
        let path = format!("/v2/{repo}/blobs/{digest}");
        let head = match request(addr, "HEAD", &path, &[], b"") {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("HEAD {path}: {e}"));
                continue;
            }
        };
        match (outcome, head.status) {
            (Outcome::NotCommitted, 404) | (Outcome::Unknown, 404) => continue,
            (Outcome::NotCommitted, s) => {
                problems.push(format!("{repo}@{digest}: upload never completed, yet HEAD answers {s}"));
                continue;
            }
            (Outcome::Committed, 200) | (Outcome::Unknown, 200) => {}
            (o, s) => {
                problems.push(format!("{repo}@{digest} ({o:?}): HEAD answers {s}"));
                continue;
            }
        }
        if head.header("content-length") != Some(len.to_string().as_str()) {
            problems.push(format!("HEAD {path}: Content-Length {:?}, pushed {len} bytes", head.header("content-length")));
        }
        let hex = digest.trim_start_matches("sha256:");
        if !data_dir.join("blobs/sha256").join(&hex[..2]).join(hex).is_file() {
            problems.push(format!("{repo}@{digest}: reported present but no file under blobs/"));
        }
        match request(addr, "GET", &path, &[], b"") {
            Ok(get) if get.status == 200 && get.body == content(seed, len) => {}
            Ok(get) => problems.push(format!("GET {path} ({outcome:?}): status {}, {} bytes, not the {len} bytes pushed", get.status, get.body.len())),
            Err(e) => problems.push(format!("GET {path}: {e}")),
        }
    }

    // Manifests: unique tags, so each attempt stands alone.
    for m in &ledger.manifests {
        *counts.entry(m.outcome).or_default() += 1;
        let by_tag = format!("/v2/{}/manifests/{}", m.repo, m.tag);
        let by_digest = format!("/v2/{}/manifests/{}", m.repo, m.digest);
        let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json".to_owned())];
        let tagged = match request(addr, "GET", &by_tag, &accept, b"") {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("GET {by_tag}: {e}"));
                continue;
            }
        };
        match (m.outcome, tagged.status) {
            (Outcome::NotCommitted, 404) | (Outcome::Unknown, 404) => continue,
            (Outcome::Committed, 200) | (Outcome::Unknown, 200) => {}
            (o, _) => {
                problems.push(format!("GET {by_tag} ({o:?}): {}", tagged.describe()));
                continue;
            }
        }
        if tagged.body != m.bytes || tagged.header("docker-content-digest") != Some(m.digest.as_str()) {
            problems.push(format!("GET {by_tag}: not the manifest pushed (digest header {:?})", tagged.header("docker-content-digest")));
        }
        match request(addr, "GET", &by_digest, &accept, b"") {
            Ok(r) if r.status == 200 && r.body == m.bytes => {}
            Ok(r) => problems.push(format!("GET {by_digest}: {}", r.describe())),
            Err(e) => problems.push(format!("GET {by_digest}: {e}")),
        }
    }
    eprintln!("  checked {} blobs and {} manifests by outcome: {counts:?}", best.len(), ledger.manifests.len());
    problems
}

/// Finish the chunked sessions the crash cut off: the server's offset must lie between what it
/// acknowledged and what was sent, and the rest must complete to the right digest (which only
/// works if the saved hash state and the stored bytes agree).
fn resume_sessions(addr: SocketAddr, ledger: &mut Ledger) -> Vec<String> {
    let mut problems = Vec::new();
    let mut resumed = 0;
    let Ledger { blobs, sessions, .. } = ledger;
    for s in sessions.iter_mut().filter(|s| s.phase == Phase::Patching) {
        s.phase = Phase::Closing;
        let blob = &mut blobs[s.blob];
        let data = content(blob.seed, blob.len);
        let status = match request(addr, "GET", &s.location, &[], b"") {
            Ok(r) if r.status == 204 => r,
            Ok(r) => {
                problems.push(format!("GET {} after restart: {}", s.location, r.describe()));
                continue;
            }
            Err(e) => {
                problems.push(format!("GET {}: {e}", s.location));
                continue;
            }
        };
        // `0-0` means an empty session here: every chunk is at least 64 KiB.
        let offset = match status.header("range").and_then(|r| r.strip_prefix("0-")).and_then(|e| e.parse::<u64>().ok()) {
            Some(0) => 0,
            Some(end) => end + 1,
            None => {
                problems.push(format!("GET {}: bad Range {:?}", s.location, status.header("range")));
                continue;
            }
        };
        if offset < s.acked || offset > s.sent {
            problems.push(format!("{}: server offset {offset} after restart, acknowledged {}, sent {}", s.location, s.acked, s.sent));
            continue;
        }
        let len = blob.len as u64;
        if offset < len {
            let headers = [("Content-Type", "application/octet-stream".to_owned()), ("Content-Range", format!("{offset}-{}", len - 1))];
            match request(addr, "PATCH", &s.location, &headers, &data[offset as usize..]) {
                Ok(r) if r.status == 202 => {}
                Ok(r) => {
                    problems.push(format!("resuming PATCH {} at {offset}: {}", s.location, r.describe()));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("resuming PATCH {}: {e}", s.location));
                    continue;
                }
            }
        }
        match request(addr, "PUT", &format!("{}?digest={}", s.location, blob.digest), &[], b"") {
            Ok(r) if r.status == 201 => {
                blob.outcome = Outcome::Committed;
                resumed += 1;
            }
            Ok(r) => problems.push(format!("closing resumed upload {} as {}: {}", s.location, blob.digest, r.describe())),
            Err(e) => problems.push(format!("closing resumed upload {}: {e}", s.location)),
        }
    }
    ledger.resumed += resumed;
    eprintln!("  resumed {resumed} interrupted chunked uploads");
    problems
}

/// (d): the restarted server takes new pushes, including content it already holds.
fn push_and_pull_again(addr: SocketAddr, ledger: &Ledger, round: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut cases: Vec<(String, u64, usize)> =
        ledger.blobs.iter().filter(|b| b.outcome == Outcome::Committed).take(2).map(|b| (b.repo.clone(), b.seed, b.len)).collect();
    cases.push(("crash/fresh".into(), SHARED[0].0, SHARED[0].1));
    cases.push(("crash/fresh".into(), 1_000_000 + round as u64, 300_000));
    for (repo, seed, len) in cases {
        let data = content(seed, len);
        let digest = sha256_digest(&data);
        let post = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        match request(addr, "POST", &post, &[("Content-Type", "application/octet-stream".into())], &data) {
            Ok(r) if r.status == 201 => {}
            Ok(r) => problems.push(format!("re-push {digest} to {repo}: {}", r.describe())),
            Err(e) => problems.push(format!("re-push {digest} to {repo}: {e}")),
        }
        match request(addr, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"") {
            Ok(r) if r.status == 200 && r.body == data => {}
            Ok(r) => problems.push(format!("pull {repo}@{digest}: status {}, {} bytes", r.status, r.body.len())),
            Err(e) => problems.push(format!("pull {repo}@{digest}: {e}")),
        }
    }
    problems
}

fn fail_if(problems: &[String], what: &str, server: &Server) {
    assert!(problems.is_empty(), "{what}:\n  {}\n{}", problems.join("\n  "), server.log_tail());
}

#[test]
fn crash_during_uploads_leaves_consistent_state() {
    const ROUNDS: usize = 5;
    const WORKERS: usize = 8;
    // How long each round's uploads run before the SIGKILL: varied so the kill lands in
    // different phases (bodies, commits, manifest writes).
    const KILL_AFTER_MS: [u64; ROUNDS] = [1500, 2700, 900, 3300, 2100];

    let tmp = tempdir();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("berth.log");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let seeds = Arc::new(AtomicU64::new(1000));

    for round in 0..=ROUNDS {
        // (d): every restart must serve at once on the same data, with no repair step.
        let server = Server::start(&data_dir, None, &log);
        if round > 0 {
            eprintln!("after kill {round}:");
            let mut l = ledger.lock().expect("ledger");
            fail_if(&check_invariants(server.addr, &data_dir, &l), &format!("invariants after kill {round}"), &server);
            fail_if(&resume_sessions(server.addr, &mut l), &format!("resuming uploads after kill {round}"), &server);
            fail_if(&push_and_pull_again(server.addr, &l, round), &format!("push/pull after kill {round}"), &server);
        }
        let Some(&kill_after) = KILL_AFTER_MS.get(round) else {
            // The resumed uploads are durable as well.
            let l = ledger.lock().expect("ledger");
            fail_if(&check_invariants(server.addr, &data_dir, &l), "invariants at the end", &server);
            break;
        };

        let chaos = Arc::new(Chaos { addr: server.addr, ledger: ledger.clone(), killed: AtomicBool::new(false), seeds: seeds.clone(), round });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let chaos = chaos.clone();
                thread::spawn(move || chaos.worker(w))
            })
            .collect();
        thread::sleep(Duration::from_millis(kill_after));
        chaos.killed.store(true, Ordering::SeqCst);
        server.kill9();
        for w in workers {
            w.join().expect("worker thread panicked");
        }
        let l = ledger.lock().expect("ledger");
        assert!(l.failures.is_empty(), "round {round}: the server misbehaved before the kill:\n  {}", l.failures.join("\n  "));
    }

    // The test must have exercised what it claims: pushes that completed and pushes cut off.
    let l = ledger.lock().expect("ledger");
    let committed = l.blobs.iter().filter(|b| b.outcome == Outcome::Committed).count();
    let cut =
        l.blobs.iter().filter(|b| b.outcome != Outcome::Committed).count() + l.manifests.iter().filter(|m| m.outcome != Outcome::Committed).count() + l.resumed;
    let manifests = l.manifests.iter().filter(|m| m.outcome == Outcome::Committed).count();
    eprintln!("{committed} blob pushes committed, {manifests} manifests committed, {} blob attempts in all", l.blobs.len());
    assert!(committed > 0 && manifests > 0 && cut > 0, "the kills did not land among uploads: {committed} committed, {manifests} manifests, {cut} cut off");
}

// -------------------------------------------------------------------------------------------
// 2. SIGTERM with a request in flight
// -------------------------------------------------------------------------------------------

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let tmp = tempdir();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("berth.log");
    let mut server = Server::start(&data_dir, None, &log);
    let addr = server.addr;
    let repo = "term/inflight";
    let location = open_session(addr, repo);

    let len = 512 * 1024;
    let data = content(42, len);
    let digest = sha256_digest(&data);
    let mut s = connect(addr).expect("connect");
    let headers = [("Content-Type", "application/octet-stream".to_owned()), ("Content-Range", format!("0-{}", len - 1))];
    send_head(&mut s, addr, "PATCH", &location, &headers, Some(len as u64)).expect("send PATCH head");
    // First half over about a second.
    let piece = len / 32;
    for chunk in data[..len / 2].chunks(piece) {
        s.write_all(chunk).expect("send PATCH body");
        thread::sleep(Duration::from_millis(60));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !session_busy(addr, &location) {
        assert!(Instant::now() < deadline, "the PATCH never showed up as in flight");
        thread::sleep(Duration::from_millis(50));
    }

    server.sigterm();

    // The listener closes: new connections are refused, while the process stays up for the
    // request in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            Ok(_) | Err(_) => {
                assert!(Instant::now() < deadline, "still accepting connections 20 s after SIGTERM\n{}", server.log_tail());
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert!(server.try_wait().is_none(), "berth exited with a request in flight\n{}", server.log_tail());

    // Second half over another second; the request completes normally.
    for chunk in data[len / 2..].chunks(piece) {
        s.write_all(chunk).expect("send the rest of the PATCH body after SIGTERM");
        thread::sleep(Duration::from_millis(60));
    }
    let resp = read_response(&mut s, "PATCH").expect("response to the in-flight PATCH");
    assert_eq!(resp.status, 202, "in-flight PATCH after SIGTERM: {}\n{}", resp.describe(), server.log_tail());
    assert_eq!(resp.header("range"), Some(format!("0-{}", len - 1).as_str()));
    drop(s);

    let status = server.wait_exit(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| panic!("berth still running 30 s after SIGTERM\n{}", server.log_tail()));
    assert!(status.success(), "berth exited with {status} after SIGTERM\n{}", server.log_tail());

    // What the finished request wrote was kept: the session continues after a restart.
    let server = Server::start(&data_dir, None, &log);
    let resp = request(server.addr, "GET", &location, &[], b"").expect("GET upload status");
    assert_eq!(resp.status, 204, "{}", resp.describe());
    assert_eq!(resp.header("range"), Some(format!("0-{}", len - 1).as_str()));
    let resp = request(server.addr, "PUT", &format!("{location}?digest={digest}"), &[], b"").expect("close upload");
    assert_eq!(resp.status, 201, "closing the upload after restart: {}", resp.describe());
    let resp = request(server.addr, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"").expect("GET blob");
    assert_eq!(resp.status, 200);
    assert!(resp.body == data, "the blob read back differs from what was pushed");
}

// -------------------------------------------------------------------------------------------
// 3. SIGTERM with a request that never finishes
// -------------------------------------------------------------------------------------------

#[test]
fn sigterm_with_stuck_request_exits_within_grace() {
    let tmp = tempdir();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("berth.log");
    let config: PathBuf = tmp.path().join("berth.yaml");
    std::fs::write(&config, "http:\n  shutdown_grace: 1s\n").expect("write config");
    let mut server = Server::start(&data_dir, Some(&config), &log);
    let addr = server.addr;
    let location = open_session(addr, "term/stuck");

    // Announce a megabyte, send four kilobytes, and stop there for good.
    let len = MIB;
    let mut s = connect(addr).expect("connect");
    let headers = [("Content-Type", "application/octet-stream".to_owned()), ("Content-Range", format!("0-{}", len - 1))];
    send_head(&mut s, addr, "PATCH", &location, &headers, Some(len as u64)).expect("send PATCH head");
    s.write_all(&content(7, 4096)).expect("send the start of the body");
    thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !session_busy(addr, &location) {
        assert!(Instant::now() < deadline, "the stuck PATCH never showed up as in flight");
        thread::sleep(Duration::from_millis(50));
    }

    server.sigterm();
    // With the default 30 s grace this bound would not be met: the 1 s from the file is used.
    let status = server.wait_exit(Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("berth still running 20 s after SIGTERM with shutdown_grace 1s\n{}", server.log_tail()));
    assert!(status.success(), "berth exited with {status}\n{}", server.log_tail());
    assert!(server.log().contains("did not finish within the grace period"), "berth exited without reporting the cut-off request\n{}", server.log_tail());
    // The stuck request was cut off, not answered as if it had succeeded.
    if let Ok(resp) = read_response(&mut s, "PATCH") {
        assert_ne!(resp.status, 202, "a request with most of its body missing was accepted");
    }
}

// -------------------------------------------------------------------------------------------
// 4. TLS on the main listener
// -------------------------------------------------------------------------------------------

/// `GET /v2/` over TLS (rustls, trusting only `client`'s roots); the raw response.
fn tls_get(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> io::Result<String> {
    use std::io::Read as _;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
    let mut conn = rustls::ClientConnection::new(client.clone(), name).map_err(io::Error::other)?;
    let mut sock = connect(addr)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn serves_tls_from_configured_files() {
    let tmp = tempdir();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("berth.log");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("CA key")).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params").signed_by(&key, &ca).expect("certificate");
    let (cert_file, key_file) = (tmp.path().join("server.crt"), tmp.path().join("server.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let config = tmp.path().join("berth.yaml");
    std::fs::write(&config, format!("http:\n  tls:\n    certificate: {}\n    key: {}\n", cert_file.display(), key_file.display())).expect("write config");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("trust the CA");
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let ok = |r: &io::Result<String>| r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
    let mut server = Server::start_probed(&data_dir, Some(&config), &log, &|addr| ok(&tls_get(addr, &client)));
    let resp = tls_get(server.addr, &client);
    assert!(ok(&resp), "GET /v2/ over TLS: {resp:?}\n{}", server.log_tail());
    assert!(server.log().contains("tls=true") || server.log().contains("\"tls\":true"), "the listening line says TLS\n{}", server.log_tail());
    // The port speaks only TLS.
    let plain = request(server.addr, "GET", "/v2/", &[], b"");
    assert!(plain.is_err(), "plain HTTP was answered on the TLS port: {plain:?}");

    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("berth still running 30 s after SIGTERM\n{}", server.log_tail()));
    assert!(status.success(), "berth exited with {status} after SIGTERM\n{}", server.log_tail());
}
