//! Upload session identifiers.

use std::fmt;
use std::str::FromStr;

/// The id of an upload session, as it appears in `/v2/<name>/blobs/uploads/<id>` and in storage
/// paths. Only lowercase hex and dashes (a UUID) are accepted, so it is safe in a path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upload id")]
pub struct UploadIdError;

impl UploadId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UploadId {
    type Err = UploadIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (32..=36).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
        if ok { Ok(UploadId(s.to_owned())) } else { Err(UploadIdError) }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!("3f2b1c9e-8a7d-4e6f-9b0a-1c2d3e4f5a6b".parse::<UploadId>().is_ok());
        assert!("../../etc/passwd".parse::<UploadId>().is_err());
        assert!("".parse::<UploadId>().is_err());
        assert!("3F2B1C9E8A7D4E6F9B0A1C2D3E4F5A6B".parse::<UploadId>().is_err());
    }
}
