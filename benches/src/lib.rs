//! Benchmarks: `cargo bench -p benches`.
