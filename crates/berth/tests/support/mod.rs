//! Shared fixtures for the binary's process tests: start the real `berth` with its own data
//! directory and port, wait until it serves, and speak minimal HTTP/1.1 over `TcpStream`s.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// How long any single socket read or write may block before the test gives up on it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a (re)started server may take to answer `GET /v2/`.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running `berth serve`. Dropping it kills the process (SIGKILL) if it is still running,
/// so a failing test never leaves a server behind.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Start `berth serve` on a free loopback port with `data_dir` (and `config`, if given),
    /// appending its output to `log`, and wait until it answers `GET /v2/`.
    pub fn start(data_dir: &Path, config: Option<&Path>, log: &Path) -> Server {
        Server::start_probed(data_dir, config, log, &|addr| request(addr, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 200))
    }

    /// [`Server::start`], with `ready` telling when it serves (for a server that does not
    /// speak plain HTTP).
    pub fn start_probed(data_dir: &Path, config: Option<&Path>, log: &Path, ready: &dyn Fn(SocketAddr) -> bool) -> Server {
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("pick a free port").port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log_start = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
            let out = OpenOptions::new().create(true).append(true).open(log).expect("open server log");
            let err = out.try_clone().expect("clone log handle");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
            cmd.arg("serve").arg("--listen").arg(addr.to_string()).arg("--data-dir").arg(data_dir);
            if let Some(c) = config {
                cmd.arg("--config").arg(c);
            }
            // The environment of whoever runs the tests must not reconfigure the server.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("BERTH_") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err);
            let child = cmd.spawn().expect("spawn berth");
            let mut server = Server { child, addr, log: log.to_owned() };
            match server.wait_ready(log_start, ready) {
                Ok(()) => return server,
                Err(Some(status)) if server.log_since(log_start).contains("binding") => {
                    // Someone took the port between our probe and the server's bind.
                    eprintln!("berth could not bind {addr} ({status}); retrying on another port");
                    continue;
                }
                Err(_) => panic!("berth did not become ready on {addr}\n{}", server.log_tail()),
            }
        }
        panic!("berth could not bind a free port in 5 attempts");
    }

    /// Wait until this process logged that it listens and `ready` says it serves. The log
    /// line makes sure the answer comes from this process, not another test's server that
    /// grabbed the port. `Err(Some(status))` if the process exited, `Err(None)` on timeout.
    fn wait_ready(&mut self, log_start: u64, ready: &dyn Fn(SocketAddr) -> bool) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Some(status));
            }
            if self.log_since(log_start).contains("berth listening") && ready(self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(None)
    }

    fn log_since(&self, start: u64) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(start as usize..).unwrap_or_default()).into_owned()
    }

    /// The server log, all of it (every start of every server sharing the log file).
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!("--- last lines of {} ---\n{}", self.log.display(), lines[lines.len().saturating_sub(60)..].join("\n"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM. The crate forbids `unsafe`, so this goes through the shell's `kill`.
    pub fn sigterm(&self) {
        let status = Command::new("sh").arg("-c").arg(format!("kill -TERM {}", self.pid())).status().expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid());
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Poll until the process exits, for at most `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Status and body, for assertion messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        format!("{} {body}", self.status)
    }
}

pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Write a request head. `content_length: None` sends no body headers at all.
pub fn send_head(s: &mut TcpStream, addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], content_length: Option<u64>) -> io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Read one whole response (`method` tells whether a body follows).
pub fn read_response(s: &mut TcpStream, method: &str) -> io::Result<Response> {
    let mut r = BufReader::new(s);
    let status_line = read_line(&mut r)?;
    let status: u16 = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut resp = Response { status, headers, body: Vec::new() };
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if resp.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let line = read_line(&mut r)?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                while !read_line(&mut r)?.is_empty() {}
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..])?;
            read_line(&mut r)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad(format!("bad content-length {len:?}")))?;
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// One request on a fresh connection, body sent at once.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> io::Result<Response> {
    let mut s = connect(addr)?;
    let len = (!body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE")).then_some(body.len() as u64);
    send_head(&mut s, addr, method, path, headers, len)?;
    s.write_all(body)?;
    read_response(&mut s, method)
}

/// `len` pseudo-random bytes determined by `seed` (splitmix64), so the tests can regenerate
/// any blob they pushed instead of keeping it in memory.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Run `berth ARGS` to completion with `stdin` as its standard input (and none of this
/// process's `BERTH_*` variables); returns whether it succeeded, its stdout and its stderr.
pub fn run_berth(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("run berth");
    let mut input = child.stdin.take().expect("stdin");
    // A command that refuses its arguments exits before reading its input: the pipe is then
    // closed, and that is its answer, not the test's failure.
    match input.write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r.expect("write stdin"),
    }
    drop(input);
    let out = child.wait_with_output().expect("wait for berth");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
