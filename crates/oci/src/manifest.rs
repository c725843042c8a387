//! Manifest parsing and validation.
//!
//! Manifests are stored and served as the exact bytes a client pushed (the digest is over those
//! bytes); this module only reads them to learn what they reference and to reject what is
//! malformed. It accepts OCI image manifests and indexes (including artifacts with
//! `artifactType`, any config media type and the empty descriptor) and Docker schema 2 manifests
//! and manifest lists. Docker schema 1 is rejected with an explanation.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::digest::Digest;
use crate::media::{self, is_valid_media_type};

/// What kind of manifest a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): references a config and layers.
    Image,
    /// An index (OCI index or Docker manifest list): references other manifests.
    Index,
}

/// A reference from a manifest to another piece of content, as far as the registry cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Non-distributable content (`urls` set) need not be present in the registry.
    pub external: bool,
}

/// The facts the registry needs from a validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub kind: ManifestKind,
    /// The media type it was pushed with (and will be served with).
    pub media_type: String,
    /// Blobs this manifest needs (config and layers).
    pub blobs: Vec<Descriptor>,
    /// Manifests this index needs.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without it, the config media type (what the
    /// referrers API reports).
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error(
        "Docker schema 1 manifests are not supported; push with a current client (Docker schema 2 or OCI)"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { content_type: String, body: String },
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

fn descriptor(raw: RawDescriptor, what: &str) -> Result<Descriptor, ManifestError> {
    let invalid = |m: String| ManifestError::Invalid(m);
    let media_type = raw.media_type.ok_or_else(|| invalid(format!("{what}: mediaType is required")))?;
    if !is_valid_media_type(&media_type) {
        return Err(invalid(format!("{what}: invalid mediaType {media_type:?}")));
    }
    let digest = raw.digest.ok_or_else(|| invalid(format!("{what}: digest is required")))?;
    let digest: Digest = digest.parse().map_err(|e| invalid(format!("{what}: digest {digest:?}: {e}")))?;
    let size = raw.size.ok_or_else(|| invalid(format!("{what}: size is required")))?;
    let size = u64::try_from(size).map_err(|_| invalid(format!("{what}: size must not be negative")))?;
    let external = raw.urls.is_some_and(|u| !u.is_empty());
    Ok(Descriptor { media_type, digest, size, external })
}

/// Choose the media type a pushed document is stored under.
///
/// The `mediaType` field wins when present and must agree with a `Content-Type` header; without
/// it, a manifest `Content-Type` is trusted, and failing that the document's shape decides.
fn effective_media_type(content_type: Option<&str>, raw: &RawManifest) -> Result<String, ManifestError> {
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| !c.is_empty());
    if matches!(ct, Some(media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED)) || raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    if let Some(body) = &raw.media_type {
        if matches!(body.as_str(), media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED) {
            return Err(ManifestError::Schema1);
        }
        if let Some(ct) = ct
            && ct != body
            && media::MANIFEST_TYPES.contains(&ct)
        {
            return Err(ManifestError::MediaTypeMismatch { content_type: ct.to_owned(), body: body.clone() });
        }
        return Ok(body.clone());
    }
    if let Some(ct) = ct
        && media::MANIFEST_TYPES.contains(&ct)
    {
        return Ok(ct.to_owned());
    }
    // No usable declaration: OCI documents may omit mediaType, so go by shape.
    if raw.manifests.is_some() {
        Ok(media::OCI_INDEX.to_owned())
    } else if raw.config.is_some() {
        Ok(media::OCI_MANIFEST.to_owned())
    } else {
        Err(ManifestError::UnsupportedMediaType(ct.unwrap_or("").to_owned()))
    }
}

