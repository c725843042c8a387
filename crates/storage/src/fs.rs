//! The local filesystem driver.
//!
//! Layout under the root directory (this comment is the one description of it):
//!
//! ```text
//! blobs/<algorithm>/<first two hex chars>/<hex>   a complete, verified blob
//! uploads/<upload id>                             bytes of an upload in progress
//! ```
//!
//! Both live on one file system so that a commit is a `rename`, which is atomic: a blob path
//! holds either nothing or the whole blob. With `fsync` on (the default), the upload file is
//! synced before the rename and the directory after it, so a committed blob survives power loss
//! too; the metadata database records the blob only after the commit returns.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use oci::{Algorithm, ByteRange, Digest, UploadId};
use tokio::task::JoinHandle;

use crate::{BlobInfo, BlobStore, ByteStream, Result, StorageError, StoredUpload, UploadWriter};

/// Bytes gathered before one write system call on upload, and read per call on download.
const IO_CHUNK: usize = 1 << 20;
/// Files removed per blocking task by `delete_many`.
const DELETE_BATCH: usize = 64;
/// With fsync on, an upload syncs what it has written every this many bytes, in the background,
/// so the disk works while the network does and the fsync at commit only has a tail to flush.
const SYNC_EVERY: u64 = 32 << 20;

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    fsync: bool,
}

#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io { op, path: path.display().to_string(), source }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Backend(format!("blocking task failed: {e}")))?
}

