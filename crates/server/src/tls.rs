//! TLS on the main listener (rustls with the aws-lc-rs provider, TLS 1.2 and 1.3, ALPN
//! `http/1.1` only since the server speaks HTTP/1), optional client certificates (mTLS), and
//! the connection facts every request carries ([`ConnInfo`]).
//!
//! [`TlsListener`] is an `axum::serve::Listener`: a background task accepts TCP connections
//! and runs their handshakes concurrently (each bounded by [`HANDSHAKE_TIMEOUT`], so a client
//! that stalls mid-handshake cannot hold up anyone else), and hands finished streams to axum
//! through a channel. The certificate and key are re-read when their files change (a poll of
//! their modification time and length), so a renewed certificate is served without a restart;
//! a replacement that fails to load is logged and the previous certificate keeps serving.
//!
//! This module reads the certificate, key and CA files it is handed, and nothing else: it
//! does not know the configuration file, its keys or its defaults (berth's `config/tls.rs`
//! does), and it does not decide what a client identity is allowed to do (authorization does).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; beyond this, new connections wait in the kernel's backlog
/// (so a flood of idle connections costs a bounded amount of memory).
const MAX_HANDSHAKES: usize = 1024;

/// The facts about a request's connection, for every handler and middleware:
/// `req.extensions().get::<ConnectInfo<ConnInfo>>()` (or [`ConnInfo::of`]), or the
/// `ConnectInfo<ConnInfo>` extractor. Present whenever the router is served by [`crate::serve`],
/// on a plain listener and on a [`TlsListener`] alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The identity of a client that presented a certificate the client CA verified: its
    /// subject Common Name, or, when the subject has none, its first DNS subject alternative
    /// name. `None` without TLS, without a certificate, or when the certificate names neither
    /// (or only with control characters).
    pub client_identity: Option<String>,
}

impl ConnInfo {
    /// The connection facts of a request, from its extensions.
    pub fn of(extensions: &axum::http::Extensions) -> Option<&ConnInfo> {
        extensions.get::<ConnectInfo<ConnInfo>>().map(|c| &c.0)
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ConnInfo { addr: *stream.remote_addr(), tls: false, client_identity: None }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        // The handshake is complete here, so the verified chain (also on a resumed session) is known.
        let client_identity = stream.io().get_ref().1.peer_certificates().and_then(<[_]>::first).and_then(|leaf| identity(leaf));
        ConnInfo { addr: *stream.remote_addr(), tls: true, client_identity }
    }
}

/// Whether clients must present a certificate (when a client CA is configured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate is asked for and verified if sent; clients without one are served.
    #[default]
    Optional,
    /// The handshake fails without a certificate the client CA verifies.
    Required,
}

/// What the TLS listener serves, as files.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// PEM: the server certificate first, then any intermediates.
    pub certificate: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates are verified against (`None`: no client
    /// certificates are asked for). Read once, at start.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// How often the certificate and key files are checked for changes.
    pub reload_interval: Duration,
}

/// Which file a [`TlsError`] is about, so the configuration can name its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    Certificate,
    Key,
    ClientCa,
}

/// A TLS file that could not be read or used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    pub file: TlsFile,
    pub path: PathBuf,
    pub message: String,
}

fn tls_err(file: TlsFile, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError { file, path: path.to_owned(), message: message.into() }
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, so it does not matter which providers other crates enable in rustls.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read a certificate chain and its private key, and check that they belong together.
pub fn load_certified_key(certificate: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    use TlsFile::{Certificate, Key};
    let chain = read_certificates(Certificate, certificate)?;
    let leaf = chain.first().ok_or_else(|| tls_err(Certificate, certificate, "no CERTIFICATE block in the file"))?;
    webpki::EndEntityCert::try_from(leaf).map_err(|e| tls_err(Certificate, certificate, format!("the first certificate does not parse: {e}")))?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(Key, key, pem_message(&e, "PRIVATE KEY")))?;
    let signing = provider().key_provider.load_private_key(der).map_err(|e| tls_err(Key, key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(tls_err(Key, key, format!("does not match the certificate in {}: {e}", certificate.display()))),
    }
}

fn read_certificates(file: TlsFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| tls_err(file, path, pem_message(&e, "CERTIFICATE")))?;
    iter.collect::<Result<Vec<_>, _>>().map_err(|e| tls_err(file, path, pem_message(&e, "CERTIFICATE")))
}

fn pem_message(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => format!("no {what} block in the file"),
        e => format!("not a PEM file: {e}"),
    }
}

/// Read a PEM bundle of CA certificates.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(TlsFile::ClientCa, path)? {
        roots.add(cert).map_err(|e| tls_err(TlsFile::ClientCa, path, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(tls_err(TlsFile::ClientCa, path, "no CERTIFICATE block in the file"));
    }
    Ok(roots)
}

/// A loaded TLS setup, ready for [`TlsListener::new`]: building one reads and checks every
/// file, which is also how the configuration check validates them.
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    cert: Arc<ReloadingCert>,
    reload_interval: Duration,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("certificate", &self.cert.certificate).field("key", &self.cert.key).finish_non_exhaustive()
    }
}

