//! `berth bench`: a load generator for any registry URL (berth, Distribution, zot...), so the
//! same run can measure berth and the reference side by side.
//!
//! Workloads: small-image push (config + 3 layers of 4-64 KiB, docker's HEAD/POST/PATCH/PUT
//! flow), large-blob push (one PUT, and 8 MiB PATCH chunks), large-blob pull, a catalog walk
//! following `Link`, cross-repository mounts, and manifest GET / blob HEAD hammered over many
//! connections. For each it reports throughput and p50/p99 latency, and, given the server's PID,
//! the server's CPU-seconds and peak RSS, read from /proc.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use oci::Digest;

type Body = BoxBody<Bytes, std::io::Error>;
type Http = Client<HttpConnector, Body>;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Registry base URL, e.g. http://127.0.0.1:5000
    #[arg(long)]
    url: String,
    /// PID of the server process, to report its CPU time and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Label printed with the results.
    #[arg(long, default_value = "registry")]
    label: String,
    /// Concurrent connections for the GET/HEAD hammers.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// How long each hammer runs.
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    duration: Duration,
    /// Small images to push.
    #[arg(long, default_value_t = 300)]
    images: usize,
    /// Size of the large blob, in MiB.
    #[arg(long, default_value_t = 512)]
    large_mib: usize,
    /// Repositories for the catalog walk.
    #[arg(long, default_value_t = 2000)]
    repos: usize,
    /// Mounts to perform.
    #[arg(long, default_value_t = 2000)]
    mounts: usize,
    /// Blobs for `gc-fill` (half referenced by manifests, half garbage).
    #[arg(long, default_value_t = 100_000)]
    gc_blobs: usize,
    /// Run only these workloads (comma separated): push-small, push-large, push-chunked, pull,
    /// catalog, mount, manifest-get, blob-head; and gc-fill (not run by default: fills the
    /// registry with `--gc-blobs` small blobs, half of them referenced by manifests of 100
    /// layers, half garbage, for a garbage collection benchmark).
    #[arg(long)]
    only: Option<String>,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration"))
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

struct Bench {
    http: Http,
    base: String,
}

/// One workload's figures.
struct Outcome {
    name: &'static str,
    ops: f64,
    unit: &'static str,
    /// Bytes moved, for MB/s and CPU-s/GB.
    bytes: u64,
    wall: Duration,
    latencies: Vec<Duration>,
    cpu: Option<f64>,
    /// The benchmark's own CPU seconds (it shares the machine with the server).
    client_cpu: Option<f64>,
    rss_peak_mib: Option<f64>,
}

fn clk_tck() -> f64 {
    // SAFETY-free: sysconf is a plain libc query.
    let t = unsafe_free_sysconf();
    if t > 0 { t as f64 } else { 100.0 }
}

#[allow(clippy::cast_possible_truncation)]
fn unsafe_free_sysconf() -> i64 {
    // `getconf CLK_TCK` without unsafe code: Linux has used 100 on every mainstream platform.
    std::process::Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
}