/// Parse and validate a manifest pushed with the given `Content-Type`.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
    // A JSON object is required; reject arrays, strings and so on before typed parsing so the
    // message says what is wrong.
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(ManifestError::Json("a manifest must be a JSON object".into()));
    }
    let raw: RawManifest = serde_json::from_value(value).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    let media_type = effective_media_type(content_type, &raw)?;
    if raw.schema_version != Some(2) {
        return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
    }
    let kind = match media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => ManifestKind::Image,
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => ManifestKind::Index,
        other => return Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    };
    if let Some(at) = &raw.artifact_type
        && !is_valid_media_type(at)
    {
        return Err(ManifestError::Invalid(format!("invalid artifactType {at:?}")));
    }
    let subject = raw.subject.map(|s| descriptor(s, "subject")).transpose()?.map(|d| d.digest);
    let (blobs, manifests, artifact_type) = match kind {
        ManifestKind::Image => {
            if raw.manifests.is_some() {
                return Err(ManifestError::Invalid("an image manifest has no \"manifests\" field".into()));
            }
            let config = descriptor(raw.config.ok_or_else(|| ManifestError::Invalid("config is required".into()))?, "config")?;
            let layers = raw.layers.ok_or_else(|| ManifestError::Invalid("layers is required".into()))?;
            let mut blobs = Vec::with_capacity(layers.len() + 1);
            let artifact_type = raw.artifact_type.or_else(|| Some(config.media_type.clone()));
            blobs.push(config);
            for (i, l) in layers.into_iter().enumerate() {
                blobs.push(descriptor(l, &format!("layers[{i}]"))?);
            }
            (blobs, Vec::new(), artifact_type)
        }
        ManifestKind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(ManifestError::Invalid("an index has no \"config\" or \"layers\" field".into()));
            }
            let list = raw.manifests.ok_or_else(|| ManifestError::Invalid("manifests is required".into()))?;
            let mut manifests = Vec::with_capacity(list.len());
            for (i, m) in list.into_iter().enumerate() {
                manifests.push(descriptor(m, &format!("manifests[{i}]"))?);
            }
            (Vec::new(), manifests, raw.artifact_type)
        }
    };
    Ok(ParsedManifest { kind, media_type, blobs, manifests, subject, artifact_type, annotations: raw.annotations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":10}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn oci_image() {
        let m = parse(Some(media::OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
        assert_eq!(m.subject, None);
    }

    #[test]
    fn artifact_with_subject() {
        let extra = format!(
            r#","artifactType":"application/x.sig","subject":{{"mediaType":"{}","digest":"{D1}","size":5}},"annotations":{{"a":"b"}}"#,
            media::OCI_MANIFEST
        );
        let m = parse(None, image(&extra).as_bytes()).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
        assert_eq!(m.subject.unwrap().as_str(), D1);
        assert_eq!(m.annotations.unwrap()["a"], "b");
    }

    #[test]
    fn index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::DOCKER_MANIFEST_LIST,
            media::DOCKER_MANIFEST
        );
        let m = parse(Some(media::DOCKER_MANIFEST_LIST), body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.manifests.len(), 1);
    }

    #[test]
    fn shape_decides_without_media_types() {
        let body = format!(r#"{{"schemaVersion":2,"manifests":[]}}"#);
        assert_eq!(parse(None, body.as_bytes()).unwrap().media_type, media::OCI_INDEX);
    }

    #[test]
    fn rejections() {
        assert!(matches!(parse(None, b"{"), Err(ManifestError::Json(_))));
        assert!(matches!(parse(None, b"[]"), Err(ManifestError::Json(_))));
        assert_eq!(parse(Some(media::DOCKER_SCHEMA1_SIGNED), b"{}"), Err(ManifestError::Schema1));
        assert_eq!(parse(None, br#"{"schemaVersion":1,"name":"x"}"#), Err(ManifestError::Schema1));
        assert!(matches!(
            parse(Some(media::OCI_INDEX), image("").as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        let bad_digest = image("").replace(D2, "sha256:xyz");
        assert!(matches!(parse(None, bad_digest.as_bytes()), Err(ManifestError::Invalid(_))));
        let negative = image("").replace("\"size\":10", "\"size\":-1");
        assert!(matches!(parse(None, negative.as_bytes()), Err(ManifestError::Invalid(_))));
        let v3 = image("").replace("\"schemaVersion\":2", "\"schemaVersion\":3");
        assert!(matches!(parse(None, v3.as_bytes()), Err(ManifestError::Invalid(_))));
        assert!(matches!(parse(Some("application/json"), br#"{"schemaVersion":2}"#), Err(ManifestError::UnsupportedMediaType(_))));
    }

    #[test]
    fn external_layers_are_marked() {
        let body = image("").replace("\"size\":10", "\"size\":10,\"urls\":[\"https://example.com/l\"]");
        let m = parse(None, body.as_bytes()).unwrap();
        assert!(m.blobs[1].external);
        assert!(!m.blobs[0].external);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(None, &bytes);
        }
    }
}
