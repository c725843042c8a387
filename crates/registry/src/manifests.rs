//! Manifests, tags, referrers and the catalog.

use std::sync::Arc;

use bytes::Bytes;
use meta::{NewManifest, StoredManifest};
use oci::{Digest, Reference, RepoName, Tag};
use serde::Serialize;

use crate::events::EventFacts;
use crate::{Error, Registry, Result};

/// Largest page of tags or repositories returned at once; a client asking for more gets this
/// many and a `Link` to the rest.
pub const MAX_PAGE: u32 = 10_000;
/// Catalog page size when the client does not choose one.
pub const DEFAULT_CATALOG_PAGE: u32 = 1_000;

/// The outcome of a manifest PUT.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// A page of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub names: Vec<String>,
    /// Set when more names follow: the `n` to repeat in the `Link` to the next page.
    pub next: Option<u32>,
}

/// A referrers listing, already encoded as an OCI image index.
#[derive(Debug, Clone)]
pub struct Referrers {
    pub index: Vec<u8>,
    /// Whether an `artifactType` filter was applied.
    pub filtered: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<DescriptorDoc>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorDoc {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Value>,
}

impl Registry {
    /// Validate and store a manifest under `reference`, and point `extra_tags` at it too.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        extra_tags: &[Tag],
    ) -> Result<ManifestPut> {
        let limit = self.inner.config.manifest_max_size;
        if body.len() > limit {
            return Err(Error::ManifestTooLarge { limit });
        }
        let parsed = oci::manifest::parse(content_type, &body).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if actual != *d {
                    return Err(Error::DigestMismatch { expected: d.clone(), actual });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let mut tags: Vec<Tag> = extra_tags.to_vec();
        if let Reference::Tag(t) = reference {
            tags.push(t.clone());
        }
        let annotations = parsed.annotations.as_ref().map(serde_json::to_string).transpose().map_err(|e| Error::Internal(e.to_string()))?;
        let record = NewManifest {
            digest: &digest,
            media_type: &parsed.media_type,
            content: &body,
            artifact_type: parsed.artifact_type.as_deref(),
            subject: parsed.subject.as_ref(),
            annotations,
            blobs: parsed.blobs.iter().filter(|b| !b.external).map(|b| &b.digest).collect(),
            children: parsed.manifests.iter().map(|m| &m.digest).collect(),
        };
        // One push event per tag (Distribution's shape), or one untagged event.
        let tag_names: Vec<Option<String>> = if tags.is_empty() { vec![None] } else { tags.iter().map(|t| Some(t.to_string())).collect() };
        let events: Vec<_> = tag_names
            .into_iter()
            .map(|tag| {
                self.event(EventFacts {
                    action: "push",
                    repo,
                    digest: Some(digest.to_string()),
                    tag,
                    media_type: Some(parsed.media_type.clone()),
                    size: Some(body.len() as u64),
                    from: None,
                })
            })
            .collect();
        let immutable = self.immutable_tags(repo, &tags);
        let result = self.inner.meta.put_manifest_guarded(repo, &record, &tags, &immutable, &events).await;
        self.inner.cache.invalidate(repo);
        result.map_err(|e| self.manifest_error(repo, e))?;
        self.committed(&events);
        Ok(ManifestPut { digest, subject: parsed.subject })
    }

    /// The manifest `reference` points at in `repo`.
    pub async fn manifest_get(&self, repo: &RepoName, reference: &Reference) -> Result<Arc<StoredManifest>> {
        let key = reference.to_string();
        let m = match self.inner.cache.get(repo, &key) {
            Some(m) => m,
            None => self.manifest_lookup(repo, reference, &key).await?,
        };
        let tag = match reference {
            Reference::Tag(t) => Some(t.to_string()),
            Reference::Digest(_) => None,
        };
        self.pulled(EventFacts {
            action: "pull",
            repo,
            digest: Some(m.digest.to_string()),
            tag,
            media_type: Some(m.media_type.clone()),
            size: Some(m.content.len() as u64),
            from: None,
        });
        Ok(m)
    }

    async fn manifest_lookup(&self, repo: &RepoName, reference: &Reference, key: &str) -> Result<Arc<StoredManifest>> {
        let generation = self.inner.cache.generation();
        let found = match reference {
            Reference::Tag(t) => self.inner.meta.manifest_by_tag(repo, t).await?,
            Reference::Digest(d) => self.inner.meta.manifest_by_digest(repo, d).await?,
        };
        let m = Arc::new(found.ok_or(Error::ManifestUnknown)?);
        self.inner.cache.put(generation, repo, key, m.clone());
        Ok(m)
    }

    /// Delete a tag (only the tag), or a manifest by digest (with every tag pointing at it).
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.require_delete()?;
        let (digest, tag) = match reference {
            Reference::Tag(t) => (None, Some(t.to_string())),
            Reference::Digest(d) => (Some(d.to_string()), None),
        };
        let events = [self.event(EventFacts { action: "delete", repo, digest, tag, media_type: None, size: None, from: None })];
        let found = match reference {
            Reference::Tag(t) => self.delete_tag_unless_immutable(repo, t, &events).await,
            Reference::Digest(d) => self.delete_manifest_unless_immutable(repo, d, &events).await,
        };
        self.inner.cache.invalidate(repo);
        if found? {
            self.committed(&events);
            Ok(())
        } else {
            Err(Error::ManifestUnknown)
        }
    }