/// Server CPU seconds (user + system) so far.
fn cpu_seconds(pid: u32, tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / tck)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Deterministic pseudo-random bytes (xorshift), so runs are repeatable and incompressible.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Bench {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Body) -> anyhow::Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.http.request(req.body(body)?).await?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }

    fn location(headers: &hyper::HeaderMap) -> anyhow::Result<String> {
        let loc = headers.get("location").context("no Location")?.to_str()?;
        // Accept absolute or relative locations.
        Ok(match loc.find("/v2/") {
            Some(i) => loc[i..].to_owned(),
            None => loc.to_owned(),
        })
    }

    fn with_query(loc: &str, q: &str) -> String {
        if loc.contains('?') { format!("{loc}&{q}") } else { format!("{loc}?{q}") }
    }

    /// Push a blob the way docker does: HEAD, POST, one PATCH, PUT.
    async fn push_blob_docker(&self, repo: &str, data: Bytes) -> anyhow::Result<Digest> {
        let d = Digest::sha256_of(&data);
        let (st, _, _) = self.send(Method::HEAD, &format!("/v2/{repo}/blobs/{d}"), &[], empty()).await?;
        if st == StatusCode::OK {
            return Ok(d);
        }
        let (st, h, _) = self.send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), &[], empty()).await?;
        if st != StatusCode::ACCEPTED {
            bail!("POST upload: {st}");
        }
        let loc = Self::location(&h)?;
        let len = data.len().to_string();
        let (st, h, _) = self.send(Method::PATCH, &loc, &[("content-type", "application/octet-stream"), ("content-length", &len)], full(data)).await?;
        if st != StatusCode::ACCEPTED {
            bail!("PATCH: {st}");
        }
        let loc = Self::location(&h)?;
        let (st, _, body) = self.send(Method::PUT, &Self::with_query(&loc, &format!("digest={d}")), &[], empty()).await?;
        if st != StatusCode::CREATED {
            bail!("PUT upload: {st} {}", String::from_utf8_lossy(&body));
        }
        Ok(d)
    }

    async fn push_manifest(&self, repo: &str, tag: &str, config: (&Digest, usize), layers: &[(Digest, usize)]) -> anyhow::Result<Bytes> {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0.as_str(), "size": config.1},
            "layers": layers.iter().map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.as_str(), "size": s})).collect::<Vec<_>>(),
        });
        let body = Bytes::from(serde_json::to_vec(&m)?);
        let (st, _, resp) = self
            .send(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"), &[("content-type", "application/vnd.oci.image.manifest.v1+json")], full(body.clone()))
            .await?;
        if st != StatusCode::CREATED {
            bail!("manifest PUT: {st} {}", String::from_utf8_lossy(&resp));
        }
        Ok(body)
    }

    /// Push a blob in two requests: POST, then PUT with the body (no existence check).
    async fn push_blob_put(&self, repo: &str, data: Bytes) -> anyhow::Result<Digest> {
        let d = Digest::sha256_of(&data);
        let (st, h, _) = self.send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), &[], empty()).await?;
        if st != StatusCode::ACCEPTED {
            bail!("POST upload: {st}");
        }
        let loc = Self::location(&h)?;
        let len = data.len().to_string();
        let (st, _, body) = self
            .send(Method::PUT, &Self::with_query(&loc, &format!("digest={d}")), &[("content-type", "application/octet-stream"), ("content-length", &len)], full(data))
            .await?;
        if st != StatusCode::CREATED {
            bail!("PUT upload: {st} {}", String::from_utf8_lossy(&body));
        }
        Ok(d)
    }

    async fn push_small_image(&self, repo: &str, tag: &str, seed: u64) -> anyhow::Result<()> {
        let config = Bytes::from(format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#));
        let cd = self.push_blob_docker(repo, config.clone()).await?;
        let mut layers = Vec::new();
        for i in 0..3u64 {
            let size = 4096 + ((seed * 7 + i * 13) % 61) as usize * 1024;
            let data = Bytes::from(noise(seed * 3 + i + 1, size));
            layers.push((self.push_blob_docker(repo, data).await?, size));
        }
        self.push_manifest(repo, tag, (&cd, config.len()), &layers).await?;
        Ok(())
    }
}

