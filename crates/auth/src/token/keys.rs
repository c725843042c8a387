//! Token keys: the signing key berth issues tokens with (ES256 on P-256, or RS256 with an RSA
//! key of 2048 bits or more), and the public keys tokens are verified with (ours, or an external
//! issuer's from a PEM certificate bundle or a JWKS file).
//!
//! Every key carries the libtrust key id Distribution and docker_auth put in a token's `kid`
//! header (see [`libtrust_kid`]), so a Distribution registry given our public key verifies our
//! tokens, and we verify tokens of an issuer configured for Distribution.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // Not `source`: the I/O error is part of this message already, and a chain printer would
    // print it twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{0}: not PEM")]
    Pem(String),
    #[error("{0}: no EC P-256 or RSA private key found (PKCS#8 \"PRIVATE KEY\", SEC1 \"EC PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\")")]
    NoPrivateKey(String),
    #[error("{what}: key rejected: {reason} (EC keys must be on P-256, RSA keys 2048 to 8192 bits)")]
    Rejected { what: String, reason: String },
    #[error("{what}: certificate {index}: {reason}")]
    Certificate { what: String, index: usize, reason: String },
    #[error("{what}: {reason}")]
    Jwks { what: String, reason: String },
    #[error("{0}: no usable key (EC P-256 or RSA) found")]
    NoKeys(String),
    #[error("generating a key failed")]
    Generate,
}

/// The kind of a key, which fixes the algorithms a token signed with it may name: a token is
/// only checked with the algorithm its key is for, never with the one its header asks for
/// (the `alg: none` and HS256-with-a-public-key attacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    EcP256,
    Rsa,
}

impl KeyKind {
    pub(crate) fn allows(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::EcP256 => alg == Algorithm::ES256,
            KeyKind::Rsa => matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512),
        }
    }
}

/// The key id Docker's libtrust gives a public key, and Distribution and docker_auth put in
/// `kid`: the SHA-256 of the DER SubjectPublicKeyInfo, its first 240 bits in base32, in twelve
/// groups of four separated by ':'.
pub(crate) fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(spki_der);
    // 30 bytes = 240 bits = 48 base32 characters, no padding.
    let mut chars = Vec::with_capacity(48);
    for chunk in digest[..30].chunks(5) {
        let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        for i in (0..8).rev() {
            chars.push(ALPHABET[((n >> (i * 5)) & 31) as usize]);
        }
    }
    chars.chunks(4).map(|g| String::from_utf8_lossy(g).into_owned()).collect::<Vec<_>>().join(":")
}

/// A public key tokens are verified with.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub(crate) kid: String,
    pub(crate) kind: KeyKind,
    pub(crate) key: DecodingKey,
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The keys of the certificates in a PEM bundle, each with its certificate's DER (to match an
/// `x5c` header). No chain is verified: the bundle is the list of trusted signers.
pub(crate) fn keys_from_certificates(what: &str, text: &[u8]) -> Result<Vec<(Vec<u8>, PublicKey)>, KeyError> {
    let blocks = pem::parse_many(text).map_err(|_| KeyError::Pem(what.to_owned()))?;
    let mut out = Vec::new();
    for (index, block) in blocks.iter().filter(|b| b.tag() == "CERTIFICATE").enumerate() {
        let cert_err = |reason: String| KeyError::Certificate { what: what.to_owned(), index: index + 1, reason };
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).map_err(|e| cert_err(e.to_string()))?;
        let spki = cert.public_key();
        let kid = libtrust_kid(spki.raw);
        let key = match spki.parsed().map_err(|e| cert_err(e.to_string()))? {
            x509_parser::public_key::PublicKey::EC(point) => {
                let p256 = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).is_some_and(|o| o == x509_parser::oid_registry::OID_EC_P256);
                if !p256 || point.data().len() != 65 {
                    return Err(cert_err("an EC key not on P-256".into()));
                }
                PublicKey { kid, kind: KeyKind::EcP256, key: DecodingKey::from_ec_der(point.data()) }
            }
            x509_parser::public_key::PublicKey::RSA(rsa) => {
                if strip_zeros(rsa.modulus).len() < 256 {
                    return Err(cert_err("an RSA key shorter than 2048 bits".into()));
                }
                PublicKey { kid, kind: KeyKind::Rsa, key: DecodingKey::from_rsa_raw_components(strip_zeros(rsa.modulus), strip_zeros(rsa.exponent)) }
            }
            _ => return Err(cert_err("neither an EC P-256 nor an RSA key".into())),
        };
        out.push((block.contents().to_vec(), key));
    }
    if out.is_empty() {
        return Err(KeyError::NoKeys(what.to_owned()));
    }
    Ok(out)
}