impl FsStore {
    /// Open (creating if needed) a store under `root`. `fsync` trades durability on power loss
    /// for commit latency; a process crash never exposes a partial blob either way.
    pub fn open(root: impl Into<PathBuf>, fsync: bool) -> Result<FsStore> {
        let root = root.into();
        for dir in [root.join("blobs"), root.join("uploads")] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(FsStore { inner: Arc::new(Inner { root, fsync }) })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.inner.root.join("blobs").join(d.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.inner.root.join("uploads").join(id.as_str())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

#[async_trait]
impl BlobStore for FsStore {
    fn driver(&self) -> &'static str {
        "filesystem"
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    async fn inspect(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(BlobInfo { size: m.len(), modified: m.modified().ok() })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream> {
        let path = self.blob_path(digest);
        let (file, len) = blocking(move || {
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound),
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let size = f.metadata().map_err(io_err("stat", &path))?.len();
            let (start, len) = match range {
                Some(r) => (r.start, r.len().min(size.saturating_sub(r.start))),
                None => (0, size),
            };
            f.seek(SeekFrom::Start(start)).map_err(io_err("seek", &path))?;
            Ok((f, len))
        })
        .await?;
        Ok(read_stream(file, len))
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    async fn delete_many(&self, digests: Vec<Digest>) -> Vec<(Digest, StorageError)> {
        use futures::StreamExt;
        // A removal takes microseconds; handing each to a blocking thread and back would cost
        // more than the removal itself.
        let batches: Vec<Vec<(Digest, PathBuf)>> = digests.chunks(DELETE_BATCH).map(|c| c.iter().map(|d| (d.clone(), self.blob_path(d))).collect()).collect();
        let failed: Vec<Vec<(Digest, StorageError)>> = futures::stream::iter(batches)
            .map(|batch| async move {
                let digests: Vec<Digest> = batch.iter().map(|(d, _)| d.clone()).collect();
                tokio::task::spawn_blocking(move || {
                    let mut failed = Vec::new();
                    for (d, path) in batch {
                        match fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => failed.push((d, io_err("remove", &path)(e))),
                        }
                    }
                    failed
                })
                .await
                .unwrap_or_else(|e| digests.into_iter().map(|d| (d, StorageError::Backend(format!("blocking task failed: {e}")))).collect())
            })
            .buffer_unordered(2)
            .collect()
            .await;
        failed.into_iter().flatten().collect()
    }

    async fn list(&self) -> Result<Vec<Digest>> {
        let root = self.inner.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let dir = root.join(alg.as_str());
                let Ok(prefixes) = fs::read_dir(&dir) else { continue };
                for prefix in prefixes.flatten() {
                    for entry in fs::read_dir(prefix.path()).map_err(io_err("list", &prefix.path()))?.flatten() {
                        let name = entry.file_name();
                        if let Ok(d) = format!("{}:{}", alg.as_str(), name.to_string_lossy()).parse() {
                            out.push(d);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn upload_writer(&self, id: &UploadId, offset: u64, _state: &[u8]) -> Result<Box<dyn UploadWriter>> {
        // The file is opened by the first write batch, on the blocking pool together with the
        // write: a small chunk then costs one thread hand-off, not two.
        Ok(Box::new(FsWriter {
            path: self.upload_path(id),
            offset,
            file: None,
            pending: None,
            queued: Vec::new(),
            queued_len: 0,
            fsync: self.inner.fsync,
            unsynced: 0,
            syncing: None,
        }))
    }

    async fn read_upload(&self, id: &UploadId, size: u64, _state: &[u8]) -> Result<ByteStream> {
        let path = self.upload_path(id);
        let file = blocking(move || match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && size == 0 => Ok(File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound),
            Err(e) => Err(io_err("open", &path)(e)),
        })
        .await?;
        Ok(read_stream(file, size))
    }

    async fn commit_upload(&self, id: &UploadId, size: u64, _state: &[u8], digest: &Digest) -> Result<()> {
        let src = self.upload_path(id);
        let dst = self.blob_path(digest);
        let fsync = self.inner.fsync;
        blocking(move || {
            let f = fs::OpenOptions::new().create(true).write(true).truncate(false).open(&src).map_err(io_err("open", &src))?;
            let held = f.metadata().map_err(io_err("stat", &src))?.len();
            if held < size {
                return Err(StorageError::OffsetMismatch { held, offset: size });
            }
            if held > size {
                f.set_len(size).map_err(io_err("truncate", &src))?;
            }
            if fsync {
                f.sync_all().map_err(io_err("fsync", &src))?;
            }
            drop(f);
            let dir = dst.parent().expect("blob paths have a parent");
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                if fsync {
                    sync_dir(dir.parent().expect("prefix dirs have a parent"))?;
                }
            }
            // Same digest, same bytes: replacing an existing blob is harmless and atomic.
            fs::rename(&src, &dst).map_err(io_err("rename", &src))?;
            if fsync {
                sync_dir(dir)?;
            }
            Ok(())
        })
        .await
    }

    async fn abort_upload(&self, id: &UploadId, _state: &[u8]) -> Result<()> {
        let path = self.upload_path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    async fn list_uploads(&self) -> Result<Vec<StoredUpload>> {
        let dir = self.inner.root.join("uploads");
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
                let Ok(id) = entry.file_name().to_string_lossy().parse::<UploadId>() else { continue };
                let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else { continue };
                out.push(StoredUpload { id, modified });
            }
            Ok(out)
        })
        .await
    }
}

/// Read buffers kept for reuse. A fresh megabyte per read costs page faults and zeroing on
/// every read; a buffer returns here when the response body that carried it is dropped.
static READ_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Buffers kept at most (bounds the memory held while idle to this many megabytes).
const KEPT_BUFFERS: usize = 16;

/// A read buffer that goes back to [`READ_BUFFERS`] when the last `Bytes` over it is dropped.
struct PooledBuf(Vec<u8>);

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() == IO_CHUNK {
            let mut pool = READ_BUFFERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if pool.len() < KEPT_BUFFERS {
                pool.push(buf);
            }
        }
    }
}

fn read_buffer() -> Vec<u8> {
    let mut buf = READ_BUFFERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop().unwrap_or_else(|| Vec::with_capacity(IO_CHUNK));
    buf.clear();
    buf
}

/// Streams `len` bytes from `file`'s position in 1 MiB reads on the blocking pool, keeping one
/// read in flight ahead of the consumer so disk and socket overlap.
fn read_stream(file: File, len: u64) -> ByteStream {
    type Next = JoinHandle<io::Result<(File, Bytes)>>;
    fn spawn_read(mut file: File, n: u64) -> Next {
        tokio::task::spawn_blocking(move || {
            let mut buf = read_buffer();
            (&mut file).take(n).read_to_end(&mut buf)?;
            if (buf.len() as u64) < n {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shorter than expected"));
            }
            Ok((file, Bytes::from_owner(PooledBuf(buf))))
        })
    }
    let first = (len > 0).then(|| spawn_read(file, len.min(IO_CHUNK as u64)));
    let remaining = len.saturating_sub(IO_CHUNK as u64);
    Box::pin(futures::stream::unfold((first, remaining), |(next, remaining): (Option<Next>, u64)| async move {
        let handle = next?;
        match handle.await {
            Ok(Ok((file, bytes))) => {
                let following = (remaining > 0).then(|| spawn_read(file, remaining.min(IO_CHUNK as u64)));
                Some((Ok(bytes), (following, remaining.saturating_sub(IO_CHUNK as u64))))
            }
            Ok(Err(e)) => Some((Err(e), (None, 0))),
            Err(e) => Some((Err(io::Error::other(e)), (None, 0))),
        }
    }))
}

/// Open upload `path` for writing at `offset`, discarding bytes past it.
fn open_at(path: &Path, offset: u64) -> Result<File> {
    let mut f = fs::OpenOptions::new().create(true).write(true).truncate(false).open(path).map_err(io_err("open", path))?;
    let held = f.metadata().map_err(io_err("stat", path))?.len();
    if held < offset {
        return Err(StorageError::OffsetMismatch { held, offset });
    }
    // Bytes past the offset come from a request that failed midway: the session never accepted
    // them, so they go.
    if held > offset {
        f.set_len(offset).map_err(io_err("truncate", path))?;
    }
    f.seek(SeekFrom::Start(offset)).map_err(io_err("seek", path))?;
    Ok(f)
}

/// Gathers incoming chunks and writes them on the blocking pool about a megabyte at a time,
/// with one write in flight while the next batch arrives.
struct FsWriter {
    path: PathBuf,
    /// Where the session's accepted bytes end: writing starts here.
    offset: u64,
    /// The file, once opened, when no write is in flight.
    file: Option<File>,
    /// The write in flight; it hands the file back.
    pending: Option<JoinHandle<Result<File>>>,
    queued: Vec<Bytes>,
    queued_len: usize,
    /// Whether to start writeback early (the store's fsync setting).
    fsync: bool,
    /// Bytes handed to writes since the last background sync started.
    unsynced: u64,
    /// The background sync in flight; a new one starts only after it ends.
    syncing: Option<JoinHandle<io::Result<()>>>,
}

impl FsWriter {
    /// Start writeback of what was written so far, unless one is still running. Its result does
    /// not matter: durability comes from the fsync at commit; this only moves work earlier.
    fn maybe_sync(&mut self, threshold: u64) {
        if !self.fsync || self.unsynced < threshold || self.syncing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.unsynced = 0;
        // fdatasync through any descriptor of the file flushes the file's dirty pages.
        let path = self.path.clone();
        self.syncing = Some(tokio::task::spawn_blocking(move || File::open(&path)?.sync_data()));
    }

