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
use std::io::{self, Read, Seek, SeekFrom};
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
    direct: Arc<DirectSupport>,
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
        Ok(FsStore { inner: Arc::new(Inner { root, fsync, direct: Arc::default() }) })
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
            sink: None,
            pending: None,
            queued: Vec::new(),
            queued_len: 0,
            large: false,
            fsync: self.inner.fsync,
            syncing: None,
            direct: self.inner.direct.clone(),
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
    let f = fs::OpenOptions::new().create(true).write(true).truncate(false).open(path).map_err(io_err("open", path))?;
    let held = f.metadata().map_err(io_err("stat", path))?.len();
    if held < offset {
        return Err(StorageError::OffsetMismatch { held, offset });
    }
    // Bytes past the offset come from a request that failed midway: the session never accepted
    // them, so they go.
    if held > offset {
        f.set_len(offset).map_err(io_err("truncate", path))?;
    }
    Ok(f)
}

/// Direct I/O moves an upload's bytes from our buffer to the disk without the page cache. A
/// buffered write copies every byte into the page cache and dirties it, and the kernel's
/// writeback and page allocation then cost several times the copy: on the machines measured,
/// 2.5 CPU-seconds per GB buffered (with the fsync the commit needs anyway) against 0.1 direct,
/// which is what lets one core hash while the upload runs at disk speed. Offsets, lengths and
/// buffer addresses of direct writes are multiples of this (the largest logical block size in
/// common use). The head of a request that starts mid-block and the tail of one that ends
/// mid-block are written through the page cache; they are synced at commit like the rest.
const DIRECT_ALIGN: usize = 4096;

/// Whether direct I/O failed on this store's file system (tmpfs, some FUSE and network file
/// systems refuse it): it is then not tried again, and writes go through the page cache.
/// It also counts the bytes written directly, which shows the tests that the path is taken.
#[derive(Debug, Default)]
struct DirectSupport {
    refused: std::sync::atomic::AtomicBool,
    written: std::sync::atomic::AtomicU64,
}

impl DirectSupport {
    fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refuse(&self, path: &Path, e: &io::Error) {
        if !self.refused.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(path = %path.display(), error = %e, "the file system refuses direct I/O: uploads are written through the page cache");
        }
    }
}

/// An upload file being written, handed to the blocking pool for each batch and back.
struct Sink {
    path: PathBuf,
    /// Where the next byte goes.
    pos: u64,
    /// The file through the page cache (opened first: it checks and trims the offset).
    file: File,
    /// The same file opened for direct I/O, once a batch is large enough to use it.
    direct: Option<File>,
    /// Staging for direct writes: `buf[start..start + filled]` is block-aligned in memory and
    /// holds the bytes from `pos`, which is block-aligned while it holds any.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// Bytes written through the page cache since the last background sync began.
    unsynced: u64,
}

impl Sink {
    fn open(path: PathBuf, offset: u64) -> Result<Sink> {
        let file = open_at(&path, offset)?;
        Ok(Sink { path, pos: offset, file, direct: None, buf: Vec::new(), start: 0, filled: 0, unsynced: 0 })
    }

