//! The two range grammars of the API: the `Content-Range` of an upload chunk (`<start>-<end>`,
//! inclusive) and the `Range` of a blob download (`bytes=<start>-<end>`, single range).

/// An inclusive byte range `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed range {0:?}")]
    Malformed(String),
    #[error("range not satisfiable for {size} bytes")]
    Unsatisfiable { size: u64 },
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse an upload chunk's `Content-Range`. The spec's form is `<start>-<end>`; the
/// `bytes=`/`bytes ` prefixes and a `/<total>` suffix that some clients send are accepted too.
pub fn parse_content_range(header: &str) -> Result<ByteRange, RangeError> {
    let bad = || RangeError::Malformed(header.chars().take(100).collect());
    let s = header.trim();
    let s = s.strip_prefix("bytes=").or_else(|| s.strip_prefix("bytes ")).unwrap_or(s);
    let s = s.split_once('/').map_or(s, |(r, _)| r);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (start, end) = (number(a.trim()).ok_or_else(bad)?, number(b.trim()).ok_or_else(bad)?);
    if end < start {
        return Err(bad());
    }
    Ok(ByteRange { start, end })
}

/// Parse a download `Range` header against a blob of `size` bytes.
///
/// `Ok(None)` means "serve the whole blob": a multi-range request, or a unit other than bytes,
/// which RFC 9110 lets a server ignore.
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, RangeError> {
    let bad = || RangeError::Malformed(header.chars().take(100).collect());
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = RangeError::Unsatisfiable { size };
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let n = number(b).ok_or_else(bad)?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        return Ok(Some(ByteRange { start: size.saturating_sub(n), end: size - 1 }));
    }
    let start = number(a).ok_or_else(bad)?;
    let end = if b.is_empty() { u64::MAX } else { number(b).ok_or_else(bad)? };
    if end < start {
        return Err(bad());
    }
    if start >= size {
        return Err(unsatisfiable);
    }
    Ok(Some(ByteRange { start, end: end.min(size - 1) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("0-99"), Ok(ByteRange { start: 0, end: 99 }));
        assert_eq!(parse_content_range("bytes=5-9"), Ok(ByteRange { start: 5, end: 9 }));
        assert_eq!(parse_content_range("bytes 5-9/100"), Ok(ByteRange { start: 5, end: 9 }));
        assert!(parse_content_range("9-5").is_err());
        assert!(parse_content_range("-5").is_err());
        assert!(parse_content_range("a-b").is_err());
        assert!(parse_content_range("").is_err());
        assert!(parse_content_range("99999999999999999999-1").is_err());
    }

    #[test]
    fn download_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some(ByteRange { start: 0, end: 9 })));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(parse_range("bytes=90-1000", 100), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(Some(ByteRange { start: 0, end: 99 })));
        assert_eq!(parse_range("bytes=100-", 100), Err(RangeError::Unsatisfiable { size: 100 }));
        assert_eq!(parse_range("bytes=0-0", 0), Err(RangeError::Unsatisfiable { size: 0 }));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert!(matches!(parse_range("bytes=x-1", 100), Err(RangeError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn content_range_roundtrip(start in 0u64..1<<40, len in 1u64..1<<30) {
            let end = start + len - 1;
            prop_assert_eq!(parse_content_range(&format!("{start}-{end}")), Ok(ByteRange { start, end }));
        }

        #[test]
        fn satisfiable_ranges_are_in_bounds(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let Ok(Some(r)) = parse_range(&h, size) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,60}", size in any::<u64>()) {
            let _ = parse_content_range(&s);
            let _ = parse_range(&s, size);
        }
    }
}