/// The keys of a JWKS document that have a `kid` (a token names its key by it).
pub(crate) fn keys_from_jwks(what: &str, text: &[u8]) -> Result<Vec<PublicKey>, KeyError> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| KeyError::Jwks { what: what.to_owned(), reason: e.to_string() })?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else { continue };
        let kind = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => KeyKind::EcP256,
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwks { what: what.to_owned(), reason: format!("key {kid}: {e}") })?;
        out.push(PublicKey { kid: kid.clone(), kind, key });
    }
    if out.is_empty() {
        return Err(KeyError::NoKeys(what.to_owned()));
    }
    Ok(out)
}

/// The key berth signs tokens with.
pub struct SigningKey {
    encoding: EncodingKey,
    public: PublicKey,
    spki_der: Vec<u8>,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.public.kid).field("kind", &self.public.kind).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the first private key of a PEM text: PKCS#8 (`PRIVATE KEY`, EC P-256 or RSA), SEC1
    /// (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`). `what` names the source in errors.
    pub fn from_pem(what: &str, text: &str) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(text).map_err(|_| KeyError::Pem(what.to_owned()))?;
        let rejected = |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected { what: what.to_owned(), reason: e.to_string() };
        for block in &blocks {
            let der = block.contents();
            match block.tag() {
                "EC PRIVATE KEY" => return Self::ec(&EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(rejected)?),
                "RSA PRIVATE KEY" => return Self::rsa(&RsaKeyPair::from_der(der).map_err(rejected)?, EncodingKey::from_rsa_der(der)),
                "PRIVATE KEY" => {
                    if let Ok(kp) = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                        return Self::ec(&kp);
                    }
                    let kp = RsaKeyPair::from_pkcs8(der).map_err(rejected)?;
                    // jsonwebtoken signs with the PKCS#1 form, which it takes out of the PKCS#8
                    // wrapping itself.
                    let enc = EncodingKey::from_rsa_pem(pem::encode(block).as_bytes()).map_err(|e| KeyError::Rejected { what: what.to_owned(), reason: e.to_string() })?;
                    return Self::rsa(&kp, enc);
                }
                _ => {}
            }
        }
        Err(KeyError::NoPrivateKey(what.to_owned()))
    }

    fn ec(kp: &EcdsaKeyPair) -> Result<Self, KeyError> {
        let pkcs8 = kp.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
        let point = kp.public_key().as_ref();
        let spki_der = kp.public_key().as_der().map_err(|_| KeyError::Generate)?.as_ref().to_vec();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
        let kid = libtrust_kid(&spki_der);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
        Ok(SigningKey {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: PublicKey { kid, kind: KeyKind::EcP256, key: DecodingKey::from_ec_der(point) },
            spki_der,
            jwk,
        })
    }

    fn rsa(kp: &RsaKeyPair, encoding: EncodingKey) -> Result<Self, KeyError> {
        let public = kp.public_key();
        let der: PublicKeyX509Der<'static> = public.as_der().map_err(|_| KeyError::Generate)?;
        let spki_der = der.as_ref().to_vec();
        let (n, e) = (public.modulus().big_endian_without_leading_zero().to_vec(), public.exponent().big_endian_without_leading_zero().to_vec());
        let kid = libtrust_kid(&spki_der);
        let jwk = serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e), "kid": kid, "alg": "RS256", "use": "sig"});
        Ok(SigningKey { encoding, public: PublicKey { kid, kind: KeyKind::Rsa, key: DecodingKey::from_rsa_raw_components(&n, &e) }, spki_der, jwk })
    }

    /// A new P-256 key and its PKCS#8 PEM text.
    pub fn generate() -> Result<(Self, String), KeyError> {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| KeyError::Generate)?;
        let pkcs8 = kp.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
        let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        Ok((Self::ec(&kp)?, text))
    }

    /// Reads the key at `path`, or when there is none, generates a P-256 key and writes it there
    /// (parent directories created, mode 0600). Never overwrites: the new key is written to a
    /// temporary file and hard-linked into place, so two nodes starting together on shared
    /// storage end up with the one key that won.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let io = |error| KeyError::Io { path: path.to_owned(), error };
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::from_pem(&path.display().to_string(), &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (key, text) = Self::generate()?;
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Generate)?;
        let tmp = dir.join(format!(".token-key.{}.tmp", hex::encode(nonce)));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let written = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => Ok(key),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_pem(&path.display().to_string(), &std::fs::read_to_string(path).map_err(io)?),
            Err(e) => Err(io(e)),
        }
    }

    /// The libtrust key id, sent as the tokens' `kid`.
    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    /// `ES256` or `RS256`.
    pub fn algorithm(&self) -> Algorithm {
        match self.public.kind {
            KeyKind::EcP256 => Algorithm::ES256,
            KeyKind::Rsa => Algorithm::RS256,
        }
    }

    /// The public key as PEM (`PUBLIC KEY`, SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()))
    }

    /// The public key as a JWKS document (`{"keys": [...]}`), for `/.well-known/jwks.json` or a
    /// Distribution registry's `auth.token.jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn public(&self) -> &PublicKey {
        &self.public
    }
}