    /// Tags of `repo` in lexical (byte) order after `last`; all of them (up to [`MAX_PAGE`])
    /// when `n` is not given.
    pub async fn tags(&self, repo: &RepoName, n: Option<u32>, last: Option<&str>) -> Result<Page> {
        let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let page = self.inner.meta.list_tags(repo, last, limit).await?.ok_or(Error::NameUnknown)?;
        Ok(paginate(page, n, limit))
    }

    /// Repository names in lexical order after `last`.
    pub async fn catalog(&self, n: Option<u32>, last: Option<&str>) -> Result<Page> {
        let limit = n.unwrap_or(DEFAULT_CATALOG_PAGE).min(MAX_PAGE);
        let page = self.inner.meta.list_repositories(last, limit).await?;
        Ok(paginate(page, n, limit))
    }

    /// A catalog page of only the repositories `visible` accepts (access control's filter): the
    /// index is read in pages until this one is full, so a caller who may see few
    /// repositories still gets full pages and a `Link` only when more visible names may follow.
    pub async fn catalog_filtered(&self, n: Option<u32>, last: Option<&str>, visible: &(dyn Fn(&str) -> bool + Sync)) -> Result<Page> {
        let limit = n.unwrap_or(DEFAULT_CATALOG_PAGE).min(MAX_PAGE);
        if limit == 0 {
            return Ok(Page { names: Vec::new(), next: None });
        }
        let mut names = Vec::new();
        let mut cursor = last.map(str::to_owned);
        loop {
            let page = self.inner.meta.list_repositories(cursor.as_deref(), MAX_PAGE).await?;
            let scanned_all = !page.more;
            cursor = page.names.last().cloned();
            let mut rest = page.names.into_iter();
            for name in rest.by_ref() {
                if visible(&name) {
                    names.push(name);
                    if names.len() == limit as usize {
                        break;
                    }
                }
            }
            let unread = rest.next().is_some();
            if names.len() == limit as usize {
                // Full: more may follow if this page had names left or the index goes on.
                let more = unread || !scanned_all;
                return Ok(Page { next: more.then_some(n.unwrap_or(limit).min(limit)), names });
            }
            if scanned_all {
                return Ok(Page { names, next: None });
            }
        }
    }

    /// Manifests of `repo` whose subject is `subject`, as an image index.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<&str>) -> Result<Referrers> {
        let rows = self.inner.meta.referrers(repo, subject, artifact_type).await?;
        let manifests = rows
            .into_iter()
            .map(|r| DescriptorDoc {
                media_type: r.media_type,
                digest: r.digest,
                size: r.size,
                artifact_type: r.artifact_type,
                annotations: r.annotations.and_then(|a| serde_json::from_str(&a).ok()),
            })
            .collect();
        let doc = IndexDoc { schema_version: 2, media_type: oci::media::OCI_INDEX, manifests };
        let index = serde_json::to_vec(&doc).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Referrers { index, filtered: artifact_type.is_some() })
    }
}

fn paginate(page: meta::TagPage, n: Option<u32>, limit: u32) -> Page {
    // `n=0` asks for nothing, and the spec forbids a Link then.
    if limit == 0 {
        return Page { names: Vec::new(), next: None };
    }
    Page { next: page.more.then_some(n.unwrap_or(limit).min(limit)), names: page.names }
}
