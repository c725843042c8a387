//! TLS on a real listener on port 0: the API over TLS, old protocol versions refused by the
//! server (checked with Python's OpenSSL-backed `ssl` module, an independent implementation),
//! certificates replaced on disk picked up without a restart (and a bad replacement ignored),
//! client certificates (required, optional, from the wrong CA) and the identity they give,
//! and graceful shutdown.
//!
//! Certificates are made by `rcgen` for each test. Every wait is bounded by a deadline; no test
//! asserts on how long anything took.

mod support;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use server::ConnInfo;
use server::tls::{ClientAuth, TlsConfig, TlsListener, TlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// The bound on every wait for something to happen.
const DEADLINE: Duration = Duration::from_secs(30);

// -------------------------------------------------------------------------------------------
// Certificates
// -------------------------------------------------------------------------------------------

/// A certificate authority that signs the tests' certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM (for files) and DER (for comparing).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate") }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    fn server_cert(&self, cn: &str) -> Leaf {
        self.leaf(cn, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client_cert(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

/// Replace `path` atomically, as a certificate renewal tool would.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A directory with the server's certificate and key files and the CA bundle clients trust.
struct Files {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(leaf: &Leaf) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        replace(&cert, &leaf.cert_pem);
        replace(&key, &leaf.key_pem);
        Files { dir, cert, key }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        replace(&p, contents);
        p
    }

    fn options(&self) -> TlsOptions {
        TlsOptions {
            certificate: self.cert.clone(),
            key: self.key.clone(),
            client_ca: None,
            client_auth: ClientAuth::Optional,
            // Short, so replacements are seen quickly; the tests poll with a deadline anyway.
            reload_interval: Duration::from_millis(50),
        }
    }
}

// -------------------------------------------------------------------------------------------
// Server and client
// -------------------------------------------------------------------------------------------

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

async fn start(opts: &TlsOptions, router: Router) -> Running {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("local addr");
    let listener = TlsListener::new(tcp, TlsConfig::load(opts).expect("TLS setup")).expect("TLS listener");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        router,
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(5),
    ));
    Running { addr, stop: Some(tx), task }
}

impl Running {
    /// Signal shutdown and wait (bounded) until `serve` returns.
    async fn shutdown(mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("serve returns after the shutdown signal")
            .expect("serve task")
            .expect("serve result");
    }
}

/// A router that tells the client what the server knows about its connection.
fn whoami_router() -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|ConnectInfo(c): ConnectInfo<ConnInfo>| async move { format!("tls={} identity={}", c.tls, c.client_identity.as_deref().unwrap_or("-")) }),
        )
}

fn client(ca: &Ca, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).expect("trust the CA");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(l) => builder.with_client_auth_cert(vec![l.der.clone()], PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).expect("client key")).expect("client cert"),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session does not carry the server's certificate again (the client reports the
    // one it saw first), so every connection makes a full handshake.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// What one HTTPS request got back.
struct Fetched {
    /// The certificate the server presented.
    peer: CertificateDer<'static>,
    status: u16,
    body: String,
}

/// `GET path` over a new TLS connection (one request, `Connection: close`). Any failure, from
/// the handshake to a reply that is not HTTP, is an `Err` describing it.
async fn fetch(addr: SocketAddr, client: Arc<rustls::ClientConfig>, path: &str) -> Result<Fetched, String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = TlsConnector::from(client).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
        let peer = tls.get_ref().1.peer_certificates().and_then(<[_]>::first).cloned().ok_or("no server certificate")?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out).await {
            Ok(_) => {}
            // A peer closing without close_notify after a complete reply is still a reply.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
        let status = head.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()).ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
        Ok(Fetched { peer: peer.into_owned(), status, body: body.to_owned() })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "timed out".to_owned())?
}

async fn fetch_ok(addr: SocketAddr, client: Arc<rustls::ClientConfig>, path: &str) -> Fetched {
    let f = fetch(addr, client, path).await.unwrap_or_else(|e| panic!("GET {path} over TLS failed: {e}"));
    assert_eq!(f.status, 200, "GET {path}: {}", f.body);
    f
}