    fn write_buffered(&mut self, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, self.pos).map_err(io_err("write", &self.path))?;
        self.pos += bytes.len() as u64;
        self.unsynced += bytes.len() as u64;
        Ok(())
    }

    /// Write `batch`: directly when `large` and the file system allows it, else through the
    /// page cache. `last`: the request ends with this batch, so nothing may stay staged.
    fn write(&mut self, batch: &[Bytes], large: bool, last: bool, support: &DirectSupport) -> Result<()> {
        if !large || support.refused() {
            // A staged remainder from an earlier direct batch goes first.
            self.flush_staged()?;
            for b in batch {
                self.write_buffered(b)?;
            }
            return Ok(());
        }
        if self.direct.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            match fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&self.path) {
                Ok(f) => self.direct = Some(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    support.refuse(&self.path, &e);
                    return self.write(batch, large, last, support);
                }
                Err(e) => return Err(io_err("open", &self.path)(e)),
            }
            self.buf = vec![0; IO_CHUNK + DIRECT_ALIGN];
            self.start = self.buf.as_ptr().align_offset(DIRECT_ALIGN);
        }
        for b in batch {
            let mut rest: &[u8] = b;
            // Up to the next block boundary through the page cache (a resumed upload, or a
            // request that began mid-block).
            if self.filled == 0 && !self.pos.is_multiple_of(DIRECT_ALIGN as u64) {
                let head = (DIRECT_ALIGN - (self.pos % DIRECT_ALIGN as u64) as usize).min(rest.len());
                self.write_buffered(&rest[..head])?;
                rest = &rest[head..];
            }
            while !rest.is_empty() {
                let n = (IO_CHUNK - self.filled).min(rest.len());
                let at = self.start + self.filled;
                self.buf[at..at + n].copy_from_slice(&rest[..n]);
                self.filled += n;
                rest = &rest[n..];
                if self.filled == IO_CHUNK {
                    self.write_direct(IO_CHUNK, support)?;
                }
            }
        }
        // Whole blocks go now; a remainder waits for the next batch, or goes at the end.
        let aligned = self.filled - self.filled % DIRECT_ALIGN;
        if aligned > 0 {
            self.write_direct(aligned, support)?;
        }
        if last {
            self.flush_staged()?;
        }
        Ok(())
    }

    /// Write the first `n` staged bytes (a multiple of the block size) directly, and move the
    /// rest to the front. Falls back to the page cache if the file system refuses.
    fn write_direct(&mut self, n: usize, support: &DirectSupport) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let direct = self.direct.as_ref().expect("a direct write follows the direct open");
        let data = &self.buf[self.start..self.start + n];
        match direct.write_all_at(data, self.pos) {
            Ok(()) => {
                self.pos += n as u64;
                support.written.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                support.refuse(&self.path, &e);
                let data = self.buf[self.start..self.start + n].to_vec();
                self.write_buffered(&data)?;
            }
            Err(e) => return Err(io_err("write", &self.path)(e)),
        }
        self.buf.copy_within(self.start + n..self.start + self.filled, self.start);
        self.filled -= n;
        Ok(())
    }

    /// Write what is staged (less than a block) through the page cache.
    fn flush_staged(&mut self) -> Result<()> {
        if self.filled > 0 {
            let data = self.buf[self.start..self.start + self.filled].to_vec();
            self.filled = 0;
            self.write_buffered(&data)?;
        }
        Ok(())
    }
}

/// Gathers incoming chunks and writes them on the blocking pool about a megabyte at a time,
/// with one write in flight while the next batch arrives. A request body of at least a batch
/// is written with direct I/O ([`DIRECT_ALIGN`]); smaller ones, most blobs, in one buffered
/// write.
struct FsWriter {
    path: PathBuf,
    /// Where the session's accepted bytes end: writing starts here.
    offset: u64,
    /// The file, once opened, when no write is in flight.
    sink: Option<Sink>,
    /// The write in flight; it hands the file back.
    pending: Option<JoinHandle<Result<Sink>>>,
    queued: Vec<Bytes>,
    queued_len: usize,
    /// Whether this request's body filled a batch (it is then written directly).
    large: bool,
    /// Whether to start writeback early (the store's fsync setting).
    fsync: bool,
    /// The background sync in flight; a new one starts only after it ends.
    syncing: Option<JoinHandle<io::Result<()>>>,
    direct: Arc<DirectSupport>,
}

