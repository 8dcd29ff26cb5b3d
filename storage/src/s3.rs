//! [`S3BlobStore`]: the blob store on an S3-compatible object store (AWS S3,
//! MinIO, …) through the `object_store` crate.
//!
//! `s3://BUCKET?endpoint=http://HOST:9000&region=us-east-1`; credentials
//! from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
//! the other variables `object_store` reads), or `access_key_id=` and
//! `secret_access_key=` in the URL for a local test server. `endpoint`
//! selects path-style requests (what MinIO and test servers serve); without
//! it the bucket is addressed on AWS.
//!
//! Keys are `blobs/<128 random bits>`. A body that fits in one part
//! (8 MiB) is one `PUT`; a larger one is a multipart upload of 8 MiB parts,
//! at most two in flight (so at most ~24 MiB of a body is in memory),
//! aborted if the body is too large or breaks off. S3 makes an object
//! visible only once its upload completes, so no partial blob is ever
//! readable.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use emosation_core::ports::{BlobError, BlobStore, ByteStream, StoredBlob};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::OpenError;

/// Bytes per part of a multipart upload (S3's minimum is 5 MiB).
const PART: usize = 8 * 1024 * 1024;

pub struct S3BlobStore {
    store: AmazonS3,
    bucket: String,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore").field("bucket", &self.bucket).finish()
    }
}

fn storage(e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        e => BlobError::Storage(format!("s3: {e}")),
    }
}

/// `%XX` escapes of a URL query value.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = v.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl S3BlobStore {
    /// Opens `s3://BUCKET?…` (see the module doc); no request is made yet.
    pub fn connect(url: &str) -> Result<Self, OpenError> {
        let bad = |reason: &'static str| OpenError::Unsupported {
            what: "blob store",
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or(bad("expected s3://BUCKET?endpoint=…"))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains('/') {
            return Err(bad("expected s3://BUCKET (a bucket name, no path)"));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = unescape(v);
            b = match k {
                "endpoint" => b
                    .with_endpoint(&v)
                    .with_allow_http(v.starts_with("http://"))
                    .with_virtual_hosted_style_request(false),
                "region" => b.with_region(v),
                "access_key_id" => b.with_access_key_id(v),
                "secret_access_key" => b.with_secret_access_key(v),
                _ => {
                    return Err(bad(
                        "unknown parameter (endpoint, region, access_key_id, secret_access_key)",
                    ));
                }
            };
        }
        let store = b.build().map_err(|e| OpenError::Open {
            what: "s3 blob store",
            path: url.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(S3BlobStore {
            store,
            bucket: bucket.to_owned(),
        })
    }

    fn path(key: &str) -> Result<Path, BlobError> {
        match key.strip_prefix("blobs/") {
            Some(id) if !id.is_empty() && id.bytes().all(|c| c.is_ascii_hexdigit()) => Ok(Path::from(key)),
            _ => Err(BlobError::NotFound),
        }
    }

    /// Streams the rest of `body` (after `first`) as a multipart upload.
    async fn put_large(
        &self,
        path: &Path,
        first: Vec<u8>,
        mut body: ByteStream,
        max: u64,
        hash: &mut Sha256,
    ) -> Result<u64, BlobError> {
        let upload = self.store.put_multipart(path).await.map_err(storage)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut size = first.len() as u64;
        w.write(&first);
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max {
                    return Err(BlobError::TooLarge { limit: max });
                }
                hash.update(&chunk);
                w.wait_for_capacity(2).await.map_err(storage)?;
                w.put(chunk);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                w.finish().await.map_err(storage)?;
                Ok(size)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, mut body: ByteStream, max: u64) -> Result<StoredBlob, BlobError> {
        let key = format!("blobs/{:032x}", rand::random::<u128>());
        let path = Path::from(key.as_str());
        let mut hash = Sha256::new();
        // The first part in memory: a body that ends within it is one PUT.
        let mut first = Vec::new();
        let mut ended = true;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            if (first.len() + chunk.len()) as u64 > max {
                return Err(BlobError::TooLarge { limit: max });
            }
            hash.update(&chunk);
            first.extend_from_slice(&chunk);
            if first.len() >= PART {
                ended = false;
                break;
            }
        }
        let size = if ended {
            let size = first.len() as u64;
            self.store
                .put(&path, PutPayload::from(Bytes::from(first)))
                .await
                .map_err(storage)?;
            size
        } else {
            self.put_large(&path, first, body, max, &mut hash).await?
        };
        let sha256: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(StoredBlob { key, size, sha256 })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<(ByteStream, u64), BlobError> {
        let path = Self::path(key)?;
        let size = self.store.head(&path).await.map_err(storage)?.size;
        let range = match range {
            None => None,
            Some(r) if r.start < r.end && r.end <= size => Some(r),
            Some(_) => return Err(BlobError::BadRange { size }),
        };
        if size == 0 {
            return Ok((Box::pin(futures_util::stream::empty()), 0));
        }
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = self.store.get_opts(&path, opts).await.map_err(storage)?;
        let stream = got
            .into_stream()
            .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
        Ok((Box::pin(stream), size))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let Ok(path) = Self::path(key) else {
            return Ok(None);
        };
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let Ok(path) = Self::path(key) else {
            return Ok(());
        };
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }
}