/// Poll `GET path` until the served certificate is `want`, or panic at the deadline.
async fn wait_for_certificate(addr: SocketAddr, client: Arc<rustls::ClientConfig>, want: &CertificateDer<'_>, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(f) = fetch(addr, client.clone(), "/whoami").await
            && f.peer == *want
        {
            return;
        }
        assert!(Instant::now() < deadline, "the server did not start serving {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// -------------------------------------------------------------------------------------------
// Log capture: the reloader reports a bad replacement only in the log.
// -------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

/// Everything logged by this test process (the reloader runs on other threads, so the
/// subscriber is global).
fn log() -> &'static LogBuffer {
    static LOG: OnceLock<LogBuffer> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = LogBuffer::default();
        let _ = tracing_subscriber::fmt().with_writer(buf.clone()).with_ansi(false).with_max_level(tracing::Level::DEBUG).try_init();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&log().0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
}

// -------------------------------------------------------------------------------------------
// Tests
// -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_tls_and_plain_http_refused() {
    let t = support::registry().await;
    let ca = Ca::new("berth test CA");
    let files = Files::new(&ca.server_cert("localhost"));
    let srv = start(&files.options(), server::router(t.registry.clone())).await;

    let f = fetch_ok(srv.addr, client(&ca, None), "/v2/").await;
    assert_eq!(f.body.trim(), "{}", "the base endpoint's body");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(srv.addr).await.expect("connect");
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await.expect("the server closes the connection");
    assert!(!out.starts_with(b"HTTP/"), "plain HTTP was answered: {:?}", String::from_utf8_lossy(&out));

    // A client that does not trust the server's CA refuses it (the server is not serving
    // something any client would accept).
    let other = Ca::new("another CA");
    let e = fetch(srv.addr, client(&other, None), "/v2/").await.err().expect("an untrusted server certificate is refused");
    assert!(e.contains("handshake"), "{e}");

    // The listener still serves after all of that.
    fetch_ok(srv.addr, client(&ca, None), "/v2/").await;
    srv.shutdown().await;
}

