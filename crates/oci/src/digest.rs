//! Content digests (`algorithm:hex`) and the hasher that computes them.
//!
//! Only sha256 and sha512 are accepted: they are the two the distribution spec names, and an
//! unknown algorithm could not be verified. The hasher's state can be serialized (a few hundred
//! bytes) so that a chunked upload can be resumed by a later request, or another node, without
//! re-reading the bytes already received.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

/// A hash algorithm the registry can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a string is not a digest berth accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must have the form algorithm:encoded")]
    Format,
    #[error("unsupported digest algorithm {0:?} (sha256 and sha512 are supported)")]
    UnsupportedAlgorithm(String),
    #[error("digest encoding must be {expected} lowercase hex characters")]
    Encoding { expected: usize },
}

/// A validated digest. The encoded part is always lowercase hex of the right length, so the
/// textual form is canonical and can be compared and used in paths directly.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    /// `algorithm:hex`, kept whole so `as_str` costs nothing.
    text: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Digest of a byte slice held in memory (manifests, small test blobs).
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Format)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "" => return Err(DigestError::Format),
            other => {
                // The spec's grammar: algorithm-component ([a-z0-9]+) joined by [+._-].
                let valid = other
                    .split(['+', '.', '_', '-'])
                    .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
                return Err(if valid { DigestError::UnsupportedAlgorithm(other.to_owned()) } else { DigestError::Format });
            }
        };
        let expected = algorithm.hex_len();
        if enc.len() != expected || !enc.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::Encoding { expected });
        }
        Ok(Digest { algorithm, text: s.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A streaming hasher for one algorithm, whose state can be saved between requests.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// The saved state did not come from a hasher of this algorithm and version.
#[derive(Debug, thiserror::Error)]
#[error("hash state cannot be restored")]
pub struct StateError;

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let hex = match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest { algorithm, text: format!("{}:{hex}", algorithm.as_str()) }
    }

    /// The internal state, for storing with an upload session.
    pub fn save(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// Restore a state written by [`Hasher::save`].
    pub fn restore(algorithm: Algorithm, state: &[u8]) -> Result<Hasher, StateError> {
        Ok(match algorithm {
            Algorithm::Sha256 => {
                let s = SerializedState::<Sha256>::try_from(state).map_err(|_| StateError)?;
                Hasher::Sha256(Sha256::deserialize(&s).map_err(|_| StateError)?)
            }
            Algorithm::Sha512 => {
                let s = SerializedState::<Sha512>::try_from(state).map_err(|_| StateError)?;
                Hasher::Sha512(Sha512::deserialize(&s).map_err(|_| StateError)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints() {
        let d: Digest = EMPTY256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!("sha256".parse::<Digest>(), Err(DigestError::Format));
        assert_eq!(":abc".parse::<Digest>(), Err(DigestError::Format));
        assert!(matches!("sha384:00".parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm(_))));
        assert!(matches!("sha256:E3B0".parse::<Digest>(), Err(DigestError::Encoding { .. })));
        let upper = EMPTY256.to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
        assert!("sha512:abcd".parse::<Digest>().is_err());
    }

    #[test]
    fn sha512_known_value() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert!(d.as_str().starts_with("sha512:ddaf35a193617aba"));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
    }

    proptest! {
        #[test]
        fn resumed_hash_equals_one_pass(data in proptest::collection::vec(any::<u8>(), 0..3000), cut in 0usize..3000, sha512 in any::<bool>()) {
            let alg = if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
            let cut = cut.min(data.len());
            let mut h = Hasher::new(alg);
            h.update(&data[..cut]);
            let state = h.save();
            let mut h2 = Hasher::restore(alg, &state).unwrap();
            h2.update(&data[cut..]);
            prop_assert_eq!(h2.finish(), Digest::of(alg, &data));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn valid_digests_roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        }
    }
}