impl TlsConfig {
    pub fn load(opts: &TlsOptions) -> Result<TlsConfig, TlsError> {
        // The stamp is taken before reading, so a change made while loading is seen later.
        let seen = stamp(&opts.certificate, &opts.key);
        let key = load_certified_key(&opts.certificate, &opts.key)?;
        let cert = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
            certificate: opts.certificate.clone(),
            key: opts.key.clone(),
            seen: std::sync::Mutex::new(seen),
        });
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| tls_err(TlsFile::Certificate, &opts.certificate, format!("TLS setup: {e}")))?;
        let builder = match &opts.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(path)?), provider);
                let verifier = match opts.client_auth {
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                    ClientAuth::Required => verifier,
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| tls_err(TlsFile::ClientCa, path, e.to_string()))?)
            }
        };
        let mut server = builder.with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig { server: Arc::new(server), cert, reload_interval: opts.reload_interval.max(Duration::from_millis(10)) })
    }
}

/// What tells that a file changed: modification time and length of the certificate and key.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(certificate: &Path, key: &Path) -> Stamp {
    [certificate, key].map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())))
}

/// Hands every handshake the current certificate; [`ReloadingCert::check`] swaps it.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    certificate: PathBuf,
    key: PathBuf,
    seen: std::sync::Mutex<Stamp>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

impl ReloadingCert {
    /// Reload if either file changed since the last look. A change is tried once: a bad
    /// replacement is reported once, not at every poll, and the next change is tried again
    /// (a key written after its certificate is picked up when the key lands).
    fn check(&self) {
        let now = stamp(&self.certificate, &self.key);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match load_certified_key(&self.certificate, &self.key) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                tracing::info!(certificate = %self.certificate.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(
                file = %e.path.display(),
                error = %e.message,
                "could not reload the TLS certificate; still serving the previous one"
            ),
        }
    }
}

/// Poll the certificate files every `interval` until aborted.
async fn watch(cert: Arc<ReloadingCert>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let cert = cert.clone();
        // File system calls can block (network file systems); keep them off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || cert.check()).await;
    }
}

/// A TLS listener for [`crate::serve`]. Its background tasks (accepting, handshakes, and
/// watching the certificate files) stop when it is dropped, which `serve` does as soon as the
/// shutdown signal arrives.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    tasks: [AbortHandle; 2],
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Serve TLS on `tcp`. Must be called inside a tokio runtime.
    pub fn new(tcp: TcpListener, tls: TlsConfig) -> io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls.server);
        let accept = tokio::spawn(accept_loop(tcp, acceptor, tx)).abort_handle();
        let watcher = tokio::spawn(watch(tls.cert, tls.reload_interval)).abort_handle();
        Ok(TlsListener { local_addr, ready, tasks: [accept, watcher] })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts the handshakes in progress.
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => {
                // Only if the accept loop panicked; there is nothing left to accept.
                tracing::error!(addr = %self.local_addr, "the TLS accept loop stopped; no new connections are accepted");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = tcp.accept(), if handshakes.len() < MAX_HANDSHAKES => match accepted {
                Ok((stream, addr)) => {
                    let (acceptor, ready) = (acceptor.clone(), ready.clone());
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = ready.send((tls, addr)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
                        }
                    });
                }
                Err(e) => accept_error(&e).await,
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            () = ready.closed() => return,
        }
    }
}

/// As axum does for plain listeners: errors about one connection are skipped; others (out of
/// file descriptors) are logged and retried after a pause instead of spinning.
async fn accept_error(e: &io::Error) {
    if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a TCP connection failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The identity a verified client certificate gives (see [`ConnInfo::client_identity`]).
fn identity(leaf: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let name = common_name(cert.subject()).or_else(|| cert.valid_dns_names().next().map(str::to_owned))?;
    // Identities end up in logs and authorization decisions: refuse anything unprintable.
    (!name.is_empty() && !name.chars().any(char::is_control)).then_some(name)
}

/// The first Common Name (OID 2.5.4.3) in the contents of a DER `Name` (an RDN sequence).
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (tag, mut set, rest) = der(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = der(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, value) = der(attribute)?;
            if tag == 0x06 && oid == CN {
                let (tag, text, _) = der(value)?;
                return match tag {
                    // UTF8String, PrintableString, IA5String, TeletexString (ASCII in practice).
                    0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(text.to_vec()).ok(),
                    // BMPString: UTF-16 big-endian.
                    0x1e if text.len() % 2 == 0 => String::from_utf16(&text.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>()).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |l, b| l << 8 | usize::from(*b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)], sans: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn identity_is_the_common_name_else_the_first_dns_name() {
        use rcgen::DnType::{CommonName, OrganizationName};
        assert_eq!(identity(&cert_with(&[(OrganizationName, "Acme"), (CommonName, "ci-bot")], &["x.example"])).as_deref(), Some("ci-bot"));
        assert_eq!(identity(&cert_with(&[(OrganizationName, "Acme")], &["builder.example", "other.example"])).as_deref(), Some("builder.example"));
        assert_eq!(identity(&cert_with(&[(OrganizationName, "Acme")], &[])), None);
        assert_eq!(identity(&cert_with(&[(CommonName, "bad\nname")], &[])), None);
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der(&[0x04, 0x01, 0xaa, 0xbb]), Some((0x04, &[0xaa][..], &[0xbb][..])));
        assert_eq!(der(&[0x04, 0x81, 0x01, 0xaa]), Some((0x04, &[0xaa][..], &[][..])));
        assert_eq!(der(&[0x04, 0x02, 0xaa]), None);
        assert_eq!(der(&[0x04, 0x80]), None);
    }
}
