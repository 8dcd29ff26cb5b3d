//! [`FsBlobStore`]: the blob store under the data directory (the default).
//!
//! Content-addressed: a blob's file is `DIR/sha256/<2 hex>/<hex>.<tag>`,
//! named by the SHA-256 of its content, and its key `sha256/<hex>.<tag>`,
//! where `tag` (16 random hex digits) makes each put's key its own. A put
//! streams the body into a temporary file (`DIR/tmp/`), hashing it on the
//! way, and fsyncs it; if the same content is stored already, the new key is
//! a hard link to that file (one copy on disk), otherwise the temporary file
//! is renamed to it; then the directory is fsynced, so a blob is either
//! whole under its name or not there at all. `delete` removes one key's
//! link: the content goes when its last key does, so deleting one
//! attachment's blob never takes another's that has the same bytes. Keys of
//! the older form `sha256/<hex>` are still read. A put that fails (too
//! large, the body broke off) removes its temporary file; ones left by a
//! crash are removed when the store opens.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use emosation_core::ports::{BlobError, BlobStore, ByteStream, StoredBlob};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes read from a blob file per chunk of the stream.
const READ_CHUNK: usize = 64 * 1024;

pub struct FsBlobStore {
    dir: PathBuf,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore").field("dir", &self.dir).finish()
    }
}

fn io(e: std::io::Error) -> BlobError {
    BlobError::Storage(format!("blob file: {e}"))
}

impl FsBlobStore {
    /// Opens (creating) the store in `dir`, removing temporary files a crash left.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("sha256"))?;
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        Ok(FsBlobStore { dir })
    }

    /// The file of `key`, if `key` is one this store makes.
    fn path(&self, key: &str) -> Option<PathBuf> {
        let name = key.strip_prefix("sha256/")?;
        let (hex, tag) = match name.split_once('.') {
            Some((hex, tag)) => (hex, Some(tag)),
            None => (name, None),
        };
        let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (hex.len() == 64 && lower_hex(hex) && tag.is_none_or(|t| t.len() == 16 && lower_hex(t)))
            .then(|| self.dir.join("sha256").join(&hex[..2]).join(name))
    }

    /// A file already holding the content of `hex` in `dir`, if any.
    async fn existing(dir: &Path, hex: &str) -> Option<PathBuf> {
        let mut entries = tokio::fs::read_dir(dir).await.ok()?;
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name();
            let name = name.to_str()?;
            if name
                .strip_prefix(hex)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            {
                return Some(e.path());
            }
        }
        None
    }

    async fn write_body(&self, tmp: &Path, mut body: ByteStream, max: u64) -> Result<(u64, String), BlobError> {
        let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hash = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(BlobError::TooLarge { limit: max });
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((size, hex))
    }
}

/// Fsyncs a directory, so that a rename in it is durable.
async fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| BlobError::Storage(e.to_string()))?
        .map_err(io)
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, body: ByteStream, max: u64) -> Result<StoredBlob, BlobError> {
        let tmp = self.dir.join("tmp").join(format!("{:032x}", rand::random::<u128>()));
        let (size, hex) = match self.write_body(&tmp, body, max).await {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let key = format!("sha256/{hex}.{:016x}", rand::random::<u64>());
        let path = self.path(&key).expect("a key this store makes");
        let parent = path.parent().expect("a blob file has a directory");
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
        // The same content stored before: one more name for that file. If
        // its last other name is deleted meanwhile, the link fails and the
        // new file takes its place.
        let linked = match Self::existing(parent, &hex).await {
            Some(other) => tokio::fs::hard_link(&other, &path).await.is_ok(),
            None => false,
        };
        if linked {
            let _ = tokio::fs::remove_file(&tmp).await;
        } else if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(e));
        }
        sync_dir(parent).await?;
        Ok(StoredBlob { key, size, sha256: hex })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<(ByteStream, u64), BlobError> {
        let path = self.path(key).ok_or(BlobError::NotFound)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound),
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().await.map_err(io)?.len();
        let range = range.unwrap_or(0..size);
        if range.start >= range.end && !(range.start == 0 && size == 0) || range.end > size {
            return Err(BlobError::BadRange { size });
        }
        file.seek(SeekFrom::Start(range.start)).await.map_err(io)?;
        let left = range.end - range.start;
        let stream = futures_util::stream::unfold((file, left), |(mut file, left)| async move {
            if left == 0 {
                return None;
            }
            let mut buf = BytesMut::zeroed(READ_CHUNK.min(left as usize));
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob file shorter than its size",
                    )),
                    (file, 0),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<Bytes, std::io::Error>(buf.freeze()), (file, left - n as u64)))
                }
                Err(e) => Some((Err(e), (file, 0))),
            }
        });
        Ok((Box::pin(stream), size))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let Some(path) = self.path(key) else {
            return Ok(None);
        };
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let Some(path) = self.path(key) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}
