//! The blob-store contract (core::ports::BlobStore), one test body run on
//! the embedded adapter (files under a directory) and on the S3 adapter
//! against a real S3-compatible server (moto's, started here).

use std::sync::Arc;

use bytes::Bytes;
use emosation_core::ports::{BlobError, BlobStore, ByteStream};
use emosation_storage::FsBlobStore;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// A body of `data` in chunks of `chunk` bytes.
fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

/// A body that breaks off after `n` bytes (the client went away).
fn broken(n: usize) -> ByteStream {
    let head = vec![7u8; n];
    Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from(head)),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client gone")),
    ]))
}

async fn read_all(s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = s;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("chunk"));
    }
    out
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn blob_contract(a: Arc<dyn BlobStore>, b: Arc<dyn BlobStore>, large: usize) {
    // Stored, read back through another handle, described.
    let small = data(100_000);
    let put = a.put(body(&small, 7_000), 1 << 20).await.unwrap();
    assert_eq!(put.size, small.len() as u64);
    let hex: String = Sha256::digest(&small).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(put.sha256, hex);
    assert!(
        put.key.len() <= 200
            && put
                .key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"/_.-".contains(&c))
    );
    let (s, size) = b.get(&put.key, None).await.unwrap();
    assert_eq!(size, small.len() as u64);
    assert_eq!(read_all(s).await, small);
    assert_eq!(b.size(&put.key).await.unwrap(), Some(small.len() as u64));

    // Ranges: inside, to the end, and unsatisfiable ones.
    let (s, _) = a.get(&put.key, Some(10..20)).await.unwrap();
    assert_eq!(read_all(s).await, small[10..20]);
    let (s, _) = a.get(&put.key, Some(99_990..100_000)).await.unwrap();
    assert_eq!(read_all(s).await, small[99_990..]);
    #[allow(clippy::reversed_empty_ranges)]
    let bad_ranges = [5..5, 20..10, 99_990..100_001, 200_000..200_010];
    for bad in bad_ranges {
        match a.get(&put.key, Some(bad.clone())).await {
            Err(BlobError::BadRange { size }) => assert_eq!(size, 100_000),
            Err(e) => panic!("{bad:?}: {e}"),
            Ok(_) => panic!("{bad:?}: should be refused"),
        }
    }

    // An empty body is a blob too.
    let empty = a.put(body(&[], 1), 10).await.unwrap();
    assert_eq!(empty.size, 0);
    assert!(read_all(b.get(&empty.key, None).await.unwrap().0).await.is_empty());

    // A body larger than the limit, or one that breaks off, leaves nothing.
    match a.put(body(&data(5_000), 1_000), 4_999).await {
        Err(BlobError::TooLarge { limit }) => assert_eq!(limit, 4_999),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match a.put(broken(3_000), 1 << 20).await {
        Err(BlobError::Body(_)) => {}
        other => panic!("expected Body, got {other:?}"),
    }
    // (Exactly at the limit is fine.)
    assert_eq!(a.put(body(&data(5_000), 1_000), 5_000).await.unwrap().size, 5_000);

    // A body larger than one part of a multipart upload, streamed.
    let big = data(large);
    let put_big = b.put(body(&big, 256 * 1024), large as u64).await.unwrap();
    assert_eq!(put_big.size, large as u64);
    let (s, size) = a
        .get(&put_big.key, Some(large as u64 - 1_000..large as u64))
        .await
        .unwrap();
    assert_eq!(size, large as u64);
    assert_eq!(read_all(s).await, big[large - 1_000..]);
    assert_eq!(read_all(a.get(&put_big.key, None).await.unwrap().0).await, big);
    // Too large past the first part: refused, the upload abandoned.
    match b.put(body(&big, 1 << 20), large as u64 - 1).await {
        Err(BlobError::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // Unknown keys, deletes (twice is fine).
    assert!(matches!(a.get("sha256/nope", None).await, Err(BlobError::NotFound)));
    assert!(matches!(a.get("blobs/00ff", None).await, Err(BlobError::NotFound)));
    assert_eq!(a.size("../../etc/passwd").await.unwrap(), None);
    b.delete(&put.key).await.unwrap();
    b.delete(&put.key).await.unwrap();
    assert_eq!(a.size(&put.key).await.unwrap(), None);
    assert!(matches!(a.get(&put.key, None).await, Err(BlobError::NotFound)));
}

#[tokio::test]
async fn fs_blob_store_meets_the_blob_contract() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir.path()).unwrap());
    let b: Arc<dyn BlobStore> = Arc::new(FsBlobStore::open(dir.path()).unwrap());
    blob_contract(a, b, 3 * 1024 * 1024).await;
    // Refused and broken puts left no temporary file behind.
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    // Content-addressed: the same content is one file under two keys, and
    // deleting one key leaves the other readable.
    let s = FsBlobStore::open(dir.path()).unwrap();
    let x = s.put(body(b"same", 2), 10).await.unwrap();
    let y = s.put(body(b"same", 3), 10).await.unwrap();
    assert_ne!(x.key, y.key);
    assert!(x.key.starts_with(&format!("sha256/{}.", x.sha256)), "{}", x.key);
    let file = |k: &str| {
        dir.path()
            .join("sha256")
            .join(&x.sha256[..2])
            .join(k.strip_prefix("sha256/").unwrap())
    };
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(file(&x.key)).unwrap().ino(),
        std::fs::metadata(file(&y.key)).unwrap().ino()
    );
    s.delete(&x.key).await.unwrap();
    assert_eq!(read_all(s.get(&y.key, None).await.unwrap().0).await, b"same");
    s.delete(&y.key).await.unwrap();
    let z = s.put(body(b"same", 4), 10).await.unwrap();
    assert_eq!(read_all(s.get(&z.key, None).await.unwrap().0).await, b"same");
    // Keys of the older form (no tag) are still read.
    let legacy = dir.path().join("sha256").join(&z.sha256[..2]).join(&z.sha256);
    std::fs::write(&legacy, b"same").unwrap();
    assert_eq!(s.size(&format!("sha256/{}", z.sha256)).await.unwrap(), Some(4));
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blob_store_meets_the_blob_contract() {
    let server = emosation_testkit::S3Server::start();
    let a: Arc<dyn BlobStore> = Arc::new(emosation_storage::S3BlobStore::connect(server.url()).unwrap());
    let b: Arc<dyn BlobStore> = Arc::new(emosation_storage::S3BlobStore::connect(server.url()).unwrap());
    // Past one 8 MiB part: a multipart upload.
    blob_contract(a, b, 9 * 1024 * 1024 + 12_345).await;
}
