//! `bench-hotpath-allocs`: heap allocations per call of gatemesh's call
//! path beside the bare reverse call, every thread counted (see
//! BENCHMARKS.md, "The hot path"). Counts do not vary with the machine's
//! load, so a change's effect shows even on a busy box.
//!
//! Run: `cargo run --release -p gatemesh-bench --bin bench-hotpath-allocs -- [CALLS]`.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    println!("{calls} calls one after another per scenario\n");
    let report = gatemesh_bench::hotpath::allocations(calls, |run| {
        let region = Region::new(GLOBAL);
        run();
        let change = region.change();
        (change.allocations as u64, change.bytes_allocated as u64)
    })?;
    println!("{report}");
    Ok(())
}