    /// The file once the write in flight (if any) is done; `None` if never opened.
    async fn take_file(&mut self) -> Result<Option<File>> {
        if let Some(h) = self.pending.take() {
            return h.await.map_err(|e| StorageError::Backend(format!("blocking task failed: {e}")))?.map(Some);
        }
        Ok(self.file.take())
    }

    async fn flush_queue(&mut self) -> Result<()> {
        let file = self.take_file().await?;
        let batch = std::mem::take(&mut self.queued);
        self.unsynced += self.queued_len as u64;
        self.queued_len = 0;
        self.maybe_sync(SYNC_EVERY);
        let (path, offset) = (self.path.clone(), self.offset);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(f) => f,
                None => open_at(&path, offset)?,
            };
            for b in &batch {
                file.write_all(b).map_err(io_err("write", &path))?;
            }
            Ok(file)
        }));
        Ok(())
    }
}

#[async_trait]
impl UploadWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.queued_len += chunk.len();
        self.queued.push(chunk);
        if self.queued_len >= IO_CHUNK {
            self.flush_queue().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Vec<u8>> {
        if self.queued_len > 0 {
            self.flush_queue().await?;
        }
        if self.take_file().await?.is_none() {
            // Nothing was written: still check the offset, so a bad resume is reported now.
            let (path, offset) = (self.path.clone(), self.offset);
            blocking(move || open_at(&path, offset).map(drop)).await?;
        }
        // A chunked upload's requests may each stay under SYNC_EVERY: start writeback of this
        // request's bytes now (detached), while the client sends the next one.
        self.maybe_sync(IO_CHUNK as u64);
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_driver_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), true).unwrap();
        crate::testsuite::run(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn passes_the_large_upload_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), false).unwrap();
        crate::testsuite::run_large(Arc::new(store), 5 << 20).await;
    }

    #[tokio::test]
    async fn commit_leaves_no_upload_file_and_a_blob_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), false).unwrap();
        let id: UploadId = "00000000-0000-0000-0000-000000000001".parse().unwrap();
        let mut w = store.upload_writer(&id, 0, &[]).await.unwrap();
        w.write(Bytes::from_static(b"hello")).await.unwrap();
        w.finish().await.unwrap();
        let d = Digest::sha256_of(b"hello");
        store.commit_upload(&id, 5, &[], &d).await.unwrap();
        assert!(!dir.path().join("uploads").join(id.as_str()).exists());
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), b"hello");
    }
}