impl FsWriter {
    /// Start writeback of what was written through the page cache so far, unless one is still
    /// running. Its result does not matter: durability comes from the fsync at commit; this
    /// only moves work earlier.
    fn maybe_sync(&mut self, sink: &mut Sink, threshold: u64) {
        if !self.fsync || sink.unsynced < threshold || self.syncing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        sink.unsynced = 0;
        // fdatasync through any descriptor of the file flushes the file's dirty pages.
        let path = self.path.clone();
        self.syncing = Some(tokio::task::spawn_blocking(move || File::open(&path)?.sync_data()));
    }

    /// The file once the write in flight (if any) is done; `None` if never opened.
    async fn take_sink(&mut self) -> Result<Option<Sink>> {
        if let Some(h) = self.pending.take() {
            return h.await.map_err(|e| StorageError::Backend(format!("blocking task failed: {e}")))?.map(Some);
        }
        Ok(self.sink.take())
    }

    async fn flush_queue(&mut self, last: bool) -> Result<()> {
        let sink = self.take_sink().await?;
        let batch = std::mem::take(&mut self.queued);
        self.queued_len = 0;
        let (path, offset, large, direct) = (self.path.clone(), self.offset, self.large, self.direct.clone());
        let mut sink = match sink {
            Some(s) => s,
            None => blocking(move || Sink::open(path, offset)).await?,
        };
        self.maybe_sync(&mut sink, SYNC_EVERY);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            sink.write(&batch, large, last, &direct)?;
            Ok(sink)
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
            self.large = true;
            self.flush_queue(false).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Vec<u8>> {
        if self.queued_len > 0 || self.large {
            self.flush_queue(true).await?;
        }
        let Some(mut sink) = self.take_sink().await? else {
            // Nothing was written: still check the offset, so a bad resume is reported now.
            let (path, offset) = (self.path.clone(), self.offset);
            blocking(move || open_at(&path, offset).map(drop)).await?;
            return Ok(Vec::new());
        };
        // A chunked upload's requests may each stay under SYNC_EVERY: start writeback of this
        // request's bytes now (detached), while the client sends the next one.
        self.maybe_sync(&mut sink, IO_CHUNK as u64);
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

    /// An upload in three requests whose boundaries fall mid-block, in chunks of odd sizes:
    /// the bytes read back are exactly those written, with direct I/O and without.
    async fn upload_in_odd_pieces(store: &FsStore) {
        let data: Vec<u8> = (0..(3u32 << 20) + 1234).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let id: UploadId = "00000000-0000-0000-0000-000000000002".parse().unwrap();
        let bounds = [0, (3 << 19) + 3, (3 << 20) - 5, data.len()];
        for w in bounds.windows(2) {
            let mut writer = store.upload_writer(&id, w[0] as u64, &[]).await.unwrap();
            for chunk in data[w[0]..w[1]].chunks(70_001) {
                writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
            writer.finish().await.unwrap();
        }
        let d = Digest::sha256_of(&data);
        store.commit_upload(&id, data.len() as u64, &[], &d).await.unwrap();
        assert!(fs::read(store.blob_path(&d)).unwrap() == data, "the blob's bytes differ from those written");
    }

    #[tokio::test]
    async fn large_requests_are_written_directly_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), true).unwrap();
        upload_in_odd_pieces(&store).await;
        // The temporary directory is on a file system that allows direct I/O (ext4 here);
        // on one that refuses it, this checks the fallback twice.
        if std::env::var_os("CI").is_some() {
            assert!(!store.inner.direct.refused(), "direct I/O was refused on the test's file system");
            // All but the heads and tails of the requests, which end and begin mid-block.
            let direct = store.inner.direct.written.load(std::sync::atomic::Ordering::Relaxed);
            assert!(direct >= (3 << 20) - 3 * 4096, "only {direct} bytes were written directly");
        }
    }

    #[tokio::test]
    async fn a_file_system_refusing_direct_io_gets_buffered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), true).unwrap();
        store.inner.direct.refused.store(true, std::sync::atomic::Ordering::Relaxed);
        upload_in_odd_pieces(&store).await;
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
