//! Domain types of the OCI distribution and image specs: digests and the streaming hasher that
//! verifies them, repository names, tags and references, the `Range`/`Content-Range` grammars,
//! manifest parsing and validation, and the spec's error codes.
//!
//! This crate knows nothing about tokio, HTTP or storage. Everything that enters berth from the
//! outside is parsed into one of these types at the edge; the rest of the code trusts the type and
//! never handles a raw `&str` digest or repository name.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod media;
pub mod name;
pub mod pattern;
pub mod range;
pub mod upload;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest};
pub use name::{NameError, Reference, RepoName, Tag};
pub use pattern::{PatternError, RepoPattern, TagPattern};
pub use range::{ByteRange, RangeError};
pub use upload::UploadId;