/// Connect with Python's `ssl` module pinned to one protocol version; returns its one-line
/// report: `OK <version> <status line>` or `SSLERR <reason> <message>`.
fn python_tls(port: u16, version: &str, cafile: &Path) -> String {
    const SCRIPT: &str = r#"
import socket, ssl, sys
port, version, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(cafile)
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
ctx.set_ciphers('DEFAULT@SECLEVEL=0')
try:
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname='localhost') as t:
            t.sendall(b'GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
            print('OK', t.version(), t.recv(64).split(b'\r\n')[0].decode())
except ssl.SSLError as e:
    print('SSLERR', e.reason, e)
"#;
    let out = match std::process::Command::new("python3").arg("-c").arg(SCRIPT).arg(port.to_string()).arg(version).arg(cafile).output() {
        Ok(out) => out,
        Err(e) => panic!("this test needs python3 (with its ssl module) on PATH to act as an independent TLS client: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && !stdout.is_empty(), "python3 failed ({}): {stdout} {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocol_versions_are_refused_by_the_server() {
    log();
    let t = support::registry().await;
    let ca = Ca::new("berth test CA");
    let files = Files::new(&ca.server_cert("localhost"));
    let cafile = files.write("ca.crt", &ca.issuer.pem());
    let srv = start(&files.options(), server::router(t.registry.clone())).await;
    let port = srv.addr.port();
    let run = |v: &'static str| {
        let cafile = cafile.clone();
        tokio::task::spawn_blocking(move || python_tls(port, v, &cafile))
    };

    // The same client code succeeds with the versions the server supports...
    for v in ["TLSv1_2", "TLSv1_3"] {
        let r = run(v).await.expect("python");
        assert!(r.starts_with("OK") && r.contains("200"), "{v}: {r}");
    }
    // ...and with the old ones gets a fatal alert *from the server*: OpenSSL names an alert it
    // received SSLV3_ALERT_* or TLSV1_ALERT_* (refusing by itself it would say
    // UNSUPPORTED_PROTOCOL or NO_PROTOCOLS_AVAILABLE), and the server logs the failed handshake.
    // rustls answers handshake_failure rather than protocol_version here: it rejects a
    // ClientHello without the signature_algorithms extension, which TLS 1.0 and 1.1 clients
    // never send, before it looks at the version.
    for v in ["TLSv1_1", "TLSv1"] {
        let failed_before = log_text().matches("TLS handshake failed").count();
        let r = run(v).await.expect("python");
        assert!(
            r.starts_with("SSLERR SSLV3_ALERT_") || r.starts_with("SSLERR TLSV1_ALERT_"),
            "{v} was not refused with an alert from the server: {r}"
        );
        let deadline = Instant::now() + DEADLINE;
        while log_text().matches("TLS handshake failed").count() == failed_before {
            assert!(Instant::now() < deadline, "the server did not log the {v} handshake failing; log:\n{}", log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_is_served_without_restart() {
    let ca = Ca::new("berth test CA");
    let first = ca.server_cert("first.localhost");
    let files = Files::new(&first);
    let srv = start(&files.options(), whoami_router()).await;
    assert_eq!(fetch_ok(srv.addr, client(&ca, None), "/whoami").await.peer, first.der);

    let second = ca.server_cert("second.localhost");
    assert_ne!(second.der, first.der);
    replace(&files.key, &second.key_pem);
    replace(&files.cert, &second.cert_pem);
    wait_for_certificate(srv.addr, client(&ca, None), &second.der, "the replacement certificate").await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replacement_keeps_the_old_certificate() {
    log();
    let ca = Ca::new("berth test CA");
    let good = ca.server_cert("good.localhost");
    let files = Files::new(&good);
    let srv = start(&files.options(), whoami_router()).await;
    assert_eq!(fetch_ok(srv.addr, client(&ca, None), "/whoami").await.peer, good.der);

    replace(&files.cert, "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n");
    // Wait until the reloader tried it: it logs an error naming the file.
    let named = files.cert.display().to_string();
    let deadline = Instant::now() + DEADLINE;
    while !log_text().lines().any(|l| l.contains("could not reload the TLS certificate") && l.contains(&named)) {
        assert!(Instant::now() < deadline, "no reload error naming {named} within {DEADLINE:?}; log:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        assert_eq!(fetch_ok(srv.addr, client(&ca, None), "/whoami").await.peer, good.der, "the old certificate keeps serving");
    }

    // A key that does not match the certificate is refused the same way.
    let other = ca.server_cert("other.localhost");
    replace(&files.cert, &good.cert_pem);
    replace(&files.key, &other.key_pem);
    let key_named = files.key.display().to_string();
    while !log_text().lines().any(|l| l.contains("could not reload the TLS certificate") && l.contains(&key_named)) {
        assert!(Instant::now() < deadline, "no reload error naming {key_named} within {DEADLINE:?}; log:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetch_ok(srv.addr, client(&ca, None), "/whoami").await.peer, good.der);

    // A good replacement after the bad ones is picked up.
    replace(&files.cert, &other.cert_pem);
    wait_for_certificate(srv.addr, client(&ca, None), &other.der, "the good replacement after a bad one").await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates() {
    let ca = Ca::new("berth test CA");
    let client_ca = Ca::new("berth clients CA");
    let stranger_ca = Ca::new("someone else's CA");
    let files = Files::new(&ca.server_cert("localhost"));
    let bundle = files.write("clients.crt", &client_ca.issuer.pem());
    let bot = client_ca.client_cert("ci-bot");
    let stranger = stranger_ca.client_cert("ci-bot");

    // Required: no certificate, or one from another CA, is refused; the CA's gets in with its CN.
    let mut opts = files.options();
    opts.client_ca = Some(bundle.clone());
    opts.client_auth = ClientAuth::Required;
    let srv = start(&opts, whoami_router()).await;
    let e = fetch(srv.addr, client(&ca, None), "/whoami").await.err().expect("no client certificate is refused");
    assert!(!e.contains("timed out"), "{e}");
    let e = fetch(srv.addr, client(&ca, Some(&stranger)), "/whoami").await.err().expect("a certificate from another CA is refused");
    assert!(!e.contains("timed out"), "{e}");
    assert_eq!(fetch_ok(srv.addr, client(&ca, Some(&bot)), "/whoami").await.body, "tls=true identity=ci-bot");
    srv.shutdown().await;

    // Optional: no certificate is served (without an identity); a good one still gives it.
    opts.client_auth = ClientAuth::Optional;
    let srv = start(&opts, whoami_router()).await;
    assert_eq!(fetch_ok(srv.addr, client(&ca, None), "/whoami").await.body, "tls=true identity=-");
    assert_eq!(fetch_ok(srv.addr, client(&ca, Some(&bot)), "/whoami").await.body, "tls=true identity=ci-bot");
    assert!(fetch(srv.addr, client(&ca, Some(&stranger)), "/whoami").await.is_err(), "a certificate that fails verification is refused even when optional");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_does_not_block_others() {
    let ca = Ca::new("berth test CA");
    let files = Files::new(&ca.server_cert("localhost"));
    let srv = start(&files.options(), whoami_router()).await;
    // Connections that never send a ClientHello, held open.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(srv.addr).await.expect("connect"));
    }
    assert_eq!(fetch_ok(srv.addr, client(&ca, None), "/whoami").await.body, "tls=true identity=-");
    drop(idle);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_over_tls() {
    let ca = Ca::new("berth test CA");
    let files = Files::new(&ca.server_cert("localhost"));
    let entered = Arc::new(tokio::sync::Notify::new());
    let router = {
        let entered = entered.clone();
        whoami_router().route(
            "/in-flight",
            get(move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
    };
    let srv = start(&files.options(), router).await;
    let addr = srv.addr;
    fetch_ok(addr, client(&ca, None), "/whoami").await;

    // A request in flight when the signal comes is finished; then serve returns.
    let in_flight = tokio::spawn(fetch(addr, client(&ca, None), "/in-flight"));
    tokio::time::timeout(DEADLINE, entered.notified()).await.expect("the request reaches its handler");
    srv.shutdown().await;
    let f = in_flight.await.expect("task").expect("the request in flight is answered");
    assert_eq!((f.status, f.body.as_str()), (200, "done"));

    // After serve returned, the port no longer completes handshakes.
    let deadline = Instant::now() + DEADLINE;
    while fetch(addr, client(&ca, None), "/whoami").await.is_ok() {
        assert!(Instant::now() < deadline, "still serving after shutdown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
