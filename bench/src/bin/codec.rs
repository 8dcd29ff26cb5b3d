//! Avro codec throughput: encode and decode of realistic records.

use std::time::Instant;

use emosation_bench::synthetic_log;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let n: u64 = emosation_bench::env("N", 200_000);
    let records: Vec<_> = synthetic_log(n + 13_000, 2_000, 1_000).skip(13_000).collect();
    let t = Instant::now();
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| emosation_schemas::encode(r).expect("encode"))
        .collect();
    let enc = t.elapsed();
    let t = Instant::now();
    for (b, r) in encoded.iter().zip(&records) {
        let d = emosation_schemas::decode(b).expect("decode");
        assert_eq!(&d, r);
    }
    let dec = t.elapsed();
    println!(
        "{}",
        json!({"bench": "codec", "records": n, "encode_per_sec": (n as f64 / enc.as_secs_f64()).round(),
               "decode_per_sec": (n as f64 / dec.as_secs_f64()).round(), "bytes_per_record": encoded[0].len()})
    );
    Ok(())
}
