//! Probe: raw fjall batch-insert and point-read cost on this machine.
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    btree();
    let dir = tempfile::tempdir()?;
    let db = fjall::Database::builder(dir.path()).open()?;
    let mb: u64 = std::env::var("MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let ks = db.keyspace("t", || {
        fjall::KeyspaceCreateOptions::default().max_memtable_size(mb << 20)
    })?;
    let n = 1_000_000u64;
    let value = vec![7u8; 150];
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let mut b = db.batch();
        for j in i..(i + 16384).min(n) {
            let key = format!("{:016x}\0{:016x}", j % 1000, j);
            b.insert(&ks, key, value.clone());
        }
        b.commit()?;
        i += 16384;
    }
    let w = t.elapsed();
    ks.rotate_memtable_and_wait()?;
    // ingestion of sorted data into another keyspace
    let ks2 = db.keyspace("u", fjall::KeyspaceCreateOptions::default)?;
    let t = Instant::now();
    let mut keys: Vec<String> = (0..n).map(|j| format!("{:016x}\0{:016x}", j % 1000, j)).collect();
    keys.sort();
    let mut ing = ks2.start_ingestion()?;
    for k in &keys {
        ing.write(k.as_str(), value.clone())?;
    }
    ing.finish()?;
    println!(
        "ingest incl sort {:.2} us/op",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let mut hits = 0;
    for j in 0..200_000u64 {
        let key = format!("{:016x}\0{:016x}x", j % 1000, j);
        if ks.get(key)?.is_some() {
            hits += 1;
        }
    }
    let r = t.elapsed();
    println!(
        "insert {:.2} us/op, miss-get {:.2} us/op ({hits})",
        w.as_secs_f64() * 1e6 / n as f64,
        r.as_secs_f64() * 1e6 / 200_000.0
    );
    Ok(())
}

#[allow(dead_code)]
fn btree() {
    let t = Instant::now();
    let mut m = std::collections::BTreeMap::new();
    for j in 0..1_000_000u64 {
        m.insert(format!("{:016x}\0{:016x}", j % 1000, j), vec![7u8; 150]);
    }
    println!(
        "btree insert {:.2} us/op ({})",
        t.elapsed().as_secs_f64() * 1e6 / 1e6,
        m.len()
    );
}
