//! Media types berth treats specially. Every other media type is stored and returned verbatim.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// The empty descriptor's media type (`{}`, 2 bytes), used as config by artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Digest of the two bytes `{}`.
pub const OCI_EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// The manifest media types a registry can be asked for.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// RFC 6838 shape: `type/subtype`, restricted-name characters, optional parameters after `;`.
pub fn is_valid_media_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else { return false };
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 127
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    name_ok(ty) && name_ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_shape() {
        assert!(is_valid_media_type(OCI_MANIFEST));
        assert!(is_valid_media_type("application/vnd.cncf.helm.config.v1+json"));
        assert!(is_valid_media_type("text/plain; charset=utf-8"));
        assert!(!is_valid_media_type("nonsense"));
        assert!(!is_valid_media_type("/x"));
        assert!(!is_valid_media_type("a/b c"));
    }
}
