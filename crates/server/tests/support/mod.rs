//! Shared fixtures for the server's tests: a registry on a temporary directory, a request
//! helper over the in-process router, and builders for blobs and manifests.
#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use oci::Digest;
use registry::{Registry, RegistryConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct TestRegistry {
    pub router: Router,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The first error code of a spec error envelope.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().expect("error code").to_owned()
    }
}

pub async fn registry() -> TestRegistry {
    registry_with(RegistryConfig::default()).await
}

pub async fn registry_with(config: RegistryConfig) -> TestRegistry {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = storage::fs::FsStore::open(dir.path(), false).expect("fs store");
    let meta = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("sqlite");
    let registry = Registry::new(meta, Arc::new(blobs), config);
    TestRegistry { router: server::router(registry.clone()), registry, dir }
}

pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::sha256_of(bytes)
}

impl TestRegistry {
    pub async fn req(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
        let mut b = Request::builder().method(Method::from_bytes(method.as_bytes()).expect("method")).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.router.clone().oneshot(b.body(body.into()).expect("request")).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Resp { status, headers, body }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.req("GET", uri, &[], Body::empty()).await
    }

    /// Push a blob monolithically and return its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = sha256(bytes);
        let r = self.req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], bytes.to_vec()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        d
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
        self.req("PUT", &format!("/v2/{repo}/manifests/{reference}"), &[("content-type", media_type)], body.to_vec()).await
    }

    /// Push config and layers, then an image manifest tagged `tag`; returns (manifest bytes, digest).
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> (Vec<u8>, Digest) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer of {seed}").into_bytes();
        let cd = self.push_blob(repo, config.as_bytes()).await;
        let ld = self.push_blob(repo, &layer).await;
        let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], None, None);
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        (m.clone(), sha256(&m))
    }
}

pub fn descriptor(media_type: &str, d: &Digest, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": d.as_str(), "size": size })
}

/// An OCI image manifest document.
pub fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)], artifact_type: Option<&str>, subject: Option<(&Digest, usize)>) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config.0, config.1),
        "layers": layers.iter().map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, *s)).collect::<Vec<_>>(),
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
        m["annotations"] = json!({ "org.example.kind": t });
    }
    if let Some((d, s)) = subject {
        m["subject"] = descriptor(OCI_MANIFEST, d, s);
    }
    serde_json::to_vec(&m).expect("json")
}

pub fn index(children: &[(&Digest, usize)]) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|(d, s)| {
            let mut desc = descriptor(OCI_MANIFEST, d, *s);
            desc["platform"] = json!({"os": "linux", "architecture": "amd64"});
            desc
        }).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).expect("json")
}