/// Run `ops` operations with `concurrency` workers, timing each.
async fn timed<F, Fut>(concurrency: usize, ops: usize, f: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ops {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                f(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((start.elapsed(), all))
}

/// Hammer for `duration` with `connections` workers.
async fn hammer<F, Fut>(connections: usize, duration: Duration, f: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (f, stop) = (f.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                f().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((start.elapsed(), all))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(connector);
    let base = args.url.trim_end_matches('/').to_owned();
    let b = Arc::new(Bench { http, base });
    let (st, _, _) = b.send(Method::GET, "/v2/", &[], empty()).await.context("registry not reachable")?;
    if st != StatusCode::OK {
        bail!("GET /v2/ answered {st} (authentication is not supported by the benchmark)");
    }
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| o.split(',').any(|w| w.trim() == name));
    let tck = clk_tck();
    let run_id = std::process::id() as u64 * 1_000_003 + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    println!("berth bench: {} at {} (run {run_id:x})", args.label, args.url);
    let mut results: Vec<Outcome> = Vec::new();

    macro_rules! measure {
        ($name:expr, $unit:expr, $bytes:expr, $body:expr) => {{
            let cpu0 = args.pid.and_then(|p| cpu_seconds(p, tck));
            let client0 = cpu_seconds(std::process::id(), tck);
            let peak = Arc::new(AtomicU64::new(0));
            let sampling = Arc::new(AtomicBool::new(true));
            let sampler = args.pid.map(|pid| {
                let (peak, sampling) = (peak.clone(), sampling.clone());
                tokio::spawn(async move {
                    while sampling.load(Ordering::Relaxed) {
                        if let Some(r) = rss_mib(pid) {
                            peak.fetch_max((r * 1024.0) as u64, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            });
            let (wall, mut latencies, ops): (Duration, Vec<Duration>, f64) = $body;
            sampling.store(false, Ordering::Relaxed);
            if let Some(s) = sampler {
                let _ = s.await;
            }
            let cpu = match (cpu0, args.pid.and_then(|p| cpu_seconds(p, tck))) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            latencies.sort();
            let client_cpu = match (client0, cpu_seconds(std::process::id(), tck)) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let o = Outcome { name: $name, ops, unit: $unit, bytes: $bytes, wall, latencies, cpu, client_cpu, rss_peak_mib: args.pid.map(|_| peak.load(Ordering::Relaxed) as f64 / 1024.0) };
            print_outcome(&o);
            results.push(o);
        }};
    }

    if args.only.as_deref().is_some_and(|o| o.split(',').any(|w| w.trim() == "gc-fill")) {
        // 100 repositories; in each, live images of 100 layers and as many garbage blobs.
        let n = args.gc_blobs / 2;
        let images = n.div_ceil(100);
        let bb = b.clone();
        measure!("gc fill: live blobs", "blobs/s", 0, {
            let (wall, lat) = timed(16, images, move |i| {
                let bb = bb.clone();
                async move {
                    let repo = format!("bench-{run_id:x}/gc/r{:02}", i % 100);
                    let mut layers = Vec::with_capacity(100);
                    for l in 0..100usize {
                        let data = Bytes::from(format!("live {run_id} {i} {l}"));
                        let len = data.len();
                        layers.push((bb.push_blob_put(&repo, data).await?, len));
                    }
                    let config = Bytes::from(format!(r#"{{"architecture":"amd64","os":"linux","image":{i}}}"#));
                    let cd = bb.push_blob_put(&repo, config.clone()).await?;
                    bb.push_manifest(&repo, &format!("i{i}"), (&cd, config.len()), &layers).await?;
                    Ok(())
                }
            })
            .await?;
            (wall, lat, (images * 101) as f64 / wall.as_secs_f64())
        });
        let bb = b.clone();
        measure!("gc fill: garbage blobs", "blobs/s", 0, {
            let (wall, lat) = timed(16, n, move |i| {
                let bb = bb.clone();
                async move { bb.push_blob_put(&format!("bench-{run_id:x}/gc/r{:02}", i % 100), Bytes::from(format!("garbage {run_id} {i}"))).await.map(|_| ()) }
            })
            .await?;
            (wall, lat, n as f64 / wall.as_secs_f64())
        });
    }

    if wanted("push-small") {
        let n = args.images;
        let bb = b.clone();
        measure!("small-image push", "images/s", 0, {
            let (wall, lat) = timed(8, n, move |i| {
                let bb = bb.clone();
                async move { bb.push_small_image(&format!("bench-{run_id:x}/small"), &format!("t{i}"), run_id * 10_000 + i as u64).await }
            })
            .await?;
            (wall, lat, n as f64 / wall.as_secs_f64())
        });
    }

    let large = args.large_mib << 20;
    let big_tail = Bytes::from(noise(run_id, large));
    let big_repo = format!("bench-{run_id:x}/large");
    let mut pushed_large: Option<Digest> = None;
    for (name, chunked) in [("push-large", false), ("push-chunked", true)] {
        if !wanted(name) {
            continue;
        }
        // A distinct blob per run: a different 8-byte prefix.
        let prefix = Bytes::from(noise(run_id + u64::from(chunked) + 7, 8));
        let digest = {
            let mut h = oci::Hasher::new(oci::Algorithm::Sha256);
            h.update(&prefix);
            h.update(&big_tail);
            h.finish()
        };
        let total = (prefix.len() + big_tail.len()) as u64;
        let bb = b.clone();
        let (tail, repo, d) = (big_tail.clone(), big_repo.clone(), digest.clone());
        let label = if chunked { "large push (8 MiB PATCH)" } else { "large push (one PUT)" };
        measure!(label, "MB/s", total, {
            let t = Instant::now();
            let (st, h, _) = bb.send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), &[], empty()).await?;
            if st != StatusCode::ACCEPTED {
                bail!("POST: {st}");
            }
            let mut loc = Bench::location(&h)?;
            let mut pieces = vec![prefix.clone()];
            let mut off = 0;
            while off < tail.len() {
                let end = (off + (1 << 20)).min(tail.len());
                pieces.push(tail.slice(off..end));
                off = end;
            }
            if chunked {
                let mut start = 0u64;
                for group in pieces.chunks(8) {
                    let len: u64 = group.iter().map(|p| p.len() as u64).sum();
                    let stream = futures::stream::iter(group.to_vec().into_iter().map(|p| Ok::<_, std::io::Error>(Frame::data(p))));
                    let range = format!("{start}-{}", start + len - 1);
                    let lens = len.to_string();
                    let (st, h, body) = bb
                        .send(Method::PATCH, &loc, &[("content-range", &range), ("content-length", &lens), ("content-type", "application/octet-stream")], BodyExt::boxed(StreamBody::new(stream)))
                        .await?;
                    if st != StatusCode::ACCEPTED {
                        bail!("PATCH: {st} {}", String::from_utf8_lossy(&body));
                    }
                    loc = Bench::location(&h)?;
                    start += len;
                }
                let (st, _, body) = bb.send(Method::PUT, &Bench::with_query(&loc, &format!("digest={d}")), &[], empty()).await?;
                if st != StatusCode::CREATED {
                    bail!("PUT: {st} {}", String::from_utf8_lossy(&body));
                }
            } else {
                let stream = futures::stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(Frame::data(p))));
                let lens = total.to_string();
                let (st, _, body) = bb
                    .send(Method::PUT, &Bench::with_query(&loc, &format!("digest={d}")), &[("content-length", &lens), ("content-type", "application/octet-stream")], BodyExt::boxed(StreamBody::new(stream)))
                    .await?;
                if st != StatusCode::CREATED {
                    bail!("PUT: {st} {}", String::from_utf8_lossy(&body));
                }
            }
            let wall = t.elapsed();
            (wall, vec![wall], total as f64 / 1e6 / wall.as_secs_f64())
        });
        pushed_large = Some(digest);
    }

    if wanted("pull") {
        let d = match pushed_large.clone() {
            Some(d) => d,
            None => {
                let data = Bytes::from(noise(run_id + 99, large));
                let d = b.push_blob_docker(&big_repo, data).await?;
                d
            }
        };
        let bb = b.clone();
        let repo = big_repo.clone();
        let rounds = 3u64;
        let size_hint = large as u64;
        measure!("large pull", "MB/s", size_hint * rounds, {
            let t = Instant::now();
            let mut got = 0u64;
            let mut lat = Vec::new();
            for _ in 0..rounds {
                let t1 = Instant::now();
                let req = Request::builder().uri(format!("{}/v2/{repo}/blobs/{d}", bb.base)).body(empty())?;
                let resp = bb.http.request(req).await?;
                if resp.status() != StatusCode::OK {
                    bail!("GET blob: {}", resp.status());
                }
                let mut body = resp.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        got += data.len() as u64;
                    }
                }
                lat.push(t1.elapsed());
            }
            let wall = t.elapsed();
            (wall, lat, got as f64 / 1e6 / wall.as_secs_f64())
        });
    }

    if wanted("catalog") {
        // Each repository gets one small blob; then the catalog is walked page by page.
        let n = args.repos;
        let bb = b.clone();
        timed(8, n, move |i| {
            let bb = bb.clone();
            async move {
                bb.push_blob_docker(&format!("bench-{run_id:x}/cat/r{i:05}"), Bytes::from(format!("repo {i} {run_id}"))).await.map(|_| ())
            }
        })
        .await?;
        let bb = b.clone();
        measure!("catalog walk (n=100)", "walks/s", 0, {
            let t = Instant::now();
            let mut path = "/v2/_catalog?n=100".to_owned();
            let mut pages = 0;
            let mut lat = Vec::new();
            loop {
                let t1 = Instant::now();
                let (st, h, _) = bb.send(Method::GET, &path, &[], empty()).await?;
                lat.push(t1.elapsed());
                if st != StatusCode::OK {
                    bail!("catalog: {st}");
                }
                pages += 1;
                match h.get("link").and_then(|l| l.to_str().ok()).and_then(|l| l.split(['<', '>']).nth(1)) {
                    Some(next) => path = next[next.find("/v2/").unwrap_or(0)..].to_owned(),
                    None => break,
                }
            }
            let wall = t.elapsed();
            println!("    walked {pages} pages in {:.3} s", wall.as_secs_f64());
            (wall, lat, 1.0 / wall.as_secs_f64())
        });
    }

    // A small image serves the mount source, manifest GET and blob HEAD workloads.
    let hot_repo = format!("bench-{run_id:x}/hot");
    let layer = Bytes::from(noise(run_id + 5, 32 * 1024));
    let layer_digest = b.push_blob_docker(&hot_repo, layer.clone()).await?;
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config_digest = b.push_blob_docker(&hot_repo, config.clone()).await?;
    b.push_manifest(&hot_repo, "latest", (&config_digest, config.len()), &[(layer_digest.clone(), layer.len())]).await?;

    if wanted("mount") {
        let n = args.mounts;
        let bb = b.clone();
        let (from, d) = (hot_repo.clone(), layer_digest.clone());
        measure!("cross-repo mount", "req/s", 0, {
            let (wall, lat) = timed(16, n, move |i| {
                let (bb, from, d) = (bb.clone(), from.clone(), d.clone());
                async move {
                    let (st, _, _) = bb.send(Method::POST, &format!("/v2/bench-{run_id:x}/mnt/m{i}/blobs/uploads/?mount={d}&from={from}"), &[], empty()).await?;
                    if st != StatusCode::CREATED {
                        bail!("mount answered {st}");
                    }
                    Ok(())
                }
            })
            .await?;
            (wall, lat, n as f64 / wall.as_secs_f64())
        });
    }

    if wanted("manifest-get") {
        let bb = b.clone();
        let path: Arc<str> = format!("/v2/{hot_repo}/manifests/latest").into();
        measure!("manifest GET by tag", "req/s", 0, {
            let (wall, lat) = hammer(args.connections, args.duration, move || {
                let (bb, path) = (bb.clone(), path.clone());
                async move {
                    let (st, _, body) = bb.send(Method::GET, &path, &[("accept", "application/vnd.oci.image.manifest.v1+json")], empty()).await?;
                    if st != StatusCode::OK || body.is_empty() {
                        bail!("manifest GET answered {st}");
                    }
                    Ok(())
                }
            })
            .await?;
            let n = lat.len() as f64;
            (wall, lat, n / wall.as_secs_f64())
        });
    }

    if wanted("blob-head") {
        let bb = b.clone();
        let path: Arc<str> = format!("/v2/{hot_repo}/blobs/{layer_digest}").into();
        measure!("blob HEAD", "req/s", 0, {
            let (wall, lat) = hammer(args.connections, args.duration, move || {
                let (bb, path) = (bb.clone(), path.clone());
                async move {
                    let (st, _, _) = bb.send(Method::HEAD, &path, &[], empty()).await?;
                    if st != StatusCode::OK {
                        bail!("blob HEAD answered {st}");
                    }
                    Ok(())
                }
            })
            .await?;
            let n = lat.len() as f64;
            (wall, lat, n / wall.as_secs_f64())
        });
    }

    if let Some(pid) = args.pid {
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
            .and_then(|kb| kb.parse::<f64>().ok());
        if let Some(kb) = hwm {
            println!("server peak RSS over its lifetime (VmHWM): {:.1} MiB", kb / 1024.0);
        }
    }
    println!("summary {}: {}", args.label, results.iter().map(|o| format!("{}={:.1} {}", o.name, o.ops, o.unit)).collect::<Vec<_>>().join("; "));
    Ok(())
}

fn print_outcome(o: &Outcome) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = format!(
        "  {:<26} {:>10.1} {:<9} p50 {:>8.2} ms  p99 {:>8.2} ms  wall {:>7.2} s",
        o.name,
        o.ops,
        o.unit,
        ms(percentile(&o.latencies, 0.5)),
        ms(percentile(&o.latencies, 0.99)),
        o.wall.as_secs_f64()
    );
    if let Some(cpu) = o.cpu {
        line.push_str(&format!("  server CPU {cpu:.2} s"));
        if o.bytes > 0 {
            line.push_str(&format!(" ({:.3} CPU-s/GB)", cpu / (o.bytes as f64 / 1e9)));
        } else if !o.latencies.is_empty() {
            line.push_str(&format!(" ({:.3} CPU-s/1k req)", cpu / (o.latencies.len() as f64 / 1000.0)));
        }
    }
    if let Some(c) = o.client_cpu {
        line.push_str(&format!("  client CPU {c:.2} s"));
    }
    if let Some(r) = o.rss_peak_mib {
        line.push_str(&format!("  peak RSS {r:.1} MiB"));
    }
    println!("{line}");
}
