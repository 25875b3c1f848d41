//! Cost of verifying a signed download URL (the per-request work the signature
//! adds): `cargo bench --bench verify` prints nanoseconds per verify.
//! Under `cargo test` (no `--bench` flag) it only runs a few iterations.

use std::sync::Arc;
use std::time::Instant;

use media_store::clock::ManualClock;
use media_store::signing::{Signer, Target};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let iterations: u32 = if full { 500_000 } else { 100 };
    let signer = Signer::new(
        vec![("k1".into(), vec![7; 32]), ("k2".into(), vec![9; 32])],
        "k1",
        86_400,
        600,
        Arc::new(ManualClock::new(1_900_000_000)),
    )
    .expect("valid signer");
    let hash = blake3::hash(b"benchmark content");
    let target = Target {
        method: "GET",
        path: "/files/123456",
        content: Some(&hash),
    };
    let query = signer
        .sign(target, &[("dl", "1")], Some(600))
        .expect("signs")
        .query;
    // Warm up, and make sure we time a successful verify.
    for _ in 0..iterations / 10 {
        signer.verify(target, &query).expect("verifies");
    }
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(signer.verify(std::hint::black_box(target), &query))
            .expect("verifies");
    }
    let elapsed = start.elapsed();
    let bad = query.replace("sig=", "sig=A");
    let start_bad = Instant::now();
    for _ in 0..iterations {
        assert!(std::hint::black_box(signer.verify(target, &bad)).is_err());
    }
    let elapsed_bad = start_bad.elapsed();
    println!(
        "verify: {:.0} ns/verify (valid), {:.0} ns/verify (tampered), {iterations} iterations",
        elapsed.as_nanos() as f64 / f64::from(iterations),
        elapsed_bad.as_nanos() as f64 / f64::from(iterations),
    );
}
